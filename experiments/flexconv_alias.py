"""FlexConv's alias-free penalty (Romero, Bruintjes et al. 2022, Table 4): train at 16 px, evaluate at 32 px.

FlexConv samples its kernel on a grid of relative positions as large as the input, so a net trained on 16 px
images runs unchanged on 32 px ones, with each kernel sampled twice as densely. A kernel net whose frequencies pass
the 16 px grid's Nyquist limit aliases at 16 px and shows different content at 32 px; the alias-free penalty keeps
it below. The paper (CIFAR-10, FlexNet-16): accuracy change 16 -> 32 px of -34.4 +- 14.3 without the penalty and
-3.8 +- 2.0 with it (MAGNet only, weight 0.1).

Here: the digits at 16 px (train and validation) and the same validation digits at 32 px (both upsampled from the
8x8 originals), the simple backbone with 4 FlexConv layers (MAGNet, mask sigma 0.075) of 16 channels, max pooling,
global average pooling (resolution-independent); at 32 px each FlexConv output (less its bias) is scaled by
(16 / 32)^2 for the change in sampling rate (the paper's Eq. 9); penalty off against on (``regularize``, weight
0.1, the paper's default of regularising the MAGNet only).

    python experiments/flexconv_alias.py                  # CPU budget: 8 epochs, 2 seeds, a few minutes at 1 thread
    python experiments/flexconv_alias.py --full --device cuda   # 40 epochs, 5 seeds
    python experiments/flexconv_alias.py --penalty-weights 0.1 10  # also a 100x stronger penalty

Prints validation accuracy at 16 and 32 px per run and the mean change, and writes ``results/flexconv_alias.png``.
"""

from __future__ import annotations

import statistics

from size_common import evaluate, parser, save, scope, setup, train

TRAIN_SIZE, TEST_SIZE = 16, 32
CONFIG = {"backbone": "simple", "conv": "flexconv", "depth": 4, "width": 16, "pooling": "max", "head": "gap",
          "dataset": "digits", "image_size": TRAIN_SIZE, "lr": 1e-2, "batch_size": 64}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--penalty-weights", type=float, nargs="+", default=[0.1],
                   help="the penalty's weight(s) for the 'on' runs (default 0.1, the paper's)")
    args = p.parse_args()
    epochs, seeds, out = setup(args, epochs=(8, 40), seeds=([0, 1], [0, 1, 2, 3, 4]))
    settings = {"off": {"regularize": False},
                **{f"on {w:g}": {"regularize": True, "regularization_weight": w} for w in args.penalty_weights}}
    rows: dict[str, list[dict]] = {k: [] for k in settings}
    for seed in seeds:
        for penalty, hparams in settings.items():
            cfg = {**CONFIG, "conv_hparams": hparams, "epochs": epochs, "seed": seed, "device": args.device}
            result, state = train(cfg, keep_weights=True)
            at_train = evaluate(cfg, state, image_size=TRAIN_SIZE)
            # Eq. 9 of the paper: the kernel sampled (32/16)^2 times as densely, its sum rescaled by (16/32)^2
            at_test = evaluate(cfg, state, image_size=TEST_SIZE,
                               kernel_scale={"flexconv": (TRAIN_SIZE / TEST_SIZE) ** 2})
            reg = [h["train_reg"] for h in result["history"] if h["epoch"] >= 1]
            rows[penalty].append({"seed": seed, "acc16": at_train, "acc32": at_test, "train_reg_first": reg[0],
                                  "train_reg_last": reg[-1], "val_acc_trial": result["metrics"]["val_acc"]})
            print(f"seed {seed} penalty {penalty:<6}: val_acc 16 px {at_train:.3f}, 32 px {at_test:.3f} "
                  f"(change {100 * (at_test - at_train):+.1f} points); penalty term {reg[0]:.3g} -> {reg[-1]:.3g}",
                  flush=True)

    def m(key: str, penalty: str) -> float:
        return statistics.fmean(r[key] for r in rows[penalty])

    print(f"\nFlexConv trained at {TRAIN_SIZE} px, evaluated at {TEST_SIZE} px; {scope(args, epochs, seeds)}")
    print(f"{'penalty':<8} {'acc 16 px':>10} {'acc 32 px':>10} {'change (points)':>16}")
    for k in rows:
        changes = [100 * (r["acc32"] - r["acc16"]) for r in rows[k]]
        spread = f" +- {statistics.stdev(changes):.1f}" if len(changes) > 1 else ""
        print(f"{k:<8} {m('acc16', k):10.3f} {m('acc32', k):10.3f} {statistics.fmean(changes):+10.1f}{spread}   "
              f"penalty term first -> last epoch {m('train_reg_first', k):.3g} -> {m('train_reg_last', k):.3g}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, k in enumerate(rows):
        for r in rows[k]:
            ax.plot([0 + 0.03 * i, 1 + 0.03 * i], [r["acc16"], r["acc32"]], marker="o", color=f"C{i}", alpha=0.7)
        ax.plot([], [], color=f"C{i}", marker="o", label=f"alias-free penalty {k}")
    ax.set_xticks([0, 1], [f"{TRAIN_SIZE} px (train)", f"{TEST_SIZE} px"])
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"FlexConv trained at {TRAIN_SIZE} px, evaluated at {TEST_SIZE} px\n({epochs} ep, one line per "
                 f"seed, {len(seeds)} seed(s))", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out, "flexconv_alias", {"scope": scope(args, epochs, seeds), "runs": rows})


if __name__ == "__main__":
    main()

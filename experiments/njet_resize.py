"""N-Jet Exp. 1.2(A) (Pintea et al. 2021, Fig. 5): does the learned sigma follow a resize of the input?

The same digits at 1x, 1.5x and 2x (16, 24 and 32 px: scikit-learn's 8x8 digits upsampled bilinearly), the same
N-Jet network (the simple backbone, 4 N-Jet layers of 16 channels, max pooling after the second, global average
pooling; sigma init 1.0 and trained at the weights' learning rate, the paper's recipe) and seed. The paper:
"(2.0 / 1.5) sigma_1.5 = 2.81 +- 0.04 ~ sigma_2.0 = 2.82 +- 0.04": the learned sigma scales with the resize.

    python experiments/njet_resize.py            # CPU budget: 12 epochs, 1 seed, ~4 min at 1 thread
    python experiments/njet_resize.py --full --device cuda   # 40 epochs, 3 seeds

Prints the learned sigma per layer at each resize and the ratios to the 1x sigma, and writes
``results/njet_resize.png`` (sigma against the resize ratio, per layer, with the line sigma_1x * ratio).
"""

from __future__ import annotations

import statistics

from size_common import layer_records, parser, save, scope, setup, train

RATIOS = (1.0, 1.5, 2.0)
BASE_SIZE = 16
CONFIG = {"backbone": "simple", "conv": "njet", "depth": 4, "width": 16, "pooling": "max", "dataset": "digits",
          "lr": 1e-2, "batch_size": 64}


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    epochs, seeds, out = setup(args, epochs=(12, 40), seeds=([0], [0, 1, 2]))
    sigmas: dict[float, list[list[float]]] = {r: [] for r in RATIOS}  # ratio -> per seed, per layer
    accs: dict[float, list[float]] = {r: [] for r in RATIOS}
    for seed in seeds:
        for ratio in RATIOS:
            cfg = {**CONFIG, "image_size": round(BASE_SIZE * ratio), "epochs": epochs, "seed": seed,
                   "device": args.device}
            result, _ = train(cfg)
            sigmas[ratio].append([r["sigma"] for r in layer_records(result)])
            accs[ratio].append(result["metrics"]["val_acc"])
            print(f"seed {seed} x{ratio}: val_acc {accs[ratio][-1]:.3f}, sigma per layer "
                  f"{', '.join(f'{s:.2f}' for s in sigmas[ratio][-1])}", flush=True)
    layers = len(sigmas[1.0][0])
    mean = {r: [statistics.fmean(s[i] for s in sigmas[r]) for i in range(layers)] for r in RATIOS}
    print(f"\nLearned sigma (mean over seeds), {scope(args, epochs, seeds)}:")
    print(f"{'layer':<6} {'1x':>6} {'1.5x':>6} {'2x':>6} {'s1.5/s1':>8} {'s2/s1':>6} {'(2/1.5)s1.5':>12}")
    for i in range(layers):
        s1, s15, s2 = mean[1.0][i], mean[1.5][i], mean[2.0][i]
        print(f"{i:<6} {s1:6.2f} {s15:6.2f} {s2:6.2f} {s15 / s1:8.2f} {s2 / s1:6.2f} {2 / 1.5 * s15:12.2f}")
    print("val_acc: " + ", ".join(f"x{r} {statistics.fmean(accs[r]):.3f}" for r in RATIOS))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i in range(layers):
        line = ax.plot(RATIOS, [mean[r][i] for r in RATIOS], marker="o", label=f"layer {i + 1}")[0]
        ax.plot(RATIOS, [mean[1.0][i] * r for r in RATIOS], ls=":", color=line.get_color())
    ax.axhline(1.0, color="gray", lw=0.8, ls="--", label="init (1.0)")
    ax.set_xlabel("resize of the input (16 px = 1x)")
    ax.set_ylabel("learned sigma (px)")
    ax.set_xticks(RATIOS)
    ax.set_title(f"N-Jet: learned sigma vs input resize\n(dotted: sigma at 1x times the ratio; {epochs} ep, "
                 f"{len(seeds)} seed(s))", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out, "njet_resize", {"scope": scope(args, epochs, seeds), "sigmas": {str(r): sigmas[r] for r in RATIOS},
                                   "val_acc": {str(r): accs[r] for r in RATIOS}})


if __name__ == "__main__":
    main()

"""N-Jet Exp. 1.2(A) (Pintea et al. 2021, Sec. 4.1, Fig. 5): does the learned sigma follow a resize of the input?

The paper's toy net: N-Jet convolutions, each followed by BatchNorm and ReLU, no pooling and no stride, global
average pooling and a linear classifier; sigma starts at 1. The paper trains it on MNIST resized 1x, 1.5x and 2x and
states "(2.0 / 1.5) sigma_1.5 = 2.81 +- 0.04 ~ sigma_2.0 = 2.82 +- 0.04", i.e. sigma_2 / sigma_1.5 ~ 4/3; it says
the sigmas do not follow the resize itself (sigma_2 is not 2 sigma_1: sampling and resizing do not commute).

Here: scikit-learn's digits upsampled to 12, 18 and 24 px (1x, 1.5x, 2x), the simple backbone with 2 N-Jet layers
of 16 channels and ``pooling="none"``, Adam lr 1e-2, 8 epochs (184 steps), seeds 0, 1, 2. Sigma gets the step
budget to travel: its learning rate is held at the peak instead of following the weights' cosine decay
(``--size-schedule constant``, the N-Jet recipe's default; ``experiments/njet_sigma_schedule.py`` measures why).
Each layer's sigma, its ``at_bound`` mark (``nas_flex.train.bounds``: "schedule" when it used its whole travel
budget, "input" when its kernel spans the feature map) and the validation accuracy are recorded.

    python -m experiments.njet_resize                 # about 3 min at 1 thread on an idle core
    python -m experiments.njet_resize --size-schedule weights   # sigma on the weights' cosine decay instead

Writes ``results/njet_resize.json`` and ``results/njet_resize.png`` (first layer's sigma against the resize).
"""

from __future__ import annotations

import dataclasses
import statistics

from experiments.size_common import layer_records, parser, save, scope, setup, train

RATIOS = (1.0, 1.5, 2.0)
BASE_SIZE = 12
CONFIG = {"backbone": "simple", "conv": "njet", "depth": 2, "width": 16, "pooling": "none", "dataset": "digits",
          "lr": 1e-2, "batch_size": 64}
PAPER_S2_OVER_S15 = 2.82 / (2.81 * 1.5 / 2.0)  # 1.338: sigma_2 / sigma_1.5 from the paper's two numbers


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def run(ratio: float, epochs: int, seed: int, device: str, size_schedule: str) -> dict:
    from nas_flex.layers.njet import NJetConv

    recipe = NJetConv.size_recipe
    NJetConv.size_recipe = dataclasses.replace(recipe, schedule=size_schedule)
    try:
        cfg = {**CONFIG, "image_size": round(BASE_SIZE * ratio), "epochs": epochs, "seed": seed, "device": device}
        result, _ = train(cfg)
    finally:
        NJetConv.size_recipe = recipe
    recs = layer_records(result)
    return {"ratio": ratio, "seed": seed, "sigmas": [r["sigma"] for r in recs],
            "sizes": [r["height"] for r in recs], "at_bound": [r.get("at_bound") for r in recs],
            "budget_used": [r.get("budget_used") for r in recs], "val_acc": result["metrics"]["val_acc"]}


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """Per ratio the first layer's sigma; per seed the ratios sigma_1.5 / sigma_1 and sigma_2 / sigma_1.5."""
    by = {(r["ratio"], r["seed"]): r for r in runs}
    s1 = {ratio: [by[ratio, s]["sigmas"][0] for s in seeds] for ratio in RATIOS}
    out = {"sigma_first_layer": {str(ratio): _mean_sd(v) for ratio, v in s1.items()},
           "s15_over_s1": _mean_sd([by[1.5, s]["sigmas"][0] / by[1.0, s]["sigmas"][0] for s in seeds]),
           "s2_over_s15": _mean_sd([by[2.0, s]["sigmas"][0] / by[1.5, s]["sigmas"][0] for s in seeds]),
           "val_acc": {str(ratio): _mean_sd([by[ratio, s]["val_acc"] for s in seeds]) for ratio in RATIOS},
           "at_bound": {f"{r['ratio']} seed {r['seed']} layer {i + 1}": b for r in runs
                        for i, b in enumerate(r["at_bound"]) if b},
           "paper_s2_over_s15": PAPER_S2_OVER_S15}
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--size-schedule", choices=["constant", "weights"], default="constant",
                   help="sigma's learning-rate schedule: held at the peak (default) or the weights' cosine decay")
    args = p.parse_args()
    epochs, seeds, out = setup(args, epochs=(8, 40), seeds=([0, 1, 2], [0, 1, 2]))
    runs = []
    for seed in seeds:
        for ratio in RATIOS:
            r = run(ratio, epochs, seed, args.device, args.size_schedule)
            runs.append(r)
            marks = ", ".join(f"{s:.2f}{' [' + b + ']' if b else ''}" for s, b in zip(r["sigmas"], r["at_bound"]))
            print(f"seed {seed} x{ratio}: val_acc {r['val_acc']:.3f}, sigma per layer {marks}", flush=True)
    summary = summarise(runs, seeds)
    print(f"\nFirst layer's sigma (mean +- sd over seeds), {scope(args, epochs, seeds)}, sigma's schedule "
          f"{args.size_schedule}:")
    for ratio in RATIOS:
        m, sd = summary["sigma_first_layer"][str(ratio)]
        print(f"  x{ratio}: {m:.2f} +- {sd:.2f}   val_acc {summary['val_acc'][str(ratio)][0]:.3f}")
    print(f"  sigma_2 / sigma_1.5 = {summary['s2_over_s15'][0]:.3f} +- {summary['s2_over_s15'][1]:.3f} "
          f"(paper {PAPER_S2_OVER_S15:.3f}, resize 4/3 = 1.333)")
    print(f"  sigma_1.5 / sigma_1 = {summary['s15_over_s1'][0]:.3f} +- {summary['s15_over_s1'][1]:.3f} "
          f"(resize 1.5; the paper: the sigmas need not follow the resize itself)")
    print(f"  at bound: {summary['at_bound'] or 'none'}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for seed in seeds:
        rs = [r for r in runs if r["seed"] == seed]
        ax.plot(RATIOS, [r["sigmas"][0] for r in rs], marker="o", color="C0", alpha=0.6)
        capped = [(r["ratio"], r["sigmas"][0]) for r in rs if r["at_bound"][0]]
        if capped:
            ax.scatter(*zip(*capped), s=120, facecolors="none", edgecolors="red")
    m15 = summary["sigma_first_layer"]["1.5"][0]
    ax.plot([1.5, 2.0], [m15, m15 * 4 / 3], ls=":", color="k", label="sigma_1.5 x 4/3 (the paper's relation)")
    ax.plot([], [], color="C0", marker="o", label="first layer, one line per seed")
    ax.set_xlabel(f"resize of the input ({BASE_SIZE} px = 1x)")
    ax.set_ylabel("learned sigma (px)")
    ax.set_xticks(RATIOS)
    ax.set_title(f"N-Jet toy net (2 layers, no pooling): learned sigma vs resize\n({epochs} ep, {len(seeds)} seeds, "
                 f"sigma lr {args.size_schedule}; red ring: at bound)", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out, "njet_resize", {"scope": scope(args, epochs, seeds) + f", sigma schedule {args.size_schedule}",
                                   "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()

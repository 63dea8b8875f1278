"""Should N-Jet's sigma follow the weights' warm-up + cosine decay in a short run, or keep a constant learning rate?

N-Jet (Pintea et al. 2021) trains sigma with the network's optimizer and learning rate over a long schedule. In a
short run under Adam, log sigma moves at most about the sum of the learning rates applied to it (Adam's step is
about lr in size when the gradient keeps its sign), so the cosine decay caps how far sigma can go. This script
measures, on the paper's toy net (2 N-Jet layers, BatchNorm after each, no pooling or stride, sigma init 1) on the
digits at 32 px, where sigma wants to grow:

* ``cosine``: the paper's recipe, sigma on the weights' warm-up + cosine schedule, ``--epochs`` epochs;
* ``constant``: the same run with sigma's learning rate held at the peak value (``SizeRecipe(schedule="constant")``);
* ``reference``: the paper's recipe trained ``4x`` as long, standing in for "where the data wants sigma".

For each: the first layer's final sigma, the share of its travel budget used (|Delta log sigma| / sum of lr), the
validation accuracy, 3 seeds. ``python -m experiments.njet_sigma_schedule`` (about 12 min at 1 thread on an idle
core).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from experiments.size_common import parser, save, scope, setup, train

CONFIG = {"backbone": "simple", "conv": "njet", "depth": 2, "width": 16, "pooling": "none", "dataset": "digits",
          "lr": 1e-2, "batch_size": 64, "image_size": 32}


def travel_budget(epochs: int, schedule: str) -> float:
    """Sum of the learning rates sigma's Adam group sees in ``epochs`` epochs (digits: 1438 training examples)."""
    from nas_flex.train.trial import warmup_cosine

    steps = math.ceil(1438 / CONFIG["batch_size"]) * epochs
    if schedule == "constant":
        return CONFIG["lr"] * steps
    warmup = math.ceil(1438 / CONFIG["batch_size"]) * min(1, epochs - 1)
    return CONFIG["lr"] * sum(warmup_cosine(s, steps, warmup) for s in range(steps))


def run(variant: str, epochs: int, seed: int, device: str) -> dict:
    from nas_flex.layers.njet import NJetConv

    recipe = NJetConv.size_recipe
    NJetConv.size_recipe = dataclasses.replace(recipe, schedule="constant" if variant == "constant" else "weights")
    try:
        result, _ = train({**CONFIG, "epochs": epochs, "seed": seed, "device": device})
    finally:
        NJetConv.size_recipe = recipe
    sigmas = [r["sigma"] for r in result["learned_sizes"]]
    budget = travel_budget(epochs, "constant" if variant == "constant" else "weights")
    used = [abs(math.log(s)) / budget for s in sigmas]  # sigma starts at 1: log sigma starts at 0
    return {"variant": variant, "epochs": epochs, "seed": seed, "sigmas": sigmas, "budget": budget,
            "budget_used": used, "val_acc": result["metrics"]["val_acc"],
            "sizes": [[r["height"], r["width"]] for r in result["learned_sizes"]]}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--reference-factor", type=int, default=4,
                   help="the reference run's epochs as a multiple of --epochs (0: no reference run)")
    args = p.parse_args()
    epochs, seeds, out = setup(args, epochs=(8, 30), seeds=([0, 1, 2], [0, 1, 2]))
    runs = []
    for seed in seeds:
        plan = [("cosine", epochs), ("constant", epochs), ("reference", args.reference_factor * epochs)]
        for variant, n in [(v, n) for v, n in plan if n > 0]:
            r = run(variant, n, seed, args.device)
            runs.append(r)
            print(f"seed {seed} {variant:<9} {n:>3} ep: sigma {', '.join(f'{s:.2f}' for s in r['sigmas'])}, "
                  f"budget used {', '.join(f'{u:.0%}' for u in r['budget_used'])}, val_acc {r['val_acc']:.3f}",
                  flush=True)
    summary = {}
    variants = [v for v in ("cosine", "constant", "reference") if any(r["variant"] == v for r in runs)]
    for variant in variants:
        rs = [r for r in runs if r["variant"] == variant]
        s1 = [r["sigmas"][0] for r in rs]
        acc = [r["val_acc"] for r in rs]
        summary[variant] = {"sigma_1": [statistics.fmean(s1), statistics.stdev(s1) if len(s1) > 1 else 0.0],
                            "val_acc": [statistics.fmean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0],
                            "budget_used_1": statistics.fmean(r["budget_used"][0] for r in rs)}
        print(f"{variant:<9}: sigma_1 {summary[variant]['sigma_1'][0]:.2f} +- {summary[variant]['sigma_1'][1]:.2f}, "
              f"budget used {summary[variant]['budget_used_1']:.0%}, val_acc {summary[variant]['val_acc'][0]:.3f} "
              f"+- {summary[variant]['val_acc'][1]:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, variant in enumerate(variants):
        rs = [r for r in runs if r["variant"] == variant]
        ax.scatter([i] * len(rs), [r["sigmas"][0] for r in rs], label=variant)
    labels = {"cosine": f"cosine {epochs} ep", "constant": f"constant {epochs} ep",
              "reference": f"cosine {args.reference_factor * epochs} ep"}
    ax.set_xticks(range(len(variants)), [labels[v] for v in variants])
    ax.set_ylabel("first layer's learned sigma (px)")
    ax.set_title("N-Jet sigma at 32 px: schedule of the size learning rate", fontsize=9)
    save(fig, out, "njet_sigma_schedule", {"scope": scope(args, epochs, seeds), "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()

"""The adaptive Gaussian envelope (ACONV, Tek et al.): each filter's learned aperture against its initial one.

The paper starts the apertures linearly spaced in [0.1, 0.5] (grid units) over the filters of a layer, clips them
to [1 / n, n], trains them with the weights, and reports that they converge and that the layers end up with kernels
of varied sizes (its Fig. 4c, 5f). Here: the main job's envelope network (simple backbone, 4 layers of 16 filters,
n = 7 base grid, max pooling) on ``digits-multiscale``, apertures at the weights' learning rate (the paper's
recipe). Where does each filter's aperture go, and does the initial linear order survive?

    python -m experiments.envelope_apertures                # CPU budget: 8 epochs, 1 seed, a few minutes
    python -m experiments.envelope_apertures --full --device cuda   # 60 epochs, 3 seeds

Prints, per layer, the aperture range at init and after training, the mean relative change, and the rank
correlation between initial and learned apertures; writes ``results/envelope_apertures.png`` (learned against
initial aperture, one point per filter, one colour per layer).
"""

from __future__ import annotations

import statistics

import torch

from experiments.size_common import parser, save, scope, setup, train
from nas_flex.layers import build

CONFIG = {"backbone": "simple", "conv": "envelope", "kernel_size": 7, "depth": 4, "width": 16, "pooling": "max",
          "dataset": "digits-multiscale", "lr": 1e-2, "batch_size": 64}


def _spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    epochs, seeds, out = setup(args, epochs=(8, 60), seeds=([0], [0, 1, 2]))
    n = CONFIG["kernel_size"]
    runs = []
    for seed in seeds:
        cfg = {**CONFIG, "epochs": epochs, "seed": seed, "device": args.device}
        result, state = train(cfg, keep_weights=True)
        names = [r["name"] for r in result["learned_sizes"]]
        # the initial apertures: the layer's linear spread, clipped to [1 / n, n] as the forward uses them
        init = build("envelope", 1, CONFIG["width"], kernel_size=n)._aperture_values().tolist()
        learned = [state[f"{name}.sigma"].double().clamp(1 / n, n).tolist() for name in names]
        runs.append({"seed": seed, "val_acc": result["metrics"]["val_acc"], "layers": names, "init": init,
                     "learned": learned})
        print(f"seed {seed}: val_acc {runs[-1]['val_acc']:.3f}", flush=True)

    print(f"\nEnvelope apertures (grid units; x {n} = px), {scope(args, epochs, seeds)}")
    print(f"{'seed':<5} {'layer':<12} {'init range':>14} {'learned range':>15} {'mean |change|':>14} "
          f"{'rank corr':>10}")
    for run in runs:
        for name, learned in zip(run["layers"], run["learned"], strict=True):
            init = run["init"]
            change = statistics.fmean(abs(b / a - 1) for a, b in zip(init, learned, strict=True))
            print(f"{run['seed']:<5} {name:<12} {min(init):6.3f}-{max(init):6.3f} {min(learned):7.3f}-"
                  f"{max(learned):6.3f} {change:13.0%} {_spearman(init, learned):10.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    run = runs[0]
    for i, (name, learned) in enumerate(zip(run["layers"], run["learned"], strict=True)):
        ax.plot(run["init"], learned, marker="o", ms=3, lw=0.8, color=f"C{i}", label=f"layer {i + 1} ({name})")
    lo, hi = min(run["init"]), max(run["init"])
    ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=0.8, label="unchanged")
    ax.set_xlabel("initial aperture (grid units; linear spread over the filters)")
    ax.set_ylabel("learned aperture (grid units)")
    ax.set_title(f"Envelope (ACONV, n = {n}): per-filter apertures\n({epochs} ep, seed {run['seed']})", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out, "envelope_apertures", {"scope": scope(args, epochs, seeds), "runs": runs})


if __name__ == "__main__":
    main()

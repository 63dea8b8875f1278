"""N-Jet's alpha initialisation: nas_flex's Kaiming-uniform (``nn.Conv2d``'s rule) against the N(0, 1) of the
authors' public code (N-JetNet), the same layer, net, data, optimizer and seeds otherwise.

The simple backbone (4 N-Jet layers of 16 channels, BatchNorm + ReLU after each, max pooling after the second),
digits at their own 8 px, Adam lr 1e-2 with warm-up + cosine, 10 epochs (230 steps), seeds 0, 1, 2; the only
difference is how ``NJetConv.alphas`` is drawn. ``python -m experiments.njet_alpha_init`` (about 2 min at 1 thread
on an idle core).
"""

from __future__ import annotations

import math
import statistics

import torch

from experiments.size_common import parser, save, scope, setup, train

CONFIG = {"backbone": "simple", "conv": "njet", "depth": 4, "width": 16, "pooling": "max", "dataset": "digits",
          "lr": 1e-2, "batch_size": 64}


def _normal_alphas(layer) -> None:
    """The authors' draw: alphas ~ N(0, 1); the bias and sigma as nas_flex sets them."""
    from nas_flex.layers.base import conv_init_

    conv_init_(layer.alphas, layer.bias)
    with torch.no_grad():
        layer.alphas.normal_(0.0, 1.0)
        layer.log_sigma.fill_(math.log(layer.sigma_init))


def main() -> None:
    from nas_flex.layers.njet import NJetConv

    args = parser(__doc__.split("\n\n")[0]).parse_args()
    epochs, seeds, out = setup(args, epochs=(10, 20), seeds=([0, 1, 2], [0, 1, 2]))
    ours = NJetConv.reset_parameters
    accs: dict[str, list[float]] = {"kaiming_uniform": [], "normal_0_1": []}
    sigmas: dict[str, list[list[float]]] = {k: [] for k in accs}
    for seed in seeds:
        for init in accs:
            NJetConv.reset_parameters = ours if init == "kaiming_uniform" else _normal_alphas
            try:
                result, _ = train({**CONFIG, "epochs": epochs, "seed": seed, "device": args.device})
            finally:
                NJetConv.reset_parameters = ours
            accs[init].append(result["metrics"]["val_acc"])
            sigmas[init].append([r["sigma"] for r in result["learned_sizes"]])
            print(f"seed {seed} {init:<16} val_acc {accs[init][-1]:.3f}, sigma "
                  f"{', '.join(f'{s:.2f}' for s in sigmas[init][-1])}", flush=True)
    summary = {k: [statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0] for k, v in accs.items()}
    for k, (m, sd) in summary.items():
        print(f"{k:<16}: val_acc {m:.3f} +- {sd:.3f} ({scope(args, epochs, seeds)})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    for i, k in enumerate(accs):
        ax.scatter([i] * len(accs[k]), accs[k])
    ax.set_xticks([0, 1], ["Kaiming-uniform\n(nas_flex)", "N(0, 1)\n(authors' code)"])
    ax.set_ylabel("validation accuracy")
    ax.set_title("N-Jet alpha initialisation, digits", fontsize=9)
    save(fig, out, "njet_alpha_init", {"scope": scope(args, epochs, seeds), "val_acc": accs, "sigmas": sigmas,
                                       "summary": summary})


if __name__ == "__main__":
    main()

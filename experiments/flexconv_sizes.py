"""FlexConv's learned masks (Romero, Bruintjes et al. 2022, Fig. 6 and Sec. 5): small in early layers, growing with
depth; and, on ``digits-multiscale``, larger for larger objects.

Two runs that differ only in the digits' scale: small (``scales`` [1, 1.25]: 8-10 px digits) and large ([2.5, 3]:
20-24 px) on the same 32x32 canvas, seed and network: the simple backbone with 4 FlexConv layers (MAGNet, the
authors' mask sigma 0.075, mask at 0.1x the learning rate, no alias-free penalty: their CIFAR recipe) of 16
channels and max pooling after the second (FlexNet has none; pooling halves the CPU cost). FlexConv's mask lives on
relative positions in [-1, 1] across the layer's input, so its sigma compares across depth as a fraction of the
feature map (layers 3-4 see 16x16, so their pixels are twice as large in the image).

    python -m experiments.flexconv_sizes                 # CPU budget: 12 epochs, 1 seed, a few minutes at 1 thread
    python -m experiments.flexconv_sizes --full --device cuda   # 40 epochs, 3 seeds

Prints each layer's kernel size (px, the mask's crop) and mask sigma at init and after training, per scale, and
writes ``results/flexconv_sizes.png``.
"""

from __future__ import annotations

import statistics

from experiments.size_common import layer_records, parser, save, scope, setup, train

SCALES = {"small": [1.0, 1.25], "large": [2.5, 3.0]}
CONFIG = {"backbone": "simple", "conv": "flexconv", "depth": 4, "width": 16, "pooling": "max",
          "dataset": "digits-multiscale", "lr": 1e-2, "batch_size": 64}


def _side(r: dict) -> float:
    return (r["height"] + r["width"]) / 2


def _sigma(r: dict) -> float:
    return (r["mask_sigma_h"] + r["mask_sigma_w"]) / 2


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    epochs, seeds, out = setup(args, epochs=(12, 40), seeds=([0], [0, 1, 2]))
    runs: dict[str, list[dict]] = {k: [] for k in SCALES}
    for seed in seeds:
        for name, scales in SCALES.items():
            cfg = {**CONFIG, "data_options": {"scales": scales}, "epochs": epochs, "seed": seed, "device": args.device}
            result, _ = train(cfg)
            runs[name].append({"val_acc": result["metrics"]["val_acc"],
                               "init": [_side(r) for r in layer_records(result, 0)],
                               "init_sigma": [_sigma(r) for r in layer_records(result, 0)],
                               "side": [_side(r) for r in layer_records(result)],
                               "sigma": [_sigma(r) for r in layer_records(result)]})
            print(f"seed {seed} {name} digits: val_acc {runs[name][-1]['val_acc']:.3f}, kernel side per layer "
                  f"{', '.join(f'{s:.1f}' for s in runs[name][-1]['side'])} px", flush=True)
    layers = len(runs["small"][0]["side"])

    def mean(name: str, key: str) -> list[float]:
        return [statistics.fmean(r[key][i] for r in runs[name]) for i in range(layers)]

    print(f"\nFlexConv on digits-multiscale, 32x32 canvas, max pooling after layer 2; {scope(args, epochs, seeds)}")
    print(f"{'layer':<6} {'init px':>8} {'small px':>9} {'large px':>9} {'init sigma':>11} {'small sigma':>12} "
          f"{'large sigma':>12}")
    init, init_sigma = mean("small", "init"), mean("small", "init_sigma")
    small, large = mean("small", "side"), mean("large", "side")
    small_s, large_s = mean("small", "sigma"), mean("large", "sigma")
    for i in range(layers):
        print(f"{i + 1:<6} {init[i]:8.1f} {small[i]:9.1f} {large[i]:9.1f} {init_sigma[i]:11.3f} {small_s[i]:12.3f} "
              f"{large_s[i]:12.3f}")
    print("val_acc: " + ", ".join(f"{k} {statistics.fmean(r['val_acc'] for r in runs[k]):.3f}" for k in SCALES))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = list(range(1, layers + 1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, (a, b, c, label) in zip(axes, [(init, small, large, "kernel side (px of the layer's grid)"),
                                           (init_sigma, small_s, large_s, "mask sigma (fraction of the grid)")],
                                    strict=True):
        ax.plot(depth, a, color="gray", ls="--", marker=".", label="init (both)")
        ax.plot(depth, b, marker="o", label=f"small digits (scales {SCALES['small']})")
        ax.plot(depth, c, marker="s", label=f"large digits (scales {SCALES['large']})")
        ax.set_xticks(depth)
        ax.set_xlabel("layer (depth; max pool after 2)")
        ax.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"FlexConv on digits-multiscale: learned size per layer ({epochs} ep, {len(seeds)} seed(s))",
                 fontsize=9)
    save(fig, out, "flexconv_sizes", {"scope": scope(args, epochs, seeds), "runs": runs})


if __name__ == "__main__":
    main()

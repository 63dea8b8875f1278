"""Speed of every registry layer against the cheaper of nn.Conv2d and an FFT convolution of the same kernel size.

The target: forward + backward of each layer at most 1.1x min(nn.Conv2d, fft_conv2d) with a kernel of the
size the layer actually convolves with (batch 16, 32 -> 32 channels, 32x32 input), at a small and a large learned
size. Everything is timed side by side in one run (interleaved rounds, medians; nas_flex.bench.compare).

Columns: the kernel the layer convolves with (h x w), its effective size when that differs (mixed: the
softmax-expected side; envelope: the aperture's extent), the layer's time, the two baselines' times relative to
the layer, and layer / min(baselines). "vs spatial" is what a spatial-only implementation (the authors' FlexConv)
pays for the same kernel, relative to the layer.

    python -m experiments.bench_layers                  # wall clock, all threads
    python -m experiments.bench_layers --clock cpu --threads 1   # CPU time, robust on a loaded machine

The rows go to ``experiments/results/bench_layers.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from experiments.common import write_json
from nas_flex.bench import compare, fwd_bwd
from nas_flex.functional import fft_conv2d
from nas_flex.layers import build

# (layer, size label, hparams that put the learned size there at construction)
CASES = [
    ("conv", "small", {"kernel_size": 3}),
    ("conv", "large", {"kernel_size": 31}),
    ("mixed", "small", {"kernel_sizes": (3, 5, 7)}),
    ("mixed", "large", {"kernel_sizes": (9, 17, 31)}),
    ("flexconv", "small", {"mask_sigma_init": 0.075}),
    ("flexconv", "large", {"mask_sigma_init": 0.6}),
    ("njet", "small", {"sigma_init": 0.5}),
    ("njet", "large", {"sigma_init": 8.0}),
    ("envelope", "small", {"kernel_size": 5}),
    ("envelope", "large", {"kernel_size": 31}),
    ("niff", "input", {}),
    ("cfconv", "input", {"sampled_positions": 2**12}),
]


def measure(device: str, *, batch: int = 16, channels: int = 32, size: int = 32, rounds: int = 7,
            clock: str = "wall", only: list[str] | None = None, cases: list | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
    """Time every case (``CASES``) side by side on ``device``; print the table through ``log`` and return its rows
    (layer, size, kernel, effective, layer_ms, conv_over_layer, fft_over_layer, layer_over_min)."""
    n, c, hw, dev = batch, channels, size, device
    log(f"device={dev} threads={torch.get_num_threads()} clock={clock} batch={n} {c}->{c} {hw}x{hw}, "
        "forward+backward, medians of interleaved rounds\n")
    head = (f"{'layer':<9} {'size':<6} {'kernel':>7} {'effective':>11} {'layer ms':>9} {'conv/layer':>11} "
            f"{'fft/layer':>10} {'layer/min':>10}")
    log(head)
    log("-" * len(head))
    torch.manual_seed(0)
    x = torch.randn(n, c, hw, hw, device=dev, requires_grad=True)
    # a throwaway round first: the process's first convolutions pay for thread-pool start-up and allocator growth,
    # which would otherwise land on whichever case runs first
    w0 = torch.randn(c, c, 3, 3, device=dev, requires_grad=True)
    compare({"warm-up": fwd_bwd(lambda: F.conv2d(x, w0, padding=1))}, rounds=5, min_time=0.5, device=dev,
            clock=clock)
    rows = []
    for name, label, hp in cases or CASES:
        if only and name not in only:
            continue
        layer = build(name, c, c, **hp).to(dev)
        layer(x.detach())  # materialise the grid / state at this input size
        if layer.domain == "spatial":
            kh, kw = layer.to_conv2d().kernel_size
        else:
            kh, kw = (hw if hw % 2 else hw - 1,) * 2  # an input-sized odd kernel
        eh, ew = layer.effective_kernel_size
        w = torch.randn(c, c, kh, kw, device=dev, requires_grad=True)
        b = torch.randn(c, device=dev, requires_grad=True)
        t = compare(
            {
                "layer": fwd_bwd(lambda m=layer: m(x)),
                "conv": fwd_bwd(lambda w=w, b=b: F.conv2d(x, w, b, padding=(w.shape[2] // 2, w.shape[3] // 2))),
                "fft": fwd_bwd(lambda w=w, b=b: fft_conv2d(x, w, b)),
            },
            rounds=rounds, device=dev, clock=clock,
        )
        eff = "" if math.isclose(eh, kh) and math.isclose(ew, kw) else f"{eh:.1f}x{ew:.1f}"
        ratio = t["layer"] / min(t["conv"], t["fft"])
        flag = "" if ratio <= 1.1 else "  > 1.1"
        log(f"{name:<9} {label:<6} {f'{kh}x{kw}':>7} {eff:>11} {t['layer'] * 1e3:>9.1f} "
            f"{t['conv'] / t['layer']:>11.2f} {t['fft'] / t['layer']:>10.2f} {ratio:>10.2f}{flag}")
        rows.append({"layer": name, "size": label, "kernel": [kh, kw], "effective": [eh, ew],
                     "layer_ms": t["layer"] * 1e3, "conv_over_layer": t["conv"] / t["layer"],
                     "fft_over_layer": t["fft"] / t["layer"], "layer_over_min": ratio})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", nargs="*", default=None, help="layer names to run")
    ap.add_argument("--json", default="bench_layers", help="rows file (a bare name: experiments/results/)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.device, batch=args.batch, channels=args.channels, size=args.size, rounds=args.rounds,
                   clock=args.clock, only=args.only, log=lambda line: print(line, flush=True))
    print(f"rows: {write_json(args.json, {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()

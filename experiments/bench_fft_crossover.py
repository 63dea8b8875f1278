"""Where does the FFT convolution beat the direct one? Calibrates ``nas_flex.functional.conv.FFT_CROSSOVER``.

For batch 16, 32 -> 32 channels, square inputs, forward + backward, times ``F.conv2d`` (spatial) and
``fft_conv2d`` side by side for odd kernel sides, prints fft/spatial, the flop model's estimate of spatial/fft
work, and what ``choose_conv_method`` picks. A good calibration puts the switch where the measured ratio crosses 1.

    python -m experiments.bench_fft_crossover [--sizes 32 64] [--device cpu]

The rows go to ``experiments/results/bench_fft_crossover.json`` (``--json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from experiments.common import write_json
from nas_flex.bench import compare, fwd_bwd
from nas_flex.functional.conv import choose_conv_method, fft_conv2d, fft_conv_flops, spatial_conv_flops

KERNELS = [3, 5, 7, 9, 11, 13, 15, 17, 21, 25, 33]


def measure(device: str, *, sizes: list[int], kernels: list[int], batch: int = 16, channels: int = 32,
            rounds: int = 5, log: Callable[[str], None] = print) -> list[dict]:
    """Time F.conv2d and fft_conv2d side by side for each (square input side, odd kernel side); print the table
    through ``log`` and return its rows (hw, k, spatial_s, fft_s, model_ratio: the flop model's spatial/fft work,
    chosen: what choose_conv_method picks now)."""
    n, c = batch, channels
    log(f"device={device} threads={torch.get_num_threads()} batch={n} channels={c}->{c} (forward+backward)")
    log(f"{'H=W':>4} {'k':>3} {'fft/spatial':>11} {'model spatial/fft':>17} {'chosen':>8}")
    rows = []
    for hw in sizes:
        for k in kernels:
            if k > 2 * hw - 1:
                continue
            x = torch.randn(n, c, hw, hw, device=device, requires_grad=True)
            w = torch.randn(c, c, k, k, device=device, requires_grad=True)
            t = compare(
                {
                    "spatial": fwd_bwd(lambda x=x, w=w, k=k: F.conv2d(x, w, padding=k // 2)),
                    "fft": fwd_bwd(lambda x=x, w=w: fft_conv2d(x, w)),
                },
                rounds=rounds,
                device=device,
            )
            model = spatial_conv_flops(n, c, c, hw, hw, k, k) / fft_conv_flops(n, c, c, hw, hw, k, k)  # no penalty
            chosen = choose_conv_method(tuple(x.shape), tuple(w.shape), x.device.type)
            log(f"{hw:>4} {k:>3} {t['fft'] / t['spatial']:>11.2f} {model:>17.2f} {chosen:>8}")
            rows.append({"hw": hw, "k": k, "spatial_s": t["spatial"], "fft_s": t["fft"], "model_ratio": model,
                         "chosen": chosen})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--kernels", type=int, nargs="+", default=KERNELS)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="bench_fft_crossover", help="rows file (a bare name: experiments/results/)")
    args = ap.parse_args()
    rows = measure(args.device, sizes=args.sizes, kernels=args.kernels, batch=args.batch, channels=args.channels,
                   rounds=args.rounds, log=lambda line: print(line, flush=True))
    print(f"rows: {write_json(args.json, {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()

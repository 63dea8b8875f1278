"""Speed and memory of the frequency-domain layers, NIFF and CF-Conv, side by side in one run.

NIFF (forward + backward, gradients for the input and every weight): the separable NIFF against the spatial
depthwise-separable conv with a featuremap-sized depthwise kernel (odd side covering the input: H + 1 for even H),
which is what the paper's runtime tables compare ("over four times faster on ResNet-50"), and against a 3x3
depthwise-separable conv; the full NIFF against a full spatial conv with a featuremap-sized kernel (``--full``).
Spatial convs are plain ``F.conv2d`` (direct convolution), as in the paper.

CF-Conv (one training step = forward + backward): with ``--sampled`` positions (default 2**12) against the full
evaluation (``sampled_positions=None``) at 32, 64 and 128 px. Bytes are the total bytes of the new storages every
aten op returns during the step, forward and backward (a TorchDispatchMode that sees each op's outputs and skips
views and in-place results, which share an input's storage): a tracemalloc for tensors, device-independent and
exact. Times are medians of interleaved rounds (``nas_flex.bench.compare``), so load on a shared machine hits all
candidates alike; report the ratios. On a shared CPU use ``--threads 1 --clock cpu`` (CPU time of the work itself).

    python -m experiments.bench_frequency [--batch 8] [--channels 16] [--device cpu] [--full] [--threads 1 --clock cpu]

The figures go to ``experiments/results/bench_frequency.json`` (``--json``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from experiments.common import write_json
from nas_flex.bench import compare, fwd_bwd
from nas_flex.functional.niff import circular_conv2d_rfft
from nas_flex.layers import build
from nas_flex.train.metering import allocated_bytes


def depthwise_separable(x: torch.Tensor, depthwise: torch.Tensor, pointwise: torch.Tensor) -> torch.Tensor:
    """Spatial depthwise conv ('same', odd kernel) followed by a 1x1 conv: what separable NIFF replaces."""
    k = depthwise.shape[-1]
    return F.conv2d(F.conv2d(x, depthwise, padding=k // 2, groups=x.shape[1]), pointwise)


def bench_niff(args: argparse.Namespace) -> list[dict]:
    n, c, dev = args.batch, args.channels, args.device
    rows = []
    print(f"\nNIFF, forward+backward, batch {n}, {c} -> {c} channels, device {dev} ({torch.get_num_threads()} threads)")
    print(f"{'H=W':>4} {'k_fm':>4} {'dw-sep k_fm / NIFF':>18} {'NIFF / dw-sep 3x3':>17}"
          + (f" {'full k_fm / NIFF full':>21}" if args.full else ""))
    for hw in args.niff_sizes:
        k = hw if hw % 2 else hw + 1  # odd, featuremap-sized: covers the input
        x = torch.randn(n, c, hw, hw, device=dev, requires_grad=True)
        niff = build("niff", c, c, device=dev)
        dw_big = torch.randn(c, 1, k, k, device=dev, requires_grad=True)
        dw_3 = torch.randn(c, 1, 3, 3, device=dev, requires_grad=True)
        pw = torch.randn(c, c, 1, 1, device=dev, requires_grad=True)
        cands = {
            "niff": fwd_bwd(lambda x=x, m=niff: m(x)),
            "dwsep_fm": fwd_bwd(lambda x=x, w=dw_big, p=pw: depthwise_separable(x, w, p)),
            "dwsep_3": fwd_bwd(lambda x=x, w=dw_3, p=pw: depthwise_separable(x, w, p)),
        }
        if args.full:
            niff_full = build("niff", c, c, mode="full", device=dev)
            full_big = torch.randn(c, c, k, k, device=dev, requires_grad=True)
            cands["niff_full"] = fwd_bwd(lambda x=x, m=niff_full: m(x))
            cands["full_fm"] = fwd_bwd(lambda x=x, w=full_big, k=k: F.conv2d(x, w, padding=k // 2))
        t = compare(cands, rounds=args.rounds, warmup=1, device=dev, clock=args.clock)
        row = {"hw": hw, "k_fm": k, **{f"seconds_{name}": v for name, v in t.items()},
               "speedup_vs_dwsep_fm": t["dwsep_fm"] / t["niff"], "slowdown_vs_dwsep_3": t["niff"] / t["dwsep_3"]}
        line = f"{hw:>4} {k:>4} {row['speedup_vs_dwsep_fm']:>18.2f} {row['slowdown_vs_dwsep_3']:>17.2f}"
        if args.full:
            row["speedup_full_vs_full_fm"] = t["full_fm"] / t["niff_full"]
            line += f" {row['speedup_full_vs_full_fm']:>21.2f}"
        print(line, flush=True)
        rows.append(row)
    return rows


def bench_cfconv(args: argparse.Namespace) -> list[dict]:
    n, c, dev, p = args.batch, args.cf_channels, args.device, args.sampled
    print(f"\nCF-Conv, one training step (forward+backward), batch {n}, {c} -> {c} channels, {p} sampled positions")
    layers, cands = {}, {}
    for hw in args.cf_sizes:
        x = torch.randn(n, c, hw, hw, device=dev, requires_grad=True)
        sparse = build("cfconv", c, c, sampled_positions=p, device=dev)
        sparse(x)  # create the state outside the measurement
        positions = hw * (hw // 2 + 1) * c * c
        dense = build("cfconv", c, c, sampled_positions=None, device=dev) if positions <= args.max_full else None
        layers[hw] = (sparse, dense, positions)
        fixed = sparse.frequency_kernel().detach()  # a kernel that costs nothing to make: the conv's own floor
        cands[f"sparse_{hw}"] = fwd_bwd(lambda x=x, m=sparse: m(x))
        cands[f"fixed_{hw}"] = fwd_bwd(lambda x=x, k=fixed: circular_conv2d_rfft(x, k))
        if dense is not None:
            cands[f"full_{hw}"] = fwd_bwd(lambda x=x, m=dense: m(x))
    t = compare(cands, rounds=args.rounds, warmup=1, device=dev, clock=args.clock)
    first = args.cf_sizes[0]
    print(f"{'H=W':>4} {'positions':>10} {'sparse MB':>9} {'full MB':>9} {'sparse/full bytes':>17} "
          f"{'sparse time/' + str(first) + 'px':>15} {'(sparse-conv)/' + str(first) + 'px':>18} "
          f"{'sparse/conv':>11} {'full/sparse':>11}")
    rows = []
    per_position = None
    overhead = {hw: t[f"sparse_{hw}"] - t[f"fixed_{hw}"] for hw in args.cf_sizes}  # the MLP and state work
    for hw in args.cf_sizes:
        sparse, dense, positions = layers[hw]
        b_sparse = allocated_bytes(cands[f"sparse_{hw}"])
        row = {"hw": hw, "positions": positions, "sampled": p, "bytes_sparse": b_sparse,
               "seconds_sparse": t[f"sparse_{hw}"], "seconds_conv_fixed_kernel": t[f"fixed_{hw}"],
               "sparse_time_rel": t[f"sparse_{hw}"] / t[f"sparse_{first}"],
               "sparse_overhead_rel": overhead[hw] / overhead[first]}
        if dense is not None:
            row["bytes_full"] = allocated_bytes(cands[f"full_{hw}"])
            row["seconds_full"] = t[f"full_{hw}"]
            per_position = row["bytes_full"] / positions
            full_mb, full_time = f"{row['bytes_full'] / 2**20:>9.1f}", f"{t[f'full_{hw}'] / t[f'sparse_{hw}']:>11.2f}"
        else:  # not run (too large for this machine): extrapolated from the last measured size, bytes per position
            row["bytes_full_extrapolated"] = per_position * positions if per_position else None
            full_mb = f"~{row['bytes_full_extrapolated'] / 2**20:>8.0f}" if per_position else f"{'-':>9}"
            full_time = f"{'-':>11}"
        full_bytes = row.get("bytes_full") or row.get("bytes_full_extrapolated")
        row["bytes_ratio"] = b_sparse / full_bytes if full_bytes else None
        ratio = f"{row['bytes_ratio']:>17.4f}" if full_bytes else f"{'-':>17}"
        print(f"{hw:>4} {positions:>10} {b_sparse / 2**20:>9.1f} {full_mb} {ratio} {row['sparse_time_rel']:>15.2f} "
              f"{row['sparse_overhead_rel']:>18.2f} {t[f'sparse_{hw}'] / t[f'fixed_{hw}']:>11.2f} {full_time}",
              flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=16, help="NIFF channels in and out")
    ap.add_argument("--niff-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--full", action="store_true", help="also time full NIFF against a full featuremap-sized conv")
    ap.add_argument("--cf-channels", type=int, default=16, help="CF-Conv channels in and out")
    ap.add_argument("--max-full", type=int, default=600_000,
                    help="run the full evaluation only up to this many kernel positions (it allocates ~7 kB each)")
    ap.add_argument("--cf-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--sampled", type=int, default=2**12, help="CF-Conv sampled positions per step")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="bench_frequency", help="figures file (a bare name: experiments/results/)")
    ap.add_argument("--skip", choices=["niff", "cfconv"], default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time (with --threads 1, robust to other jobs on a shared CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; 1 on a shared CPU, where a busy core stalls every multi-threaded op")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"device": args.device, "threads": torch.get_num_threads()}
    if args.skip != "niff":
        out["niff"] = bench_niff(args)
    if args.skip != "cfconv":
        out["cfconv"] = bench_cfconv(args)
    print(f"figures: {write_json(args.json, {'args': vars(args), **out})}")


if __name__ == "__main__":
    main()

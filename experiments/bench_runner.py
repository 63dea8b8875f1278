"""How much of a search's machine time is training? Reads an experiment's rows (or runs a search first) and prints:

* the job's wall time (first ``started`` to last ``finished``) and its core-seconds (wall x cores);
* the share of them spent training (the trials' ``train_seconds``: the epochs' training steps, not evaluation,
  set-up or Ray) and the share covered by a running trial (``finished - started`` per trial), with the idle rest;
* the job's training FLOPs (3 x forward FLOPs per example, for forward and backward, x the examples trained:
  ``examples_per_second x train_seconds``) against this machine's float32 matmul peak, measured in the same run
  (``torch.mm`` of 1024 x 1024 matrices on one thread, times the cores), so the distance to the hardware's limit is
  visible.

    python -m experiments.bench_runner --storage /tmp/mainjob_repeats                  # the latest experiment there
    python -m experiments.bench_runner --space search_spaces/grid_vs_learned.py --storage /tmp/bench_job

Timestamps are whole seconds, so shares on jobs of a few seconds are rough. On a machine shared with other work
the shares measure the contention as much as the runner.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd


def matmul_peak(seconds: float = 2.0, n: int = 1024) -> float:
    """FLOP/s of a float32 ``torch.mm`` of n x n matrices on one thread (the median of repeated runs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        rates, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            torch.mm(a, b)
            rates.append(2 * n**3 / (time.perf_counter() - t))
        return float(np.median(rates))
    finally:
        torch.set_num_threads(threads)


def job_rows(storage: Path, experiment: str | None) -> tuple[pd.DataFrame, str]:
    """The rows of ``experiment`` (default: the one written last) in ``storage``."""
    from nas_flex.leaderboard import Leaderboard

    df = Leaderboard(storage).to_pandas()
    if df.empty:
        raise SystemExit(f"no rows in {storage}")
    experiment = experiment or str(df.sort_values("written_at")["experiment"].iloc[-1])
    return df[df["experiment"] == experiment].reset_index(drop=True), experiment


def summary(df: pd.DataFrame, cores: int, peak: float) -> dict[str, float]:
    """Wall, core-seconds, training and in-trial shares, training FLOPs and their share of the peak."""
    started, finished = pd.to_datetime(df["started"]), pd.to_datetime(df["finished"])
    wall = (finished.max() - started.min()).total_seconds()
    core_seconds = max(wall, 1.0) * cores
    train = float(df["train_seconds"].fillna(0).sum())
    in_trial = float((finished - started).dt.total_seconds().clip(lower=0).sum())
    examples = (df["examples_per_second"].astype(float) * df["train_seconds"].astype(float)).fillna(0)
    flops = float((3.0 * df["flops"].astype(float).fillna(0) * examples).sum())
    return {"trials": len(df), "wall_s": wall, "core_seconds": core_seconds, "train_share": train / core_seconds,
            "in_trial_share": in_trial / core_seconds, "train_flops": flops,
            "achieved_flops_per_s": flops / max(wall, 1.0), "peak_flops_per_s": peak * cores,
            "peak_share": flops / max(wall, 1.0) / (peak * cores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, help="the search's leaderboard folder")
    ap.add_argument("--experiment", default=None, help="default: the experiment written last")
    ap.add_argument("--space", default=None, help="run this search space file into --storage first")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="cores the job had (default: this machine's)")
    args = ap.parse_args()
    if args.space:
        from nas_flex.tune import search

        search(args.space, storage=args.storage, experiment=args.experiment)
    df, experiment = job_rows(Path(args.storage), args.experiment)
    peak = matmul_peak()
    s = summary(df, args.cores, peak)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"experiment {experiment!r}: {s['trials']} trials, wall {s['wall_s']:.0f} s on {args.cores} cores = "
          f"{s['core_seconds']:.0f} core-seconds (load average now {load:.1f})")
    print(f"  training: {s['train_share']:.1%} of the core-seconds; inside a trial (started..finished): "
          f"{s['in_trial_share']:.1%}; idle or Ray: {1 - s['in_trial_share']:.1%}")
    print(f"  training FLOPs: {s['train_flops']:.3g} (3 x forward x examples), {s['achieved_flops_per_s'] / 1e9:.2f} "
          f"GFLOP/s over the job; matmul peak here {peak / 1e9:.1f} GFLOP/s per core x {args.cores} = "
          f"{s['peak_flops_per_s'] / 1e9:.1f} GFLOP/s: the job ran at {s['peak_share']:.1%} of it")


if __name__ == "__main__":
    main()

"""Where one trial's time goes: a cProfile of ``run_trial`` on one of the main job's configs (default conv 7x7, its
space file's pooling), in this process, split into the steps a trial takes:

* training: ``train_one_epoch`` (the epochs' forward, backward and optimiser steps);
* evaluating: ``evaluate`` (the validation pass at initialisation and after every epoch);
* counting FLOPs: ``count_flops`` (at set-up and whenever the cost may have changed);
* set-up: ``setup_trial`` without its FLOP count (seeding, data, model, optimisers);
* the rest: epoch records, learned-size records, checkpoint-free bookkeeping, the summary.

    python -m experiments.profile_trial                        # conv 7x7, the main job's 10 epochs at batch 32
    python -m experiments.profile_trial --method njet --epochs 3
    python -m experiments.profile_trial --warm    # as the second trial of a reused worker process

A cold profile (the default) is a fresh process's first trial: it includes the one-off costs a worker pays once
(torch's lazy import of its compiler stack on the first FLOP count, the built-in data's generation). ``--warm`` first
runs one unprofiled epoch of the same config in this process, as a Ray worker reused between trials
(``RunConfig(reuse_actors=True)``) has run an earlier trial.

Run it with ``OMP_NUM_THREADS=1`` (a Ray trial's one CPU) and note the load average it prints: on a shared machine
the shares move with the other work. The numbers go to ``experiments/results/profile_trial.jsonl``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from typing import Any

STEPS = {  # step -> the function whose cumulative time it is (file suffix, function name)
    "training": ("nas_flex/train/trial.py", "train_one_epoch"),
    "evaluating": ("nas_flex/train/trial.py", "evaluate"),
    "counting FLOPs": ("nas_flex/train/metering.py", "count_flops"),
    "set-up": ("nas_flex/train/trial.py", "setup_trial"),
}


def _cumulative(stats: pstats.Stats, path: str, name: str) -> float:
    """Cumulative seconds of the function ``name`` defined in a file ending with ``path``."""
    return sum(row[3] for (file, _, func), row in stats.stats.items()  # type: ignore[attr-defined]
               if func == name and file.replace(os.sep, "/").endswith(path))


def shares(stats: pstats.Stats, total: float, setup_flops: float) -> dict[str, float]:
    """Seconds per step of a profiled ``run_trial`` (``STEPS``); set-up excludes its own FLOP count, and "rest"
    is what no step covers."""
    out = {step: _cumulative(stats, *where) for step, where in STEPS.items()}
    out["set-up"] -= setup_flops
    out["rest"] = total - sum(out.values())
    return out


def _called_from(stats: pstats.Stats, path: str, name: str, caller: str) -> float:
    """Cumulative seconds of ``name`` (defined in a file ending with ``path``) when called by the function
    ``caller``."""
    total = 0.0
    for (file, _, func), row in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and file.replace(os.sep, "/").endswith(path):
            total += sum(t[3] for (_, _, c), t in row[4].items() if c == caller)
    return total


def profile(config: dict[str, Any]) -> tuple[dict[str, float], float, Any]:
    """(seconds per step, total seconds, the trial's record) of one ``run_trial`` of ``config`` under cProfile."""
    from nas_flex.train.trial import run_trial

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    record = run_trial(config)
    prof.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(prof)
    # set-up's own FLOP count: through ``_meter`` (counting directly) or a ``FlopMeter`` call, whichever the code has
    setup_flops = (_called_from(stats, "nas_flex/train/trial.py", "_meter", "setup_trial")
                   + _called_from(stats, "nas_flex/train/metering.py", "__call__", "setup_trial"))
    return shares(stats, total, setup_flops), total, record


def main(argv: list[str] | None = None) -> None:
    from experiments.common import append_jsonl, main_job_config, space_constants

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="conv")
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--pooling", default=None, help="default: the main job's POOLING")
    parser.add_argument("--epochs", type=int, default=None, help="default: the main job's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="a label stored with the numbers (e.g. before / after)")
    parser.add_argument("--warm", action="store_true", help="run one unprofiled epoch first (a reused worker)")
    args = parser.parse_args(argv)

    import torch

    pooling = args.pooling or space_constants()["POOLING"]
    config = main_job_config(args.method, pooling, args.kernel_size if args.method == "conv" else None)
    config = {**config, "seed": args.seed, "device": "cpu", **({"epochs": args.epochs} if args.epochs else {})}
    if args.warm:
        from nas_flex.train.trial import run_trial

        run_trial({**config, "epochs": 1})
    load_before = os.getloadavg()
    steps, total, record = profile(config)
    load_after = os.getloadavg()
    state = "warm" if args.warm else "cold"
    print(f"run_trial {args.method} ({pooling}, {state}), {config['epochs']} epochs at batch {config['batch_size']}, "
          f"{torch.get_num_threads()} thread(s), seed {args.seed}: {total:.1f} s, val_acc "
          f"{record.metrics['val_acc']:.4f}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for step, seconds in steps.items():
        print(f"  {step:<15} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    append_jsonl("profile_trial", {"tag": args.tag, "warm": args.warm, "config": config, "total_seconds": total,
                                   "seconds": steps,
                                   "val_acc": record.metrics["val_acc"], "flops": record.flops,
                                   "load_average": [load_before[0], load_after[0]]})


if __name__ == "__main__":
    main()

"""How long a freed CPU waits for its next trial: a small embedded search of identical short trials, run with Ray's
worker processes reused between trials (``RunConfig(reuse_actors=True)``, the default) and with a fresh process per
trial, timing each trial's training function from inside.

Each trial runs a training function that appends (process id, entry time, exit time) to a file of this benchmark
and trains the config's model for its epochs (``run_trial``'s steps: set-up, training, evaluation). The start-up
latency of a trial is the time from the end of the trial whose CPU it took to its own entry: the k-th trial to
start after the first ``cores`` is paired with the k-th trial to end. It covers Ray's start of a worker process (or
the reset of a reused one), the imports, the searcher's next suggestion and nas_flex's own per-trial steps before
the training function runs.

    python -m experiments.bench_trial_startup                      # 8 trials on this machine's CPUs, both settings
    python -m experiments.bench_trial_startup --trials 12

Numbers go to ``experiments/results/bench_trial_startup.jsonl``. On a machine shared with other work the latency
includes the contention.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _space(trials: int):
    """A grid of ``trials`` identical small trainings (they differ only in their seed)."""
    from nas_flex.spaces import SearchSpace

    def space(trial: Any) -> dict[str, Any]:
        seed = trial.suggest_categorical("seed", list(range(trials)))
        return {"dataset": "digits", "epochs": 1, "train_subset": 256, "val_subset": 128, "width": 8, "depth": 2,
                "seed": seed, "device": "cpu"}

    return SearchSpace(space, sampler="grid")


def _timed_trainable(log: str):
    """A training function that trains like the built-in loop and logs (pid, entry, exit) to ``log``."""

    def trainable(config: dict[str, Any], ctx: Any) -> None:
        entered = time.time()
        from nas_flex.train.trial import _initial_progress, _train_epochs, setup_trial

        trial, flops = setup_trial(config, device="cpu")
        progress = _initial_progress(trial, flops)

        def report(record: dict[str, Any]) -> None:
            ctx.report(trial.model, example=trial.sample, **{k: record[k] for k in
                                                             ("train_loss", "train_acc", "val_loss", "val_acc")})

        _train_epochs(trial, progress, report, None)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "entered": entered, "left": time.time()}) + "\n")

    return trainable


def latencies(events: list[dict[str, float]], cores: int) -> list[float]:
    """Seconds from each freed slot's trial end to the entry of the trial that took it (see the module text)."""
    starts = sorted(e["entered"] for e in events)[cores:]
    ends = sorted(e["left"] for e in events)
    return [s - e for s, e in zip(starts, ends)]


def run(trials: int, cores: int, reuse: bool, root: Path) -> dict[str, Any]:
    """One search of ``trials`` trials on this machine's ``cores`` CPUs (the embedded Ray takes them all, one per
    trial); its wall time, worker processes and latencies."""
    import nas_flex
    from nas_flex.tune import RunConfig

    log = root / f"events-{reuse}.jsonl"
    start = time.perf_counter()
    nas_flex.search(_space(trials), storage=str(root / f"storage-{reuse}"), trainable=_timed_trainable(str(log)),
                    num_samples=trials, run_config=RunConfig(reuse_actors=reuse, verbose=0))
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in log.read_text().splitlines()]
    gaps = latencies(events, cores)
    return {"reuse_actors": reuse, "trials": len(events), "cores": cores, "wall_seconds": wall,
            "worker_processes": len({e["pid"] for e in events}), "latency_seconds": gaps,
            "latency_median": float(np.median(gaps)) if gaps else float("nan"),
            "latency_mean": float(np.mean(gaps)) if gaps else float("nan")}


def main(argv: list[str] | None = None) -> None:
    from experiments.common import append_jsonl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args(argv)
    args.cores = os.cpu_count() or 1  # the embedded Ray's CPUs
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_trial_startup-") as tmp:
        for reuse in (False, True):
            out = run(args.trials, args.cores, reuse, Path(tmp))
            print(f"reuse_actors={reuse}: {out['trials']} trials in {out['wall_seconds']:.1f} s on {args.cores} "
                  f"CPUs, {out['worker_processes']} worker processes; start-up latency median "
                  f"{out['latency_median']:.2f} s, mean {out['latency_mean']:.2f} s "
                  f"({', '.join(f'{g:.2f}' for g in out['latency_seconds'])})")
            append_jsonl("bench_trial_startup", {**out, "load_average_before": load})
    print(f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()

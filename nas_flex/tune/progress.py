"""The search's progress callback: one line per finished trial, and the rows of trials that ended without their
trainable's say (stopped by the scheduler: written at once, so a duplicate waiting on one stops waiting)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from nas_flex.record import TrialStatus

__all__ = ["Progress", "nas_flex_trial_id"]


def nas_flex_trial_id(trial: Any) -> str:
    """The nas_flex trial id of a Ray trial: its own, or the one a resumed trial continues."""
    return (trial.config or {}).get("nas_flex_trial_id") or trial.trial_id


def _config(trial: Any) -> dict[str, Any]:
    return (trial.config or {}).get("nas_flex_config", {})


def _describe(config: dict[str, Any]) -> str:
    what = config.get("conv", "?") + (f" k={config['kernel_size']}" if config.get("kernel_size") else "")
    return what + (f" pool={config['pooling']}" if config.get("pooling") else "")


class Progress:
    """Prints one line per finished trial (done / total, best so far, elapsed and ETA) and collects the trials that
    ended without writing their row: ``stopped`` (by the scheduler) and ``errored`` (a crashed worker)."""

    def __init__(self, total: int, objective: str, mode: str, verbose: int = 1, *, storage: Path | None = None,
                 experiment: str = "") -> None:
        from ray.tune import Callback

        # no stream held here: Tune pickles its callbacks with the experiment state
        self.total, self.objective, self.mode, self.verbose = total, objective, mode, verbose
        self.storage, self.experiment = storage, experiment
        self.start = time.monotonic()
        self.done = 0
        self.best: tuple[float, str] | None = None
        self.runs: dict[str, list[float]] = {}  # architecture key -> its seeds' values so far (repeats)
        self.names: dict[str, str] = {}  # architecture key -> its short description
        self.errored: list[tuple[str, dict, str]] = []  # (trial_id, config, error) of trials that raised
        self.stopped: list[tuple[str, dict, dict]] = []  # (trial_id, config, last result) of early-stopped trials
        outer = self

        class _Cb(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                result = trial.last_result or {}
                if result.get("status") == TrialStatus.RUNNING.value:  # the scheduler stopped it: no row yet
                    outer.on_stopped((nas_flex_trial_id(trial), _config(trial), dict(result)))
                outer.finished(trial, result, error=False)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.errored.append((nas_flex_trial_id(trial), _config(trial),
                                      str(getattr(trial, "error_file", "") or "see the Ray logs")))
                outer.finished(trial, trial.last_result or {}, error=True)

        self.callback = _Cb()

    def on_stopped(self, stopped: tuple[str, dict, dict]) -> None:
        """Write a stopped trial's row now (a failure is retried once the search ends)."""
        self.stopped.append(stopped)
        if self.storage is None:
            return
        from nas_flex.tune.trainable import record_stopped

        try:
            record_stopped([stopped], self.storage, self.experiment)
        except Exception:  # noqa: BLE001 - the search's end writes it again, and raises there if it still fails
            pass

    def finished(self, trial: Any, result: dict, error: bool) -> None:
        self.done += 1
        if not self.verbose:
            return
        value = result.get(self.objective)
        what = _describe(_config(trial))
        if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
            # the best architecture by the mean over its seeds so far (one seed each: the best trial)
            from nas_flex.record import architecture_key

            key = architecture_key(_config(trial))
            self.runs.setdefault(key, []).append(float(value))
            self.names[key] = what
            means = {k: sum(v) / len(v) for k, v in self.runs.items()}
            top = (max if self.mode == "max" else min)(means, key=means.__getitem__)
            n = len(self.runs[top])
            self.best = (means[top], self.names[top] + ("" if n == 1 else f", mean of {n} seeds"))
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        status = TrialStatus.ERROR.value if error else result.get("status", TrialStatus.STOPPED.value)
        status = "stopped early" if status == TrialStatus.RUNNING.value else status
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        print(f"[{self.done}/{self.total}] {nas_flex_trial_id(trial)} {what}: {status}, {self.objective}={shown} | "
              f"best {best} | {elapsed:.0f}s elapsed, ETA {eta:.0f}s", flush=True)

"""Seeds as an axis: every architecture the sampler suggests is trained under ``repeats`` derived seeds, one Ray
trial and one leaderboard row each, and the sampler is told one value per architecture.

``RepeatSearcher`` wraps the Optuna searcher (``nas_flex.tune.searcher``). For each Optuna suggestion it emits one
trial per seed of ``nas_flex.record.derive_seeds(experiment seed, repeats)`` (the config's ``seed`` replaced, all
else equal, so the runs share their ``architecture_key`` and pair up by seed across architectures). When the last
seed of an architecture ends, the Optuna trial is told:

* COMPLETE with the mean over the seeds of each objective, when every seed completed (or was a duplicate);
* FAIL when any seed diverged, ran out of memory or raised (a method that breaks on one seed in three is not
  averaged over the other two);
* PRUNED when any seed was stopped early by the scheduler (ASHA compares each seed's trial with every trial at the
  same rung: seeds are separate trials to it).

Resume groups the experiment's rows by architecture: an architecture with all its seeds finished becomes one
finished Optuna trial (the same rule); one with seeds missing or unfinished is suggested again first, and only its
missing and unfinished seeds run (unfinished ones under their own trial ids, from their last epoch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from nas_flex.record import METRIC_COLUMNS, TrialStatus, architecture_key

__all__ = ["RepeatSearcher", "repeat_searcher", "group_resume", "aggregate_results", "trials_left"]

_FAILED = (TrialStatus.DIVERGED.value, TrialStatus.OOM.value, TrialStatus.ERROR.value)
_FULL = (TrialStatus.COMPLETED.value, TrialStatus.DUPLICATE.value)


def aggregate_results(results: Sequence[tuple[Mapping[str, Any] | None, bool]],
                      metrics: Sequence[str]) -> tuple[dict[str, Any] | None, bool]:
    """The one (result, error) the Optuna searcher gets for an architecture from its seeds' (result, error): the
    first failed seed's, else the first early-stopped seed's, else the last result with each of ``metrics``
    replaced by its mean over the seeds (NaN when a seed has no finite value)."""
    for result, error in results:
        if error or result is None or result.get("status") in _FAILED:
            return (dict(result) if result else None), True
    for result, _ in results:
        if result.get("status") not in _FULL and result.get("epoch", 0) < result.get("epochs", 0):
            return dict(result), False
    out = dict(results[-1][0])
    for metric in metrics:
        values = [r.get(metric) for r, _ in results]
        ok = all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in values)
        out[metric] = sum(float(v) for v in values) / len(values) if ok else math.nan
    out["nas_flex_seeds"] = len(results)
    return out, False


class RepeatSearcher(Searcher):
    """A Ray Tune searcher that trains each suggestion of ``searcher`` under every seed of ``seeds`` and tells it
    the mean once all of them ended (see the module docstring for failed and stopped seeds).

    Args:
        searcher: the Optuna searcher (its suggestions carry the config under ``nas_flex_config``).
        seeds: the derived training seeds (``nas_flex.record.derive_seeds``).
        resumed: architectures of a resumed experiment to finish first, in the order their params were enqueued in
            the searcher's study: each ``{"todo": [(seed, trial_id or None, config or None)], "done": [(result,
            error)]}`` (``group_resume``).
    """

    def __init__(self, searcher: Searcher, seeds: Sequence[int], *, resumed: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.seeds = [int(s) for s in seeds]
        self._resumed = [dict(g) for g in resumed]
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._groups: dict[str, dict[str, Any]] = {}
        self._group_of: dict[str, str] = {}
        self._count = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    @property
    def metrics(self) -> list[str]:
        """The objective(s) the wrapped searcher optimises."""
        metric = self.searcher.metric
        return list(metric) if isinstance(metric, (list, tuple)) else [metric]

    def _expand(self, group_id: str, suggestion: dict[str, Any]) -> None:
        """Queue one trial per seed to run of a new suggestion (a resumed architecture's first)."""
        extra = {k: v for k, v in suggestion.items() if k != "nas_flex_config"}
        group = self._resumed.pop(0) if self._resumed else {"todo": [(s, None, None) for s in self.seeds], "done": []}
        self._groups[group_id] = {"left": len(group["todo"]), "results": list(group["done"])}
        for seed, trial_id, config in group["todo"]:
            params = {**extra, "nas_flex_config": {**(config or suggestion["nas_flex_config"]), "seed": int(seed)}}
            if trial_id:
                params["nas_flex_trial_id"] = trial_id
            self._queue.append((group_id, params))

    def suggest(self, trial_id: str) -> dict | str | None:
        while not self._queue:
            self._count += 1
            group_id = f"architecture_{self._count:05d}"
            out = self.searcher.suggest(group_id)
            if out is None or out == Searcher.FINISHED:
                return out
            self._expand(group_id, out)
            if not self._groups[group_id]["left"]:  # nothing left to train of it (cannot happen from group_resume)
                self._finish(group_id)
        group_id, params = self._queue.pop(0)
        self._group_of[trial_id] = group_id
        return params

    def get_state(self) -> dict:
        """What Ray saves of this wrapper in its own folder (it saves the wrapped searcher itself; nas_flex never
        restores either: resume reads the rows)."""
        keep = ("seeds", "_resumed", "_queue", "_groups", "_group_of", "_count")
        return {k: getattr(self, k) for k in keep}

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch results stay with the scheduler: the sampler hears of an architecture once, at its end."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group_id = self._group_of.pop(trial_id, None)
        if group_id is None or group_id not in self._groups:
            return
        group = self._groups[group_id]
        group["results"].append((result, error))
        group["left"] -= 1
        if group["left"] <= 0:
            self._finish(group_id)

    def _finish(self, group_id: str) -> None:
        group = self._groups.pop(group_id)
        result, error = aggregate_results(group["results"], self.metrics) if group["results"] else (None, True)
        self.searcher.on_trial_complete(group_id, result, error=error)


# ------------------------------------------------------------------------------------------------------ resume
def _row_result(row: Mapping[str, Any], objectives: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
    """A finished leaderboard row as the (result, error) its trial reported."""
    result = {m: row.get(METRIC_COLUMNS[m]) for m in objectives}
    result.update(status=row["status"], epoch=int(row.get("epochs_completed") or 0), epochs=int(row.get("epochs") or 0))
    return result, row["status"] in _FAILED


def _row_key(row: Mapping[str, Any]) -> str:
    key = row.get("architecture_key")
    if isinstance(key, str) and key:
        return key
    return architecture_key(json.loads(row.get("config") or "{}"))


def group_resume(finished: Sequence[Mapping[str, Any]], unfinished: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                 objectives: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Group a resumed experiment's trials by architecture.

    Args:
        finished: its final leaderboard rows (dicts).
        unfinished: the ``trial.json`` of its started, unfinished trials.
        seeds: the experiment's derived seeds.
        objectives: ``{metric: mode}``.

    Returns:
        (done, partial): ``done`` holds one aggregated row per architecture whose seeds all finished (status and
        objective columns as ``aggregate_results`` gives them, for seeding the Optuna study); ``partial`` holds the
        architectures to finish, each ``{"search_params", "todo": [(seed, trial_id | None, config | None)],
        "done": [(result, error)]}``: unfinished seeds continue under their ids, missing seeds are new trials.
    """
    groups: dict[str, dict[str, Any]] = {}
    for row in finished:
        g = groups.setdefault(_row_key(row), {"rows": [], "running": []})
        g["rows"].append(dict(row))
    for info in unfinished:
        g = groups.setdefault(architecture_key(info["config"]), {"rows": [], "running": []})
        g["running"].append(dict(info))
    done, partial = [], []
    for g in groups.values():
        have = {int(r["seed"]) for r in g["rows"] if isinstance(r.get("seed"), (int, np.integer))}
        running = {int(i["config"].get("seed", -1)) for i in g["running"]}
        results = [_row_result(r, objectives) for r in g["rows"]]
        missing = [s for s in seeds if s not in have and s not in running]
        if not g["running"] and not missing:
            result, error = aggregate_results(results, list(objectives))
            row = {**g["rows"][0], "status": _status(result, error)}
            row.update({METRIC_COLUMNS[m]: (result or {}).get(m) for m in objectives})
            done.append(row)
            continue
        first = g["rows"][0] if g["rows"] else None
        stored = first.get("search_params") if first is not None else None
        params = (json.loads(stored) if isinstance(stored, str) and stored
                  else {} if first is not None else g["running"][0].get("search_params") or {})
        todo = [(int(i["config"].get("seed", 0)), i["trial_id"], i["config"]) for i in g["running"]]
        todo += [(s, None, json.loads(first["config"]) if first is not None else None) for s in missing]
        partial.append({"search_params": params, "todo": todo, "done": results})
    return done, partial


def _status(result: Mapping[str, Any] | None, error: bool) -> str:
    if error or result is None:
        return str((result or {}).get("status") or TrialStatus.ERROR.value)
    if result.get("status") not in _FULL and result.get("epoch", 0) < result.get("epochs", 0):
        return TrialStatus.STOPPED.value
    return TrialStatus.COMPLETED.value


def repeat_searcher(space: Any, objectives: Mapping[str, str], sampler: str, seed: int, study_name: str,
                    seeds: Sequence[int], finished: Sequence[Mapping[str, Any]] = (),
                    unfinished: Sequence[Mapping[str, Any]] = ()) -> RepeatSearcher:
    """``optuna_searcher`` wrapped in a ``RepeatSearcher``; on resume its study is seeded with one trial per finished
    architecture and the architectures left to finish are enqueued first (``group_resume``)."""
    from nas_flex.tune.searcher import _flatten, optuna_searcher

    done, partial = group_resume(finished, unfinished, seeds, objectives)
    inner = optuna_searcher(space, objectives, sampler, seed, study_name=study_name, finished=done)
    for group in partial:
        inner.study.enqueue_trial(_flatten(group["search_params"]), skip_if_exists=False)
    return RepeatSearcher(inner, seeds, resumed=partial)


def trials_left(finished: Sequence[Mapping[str, Any]], unfinished: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                objectives: Mapping[str, str], num_samples: int) -> tuple[int, int, int]:
    """(architectures seen, their trials still to run, trials of new architectures to sample) of a resumed
    repeated experiment of ``num_samples`` architectures."""
    done, partial = group_resume(finished, unfinished, seeds, objectives)
    seen = len(done) + len(partial)
    return seen, sum(len(g["todo"]) for g in partial), len(seeds) * max(0, num_samples - seen)

"""The searcher: Ray's ``OptunaSearch`` over a search space, told the truth about how each trial ended, and
re-seeded from the leaderboard on resume (never from a pickled study). Imports ray and optuna: load it only when a
search starts.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from nas_flex.config import resolve_config
from nas_flex.errors import NasFlexError
from nas_flex.record import METRIC_COLUMNS, TrialStatus
from nas_flex.spaces import SearchSpace

__all__ = ["NasFlexOptunaSearch", "optuna_searcher", "finished_trial"]

_FAILED = (TrialStatus.DIVERGED.value, TrialStatus.OOM.value, TrialStatus.ERROR.value)
_FULL = (TrialStatus.DUPLICATE.value, TrialStatus.COMPLETED.value)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Optuna's flat parameter names from the nested dict Ray's OptunaSearch returns (it splits names at '/')."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finite(values: Sequence[Any]) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(float(v)) for v in values)


def finished_trial(space_fn: Callable, row: Mapping[str, Any], objectives: Mapping[str, str]) -> Any:
    """A leaderboard row as an Optuna ``FrozenTrial`` (COMPLETE with its objective values, PRUNED or FAIL), its
    distributions recovered by replaying its stored sampler params through the space; None if they no longer fit."""
    try:
        fixed = optuna.trial.FixedTrial(_flatten(json.loads(row["search_params"] or "{}")))
        space_fn(fixed)
    except Exception:  # noqa: BLE001 - the space changed since: the trial still counts, Optuna just does not see it
        return None
    values = None
    if row["status"] in _FULL:
        values = [row.get(METRIC_COLUMNS[m]) for m in objectives]
        state = TrialState.COMPLETE if _finite(values) else TrialState.FAIL
    else:
        state = TrialState.PRUNED if row["status"] == TrialStatus.STOPPED.value else TrialState.FAIL
    return optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions, state=state,
                                     values=[float(v) for v in values] if state == TrialState.COMPLETE else None)


class NasFlexOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended: a trial the scheduler stopped early is
    PRUNED (not COMPLETE with its truncated score), and a diverged / failed one is FAIL. Unfinished trials of a
    resumed experiment are suggested first, with their stored config and their own trial id."""

    def __init__(self, *args: Any, resumed: Sequence[Mapping[str, Any]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nas_flex_resumed = [dict(info) for info in resumed]

    @property
    def study(self) -> optuna.Study:
        """The Optuna study the searcher asks and tells."""
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        out = super().suggest(trial_id)
        if out is not None and self.nas_flex_resumed:  # Optuna asks the enqueued params of these first
            info = self.nas_flex_resumed.pop(0)
            out = {**out, "nas_flex_config": _resolved(info["config"]), "nas_flex_trial_id": info["trial_id"]}
        return out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        status = (result or {}).get("status")
        early = result is not None and result.get("epoch", 0) < result.get("epochs", 0)
        if status in _FAILED or error:
            state = TrialState.FAIL
        elif early and status not in _FULL:
            state = TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        except Exception:  # noqa: BLE001 - e.g. a grid already exhausted
            pass
        self._completed_trials.add(trial_id)


def _sampler(sampler: str, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "grid":
            return optuna.samplers.BruteForceSampler(seed=seed)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if n_objectives > 1:
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def _resolved(config: Any) -> Any:
    """The trial's config resolved once, here in the driver: the trainable and ``run_trial`` take the
    ``TrialConfig`` as it is. An invalid one travels as it is, so its trial fails (and is recorded) as before."""
    try:
        return resolve_config(config)
    except NasFlexError:
        return config


def optuna_searcher(space: SearchSpace, objectives: Mapping[str, str], sampler: str, seed: int, study_name: str,
                    finished: Sequence[Mapping[str, Any]] = (),
                    resumed: Sequence[Mapping[str, Any]] = ()) -> NasFlexOptunaSearch:
    """Ray's OptunaSearch over ``space`` (the trial config travels under ``nas_flex_config``).

    Resume re-seeds a fresh study instead of unpickling the old one: ``finished`` leaderboard rows become completed
    (or pruned / failed) Optuna trials, so TPE learns from them and a grid skips them; ``resumed`` (the ``trial.json``
    of unfinished trials) are suggested first, with their stored config and their own trial id.
    """
    def define_by_run(trial):
        # the config travels under one key so the trainable can tell it apart from the raw Optuna params
        return {"nas_flex_config": _resolved(space(trial))}

    wrapped = SearchSpace(define_by_run, name=space.name)  # pickles by value (Ray pickles its searcher)
    metrics, modes = list(objectives), list(objectives.values())
    multi = len(metrics) > 1
    searcher = NasFlexOptunaSearch(space=wrapped, metric=metrics if multi else metrics[0],
                                   mode=modes if multi else modes[0], sampler=_sampler(sampler, seed, len(metrics)),
                                   study_name=study_name, resumed=resumed)
    seeded = [t for t in (finished_trial(space, row, objectives) for row in finished) if t is not None]
    if seeded:
        searcher.study.add_trials(seeded)
    for info in searcher.nas_flex_resumed:
        searcher.study.enqueue_trial(_flatten(info.get("search_params") or {}), skip_if_exists=False)
    return searcher

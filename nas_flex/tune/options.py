"""The options of ``nas_flex.search``, grouped the way Ray Tune groups its own: ``TuneConfig`` (what to sample and
what to optimise) and ``RunConfig`` (where and how the trials run). Both check their values when built, so a bad
option is a one-line error before Ray starts or a trial trains.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_flex.errors import SearchSpaceError, unknown_name
from nas_flex.record import METRICS, TEST_METRICS
from nas_flex.storage.safety import is_experiment_name
from nas_flex.tune.errors import ResourceError

__all__ = ["TuneConfig", "RunConfig", "SAMPLERS", "SCHEDULERS", "split_options", "resolve_objectives",
           "check_not_test_metric",
           "check_int", "check_experiment_name", "name_max", "NAME_RESERVE_BYTES"]

SAMPLERS = ("tpe", "grid", "random")
SCHEDULERS = (None, "asha")

Objectives = Mapping[str, str] | Sequence[str] | str | None


def check_int(name: str, value: Any, low: int, what: str) -> None:
    """``value`` is an integer >= ``low`` (not a bool), else a ``SearchSpaceError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SearchSpaceError(f"`{name}` must be an integer >= {low} ({what}), but got {value!r}")


#: bytes a file name built from an experiment name adds to it: ``--<trial id>`` (Ray's or a resumed one),
#: ``.parquet`` / ``.json``, and a temporary suffix (``.tmp.<pid>.<random>``) while it is written
NAME_RESERVE_BYTES = 100
_DEFAULT_NAME_MAX = 255


def name_max(path: str | os.PathLike | None) -> int:
    """The longest file name (bytes) the filesystem of ``path`` (or its nearest existing parent) allows."""
    existing = Path(path if path is not None else ".").expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or the filesystem does not say
        return _DEFAULT_NAME_MAX


def check_experiment_name(name: Any, storage: str | os.PathLike | None = None) -> None:
    """An experiment name names files and folders of the storage: no path separators or control characters, no
    hidden names, and short enough (in bytes) that every file name built from it fits the filesystem of
    ``storage`` (``NAME_RESERVE_BYTES`` less than its limit)."""
    if not is_experiment_name(name):
        raise SearchSpaceError(f"`experiment` must be a non-empty name without '/', '\\' or control characters "
                               f"that does not start with '.' or '_' (it names files and folders in the storage), "
                               f"but got {name!r}")
    limit = name_max(storage) - NAME_RESERVE_BYTES
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise SearchSpaceError(f"`experiment` must be at most {limit} bytes (the storage's filesystem allows "
                               f"{limit + NAME_RESERVE_BYTES}-byte file names, and '<experiment>--<trial id>' file "
                               f"names need room for the rest), but {name[:40]!r}... is {size} bytes")


def check_sampler(sampler: Any) -> None:
    if sampler not in SAMPLERS:
        raise SearchSpaceError(f"`sampler` must be 'tpe', 'grid' or 'random', but got {sampler!r}")


def check_not_test_metric(metric: Any, what: str) -> None:
    """A search never selects on the held-out test split: a ``test_*`` metric (or its ``metrics_test_*`` column) as
    an objective or scheduler metric is a one-line ``SearchSpaceError``, raised before Ray starts."""
    name = metric.removeprefix("metrics_") if isinstance(metric, str) else None
    if name in TEST_METRICS or (isinstance(name, str) and name.startswith("test_")):
        raise SearchSpaceError(
            f"{what} {metric!r} reads the held-out test split, which is for scoring only: no searcher or scheduler "
            f"may select on it; select on a validation metric such as 'val_acc' and read the test score from the "
            f"leaderboard's metrics_test_* columns")


def resolve_objectives(objectives: Objectives) -> dict[str, str]:
    """``{metric: "max" | "min"}`` from a mapping, a list of metric names (their natural directions) or one name;
    None is ``{"val_acc": "max"}``."""
    if objectives is None:
        return {"val_acc": "max"}
    if isinstance(objectives, str):
        objectives = [objectives]
    out = dict(objectives) if isinstance(objectives, Mapping) else {m: METRICS.get(m, "") for m in objectives}
    for metric, mode in out.items():
        check_not_test_metric(metric, "objective")
        if metric not in METRICS:
            raise unknown_name("objective", metric, METRICS, error=SearchSpaceError, sort=False)
        if mode not in ("max", "min"):
            raise SearchSpaceError(f"objective {metric!r} needs mode 'max' or 'min', but got {mode!r}")
    return out


def resolve_resources(resources_per_trial: Mapping[str, float] | None) -> dict[str, float]:
    """``{"cpu": float, "gpu": float}`` (default 1 CPU, no GPU), checked."""
    res = {"cpu": 1.0, "gpu": 0.0, **{k.lower(): float(v) for k, v in (resources_per_trial or {}).items()}}
    unknown = sorted(set(res) - {"cpu", "gpu"})
    if unknown or res["cpu"] <= 0 or res["gpu"] < 0:
        raise ResourceError(f"`resources_per_trial` takes cpu > 0 and gpu >= 0 (fractions allowed), got {res}")
    return res


@dataclass(frozen=True)
class TuneConfig:
    """What a search samples and what it optimises (Ray's ``TuneConfig``).

    Attributes:
        objectives: {"val_acc": "max"} by default; several, e.g. {"val_acc": "max", "flops": "min"}, make a
            multi-objective (NSGA-style TPE) search (``Leaderboard.pareto`` gives the front). A metric name or a list
            of names takes each metric's natural direction (``nas_flex.record.METRICS``).
        sampler: "tpe", "grid" (Optuna's BruteForceSampler) or "random"; default: the space's.
        scheduler: None or "asha" (early stopping on the first objective; stopped trials reach Optuna as PRUNED).
        seed: the sampler's seed; with ``repeats`` also the experiment seed the training seeds derive from.
        repeats: train every sampled architecture under this many seeds (``nas_flex.record.derive_seeds(seed,
            repeats)``), one trial and row each; the sampler sees their mean (``nas_flex.tune.repeats``).
            ``num_samples`` counts architectures. None: the space's ``REPEATS`` (default 1: the config's own seed).
        max_concurrent: cap on trials running at once (>= 1); None: as many as the resources allow.
        dedupe: train each distinct config once; repeats get status "duplicate" with the first one's metrics.
        validate: dry-run and check the space before launching.
    """

    objectives: Objectives = None
    sampler: str | None = None
    scheduler: str | None = None
    seed: int = 0
    repeats: int | None = None
    max_concurrent: int | None = None
    dedupe: bool = True
    validate: bool = True

    def __post_init__(self) -> None:
        if self.repeats is not None:
            check_int("repeats", self.repeats, 1, "seeds per architecture")
        if self.max_concurrent is not None:
            check_int("max_concurrent", self.max_concurrent, 1, "trials running at once")
        if self.scheduler not in SCHEDULERS:
            raise SearchSpaceError(f"`scheduler` must be None or 'asha', but got {self.scheduler!r}")
        if self.sampler is not None:
            check_sampler(self.sampler)
        resolve_objectives(self.objectives)

    @property
    def objective_modes(self) -> dict[str, str]:
        """The objectives as ``{metric: "max" | "min"}`` (the default one when none is given)."""
        return resolve_objectives(self.objectives)


@dataclass(frozen=True)
class RunConfig:
    """Where and how a search's trials run (Ray's ``RunConfig`` / ``FailureConfig``).

    Attributes:
        address: None starts an embedded local Ray with this machine's CPUs; "auto" or "ray://host:port" joins a
            cluster.
        resources_per_trial: e.g. {"cpu": 1, "gpu": 0.5} (fractional GPUs share a device); default 1 CPU.
        max_failures: retries of a trial that raised (>= 0; its row keeps the error until a retry succeeds).
        verbose: 0 silent, 1 one line per finished trial, 2 also Ray's own logs.
        reuse_actors: run the next trial in the worker process of a finished one (Ray's ``reuse_actors``), which
            saves each trial the process start, the imports and the built-in data's generation; every trial still
            seeds, builds and measures its own run (the same rows as in fresh processes). False: a fresh worker
            process per trial (for a training function that leaves global state behind).
    """

    address: str | None = None
    resources_per_trial: Mapping[str, float] | None = None
    max_failures: int = 1
    verbose: int = 1
    reuse_actors: bool = True

    def __post_init__(self) -> None:
        check_int("max_failures", self.max_failures, 0, "retries of a trial that raised")
        if not isinstance(self.reuse_actors, bool):
            raise SearchSpaceError(f"`reuse_actors` must be True or False, but got {self.reuse_actors!r}")
        resolve_resources(self.resources_per_trial)

    @property
    def resources(self) -> dict[str, float]:
        """``{"cpu": ..., "gpu": ...}`` of one trial."""
        return resolve_resources(self.resources_per_trial)


_TUNE_FIELDS = tuple(f.name for f in dataclasses.fields(TuneConfig))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def split_options(tune_config: TuneConfig | None, run_config: RunConfig | None,
                  options: Mapping[str, Any]) -> tuple[TuneConfig, RunConfig]:
    """The two configs, with ``options`` (any of their fields given flat, as ``search(..., scheduler="asha")``)
    applied; an unknown option, or one given both flat and in a config, is a one-line ``SearchSpaceError``."""
    unknown = sorted(set(options) - set(_TUNE_FIELDS) - set(_RUN_FIELDS))
    if unknown:
        raise SearchSpaceError(f"unknown search option(s) {unknown}; expected the fields of TuneConfig "
                               f"{list(_TUNE_FIELDS)} or RunConfig {list(_RUN_FIELDS)}")
    for config, fields in ((tune_config, _TUNE_FIELDS), (run_config, _RUN_FIELDS)):
        twice = sorted(k for k in options if k in fields and config is not None)
        if twice:
            raise SearchSpaceError(f"search option(s) {twice} given both as keywords and in a "
                                   f"{type(config).__name__}; give each once")
    tune = TuneConfig(**{k: v for k, v in options.items() if k in _TUNE_FIELDS}) if tune_config is None \
        else tune_config
    run = RunConfig(**{k: v for k, v in options.items() if k in _RUN_FIELDS}) if run_config is None else run_config
    for config, kind in ((tune, TuneConfig), (run, RunConfig)):
        if not isinstance(config, kind):
            raise SearchSpaceError(f"`{kind.__name__.lower().replace('config', '_config')}` must be a "
                                   f"{kind.__name__}, but got {type(config).__name__}")
    return tune, run

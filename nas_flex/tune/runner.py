"""``nas_flex.search(...)``: run a search space as Ray Tune trials with Optuna as the sampler.

The tuner (this package) is the only place that imports ray and optuna (besides Optuna's trial interface in
``nas_flex.spaces``); this module loads them only when a search starts. Each trial runs
``nas_flex.train.run_trial`` (``nas_flex.tune.trainable``), reports every epoch to Tune, and writes its own
leaderboard row (one Parquet file, atomically) when it ends, whatever the ending. The leaderboard is built from the
trials' own records with its explicit schema, never from ``ResultGrid.get_dataframe()``.

``storage`` (a shared path on a cluster) holds the leaderboard rows and, in folders whose names start with "_",
each trial's kept weights, the experiments' settings, the dedupe claims and the started trials' scratch folders:
the tree is in ``nas_flex.storage.layout``. Ray's own files, some of which Ray reads back with pickle (a failed
trial's ``error.pkl``), go to a private per-user folder outside the storage (``nas_flex.storage.private_ray_dir``).

Resume reads only JSON, Parquet and ``weights_only`` checkpoints (``nas_flex.tune.resume.plan_resume``).
Nothing in the storage is unpickled, so resuming a shared storage runs no code a third party could have placed there
(Ray's ``Tuner.restore`` would unpickle ``tuner.pkl``; it is not used).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_flex.errors import SearchSpaceError, StorageFullError
from nas_flex.record import METRIC_COLUMNS, METRICS, utc_now
from nas_flex.spaces import SearchSpace, grid_size, load_space, sample_configs, validate_space
from nas_flex.storage import StorageLayout, private_ray_dir
from nas_flex.tune.errors import ResourceError, StorageError
from nas_flex.tune.options import (
    RunConfig,
    TuneConfig,
    check_experiment_name,
    check_int,
    check_sampler,
    resolve_objectives,
    split_options,
)
from nas_flex.tune.resume import (
    check_space_unchanged,
    check_storage_files,
    check_storage_path,
    latest_experiment,
    plan_resume,
    prepare_storage,
    read_json,
    space_sample,
    sweep_running,
    write_json_atomic,
)
from nas_flex.tune.user import check_resumed_trainable, resolve_trainable

if TYPE_CHECKING:
    from nas_flex.leaderboard import Leaderboard

__all__ = ["search", "TuneConfig", "RunConfig", "METRICS", "METRIC_COLUMNS", "resolve_space", "ResourceError",
           "StorageError"]


def resolve_space(space: SearchSpace | Callable | str | os.PathLike) -> SearchSpace:
    """A ``SearchSpace`` from itself, a define-by-run function, or the path of a space file."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, (str, os.PathLike)):
        return load_space(space)
    if callable(space):
        return SearchSpace(space)
    raise SearchSpaceError(f"`space` must be a SearchSpace, a function of a trial or a .py path, got {space!r}")


# ---------------------------------------------------------------------------------------------- preflight
def _preflight_local(res: dict[str, float]) -> None:
    """Before Ray starts: a GPU request on a machine without one fails now, not as a forever-pending trial."""
    if res["gpu"] > 0:
        import torch

        if torch.cuda.device_count() == 0:
            raise ResourceError(
                f"resources_per_trial asks for gpu={res['gpu']}, but this machine has no CUDA GPU (and no cluster "
                "address was given): Ray would leave every trial pending. Drop the gpu request, or pass "
                "--address of a cluster with GPUs."
            )


def _preflight_cluster(res: dict[str, float]) -> None:
    import ray

    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if res["cpu"] > cpus or res["gpu"] > gpus:
        raise ResourceError(
            f"a trial asks for cpu={res['cpu']:g}, gpu={res['gpu']:g}, but the Ray cluster has CPU={cpus:g}, "
            f"GPU={gpus:g} in all: no trial could ever start. Lower resources_per_trial or add nodes."
        )


def _storage_path(storage: Any) -> Path:
    if storage is None or (isinstance(storage, str) and not storage.strip()):
        raise StorageError(f"`storage` must name a folder, but got {storage!r}")
    path = Path(storage).expanduser().resolve()
    check_storage_path(path)
    return path


# ----------------------------------------------------------------------------------- what the search will run
@dataclass(frozen=True)
class _Plan:
    """An experiment's resolved settings and what is left to run of it."""

    space: SearchSpace
    experiment: str
    sampler: str
    scheduler: str | None
    seed: int
    objectives: dict[str, str]
    num_samples: int | None
    repeats: int = 1  # seeds per architecture; num_samples counts architectures
    repeat_seed: int = 0  # the experiment seed the training seeds derive from (kept when resume re-seeds the sampler)
    to_run: int = 0
    max_epochs: int = 0
    finished: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    trainable: bytes | None = None  # the user's training function, packed (nas_flex.tune.user); None: built-in


def _new_plan(storage: Path, space: SearchSpace, experiment: str | None, tune: TuneConfig,
              overrides: Mapping[str, Any] | None, num_samples: int | None) -> _Plan:
    space = space.with_overrides(**dict(overrides or {}))
    sampler = tune.sampler or space.sampler
    check_sampler(sampler)
    experiment = experiment or f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_experiment_name(experiment, storage)
    if StorageLayout(storage).experiment_file(experiment).exists():
        raise SearchSpaceError(f"experiment {experiment!r} exists in {storage}; pass resume=True or a new name")
    return _Plan(space, experiment, sampler, tune.scheduler, tune.seed, tune.objective_modes, num_samples,
                 repeats=tune.repeats or getattr(space, "repeats", 1), repeat_seed=tune.seed)


def _resumed_plan(storage: Path, space: SearchSpace, experiment: str | None, tune: TuneConfig,
                  overrides: Mapping[str, Any] | None, num_samples: int | None) -> _Plan:
    """The experiment's recorded settings; an option given again must equal its recorded value."""
    experiment = experiment or latest_experiment(storage, space.name)
    meta_file = StorageLayout(storage).experiment_file(experiment)
    if not meta_file.is_file():
        raise SearchSpaceError(f"nothing to resume: no experiment {experiment!r} in {storage}")
    meta = read_json(meta_file)
    recorded = {"sampler": meta.get("sampler"), "scheduler": meta.get("scheduler"),
                "objectives": meta.get("objectives"), "repeats": int(meta.get("repeats", 1))}
    given = {"sampler": tune.sampler, "scheduler": tune.scheduler,
             "objectives": tune.objective_modes if tune.objectives is not None else None, "repeats": tune.repeats}
    for key, value in given.items():
        if value is not None and value != recorded[key]:
            raise SearchSpaceError(f"`{key}` {value!r} differs from experiment {experiment!r}'s {recorded[key]!r}; "
                                   "a resume continues the experiment as it was (leave it out)")
    recorded_overrides = dict(meta.get("overrides") or {})
    for key, value in (overrides or {}).items():
        if value is not None and recorded_overrides.get(key, value) != value:
            raise SearchSpaceError(f"`overrides` {key}={value!r} differs from experiment {experiment!r}'s "
                                   f"{key}={recorded_overrides[key]!r}; leave it out to resume")
    check_space_unchanged(meta, space.with_overrides(**recorded_overrides), experiment)
    added = {k: v for k, v in (overrides or {}).items() if k not in recorded_overrides}
    return _Plan(space.with_overrides(**recorded_overrides, **added), experiment, recorded["sampler"],
                 recorded["scheduler"], int(meta.get("seed", 0)), resolve_objectives(recorded["objectives"]),
                 num_samples or int(meta["num_samples"]), repeats=recorded["repeats"],
                 repeat_seed=int(meta.get("seed", 0)))


def _sized(plan: _Plan, storage: Path, validate: bool, resume: bool, verbose: int) -> _Plan:
    """``plan`` with its epochs (from a dry run of the space), its trial count and, on resume, what finished."""
    if validate:  # a user's function builds its own model: the built-in backbone is not dry-built
        sampled = validate_space(plan.space, seed=plan.seed, build=plan.trainable is None)
    else:
        from nas_flex.train.config import resolve_config

        sampled = [resolve_config(c) for c in sample_configs(plan.space, plan.sampler, 8, plan.seed)[1]]
    num_samples = plan.num_samples
    if num_samples is None:
        num_samples = plan.space.num_samples or (grid_size(plan.space) if plan.sampler == "grid" else None)
        if num_samples is None:
            raise SearchSpaceError("`num_samples` is required for a 'tpe' or 'random' search (a grid counts itself)")
        check_int("num_samples", num_samples, 1, "the space's NUM_SAMPLES")
    plan = replace(plan, num_samples=num_samples, to_run=num_samples * plan.repeats,
                   max_epochs=max(c["epochs"] for c in sampled))
    if not resume:
        return plan
    if plan.repeats > 1:
        return _resized_repeats(plan, storage, verbose)
    left = plan_resume(storage, plan.experiment)
    finished = left.finished.to_dict("records")
    resumed = sorted(left.unfinished, key=lambda info: str(info.get("started", "")))
    to_run = len(resumed) + max(0, num_samples - len(finished) - len(resumed))
    if verbose:
        print(f"resuming {plan.experiment!r}: {len(finished)} of {num_samples} trials finished, "
              f"{len(resumed)} to continue, {to_run - len(resumed)} to sample", flush=True)
    # a fresh seed: the first run's seed would draw its first samples again (dedupe would make them duplicates)
    return replace(plan, to_run=to_run, finished=finished, resumed=resumed,
                   seed=(plan.seed + 1_000_003 * len(finished)) % 2**31)


def _resized_repeats(plan: _Plan, storage: Path, verbose: int) -> _Plan:
    """``_sized``'s resume of a repeated experiment: counted in architectures (``nas_flex.tune.repeats``)."""
    from nas_flex.record import derive_seeds
    from nas_flex.tune.repeats import trials_left

    left = plan_resume(storage, plan.experiment)
    finished = left.finished.to_dict("records")
    seen, to_finish, new = trials_left(finished, left.unfinished, derive_seeds(plan.repeat_seed, plan.repeats),
                                       plan.objectives, plan.num_samples)
    if verbose:
        print(f"resuming {plan.experiment!r}: {seen} of {plan.num_samples} architectures started ({len(finished)} "
              f"runs finished), {to_finish} runs to finish them, {new} runs of new architectures", flush=True)
    return replace(plan, to_run=to_finish + new, finished=finished, resumed=list(left.unfinished),
                   seed=(plan.seed + 1_000_003 * seen) % 2**31)


def _write_experiment(storage: Path, plan: _Plan, res: dict[str, float], resume: bool) -> None:
    """The experiment's settings file: what a later resume continues."""
    file = StorageLayout(storage).experiment_file(plan.experiment)
    if resume:
        meta = {**read_json(file), "num_samples": plan.num_samples, "resumed": utc_now()}
    else:
        meta = {"name": plan.experiment, "space": plan.space.name, "source": plan.space.source,
                "sampler": plan.sampler, "objectives": plan.objectives, "num_samples": plan.num_samples,
                "scheduler": plan.scheduler, "seed": plan.seed, "overrides": plan.space.overrides,
                "repeats": plan.repeats,
                "resources_per_trial": res, "trainable": plan.trainable is not None, "created": utc_now(),
                "space_sample": space_sample(plan.space, plan.sampler, plan.seed)}
    write_json_atomic(file, meta)


# ------------------------------------------------------------------------------------------------ running it
def _quiet_ray() -> None:
    # our own progress line replaces Tune's experiment-state chatter; the grid sampler's end-of-grid notice is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C raises KeyboardInterrupt here instead of Tune's graceful stop, which ends fit() as if the search were
    # done (the interrupted trial could be recorded as "stopped", a final status) and points at Tuner.restore
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)


@contextlib.contextmanager
def _ray_session(address: str | None, verbose: int) -> Iterator[None]:
    """A Ray to run on: the one already initialised, else one started here (and shut down after)."""
    import ray

    if ray.is_initialized():
        yield
        return
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 1,
                                   "configure_logging": verbose > 1}
    if address is None:
        init_kwargs["num_cpus"] = os.cpu_count()
    else:
        init_kwargs["address"] = address
    ray.init(**init_kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _tuner(plan: _Plan, storage: Path, tune_config: TuneConfig, run: RunConfig, progress: Any, resume: bool) -> Any:
    """Ray's Tuner of the plan: the trainable with its resources, the Optuna searcher, ASHA if asked."""
    from ray import tune

    from nas_flex.tune.plugins import collect, ship
    from nas_flex.tune.searcher import optuna_searcher
    from nas_flex.tune.trainable import trainable

    res = run.resources
    fn = tune.with_resources(
        # plugins: the layers, backbones and datasets the user registered, registered again in each trial's worker
        tune.with_parameters(trainable, storage=str(storage), experiment=plan.experiment, dedupe=tune_config.dedupe,
                             user=plan.trainable, plugins=ship(collect())),
        {"cpu": res["cpu"], "gpu": res["gpu"]},
    )
    run_config = tune.RunConfig(
        # Ray's files (pickles among them) never in the storage; each run, a resume too, is a new Ray run
        name=f"{plan.experiment}--{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}{'--resume' if resume else ''}",
        storage_path=str(private_ray_dir()),
        failure_config=tune.FailureConfig(max_failures=run.max_failures), verbose=0, callbacks=[progress.callback],
    )
    if plan.repeats > 1:
        from nas_flex.record import derive_seeds
        from nas_flex.tune.repeats import repeat_searcher

        searcher = repeat_searcher(plan.space, plan.objectives, plan.sampler, plan.seed, plan.experiment,
                                   derive_seeds(plan.repeat_seed, plan.repeats), plan.finished, plan.resumed)
    else:
        searcher = optuna_searcher(plan.space, plan.objectives, plan.sampler, plan.seed, study_name=plan.experiment,
                                   finished=plan.finished, resumed=plan.resumed)
    if plan.sampler == "grid" and not (plan.finished or plan.resumed):
        from nas_flex.tune.order import longest_first

        # the grid's points in order of expected training time, longest first (Optuna asks enqueued points first)
        study = getattr(searcher, "searcher", searcher).study
        for params in longest_first(*sample_configs(plan.space, "grid", 100_000)):
            study.enqueue_trial(params, skip_if_exists=False)
    if tune_config.max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        searcher = ConcurrencyLimiter(searcher, max_concurrent=tune_config.max_concurrent)
    scheduler = None
    if plan.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        first, first_mode = next(iter(plan.objectives.items()))
        # the epoch, not Ray's iteration count: a resumed trial continues at its epoch under a new Ray trial
        scheduler = ASHAScheduler(time_attr="epoch", metric=first, mode=first_mode, max_t=plan.max_epochs,
                                  grace_period=1, reduction_factor=2)
    return tune.Tuner(fn, run_config=run_config, tune_config=tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=plan.to_run, reuse_actors=run.reuse_actors))


def _fit(plan: _Plan, storage: Path, tune_config: TuneConfig, run: RunConfig, resume: bool) -> None:
    """Run the trials; then write the rows of trials that ended without writing theirs, and sweep scratch."""
    from nas_flex.tune.progress import Progress
    from nas_flex.tune.trainable import record_stopped, record_unreported_errors

    first, first_mode = next(iter(plan.objectives.items()))
    progress = Progress(plan.to_run, first, first_mode, run.verbose, storage=storage, experiment=plan.experiment)
    tuner = _tuner(plan, storage, tune_config, run, progress, resume)
    if run.verbose:
        res = run.resources
        seeds = f" ({plan.repeats} seeds per architecture)" if plan.repeats > 1 else ""
        print(f"nas_flex search {plan.experiment!r}: {plan.to_run} trials{seeds} of {plan.space.name!r} "
              f"({plan.sampler}), "
              f"objectives {plan.objectives}, {res['cpu']:g} CPU / {res['gpu']:g} GPU per trial; leaderboard: "
              f"{storage}", flush=True)
    try:
        tuner.fit()  # rows come from the trials' own records, never from ResultGrid.get_dataframe()
    except KeyboardInterrupt:
        print(f"interrupted: finished trials are in the leaderboard; continue with resume=True "
              f"(nas-flex search SPACE --storage {storage} --resume --experiment {plan.experiment})", file=sys.stderr)
        raise
    try:
        record_unreported_errors(progress.errored, storage, plan.experiment)
        if plan.scheduler is not None:  # without a scheduler nothing stops a trial early but an interruption
            record_stopped(progress.stopped, storage, plan.experiment)
    except StorageFullError as err:
        raise StorageFullError(f"{err}: trials without a row kept their scratch folders; after freeing space continue "
                               f"with resume=True (nas-flex search SPACE --storage {storage} --resume --experiment "
                               f"{plan.experiment})") from None
    sweep_running(storage, plan.experiment)


def _launch(plan: _Plan, storage: Path, tune_config: TuneConfig, run: RunConfig, resume: bool) -> None:
    """Check the resources, start (or join) Ray, record the experiment's settings and run its trials."""
    if run.address is None:
        _preflight_local(run.resources)
    prepare_storage(storage)
    with _ray_session(run.address, run.verbose):
        _preflight_cluster(run.resources)
        _write_experiment(storage, plan, run.resources, resume)
        _fit(plan, storage, tune_config, run, resume)


# ---------------------------------------------------------------------------------------------------- search
def _plan(storage: Path, space: SearchSpace, experiment: str | None, tune_config: TuneConfig,
          overrides: Mapping[str, Any] | None, num_samples: int | None, resume: bool, packed: bytes | None) -> _Plan:
    """The new or resumed experiment's plan, with the user's packed training function (a resume keeps its kind)."""
    make_plan = _resumed_plan if resume else _new_plan
    plan = replace(make_plan(storage, space, experiment, tune_config, overrides, num_samples), trainable=packed)
    if resume:
        check_resumed_trainable(StorageLayout(storage).experiment_file(plan.experiment), packed)
    return plan


def search(
    space: SearchSpace | Callable | str | os.PathLike,
    *,
    storage: str | os.PathLike,
    num_samples: int | None = None,
    experiment: str | None = None,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    tune_config: TuneConfig | None = None,
    run_config: RunConfig | None = None,
    trainable: Callable[[dict[str, Any], Any], Any] | None = None,
    **options: Any,
) -> Leaderboard:
    """Run a search and return its ``Leaderboard``.

    Every argument, the storage folder and the files already in it are checked before Ray starts; a bad one raises
    a one-line ``NasFlexError`` naming it (``SearchSpaceError``, ``ResourceError``, ``StorageError``).

    Args:
        space: a ``SearchSpace``, a define-by-run function ``space(trial) -> config``, or a path to a .py file
            defining ``space`` (see ``search_spaces/``).
        storage: the leaderboard folder (a shared path on a cluster); also holds the kept weights, the trials'
            scratch folders (``nas_flex.storage.layout``); Ray's own files go to a private folder outside it.
        num_samples: trials to run (>= 1); a grid defaults to its size; required otherwise. On resume: the
            experiment's new total (default: its recorded one).
        experiment: the experiment's name (default: the space's name and a timestamp).
        resume: continue the latest experiment of this space in ``storage`` (or ``experiment``), the same space passed
            again, with its recorded sampler, objectives, scheduler, seed and overrides: finished trials are not
            redone, unfinished ones continue from their last epoch (``nas_flex.tune.plan_resume``). Nothing in the
            storage is unpickled.
        overrides: config keys forced on every trial (e.g. {"dataset": "digits", "epochs": 2}).
        tune_config: what to sample and optimise: objectives, sampler, scheduler, seed, repeats (seeds per
            architecture: ``num_samples`` then counts architectures), max_concurrent, dedupe,
            validate (``TuneConfig``; default ``TuneConfig()``).
        run_config: where and how trials run: address, resources_per_trial, max_failures, verbose (``RunConfig``).
        trainable: the user's own training function ``trainable(config, ctx)`` run for each sampled config
            instead of the built-in loop (``nas_flex.train.context.TrialContext``); default: the space file's
            module-level ``trainable`` if it defines one. Pickled by value to the Ray workers.
        **options: any field of ``TuneConfig`` or ``RunConfig`` given flat instead, e.g. ``scheduler="asha"``
            (not both ways at once).

    Example:
        >>> lb = nas_flex.search("search_spaces/grid.py", storage="runs/grid", num_samples=8)  # doctest: +SKIP
        >>> lb = nas_flex.search(space, storage="runs/x", tune_config=TuneConfig(scheduler="asha"))  # doctest: +SKIP
    """
    from nas_flex.leaderboard import Leaderboard

    _quiet_ray()
    tune_config, run_config = split_options(tune_config, run_config, options)
    if num_samples is not None:
        check_int("num_samples", num_samples, 1, "the number of trials")
    if experiment is not None:
        check_experiment_name(experiment, storage)
    storage = _storage_path(storage)
    space = resolve_space(space)
    plan = _plan(storage, space, experiment, tune_config, overrides, num_samples, resume,
                 resolve_trainable(trainable, space))
    check_storage_files(storage)  # a damaged row file would fail the search at its end, after all the training
    plan = _sized(plan, storage, tune_config.validate, resume, run_config.verbose)
    if plan.to_run:  # a resume of an experiment that is done runs nothing
        _launch(plan, storage, tune_config, run_config, resume)
    return Leaderboard(storage)

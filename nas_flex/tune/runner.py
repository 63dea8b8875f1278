"""``nas_flex.search(...)``: run a search space as Ray Tune trials with Optuna as the sampler.

The only module that imports ray and optuna (besides Optuna's trial interface in ``nas_flex.spaces``). Each trial
runs ``nas_flex.train.run_trial``, reports every epoch to Tune (with a checkpoint, so a resumed trial continues),
and writes its own leaderboard row (one Parquet file, atomically) when it ends, whatever the ending: completed,
diverged, out of memory, a duplicate of an architecture already trained, or an error (then re-raised for Tune's
retry). The leaderboard is built from the trials' own records with its explicit schema, never from
``ResultGrid.get_dataframe()``.

Layout of ``storage`` (a shared path on a cluster)::

    <storage>/*.parquet          one row per trial          (pandas.read_parquet(storage) reads exactly these)
    <storage>/_history/          per-epoch tables
    <storage>/_weights/          each trial's trained weights (state_dict, weights_only-loadable) for export
    <storage>/_experiments/      one JSON per experiment: its settings, for --resume
    <storage>/_claims/           one file per trained architecture (dedupe of identical configs)
    <storage>/_ray/<experiment>  Ray Tune's experiment state (Tuner.restore)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas_flex.errors import NasFlexError, SearchSpaceError
from nas_flex.spaces import SearchSpace, grid_size, load_space, sample_configs, validate_space

__all__ = ["search", "METRICS", "resolve_space"]

# metrics a search may optimise, with their natural direction
METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min", "flops": "min",
           "params": "min", "train_seconds": "min"}
SCHEDULERS = (None, "asha")


class ResourceError(NasFlexError, RuntimeError):
    """A trial asks for resources the cluster does not have (Ray would leave it pending forever)."""


def resolve_space(space: SearchSpace | Callable | str | os.PathLike) -> SearchSpace:
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, (str, os.PathLike)):
        return load_space(space)
    if callable(space):
        return SearchSpace(space)
    raise SearchSpaceError(f"`space` must be a SearchSpace, a function of a trial or a .py path, got {space!r}")


def _objectives(objectives: Mapping[str, str] | list[str] | str | None) -> dict[str, str]:
    if objectives is None:
        return {"val_acc": "max"}
    if isinstance(objectives, str):
        objectives = [objectives]
    out = dict(objectives) if isinstance(objectives, Mapping) else {m: METRICS.get(m, "") for m in objectives}
    for metric, mode in out.items():
        if metric not in METRICS:
            raise SearchSpaceError(f"unknown objective {metric!r}; expected one of: {', '.join(METRICS)}")
        if mode not in ("max", "min"):
            raise SearchSpaceError(f"objective {metric!r} needs mode 'max' or 'min', but got {mode!r}")
    return out


def _resources(resources_per_trial: Mapping[str, float] | None) -> dict[str, float]:
    res = {"cpu": 1.0, "gpu": 0.0, **{k.lower(): float(v) for k, v in (resources_per_trial or {}).items()}}
    unknown = sorted(set(res) - {"cpu", "gpu"})
    if unknown or res["cpu"] <= 0 or res["gpu"] < 0:
        raise ResourceError(f"`resources_per_trial` takes cpu > 0 and gpu >= 0 (fractions allowed), got {res}")
    return res


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


def _config_hash(config: Mapping[str, Any]) -> str:
    from nas_flex.train.config import canonical_key

    return hashlib.sha256(canonical_key(config).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _experiment_file(storage: Path, name: str) -> Path:
    return storage / "_experiments" / f"{name}.json"


def _latest_experiment(storage: Path, space_name: str | None) -> str:
    folder = storage / "_experiments"
    metas = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = json.loads(f.read_text())
        if space_name is None or meta.get("space") == space_name:
            metas.append(meta)
    if not metas:
        raise SearchSpaceError(f"nothing to resume: no experiment of space {space_name!r} under {storage}")
    return max(metas, key=lambda m: m["created"])["name"]


# --------------------------------------------------------------------------------------------- the trainable
def _error_result(config: dict[str, Any], error: str | None, started: str) -> dict[str, Any]:
    import torch

    from nas_flex import __version__

    nan = float("nan")
    return {
        "status": "error", "error": error, "config": config, "started": started, "finished": _now(),
        "epochs_completed": 0, "metrics": {k: nan for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "best": {"val_acc": nan, "val_loss": nan, "epoch": 0}, "history": [], "params": 0, "flops": nan,
        "flops_fft": nan, "train_seconds": 0.0, "examples_per_second": nan, "peak_memory_bytes": 0,
        "peak_memory_kind": "", "device": "", "learned_sizes": [], "nas_flex_version": __version__,
        "torch_version": torch.__version__,
    }


def _wait_for_owner(storage: Path, experiment: str, owner: str, timeout: float = 6 * 3600) -> dict | None:
    """The row of the trial that claimed this architecture, once it is written (None if it failed or timed out)."""
    from nas_flex.leaderboard import Leaderboard

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        df = Leaderboard(storage).to_pandas()
        rows = df[(df["experiment"] == experiment) & (df["trial_id"] == owner)] if len(df) else df
        if len(rows):
            row = rows.iloc[-1].to_dict()
            return row if row["status"] == "completed" else None
        time.sleep(2.0)
    return None


def _trainable(params: dict[str, Any], *, storage: str, experiment: str, dedupe: bool) -> None:
    import ray
    from ray import tune

    from nas_flex.leaderboard import write_trial
    from nas_flex.train import resolve_config, run_trial
    from nas_flex.train.trial import format_exception

    started = _now()
    params = dict(params)
    config = resolve_config(params.pop("nas_flex_config"))
    optuna_params = params
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    store = Path(storage)
    if config["device"] == "auto":
        config["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    try:
        import torch

        torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    except Exception:  # noqa: BLE001 - threads are an optimisation only
        pass
    key = _config_hash(config)

    if dedupe:
        claims = store / "_claims" / experiment
        claims.mkdir(parents=True, exist_ok=True)
        claim = claims / key
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, trial_id.encode())
            os.close(fd)
        except FileExistsError:
            owner = claim.read_text().strip()
            row = _wait_for_owner(store, experiment, owner) if owner != trial_id else None
            if row is not None:
                result = _error_result(config, f"duplicate of trial {owner}", started)
                result.update({
                    "status": "duplicate",
                    "metrics": {k: row[f"metrics_{k}"] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
                    "best": {"val_acc": row["best_val_acc"], "val_loss": row["best_val_loss"],
                             "epoch": int(row["best_epoch"])},
                    "params": int(row["params"]), "flops": row["flops"], "flops_fft": row["flops_fft"],
                    "epochs_completed": int(row["epochs_completed"]),
                })
                result["search_params"] = optuna_params
                write_trial(store, result, experiment=experiment, trial_id=trial_id, config_key=key)
                tune.report({**result["metrics"], "flops": result["flops"], "params": result["params"],
                             "train_seconds": 0.0, "epoch": config["epochs"], "epochs": config["epochs"],
                             "status": "duplicate"})
                return

    work = Path(tempfile.mkdtemp(prefix="nas_flex_trial_"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(work))
    final: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        out = {k: v for k, v in metrics.items() if k != "learned_sizes"}
        out.update(epochs=config["epochs"], status="completed" if out["epoch"] == config["epochs"] else "running")
        if out["epoch"] == config["epochs"]:
            # the last epoch is reported after the row is written: a scheduler may stop the trial at any report
            # (ASHA stops every trial that reaches max_t there), and nothing after that report would run
            final.update(out)
            return
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        result = run_trial(config, report=report, checkpoint_dir=work)
        _keep_weights(work, store, experiment, trial_id)
        write_trial(store, {**result, "search_params": optuna_params}, experiment=experiment, trial_id=trial_id,
                    config_key=key)
        if final:
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    except Exception as err:
        failed = {**_error_result(config, format_exception(err), started), "search_params": optuna_params}
        write_trial(store, failed, experiment=experiment, trial_id=trial_id, config_key=key)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result["status"] != "completed":  # tell the searcher how it ended (Optuna records FAIL)
        tune.report({**result["metrics"], "flops": result["flops"], "params": result["params"],
                     "epoch": result["epochs_completed"], "epochs": config["epochs"], "status": result["status"]})


def _keep_weights(work: Path, store: Path, experiment: str, trial_id: str) -> None:
    """Keep the trained model's state_dict as ``<storage>/_weights/<experiment>--<trial_id>.pt`` (tensors and plain
    values only: loads with ``torch.load(..., weights_only=True)``), so export needs no retraining."""
    import torch

    state_file = work / "trial_state.pt"
    if not state_file.is_file():  # no epoch completed
        return
    model_state = torch.load(state_file, map_location="cpu", weights_only=True)["model"]
    final = store / "_weights" / f"{experiment}--{trial_id}.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    torch.save(model_state, tmp)
    os.replace(tmp, final)


# ---------------------------------------------------------------------------------------------- the searcher
def _optuna_search(space: SearchSpace, objectives: dict[str, str], sampler: str, seed: int, study_name: str):
    import warnings

    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class NasFlexOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about how a trial ended: a trial the scheduler stopped early
        is PRUNED (not COMPLETE with its truncated score), and a diverged / failed one is FAIL."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return super().on_trial_complete(trial_id, result, error)
            status = (result or {}).get("status")
            early = result is not None and result.get("epoch", 0) < result.get("epochs", 0)
            if status in ("diverged", "oom", "error") or error:
                state = TrialState.FAIL
            elif early and status not in ("duplicate", "completed"):
                state = TrialState.PRUNED
            else:
                return super().on_trial_complete(trial_id, result, error)
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=state)
            except Exception:  # noqa: BLE001 - e.g. a grid already exhausted
                pass
            self._completed_trials.add(trial_id)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "grid":
            ot_sampler = optuna.samplers.BruteForceSampler(seed=seed)
        elif sampler == "random":
            ot_sampler = optuna.samplers.RandomSampler(seed=seed)
        elif len(objectives) > 1:
            ot_sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
        else:
            ot_sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)

    def define_by_run(trial):
        # the config travels under one key so the trainable can tell it apart from the raw Optuna params
        return {"nas_flex_config": space(trial)}

    wrapped = SearchSpace(define_by_run, name=space.name)  # pickles by value (Tuner.restore in another process)
    metrics, modes = list(objectives), list(objectives.values())
    multi = len(metrics) > 1
    return NasFlexOptunaSearch(space=wrapped, metric=metrics if multi else metrics[0],
                               mode=modes if multi else modes[0], sampler=ot_sampler, study_name=study_name)


class _Progress:
    """Prints one line per finished trial: done / total, best so far, elapsed and ETA."""

    def __init__(self, total: int, objective: str, mode: str, verbose: int = 1) -> None:
        from ray.tune import Callback

        # no stream held here: Tune pickles its callbacks with the experiment state
        self.total, self.objective, self.mode, self.verbose = total, objective, mode, verbose
        self.start = time.monotonic()
        self.done = 0
        self.best: tuple[float, str] | None = None
        self.errored: list[tuple[str, dict, str]] = []  # (trial_id, config, error) of trials that raised
        self.stopped: list[tuple[str, dict, dict]] = []  # (trial_id, config, last result) of early-stopped trials
        outer = self

        class _Cb(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                result = trial.last_result or {}
                if result.get("status") == "running":  # the scheduler stopped it: its trainable wrote no row
                    outer.stopped.append((trial.trial_id, (trial.config or {}).get("nas_flex_config", {}),
                                          dict(result)))
                outer.finished(trial, result, error=False)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.errored.append((trial.trial_id, (trial.config or {}).get("nas_flex_config", {}),
                                      str(getattr(trial, "error_file", "") or "see the Ray logs")))
                outer.finished(trial, trial.last_result or {}, error=True)

        self.callback = _Cb()

    def finished(self, trial, result: dict, error: bool) -> None:
        self.done += 1
        if not self.verbose:
            return
        value = result.get(self.objective)
        cfg = (trial.config or {}).get("nas_flex_config", {})
        what = cfg.get("conv", "?") + (f" k={cfg['kernel_size']}" if cfg.get("kernel_size") else "")
        what += f" pool={cfg['pooling']}" if cfg.get("pooling") else ""
        if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), what)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        status = "error" if error else result.get("status", "stopped")
        status = "stopped early" if status == "running" else status
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        print(f"[{self.done}/{self.total}] {trial.trial_id} {what}: {status}, {self.objective}={shown} | best "
              f"{best} | {elapsed:.0f}s elapsed, ETA {eta:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------------- search
def search(
    space: SearchSpace | Callable | str | os.PathLike,
    *,
    storage: str | os.PathLike,
    num_samples: int | None = None,
    experiment: str | None = None,
    address: str | None = None,
    resources_per_trial: Mapping[str, float] | None = None,
    scheduler: str | None = None,
    objectives: Mapping[str, str] | list[str] | str | None = None,
    sampler: str | None = None,
    max_concurrent: int | None = None,
    seed: int = 0,
    max_failures: int = 1,
    resume: bool = False,
    dedupe: bool = True,
    validate: bool = True,
    overrides: Mapping[str, Any] | None = None,
    verbose: int = 1,
):
    """Run a search and return its ``Leaderboard``.

    Args:
        space: a ``SearchSpace``, a define-by-run function ``space(trial) -> config``, or a path to a .py file
            defining ``space`` (see ``search_spaces/``).
        storage: the leaderboard folder (a shared path on a cluster); also holds Ray's experiment state.
        num_samples: trials to run; a grid defaults to its size; required otherwise.
        experiment: the experiment's name (default: the space's name and a timestamp).
        address: None starts an embedded local Ray with this machine's CPUs; "auto" or "ray://host:port" joins a
            cluster.
        resources_per_trial: e.g. {"cpu": 1, "gpu": 0.5} (fractional GPUs share a device).
        scheduler: None or "asha" (early stopping on the first objective; stopped trials reach Optuna as PRUNED).
        objectives: {"val_acc": "max"} by default; several, e.g. {"val_acc": "max", "flops": "min"}, make a
            multi-objective (NSGA-style TPE) search. ``Leaderboard.pareto`` gives the front.
        sampler: "tpe", "grid" (optuna's BruteForceSampler) or "random"; default: the space's.
        max_concurrent: cap on trials running at once.
        seed: the sampler's seed.
        max_failures: retries of a trial that raised (its row keeps the error until a retry succeeds).
        resume: continue the latest experiment of this space in ``storage`` (or ``experiment``) without redoing
            finished trials; unfinished trials continue from their last epoch checkpoint.
        dedupe: train each distinct config once; repeats get status "duplicate" with the first one's metrics.
        validate: dry-run and check the space before launching.
        overrides: config keys forced on every trial (e.g. {"dataset": "digits", "epochs": 2}).
        verbose: 0 silent, 1 one line per finished trial.
    """
    import logging

    # our own progress line replaces Tune's experiment-state chatter; the grid sampler's end-of-grid notice is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)

    import ray
    from ray import tune

    from nas_flex.leaderboard import Leaderboard

    space = resolve_space(space).with_overrides(**dict(overrides or {}))
    sampler = sampler or space.sampler
    objs = _objectives(objectives)
    res = _resources(resources_per_trial)
    if scheduler not in SCHEDULERS:
        raise SearchSpaceError(f"`scheduler` must be None or 'asha', but got {scheduler!r}")
    if sampler not in ("tpe", "grid", "random"):
        raise SearchSpaceError(f"`sampler` must be 'tpe', 'grid' or 'random', but got {sampler!r}")
    storage = Path(storage).expanduser().resolve()
    if resume:
        experiment = experiment or _latest_experiment(storage, space.name)
        meta = json.loads(_experiment_file(storage, experiment).read_text())
        num_samples = meta["num_samples"]
    else:
        if validate:
            sampled = validate_space(space, seed=seed)
        else:
            from nas_flex.train.config import resolve_config

            sampled = [resolve_config(c) for c in sample_configs(space, sampler, 8, seed)[1]]
        max_epochs = max(c["epochs"] for c in sampled)
        if num_samples is None:
            num_samples = space.num_samples or (grid_size(space) if sampler == "grid" else None)
        if num_samples is None:
            raise SearchSpaceError("`num_samples` is required for a 'tpe' or 'random' search (a grid counts itself)")
        experiment = experiment or f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if _experiment_file(storage, experiment).exists():
            raise SearchSpaceError(f"experiment {experiment!r} exists in {storage}; pass resume=True or a new name")
    if address is None:
        _preflight_local(res)

    started_ray = False
    if not ray.is_initialized():
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 1,
                                       "configure_logging": verbose > 1}
        if address is None:
            init_kwargs["num_cpus"] = os.cpu_count()
        else:
            init_kwargs["address"] = address
        ray.init(**init_kwargs)
        started_ray = True
    try:
        _preflight_cluster(res)
        storage.mkdir(parents=True, exist_ok=True)
        if not resume:
            meta = {"name": experiment, "space": space.name, "source": space.source, "sampler": sampler,
                    "objectives": objs, "num_samples": num_samples, "scheduler": scheduler, "seed": seed,
                    "overrides": space.overrides, "resources_per_trial": res, "created": _now()}
            _experiment_file(storage, experiment).parent.mkdir(parents=True, exist_ok=True)
            _experiment_file(storage, experiment).write_text(json.dumps(meta, indent=2, default=str))
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, storage=str(storage), experiment=experiment, dedupe=dedupe),
            {"cpu": res["cpu"], "gpu": res["gpu"]},
        )
        first, first_mode = next(iter(objs.items()))
        progress = _Progress(num_samples, first, first_mode, verbose)
        run_config = tune.RunConfig(
            name=experiment,
            storage_path=str(storage / "_ray"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[progress.callback],
        )
        exp_dir = storage / "_ray" / experiment
        if resume:
            if not tune.Tuner.can_restore(str(exp_dir)):
                raise SearchSpaceError(f"experiment {experiment!r} has no Ray state to resume under {exp_dir}")
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            searcher = _optuna_search(space, objs, sampler, seed, study_name=experiment)
            if max_concurrent:
                from ray.tune.search import ConcurrencyLimiter

                searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
            sched = None
            if scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                sched = ASHAScheduler(time_attr="training_iteration", metric=first, mode=first_mode,
                                      max_t=max_epochs, grace_period=1, reduction_factor=2)
            tuner = tune.Tuner(trainable, run_config=run_config, tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=sched, num_samples=num_samples))
        if verbose:
            print(f"nas_flex search {experiment!r}: {num_samples} trials of {space.name!r} ({sampler}), "
                  f"objectives {objs}, {res['cpu']:g} CPU / {res['gpu']:g} GPU per trial; leaderboard: {storage}",
                  flush=True)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"interrupted: finished trials are in the leaderboard; continue with resume=True "
                  f"(nas-flex search ... --resume --experiment {experiment})", file=sys.stderr)
            raise
        del grid  # rows come from the trials' own records, never from ResultGrid.get_dataframe()
        _record_unreported_errors(progress.errored, storage, experiment)
        _record_stopped(progress.stopped, storage, experiment)
    finally:
        if started_ray:
            ray.shutdown()
    return Leaderboard(storage)


def _record_stopped(stopped: list[tuple[str, dict, dict]], storage: Path, experiment: str) -> None:
    """Trials the scheduler (ASHA) stopped early get a row with status "stopped" and their last epoch's metrics."""
    from nas_flex.leaderboard import Leaderboard, write_trial

    if not stopped:
        return
    df = Leaderboard(storage).to_pandas()
    have = set(df.loc[df["experiment"] == experiment, "trial_id"]) if len(df) else set()
    for trial_id, config, last in stopped:
        if trial_id in have:
            continue
        row = _error_result(config, None, _now())
        metrics = {k: last.get(k, float("nan")) for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
        row.update(status="stopped", metrics=metrics, epochs_completed=int(last.get("epoch", 0)),
                   best={"val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"], "epoch": last.get("epoch", 0)},
                   params=int(last.get("params", 0)), flops=last.get("flops", float("nan")))
        write_trial(storage, row, experiment=experiment, trial_id=trial_id,
                    config_key=_config_hash(config) if config else "")


def _record_unreported_errors(errored: list[tuple[str, dict, str]], storage: Path, experiment: str) -> None:
    """A trial that died before its trainable could write (a crashed worker, say) still gets a row."""
    from nas_flex.leaderboard import Leaderboard, write_trial

    if not errored:
        return
    df = Leaderboard(storage).to_pandas()
    have = set(df.loc[df["experiment"] == experiment, "trial_id"]) if len(df) else set()
    for trial_id, config, error in errored:
        if trial_id in have:
            continue
        row = _error_result(config, f"the trial's worker failed before it reported ({error})", _now())
        write_trial(storage, row, experiment=experiment, trial_id=trial_id,
                    config_key=_config_hash(config) if config else "")

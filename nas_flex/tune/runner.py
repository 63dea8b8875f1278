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
    <storage>/_running/<experiment>/<trial_id>/   a started trial's scratch folder: trial.json (its config and
                                 sampler params) and trial_state.pt (its last epoch, weights_only-loadable); removed
                                 once the trial's row is written, kept for a retry or --resume otherwise
    <storage>/_ray/<run>         Ray Tune's own files (written by Ray, never read back by nas_flex)

Resume reads only JSON, Parquet and ``weights_only`` checkpoints: the experiment's JSON, the leaderboard rows (what
finished), and ``_running/`` (what started and did not finish). Nothing in the storage is unpickled, so resuming a
shared storage runs no code a third party could have placed there (Ray's ``Tuner.restore`` would unpickle
``_ray/<run>/tuner.pkl``; it is not used).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas_flex.errors import NasFlexError, SearchSpaceError
from nas_flex.record import TrialStatus
from nas_flex.spaces import SearchSpace, grid_size, load_space, sample_configs, validate_space

__all__ = ["search", "METRICS", "resolve_space", "ResourceError", "StorageError"]

# metrics a search may optimise, with their natural direction
METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min", "flops": "min",
           "params": "min", "train_seconds": "min"}
# the leaderboard column of each metric (what a resumed search tells Optuna about a finished trial)
METRIC_COLUMNS = {"val_acc": "metrics_val_acc", "val_loss": "metrics_val_loss", "train_acc": "metrics_train_acc",
                  "train_loss": "metrics_train_loss", "flops": "flops", "params": "params",
                  "train_seconds": "train_seconds"}
SCHEDULERS = (None, "asha")
RUNNING_DIR = "_running"
TRIAL_FILE = "trial.json"


class ResourceError(NasFlexError, RuntimeError):
    """A trial asks for resources the cluster does not have (Ray would leave it pending forever)."""


class StorageError(NasFlexError, ValueError):
    """The ``storage`` folder cannot hold a leaderboard: a file, not writable, or holding unreadable files."""


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


def _check_int(name: str, value: Any, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SearchSpaceError(f"`{name}` must be an integer >= {low} ({what}), but got {value!r}")


def _check_experiment_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or name.startswith((".", "_")) or any(
            c in name for c in "/\\\0"):
        raise SearchSpaceError(f"`experiment` must be a non-empty name without '/' or '\\' that does not start with "
                               f"'.' or '_' (it names files and folders in the storage), but got {name!r}")


def _check_storage(storage: Path) -> None:
    """Before any work: ``storage`` is (or can become) a writable folder. Creates nothing."""
    if storage.exists() and not storage.is_dir():
        raise StorageError(f"`storage` {str(storage)!r} is a file; pass a folder (the leaderboard's directory)")
    existing = storage
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"`storage` {str(storage)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == storage else f" (its nearest existing parent {str(existing)!r} is not writable)"
        raise StorageError(f"`storage` {str(storage)!r} is not writable{where}")


def _prepare_storage(storage: Path) -> None:
    """Create ``storage`` and prove it writable with a probe file (permissions and read-only mounts that
    ``os.access`` cannot see, e.g. as root), before Ray starts."""
    probe = storage / f".nas_flex_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"`storage` {str(storage)!r} is not writable: {err.strerror or err}") from None


def _check_storage_files(storage: Path) -> None:
    """Every Parquet file already in the storage reads (``nas_flex.leaderboard.check_storage``), before any trial
    trains: a damaged file would otherwise show only at the search's end."""
    from nas_flex.errors import CorruptLeaderboardError
    from nas_flex.leaderboard import check_storage

    try:
        check_storage(storage)
    except CorruptLeaderboardError as err:
        raise StorageError(f"`storage`: {err}") from None


def _config_hash(config: Mapping[str, Any]) -> str:
    from nas_flex.train.config import canonical_key

    return hashlib.sha256(canonical_key(config).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _experiment_file(storage: Path, name: str) -> Path:
    return storage / "_experiments" / f"{name}.json"


def _read_json(file: Path) -> dict[str, Any]:
    """A JSON object file of the storage (never a pickle); a damaged one is a one-line StorageError naming it."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot read {str(file)!r}: {err}") from None
    if not isinstance(data, dict):
        raise StorageError(f"{str(file)!r} does not hold a JSON object")
    return data


def _latest_experiment(storage: Path, space_name: str | None) -> str:
    folder = storage / "_experiments"
    metas = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = _read_json(f)
        if space_name is None or meta.get("space") == space_name:
            metas.append(meta)
    if not metas:
        raise SearchSpaceError(f"nothing to resume: no experiment of space {space_name!r} under {storage}")
    return max(metas, key=lambda m: m["created"])["name"]


def _running_dir(storage: Path, experiment: str, trial_id: str) -> Path:
    return storage / RUNNING_DIR / experiment / trial_id


def _write_json_atomic(file: Path, data: Mapping[str, Any]) -> None:
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, file)


def _experiment_rows(storage: Path, experiment: str):
    from nas_flex.leaderboard import Leaderboard

    df = Leaderboard(storage).to_pandas()
    return df[df["experiment"] == experiment] if len(df) else df


def _plan_resume(storage: Path, experiment: str) -> tuple[Any, list[dict[str, Any]]]:
    """What an interrupted experiment left: (its final leaderboard rows, its unfinished trials).

    A trial is finished when its row is written with a final status; its scratch folder may still exist (the run
    ended between the row and the clean-up) and is removed here. A trial is unfinished when its scratch folder holds
    its ``trial.json`` and it has no row, or an ``error`` row (errored trials are retried, as Ray's own resume did):
    it continues under its own trial id, from its last epoch checkpoint if it has one.
    """
    rows = _experiment_rows(storage, experiment)
    errored = set(rows.loc[rows["status"] == "error", "trial_id"]) if len(rows) else set()
    final_ids = set(rows["trial_id"]) - errored if len(rows) else set()
    unfinished = []
    folder = storage / RUNNING_DIR / experiment
    for trial_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        if trial_dir.name in final_ids:
            shutil.rmtree(trial_dir, ignore_errors=True)
            continue
        if not (trial_dir / TRIAL_FILE).is_file():
            continue  # the trial was killed before it wrote its config: it never started training
        info = _read_json(trial_dir / TRIAL_FILE)
        if info.get("trial_id") != trial_dir.name or not isinstance(info.get("config"), dict):
            raise StorageError(f"{str(trial_dir / TRIAL_FILE)!r} does not describe trial {trial_dir.name!r}")
        unfinished.append(info)
    final = rows[rows["trial_id"].isin(final_ids)] if len(rows) else rows
    return final, unfinished


def _sweep_running(storage: Path, experiment: str) -> None:
    """Remove the scratch folders of trials whose final row is written (ASHA-stopped trials end without their
    trainable's clean-up); keep those of errored trials, which --resume retries."""
    folder = storage / RUNNING_DIR / experiment
    if folder.is_dir():
        with contextlib.suppress(NasFlexError):  # a damaged trial.json is reported by the --resume that needs it
            _plan_resume(storage, experiment)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


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
    ctx = tune.get_context()
    # a trial continued by --resume keeps the id (row, checkpoint, claim) it had; Ray gives it a new one
    trial_id = params.pop("nas_flex_trial_id", None) or ctx.get_trial_id()
    optuna_params = params
    store = Path(storage)
    if config["device"] == "auto":
        config["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    try:
        import torch

        torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    except Exception:  # noqa: BLE001 - threads are an optimisation only
        pass
    key = _config_hash(config)
    # the scratch folder lives in the storage (shared on a cluster): a retry on any node, or --resume, finds the
    # trial's config and last epoch there; it is removed once the trial's row is written
    work = _running_dir(store, experiment, trial_id)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / TRIAL_FILE).is_file():
        _write_json_atomic(work / TRIAL_FILE, {"trial_id": trial_id, "experiment": experiment, "config": config,
                                               "search_params": optuna_params, "started": started})

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
                shutil.rmtree(work, ignore_errors=True)
                tune.report({**result["metrics"], "flops": result["flops"], "params": result["params"],
                             "train_seconds": 0.0, "epoch": config["epochs"], "epochs": config["epochs"],
                             "status": "duplicate"})
                return

    final: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        out = {k: v for k, v in metrics.items() if k != "learned_sizes"}
        out.update(epochs=config["epochs"], status="completed" if out["epoch"] == config["epochs"] else "running")
        if out["epoch"] == config["epochs"]:
            # the last epoch is reported after the row is written: a scheduler may stop the trial at any report
            # (ASHA stops every trial that reaches max_t there), and nothing after that report would run
            final.update(out)
            return
        tune.report(out)  # no Ray checkpoint: the trial's own one is in the storage (work)

    try:
        result = run_trial(config, report=report, checkpoint_dir=work)
        _keep_weights(work, store, experiment, trial_id)
        write_trial(store, result.replace(search_params=optuna_params), experiment=experiment, trial_id=trial_id,
                    config_key=key)
    except Exception as err:  # the scratch folder stays: Ray's retry (or --resume) continues from its last epoch
        failed = {**_error_result(config, format_exception(err), started), "search_params": optuna_params}
        write_trial(store, failed, experiment=experiment, trial_id=trial_id, config_key=key)
        raise
    shutil.rmtree(work, ignore_errors=True)
    if final:
        tune.report(final)
    if result.status is not TrialStatus.COMPLETED:  # tell the searcher how it ended (Optuna records FAIL)
        tune.report({**result.metrics, "flops": result.flops, "params": result.params,
                     "epoch": result.epochs_completed, "epochs": config["epochs"], "status": result.status.value})


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
def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Optuna's flat parameter names from the nested dict Ray's OptunaSearch returns (it splits names at '/')."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finished_trial(space_fn: Callable, row: Mapping[str, Any], objectives: dict[str, str]):
    """A leaderboard row as an Optuna FrozenTrial (COMPLETE with its objective values, PRUNED or FAIL), its
    distributions recovered by replaying its stored sampler params through the space; None if they no longer fit."""
    import optuna
    from optuna.trial import TrialState

    try:
        fixed = optuna.trial.FixedTrial(_flatten(json.loads(row["search_params"] or "{}")))
        space_fn(fixed)
    except Exception:  # noqa: BLE001 - the space changed since: the trial still counts, Optuna just does not see it
        return None
    status = row["status"]
    values = None
    if status in ("completed", "duplicate"):
        values = [row.get(METRIC_COLUMNS[m]) for m in objectives]
        finite = all(v is not None and isinstance(v, (int, float)) and math.isfinite(float(v)) for v in values)
        state = TrialState.COMPLETE if finite else TrialState.FAIL
    else:
        state = TrialState.PRUNED if status == "stopped" else TrialState.FAIL
    if state != TrialState.COMPLETE:
        values = None
    return optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions, state=state,
                                     values=[float(v) for v in values] if values is not None else None)


def _optuna_search(space: SearchSpace, objectives: dict[str, str], sampler: str, seed: int, study_name: str,
                   finished: list[Mapping[str, Any]] = (), resumed: list[Mapping[str, Any]] = ()):
    """Ray's OptunaSearch over ``space`` (the trial config travels under ``nas_flex_config``).

    Resume re-seeds a fresh study instead of unpickling the old one: ``finished`` leaderboard rows become completed
    (or pruned / failed) Optuna trials, so TPE learns from them and a grid skips them; ``resumed`` (the ``trial.json``
    of unfinished trials) are suggested first, with their stored config and their own trial id.
    """
    import warnings

    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class NasFlexOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about how a trial ended: a trial the scheduler stopped early
        is PRUNED (not COMPLETE with its truncated score), and a diverged / failed one is FAIL."""

        def suggest(self, trial_id: str) -> dict | None:
            out = super().suggest(trial_id)
            if out is not None and self.nas_flex_resumed:  # Optuna asks the enqueued params of these first
                info = self.nas_flex_resumed.pop(0)
                out = {**out, "nas_flex_config": info["config"], "nas_flex_trial_id": info["trial_id"]}
            return out

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

    wrapped = SearchSpace(define_by_run, name=space.name)  # pickles by value (Ray pickles its searcher)
    metrics, modes = list(objectives), list(objectives.values())
    multi = len(metrics) > 1
    searcher = NasFlexOptunaSearch(space=wrapped, metric=metrics if multi else metrics[0],
                                   mode=modes if multi else modes[0], sampler=ot_sampler, study_name=study_name)
    seeded = [t for t in (_finished_trial(space, row, objectives) for row in finished) if t is not None]
    if seeded:
        searcher._ot_study.add_trials(seeded)
    searcher.nas_flex_resumed = [dict(info) for info in resumed]
    for info in searcher.nas_flex_resumed:
        searcher._ot_study.enqueue_trial(_flatten(info.get("search_params") or {}), skip_if_exists=False)
    return searcher


def _trial_id(trial: Any) -> str:
    """The nas_flex trial id of a Ray trial: its own, or the one a resumed trial continues."""
    return (trial.config or {}).get("nas_flex_trial_id") or trial.trial_id


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
                    outer.stopped.append((_trial_id(trial), (trial.config or {}).get("nas_flex_config", {}),
                                          dict(result)))
                outer.finished(trial, result, error=False)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.errored.append((_trial_id(trial), (trial.config or {}).get("nas_flex_config", {}),
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
        print(f"[{self.done}/{self.total}] {_trial_id(trial)} {what}: {status}, {self.objective}={shown} | best "
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

    Every argument, the storage folder and the files already in it are checked before Ray starts; a bad one raises
    a one-line ``NasFlexError`` naming it (``SearchSpaceError``, ``ResourceError``, ``StorageError``).

    Args:
        space: a ``SearchSpace``, a define-by-run function ``space(trial) -> config``, or a path to a .py file
            defining ``space`` (see ``search_spaces/``).
        storage: the leaderboard folder (a shared path on a cluster); also holds the trials' scratch folders
            (``_running/``) and Ray's files.
        num_samples: trials to run (>= 1); a grid defaults to its size; required otherwise. On resume: the
            experiment's new total (default: its recorded one).
        experiment: the experiment's name (default: the space's name and a timestamp).
        address: None starts an embedded local Ray with this machine's CPUs; "auto" or "ray://host:port" joins a
            cluster.
        resources_per_trial: e.g. {"cpu": 1, "gpu": 0.5} (fractional GPUs share a device).
        scheduler: None or "asha" (early stopping on the first objective; stopped trials reach Optuna as PRUNED).
        objectives: {"val_acc": "max"} by default; several, e.g. {"val_acc": "max", "flops": "min"}, make a
            multi-objective (NSGA-style TPE) search. ``Leaderboard.pareto`` gives the front.
        sampler: "tpe", "grid" (optuna's BruteForceSampler) or "random"; default: the space's.
        max_concurrent: cap on trials running at once (>= 1).
        seed: the sampler's seed.
        max_failures: retries of a trial that raised (>= 0; its row keeps the error until a retry succeeds).
        resume: continue the latest experiment of this space in ``storage`` (or ``experiment``), with the same space
            passed again. Finished trials (leaderboard rows) are not redone and seed the sampler; unfinished ones
            (``_running/``) continue under their own trial id from their last epoch checkpoint; the rest of
            ``num_samples`` is sampled anew. Reads only JSON, Parquet and ``weights_only`` checkpoints from the
            storage: nothing there is unpickled. The sampler, objectives, scheduler, seed and overrides are the
            experiment's recorded ones.
        dedupe: train each distinct config once; repeats get status "duplicate" with the first one's metrics.
        validate: dry-run and check the space before launching.
        overrides: config keys forced on every trial (e.g. {"dataset": "digits", "epochs": 2}).
        verbose: 0 silent, 1 one line per finished trial.
    """
    import logging

    # our own progress line replaces Tune's experiment-state chatter; the grid sampler's end-of-grid notice is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C raises KeyboardInterrupt here instead of Tune's graceful stop, which ends fit() as if the search were
    # done (the interrupted trial could be recorded as "stopped", a final status) and points at Tuner.restore
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)

    from nas_flex.leaderboard import Leaderboard

    # ------------------------------------------------------------ every check before Ray starts or a trial trains
    if num_samples is not None:
        _check_int("num_samples", num_samples, 1, "the number of trials")
    if max_concurrent is not None:
        _check_int("max_concurrent", max_concurrent, 1, "trials running at once")
    _check_int("max_failures", max_failures, 0, "retries of a trial that raised")
    if experiment is not None:
        _check_experiment_name(experiment)
    if storage is None or (isinstance(storage, str) and not storage.strip()):
        raise StorageError(f"`storage` must name a folder, but got {storage!r}")
    storage = Path(storage).expanduser().resolve()
    _check_storage(storage)
    space = resolve_space(space)
    res = _resources(resources_per_trial)
    if scheduler not in SCHEDULERS:
        raise SearchSpaceError(f"`scheduler` must be None or 'asha', but got {scheduler!r}")
    if sampler not in (None, "tpe", "grid", "random"):
        raise SearchSpaceError(f"`sampler` must be 'tpe', 'grid' or 'random', but got {sampler!r}")
    objs = _objectives(objectives)
    finished_rows: list[dict[str, Any]] = []
    resumed: list[dict[str, Any]] = []
    if resume:
        experiment = experiment or _latest_experiment(storage, space.name)
        meta_file = _experiment_file(storage, experiment)
        if not meta_file.is_file():
            raise SearchSpaceError(f"nothing to resume: no experiment {experiment!r} in {storage}")
        meta = _read_json(meta_file)
        recorded = {"sampler": meta.get("sampler"), "scheduler": meta.get("scheduler"),
                    "objectives": meta.get("objectives")}
        given = {"sampler": sampler, "scheduler": scheduler, "objectives": objs if objectives is not None else None}
        for key, value in given.items():
            if value is not None and value != recorded[key]:
                raise SearchSpaceError(f"`{key}` {value!r} differs from experiment {experiment!r}'s {recorded[key]!r}; "
                                       "a resume continues the experiment as it was (leave it out)")
        recorded_overrides = dict(meta.get("overrides") or {})
        for key, value in (overrides or {}).items():
            if value is not None and recorded_overrides.get(key, value) != value:
                raise SearchSpaceError(f"`overrides` {key}={value!r} differs from experiment {experiment!r}'s "
                                       f"{key}={recorded_overrides[key]!r}; leave it out to resume")
        space = space.with_overrides(**recorded_overrides, **{k: v for k, v in (overrides or {}).items()
                                                                if k not in recorded_overrides})
        sampler, scheduler, seed = recorded["sampler"], recorded["scheduler"], int(meta.get("seed", 0))
        objs = _objectives(recorded["objectives"])
        num_samples = num_samples or int(meta["num_samples"])
    else:
        space = space.with_overrides(**dict(overrides or {}))
        sampler = sampler or space.sampler
        if sampler not in ("tpe", "grid", "random"):
            raise SearchSpaceError(f"`sampler` must be 'tpe', 'grid' or 'random', but got {sampler!r}")
        experiment = experiment or f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        _check_experiment_name(experiment)
        if _experiment_file(storage, experiment).exists():
            raise SearchSpaceError(f"experiment {experiment!r} exists in {storage}; pass resume=True or a new name")
    _check_storage_files(storage)  # a damaged row file would fail the search at its end, after all the training
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
        _check_int("num_samples", num_samples, 1, "the space's NUM_SAMPLES")
    to_run = num_samples
    if resume:
        finished, unfinished = _plan_resume(storage, experiment)
        finished_rows = finished.to_dict("records")
        resumed = sorted(unfinished, key=lambda info: str(info.get("started", "")))
        to_run = len(resumed) + max(0, num_samples - len(finished_rows) - len(resumed))
        # a fresh seed: the first run's seed would draw its first samples again (dedupe would make them duplicates)
        seed = (seed + 1_000_003 * len(finished_rows)) % 2**31
        if verbose:
            print(f"resuming {experiment!r}: {len(finished_rows)} of {num_samples} trials finished, "
                  f"{len(resumed)} to continue, {to_run - len(resumed)} to sample", flush=True)
        if to_run == 0:
            return Leaderboard(storage)
    if address is None:
        _preflight_local(res)
    _prepare_storage(storage)

    import ray
    from ray import tune

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
        meta = {"name": experiment, "space": space.name, "source": space.source, "sampler": sampler,
                "objectives": objs, "num_samples": num_samples, "scheduler": scheduler, "seed": seed,
                "overrides": space.overrides, "resources_per_trial": res, "created": _now()}
        if resume:
            meta = {**_read_json(_experiment_file(storage, experiment)), "num_samples": num_samples,
                    "resumed": _now()}
        _experiment_file(storage, experiment).parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(_experiment_file(storage, experiment), meta)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, storage=str(storage), experiment=experiment, dedupe=dedupe),
            {"cpu": res["cpu"], "gpu": res["gpu"]},
        )
        first, first_mode = next(iter(objs.items()))
        progress = _Progress(to_run, first, first_mode, verbose)
        run_config = tune.RunConfig(
            # a resume is a new Ray run beside the first one's files, which are never read back (no unpickling)
            name=f"{experiment}--resume-{datetime.now().strftime('%Y%m%d-%H%M%S')}" if resume else experiment,
            storage_path=str(storage / "_ray"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
            callbacks=[progress.callback],
        )
        searcher = _optuna_search(space, objs, sampler, seed, study_name=experiment, finished=finished_rows,
                                  resumed=resumed)
        if max_concurrent:
            from ray.tune.search import ConcurrencyLimiter

            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        sched = None
        if scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # the epoch, not Ray's iteration count: a resumed trial continues at its epoch under a new Ray trial
            sched = ASHAScheduler(time_attr="epoch", metric=first, mode=first_mode,
                                  max_t=max_epochs, grace_period=1, reduction_factor=2)
        tuner = tune.Tuner(trainable, run_config=run_config, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=sched, num_samples=to_run))
        if verbose:
            print(f"nas_flex search {experiment!r}: {to_run} trials of {space.name!r} ({sampler}), "
                  f"objectives {objs}, {res['cpu']:g} CPU / {res['gpu']:g} GPU per trial; leaderboard: {storage}",
                  flush=True)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"interrupted: finished trials are in the leaderboard; continue with resume=True "
                  f"(nas-flex search SPACE --storage {storage} --resume --experiment {experiment})", file=sys.stderr)
            raise
        del grid  # rows come from the trials' own records, never from ResultGrid.get_dataframe()
        _record_unreported_errors(progress.errored, storage, experiment)
        if sched is not None:  # without a scheduler nothing stops a trial early but an interruption
            _record_stopped(progress.stopped, storage, experiment)
        _sweep_running(storage, experiment)
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

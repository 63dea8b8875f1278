"""One search trial inside Ray Tune: train it (or take the metrics of an identical trial), keep its weights, and
write its own leaderboard row whatever the ending: completed, diverged, out of memory, a duplicate of an
architecture already trained, or an error (then re-raised for Tune's retry). Trials that end without their
trainable's say (stopped by the scheduler, a crashed worker) get their row from the driver (``record_stopped``,
``record_unreported_errors``). Paths, claims, scratch records and the atomic write come from ``nas_flex.storage``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nas_flex.config import TrialConfig, resolve_config
from nas_flex.record import TASK_METRICS, TEST_METRICS, TrialRecord, TrialStatus, utc_now
from nas_flex.storage import (
    StorageLayout,
    check_trial_id,
    claim,
    inside,
    remove_tree,
    write_atomic,
    write_trial_file,
)

__all__ = ["trainable", "wait_for_owner", "owner_row", "record_stopped", "record_unreported_errors", "config_key"]

#: a duplicate waits for its owner's row at most this long (the owner is normally seen ending much sooner)
OWNER_TIMEOUT = 6 * 3600.0
#: first and longest pause between two looks at the owner's row (doubling in between)
OWNER_POLL = (0.5, 30.0)
# what a duplicate's row takes from its owner's
_OWNER_COLUMNS = ("status", *(f"metrics_{k}" for k in TASK_METRICS + TEST_METRICS), "best_val_acc", "best_val_loss",
                  "best_epoch", "params", "flops", "flops_fft", "epochs_completed")


def config_key(config: Mapping[str, Any]) -> str:
    """The key of a trial config (what dedupe and the leaderboard's ``config_key`` compare): ``TrialConfig.key``,
    resolving a plain dict first."""
    return resolve_config(config).key


def _failed(config: Mapping[str, Any], error: str | None, *, started: str = "", **fields: Any) -> TrialRecord:
    """The record of a trial that trained no model (yet): ``TrialRecord.failed`` with this process's torch."""
    import torch

    return TrialRecord.failed(config, error, started=started or utc_now(), torch_version=torch.__version__, **fields)


def _write(storage: Path, record: TrialRecord, experiment: str, trial_id: str) -> None:
    from nas_flex.leaderboard import write_trial

    write_trial(storage, record, experiment=experiment, trial_id=trial_id,
                config_key=config_key(record.config) if record.config else "")


# ------------------------------------------------------------------------------------------ waiting for an owner
def owner_row(storage: str | os.PathLike, experiment: str, trial_id: str) -> dict[str, Any] | None:
    """The leaderboard row of one trial, or None: reads only the columns a duplicate needs (and the keys). A missing
    value (Parquet null: how a NaN metric is stored) is NaN, as in ``Leaderboard.to_pandas()``."""
    import pyarrow.compute as pc

    from nas_flex.leaderboard.store import scan

    if not Path(storage).is_dir():
        return None
    table = scan(storage, columns=_OWNER_COLUMNS, on_corrupt="ignore").table
    mine = table.filter(pc.and_(pc.equal(table["experiment"], experiment), pc.equal(table["trial_id"], trial_id)))
    if not mine.num_rows:
        return None
    return {k: math.nan if v is None else v for k, v in mine.slice(mine.num_rows - 1).to_pylist()[0].items()}


def _owner_gone(layout: StorageLayout, experiment: str, owner: str, claim: Path | None) -> bool:
    """The owner ended without leaving a row: its scratch folder is gone, or the claim no longer names it."""
    if not layout.running(experiment, owner).is_dir():
        return True
    try:
        return claim is not None and claim.read_text().strip() != owner
    except OSError:
        return True


def wait_for_owner(storage: str | os.PathLike, experiment: str, owner: str, *, timeout: float = OWNER_TIMEOUT,
                   poll: tuple[float, float] = OWNER_POLL, claim: Path | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """The row of the trial that claimed this architecture, once it is written; None if it did not complete.

    Reads only the owner's row (a column-projected read), with pauses from ``poll[0]`` doubling to ``poll[1]``
    seconds, and stops as soon as the owner is known to have ended without a row (its scratch folder gone or the
    ``claim`` file no longer naming it), or after ``timeout`` seconds.
    """
    layout = StorageLayout(storage)
    deadline = time.monotonic() + timeout
    pause = poll[0]
    while True:
        row = owner_row(storage, experiment, owner)
        if row is None and _owner_gone(layout, experiment, owner, claim):
            row = owner_row(storage, experiment, owner)  # it may have written its row just before its clean-up
            if row is None:
                return None
        if row is not None:
            return row if row["status"] == TrialStatus.COMPLETED.value else None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sleep(min(pause, left))
        pause = min(2 * pause, poll[1])


def _duplicate_of(config: Mapping[str, Any], owner: str, row: Mapping[str, Any], started: str,
                  search_params: Mapping[str, Any]) -> TrialRecord:
    return _failed(
        config, f"duplicate of trial {owner}", started=started, status=TrialStatus.DUPLICATE,
        metrics={k: row[f"metrics_{k}"] for k in TASK_METRICS + TEST_METRICS},
        best={"val_acc": row["best_val_acc"], "val_loss": row["best_val_loss"], "epoch": int(row["best_epoch"])},
        params=int(row["params"]), flops=row["flops"], flops_fft=row["flops_fft"],
        epochs_completed=int(row["epochs_completed"]), search_params=search_params,
    )


# ------------------------------------------------------------------------------------------------- the trainable
def _tune_report(record: TrialRecord, epochs: int, **extra: Any) -> None:
    """Report a trial's outcome to Ray Tune: its task metrics only (the held-out test scores stay in the row)."""
    from ray import tune

    task = {k: v for k, v in record.metrics.items() if k in TASK_METRICS}
    tune.report({**task, "flops": record.flops, "params": record.params, "epochs": epochs,
                 "status": record.status.value, **extra})


def _start(params: Mapping[str, Any], layout: StorageLayout, experiment: str,
           started: str) -> tuple[TrialConfig, str, dict[str, Any], Path]:
    """(config, trial id, sampler params, scratch folder) of the trial Ray started with ``params``."""
    from ray import tune

    params = dict(params)
    config = resolve_config(params.pop("nas_flex_config"))  # the searcher's resolved config: not checked again
    ctx = tune.get_context()
    # a trial continued by --resume keeps the id (row, checkpoint, claim) it had; Ray gives it a new one
    trial_id = params.pop("nas_flex_trial_id", None) or ctx.get_trial_id()
    try:
        import torch

        torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    except Exception:  # noqa: BLE001 - threads are an optimisation only
        pass
    # the scratch folder lives in the storage (shared on a cluster): a retry on any node, or --resume, finds the
    # trial's config and last epoch there; it is removed once the trial's row is written
    check_trial_id(trial_id, "the trial's parameters")
    work = inside(layout.root, layout.running(experiment, trial_id))  # a link planted since the check: refused
    work.mkdir(parents=True, exist_ok=True)
    write_trial_file(work, {"trial_id": trial_id, "experiment": experiment, "config": config.to_dict(),
                            "search_params": params, "started": started})
    return config, trial_id, params, work


def _run_device(config: TrialConfig) -> str | None:
    """The device this worker trains on when the config asks for "auto": CUDA if Ray gave the trial a GPU."""
    import ray

    return ("cuda" if ray.get_gpu_ids() else "cpu") if config["device"] == "auto" else None


def _runner(user: bytes | None) -> Callable[..., TrialRecord]:
    """``run_trial``, or the user's packed training function run the same way (``run_trainable``)."""
    from functools import partial

    from nas_flex.train import run_trial

    if user is None:
        return run_trial
    from nas_flex.train.context import run_trainable
    from nas_flex.tune.user import unpack

    return partial(run_trainable, unpack(user))


def _train(config: TrialConfig, work: Path, layout: StorageLayout, experiment: str, trial_id: str,
           started: str, search_params: Mapping[str, Any], user: bytes | None = None) -> TrialRecord:
    """Train the trial (the built-in loop, or the user's packed function ``user``), keep its weights and write its
    row; an error writes an error row and propagates."""
    from ray import tune

    from nas_flex.train.trial import format_exception

    epochs = config["epochs"]
    final: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        out = {k: v for k, v in metrics.items() if k not in ("learned_sizes", *TEST_METRICS)}
        last = out["epoch"] == epochs
        out.update(epochs=epochs, status=(TrialStatus.COMPLETED if last else TrialStatus.RUNNING).value)
        if last:
            # the last epoch is reported after the row is written: a scheduler may stop the trial at any report
            # (ASHA stops every trial that reaches max_t there), and nothing after that report would run
            final.update(out)
            return
        tune.report(out)  # no Ray checkpoint: the trial's own one is in the storage (work)

    try:
        result = _runner(user)(config, report=report, checkpoint=layout.checkpoint(experiment, trial_id),
                               device=_run_device(config))
        result = result.replace(search_params=search_params)
        _keep_weights(layout.root, layout.checkpoint(experiment, trial_id), layout.weights(experiment, trial_id))
        _write(layout.root, result, experiment, trial_id)
    except Exception as err:  # the scratch folder stays: Ray's retry (or --resume) continues from its last epoch
        _write(layout.root, _failed(config, format_exception(err), started=started, search_params=search_params),
               experiment, trial_id)
        raise
    remove_tree(layout.root, work)
    if final:
        tune.report(final)
    elif result.status is TrialStatus.COMPLETED:
        # resumed from its last epoch's checkpoint (its row was not written): no epoch ran, report the result
        _tune_report(result, epochs, epoch=result.epochs_completed)
    return result


def trainable(params: dict[str, Any], *, storage: str, experiment: str, dedupe: bool,
              user: bytes | None = None, plugins: Mapping[str, Any] | None = None) -> None:
    """Ray Tune's function trainable of a search: ``params`` carries the config under ``nas_flex_config`` (and a
    resumed trial's id under ``nas_flex_trial_id``), the rest are Optuna's sampled params; ``user`` the user's
    training function packed by ``nas_flex.tune.user.pack`` (None: the built-in loop); ``plugins`` the user's
    registered layers, backbones and datasets (``nas_flex.tune.plugins``)."""
    from nas_flex.tune.plugins import install

    install(plugins)  # before anything resolves a name
    started = utc_now()
    layout = StorageLayout(storage)
    config, trial_id, search_params, work = _start(params, layout, experiment, started)
    if dedupe:
        key = config_key(config)
        owner = claim(layout, experiment, key, trial_id)
        row = None
        if owner != trial_id:
            row = wait_for_owner(layout.root, experiment, owner, claim=layout.claim(experiment, key))
        if row is not None:
            duplicate = _duplicate_of(config, owner, row, started, search_params)
            _write(layout.root, duplicate, experiment, trial_id)
            remove_tree(layout.root, work)
            _tune_report(duplicate, config["epochs"], train_seconds=0.0, epoch=config["epochs"])
            return
    result = _train(config, work, layout, experiment, trial_id, started, search_params, user)
    if result.status is not TrialStatus.COMPLETED:  # tell the searcher how it ended (Optuna records FAIL)
        _tune_report(result, config["epochs"], epoch=result.epochs_completed)


def _keep_weights(storage: Path, state_file: Path, final: Path) -> None:
    """Keep the trained model's state_dict at ``final`` (``StorageLayout.weights``: tensors and plain values only,
    loads with ``torch.load(..., weights_only=True)``), so export needs no retraining."""
    import torch

    if not state_file.is_file():  # no epoch completed
        return
    model_state = torch.load(state_file, map_location="cpu", weights_only=True)["model"]
    write_atomic(inside(storage, final), lambda tmp: torch.save(model_state, tmp))


# ------------------------------------------------------------------------------------ rows the driver writes
def record_stopped(stopped: list[tuple[str, dict, dict]], storage: Path, experiment: str) -> None:
    """Trials the scheduler (ASHA) stopped early get a row with status "stopped" and their last epoch's metrics
    (``stopped``: (trial id, config, last result) each), unless they have a row already."""
    for trial_id, config, last in stopped:
        if owner_row(storage, experiment, trial_id) is not None:
            continue
        metrics = {k: last.get(k, float("nan")) for k in TASK_METRICS}
        epoch = int(last.get("epoch", 0))
        _write(storage, _failed(config, None, status=TrialStatus.STOPPED, metrics=metrics, epochs_completed=epoch,
                                best={"val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"], "epoch": epoch},
                                params=int(last.get("params", 0)), flops=last.get("flops", float("nan"))),
               experiment, trial_id)


def record_unreported_errors(errored: list[tuple[str, dict, str]], storage: Path, experiment: str) -> None:
    """A trial that died before its trainable could write (a crashed worker, say) still gets a row."""
    for trial_id, config, error in errored:
        if owner_row(storage, experiment, trial_id) is not None:
            continue
        _write(storage, _failed(config, f"the trial's worker failed before it reported ({error})"),
               experiment, trial_id)

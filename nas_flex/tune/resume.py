"""An experiment in a search's storage: checking the storage, the experiment's settings file, and what a resume
continues (``plan_resume``). Paths come from ``nas_flex.leaderboard.layout``.

Resume reads only JSON, Parquet and ``weights_only`` checkpoints: the experiment's JSON, the leaderboard rows (what
finished), and the scratch folders (what started and did not finish). Nothing in the storage is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_flex.errors import NasFlexError, SearchSpaceError
from nas_flex.leaderboard.layout import TRIAL_FILE, StorageLayout
from nas_flex.record import TrialStatus
from nas_flex.tune.errors import StorageError

__all__ = ["ResumePlan", "plan_resume", "sweep_running", "latest_experiment", "read_json", "write_json_atomic",
           "check_storage_path", "prepare_storage", "check_storage_files"]


# ------------------------------------------------------------------------------------------------ the storage
def check_storage_path(storage: Path) -> None:
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


def prepare_storage(storage: Path) -> None:
    """Create ``storage`` and prove it writable with a probe file (permissions and read-only mounts that
    ``os.access`` cannot see, e.g. as root), before Ray starts."""
    probe = storage / f".nas_flex_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"`storage` {str(storage)!r} is not writable: {err.strerror or err}") from None


def check_storage_files(storage: Path) -> None:
    """Every Parquet file already in the storage reads (``nas_flex.leaderboard.check_storage``), before any trial
    trains: a damaged file would otherwise show only at the search's end."""
    from nas_flex.errors import CorruptLeaderboardError
    from nas_flex.leaderboard import check_storage

    try:
        check_storage(storage)
    except CorruptLeaderboardError as err:
        raise StorageError(f"`storage`: {err}") from None


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object file of the storage (never a pickle); a damaged one is a one-line StorageError naming it."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot read {str(file)!r}: {err}") from None
    if not isinstance(data, dict):
        raise StorageError(f"{str(file)!r} does not hold a JSON object")
    return data


def write_json_atomic(file: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON under a hidden temporary name and rename it into place."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, file)


def latest_experiment(storage: Path, space_name: str | None) -> str:
    """The name of the newest experiment of ``space_name`` (any space: None) in the storage."""
    folder = StorageLayout(storage).experiments_dir
    metas = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = read_json(f)
        if space_name is None or meta.get("space") == space_name:
            metas.append(meta)
    if not metas:
        raise SearchSpaceError(f"nothing to resume: no experiment of space {space_name!r} under {storage}")
    return max(metas, key=lambda m: m["created"])["name"]


# ----------------------------------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class ResumePlan:
    """What an interrupted experiment left.

    Attributes:
        finished: its final leaderboard rows (pandas DataFrame; ``error`` rows are not final).
        unfinished: the ``trial.json`` of each started trial without a final row (config, search params, id).
    """

    finished: Any
    unfinished: list[dict[str, Any]] = field(default_factory=list)


def _experiment_rows(storage: Path, experiment: str) -> Any:
    from nas_flex.leaderboard import Leaderboard

    df = Leaderboard(storage).to_pandas()
    return df[df["experiment"] == experiment] if len(df) else df


def plan_resume(storage: str | os.PathLike, experiment: str) -> ResumePlan:
    """What an interrupted experiment left: its final rows and its unfinished trials.

    A trial is finished when its row is written with a final status; its scratch folder may still exist (the run
    ended between the row and the clean-up) and is removed here. A trial is unfinished when its scratch folder holds
    its ``trial.json`` and it has no row, or an ``error`` row (errored trials are retried, as Ray's own resume did):
    it continues under its own trial id, from its last epoch checkpoint if it has one.

    Raises:
        StorageError: a ``trial.json`` is damaged or describes another trial.
    """
    storage = Path(storage)
    rows = _experiment_rows(storage, experiment)
    errored = set(rows.loc[rows["status"] == TrialStatus.ERROR.value, "trial_id"]) if len(rows) else set()
    final_ids = set(rows["trial_id"]) - errored if len(rows) else set()
    unfinished = []
    folder = StorageLayout(storage).running_dir(experiment)
    for trial_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        if trial_dir.name in final_ids:
            shutil.rmtree(trial_dir, ignore_errors=True)
            continue
        if not (trial_dir / TRIAL_FILE).is_file():
            continue  # the trial was killed before it wrote its config: it never started training
        info = read_json(trial_dir / TRIAL_FILE)
        if info.get("trial_id") != trial_dir.name or not isinstance(info.get("config"), dict):
            raise StorageError(f"{str(trial_dir / TRIAL_FILE)!r} does not describe trial {trial_dir.name!r}")
        unfinished.append(info)
    final = rows[rows["trial_id"].isin(final_ids)] if len(rows) else rows
    return ResumePlan(final, unfinished)


def sweep_running(storage: Path, experiment: str) -> None:
    """Remove the scratch folders of trials whose final row is written (ASHA-stopped trials end without their
    trainable's clean-up); keep those of errored trials, which --resume retries."""
    folder = StorageLayout(storage).running_dir(experiment)
    if folder.is_dir():
        with contextlib.suppress(NasFlexError):  # a damaged trial.json is reported by the --resume that needs it
            plan_resume(storage, experiment)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty

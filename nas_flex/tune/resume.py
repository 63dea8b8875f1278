"""Resuming an experiment: checking the storage before any work, whether the space changed since the experiment
was recorded, and what a resume continues (``plan_resume``). Paths and records come from ``nas_flex.storage``.

Resume reads only JSON, Parquet and ``weights_only`` checkpoints: the experiment's JSON, the leaderboard rows (what
finished), and the scratch folders (what started and did not finish). Nothing in the storage is unpickled, and
nothing outside it is deleted: a storage holding a link is refused, trial ids are checked to be plain names.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_flex.errors import NasFlexError, SearchSpaceError, StorageError
from nas_flex.record import TrialStatus
from nas_flex.storage import (
    StorageLayout,
    check_no_links,
    check_trial_id,
    read_json,
    read_trial_file,
    remove_tree,
    write_json_atomic,
)

__all__ = ["ResumePlan", "plan_resume", "sweep_running", "latest_experiment", "read_json", "write_json_atomic",
           "check_storage_path", "prepare_storage", "check_storage_files", "space_sample", "check_space_unchanged"]


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
    """No link anywhere in the storage (``nas_flex.storage.check_no_links``) and every Parquet file already in it
    reads (``nas_flex.leaderboard.check_storage``), before any trial trains: a damaged file would otherwise show only
    at the search's end, a link would let the clean-up delete outside the storage."""
    from nas_flex.errors import CorruptLeaderboardError
    from nas_flex.leaderboard import check_storage

    check_no_links(storage)
    try:
        check_storage(storage)
    except CorruptLeaderboardError as err:
        raise StorageError(f"`storage`: {err}") from None


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


# ------------------------------------------------------------------------------------------ has the space changed
#: sampled configs an experiment records of its space (what a resume compares)
SPACE_SAMPLES = 8


def space_sample(space: Any, sampler: str, seed: int) -> list[dict[str, Any]]:
    """What an experiment records of its space: ``SPACE_SAMPLES`` (params, config) pairs drawn with its sampler and
    seed, as plain JSON values. The same space draws the same pairs; a changed one (its choices, its epochs, ...)
    does not."""
    from nas_flex.spaces import sample_configs

    params, configs = sample_configs(space, sampler, SPACE_SAMPLES, seed)
    return json.loads(json.dumps([{"params": p, "config": c} for p, c in zip(params, configs)], default=str))


def _differences(recorded: list, now: list) -> list[str]:
    """``'key' (old -> new)`` for each params / config key whose value differs in some sample (first difference)."""
    seen: dict[str, str] = {}
    for old, new in zip(recorded, now):
        for part in ("params", "config"):
            a, b = old.get(part, {}), new.get(part, {})
            for key in sorted(set(a) | set(b)):
                if a.get(key, "<unset>") != b.get(key, "<unset>") and key not in seen:
                    seen[key] = f"{key!r} ({a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r})"
    if len(recorded) != len(now):
        seen.setdefault("", f"the number of points ({len(recorded)} -> {len(now)})")
    return list(seen.values())


def check_space_unchanged(meta: Mapping[str, Any], space: Any, experiment: str) -> None:
    """Before Ray starts: the space of a resume draws what the experiment recorded (``space_sample``), else a
    one-line ``SearchSpaceError`` naming what changed. Experiments recorded without a sample are not checked."""
    recorded = meta.get("space_sample")
    if not isinstance(recorded, list) or not all(isinstance(r, dict) for r in recorded):
        return
    now = space_sample(space, str(meta.get("sampler")), int(meta.get("seed", 0)))
    changed = _differences(recorded, now)
    if changed:
        raise SearchSpaceError(
            f"the space of experiment {experiment!r} changed since it was recorded: {', '.join(changed[:6])}; a "
            "resume continues the experiment as it was (restore the space), or search the changed space as a new "
            "experiment (another experiment name, without resume)"
        )


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
    for trial_id in final_ids | errored:
        check_trial_id(trial_id, f"a row of experiment {experiment!r}")
    unfinished = []
    folder = StorageLayout(storage).running_dir(experiment)
    for trial_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        if trial_dir.name in final_ids:
            remove_tree(storage, trial_dir)  # refuses a link, and a path that resolves outside the storage
            continue
        info = read_trial_file(trial_dir)
        if info is not None:  # None: the trial was killed before it wrote its config, it never started training
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

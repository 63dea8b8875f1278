"""The small records a search keeps in its storage besides the leaderboard: experiment settings, a started trial's
``trial.json``, dedupe claims; and the private folder of Ray's own files, outside the storage.

JSON and plain text only: nothing read here is unpickled or executed.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from nas_flex.errors import StorageError, UnsafeStorageError
from nas_flex.storage.atomic import write_json_atomic
from nas_flex.storage.layout import TRIAL_FILE, StorageLayout
from nas_flex.storage.safety import check_trial_id

__all__ = ["read_json", "write_trial_file", "read_trial_file", "claim", "private_ray_dir"]


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object file of the storage (never a pickle); a damaged one is a one-line StorageError naming it."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot read {str(file)!r}: {err}") from None
    if not isinstance(data, dict):
        raise StorageError(f"{str(file)!r} does not hold a JSON object")
    return data


def write_trial_file(work: Path, info: dict[str, Any]) -> None:
    """A started trial's ``trial.json`` (config, sampler params, id, start time), unless it has one already."""
    if not (work / TRIAL_FILE).is_file():
        write_json_atomic(work / TRIAL_FILE, info)


def read_trial_file(trial_dir: Path) -> dict[str, Any] | None:
    """The ``trial.json`` of a scratch folder (None: the trial was killed before writing it), checked to describe
    the trial of that folder with a plain id and a config.

    Raises:
        StorageError: it is damaged or describes another trial.
        UnsafeStorageError: its trial id is not a plain name.
    """
    if not (trial_dir / TRIAL_FILE).is_file():
        return None
    info = read_json(trial_dir / TRIAL_FILE)
    check_trial_id(info.get("trial_id"), str(trial_dir / TRIAL_FILE))
    if info.get("trial_id") != trial_dir.name or not isinstance(info.get("config"), dict):
        raise StorageError(f"{str(trial_dir / TRIAL_FILE)!r} does not describe trial {trial_dir.name!r}")
    return info


def claim(layout: StorageLayout, experiment: str, key: str, trial_id: str) -> str:
    """Claim the config ``key`` for ``trial_id``; return the trial id that holds the claim (maybe another)."""
    file = layout.claim(experiment, key)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return file.read_text().strip()
    try:
        os.write(fd, trial_id.encode())
    finally:
        os.close(fd)
    return trial_id


def private_ray_dir() -> Path:
    """A folder only this user can reach, for Ray Tune's own files (``$XDG_CACHE_HOME/nas_flex/ray``, else
    ``~/.cache/nas_flex/ray``, else ``<tmp>/nas_flex-<uid>/ray``); created with mode 0700.

    Ray reads some of its files back with pickle (a trial's ``error.pkl``): they must never sit where the storage's
    other writers can reach them.

    Raises:
        UnsafeStorageError: the folder (or its parent made here) belongs to another user or others can write it.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if Path.home().is_dir() else "")
    base = Path(cache) / "nas_flex" if cache else Path(tempfile.gettempdir()) / f"nas_flex-{os.getuid()}"
    folder = base / "ray"
    for part in (base, folder):
        part.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(part)
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            raise UnsafeStorageError(f"{str(part)!r} (for Ray's files) is a link or belongs to another user; "
                                     "remove it or set XDG_CACHE_HOME to a folder of your own")
        if info.st_mode & 0o077:
            os.chmod(part, 0o700)
    return folder

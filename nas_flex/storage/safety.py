"""Paths stay inside the storage: whatever someone else wrote into a shared storage folder, nas_flex neither writes
nor deletes outside it.

* ``check_no_links`` refuses a storage that holds a symbolic link (before Ray starts): a link at
  ``_running/<experiment>`` would make the clean-up of finished trials delete in the folder it points to.
* ``inside`` resolves a path (following links) and refuses one that leaves the storage.
* ``check_trial_id`` refuses a trial id read from a row or a scratch file that is not a plain name (``../x``);
  ``check_experiment`` refuses an experiment name read from a row that could name a path (``../x``, ``a/b``).
* ``remove_tree`` deletes a folder only after both checks.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from nas_flex.errors import UnsafeStorageError

__all__ = ["SAFE_NAME", "check_trial_id", "check_experiment", "is_experiment_name", "inside", "check_no_links",
           "remove_tree"]

#: a trial id (or another name used as one path component): no separator, no leading dot, at most 100 characters
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def check_trial_id(trial_id: object, where: str = "the storage") -> str:
    """``trial_id`` if it is a plain name (``SAFE_NAME``), else a one-line ``UnsafeStorageError``.

    Example:
        >>> check_trial_id("4b1f2_00000")
        '4b1f2_00000'
    """
    if not isinstance(trial_id, str) or not SAFE_NAME.fullmatch(trial_id):
        raise UnsafeStorageError(f"trial id {trial_id!r} read from {where} is not a plain name ({SAFE_NAME.pattern}); "
                                 "a forged or damaged record: move it out of the storage")
    return trial_id


def is_experiment_name(name: object) -> bool:
    """Whether ``name`` may name an experiment's files and folders: a non-empty string without a path separator or
    a control character that does not start with '.' or '_' (the one rule for a new experiment and a stored row)."""
    return (isinstance(name, str) and bool(name.strip()) and not name.startswith((".", "_"))
            and not any(c in name for c in "/\\") and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def check_experiment(name: object, where: str = "the storage") -> str:
    """``name`` if it can be an experiment's name (the rule ``nas_flex.search`` applies when it starts one: no path
    separator or control character, no leading '.' or '_'), else a one-line ``UnsafeStorageError``: a row's
    experiment names files (``_weights/<experiment>--<trial id>.pt``, ``_experiments/<experiment>.json``).

    Example:
        >>> check_experiment("grid-tpe--digits-multiscale--s0")
        'grid-tpe--digits-multiscale--s0'
    """
    if not is_experiment_name(name):
        raise UnsafeStorageError(f"experiment name {name!r} read from {where} could name a path (a separator, a "
                                 "control character or a leading '.' / '_'); a forged or damaged record: move it "
                                 "out of the storage")
    return name


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` resolved (links followed), if it is ``root`` or below it; else a one-line ``UnsafeStorageError``."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeStorageError(f"{str(path)!r} leads outside the storage {str(base)!r} (to {str(resolved)!r}); "
                                 "nas_flex writes and deletes only inside it")
    return resolved


def check_no_links(root: str | os.PathLike) -> None:
    """Refuse a storage that holds a symbolic link anywhere below it, naming the first one found.

    Reads directory entries only (no ``stat`` per file), so a storage of 10^5 rows is checked in well under a second.

    Raises:
        UnsafeStorageError: a link in the storage.
    """
    base = Path(root)
    if not base.is_dir():
        return
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile (a finished trial's scratch folder)
        for entry in entries:
            if entry.is_symlink():
                raise UnsafeStorageError(
                    f"{entry.path!r} is a symbolic link inside the storage {str(base)!r}: nas_flex does not follow "
                    "links in a storage (it could write or delete outside it); replace it by a real folder or file"
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))


def remove_tree(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Delete the folder ``path`` of the storage ``root`` (nothing if it is gone), only if it is inside and no link.

    Raises:
        UnsafeStorageError: ``path`` is a link or leads outside ``root``; nothing is deleted.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafeStorageError(f"{str(path)!r} is a symbolic link inside the storage; not deleted")
    inside(root, path)
    # rmtree never follows a link inside the tree (it removes the link itself)
    shutil.rmtree(path, ignore_errors=True)

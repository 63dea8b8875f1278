"""The one atomic write of nas_flex: write under a hidden temporary name beside the target, sync, rename.

Every file a search puts in its storage (rows, merged files, journals, experiment records, scratch JSON, checkpoints,
kept weights) goes through ``write_atomic``: a reader sees the old file or the new one, never half of one; a failure
(a full disk, a kill of the writer's Python code) removes the temporary file; only a killed process can leave one,
hidden (``.<name>.<pid>.<random>.tmp``) and removed by the next merge or ``compact()`` after an hour.

A full disk (``ENOSPC``, ``EDQUOT``) raises ``StorageFullError``: one line naming the file, nothing left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nas_flex.errors import StorageFullError

__all__ = ["write_atomic", "write_bytes_atomic", "write_json_atomic", "temporary_name", "is_temporary", "fsync_file",
           "fsync_dir", "FULL_ERRNOS"]

#: what a full disk (or quota) raises
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_TMP_SUFFIX = ".tmp"


def temporary_name(final: Path) -> Path:
    """The hidden name ``final`` is written under before its rename (``.<name>.<pid>.<random>.tmp``)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")


def is_temporary(name: str) -> bool:
    """A name ``temporary_name`` makes."""
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def fsync_file(file: Path) -> None:
    """Flush ``file``'s data to disk (before a rename points at it: no empty file after a power loss)."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename in it); silently skipped where a file system cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(final: str | os.PathLike, write: Callable[[Path], Any], *, sync: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a hidden temporary file beside ``final``, sync it and rename it to ``final``.

    Args:
        final: the file to create or replace (its folder is created).
        write: writes the whole content to the path it is given (``pq.write_table``, ``torch.save``, ...).
        sync: fsync the file before its rename and the folder after it.

    Returns:
        ``final`` as a ``Path``.

    Raises:
        StorageFullError: the disk (or quota) is full; the temporary file is removed.
        OSError: any other failure of the write or the rename; the temporary file is removed.

    Example:
        >>> write_atomic(tmp_path / "a.txt", lambda p: p.write_text("hi"))  # doctest: +SKIP
    """
    final = Path(final)
    tmp = temporary_name(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if sync:
            fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
            raise StorageFullError(f"no space left to write {str(final)!r} ({os.strerror(err.errno)}); "
                                   "free space, then resume") from None
        raise
    if sync:
        fsync_dir(final.parent)
    return final


def write_bytes_atomic(final: str | os.PathLike, data: bytes, *, sync: bool = True) -> Path:
    """``data`` as the whole content of ``final``, atomically (``write_atomic``)."""
    return write_atomic(final, lambda tmp: tmp.write_bytes(data), sync=sync)


def write_json_atomic(final: str | os.PathLike, data: Mapping[str, Any], *, sync: bool = True) -> Path:
    """``data`` as a JSON file, atomically (``write_atomic``); values JSON cannot hold are written as strings."""
    text = json.dumps(data, indent=1, default=str)
    return write_atomic(final, lambda tmp: tmp.write_text(text), sync=sync)

"""The export folder: never overwritten in place.

An export is written into a new sibling folder (``.<out>.staging-<random>``, on the same filesystem) and renamed
to ``out`` once every file is written and checked. So:

* an existing, non-empty ``out`` is refused (one line naming it) unless ``force=True`` (``--force``);
* with ``force``, the old folder is swapped out only at the very end; a failure before that leaves it exactly as it
  was (every file byte-identical) and removes the staging folder;
* a folder that holds only ``training/`` (the retraining checkpoint a failed export leaves) is continued without
  ``force``, and a finished ``training/trial_state.pt`` is carried into the new export, so retraining is not redone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from nas_flex.errors import ExportError
from nas_flex.storage.layout import TRIAL_STATE_FILE

__all__ = ["check_out", "staged_export", "TRAINING_DIR"]

#: the retraining checkpoint's folder inside an export
TRAINING_DIR = "training"


def _finished_training(folder: Path) -> bool:
    return (folder / TRAINING_DIR / TRIAL_STATE_FILE).is_file()


def _only_training(out: Path) -> bool:
    """``out`` holds nothing but a retraining checkpoint folder (what a failed export leaves)."""
    return all(entry.name == TRAINING_DIR and entry.is_dir() for entry in out.iterdir())


def check_out(out: str | os.PathLike, *, force: bool = False) -> Path:
    """Check the export folder before any work; returns it as an absolute path.

    Raises:
        ExportError: ``out`` is a file, is a non-empty folder and ``force`` is false, is a symlink, or cannot be
            created (its nearest existing parent is not a writable folder).
    """
    if out is None or not str(out).strip():
        raise ExportError(f"`out` must name a folder, but got {out!r}")
    path = Path(out).expanduser().absolute()
    if path.is_symlink():
        raise ExportError(f"`out` {str(path)!r} is a symlink; pass the folder itself")
    if path.exists() and not path.is_dir():
        raise ExportError(f"`out` {str(path)!r} is a file, not a folder")
    if path.is_dir() and not force and any(path.iterdir()) and not _only_training(path):
        entries = sorted(e.name for e in path.iterdir())
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ExportError(f"`out` {str(path)!r} is not empty ({len(entries)} entries: {shown}); an export never "
                          "overwrites: pass force=True (--force) to replace it (the old folder stays as it is until "
                          "the new export is complete), or choose a new folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"`out` {str(path)!r} cannot be written: {str(parent)!r} is not a writable folder")
    return path


@contextlib.contextmanager
def staged_export(out: Path) -> Iterator[Path]:
    """A new staging folder next to ``out`` to write the export into; renamed to ``out`` when the block ends
    without an error (the old ``out``, if any, is removed only then). On an error the staging folder is removed,
    ``out`` is left as it was, and a finished retraining checkpoint is kept in ``out/training`` when ``out`` held
    nothing else."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        if _finished_training(out):  # a retraining checkpoint of an earlier export: reuse it
            shutil.copytree(out / TRAINING_DIR, stage / TRAINING_DIR)
        yield stage
    except BaseException:
        _keep_training(stage, out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)


def _keep_training(stage: Path, out: Path) -> None:
    """After a failure: move a finished retraining checkpoint to ``out/training`` if that changes no user file."""
    if not _finished_training(stage) or _finished_training(out):
        return
    if out.exists() and not (out.is_dir() and _only_training(out)):
        return  # the old export stays exactly as it was
    out.mkdir(exist_ok=True)
    shutil.rmtree(out / TRAINING_DIR, ignore_errors=True)  # an unfinished one
    os.replace(stage / TRAINING_DIR, out / TRAINING_DIR)


def _swap_in(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out``; an old ``out`` is renamed aside first and removed once the new one is in."""
    if not out.exists():
        os.rename(stage, out)
        return
    old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:12]}"
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""Merging a leaderboard's row files into larger Parquet files: automatically as trials are written, and compact().

A search writes one small file per trial (atomic, so writers never coordinate). Left alone, 10^5 trials would be
10^5 files of ~25 KB, each with its own ~20 KB footer, and every query would open them all. So, levelled like a
log-structured merge tree:

* once ``merge_at`` (16) row files are in the directory, the writer that notices merges them into one
  ``merged-1-<uuid>.parquet``;
* once ``MERGE_FANOUT`` (8) merged files of level L are there, they become one of level L+1, up to ``MAX_LEVEL``
  (5: 16 * 8**4 = 65,536 rows a file).

At 10^5 trials that is at most 1 + 4 + 7 + 7 + 7 merged files and 15 row files (reading a file costs about the
same whatever its level, so the count is what a query pays for); each row is rewritten at most ``MAX_LEVEL`` times,
and the largest merge (65,536 rows) takes a few seconds, once per 65,536 trials. Merged files have row groups of
``ROW_GROUP_ROWS`` rows, so a reader fetches a chosen row by reading one row group, and min/max statistics only on
short columns, so footers stay small.

Safety, the same as ``compact()`` always had: a merge writes its output under a hidden temporary name, renames it
into place and only then removes its inputs, each only if it is still the very file that was read (a trial
rewritten meanwhile keeps its new file). Readers see every row throughout (and drop the doubles of the moment
between the rename and the removals). Merges hold an exclusive ``flock`` on ``_merge/lock`` (a writer that finds it
taken skips merging; the kernel releases it when a process dies), and write a journal (``_merge/<table>.json``: the
output's name and the inputs' inode, size and mtime) before the rename, so the next merge finishes or undoes one
that was killed midway: no row lost, none left doubled. Input is read twice, key columns first (to drop superseded
versions of a rewritten trial) then row group by row group, so memory stays bounded by one row group and the keys.

pyarrow, NumPy and the standard library only. Nothing read here is unpickled: Parquet and JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.schema import HISTORY_SCHEMA, TRIAL_SCHEMA
from nas_flex.leaderboard.store import (
    MERGE_AT,
    MergeWarning,
    conform,
    current_versions,
    latest_indices,
    open_parquet,
    read_parts,
    report_corrupt,
    row_files,
    scan,
    stat_key,
    write_options,
)
from nas_flex.storage.atomic import write_atomic, write_json_atomic
from nas_flex.storage.layout import (
    COMPACTED_LEVEL,
    HISTORY_DIR,
    MERGE_DIR,
    file_level,
    merged_file_name,
)
from nas_flex.storage.layout import (
    is_row_file as _is_row_file,
)

__all__ = ["MERGE_FANOUT", "MAX_LEVEL", "ROW_GROUP_ROWS", "maybe_merge", "compact"]

#: merged files of one level that make one of the next level
MERGE_FANOUT = 8
#: the highest level automatic merges make (compact() folds everything into one file)
MAX_LEVEL = 5
#: rows per row group of a merged file: fetching one chosen row reads one row group
ROW_GROUP_ROWS = 1024
_LEFTOVER_SECONDS = 3600.0

# the two tables of a leaderboard: (sub-directory, schema, key columns for the merge's dedupe, journal name)
_TABLES = (
    ("", TRIAL_SCHEMA, "trials.json"),
    (HISTORY_DIR, HISTORY_SCHEMA, "history.json"),
)
_HISTORY_KEYS = ("experiment", "trial_id", "written_at", "epoch")


class _InputChanged(Exception):
    """An input of a merge was retired or rewritten since it was read: merge another time."""


# picks the rows to keep from the inputs' key columns (with _file, _row): indices into that table
Select = Callable[[pa.Table], pa.Array]


def _latest_trials(keys: pa.Table) -> pa.Array:
    return latest_indices(keys)


def _distinct_history(keys: pa.Table) -> pa.Array:
    # the history of one version of a trial is written once: a double only comes from a merge killed midway
    return latest_indices(keys, keys=_HISTORY_KEYS, order=())


# ----------------------------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def _merge_lock(root: Path, *, blocking: bool) -> Iterator[bool | None]:
    """Hold the merge lock of ``root``: yields True when held, False when another process holds it (only when not
    ``blocking``), None where the file system has no ``flock`` (merging then runs unguarded)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield None
        return
    folder = root / MERGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            state: bool | None = True
        except BlockingIOError:
            state = False
        except OSError:  # ENOLCK, EOPNOTSUPP: some network file systems
            state = None
        yield state
    finally:
        os.close(fd)  # releases the lock (and the kernel does so when the process dies)


# ----------------------------------------------------------------------------------------------- retiring files
def _retire(file: Path, stat_when_read: os.stat_result | tuple) -> None:
    """Remove ``file`` if it is still the file that was read; keep it if a writer replaced it since."""
    claimed = file.with_name(f".{file.name}.{os.urandom(6).hex()}.claimed")
    try:
        os.rename(file, claimed)  # atomic: a writer's later os.replace makes a new file, never touches this one
    except FileNotFoundError:
        return  # already retired
    _restore_or_remove(claimed, file, stat_when_read)


def _restore_or_remove(claimed: Path, original: Path, stat_when_read: os.stat_result | tuple | None) -> None:
    read = stat_key(stat_when_read) if isinstance(stat_when_read, os.stat_result) else stat_when_read
    if read is not None and stat_key(os.stat(claimed)) == tuple(read):
        claimed.unlink()  # its rows are in the merged file
        return
    with contextlib.suppress(FileExistsError):
        os.link(claimed, original)  # rewritten after the read: put it back unless a newer one already took its place
    claimed.unlink()


def _claimed_original(name: str) -> str | None:
    """``.<original>.<hex>.claimed`` -> ``<original>``."""
    if not (name.startswith(".") and name.endswith(".claimed")):
        return None
    original = name[1:].rsplit(".", 2)[0]
    return original if _is_row_file(original) else None


def _clean_leftovers(directory: Path, older_than: float, *, locked: bool) -> None:
    """Remove temporary files of crashed writers older than ``older_than`` seconds (of crashed merges: any age when
    ``locked``, as no merge can be running), and put back files a crashed merge had claimed."""
    now = time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(directory):
            if not name.startswith(".") or not name.endswith((".tmp", ".claimed")):
                continue
            file = directory / name
            with contextlib.suppress(FileNotFoundError):
                # only merges make these (and claim files): with the lock held, any left is a crashed merge's
                of_merge = name.endswith(".claimed") or file_level(name[1:].split(".parquet.", 1)[0] + ".parquet") > 0
                if not (locked and of_merge) and now - file.stat().st_mtime < older_than:
                    continue
                if name.endswith(".tmp"):
                    file.unlink()
                elif (original := _claimed_original(name)) is not None:
                    _restore_or_remove(file, directory / original, None)


# ------------------------------------------------------------------------------------------------------ journal
def _journal_path(root: Path, journal: str) -> Path:
    return root / MERGE_DIR / journal


def _write_journal(path: Path, record: dict, *, sync: bool) -> None:
    write_json_atomic(path, record, sync=sync)


def _drop_doubles(directory: Path, schema: pa.Schema) -> int:
    """Retire every file whose rows (by experiment, trial, version and epoch) all sit in files of a higher level:
    the inputs of a merge whose output is in place. Returns how many were retired; call with the lock held."""
    keys = [c for c in ("experiment", "trial_id", "written_at", "epoch") if c in schema.names]
    files = row_files(directory)
    parts = read_parts(files, schema, keys)
    sets: dict[int, list[tuple[Path, object, set]]] = {}
    for file, part in zip(files, parts):
        if part.table is not None:
            rows = set(zip(*(part.table.column(k).cast(pa.int64()).to_pylist() if k == "written_at"
                             else part.table.column(k).to_pylist() for k in keys)))
            sets.setdefault(file_level(file.name), []).append((file, part.stat, rows))
    retired = 0
    for level in sorted(sets):
        higher = set().union(*(rows for lv, items in sets.items() if lv > level for _, _, rows in items))
        for file, stat, rows in sets[level]:
            if rows and rows <= higher:
                _retire(file, stat)
                retired += 1
    return retired


def _recover(root: Path, sub: str, journal: str, schema: pa.Schema) -> None:
    """Finish (output in place) or undo (not yet) a merge whose process died; call with the lock held.

    A damaged journal is reported (``MergeWarning`` naming it) and repaired without it: the files a killed merge
    had claimed are put back, and every file whose rows all sit in a merged file of a higher level is retired.
    """
    path = _journal_path(root, journal)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        record = None
    directory = root / sub
    valid = (
        isinstance(record, dict) and isinstance(record.get("target"), str) and file_level(record["target"]) > 0
        and isinstance(record.get("inputs"), list)
        and all(isinstance(i, list) and len(i) == 5 and isinstance(i[0], str) and _is_row_file(i[0])
                and os.path.basename(i[0]) == i[0] and all(isinstance(v, int) for v in i[1:])
                for i in record["inputs"])
    )  # shared storage: act only on plain file names of this directory
    if valid and (directory / record["target"]).exists():
        inputs = {name: tuple(key) for name, *key in record["inputs"]}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                original = _claimed_original(name)
                if original in inputs:
                    _restore_or_remove(directory / name, directory / original, inputs[original])
        for name, key in inputs.items():
            file = directory / name
            with contextlib.suppress(FileNotFoundError):
                if stat_key(os.stat(file)) == key:
                    _retire(file, key)
    elif not valid:
        _clean_leftovers(directory, 0.0, locked=True)  # put back what the killed merge had claimed
        retired = _drop_doubles(directory, schema)
        warnings.warn(f"the merge journal {str(path)!r} was damaged (not a journal nas_flex wrote); repaired without "
                      f"it: {retired} file(s) whose rows were all in a merged file removed, no row lost",
                      MergeWarning, stacklevel=3)
    path.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------------------- merge
def _readable_inputs(directory: Path, schema: pa.Schema, inputs: Sequence[Path]) -> tuple[list, dict[str, str]]:
    """Pass 1: the key columns of each readable input ((file, part) pairs) and the metric directions they record.

    Unreadable inputs are reported (a warning) and left out; inputs recording different directions are an error.
    """
    keys = [c for c in schema.names if c in ("experiment", "trial_id", "finished", "written_at", "epoch")]
    parts = read_parts(inputs, schema, keys)
    report_corrupt(directory, {f: p.error for f, p in zip(inputs, parts) if p.error}, "warn")
    files = [(f, p) for f, p in zip(inputs, parts) if p.table is not None]
    directions: dict[str, str] = {}
    for _, p in files:
        for metric, way in p.directions.items():
            if directions.setdefault(metric, way) != way:
                raise LeaderboardSchemaError(f"files in {directory} record different directions for {metric!r}")
    return files, directions


def _keep_masks(files: list, select: Select) -> list[np.ndarray]:
    """Per input file, which of its rows the merged file keeps (``select`` over all inputs' key columns)."""
    sizes = [p.table.num_rows for _, p in files]
    table = pa.concat_tables([p.table for _, p in files]).append_column(
        "_file", pa.array(np.repeat(np.arange(len(files), dtype=np.int32), sizes)))
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[select(table).to_numpy()] = True
    return np.split(keep, np.cumsum(sizes)[:-1])


def _copy_rows(writer: pq.ParquetWriter, files: list, masks: list[np.ndarray], schema: pa.Schema,
               meta: dict) -> bool:
    """Pass 2: the kept rows, row group by row group, into ``writer``. False (nothing complete written) when an
    input was retired or rewritten since pass 1."""
    buffer: list[pa.Table] = []
    buffered = 0
    for (file, part), mask in zip(files, masks):
        try:
            pf, stat = open_parquet(file)
        except FileNotFoundError:
            return False  # retired by a merge that ran without the lock: try another time
        if stat_key(stat) != stat_key(part.stat):
            return False  # a trial rewrote its row since pass 1: merge another time
        start = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            take = mask[start:start + n]
            start += n
            if not take.any():
                continue
            rows = conform(pf.read_row_group(g, use_threads=False), schema, schema.names, file)
            buffer.append(rows.filter(pa.array(take)).replace_schema_metadata(meta))
            buffered += int(take.sum())
            if buffered >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(buffer), row_group_size=ROW_GROUP_ROWS)
                buffer, buffered = [], 0
    if buffer:
        writer.write_table(pa.concat_tables(buffer), row_group_size=ROW_GROUP_ROWS)
    return True


def merge_files(root: Path, sub: str, schema: pa.Schema, inputs: Sequence[Path], level: int, select: Select, *,
                journal: str, sync: bool = True) -> Path | None:
    """Merge ``inputs`` (files of ``root/sub``) into one file of ``level``; return it (None: nothing merged).

    Unreadable inputs are left in place (with a warning); if an input changes while being merged, nothing is
    merged. Call with the merge lock held.
    """
    directory = root / sub
    files, directions = _readable_inputs(directory, schema, inputs)  # pass 1: the key columns
    if len(files) < 2:
        return None
    masks = _keep_masks(files, select)  # drops superseded versions of a rewritten trial
    meta = dict(schema.metadata or {})
    if directions:
        meta[b"nas_flex.metric_directions"] = json.dumps(directions).encode()
    target = directory / merged_file_name(level)
    journal_file = _journal_path(root, journal)
    # the journal first: a merge killed after the rename is finished by the next one, one killed before is undone
    record = {"target": target.name, "inputs": [[f.name, *stat_key(p.stat)] for f, p in files]}
    _write_journal(journal_file, record, sync=sync)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema.with_metadata(meta), **write_options(schema)) as writer:
            if not _copy_rows(writer, files, masks, schema, meta):  # pass 2: row group by row group
                raise _InputChanged

    try:
        write_atomic(target, write, sync=sync)
    except _InputChanged:
        journal_file.unlink(missing_ok=True)
        return None
    except BaseException:
        if not target.exists():  # nothing to finish: the next merge need not look at the journal
            journal_file.unlink(missing_ok=True)
        raise
    for file, part in files:  # the merged file is in place: readers drop the doubles until these are gone
        _retire(file, part.stat)
    _journal_path(root, journal).unlink(missing_ok=True)
    return target


def _levels(directory: Path) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = {}
    for f in row_files(directory):
        out.setdefault(file_level(f.name), []).append(f)
    return out


def _merge_levels(root: Path, sub: str, schema: pa.Schema, select: Select, journal: str, *, merge_at: int,
                  sync: bool) -> list[Path]:
    made = []
    # row files written while another process merged (or by an older nas_flex) wait as a backlog: merge it all, in
    # batches of at most a top-level file's rows
    while len(small := _levels(root / sub).get(0, [])) >= merge_at:
        batch = small[: merge_at * MERGE_FANOUT ** (MAX_LEVEL - 1)]
        level = 1
        while level < MAX_LEVEL and len(batch) >= merge_at * MERGE_FANOUT**level:
            level += 1
        out = merge_files(root, sub, schema, batch, level, select, journal=journal, sync=sync)
        if out is None:
            break  # a file changed under the merge, or too few were readable: another time
        made.append(out)
    for level in range(1, MAX_LEVEL):
        files = _levels(root / sub).get(level, [])
        while len(files) >= MERGE_FANOUT:
            group, files = files[:MERGE_FANOUT], files[MERGE_FANOUT:]
            if (out := merge_files(root, sub, schema, group, level + 1, select, journal=journal,
                                   sync=sync)) is not None:
                made.append(out)
    return made


def _countrow_files(directory: Path) -> int:
    try:
        return sum(1 for n in os.listdir(directory) if _is_row_file(n) and file_level(n) == 0)
    except (FileNotFoundError, NotADirectoryError):
        return 0


def maybe_merge(path: str | os.PathLike, *, merge_at: int = MERGE_AT, sync: bool = True) -> list[Path]:
    """Merge the leaderboard's row files once there are ``merge_at`` of them, and merged files level by level; finish
    a merge a killed process left. Returns the files made. Cheap when there is nothing to do (a directory
    listing); does nothing when another process is merging (it will see the new files on its next check).
    """
    root = Path(path)
    if merge_at < 2:
        return []
    pending = any(_journal_path(root, j).exists() for _, _, j in _TABLES)
    if not pending and all(_countrow_files(root / sub) < merge_at for sub, _, _ in _TABLES):
        return []
    made: list[Path] = []
    with _merge_lock(root, blocking=False) as held:
        if not held:
            return []  # someone else is merging (or no flock here: merging unguarded could double rows)
        _clean_leftovers(root / MERGE_DIR, 0.0, locked=True)
        for sub, schema, journal in _TABLES:
            _recover(root, sub, journal, schema)
            _clean_leftovers(root / sub, _LEFTOVER_SECONDS, locked=True)
            select = _latest_trials if schema is TRIAL_SCHEMA else _distinct_history
            made += _merge_levels(root, sub, schema, select, journal, merge_at=merge_at, sync=sync)
    return made


def compact(path: str | os.PathLike, *, history: bool = True, leftovers_older_than: float = 3600.0) -> Path | None:
    """Merge every file of the leaderboard (row files and merged files) into one Parquet file; return it (None:
    nothing to merge).

    The merged file is written under a temporary name and renamed into place before the files it merges are removed,
    so every row stays readable throughout (readers drop the doubles in between). Superseded versions of a
    rewritten trial are dropped; a file rewritten by a trial while the compaction runs is kept. Safe to run twice
    and beside running writers (it waits for a merge under way). History files are merged the same way
    (``history=True``), keeping each trial's current history. Temporary files of crashed writers older than
    ``leftovers_older_than`` seconds are removed. Memory stays bounded: rows are copied row group by row group.

    Raises:
        LeaderboardSchemaError: ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise LeaderboardSchemaError(f"no leaderboard at {str(root)!r}: not a directory")
    with _merge_lock(root, blocking=True) as held:
        target = None
        for sub, schema, journal in _TABLES:
            if sub and not history:
                continue
            if held:
                _recover(root, sub, journal, schema)
            _clean_leftovers(root / sub, leftovers_older_than, locked=bool(held))
            if schema is TRIAL_SCHEMA:
                select = _latest_trials
            else:
                current = current_versions(scan(root, columns=["written_at"], on_corrupt="ignore").table)
                select = _history_of(current)
            made = merge_files(root, sub, schema, row_files(root / sub), COMPACTED_LEVEL, select, journal=journal)
            target = made if schema is TRIAL_SCHEMA else target
    return target


def _history_of(current: dict[tuple[str, str], int]) -> Select:
    """Keep each trial's history of its current row version, and newer versions (a row about to be written)."""

    def select(keys: pa.Table) -> pa.Array:
        distinct = _distinct_history(keys)
        cols = [keys.column(c).take(distinct).to_pylist() for c in ("experiment", "trial_id")]
        written = keys.column("written_at").take(distinct).cast(pa.int64()).to_pylist()
        keep = []
        for i, (e, t, w) in enumerate(zip(*cols, written)):
            row = current.get((e, t))
            if row is None or w >= row:
                keep.append(i)
        return distinct.take(pa.array(keep, type=pa.int64()))

    return select

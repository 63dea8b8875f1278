"""The leaderboard directory: its layout, atomic writes, reading it back (only the columns a query needs), checks.

Layout of a leaderboard directory ``PATH``::

    PATH/<experiment>--<trial_id>.parquet          one finished trial's row (TRIAL_SCHEMA), as write_trial wrote it
    PATH/merged-<level>-<uuid>.parquet             many trials' rows, merged from row files (level 1) or from
                                                   merged files of the level below (see nas_flex.leaderboard.merge)
    PATH/compacted-<uuid>.parquet                  every row, made by compact()
    PATH/_history/...                              the same files for the per-epoch rows (HISTORY_SCHEMA)
    PATH/_merge/lock, PATH/_merge/*.json           the merge lock, and the journal of a merge under way
    PATH/.<name>.<pid>.<random>.tmp                a file being written (or left by a crash)

Parquet readers (``pandas.read_parquet(PATH)``, ``pyarrow.dataset``) skip names that start with "_" or ".", so
reading the directory gives exactly the trial rows; DuckDB's ``'PATH/*.parquet'`` glob matches the same files.
A file is written under a hidden temporary name and renamed into place (``os.replace``), so a reader never sees
half a file and a crash leaves at most an invisible ``.tmp`` file. Rewriting a trial replaces its row file; where an
older version of the row already sits in a merged file, readers keep the latest (``finished``, then ``written_at``).

Once ``MERGE_AT`` row files pile up, the writer that notices merges them into one file (``merge.maybe_merge``), so a
leaderboard of 10^5 trials is a hundred or so files and a query reads a few columns of each.

pyarrow, NumPy and the standard library only: a trial process writes without pandas or torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nas_flex.errors import CorruptLeaderboardError, LeaderboardSchemaError
from nas_flex.leaderboard.layout import HISTORY_DIR, MERGE_DIR  # noqa: F401 - re-exported (merge.py)
from nas_flex.leaderboard.schema import (
    ADDED_COLUMNS,
    HISTORY_SCHEMA,
    SCHEMA_VERSION,
    TRIAL_SCHEMA,
    history_table,
    trial_table,
)
from nas_flex.record import TrialRecord

__all__ = [
    "HISTORY_DIR",
    "MERGE_AT",
    "CorruptFileWarning",
    "MergeWarning",
    "write_trial",
    "trial_file_name",
    "read_trials",
    "read_history",
    "check_storage",
    "compact",
]

#: row files that make a writer merge them into one file (0: never merge; see nas_flex.leaderboard.merge)
MERGE_AT = 16
_SUFFIX = ".parquet"
_CLEAN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
# merged files: never a "--" in the name, which every trial's row file has
_MERGED = re.compile(r"(?:merged-(\d{1,2})|compacted)-[0-9a-f]{32}\.parquet")
COMPACTED_LEVEL = 99  # compact()'s output: never merged again automatically
_READ_RETRIES = 20
_KEYS = ("experiment", "trial_id", "finished", "written_at")  # what one-row-per-trial needs
# long free-text columns: min/max statistics of them fill the footer and no query filters on them
_NO_STATISTICS = {"config", "search_params", "error", "learned_sizes", "learned_sizes_json", "initial_sizes",
                  "initial_sizes_json", "size_recipes", "params_conv_hparams", "params_data_options"}
_ON_CORRUPT = ("warn", "raise", "ignore")
_T = TypeVar("_T")


class CorruptFileWarning(UserWarning):
    """A leaderboard file is not readable Parquet; reading left its rows out (``check_storage`` names them)."""


class MergeWarning(UserWarning):
    """Merging row files failed; every row is still in place, reading is slower until a later merge succeeds."""


# ---------------------------------------------------------------------------------------------------- naming
def trial_file_name(experiment: str, trial_id: str) -> str:
    """The file name of a trial's row: ``<experiment>--<trial_id>.parquet``.

    Names with characters outside ``[A-Za-z0-9_.+-]``, a ``--``, a trailing ``-`` or over 100 characters are
    sanitised and get a ``~<hash>`` suffix of the exact pair, so distinct pairs never share a file.
    """
    if all(_CLEAN.fullmatch(s) and "--" not in s and not s.endswith("-") for s in (experiment, trial_id)):
        return f"{experiment}--{trial_id}{_SUFFIX}"
    digest = hashlib.sha256(json.dumps([experiment, trial_id]).encode()).hexdigest()[:12]

    def safe(s: str) -> str:
        s = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.+-]", "_", s))[:80].strip("-")
        return s if s[:1].isalnum() else "x" + s

    return f"{safe(experiment)}--{safe(trial_id)}~{digest}{_SUFFIX}"


def merged_file_name(level: int) -> str:
    """A fresh name for a merged file of ``level`` (``COMPACTED_LEVEL``: compact()'s output)."""
    prefix = "compacted" if level == COMPACTED_LEVEL else f"merged-{level}"
    return f"{prefix}-{uuid.uuid4().hex}{_SUFFIX}"


def file_level(name: str) -> int:
    """0 for a trial's row file, the level of a merged file, ``COMPACTED_LEVEL`` for compact()'s output."""
    m = _MERGED.fullmatch(name)
    if m is None:
        return 0
    return COMPACTED_LEVEL if m.group(1) is None else int(m.group(1))


def _is_row_file(name: str) -> bool:
    return name.endswith(_SUFFIX) and not name.startswith((".", "_"))


def _row_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(directory / n for n in names if _is_row_file(n))


def stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: a rewrite (a new file renamed over it) changes the inode."""
    return (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------------------------------- write
def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)  # the data is on disk before the name points at it (no empty file after power loss)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4)
def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name not in _NO_STATISTICS]


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments of ``pq.write_table`` / ``pq.ParquetWriter`` for leaderboard files (small footers)."""
    return {"write_statistics": _statistics_columns(schema), "compression": "snappy"}


def temporary_name(final: Path) -> Path:
    """The hidden name ``final`` is written under before its rename (``.<name>.<pid>.<random>.tmp``)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _write_atomic(table: pa.Table, final: Path, *, sync: bool = True) -> Path:
    """Write ``table`` to a hidden temporary file beside ``final``, sync it, and rename it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        pq.write_table(table, tmp, **write_options(table.schema))
        if sync:
            _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync:
        _fsync_dir(final.parent)
    return final


def write_trial(path: str | os.PathLike, result: TrialRecord | Mapping[str, Any], *, experiment: str, trial_id: str,
                config_key: str | None = None, history: bool = True, sync: bool = True,
                merge_at: int = MERGE_AT) -> Path:
    """Write one finished trial to the leaderboard at ``path``, atomically; return the row's file.

    The per-epoch history (``result['history']``) goes to ``path/_history/`` first, then the row, so a visible row
    always has its history. Writing the same ``(experiment, trial_id)`` again replaces both: the leaderboard keeps
    one row per trial. Many processes may write at once.

    Once ``merge_at`` row files are in the directory, the writer merges them into one Parquet file (and merged
    files into larger ones, see ``nas_flex.leaderboard.merge``), unless another writer is merging already: a large
    leaderboard stays a few hundred files. A failed merge only warns (``MergeWarning``): the row is written.

    Args:
        path: the leaderboard directory (created if missing).
        result: what ``nas_flex.train.run_trial`` returns (a ``nas_flex.record.TrialRecord``), or its ``to_dict()``.
        experiment: the experiment name.
        trial_id: the trial id within the experiment.
        config_key: a key of the config (e.g. ``nas_flex.train.canonical_key`` or a hash of it); default: the first
            16 hex digits of the sha256 of the config's canonical JSON.
        history: also write the per-epoch history.
        sync: fsync each file before its rename and the directory after it, so a power loss leaves the old row or
            the new one, never an empty file. Costs a few ms per write; False for scratch boards and tests.
        merge_at: row files that trigger a merge (``MERGE_AT``); 0 never merges.

    Raises:
        LeaderboardSchemaError: the result does not fit the schema (an unknown key, a wrong type, ...), or
            ``merge_at`` is not 0 or >= 2.

    Example:
        >>> write_trial("runs/digits", result, experiment="digits", trial_id="t0001")  # doctest: +SKIP
        PosixPath('runs/digits/digits--t0001.parquet')
    """
    if isinstance(merge_at, bool) or not isinstance(merge_at, int) or merge_at < 0 or merge_at == 1:
        raise LeaderboardSchemaError(f"`merge_at` must be 0 (never merge) or an integer >= 2, but got {merge_at!r}")
    root = Path(path)
    written_at = datetime.now(timezone.utc)
    row = trial_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at,
                      config_key=config_key)  # validate everything before touching the disk
    name = trial_file_name(experiment, trial_id)
    if history:
        epochs = history_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at)
        _write_atomic(epochs, root / HISTORY_DIR / name, sync=sync)
    file = _write_atomic(row, root / name, sync=sync)
    if merge_at:
        from nas_flex.leaderboard.merge import maybe_merge

        try:
            maybe_merge(root, merge_at=merge_at, sync=sync)
        except Exception as err:  # noqa: BLE001 - the row is in place; a merge that fails leaves more files, no fewer rows
            warnings.warn(f"could not merge the row files of the leaderboard {str(root)!r} "
                          f"({type(err).__name__}: {err}); every row is kept, reading is slower until a merge "
                          "succeeds", MergeWarning, stacklevel=2)
    return file


# ------------------------------------------------------------------------------------------------------ read
class _Vanished(Exception):
    """A file read a moment ago is gone or was replaced (a merge or a rewrite): read the directory again."""


class _Unreadable(Exception):
    """A file turned out unreadable while fetching rows from it."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def open_parquet(file: Path) -> tuple[pq.ParquetFile, os.stat_result]:
    """``file`` opened as Parquet, with the stat of the very file opened.

    Raises:
        FileNotFoundError: it is gone (a merge retired it).
        pyarrow.ArrowException, OSError: it is not readable Parquet.
    """
    if file_level(file.name) == 0:  # a row file (~25 KB): one read, parsed from memory; it may be replaced any time
        with open(file, "rb") as fh:
            stat = os.fstat(fh.fileno())
            data = fh.read()
        return pq.ParquetFile(pa.BufferReader(data)), stat
    stat = os.stat(file)  # a merged file is never rewritten under its name, only removed
    return pq.ParquetFile(pa.memory_map(str(file))), stat


def _missing_columns(have: pa.Schema, schema: pa.Schema) -> str | None:
    """What is wrong when a file lacks columns of ``schema`` (None: it has them all)."""
    missing = [f.name for f in schema if f.name not in have.names and f.name not in ADDED_COLUMNS]
    if not missing:
        return None
    meta = have.metadata or {}
    version = meta.get(b"nas_flex.schema_version", b"?").decode()
    return (f"lacks column(s) {', '.join(missing)} of the {meta.get(b'nas_flex.table', b'?').decode()} schema (the "
            f"file has schema_version {version}; this nas_flex reads version {SCHEMA_VERSION})")


def _check_columns(file: Path, have: pa.Schema, schema: pa.Schema) -> None:
    reason = _missing_columns(have, schema)
    if reason:
        raise LeaderboardSchemaError(f"{file} {reason}: rewrite the trial or move the file out of the leaderboard")


def present(pf: pq.ParquetFile, columns: Sequence[str]) -> list[str]:
    """The ``columns`` that ``pf`` holds (an older file may lack the ``ADDED_COLUMNS``; ``conform`` fills them)."""
    names = set(pf.schema_arrow.names)
    return [c for c in columns if c in names or c not in ADDED_COLUMNS]


def conform(table: pa.Table, schema: pa.Schema, columns: Sequence[str], file: Path) -> pa.Table:
    """``table``'s ``columns`` with the types, field metadata and order of ``schema`` (cast where they differ)."""
    arrays, fields = [], []
    for name in columns:
        fld = schema.field(name)
        if name in ADDED_COLUMNS and name not in table.column_names:  # a file written before the column existed
            col = pa.chunked_array([pa.nulls(table.num_rows, fld.type)])
        else:
            col = table.column(name)
        if col.type != fld.type:
            try:
                col = col.cast(fld.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise LeaderboardSchemaError(
                    f"{file}: column {name!r} has type {col.type}, but the schema (version {SCHEMA_VERSION}) "
                    f"has {fld.type}"
                ) from None
        arrays.append(col)
        fields.append(fld)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


@functools.lru_cache(maxsize=16)
def _directions(text: bytes) -> dict[str, str]:
    try:
        recorded = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


def file_directions(pf: pq.ParquetFile) -> dict[str, str]:
    """The metric directions a file records in its schema metadata."""
    return _directions((pf.schema_arrow.metadata or {}).get(b"nas_flex.metric_directions", b"{}"))


@dataclass
class _Part:
    table: pa.Table | None = None
    stat: os.stat_result | None = None
    directions: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # not readable Parquet
    gone: bool = False


def _read_part(file: Path, schema: pa.Schema, columns: Sequence[str]) -> _Part:
    try:
        pf, stat = open_parquet(file)
        _check_columns(file, pf.schema_arrow, schema)
        # many files in parallel: threads per file cost
        table = pf.read(columns=present(pf, columns), use_threads=False)
        return _Part(conform(table, schema, columns, file), stat, file_directions(pf))
    except FileNotFoundError:
        return _Part(gone=True)
    except (pa.ArrowException, OSError) as err:
        return _Part(error=_reason(err))


def read_parts(files: Sequence[Path], schema: pa.Schema, columns: Sequence[str]) -> list[_Part]:
    """``columns`` of every file (threads when many): a table each, or why it is unreadable, or that it is gone."""
    if len(files) > 8:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda f: _read_part(f, schema, columns), files))
    return [_read_part(f, schema, columns) for f in files]


def corrupt_message(directory: Path, bad: Mapping[Path, str]) -> str:
    """One line naming every unreadable file, with what is wrong with it."""
    listed = "; ".join(f"{f.name} ({why})" for f, why in sorted(bad.items()))
    return f"{len(bad)} unreadable Parquet file(s) in the leaderboard {str(directory)!r}: {listed}"


def report_corrupt(directory: Path, bad: Mapping[Path, str], on_corrupt: str) -> None:
    """Raise (``on_corrupt="raise"``) or warn once, naming every file of ``bad``; nothing when it is empty."""
    if not bad or on_corrupt == "ignore":
        return
    message = corrupt_message(directory, bad)
    if on_corrupt == "raise":
        raise CorruptLeaderboardError(
            f"{message}. Move them out of the folder (or delete them), or read with on_corrupt='warn' to skip them"
        )
    warnings.warn(f"skipped {message}; their rows are left out. Move them out of the folder to silence this",
                  CorruptFileWarning, stacklevel=3)


def latest_indices(table: pa.Table, keys: Sequence[str] = ("experiment", "trial_id"),
                   order: Sequence[str] = ("finished", "written_at")) -> pa.Array:
    """Indices of one row per ``keys``: the last by ``order`` (nulls first), ties to the later row; key-sorted."""
    n = table.num_rows
    if n == 0:
        return pa.array([], type=pa.int64())
    # a missing time sorts first (without null_placement, whose spelling changed across pyarrow versions)
    ranked = table.select(list(keys))
    for k in order:
        ranked = ranked.append_column(k, pc.fill_null(table.column(k).cast(pa.int64()), -(2**63)))
    idx = pc.sort_indices(ranked, sort_keys=[(k, "ascending") for k in (*keys, *order)])  # stable
    last = np.ones(n, dtype=bool)  # a row is kept when the next one (in sorted order) has other keys
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for k in keys:
            col = table.column(k).take(idx)
            same &= pc.fill_null(pc.equal(col.slice(0, n - 1), col.slice(1)), False).to_numpy(zero_copy_only=False)
        last[:-1] = ~same
    return idx.filter(pa.array(last))


@dataclass
class Snapshot:
    """What one read of a leaderboard directory saw: the asked-for columns of every row (one per trial for the
    trial table), where each row lives (``_file``, ``_row``), and the metric directions the files record.
    ``rows`` fetches any columns of chosen rows from the same files."""

    directory: Path
    schema: pa.Schema
    table: pa.Table
    files: list[Path]
    stats: list[os.stat_result]
    directions: dict[str, str]
    bad: dict[Path, str]

    def rows(self, positions: Sequence[int] | pa.Array, columns: Sequence[str] | None = None) -> pa.Table:
        """All (or ``columns``) columns of the rows at ``positions`` of ``table``, in that order; reads only the row
        groups that hold them.

        Raises:
            _Vanished: a file was merged away or rewritten since the snapshot (read again).
            _Unreadable: a file's data turned out unreadable.
        """
        cols = list(self.schema.names if columns is None else columns)
        where = self.table.select(["_file", "_row"]).take(pa.array(positions, type=pa.int64()))
        file_of, row_of = where.column("_file").to_numpy(), where.column("_row").to_numpy()
        pieces, order = [], []
        for fi in np.unique(file_of):
            out_pos = np.flatnonzero(file_of == fi)
            file = self.files[fi]
            try:
                pf, stat = open_parquet(file)
            except FileNotFoundError:
                raise _Vanished(file) from None
            except (pa.ArrowException, OSError) as err:
                raise _Unreadable(file, _reason(err)) from None
            if stat_key(stat) != stat_key(self.stats[fi]):
                raise _Vanished(file)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            local = row_of[out_pos]
            group = np.searchsorted(starts, local, side="right") - 1
            for g in np.unique(group):
                sel = group == g
                try:
                    part = pf.read_row_group(int(g), columns=present(pf, cols), use_threads=False)
                except (pa.ArrowException, OSError) as err:
                    raise _Unreadable(file, _reason(err)) from None
                part = conform(part, self.schema, cols, file)
                pieces.append(part.take(pa.array(local[sel] - starts[g], type=pa.int64())))
                order.append(out_pos[sel])
        if not pieces:
            return conform(self.schema.empty_table(), self.schema, cols, self.directory)
        table = pa.concat_tables(pieces)
        back = np.empty(table.num_rows, dtype=np.int64)
        back[np.concatenate(order)] = np.arange(table.num_rows)
        return table.take(pa.array(back))


def _columns(schema: pa.Schema, columns: Iterable[str] | None, latest: bool) -> list[str]:
    if columns is None:
        return list(schema.names)
    wanted = set(columns) | (set(_KEYS) if latest else set())
    unknown = sorted(wanted - set(schema.names))
    if unknown:
        raise LeaderboardSchemaError(f"unknown column(s) {unknown}; valid: {', '.join(schema.names)}")
    return [n for n in schema.names if n in wanted]


def scan(directory: str | os.PathLike, *, schema: pa.Schema = TRIAL_SCHEMA, columns: Iterable[str] | None = None,
         latest: bool = True, on_corrupt: str = "warn", skip: Mapping[Path, str] | None = None) -> Snapshot:
    """Read ``columns`` (default: all) of every row file of ``directory``, in parallel, only those columns.

    Args:
        directory: a leaderboard directory (or its ``_history``).
        schema: the table's schema.
        columns: the columns to read (``latest`` adds experiment, trial_id, finished, written_at).
        latest: keep one row per trial (the latest ``finished``, then ``written_at``), sorted by (experiment,
            trial_id); False keeps every row, in file order.
        on_corrupt: what an unreadable file does: "warn" (one warning naming every such file; their rows are left
            out), "raise" (``CorruptLeaderboardError``) or "ignore".
        skip: files already known to be unreadable (file -> why), left out and reported with the others.

    Raises:
        CorruptLeaderboardError: ``on_corrupt="raise"`` and a file is not readable Parquet.
        LeaderboardSchemaError: a file lacks columns of the schema, files record different metric directions, or
            files kept vanishing (merged away) faster than the directory could be read.
    """
    if on_corrupt not in _ON_CORRUPT:
        raise LeaderboardSchemaError(f"`on_corrupt` must be one of {_ON_CORRUPT}, but got {on_corrupt!r}")
    directory = Path(directory)
    cols = _columns(schema, columns, latest)
    for _ in range(_READ_RETRIES):
        files = [f for f in _row_files(directory) if not skip or f not in skip]
        parts = read_parts(files, schema, cols)
        if any(p.gone for p in parts):
            continue  # a merge replaced some files between the listing and the read: list again
        bad = {**(skip or {}), **{f: p.error for f, p in zip(files, parts) if p.error is not None}}
        report_corrupt(directory, bad, on_corrupt)
        good = [(f, p) for f, p in zip(files, parts) if p.error is None]
        directions: dict[str, str] = {}
        for _, p in good:
            for metric, way in p.directions.items():
                if directions.setdefault(metric, way) != way:
                    raise LeaderboardSchemaError(
                        f"files in {directory} record different directions for {metric!r}: "
                        f"{directions[metric]!r} and {way!r}"
                    )
        tables = []
        for i, (_, p) in enumerate(good):
            n = p.table.num_rows
            tables.append(p.table.append_column("_file", pa.array(np.full(n, i, dtype=np.int32)))
                          .append_column("_row", pa.array(np.arange(n, dtype=np.int64))))
        if tables:
            table = pa.concat_tables(tables)
        else:
            empty = conform(schema.empty_table(), schema, cols, directory)
            table = empty.append_column("_file", pa.array([], pa.int32())).append_column("_row",
                                                                                         pa.array([], pa.int64()))
        if latest:
            table = table.take(latest_indices(table))
        return Snapshot(directory, schema, table, [f for f, _ in good], [p.stat for _, p in good], directions, bad)
    raise LeaderboardSchemaError(f"files in {directory} kept vanishing while being read; try again")


def retry_reads(read: Callable[[dict[Path, str]], _T], *, on_corrupt: str = "warn") -> _T:
    """``read(skip)`` again while files vanish under it (merged away), and without files found unreadable late."""
    skip: dict[Path, str] = {}
    for _ in range(_READ_RETRIES):
        try:
            return read(skip)
        except _Vanished:
            continue
        except _Unreadable as err:
            if on_corrupt == "raise":
                report_corrupt(err.file.parent, {err.file: err.reason}, "raise")
            skip[err.file] = err.reason
    raise LeaderboardSchemaError("leaderboard files kept vanishing while being read; try again")


def without_location(table: pa.Table) -> pa.Table:
    """A snapshot's table without its ``_file`` / ``_row`` columns."""
    return table.drop_columns([c for c in ("_file", "_row") if c in table.column_names])


def read_trials(path: str | os.PathLike, *, on_corrupt: str = "warn") -> tuple[pa.Table, dict[str, str]]:
    """The trial rows of the leaderboard at ``path``, one per trial, and the recorded metric directions."""
    snap = scan(path, on_corrupt=on_corrupt)
    return without_location(snap.table), snap.directions


def select_history(history: pa.Table, current: Mapping[tuple[str, str], int], *, keep_newer: bool) -> pa.Table:
    """History rows of the trial rows' versions (``current``: (experiment, trial_id) -> written_at in µs), sorted;
    ``keep_newer`` also keeps versions newer than the row, and trials without a row (for compaction)."""
    keep = []
    for i, (e, t, w) in enumerate(zip(history.column("experiment").to_pylist(), history.column("trial_id").to_pylist(),
                                      history.column("written_at").cast(pa.int64()).to_pylist())):
        row_version = current.get((e, t))
        if w == row_version or (keep_newer and (row_version is None or w > row_version)):
            keep.append(i)
    out = history.take(pa.array(keep, type=pa.int64()))
    keys = list(zip(*(out.column(c).to_pylist() for c in ("experiment", "trial_id", "epoch"))))
    return out.take(pa.array(sorted(range(len(keys)), key=keys.__getitem__), type=pa.int64()))


def current_versions(trials: pa.Table) -> dict[tuple[str, str], int]:
    """(experiment, trial_id) -> written_at (µs) of each trial row."""
    return dict(zip(zip(trials.column("experiment").to_pylist(), trials.column("trial_id").to_pylist()),
                    trials.column("written_at").cast(pa.int64()).to_pylist()))


def read_history(path: str | os.PathLike, *, on_corrupt: str = "warn") -> pa.Table:
    """The per-epoch rows of the trials ``read_trials`` returns (the history of each row's own version)."""
    trials = scan(path, columns=["written_at"], on_corrupt=on_corrupt).table
    history = scan(Path(path) / HISTORY_DIR, schema=HISTORY_SCHEMA, latest=False, on_corrupt=on_corrupt).table
    return select_history(without_location(history), current_versions(trials), keep_newer=False)


# ------------------------------------------------------------------------------------------------------ check
def check_storage(path: str | os.PathLike, *, deep: bool = False) -> int:
    """Check every Parquet file of the leaderboard at ``path`` (rows and history) before work is put into it.

    A search calls this before it starts, so a storage that reading would only partly show (a truncated file,
    a file of another schema) is named up front, not after every trial has trained. A missing directory is an empty
    leaderboard (nothing to check).

    Args:
        path: the leaderboard directory.
        deep: also read every column of every file (catches damage inside a file, not only a bad footer: the
            common damage, a truncated or empty file, has a bad footer).

    Returns:
        The number of Parquet files checked.

    Raises:
        LeaderboardSchemaError: ``path`` is a file, not a directory.
        CorruptLeaderboardError: one or more files are not readable Parquet or lack columns of the schema; the
            message names every one of them, with what is wrong.
    """
    root = Path(path)
    if not root.exists():
        return 0
    if not root.is_dir():
        raise LeaderboardSchemaError(
            f"the leaderboard storage {str(root)!r} is a file; it must be a directory (or not exist yet)"
        )
    bad: dict[Path, str] = {}
    checked = 0
    for directory, schema in ((root, TRIAL_SCHEMA), (root / HISTORY_DIR, HISTORY_SCHEMA)):
        for file in _row_files(directory):
            try:
                pf, _ = open_parquet(file)
                reason = _missing_columns(pf.schema_arrow, schema)
                if reason is None and deep:
                    conform(pf.read(columns=present(pf, schema.names), use_threads=False), schema, schema.names, file)
            except FileNotFoundError:
                continue  # merged away since the listing: its rows are in a file checked or listed later
            except (pa.ArrowException, OSError) as err:
                reason = _reason(err)
            except LeaderboardSchemaError as err:  # a column of a type that does not cast
                reason = str(err).removeprefix(f"{file}: ")
            if reason is not None:
                bad[file] = reason
            checked += 1
    if bad:
        listed = "; ".join(f"{f.relative_to(root)} ({why})" for f, why in sorted(bad.items()))
        raise CorruptLeaderboardError(
            f"{len(bad)} bad file(s) in the leaderboard storage {str(root)!r}: {listed}. Move them out of the folder "
            "(or delete them) before writing to it"
        )
    return checked


def compact(path: str | os.PathLike, *, history: bool = True, leftovers_older_than: float = 3600.0) -> Path | None:
    """Merge every file of the leaderboard into one; see ``nas_flex.leaderboard.merge.compact``."""
    from nas_flex.leaderboard.merge import compact as _compact

    return _compact(path, history=history, leftovers_older_than=leftovers_older_than)

"""Reading a leaderboard directory back (only the columns a query needs), and checking it; the Parquet write
options every leaderboard file shares.

The directory's files and their names are those of ``nas_flex.storage.layout``: one row file per trial
(``<experiment>--<trial_id>.parquet``), merged files (``nas_flex.leaderboard.merge``), ``_history/`` with the
per-epoch rows, and hidden temporary files of writers (``nas_flex.storage.atomic``). Parquet readers
(``pandas.read_parquet(PATH)``, ``pyarrow.dataset``) skip names that start with "_" or ".", so reading the directory
gives exactly the trial rows; DuckDB's ``'PATH/*.parquet'`` glob matches the same files. Rewriting a trial replaces
its row file; where an older version of the row already sits in a merged file, readers keep the latest
(``finished``, then ``written_at``), and a file that a merge removes between the listing and the read is read again.

Every file is written with page checksums and read with their verification: damage inside a data page is an
unreadable file (named, its rows left out, or an error), never a silently changed value.

pyarrow, NumPy and the standard library only: a trial process writes without pandas or torch.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nas_flex.errors import CorruptLeaderboardError, LeaderboardSchemaError
from nas_flex.leaderboard.schema import ADDED_COLUMNS, HISTORY_SCHEMA, SCHEMA_VERSION, TRIAL_SCHEMA
from nas_flex.storage.atomic import write_atomic
from nas_flex.storage.layout import (  # noqa: F401 - trial_file_name: re-exported (a public name of this module)
    HISTORY_DIR,
    file_level,
    is_row_file,
    trial_file_name,
)

__all__ = [
    "HISTORY_DIR",
    "MERGE_AT",
    "CorruptFileWarning",
    "MergeWarning",
    "trial_file_name",
    "row_files",
    "write_options",
    "write_table_atomic",
    "read_trials",
    "read_history",
    "check_storage",
]

#: row files that make a writer merge them into one file (0: never merge; see nas_flex.leaderboard.merge)
MERGE_AT = 16
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
def row_files(directory: Path) -> list[Path]:
    """The visible Parquet files of a leaderboard directory (row files and merged files), sorted; [] if none."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(directory / n for n in names if is_row_file(n))


def stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: a rewrite (a new file renamed over it) changes the inode."""
    return (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------------------------------- write
@functools.lru_cache(maxsize=4)
def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name not in _NO_STATISTICS]


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments of ``pq.write_table`` / ``pq.ParquetWriter`` for leaderboard files: small footers, and a
    CRC checksum on every page (readers verify them: a flipped byte is an error, never a changed value)."""
    return {"write_statistics": _statistics_columns(schema), "compression": "snappy", "write_page_checksum": True}


def write_table_atomic(table: pa.Table, final: Path, *, sync: bool = True) -> Path:
    """Write ``table`` as a leaderboard Parquet file at ``final``, atomically (``nas_flex.storage.write_atomic``)."""
    return write_atomic(final, lambda tmp: pq.write_table(table, tmp, **write_options(table.schema)), sync=sync)


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
        return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True), stat
    stat = os.stat(file)  # a merged file is never rewritten under its name, only removed
    return pq.ParquetFile(pa.memory_map(str(file)), page_checksum_verification=True), stat


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
        files = [f for f in row_files(directory) if not skip or f not in skip]
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
        deep: also read every page of every file, verifying its checksum (catches damage inside a file, e.g. a
            flipped byte in a data page, not only a bad footer: the common damage, a truncated or empty file, has a
            bad footer).

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
        for file in row_files(directory):
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


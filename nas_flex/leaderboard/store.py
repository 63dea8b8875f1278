"""The leaderboard directory: atomic per-trial Parquet files, reading them back, and compaction.

Layout of a leaderboard directory ``PATH``::

    PATH/<experiment>--<trial_id>.parquet          one row per finished trial (TRIAL_SCHEMA)
    PATH/compacted-<uuid>.parquet                  many rows, made by compact()
    PATH/_history/<experiment>--<trial_id>.parquet the trial's per-epoch rows (HISTORY_SCHEMA)
    PATH/_history/compacted-<uuid>.parquet
    PATH/.<name>.<pid>.<random>.tmp                a file being written (or left by a crash)

Parquet readers (``pandas.read_parquet(PATH)``, ``pyarrow.dataset``) skip names that start with "_" or ".", so
reading the directory gives exactly the trial rows; DuckDB's ``'PATH/*.parquet'`` glob matches the same files.
A file is written under a hidden temporary name and renamed into place (``os.replace``), so a reader never sees
half a file and a crash leaves at most an invisible ``.tmp`` file. Rewriting a trial replaces its file.

pyarrow and the standard library only: a trial process writes without pandas or torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.schema import HISTORY_SCHEMA, SCHEMA_VERSION, TRIAL_SCHEMA, history_table, trial_table

__all__ = ["HISTORY_DIR", "write_trial", "trial_file_name", "read_trials", "read_history", "compact"]

HISTORY_DIR = "_history"
_SUFFIX = ".parquet"
_COMPACTED = "compacted-"
_CLEAN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_READ_RETRIES = 20


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


def _is_row_file(name: str) -> bool:
    return name.endswith(_SUFFIX) and not name.startswith((".", "_"))


def _row_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if _is_row_file(n))


# ----------------------------------------------------------------------------------------------------- write
def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(table: pa.Table, final: Path, *, sync: bool = True) -> Path:
    """Write ``table`` to a hidden temporary file beside ``final``, sync it, and rename it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        pq.write_table(table, tmp)
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before the name points at it (no empty file after power loss)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync:
        _fsync_dir(final.parent)
    return final


def write_trial(path: str | os.PathLike, result: Mapping[str, Any], *, experiment: str, trial_id: str,
                config_key: str | None = None, history: bool = True, sync: bool = True) -> Path:
    """Write one finished trial to the leaderboard at ``path``, atomically; return the row's file.

    The per-epoch history (``result['history']``) goes to ``path/_history/`` first, then the row, so a visible row
    always has its history. Writing the same ``(experiment, trial_id)`` again replaces both: the leaderboard keeps
    one row per trial. Many processes may write at once.

    Args:
        path: the leaderboard directory (created if missing).
        result: what ``nas_flex.train.run_trial`` returns (``schema.RESULT_FIELDS``).
        experiment: the experiment name.
        trial_id: the trial id within the experiment.
        config_key: a key of the config (e.g. ``nas_flex.train.canonical_key`` or a hash of it); default: the first
            16 hex digits of the sha256 of the config's canonical JSON.
        history: also write the per-epoch history.
        sync: fsync each file before its rename and the directory after it, so a power loss leaves the old row or
            the new one, never an empty file. Costs a few ms per write; False for scratch boards and tests.

    Raises:
        LeaderboardSchemaError: the result does not fit the schema (an unknown key, a wrong type, ...).

    Example:
        >>> write_trial("runs/digits", result, experiment="digits", trial_id="t0001")  # doctest: +SKIP
        PosixPath('runs/digits/digits--t0001.parquet')
    """
    root = Path(path)
    written_at = datetime.now(timezone.utc)
    row = trial_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at,
                      config_key=config_key)  # validate everything before touching the disk
    name = trial_file_name(experiment, trial_id)
    if history:
        epochs = history_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at)
        _write_atomic(epochs, root / HISTORY_DIR / name, sync=sync)
    return _write_atomic(row, root / name, sync=sync)


# ------------------------------------------------------------------------------------------------------ read
def _read_one(file: Path, schema: pa.Schema) -> tuple[pa.Table, os.stat_result, dict[str, str]]:
    """One file as a table of ``schema`` (extra columns dropped), its stat, and its recorded metric directions."""
    with open(file, "rb") as fh:  # FileNotFoundError when a compaction moved it: the caller lists again
        stat = os.fstat(fh.fileno())  # of the very file read: compact() removes a file only if it is unchanged
        data = fh.read()
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)  # small files: threads cost more
    except (pa.ArrowException, OSError) as err:
        raise LeaderboardSchemaError(f"{file} is not a readable Parquet file: {err}") from None
    meta = table.schema.metadata or {}
    directions = _directions(meta.get(b"nas_flex.metric_directions", b"{}"))
    if table.schema.equals(schema):  # the common case: this version's schema, in order
        return table.replace_schema_metadata(schema.metadata), stat, directions
    version = meta.get(b"nas_flex.schema_version", b"?").decode()
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise LeaderboardSchemaError(
            f"{file} lacks column(s) {', '.join(missing)} of the {meta.get(b'nas_flex.table', b'?').decode()} "
            f"schema (the file has schema_version {version}; this nas_flex reads version {SCHEMA_VERSION}): "
            "rewrite the trial or move the file out of the leaderboard"
        )
    columns = []
    for field in schema:
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise LeaderboardSchemaError(
                    f"{file}: column {field.name!r} has type {col.type}, but the schema (version {SCHEMA_VERSION}) "
                    f"has {field.type}"
                ) from None
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema), stat, directions


@functools.lru_cache(maxsize=16)
def _directions(text: bytes) -> dict[str, str]:
    try:
        recorded = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


def _read_dir(directory: Path, schema: pa.Schema) -> tuple[pa.Table, dict[str, str], list[tuple[Path, Any]]]:
    """All row files of ``directory``: the concatenated table, the metric directions, and (file, stat) pairs."""
    for _ in range(_READ_RETRIES):
        files = _row_files(directory)
        try:
            if len(files) > 16:
                with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                    parts = list(pool.map(lambda f: _read_one(f, schema), files))
            else:
                parts = [_read_one(f, schema) for f in files]
        except FileNotFoundError:
            continue  # a compaction replaced some files between the listing and the read: list again
        directions: dict[str, str] = {}
        for _, _, d in parts:
            for metric, way in d.items():
                if directions.setdefault(metric, way) != way:
                    raise LeaderboardSchemaError(
                        f"files in {directory} record different directions for {metric!r}: "
                        f"{directions[metric]!r} and {way!r}"
                    )
        table = pa.concat_tables([p[0] for p in parts]) if parts else schema.empty_table()
        return table, directions, [(f, p[1]) for f, p in zip(files, parts)]
    raise LeaderboardSchemaError(f"files in {directory} kept vanishing while being read; try again")


def _version_key(finished: Any, written: Any) -> tuple[int, int]:
    return (finished if finished is not None else -(2**63), written if written is not None else -(2**63))


def _latest(table: pa.Table) -> pa.Table:
    """One row per (experiment, trial_id): the latest ``finished``, then the latest ``written_at``; sorted."""
    if table.num_rows == 0:
        return table
    exp = table.column("experiment").to_pylist()
    tid = table.column("trial_id").to_pylist()
    fin = table.column("finished").cast(pa.int64()).to_pylist()
    wrt = table.column("written_at").cast(pa.int64()).to_pylist()
    best: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(exp, tid)):
        j = best.get(key)
        if j is None or _version_key(fin[i], wrt[i]) >= _version_key(fin[j], wrt[j]):
            best[key] = i
    return table.take(pa.array([best[k] for k in sorted(best)], type=pa.int64()))


def read_trials(path: str | os.PathLike) -> tuple[pa.Table, dict[str, str]]:
    """The trial rows of the leaderboard at ``path``, one per trial, and the recorded metric directions."""
    table, directions, _ = _read_dir(Path(path), TRIAL_SCHEMA)
    return _latest(table), directions


def _select_history(history: pa.Table, trials: pa.Table, *, keep_newer: bool) -> pa.Table:
    """History rows of the trial rows' versions (``keep_newer``: also versions newer than the row, for compaction)."""
    current = {
        (e, t): w for e, t, w in zip(trials.column("experiment").to_pylist(), trials.column("trial_id").to_pylist(),
                                     trials.column("written_at").cast(pa.int64()).to_pylist())
    }
    keep = []
    for i, (e, t, w) in enumerate(zip(history.column("experiment").to_pylist(), history.column("trial_id").to_pylist(),
                                      history.column("written_at").cast(pa.int64()).to_pylist())):
        row_version = current.get((e, t))
        if w == row_version or (keep_newer and (row_version is None or w > row_version)):
            keep.append(i)
    out = history.take(pa.array(keep, type=pa.int64()))
    keys = list(zip(*(out.column(c).to_pylist() for c in ("experiment", "trial_id", "epoch"))))
    return out.take(pa.array(sorted(range(len(keys)), key=keys.__getitem__), type=pa.int64()))


def read_history(path: str | os.PathLike) -> pa.Table:
    """The per-epoch rows of the trials ``read_trials`` returns (the history of each row's own version)."""
    trials, _ = read_trials(path)
    history, _, _ = _read_dir(Path(path) / HISTORY_DIR, HISTORY_SCHEMA)
    return _select_history(history, trials, keep_newer=False)


# --------------------------------------------------------------------------------------------------- compact
def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns)


def _retire(file: Path, stat_when_read: os.stat_result) -> None:
    """Remove ``file`` if it is still the file that was read; keep it if a writer replaced it since."""
    claimed = file.with_name(f".{file.name}.{uuid.uuid4().hex[:12]}.claimed")
    try:
        os.rename(file, claimed)  # atomic: a writer's later os.replace makes a new file, never touches this one
    except FileNotFoundError:
        return  # another compaction retired it
    _restore_or_remove(claimed, file, stat_when_read)


def _restore_or_remove(claimed: Path, original: Path, stat_when_read: os.stat_result | None) -> None:
    if stat_when_read is not None and _same_file(os.stat(claimed), stat_when_read):
        claimed.unlink()  # its rows are in the compacted file
        return
    with contextlib.suppress(FileExistsError):
        os.link(claimed, original)  # rewritten after the read: put it back unless a newer one already took its place
    claimed.unlink()


def _clean_leftovers(directory: Path, older_than: float) -> None:
    """Remove temporary files of crashed writers; put back files a crashed compaction had claimed."""
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if not name.startswith(".") or not name.endswith((".tmp", ".claimed")):
                continue
            file = directory / name
            with contextlib.suppress(FileNotFoundError):
                if now - file.stat().st_mtime < older_than:
                    continue
                if name.endswith(".tmp"):
                    file.unlink()
                else:  # ".<original>.<hex>.claimed": the rows may be newer than the compacted file's
                    _restore_or_remove(file, directory / name[1:].rsplit(".", 2)[0], None)


def _compact_dir(directory: Path, table: pa.Table, read: list[tuple[Path, Any]]) -> Path | None:
    if len(read) < 2:
        return None
    target = _write_atomic(table, directory / f"{_COMPACTED}{uuid.uuid4().hex}{_SUFFIX}")
    for file, stat in read:  # the compacted file is in place: readers dedupe the doubles until these are gone
        _retire(file, stat)
    return target


def compact(path: str | os.PathLike, *, history: bool = True, leftovers_older_than: float = 3600.0) -> Path | None:
    """Merge the leaderboard's row files into one Parquet file, atomically; return it (None: nothing to merge).

    The merged file is written under a temporary name and renamed into place before the files it merges are removed,
    so every row stays readable throughout (readers drop the doubles in between). Superseded versions of a
    rewritten trial are dropped; a file rewritten by a trial while the compaction runs is kept. Safe to run twice
    and beside running writers. History files are merged the same way (``history=True``). Temporary files of
    crashed writers older than ``leftovers_older_than`` seconds are removed.
    """
    root = Path(path)
    if not root.is_dir():
        raise LeaderboardSchemaError(f"no leaderboard at {str(root)!r}: not a directory")
    _clean_leftovers(root, leftovers_older_than)
    table, _, read = _read_dir(root, TRIAL_SCHEMA)
    latest = _latest(table)
    target = _compact_dir(root, latest, read)
    if history:
        hist_dir = root / HISTORY_DIR
        _clean_leftovers(hist_dir, leftovers_older_than)
        hist, _, hist_read = _read_dir(hist_dir, HISTORY_SCHEMA)
        trials, _ = read_trials(root)
        _compact_dir(hist_dir, _select_history(hist, trials, keep_newer=True), hist_read)
    return target

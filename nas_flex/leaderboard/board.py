"""``Leaderboard(path)``: read a leaderboard directory as pandas, and rank it (best, top, Pareto front).

Every call reads the directory again, so a leaderboard that a running search is writing stays current. A ranking
reads only the columns it ranks by (plus the trial keys) from every file, then all columns of the rows it returns:
on 10^5 trials ``top`` and ``pareto`` take about a second (``experiments/bench_leaderboard.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nas_flex.errors import LeaderboardSchemaError, unknown_name
from nas_flex.leaderboard.merge import compact
from nas_flex.leaderboard.query import Filter, parse_filter, row_mask, select
from nas_flex.leaderboard.schema import TRIAL_SCHEMA
from nas_flex.leaderboard.store import (
    Snapshot,
    read_history,
    retry_reads,
    scan,
    without_location,
)
from nas_flex.leaderboard.write import write_trial
from nas_flex.record import METRIC_DIRECTIONS, TrialRecord, TrialStatus

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Leaderboard", "to_pandas"]

_DIRECTIONS = ("max", "min")


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A leaderboard table as pandas: nullable ``Int64`` / ``boolean`` columns (a missing int stays missing, not a
    float), UTC timestamps, ``learned_sizes`` as lists of dicts."""
    import pandas as pd

    mapping = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)


def _unknown_column(what: str, name: Any, valid: Iterable[str]) -> LeaderboardSchemaError:
    return unknown_name(what, name, valid, error=LeaderboardSchemaError, sort=False)


def _numeric(name: str) -> bool:
    typ = TRIAL_SCHEMA.field(name).type
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)


def _present(col: pa.ChunkedArray) -> np.ndarray:
    """Where ``col`` has a value (not null, not NaN)."""
    ok = pc.is_valid(col)
    if pa.types.is_floating(col.type):
        ok = pc.and_(ok, pc.invert(pc.fill_null(pc.is_nan(col), True)))
    return ok.to_numpy(zero_copy_only=False)


def _parse_where(where: str | Filter | None) -> Filter | None:
    """A filter, parsed and checked against the trial table's columns before anything is read."""
    if where is None or isinstance(where, Filter):
        return where
    return parse_filter(where, TRIAL_SCHEMA.names)


def _needed(*columns: str, query: Filter | None) -> list[str]:
    """The columns a ranking reads: its own and the filter's, each once, in a stable order."""
    return sorted({*columns, *(query.columns if query is not None else ())})


def _checked_objectives(objectives: Mapping[str, str] | Sequence[str] | str) -> Mapping[str, str] | list[str]:
    """Pareto objectives, checked: known numeric columns, directions 'max' / 'min', at least one."""
    if isinstance(objectives, str):
        objectives = [objectives]
    if isinstance(objectives, Mapping):
        for col, way in objectives.items():
            if col not in TRIAL_SCHEMA.names:
                raise _unknown_column("objective", col, TRIAL_SCHEMA.names)
            if way not in _DIRECTIONS:
                raise LeaderboardSchemaError(f"objective {col!r} must be 'max' or 'min', but got {way!r}")
    else:
        objectives = list(objectives)
        for col in objectives:
            if col not in TRIAL_SCHEMA.names:
                raise _unknown_column("metric", col, METRIC_DIRECTIONS)
    if not objectives:
        raise LeaderboardSchemaError("pareto needs at least one objective")
    for col in objectives:
        if not _numeric(col):
            raise LeaderboardSchemaError(
                f"objective {col!r} must be a numeric column, but it is {TRIAL_SCHEMA.field(col).type}"
            )
    return objectives


def _pareto_front(values: np.ndarray) -> np.ndarray:
    """Row indices of the non-dominated rows of ``values`` (rows x objectives, smaller is better, no NaN), in
    lexicographic order of the objectives; equal rows are all kept."""
    order = np.lexsort(values.T[::-1])  # stable: ties keep their order
    v = values[order]
    if v.shape[1] == 1:
        return order[v[:, 0] == v[0, 0]] if len(v) else order
    if v.shape[1] == 2:
        # sorted by (a, b): a row is dominated by an earlier row with a smaller a and b <= its b, or by the first
        # row of its own a with a smaller b
        a, b = v[:, 0], v[:, 1]
        new_a = np.r_[True, a[1:] != a[:-1]]
        first = np.flatnonzero(new_a)[np.cumsum(new_a) - 1]  # index of the first row with the same a
        before = np.r_[np.inf, np.minimum.accumulate(b)][first]  # min b over rows with a smaller a
        return order[~((before <= b) | (b[first] < b))]
    front: list[int] = []  # a row can only be dominated by a row before it in lexicographic order
    for i in range(len(v)):
        if front:
            f = v[front]
            if ((f <= v[i]).all(axis=1) & (f < v[i]).any(axis=1)).any():
                continue
        front.append(i)
    return order[front]


class Leaderboard:
    """The trials of a leaderboard directory: one row each, with ranking by recorded metric directions.

    Args:
        path: the leaderboard directory (``nas_flex.leaderboard.write_trial`` writes it).
        on_corrupt: what a file that is not readable Parquet (a truncated copy, say) does to a read: "warn" leaves
            its rows out with one ``CorruptFileWarning`` naming every such file; "raise" raises
            ``CorruptLeaderboardError`` naming them. ``nas_flex.leaderboard.check_storage`` checks a storage.

    Example:
        >>> lb = Leaderboard("runs/digits")  # doctest: +SKIP
        >>> lb.best("metrics_val_acc")[["trial_id", "params_conv", "metrics_val_acc"]]  # doctest: +SKIP
        >>> lb.pareto({"metrics_val_acc": "max", "flops": "min"})  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, on_corrupt: str = "warn") -> None:
        if on_corrupt not in ("warn", "raise"):
            raise LeaderboardSchemaError(f"`on_corrupt` must be 'warn' or 'raise', but got {on_corrupt!r}")
        self.path = Path(path)
        self.on_corrupt = on_corrupt

    def __repr__(self) -> str:
        return f"Leaderboard({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------- reading
    def _check_path(self) -> None:
        if not self.path.exists():
            raise LeaderboardSchemaError(f"no leaderboard at {str(self.path)!r}: no such directory")
        if not self.path.is_dir():
            raise LeaderboardSchemaError(
                f"no leaderboard at {str(self.path)!r}: a leaderboard is a directory of Parquet files, not a file"
            )

    def snapshot(self, columns: Sequence[str] | None = None, *, skip: Mapping[Path, str] | None = None) -> Snapshot:
        """One read of ``columns`` (default all) of every trial (one row each, sorted by experiment, trial_id);
        ``Snapshot.rows`` fetches all columns of chosen rows. Used by the rankings; see ``store.scan``."""
        self._check_path()
        return scan(self.path, columns=columns, on_corrupt=self.on_corrupt, skip=skip)

    def _query(self, read: Any) -> Any:
        return retry_reads(read, on_corrupt=self.on_corrupt)

    def _frame(self, snap: Snapshot, positions: Any) -> pd.DataFrame:
        """Every column of the rows at ``positions``, indexed by position in ``to_pandas()``."""
        positions = np.asarray(positions, dtype=np.int64)
        df = to_pandas(snap.rows(positions))
        df.index = positions
        return df

    def _read(self, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
        def read(skip: Mapping[Path, str]) -> tuple[pd.DataFrame, dict[str, str]]:
            snap = self.snapshot(columns, skip=skip)
            return to_pandas(without_location(snap.table)), {**METRIC_DIRECTIONS, **snap.directions}

        return self._query(read)

    def to_pandas(self) -> pd.DataFrame:
        """All trials, one row each (the latest ``finished`` of a rewritten trial), sorted by experiment, trial_id.

        Raises:
            LeaderboardSchemaError: the directory is missing, or a file lacks columns of the schema (listed).
        """
        return self._read()[0]

    def history(self, *, experiment: str | None = None, trial_id: str | None = None) -> pd.DataFrame:
        """The per-epoch rows (epoch, train/val loss and accuracy, lr, seconds, learned sizes) of the trials, one
        set per trial row, optionally of one experiment or trial."""
        self._check_path()
        df = to_pandas(self._query(lambda skip: read_history(self.path, on_corrupt=self.on_corrupt)))
        if experiment is not None:
            df = df[df["experiment"] == experiment]
        if trial_id is not None:
            df = df[df["trial_id"] == trial_id]
        return df.reset_index(drop=True)

    @property
    def directions(self) -> dict[str, str]:
        """Metric column -> "max" or "min", as recorded in the files (``METRIC_DIRECTIONS`` for an empty board)."""
        return self._read(["experiment"])[1]

    def experiments(self) -> list[str]:
        """The experiment names, sorted."""
        return sorted(self._read(["experiment"])[0]["experiment"].unique().tolist())

    def __len__(self) -> int:
        return len(self._read(["experiment"])[0])

    # ------------------------------------------------------------------------------------------------- ranking
    @staticmethod
    def _direction(metric: Any, directions: Mapping[str, str]) -> str:
        if metric not in directions:
            raise _unknown_column("metric", metric, directions)
        return directions[metric]

    @staticmethod
    def _snapshot_frame(snap: Snapshot, columns: Sequence[str]) -> pd.DataFrame:
        """``columns`` of the snapshot as pandas, indexed by position (what ``_frame`` takes)."""
        return to_pandas(snap.table.select(list(columns)))

    def top(self, n: int = 10, metric: str = "metrics_val_acc", *,
            status: TrialStatus | str | None = TrialStatus.COMPLETED, where: str | Filter | None = None
            ) -> pd.DataFrame:
        """The ``n`` best rows by ``metric`` in its recorded direction (rows where it is missing left out).

        Ties keep (experiment, trial_id) order. ``status=None`` ranks every row, not only completed trials;
        ``where`` keeps the rows a filter selects (``nas_flex.leaderboard.query``: never run as Python). Reads
        ``metric``, status and the filter's columns of every trial, then every column of the ``n`` rows returned.
        """
        if metric not in TRIAL_SCHEMA.names:
            raise _unknown_column("metric", metric, METRIC_DIRECTIONS)
        query = _parse_where(where)

        def read(skip: Mapping[Path, str]) -> pd.DataFrame:
            needed = _needed("status", metric, query=query)
            snap = self.snapshot(needed, skip=skip)
            way = self._direction(metric, {**METRIC_DIRECTIONS, **snap.directions})
            chosen = select(self._snapshot_frame(snap, needed), {metric: way}, status=status, where=query,
                            sort=metric, limit=n, drop_missing=True)
            return self._frame(snap, chosen.index.to_numpy())

        return self._query(read)

    def best(self, metric: str = "metrics_val_acc", *, status: TrialStatus | str | None = TrialStatus.COMPLETED,
             where: str | Filter | None = None) -> pd.Series:
        """The best row by ``metric`` in its recorded direction (of the rows ``where`` selects, if given).

        Raises:
            LeaderboardSchemaError: ``metric`` has no recorded direction (the valid ones are listed), or no row
                with that status has a value for it.
            QueryError: ``where`` is not a valid filter (raised before reading).
        """
        rows = self.top(1, metric, status=status, where=where)
        if rows.empty:
            matching = "" if where is None else f" matching {getattr(where, 'text', where)!r}"
            raise LeaderboardSchemaError(
                f"no {'' if status is None else repr(str(status)) + ' '}trial{matching} in {str(self.path)!r} has a "
                f"value for {metric!r}" + ("" if status is None else "; pass status=None to rank every trial")
            )
        return rows.iloc[0]

    def pareto(self, objectives: Mapping[str, str] | Sequence[str], *,
               status: TrialStatus | str | None = TrialStatus.COMPLETED,
               where: str | Filter | None = None) -> pd.DataFrame:
        """The non-dominated rows for several objectives: no other row is at least as good in all of them and
        better in one. Equal rows are all kept; rows missing an objective are left out.

        Args:
            objectives: column -> "max" | "min", or a list of metric columns ranked in their recorded directions.
            status: only rows with this status (None: every row).
            where: only the rows this filter selects (``nas_flex.leaderboard.query``).

        Returns:
            The front, best first by the first objective.
        """
        objectives = _checked_objectives(objectives)
        query = _parse_where(where)

        def read(skip: Mapping[Path, str]) -> pd.DataFrame:
            needed = _needed("status", *objectives, query=query)
            snap = self.snapshot(needed, skip=skip)
            if isinstance(objectives, Mapping):
                ways = dict(objectives)
            else:
                directions = {**METRIC_DIRECTIONS, **snap.directions}
                ways = {col: self._direction(col, directions) for col in objectives}
            # every objective as "smaller is better"; rows missing a value leave
            sign = {"max": -1.0, "min": 1.0}
            rows = row_mask(self._snapshot_frame(snap, needed), status=status, where=query)
            for col in ways:
                rows &= _present(snap.table.column(col))
            rows = np.flatnonzero(rows)
            values = np.column_stack([
                snap.table.column(col).take(pa.array(rows)).cast(pa.float64()).to_numpy(zero_copy_only=False)
                * sign[way] for col, way in ways.items()
            ]) if len(rows) else np.empty((0, len(ways)))
            return self._frame(snap, rows[_pareto_front(values)])

        return self._query(read)

    # ------------------------------------------------------------------------------------- repeated measurement
    def _runs(self, metric: str, experiment: str | None) -> tuple[pd.DataFrame, str]:
        """The rows ``by_architecture`` and ``compare`` need (config only where a row lacks its key), and the
        metric's direction."""
        from nas_flex.leaderboard.stats import _DESCRIBE

        if metric not in TRIAL_SCHEMA.names or not _numeric(metric):
            raise _unknown_column("metric", metric, METRIC_DIRECTIONS)
        cols = ["status", "seed", "architecture_key", metric, *(c for c in _DESCRIBE if c != "experiment")]
        frame, directions = self._read(list(dict.fromkeys(cols)))
        if experiment is not None:
            frame = frame[frame["experiment"] == experiment].reset_index(drop=True)
        if frame["architecture_key"].isna().any():  # rows written before the column existed
            configs = self._read(["config"])[0][["experiment", "trial_id", "config"]]
            frame = frame.merge(configs, on=["experiment", "trial_id"], how="left")
        return frame, self._direction(metric, directions)

    def by_architecture(self, metric: str = "metrics_val_acc", *, experiment: str | None = None,
                        level: float = 0.95) -> pd.DataFrame:
        """One row per architecture (the runs sharing an ``architecture_key``: the seeds of ``repeats``): ``n``,
        ``mean``, ``sd``, the Student t interval ``ci_low`` / ``ci_high`` at ``level`` (NaN with n = 1), ``failed``,
        ``stopped``, ``seeds``, and its conv / kernel size / pooling; best mean first
        (``nas_flex.leaderboard.stats.by_architecture`` says which runs count).

        Example:
            >>> Leaderboard("runs/main").by_architecture("metrics_val_acc").head()  # doctest: +SKIP
        """
        from nas_flex.leaderboard.stats import by_architecture

        frame, way = self._runs(metric, experiment)
        return by_architecture(frame, metric, way, level=level)

    def compare(self, a: str, b: str, metric: str = "metrics_val_acc", *, experiment: str | None = None,
                level: float = 0.95) -> Any:
        """The difference of architectures ``a`` and ``b`` (their ``architecture_key``) in ``metric``: a paired t
        interval over their shared seeds (Welch's without shared seeds), resolved when it excludes 0
        (``nas_flex.leaderboard.stats.Comparison``)."""
        from nas_flex.leaderboard.stats import compare_architectures

        frame, _ = self._runs(metric, experiment)
        return compare_architectures(frame, metric, a, b, level=level)

    # ------------------------------------------------------------------------------------------------- writing
    def write(self, result: TrialRecord | Mapping[str, Any], *, experiment: str, trial_id: str,
              config_key: str | None = None) -> Path:
        """``write_trial(self.path, result, ...)``: add or replace one trial's row and history."""
        return write_trial(self.path, result, experiment=experiment, trial_id=trial_id, config_key=config_key)

    def compact(self, *, history: bool = True) -> Path | None:
        """Merge the row files (and history files) into one each, atomically; see ``merge.compact``."""
        return compact(self.path, history=history)

    @property
    def columns(self) -> list[str]:
        """The columns of the trial table (``TRIAL_SCHEMA``)."""
        return TRIAL_SCHEMA.names

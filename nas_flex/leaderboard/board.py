"""``Leaderboard(path)``: read a leaderboard directory as pandas, and rank it (best, top, Pareto front).

Every call reads the directory again, so a leaderboard that a running search is writing stays current.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.schema import METRIC_DIRECTIONS, TRIAL_SCHEMA
from nas_flex.leaderboard.store import compact, read_history, read_trials, write_trial

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
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return LeaderboardSchemaError(f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}")


class Leaderboard:
    """The trials of a leaderboard directory: one row each, with ranking by recorded metric directions.

    Args:
        path: the leaderboard directory (``nas_flex.leaderboard.write_trial`` writes it).

    Example:
        >>> lb = Leaderboard("runs/digits")  # doctest: +SKIP
        >>> lb.best("metrics_val_acc")[["trial_id", "params_conv", "metrics_val_acc"]]  # doctest: +SKIP
        >>> lb.pareto({"metrics_val_acc": "max", "flops": "min"})  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

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

    def _read(self) -> tuple[pd.DataFrame, dict[str, str]]:
        self._check_path()
        table, recorded = read_trials(self.path)
        return to_pandas(table), {**METRIC_DIRECTIONS, **recorded}

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
        df = to_pandas(read_history(self.path))
        if experiment is not None:
            df = df[df["experiment"] == experiment]
        if trial_id is not None:
            df = df[df["trial_id"] == trial_id]
        return df.reset_index(drop=True)

    @property
    def directions(self) -> dict[str, str]:
        """Metric column -> "max" or "min", as recorded in the files (``METRIC_DIRECTIONS`` for an empty board)."""
        return self._read()[1]

    def experiments(self) -> list[str]:
        """The experiment names, sorted."""
        return sorted(self.to_pandas()["experiment"].unique().tolist())

    def __len__(self) -> int:
        return len(self.to_pandas())

    # ------------------------------------------------------------------------------------------------- ranking
    @staticmethod
    def _filter(df: pd.DataFrame, status: str | None) -> pd.DataFrame:
        return df if status is None else df[df["status"] == status]

    @staticmethod
    def _direction(metric: Any, directions: Mapping[str, str]) -> str:
        if metric not in directions:
            raise _unknown_column("metric", metric, directions)
        return directions[metric]

    def top(self, n: int = 10, metric: str = "metrics_val_acc", *, status: str | None = "completed") -> pd.DataFrame:
        """The ``n`` best rows by ``metric`` in its recorded direction (rows where it is missing left out).

        Ties keep (experiment, trial_id) order. ``status=None`` ranks every row, not only completed trials.
        """
        df, directions = self._read()
        way = self._direction(metric, directions)
        df = self._filter(df, status)
        df = df[df[metric].notna()]
        return df.sort_values(metric, ascending=way == "min", kind="stable").head(n)

    def best(self, metric: str = "metrics_val_acc", *, status: str | None = "completed") -> pd.Series:
        """The best row by ``metric`` in its recorded direction.

        Raises:
            LeaderboardSchemaError: ``metric`` has no recorded direction (the valid ones are listed), or no row
                with that status has a value for it.
        """
        rows = self.top(1, metric, status=status)
        if rows.empty:
            raise LeaderboardSchemaError(
                f"no {'' if status is None else repr(status) + ' '}trial in {str(self.path)!r} has a value for "
                f"{metric!r}" + ("" if status is None else "; pass status=None to rank every trial")
            )
        return rows.iloc[0]

    def pareto(self, objectives: Mapping[str, str] | Sequence[str], *,
               status: str | None = "completed") -> pd.DataFrame:
        """The non-dominated rows for several objectives: no other row is at least as good in all of them and
        better in one. Equal rows are all kept; rows missing an objective are left out.

        Args:
            objectives: column -> "max" | "min", or a list of metric columns ranked in their recorded directions.
            status: only rows with this status (None: every row).

        Returns:
            The front, best first by the first objective.
        """
        import pandas as pd

        df, directions = self._read()
        if isinstance(objectives, str):
            objectives = [objectives]
        if isinstance(objectives, Mapping):
            ways = dict(objectives)
            for col, way in ways.items():
                if col not in df.columns:
                    raise _unknown_column("objective", col, df.columns)
                if way not in _DIRECTIONS:
                    raise LeaderboardSchemaError(f"objective {col!r} must be 'max' or 'min', but got {way!r}")
        else:
            ways = {col: self._direction(col, directions) for col in objectives}
        if not ways:
            raise LeaderboardSchemaError("pareto needs at least one objective")
        for col in ways:
            if not pd.api.types.is_numeric_dtype(df[col]):
                raise LeaderboardSchemaError(f"objective {col!r} must be a numeric column, but it is {df[col].dtype}")
        df = self._filter(df, status)
        # every objective as "smaller is better"; rows missing a value leave; then lexicographic order, in which a
        # row can only be dominated by a row before it
        sign = {"max": -1.0, "min": 1.0}
        values = pd.DataFrame(
            {i: df[col].to_numpy(dtype=float, na_value=float("nan")) * sign[way]
             for i, (col, way) in enumerate(ways.items())},
            index=df.index,
        ).dropna()
        values = values.sort_values(list(values.columns), kind="stable")
        arr = values.to_numpy()
        front: list[int] = []
        for i in range(len(arr)):
            v = arr[i]
            if front:
                f = arr[front]
                if ((f <= v).all(axis=1) & (f < v).any(axis=1)).any():
                    continue
            front.append(i)
        return df.loc[values.index[front]]

    # ------------------------------------------------------------------------------------------------- writing
    def write(self, result: Mapping[str, Any], *, experiment: str, trial_id: str,
              config_key: str | None = None) -> Path:
        """``write_trial(self.path, result, ...)``: add or replace one trial's row and history."""
        return write_trial(self.path, result, experiment=experiment, trial_id=trial_id, config_key=config_key)

    def compact(self, *, history: bool = True) -> Path | None:
        """Merge the row files (and history files) into one each, atomically; see ``store.compact``."""
        return compact(self.path, history=history)

    @property
    def columns(self) -> list[str]:
        """The columns of the trial table (``TRIAL_SCHEMA``)."""
        return TRIAL_SCHEMA.names

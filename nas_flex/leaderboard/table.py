"""The leaderboard as a readable text table (what ``nas-flex leaderboard PATH`` prints)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.board import Leaderboard, _unknown_column
from nas_flex.leaderboard.query import DEFAULT_STATUS, Filter, parse_filter, row_mask, select
from nas_flex.leaderboard.schema import TRIAL_SCHEMA
from nas_flex.leaderboard.store import retry_reads
from nas_flex.record import METRIC_DIRECTIONS, TrialStatus

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_COLUMNS", "select_rows", "format_table", "format_leaderboard", "summarize_sizes"]

#: the columns shown when none are asked for (``experiment`` is added in front when there are several)
DEFAULT_COLUMNS = (
    "trial_id", "status", "params_conv", "params_kernel_size", "params_pooling", "metrics_val_acc", "best_val_acc",
    "params", "flops", "train_seconds", "learned_sizes",
)
_COUNTS = {"params", "flops", "flops_fft", "peak_memory_bytes", "examples_per_second"}


def summarize_sizes(sizes: Any, *, limit: int = 4) -> str:
    """Learned sizes in pixels, one per layer: ``5.2`` (square) or ``7.0x3.1``; ``-`` where none is learned."""
    if sizes is None or (isinstance(sizes, float) and math.isnan(sizes)) or len(sizes) == 0:
        return "-"

    def one(s: dict[str, Any]) -> str:
        h, w = s.get("height"), s.get("width")
        if h is None or w is None:
            return "?"
        return f"{h:.1f}" if round(h, 1) == round(w, 1) else f"{h:.1f}x{w:.1f}"

    parts = [one(s) for s in list(sizes)[:limit]]
    more = len(sizes) - limit
    return " ".join(parts) + (f" (+{more})" if more > 0 else "")


def _human(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.4g}"


def _cell(column: str, v: Any) -> str:
    import pandas as pd

    if column == "learned_sizes":
        return summarize_sizes(v)
    if pd.api.types.is_scalar(v) and pd.isna(v):
        return "-"
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if column in _COUNTS:
            return _human(float(v))
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v)


def format_table(df: pd.DataFrame) -> str:
    """``df`` as text: counts in k/M/G, floats to 4 digits, learned sizes summarised, ``-`` for missing values."""
    import pandas as pd

    shown = pd.DataFrame({c: [_cell(c, v) for v in df[c].tolist()] for c in df.columns}, index=df.index)
    return shown.to_string(index=False)


def _shown(df: pd.DataFrame | None, columns: Sequence[str] | None, valid: Sequence[str]) -> list[str]:
    if columns:
        names = [c.strip() for part in columns for c in part.split(",") if c.strip()]
        for c in names:
            if c not in valid:
                raise _unknown_column("column", c, valid)
        return names
    names = list(DEFAULT_COLUMNS)
    if df["experiment"].nunique() > 1:
        names.insert(0, "experiment")
    return names


def _check_args(top: int | None, sort: str | None, valid: Sequence[str]) -> None:
    if sort is not None and sort not in valid:
        raise _unknown_column("sort column", sort, valid)
    if top is not None and top < 1:
        raise LeaderboardSchemaError(f"--top must be >= 1, but got {top}")


def select_rows(df: pd.DataFrame, directions: dict[str, str], *, top: int | None = None,
                sort: str | None = "metrics_val_acc", where: str | Filter | None = None,
                columns: Sequence[str] | None = None,
                status: TrialStatus | str | None = DEFAULT_STATUS) -> pd.DataFrame:
    """Filter (``status``: completed trials by default, None for every row; ``where``: a filter of
    ``nas_flex.leaderboard.query``, never run as Python), sort (best first for a metric with a recorded direction,
    else ascending; missing values last), keep ``top`` rows and ``columns``: ``query.select``, as ``Leaderboard``.

    Raises:
        LeaderboardSchemaError: an unknown column (the valid ones listed), a bad filter (``QueryError``), or
            ``top < 1``.
    """
    valid = list(df.columns)
    query = where if where is None or isinstance(where, Filter) else parse_filter(where, valid)
    _check_args(top, sort, valid)
    names = _shown(df, columns, valid)
    return select(df, directions, status=status, where=query, sort=sort, limit=top)[names]


def _footer(shown: int, total: int, kept: int, status: TrialStatus | str | None, sort: str | None) -> str:
    """The table's last line, e.g. ``(3 of 8 trials, completed only (2 other: --all-statuses shows them), sorted by
    metrics_val_acc)``."""
    text = f"{shown} of {total} trials"
    if status is not None and kept < total:
        text += f", {status} only ({total - kept} other: --all-statuses shows them)"
    return f"({text}" + (f", sorted by {sort})" if sort else ")")


def format_leaderboard(path: str | os.PathLike, *, top: int | None = None, sort: str | None = "metrics_val_acc",
                       where: str | Filter | None = None, columns: Sequence[str] | None = None,
                       on_corrupt: str = "warn", status: TrialStatus | str | None = DEFAULT_STATUS) -> str:
    """The leaderboard at ``path`` as a text table (see ``select_rows``), or a line saying that no row is left.

    Every argument (the filter included) is checked before anything is read. Reads the columns that status, filter
    and sort need for every trial, then the shown columns of the rows shown only.
    """
    from nas_flex.leaderboard.board import to_pandas
    from nas_flex.leaderboard.store import without_location

    valid = TRIAL_SCHEMA.names
    query = where if where is None or isinstance(where, Filter) else parse_filter(where, valid)
    _check_args(top, sort, valid)
    if columns:
        _shown(None, columns, valid)
    lb = Leaderboard(path, on_corrupt=on_corrupt)

    def read(skip: Any) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        needed = {"experiment", "trial_id", "status", *([sort] if sort else []), *(query.columns if query else ())}
        snap = lb.snapshot(sorted(needed), skip=skip)
        directions = {**METRIC_DIRECTIONS, **snap.directions}
        df = to_pandas(without_location(snap.table))
        names = _shown(df, columns, valid)
        picked = select(df, directions, status=status, where=query, sort=sort, limit=top)
        shown = to_pandas(snap.rows(picked.index.to_numpy(), names))
        return df, shown, int(row_mask(df, status=status).sum())

    df, out, kept = retry_reads(read, on_corrupt=on_corrupt)
    if out.empty:
        what = "trials" if status is None else f"{status} trials"
        return f"no {what} in {str(path)!r}" + (f" match {query.text!r}" if query and kept else "") + (
            f" ({len(df) - kept} other: --all-statuses shows them)" if status is not None and kept < len(df) else "")
    return format_table(out) + "\n" + _footer(len(out), len(df), kept, status, sort)

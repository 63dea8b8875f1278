"""The leaderboard as a readable text table (what ``nas-flex leaderboard PATH`` prints)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.board import Leaderboard, _unknown_column
from nas_flex.leaderboard.schema import TRIAL_SCHEMA
from nas_flex.leaderboard.store import retry_reads
from nas_flex.record import METRIC_DIRECTIONS

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


def _shown(df: pd.DataFrame, columns: Sequence[str] | None, valid: Sequence[str]) -> list[str]:
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


def _pick(df: pd.DataFrame, directions: dict[str, str], *, top: int | None, sort: str | None, where: str | None,
          valid: Sequence[str]) -> pd.DataFrame:
    if sort is not None and sort not in valid:
        raise _unknown_column("sort column", sort, valid)
    if top is not None and top < 1:
        raise LeaderboardSchemaError(f"--top must be >= 1, but got {top}")
    if where:
        try:
            df = df.query(where, engine="python")
        except Exception as err:  # pandas raises NameError, SyntaxError, KeyError, TypeError, ValueError, ...
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LeaderboardSchemaError(
                f"bad --where expression {where!r}: {type(err).__name__}: {msg}. It is a pandas DataFrame.query "
                f"expression over the columns: {', '.join(valid)}"
            ) from None
    if sort is not None:
        df = df.sort_values(sort, ascending=directions.get(sort, "min") == "min", na_position="last", kind="stable")
    if top is not None:
        df = df.head(top)
    return df


def select_rows(df: pd.DataFrame, directions: dict[str, str], *, top: int | None = None,
                sort: str | None = "metrics_val_acc", where: str | None = None,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Filter (``where``: a ``DataFrame.query`` expression), sort (best first for a metric with a recorded direction,
    else ascending; missing values last), keep ``top`` rows and ``columns``.

    Raises:
        LeaderboardSchemaError: an unknown column (the valid ones listed), a bad expression, or ``top < 1``.
    """
    valid = list(df.columns)
    names = _shown(df, columns, valid)
    return _pick(df, directions, top=top, sort=sort, where=where, valid=valid)[names]


def _named_in(expression: str | None, valid: Sequence[str]) -> set[str]:
    """The columns an expression may use: every identifier in it that is a column name (a superset is harmless)."""
    if not expression:
        return set()
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)) & set(valid)


def format_leaderboard(path: str | os.PathLike, *, top: int | None = None, sort: str | None = "metrics_val_acc",
                       where: str | None = None, columns: Sequence[str] | None = None,
                       on_corrupt: str = "warn") -> str:
    """The leaderboard at ``path`` as a text table (see ``select_rows``), or a line saying that no row is left.

    Reads the columns that filter and sort need for every trial, then the shown columns of the rows shown only.
    """
    from nas_flex.leaderboard.board import to_pandas
    from nas_flex.leaderboard.store import without_location

    valid = TRIAL_SCHEMA.names
    lb = Leaderboard(path, on_corrupt=on_corrupt)

    def read(skip: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        needed = {"experiment", "trial_id", *([sort] if sort in valid else []), *_named_in(where, valid)}
        snap = lb.snapshot(sorted(needed), skip=skip)
        directions = {**METRIC_DIRECTIONS, **snap.directions}
        df = to_pandas(without_location(snap.table))
        names = _shown(df, columns, valid)
        picked = _pick(df, directions, top=top, sort=sort, where=where, valid=valid)
        shown = to_pandas(snap.rows(picked.index.to_numpy(), names))
        return df, shown

    df, out = retry_reads(read, on_corrupt=on_corrupt)
    if out.empty:
        return f"no trials in {str(path)!r}" + (f" match {where!r}" if where and len(df) else "")
    summary = f"{len(out)} of {len(df)} trials" + (f", sorted by {sort}" if sort else "")
    return format_table(out) + "\n" + f"({summary})"

"""The ranking nas_flex prints after a search and for ``nas-flex leaderboard --by-architecture``: one line per
architecture (mean +- sd over its seeds, 95 % t interval), each compared with the grid's best architecture (the
best mean among the discrete ``conv`` layer's architectures) by a paired t-test over their shared seeds, and the
methods whose difference from it is resolved named at the end. A leaderboard with one run per architecture says
so: it has no spread, and no difference in it is resolved.

The comparisons of the methods with the reference are one family of tests, corrected by Holm-Bonferroni
(``nas_flex.leaderboard.stats.holm_bonferroni``); the grid's other points are compared too but are left out of the
family (they are not claims about a method; without a grid every comparison is in it). A difference is "resolved"
when it survives the correction, and
"resolved at 5 % uncorrected only" when its own test rejects at 5 % but the family's does not. Each line keeps the
uncorrected 95 % interval of the difference and prints both p-values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nas_flex.leaderboard.stats import (
    LEVEL,
    UNRESOLVED,
    Comparison,
    by_architecture,
    compare_runs,
    holm_bonferroni,
    runs_by_seed,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ArchitectureRanking", "rank_architectures", "format_by_architecture", "describe_architecture",
           "GRID_CONV"]

#: the registry name of the discrete layer: its architectures make up "the grid"
GRID_CONV = "conv"


def describe_architecture(row: Any) -> str:
    """A short name of an architecture row: its layer, kernel size and pooling."""
    import pandas as pd

    def value(key: str) -> Any:
        v = row.get(key)
        return None if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)) else v

    text = str(value("params_conv") or "?")
    if value("params_kernel_size") is not None:
        text += f" k={int(value('params_kernel_size'))}"
    if value("params_pooling") is not None:
        text += f" pool={value('params_pooling')}"
    return text


@dataclass
class ArchitectureRanking:
    """``by_architecture``'s table with a ``vs_reference`` ``Comparison`` per architecture (None for the reference)
    and the reference's key (the grid's best; the best overall when the board has no grid architecture).
    ``holm`` holds each comparison's Holm-adjusted p-value over the family of comparisons with the reference (NaN
    where there is no test)."""

    table: pd.DataFrame
    comparisons: dict[str, Comparison | None]
    reference: str | None
    metric: str
    direction: str
    reference_name: str = "the grid's best"  # "the best" when the board has no grid architecture
    holm: dict[str, float] = field(default_factory=dict)

    @property
    def single_run(self) -> bool:
        """No architecture has more than one counted run."""
        return bool(len(self.table)) and int(self.table["n"].max()) <= 1

    @property
    def family_size(self) -> int:
        """How many comparisons with the reference have a test (the m of the Holm correction)."""
        return sum(1 for v in self.holm.values() if math.isfinite(v))

    def survives(self, key: str) -> bool:
        """The comparison of ``key`` with the reference is resolved and survives the Holm correction."""
        comp, adjusted = self.comparisons.get(key), self.holm.get(key, math.nan)
        alpha = 1.0 - (comp.level if comp is not None else LEVEL)
        return comp is not None and comp.resolved and math.isfinite(adjusted) and adjusted <= alpha

    def resolved(self, better: bool, *, corrected: bool = True) -> list[str]:
        """Keys of the architectures resolved ahead of (``better``) or behind the reference: those that survive the
        Holm correction, or (``corrected=False``) every one whose own test rejects at 1 - level."""
        out = []
        for key, comp in self.comparisons.items():
            if comp is None or not comp.resolved or (corrected and not self.survives(key)):
                continue
            ahead = comp.difference > 0 if self.direction == "max" else comp.difference < 0
            if ahead == better:
                out.append(key)
        return out


def rank_architectures(frame: pd.DataFrame, metric: str, direction: str, *, level: float = LEVEL,
                       grid_conv: str = GRID_CONV) -> ArchitectureRanking:
    """Rank a leaderboard frame's architectures by mean and compare each with the grid's best (paired by seed)."""
    table = by_architecture(frame, metric, direction, level=level)
    valued = table[table["n"] > 0]
    grid = valued[valued["params_conv"] == grid_conv] if "params_conv" in valued else valued.iloc[:0]
    pool = grid if len(grid) else valued
    reference = str(pool["architecture_key"].iloc[0]) if len(pool) else None
    comparisons: dict[str, Comparison | None] = {}
    runs = runs_by_seed(frame, metric) if reference is not None else {}
    for key in table["architecture_key"]:
        if reference is None or key == reference or key not in runs:
            comparisons[str(key)] = None
        else:
            comparisons[str(key)] = compare_runs(runs[key], runs[reference], a_name=str(key), b_name=reference,
                                                 level=level)
    # the family: what the ranking claims, each method against the grid's best; the grid's other points are compared
    # too (uncorrected, descriptive) but are not claims about a method, so they do not dilute the correction
    grid_keys = {str(k) for k in grid["architecture_key"]}
    keys = [k for k, c in comparisons.items() if c is not None and k not in grid_keys]
    adjusted, _ = holm_bonferroni([comparisons[k].p_value for k in keys], 1.0 - level)  # type: ignore[union-attr]
    return ArchitectureRanking(table, comparisons, reference, metric, direction,
                               "the grid's best" if len(grid) else "the best", dict(zip(keys, adjusted)))


def _fmt(v: float, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _verdict(comp: Comparison, adjusted: float) -> str:
    """"resolved (Holm)", "resolved at 5 % uncorrected only" or "not distinguishable", with both p-values."""
    alpha = 1.0 - comp.level
    p = f"p={comp.p_value:.3g}, Holm p={adjusted:.3g}" if math.isfinite(adjusted) else f"p={comp.p_value:.3g}"
    if comp.resolved and math.isfinite(adjusted) and adjusted <= alpha:
        return f"resolved (Holm; {p})"
    if comp.resolved:
        return f"resolved at {alpha:.0%} uncorrected only ({p})"
    return f"{UNRESOLVED} ({p})"


def _line(rank: int, row: Any, comp: Comparison | None, is_reference: bool, ref: str,
          adjusted: float = math.nan) -> str:
    interval = (f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]" if math.isfinite(row["ci_low"])
                else "[n=1: no interval]" if row["n"] == 1 else "[-]")
    extra = "".join(f", {int(row[c])} {c}" for c in ("failed", "stopped") if row[c])
    if is_reference:
        verdict = "reference"
    elif comp is None:
        verdict = "-"
    elif not math.isfinite(comp.ci_low):
        verdict = f"{comp.difference:+.4f}: {UNRESOLVED} ({comp.method})"
    else:
        verdict = (f"{comp.difference:+.4f} [{comp.ci_low:+.4f}, {comp.ci_high:+.4f}] {_verdict(comp, adjusted)} "
                   f"({comp.method}, n={comp.n})")
    return (f"{rank:>3}  {describe_architecture(row):<24} n={int(row['n'])}{extra}  mean {_fmt(row['mean'])} "
            f"+- {_fmt(row['sd'])}  {interval}  vs {ref}: {verdict}")


def format_ranking(ranking: ArchitectureRanking, *, top: int | None = None, label: str | None = None) -> str:
    """The ranking as text: a header that states the statistics, one line per architecture, and the verdicts
    (``label`` names the metric, default its column)."""
    table, metric = ranking.table, label or ranking.metric
    if table.empty:
        return f"no architecture has a run with {metric!r}"
    level = next((c.level for c in ranking.comparisons.values() if c is not None), LEVEL)
    runs = sorted(set(table["n"].astype(int)))
    per = f"{runs[0]} run{'' if runs[0] == 1 else 's'}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]} runs"
    head = [f"{len(table)} architectures, {per} per architecture ({metric}, best mean first; mean +- sd over seeds, "
            f"{level:.0%} Student t interval; each vs {ranking.reference_name} by a paired t-test over shared "
            f"seeds, its uncorrected {level:.0%} interval of the difference and its p-value; a difference is resolved "
            f"when it survives the Holm-Bonferroni correction over the {ranking.family_size} comparisons at "
            f"{1 - level:.0%} family-wise)"]
    if ranking.single_run:
        head.append("1 run per architecture: no spread and no interval, so no difference here is resolved "
                    "(train each architecture under several seeds: --repeats 3)")
    lines = [_line(i + 1, row, ranking.comparisons.get(str(row["architecture_key"])),
                   str(row["architecture_key"]) == ranking.reference, ranking.reference_name,
                   ranking.holm.get(str(row["architecture_key"]), math.nan))
             for i, (_, row) in enumerate(table.head(top).iterrows() if top else table.iterrows())]
    names = {str(r["architecture_key"]): describe_architecture(r) for _, r in table.iterrows()}
    ahead = [names[k] for k in ranking.resolved(True)]
    behind = [names[k] for k in ranking.resolved(False)]
    only = [f"{names[k]} ({'ahead' if better else 'behind'})" for better in (True, False)
            for k in ranking.resolved(better, corrected=False) if not ranking.survives(k)]
    ref = names.get(ranking.reference or "", "-")
    tail = [f"Resolved ahead of {ranking.reference_name} ({ref}): {', '.join(ahead) or 'none'}; resolved behind it: "
            f"{', '.join(behind) or 'none'} (Holm-Bonferroni over {ranking.family_size} comparisons, "
            f"{1 - level:.0%} family-wise); resolved at {1 - level:.0%} uncorrected only: {', '.join(only) or 'none'}; "
            f"every other difference is {UNRESOLVED}."]
    return "\n".join(head + lines + tail)


def format_by_architecture(path: str | os.PathLike, metric: str = "metrics_val_acc", *, experiment: str | None = None,
                           top: int | None = None, level: float = LEVEL) -> str:
    """``nas-flex leaderboard PATH --by-architecture``: the ranking of a leaderboard directory (one experiment's, or
    all rows) as text."""
    from nas_flex.leaderboard.board import Leaderboard

    frame, direction = Leaderboard(path)._runs(metric, experiment)
    return format_ranking(rank_architectures(frame, metric, direction, level=level), top=top)

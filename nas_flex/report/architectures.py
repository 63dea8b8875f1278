"""The report's ranking by architecture: ``by_architecture.png`` (each architecture's mean over its seeds with its
95 % t interval as an error bar; gray the grid, blue the learned sizes; an architecture with one run has no bar) and
the ranking's text (``nas_flex.leaderboard.ranking``): mean +- sd, the interval, and which differences from the
grid's best are resolved by a paired t-test over shared seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nas_flex.leaderboard.ranking import ArchitectureRanking, describe_architecture, format_ranking, rank_architectures

__all__ = ["architecture_lines"]


def _figure(ranking: ArchitectureRanking, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    table = ranking.table[ranking.table["n"] > 0]
    names = [describe_architecture(r) for _, r in table.iterrows()]
    means = table["mean"].to_numpy(dtype=float)
    low = [m - lo if math.isfinite(lo) else 0.0 for m, lo in zip(means, table["ci_low"].astype(float))]
    high = [hi - m if math.isfinite(hi) else 0.0 for m, hi in zip(means, table["ci_high"].astype(float))]
    colors = ["tab:gray" if c == "conv" else "tab:blue" for c in table.get("params_conv", [""] * len(table))]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 3.8))
    ax.bar(names, means, yerr=[low, high], capsize=3, color=colors)
    for x, (n, m) in enumerate(zip(table["n"], means)):
        ax.annotate(f"n={int(n)}", (x, m), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_ylabel(f"{label} (mean over seeds)")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.set_title("Mean and 95 % t interval over seeds (grid gray)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def architecture_lines(df: Any, metric: str, way: str, path: Path, label: str) -> list[str]:
    """The report section: the figure at ``path`` and the ranking as a code block."""
    if df.empty or metric not in df:
        return []
    ranking = rank_architectures(df, metric, way)
    if ranking.table.empty or not (ranking.table["n"] > 0).any():
        return []
    _figure(ranking, path, label)
    return ["## Architectures ranked by mean over seeds", "", f"![by architecture]({path.name})", "",
            "```", format_ranking(ranking, label=label), "```", ""]

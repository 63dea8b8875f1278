"""Grid or learned? What a kernel-size grid costs to reach an accuracy, against single learned-size runs.

A grid trains one model per kernel size (and per other choice); a learned-size method trains one model that finds
its size. Comparing the best of a grid with one learned run as equals hides the grid's cost. Here every grid trial
is charged in the order it ran (by ``started``): the grid's curve is its *best-so-far* accuracy against its
*cumulative* training compute, and each learned run is one point at its own compute.

Training compute of a trial, two ways (both from the leaderboard row, no torch):

* ``train_seconds``: wall time spent training (its epochs, without evaluation), summed over the grid's trials, so
  the curve does not depend on how many trials ran at once;
* ``train_flops``: ``flops`` (forward FLOPs per example of the trained model, FFTs counted) x training examples
  seen (``examples_per_second x train_seconds``, the count the trial measured). It leaves out the backward pass
  (about twice the forward) and, for learned-size layers, the cost changing while the sizes were learned.

Selection and scoring can be kept apart: ``grid_curve(df, "metrics_val_acc", score="metrics_test_acc")`` also
gives, at every trial, the held-out score of the trial that is best *on validation* so far (``score_so_far``), so
the test split is never what picks a trial; ``step_band`` averages such step curves over seeds onto one x grid of
compute, with a Student t band.

The grid is a fixed-size method (``fixed_size_methods``: ``conv``, or any layer with ``learns_size = False``, read
from the rows); every other method, ``mixed`` (a learned, DARTS-style choice among the grid's sizes) included, is a
learned-size method.

Example:
    >>> from nas_flex.leaderboard import Leaderboard  # doctest: +SKIP
    >>> df = Leaderboard("runs/grid_vs_learned").to_pandas()  # doctest: +SKIP
    >>> grid_curve(df, "metrics_val_acc")[["trial_id", "cum_seconds", "best_so_far"]]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nas_flex.leaderboard.sizes import fixed_size_methods
from nas_flex.record import METRIC_LABELS, TrialStatus

__all__ = ["fixed_size_methods", "training_compute", "grid_curve", "learned_points", "grid_cost_to_reach",
           "metric_label", "step_band"]

_COMPLETED = TrialStatus.COMPLETED.value  # the status column holds the plain string


def metric_label(column: str) -> str:
    """A readable name of a leaderboard column ("metrics_val_acc" -> "validation accuracy")."""
    if column in METRIC_LABELS:
        return METRIC_LABELS[column]
    return column.removeprefix("metrics_").replace("_", " ")


def training_compute(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with three columns added: ``examples_seen``, ``train_seconds`` (0 where missing) and ``train_flops``.

    A trial that did not train (a duplicate of another, an error before the first step) costs 0.
    """
    out = df.copy()
    seconds = pd.to_numeric(out["train_seconds"], errors="coerce").fillna(0.0).clip(lower=0.0)
    rate = pd.to_numeric(out["examples_per_second"], errors="coerce").fillna(0.0)
    out["train_seconds"] = seconds
    out["examples_seen"] = (rate * seconds).round()
    out["train_flops"] = pd.to_numeric(out["flops"], errors="coerce").fillna(0.0) * out["examples_seen"]
    return out


def _run_order(df: pd.DataFrame) -> pd.DataFrame:
    # `started` has one-second resolution; written_at (microseconds, when the trial ended) breaks ties
    keys = [k for k in ("started", "written_at", "trial_id") if k in df.columns]
    return df.sort_values(keys, kind="stable", na_position="last")


def _selected(value: pd.Series, way: str) -> list[int]:
    """At each position, the position of the best ``value`` so far (a strictly better value replaces the choice, so
    ties keep the earliest); -1 before the first finite value."""
    out, best, chosen = [], math.nan, -1
    for i, v in enumerate(value.to_numpy(dtype=float)):
        if math.isfinite(v) and (chosen < 0 or (v > best if way == "max" else v < best)):
            best, chosen = v, i
        out.append(chosen)
    return out


def grid_curve(df: pd.DataFrame, metric: str = "metrics_val_acc", way: str = "max",
               score: str | None = None) -> pd.DataFrame:
    """The grid's trials in the order they ran, with cumulative compute and the best-so-far ``metric``.

    Args:
        df: the leaderboard (``Leaderboard.to_pandas()``), every status: a grid trial that diverged still cost
            its training time, and only completed trials count towards the best.
        metric: the column that selects (the accuracy the search saw, e.g. validation).
        way: "max" or "min", the metric's direction.
        score: a column reported for the selected trial (e.g. the held-out ``metrics_test_acc``); it never takes
            part in the selection.

    Returns:
        One row per grid trial that trained, per experiment in run order: experiment, trial_id, status,
        kernel_size, the metric, train_seconds, train_flops, cum_seconds, cum_flops, best_so_far (NaN until a
        completed trial) and order (1-based within the experiment); with ``score``, also that column and
        ``selected_trial`` / ``score_so_far``: the trial that is best on ``metric`` so far (ties: the earliest) and
        its score.
    """
    if way not in ("max", "min"):
        raise ValueError(f"`way` must be 'max' or 'min', but got {way!r}")
    grid = training_compute(df[df["params_conv"].isin(fixed_size_methods(df))])
    grid = grid[(grid["train_seconds"] > 0) | (grid["status"] == _COMPLETED)]
    parts = []
    for _, group in grid.groupby("experiment", sort=True):
        g = _run_order(group).copy()
        value = pd.to_numeric(g[metric], errors="coerce").where(g["status"] == _COMPLETED)
        g["value"] = value
        # cummax / cummin leave NaN where a trial did not complete: the best so far carries over it
        g["best_so_far"] = (value.cummax() if way == "max" else value.cummin()).ffill()
        g["cum_seconds"] = g["train_seconds"].cumsum()
        g["cum_flops"] = g["train_flops"].cumsum()
        g["order"] = range(1, len(g) + 1)
        if score is not None:
            at = _selected(value, way)
            g["selected_trial"] = [g["trial_id"].iloc[i] if i >= 0 else None for i in at]
            chosen = pd.to_numeric(g[score], errors="coerce").to_numpy(dtype=float)
            g["score_so_far"] = [chosen[i] if i >= 0 else math.nan for i in at]
        parts.append(g)
    columns = ["experiment", "order", "trial_id", "status", "params_kernel_size", "value", "train_seconds",
               "train_flops", "cum_seconds", "cum_flops", "best_so_far"]
    if score is not None:
        columns += ([score] if score != metric else []) + ["selected_trial", "score_so_far"]
    if not parts:
        return pd.DataFrame(columns=[c if c != "params_kernel_size" else "kernel_size" for c in columns])
    out = pd.concat(parts)[columns].rename(columns={"params_kernel_size": "kernel_size", "value": metric})
    return out.reset_index(drop=True)


def learned_points(df: pd.DataFrame, metric: str = "metrics_val_acc") -> pd.DataFrame:
    """Each completed run of a learned-size method (every method not in ``fixed_size_methods``), one row each:
    method, experiment, trial_id, the metric, train_seconds, train_flops; sorted by method and run order."""
    grid = fixed_size_methods(df)
    runs = df[df["params_conv"].notna() & ~df["params_conv"].isin(grid) & (df["status"] == _COMPLETED)]
    runs = _run_order(training_compute(runs))
    runs = runs[pd.to_numeric(runs[metric], errors="coerce").notna()]
    out = runs.rename(columns={"params_conv": "method"})[
        ["method", "experiment", "trial_id", metric, "train_seconds", "train_flops"]]
    return out.sort_values("method", kind="stable").reset_index(drop=True)


def grid_cost_to_reach(curve: pd.DataFrame, value: float, way: str = "max",
                       column: str = "best_so_far") -> dict[str, float] | None:
    """The grid's compute when its curve first reached ``value`` (>= for "max", <= for "min"):
    {"trials", "seconds", "flops"}, or None when it never did. ``curve``: one experiment's ``grid_curve``;
    ``column``: the curve read, ``best_so_far`` or (with a held-out score) ``score_so_far``."""
    best = curve[column]
    hit = curve[(best >= value) if way == "max" else (best <= value)]
    if hit.empty:
        return None
    first = hit.iloc[0]
    return {"trials": int(first["order"]), "seconds": float(first["cum_seconds"]), "flops": float(first["cum_flops"])}


def step_band(curves: Sequence[pd.DataFrame], x: str, y: str, level: float = 0.95,
              grid: Sequence[float] | None = None) -> pd.DataFrame:
    """The mean of several step curves (e.g. one grid search per seed) on one x grid, with a Student t band.

    Each curve is a step function of ``x`` (its points sorted by ``x``): at a grid point its value is the ``y`` of
    its last point at or before it, NaN before its first point, and its last value after its last point (a search
    that ended keeps its final answer). At each grid point the curves with a value are averaged; ``low`` / ``high``
    are the t interval of that mean at ``level`` (NaN where fewer than two curves have a value).

    Args:
        curves: one frame per repetition, each with columns ``x`` and ``y``.
        x: the compute column (e.g. ``cum_seconds``).
        y: the value column (e.g. ``score_so_far``).
        level: the band's confidence level.
        grid: the x grid; default: every x of every curve (where the mean of step functions changes).

    Returns:
        One row per grid point: ``x``, ``n`` (curves with a value), ``mean``, ``low``, ``high``.
    """
    from nas_flex.leaderboard.stats import t_quantile

    points = np.unique(np.concatenate([c[x].to_numpy(dtype=float) for c in curves])) if grid is None else grid
    points = np.asarray(points, dtype=float)
    values = np.full((len(curves), len(points)), np.nan)
    for i, c in enumerate(curves):
        c = c.sort_values(x, kind="stable")
        xs, ys = c[x].to_numpy(dtype=float), c[y].to_numpy(dtype=float)
        at = np.searchsorted(xs, points, side="right") - 1  # index of the last point at or before each grid x
        values[i] = np.where(at >= 0, ys[np.clip(at, 0, None)], np.nan) if len(xs) else np.nan
    n = np.isfinite(values).sum(axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a grid point no curve has reached yet
        mean = np.nanmean(values, axis=0)
        sd = np.nanstd(values, axis=0, ddof=1)
    q = np.array([t_quantile(1.0 - (1.0 - level) / 2.0, k - 1) if k >= 2 else np.nan for k in n])
    half = q * sd / np.sqrt(np.maximum(n, 1))
    return pd.DataFrame({"x": points, "n": n, "mean": mean, "low": mean - half, "high": mean + half})

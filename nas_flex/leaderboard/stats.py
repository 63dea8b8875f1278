"""Repeated measurement: one row per architecture (mean, spread, 95 % interval over its seeds) and paired
comparisons of two architectures, so that every ranking nas_flex prints says which differences are resolved.

numpy and pandas only (no scipy, no torch): the Student t quantile comes from the regularized incomplete beta
function below, checked against ``scipy.stats.t`` by the tests.

Which runs count:

* ``completed`` rows give the values (a ``duplicate`` row copies another trial's metrics: it is not a new
  measurement and is left out);
* a ``diverged``, ``oom`` or ``error`` row is a failed run: it is counted in ``failed`` and its architecture's line
  says so, but it has no value to average (its metrics are those of a broken model, or missing);
* a ``stopped`` row (ended early by ASHA) is counted in ``stopped`` and left out of the mean (a truncated run).

The interval is the two-sided Student t interval ``mean +- t(1 - (1 - level) / 2, n - 1) * sd / sqrt(n)``
(``sd`` with n - 1 in the denominator); with n = 1 ``sd`` and the bounds are NaN (one run says nothing of the
spread). Two architectures are compared by a paired t-test on their seeds in common (the difference per seed, its
t interval); without at least two shared seeds, by Welch's t interval of the two means; the difference is
*resolved* when its interval excludes 0 (a two-sided test at 1 - level), "not distinguishable at this budget"
otherwise.

Comparing every architecture with one reference is a family of tests: at 5 % each, eight comparisons of
architectures that are all equal to the reference find at least one "resolved" difference far more often than 5 %
of the time. ``holm_bonferroni`` corrects the family (Holm's step-down procedure, which keeps the chance of any false
"resolved" statement in the family at most 5 %); the printed ranking (``nas_flex.leaderboard.ranking``) says which
differences survive it and which are resolved at 5 % uncorrected only.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.record import TrialStatus, architecture_key

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["t_quantile", "t_interval", "t_two_sided_p", "holm_bonferroni", "by_architecture", "Comparison",
           "compare_runs", "compare_architectures", "ARCHITECTURE_COLUMNS", "LEVEL", "UNRESOLVED"]

#: the confidence level of every interval nas_flex prints
LEVEL = 0.95
#: what a comparison says when its interval contains 0
UNRESOLVED = "not distinguishable at this budget"
#: the columns ``by_architecture`` returns, in order (then the description columns it found)
ARCHITECTURE_COLUMNS = ("architecture_key", "n", "mean", "sd", "ci_low", "ci_high", "failed", "stopped", "seeds")
_FAILED = (TrialStatus.DIVERGED.value, TrialStatus.OOM.value, TrialStatus.ERROR.value)
# columns that describe an architecture, copied from its first row when present
_DESCRIBE = ("experiment", "params_conv", "params_kernel_size", "params_pooling", "params_backbone", "params_width",
             "params_depth", "flops", "params")


# ------------------------------------------------------------------------------------------- Student t quantile
def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < 3e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf_integer(t: float, df: int) -> float:
    """Student's t CDF for integer ``df`` by its finite series (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df)) if t else 0.0
    c, s = math.cos(theta) ** 2, math.sin(theta)
    term, total = 1.0, 1.0
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 c + 2.4/3.5 c^2 + ...))
        for k in range(1, (df - 1) // 2):
            term *= c * (2 * k) / (2 * k + 1)
            total += term
        a = 2.0 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: sin (1 + 1/2 c + 1.3/2.4 c^2 + ...)
        for k in range(1, df // 2):
            term *= c * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + 0.5 * a  # a carries the sign of t


def _t_cdf(t: float, df: float) -> float:
    if float(df).is_integer() and df <= 100_000:
        return _t_cdf_integer(t, int(df))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _t_pdf(t: float, df: float) -> float:
    log = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log - (df + 1) / 2 * math.log1p(t * t / df))


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (``scipy.stats.t.ppf``): Newton steps
    on its CDF inside a bisection bracket, to 1e-12.

    Example:
        >>> round(t_quantile(0.975, 2), 4)
        4.3027
    """
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, but got p={p!r}, df={df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    x = 0.5 * (low + high)
    for _ in range(200):
        err = _t_cdf(x, df) - p
        if abs(err) < 1e-15:
            break
        if err < 0:
            low = x
        else:
            high = x
        step = x - err / _t_pdf(x, df)
        x = step if low < step < high else 0.5 * (low + high)  # Newton when it stays in the bracket
        if high - low < 1e-12 * max(1.0, high):
            break
    return x


def t_two_sided_p(t: float, df: float) -> float:
    """The two-sided p-value of a Student t statistic ``t`` with ``df`` > 0 degrees of freedom, P(|T| >= |t|)
    (``2 * scipy.stats.t.sf(abs(t), df)``): the regularized incomplete beta ``I_x(df / 2, 1 / 2)`` at
    ``x = df / (df + t^2)``, accurate in the far tail too. An infinite ``t`` gives 0, a NaN gives NaN.

    Example:
        >>> round(t_two_sided_p(4.302652729, 2), 6)
        0.05
    """
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, _betainc(df / 2.0, 0.5, df / (df + t * t))))


def holm_bonferroni(p_values: Sequence[float], alpha: float = 1.0 - LEVEL) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction of a family of tests: (adjusted p-values, rejected) in the order given.

    The procedure, for the m finite p-values of the family: sort them, p_(1) <= ... <= p_(m); reject the
    hypotheses of p_(1), p_(2), ... while p_(k) <= alpha / (m - k + 1), and stop at the first k where it does not
    hold (that one and every larger p-value are not rejected). Equivalently, the adjusted p-value of p_(k) is
    max over j <= k of min(1, (m - j + 1) * p_(j)), and a hypothesis is rejected when its adjusted p-value is at
    most ``alpha``. The chance of rejecting any true hypothesis of the family is at most ``alpha``, whatever the
    dependence between the tests (Holm 1979); it rejects everything Bonferroni (``m * p <= alpha``) rejects, and
    sometimes more. A NaN p-value (a comparison without a test, e.g. too few runs) is not part of the family: its
    adjusted value is NaN and it is never rejected.

    Example:
        >>> holm_bonferroni([0.01, 0.04, 0.03])
        ([0.03, 0.06, 0.06], [True, False, False])
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"holm_bonferroni needs 0 < alpha < 1, but got alpha={alpha!r}")
    p = [float(v) if v is not None else math.nan for v in p_values]
    family = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m = len(family)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for k, (value, i) in enumerate(family):
        running = max(running, min(1.0, (m - k) * value))  # (m - k + 1) for the 1-based rank k + 1
        adjusted[i] = running
    return adjusted, [not math.isnan(a) and a <= alpha for a in adjusted]


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[int, float, float, float, float]:
    """(n, mean, sd, low, high) of the finite ``values``: the Student t interval of their mean at ``level``; with
    n = 1, sd and the bounds are NaN; with n = 0, everything but n is NaN."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    n = len(v)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if n == 1:
        return 1, mean, math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


# ---------------------------------------------------------------------------------------------- by architecture
def _keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's architecture key: its stored one, else (rows written before the column existed) computed from its
    config JSON."""
    keys = frame["architecture_key"].astype(object) if "architecture_key" in frame else None
    if keys is None:
        keys = frame.index.to_series(index=frame.index).map(lambda _: None)
    missing = keys.isna()
    if missing.any():
        if "config" not in frame:
            raise LeaderboardSchemaError("rows without an architecture_key need their `config` column to compute it")
        keys = keys.copy()
        keys[missing] = frame.loc[missing, "config"].map(lambda text: architecture_key(json.loads(text or "{}")))
    return keys


def by_architecture(frame: pd.DataFrame, metric: str, direction: str, *, level: float = LEVEL) -> pd.DataFrame:
    """One row per architecture of a leaderboard frame: ``n`` (completed runs with a value of ``metric``), ``mean``,
    ``sd``, the t interval ``ci_low`` / ``ci_high`` at ``level``, ``failed`` (diverged / oom / error runs),
    ``stopped`` (runs ASHA ended early), ``seeds`` (of the counted runs, sorted), then the description columns of
    its first row (experiment, params_conv, ...). Best mean first in ``direction``; architectures without a value
    last.

    Args:
        frame: leaderboard rows with ``status``, ``seed``, ``metric`` and ``architecture_key`` (or ``config``).
        metric: the metric column.
        direction: "max" or "min".
        level: the interval's confidence level.
    """
    import pandas as pd

    if direction not in ("max", "min"):
        raise LeaderboardSchemaError(f"`direction` must be 'max' or 'min', but got {direction!r}")
    if metric not in frame:
        raise LeaderboardSchemaError(f"unknown metric column {metric!r}")
    describe = [c for c in _DESCRIBE if c in frame]
    columns = [*ARCHITECTURE_COLUMNS, *describe]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    status = frame["status"].astype(str)
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    counted = (status == TrialStatus.COMPLETED.value) & np.isfinite(values)
    work = pd.DataFrame({
        "architecture_key": _keys(frame).to_numpy(), "value": values.where(counted).to_numpy(),
        "failed": status.isin(_FAILED).to_numpy(), "stopped": (status == TrialStatus.STOPPED.value).to_numpy(),
        "seed": frame["seed"].to_numpy() if "seed" in frame else np.nan,
    })
    for c in describe:
        work[c] = frame[c].to_numpy()
    groups = work.groupby("architecture_key", sort=False)
    out = groups.agg(n=("value", "count"), mean=("value", "mean"), sd=("value", "std"), failed=("failed", "sum"),
                     stopped=("stopped", "sum"), **{c: (c, "first") for c in describe})
    counted_seeds = work.loc[work["value"].notna() & pd.notna(work["seed"]), ["architecture_key", "seed"]]
    seeds = counted_seeds.astype({"seed": "int64"}).sort_values("seed", kind="stable").groupby("architecture_key")
    out["seeds"] = seeds["seed"].agg(list).reindex(out.index)
    out["seeds"] = out["seeds"].map(lambda s: s if isinstance(s, list) else [])
    out.loc[out["n"] < 2, "sd"] = math.nan
    tq = {n: t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) for n in out["n"].unique() if n >= 2}
    half = out["n"].map(lambda n: tq.get(n, math.nan)).astype(float) * out["sd"] / np.sqrt(out["n"].clip(lower=1))
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    out = out.reset_index().sort_values("mean", ascending=direction == "min", na_position="last", kind="stable")
    out[["n", "failed", "stopped"]] = out[["n", "failed", "stopped"]].astype(int)
    return out[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class Comparison:
    """The difference ``a - b`` of two architectures' means of one metric, with its interval.

    Attributes:
        a, b: the architecture keys.
        difference: mean of a minus mean of b (paired: the mean of the per-seed differences).
        ci_low, ci_high: its t interval at ``level`` (NaN when there are too few runs).
        n: seeds in common (paired) or runs of a and b (Welch).
        method: "paired t" or "Welch t" (or "too few runs").
        level: the confidence level.
        p_value: the two-sided p-value of the same t-test (NaN without one); ``resolved`` is ``p_value < 1 - level``
            up to rounding. Uncorrected: ``holm_bonferroni`` corrects a family of comparisons.
    """

    a: str
    b: str
    difference: float
    ci_low: float
    ci_high: float
    n: int | tuple[int, int]
    method: str
    level: float = LEVEL
    p_value: float = math.nan

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (a two-sided test at 1 - level rejects "no difference")."""
        return bool(math.isfinite(self.ci_low) and math.isfinite(self.ci_high)
                    and (self.ci_low > 0 or self.ci_high < 0))

    def __str__(self) -> str:
        if not math.isfinite(self.difference):
            return f"{self.a} - {self.b}: no values to compare"
        where = (f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}]" if math.isfinite(self.ci_low) else "[no interval]")
        verdict = "resolved" if self.resolved else UNRESOLVED
        return (f"{self.a} - {self.b}: {self.difference:+.4f} {where} ({self.method}, n={self.n}, "
                f"{self.level:.0%}): {verdict}")


def compare_runs(a: Mapping[int, float], b: Mapping[int, float], *, a_name: str = "a", b_name: str = "b",
                 level: float = LEVEL) -> Comparison:
    """Compare two architectures from their values by seed (``{seed: value}``, non-finite values left out):
    a paired t interval of the per-seed differences when at least two seeds are shared, else Welch's t interval of
    the difference of the means (when each has two runs or more), else no interval."""
    fa = {int(s): float(v) for s, v in a.items() if v is not None and math.isfinite(float(v))}
    fb = {int(s): float(v) for s, v in b.items() if v is not None and math.isfinite(float(v))}
    shared = sorted(set(fa) & set(fb))
    if len(shared) >= 2:
        n, mean, sd, low, high = t_interval([fa[s] - fb[s] for s in shared], level)
        return Comparison(a_name, b_name, mean, low, high, n, "paired t", level, _p(mean, sd / math.sqrt(n), n - 1))
    va, vb = np.array(list(fa.values())), np.array(list(fb.values()))
    diff = float(va.mean() - vb.mean()) if len(va) and len(vb) else math.nan
    if len(va) < 2 or len(vb) < 2:
        return Comparison(a_name, b_name, diff, math.nan, math.nan, (len(va), len(vb)), "too few runs", level)
    qa, qb = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
    se = math.sqrt(qa + qb)
    if se == 0:
        return Comparison(a_name, b_name, diff, diff, diff, (len(va), len(vb)), "Welch t", level, _p(diff, 0.0, 1))
    df = (qa + qb) ** 2 / (qa**2 / (len(va) - 1) + qb**2 / (len(vb) - 1))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, df) * se
    return Comparison(a_name, b_name, diff, diff - half, diff + half, (len(va), len(vb)), "Welch t", level,
                      _p(diff, se, df))


def _p(difference: float, se: float, df: float) -> float:
    """Two-sided p-value of ``difference / se`` on ``df`` degrees of freedom; a zero ``se`` gives 0 for a non-zero
    difference (no spread at all: every run differs by the same amount) and 1 for none."""
    if se == 0:
        return 0.0 if difference != 0 else 1.0
    return t_two_sided_p(difference / se, df)


def runs_by_seed(frame: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    """``{architecture_key: {seed: value}}`` of the completed runs of a leaderboard frame that have a value."""
    import pandas as pd

    keys = _keys(frame)
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    ok = (frame["status"].astype(str) == TrialStatus.COMPLETED.value) & np.isfinite(values) & frame["seed"].notna()
    out: dict[str, dict[int, float]] = {}
    for key, seed, value in zip(keys[ok], frame.loc[ok, "seed"], values[ok]):
        out.setdefault(str(key), {})[int(seed)] = float(value)
    return out


def compare_architectures(frame: pd.DataFrame, metric: str, a: str, b: str, *, level: float = LEVEL) -> Comparison:
    """``compare_runs`` of the architectures with keys ``a`` and ``b`` in a leaderboard frame."""
    runs = runs_by_seed(frame, metric)
    for key in (a, b):
        if key not in runs:
            raise LeaderboardSchemaError(f"no completed run of architecture {key!r} has a value of {metric!r}")
    return compare_runs(runs[a], runs[b], a_name=a, b_name=b, level=level)

"""Multiple comparisons: the Holm-Bonferroni correction on hand-made p-values with a known answer (against a
step-down reference written here), the t-tests' p-values against scipy, and the printed ranking saying which
differences survive the correction."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from nas_flex.leaderboard import write_trial
from nas_flex.leaderboard.ranking import format_by_architecture
from nas_flex.leaderboard.stats import compare_runs, holm_bonferroni, t_two_sided_p

BASE = {"backbone": "simple", "conv": "conv", "kernel_size": 3, "pooling": "max", "epochs": 2}


def _step_down(p: list[float], alpha: float) -> set[int]:
    """The indices Holm's procedure rejects, as stated: walk the p-values from the smallest, reject while
    p_(k) <= alpha / (m - k + 1), stop at the first that is not."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected: set[int] = set()
    for rank, i in enumerate(order, start=1):
        if p[i] > alpha / (len(p) - rank + 1):
            break
        rejected.add(i)
    return rejected


def test_holm_on_hand_made_p_values_with_a_known_answer():
    # m = 4: 0.005 <= 0.05/4 and 0.015 <= 0.05/3 are rejected; 0.03 > 0.05/2 stops the walk, so 0.04 (which
    # alone would pass 0.05/1) is not rejected either. Adjusted: 4 x 0.005, 3 x 0.015, 2 x 0.03, then max(0.06, 0.04)
    adjusted, rejected = holm_bonferroni([0.015, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.045, 0.06, 0.06, 0.02])
    assert rejected == [True, False, False, True]
    # Bonferroni (m * p <= alpha) would reject 0.005 only (4 x 0.015 = 0.06): Holm rejects more here
    assert [4 * p <= 0.05 for p in (0.015, 0.04, 0.03, 0.005)] == [False, False, False, True]
    # NaN is no test: left out of the family (m = 2 here), never rejected
    adjusted, rejected = holm_bonferroni([0.02, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert rejected == [True, False, True]
    assert holm_bonferroni([]) == ([], [])
    assert holm_bonferroni([0.7, 0.9])[0] == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    with pytest.raises(ValueError, match="alpha"):
        holm_bonferroni([0.1], alpha=0.0)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_holm_rejects_what_the_step_down_procedure_rejects(alpha):
    rng = random.Random(7)
    for _ in range(300):
        m = rng.randint(1, 9)
        p = [rng.choice([rng.random() * 0.1, rng.random()]) for _ in range(m)]
        _, rejected = holm_bonferroni(p, alpha)
        assert {i for i, r in enumerate(rejected) if r} == _step_down(p, alpha)


def test_p_values_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = {0: 0.91, 1: 0.93, 2: 0.95, 3: 0.90}
    b = {0: 0.88, 1: 0.91, 2: 0.92, 3: 0.88}
    paired = compare_runs(a, b)
    assert paired.p_value == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    noisy_a, noisy_b = {0: 0.90, 1: 0.95, 2: 0.92}, {0: 0.93, 1: 0.91, 2: 0.92}
    noisy = compare_runs(noisy_a, noisy_b)
    assert noisy.p_value == pytest.approx(scipy_stats.ttest_rel([0.90, 0.95, 0.92], [0.93, 0.91, 0.92]).pvalue)
    assert not noisy.resolved and noisy.p_value > 0.05
    welch = compare_runs({0: 0.9, 1: 0.91, 2: 0.92}, {5: 0.5, 6: 0.52, 7: 0.51})
    expect = scipy_stats.ttest_ind([0.9, 0.91, 0.92], [0.5, 0.52, 0.51], equal_var=False).pvalue
    assert welch.method == "Welch t" and welch.p_value == pytest.approx(expect, rel=1e-6)
    for t, df in [(0.3, 1), (2.0, 2), (4.3, 2), (12.0, 5), (40.0, 3), (2.5, 7.3)]:
        assert t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9)
    assert math.isnan(compare_runs({0: 0.9}, {0: 0.5}).p_value)  # too few runs: no test


def _board(path: Path, runs: dict[str, tuple[dict, list[float]]]) -> Path:
    i = 0
    for config, values in runs.values():
        for seed, acc in enumerate(values):
            write_trial(path, {"status": "completed", "config": {**config, "seed": seed},
                               "metrics": {"val_acc": acc, "val_loss": 1.0, "train_loss": 1.0, "train_acc": 0.5}},
                        experiment="e", trial_id=f"t{i:03d}")
            i += 1
    return path


def test_ranking_says_which_differences_survive_the_correction(tmp_path):
    grid = [0.90, 0.92, 0.94]
    runs = {"grid": (BASE, grid),
            "njet": ({**BASE, "conv": "njet"}, [0.96, 0.975, 0.99]),  # +6, +5.5, +5 points: p = 0.003
            "flexconv": ({**BASE, "conv": "flexconv"}, [0.92, 0.95, 0.98]),  # +2, +3, +4 points: p = 0.035
            "niff": ({**BASE, "conv": "niff"}, [0.93, 0.89, 0.95])}  # noise around the grid
    p = {k: compare_runs(dict(enumerate(v)), dict(enumerate(grid))).p_value
         for k, (_, v) in runs.items() if k != "grid"}
    # the premise: flexconv's own test rejects at 5 % but not Holm's second step (0.05 / 2); njet's passes 0.05 / 3
    assert p["njet"] < 0.05 / 3 and 0.05 / 2 < p["flexconv"] < 0.05 and p["niff"] > 0.05
    text = format_by_architecture(_board(tmp_path, runs))
    lines = {name: next(ln for ln in text.splitlines() if f" {name} k=3" in ln)
             for name in ("njet", "flexconv", "niff")}
    assert "resolved (Holm;" in lines["njet"]
    assert "resolved at 5% uncorrected only" in lines["flexconv"]
    assert "not distinguishable at this budget" in lines["niff"]
    assert "[+0.0" in lines["flexconv"]  # the uncorrected interval is still printed
    assert ("Resolved ahead of the grid's best (conv k=3 pool=max): njet k=3 pool=max; resolved behind it: none "
            "(Holm-Bonferroni over 3 comparisons, 5% family-wise); resolved at 5% uncorrected only: "
            "flexconv k=3 pool=max (ahead)") in text


def test_the_family_is_the_methods_against_the_grid_not_the_grids_own_points(tmp_path):
    """Two more grid points (conv 5x5, 7x7) below the grid's best are compared with it, uncorrected, but are not in
    the Holm family: the family stays the 3 methods, and the same methods survive as without those points."""
    grid = [0.90, 0.92, 0.94]
    runs = {"grid": (BASE, grid),
            "grid5": ({**BASE, "kernel_size": 5}, [0.89, 0.91, 0.93]),
            "grid7": ({**BASE, "kernel_size": 7}, [0.80, 0.815, 0.83]),  # far below: its own test rejects
            "njet": ({**BASE, "conv": "njet"}, [0.96, 0.975, 0.99]),
            "flexconv": ({**BASE, "conv": "flexconv"}, [0.92, 0.95, 0.98]),
            "niff": ({**BASE, "conv": "niff"}, [0.93, 0.89, 0.95])}
    from nas_flex.leaderboard import Leaderboard
    from nas_flex.leaderboard.ranking import rank_architectures

    ranking = rank_architectures(Leaderboard(_board(tmp_path, runs)).to_pandas(), "metrics_val_acc", "max")
    assert ranking.family_size == 3
    text = format_by_architecture(tmp_path)
    assert "(Holm-Bonferroni over 3 comparisons, 5% family-wise)" in text
    assert "Resolved ahead of the grid's best (conv k=3 pool=max): njet k=3 pool=max" in text
    grid7 = next(ln for ln in text.splitlines() if " conv k=7" in ln)
    assert "Holm p" not in grid7 and "uncorrected only" in grid7  # compared, described, not a claim of the family

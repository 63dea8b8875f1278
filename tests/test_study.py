"""The grid-vs-learned study on hand-made leaderboards: selection on validation only, scores on the held-out test
split, curves and shares with t intervals over seeds (expected numbers worked out by hand), the study's budget."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from experiments import grid_vs_learned_study as study
from nas_flex.report.curves import step_band

T975_2 = 4.3027  # Student t, 97.5 % quantile, 2 degrees of freedom (printed tables): 3 seeds
T975_1 = 12.7062  # 1 degree of freedom: 2 seeds


def _row(experiment: str, i: int, conv: str, val: float, test: float, seconds: float, flops: float = 1e6,
         status: str = "completed", pooling=("max", "max")) -> dict:
    return {"experiment": experiment, "trial_id": f"{experiment}-{i}", "status": status,
            "started": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i),
            "written_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i, seconds=30),
            "params_conv": conv, "params_kernel_size": None, "metrics_val_acc": val, "metrics_test_acc": test,
            "metrics_test_loss": 1.0 - test, "train_seconds": seconds, "examples_per_second": 100.0,
            "flops": flops, "config": json.dumps({"pooling": list(pooling), "epochs": 10, "batch_size": 32,
                                                   "test_fraction": 0.2}),
            "seed": int(experiment.split("--s")[1][0]) if "--s" in experiment else 0,
            # what a trial writes: no size record for the fixed-size conv, one per learned-size layer otherwise
            "learned_sizes_json": "[]" if conv == "conv" else json.dumps(
                [{"name": "features.0", "kind": conv, "height": 3.0, "width": 3.0, "learns_size": True}])}


NAN = float("nan")
# the TPE grid per seed, three trials of 10 s each: (validation, test). Seed 0's third trial is the best on test
# (0.95) but ties the second on validation, so the earlier one stays selected; seed 1's curve falls (its third
# trial is best on validation, worse on test); seed 2's third trial diverged (it still costs its 10 s).
GRID = {0: [(0.80, 0.70), (0.90, 0.85), (0.90, 0.95)],
        1: [(0.85, 0.80), (0.80, 0.99), (0.95, 0.75)],
        2: [(0.70, 0.60), (0.90, 0.80), (NAN, NAN)]}
GRID_SCORE = {0: [0.70, 0.85, 0.85], 1: [0.80, 0.80, 0.75], 2: [0.60, 0.80, 0.80]}  # selected on validation
# learned runs per seed: (method, validation, test, seconds); N-Jet at 2e6 FLOPs per example, the rest at 1e6
LEARNED = {0: [("njet", 0.91, 0.90, 12.0), ("flexconv", 0.95, 0.60, 20.0)],
           1: [("njet", 0.80, 0.78, 15.0), ("flexconv", 0.50, 0.95, 20.0)],
           2: [("njet", 0.72, 0.70, 5.0), ("flexconv", 0.72, 0.65, 20.0)]}  # a tie on validation: the earlier
RETRAIN = {0: 0.64, 1: 0.76, 2: 0.73}  # discretised from flexconv (seed 0: best on validation), njet, njet


def _board() -> pd.DataFrame:
    rows = []
    for seed, trials in GRID.items():
        for i, (val, test) in enumerate(trials):
            rows.append(_row(f"grid-tpe--digits--s{seed}", i, "conv", val, test, 10.0,
                             status="diverged" if math.isnan(val) else "completed"))
    for seed, runs in LEARNED.items():
        for i, (method, val, test, seconds) in enumerate(runs):
            rows.append(_row(f"learned--digits--s{seed}", i, method, val, test, seconds,
                             flops=2e6 if method == "njet" else 1e6))
        rows.append(_row(f"discretised--digits--s{seed}", 9, "conv", 0.5, RETRAIN[seed], 8.0))
    rows.append(_row("learned--digits--s0", 5, "njet", 0.80, 0.88, 6.0, pooling=("safe", "safe")))
    rows.append(_row("someone-else", 0, "conv", 0.99, 0.99, 1.0))  # not a study experiment: ignored
    return pd.DataFrame(rows)


def _t(values: list[float], q: float = T975_2) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    half = q * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def test_experiment_names_round_trip():
    assert study.parse_experiment(study.experiment_name("grid-tpe", "digits-multiscale", 2)) == (
        "grid-tpe", "digits-multiscale", 2)
    assert study.parse_experiment("grid_vs_learned-20260101") is None
    assert study.parse_experiment(study.experiment_name("learned", "digits", 0, "cfconv")) == ("learned", "digits", 0)


def test_the_grid_curve_reports_the_test_score_of_the_trial_best_on_validation():
    table, curves = study.summarise(_board())
    curve = curves["digits/grid-tpe"]
    for seed, scores in GRID_SCORE.items():
        own = curve[curve["seed"] == seed]
        assert own["score_so_far"].tolist() == pytest.approx(scores)
        assert own["cum_seconds"].tolist() == [10.0, 20.0, 30.0]  # the diverged trial is charged
    s0 = curve[curve["seed"] == 0]["selected_trial"].tolist()
    assert s0 == ["grid-tpe--digits--s0-0", "grid-tpe--digits--s0-1", "grid-tpe--digits--s0-1"]  # tie: the earlier
    grid = table.set_index("method").loc["grid (tpe, 3 trials)"]
    assert grid["score"] == "metrics_test_acc" and grid["seeds"] == 3
    # final scores 0.85, 0.75, 0.80: mean 0.80, sd 0.05, half-width t(0.975, 2) x 0.05 / sqrt(3) = 0.1242
    assert (grid["acc_mean"], grid["acc_low"], grid["acc_high"]) == pytest.approx((0.80, 0.6758, 0.9242), abs=1e-4)
    assert grid["seconds"] == pytest.approx(30.0)


def test_shares_gaps_and_the_retrain_with_intervals_over_seeds():
    table, _ = study.summarise(_board())
    by = table.set_index("method")
    njet = by.loc["njet"]
    assert (njet["acc_mean"], njet["acc_low"], njet["acc_high"]) == pytest.approx(_t([0.90, 0.78, 0.70]), abs=1e-4)
    # seed 0: above the grid's final 0.85, reached by the grid at 20 s: 12 / 20; seed 1: the grid's curve first
    # reached min(0.78, 0.75) = 0.75 at its first trial (10 s): 15 / 10; seed 2: 0.70 first reached at 20 s: 5 / 20
    # a share is a ratio: geometric mean, t interval on the log scale (positive, symmetric in 1/x)
    assert njet["share_seconds_mean"] == pytest.approx((0.6 * 1.5 * 0.25) ** (1 / 3))
    logs = _t([math.log(0.6), math.log(1.5), math.log(0.25)])
    assert (njet["share_seconds_low"], njet["share_seconds_high"]) == pytest.approx(
        (math.exp(logs[1]), math.exp(logs[2])), rel=1e-3)
    assert 0 < njet["share_seconds_low"] < njet["share_seconds_mean"] < njet["share_seconds_high"]
    assert njet["share_flops_mean"] == pytest.approx(2 * (0.6 * 1.5 * 0.25) ** (1 / 3))  # twice the FLOPs per example
    # against the grid's whole search (30 s per seed): 12, 15 and 5 s of the run
    assert njet["whole_seconds_mean"] == pytest.approx((12 / 30 * 15 / 30 * 5 / 30) ** (1 / 3))
    # gap = grid's final - run, points: -5, -3, +10; paired over seeds, not resolved
    assert (njet["gap_mean"], njet["gap_low"], njet["gap_high"]) == pytest.approx(_t([-5.0, -3.0, 10.0]), abs=1e-3)
    assert not njet["resolved"] and njet["diff_method"] == "paired t"
    safe = by.loc["njet (safe-subsampling)"]  # one seed: a mean, no interval
    assert safe["seeds"] == 1 and safe["share_seconds_mean"] == pytest.approx(6.0 / 20.0)
    assert math.isnan(safe["acc_low"]) and math.isnan(safe["gap_low"])
    retrain = by.loc["discretised conv"]
    # retrain - the learned run best on validation: 0.64 - 0.60 (flexconv), 0.76 - 0.78, 0.73 - 0.70 (njet)
    assert (retrain["keep_diff"], retrain["keep_low"], retrain["keep_high"]) == pytest.approx(
        _t([0.04, -0.02, 0.03]), abs=1e-4)
    assert not retrain["keep_resolved"]
    assert "someone-else" not in set(table["method"])
    text = study.markdown(table)
    assert "| njet | 3 | 0.793 [0.543, 1.043] |" in text
    assert ("retrain - learned run +1.7 [-6.3, +9.7] pts (paired t): keeps its learned run's accuracy (not "
            "distinguishable at this budget)") in text
    assert "| njet (safe-subsampling) | 1 | 0.880 | 6 | 0.6 | 30 / 30 | +3.0 |" in text  # one seed: no interval
    assert "test accuracy (held out)" in text


def test_the_readme_table_gives_each_method_its_difference_verdict_and_share():
    table, _ = study.summarise(_board())
    lines = study.readme_table(table).splitlines()
    assert lines[0].startswith("| method | digits: test acc [95 % CI] | run - grid, pts [95 % CI]: verdict |")
    assert lines[2] == "| grid (tpe, 3 trials) | 0.800 [0.676, 0.924] | (the grid) |  |"
    # run - grid, points: +5, +3, -10 (the sign of the study table's gap, flipped: positive is ahead)
    lo, hi = _t([5.0, 3.0, -10.0])[1:]
    njet = next(line for line in lines if line.startswith("| njet |"))
    assert njet.startswith(f"| njet | 0.793 [0.543, 1.043] | -0.7 [{lo:+.1f}, {hi:+.1f}]: not distinguishable | 61 [")
    assert "| njet (safe-subsampling) | 0.880 | +3.0: too few seeds to test | 30 |" in lines
    assert lines[-1].startswith("| discretised and retrained |")


def test_changing_test_scores_never_changes_a_selection():
    board = _board()
    _, curves = study.summarise(board)
    selected = curves["digits/grid-tpe"]["selected_trial"].tolist()
    sources = {s: study.discretise_source(board[board["experiment"] == f"learned--digits--s{s}"])["trial_id"]
               for s in GRID}
    assert sources == {0: "learned--digits--s0-1", 1: "learned--digits--s1-0", 2: "learned--digits--s2-0"}
    rng = np.random.default_rng(0)
    for _ in range(6):
        other = board.copy()
        other["metrics_test_acc"] = rng.uniform(0, 1, len(other))
        table, changed = study.summarise(other)
        assert changed["digits/grid-tpe"]["selected_trial"].tolist() == selected
        assert {s: study.discretise_source(other[other["experiment"] == f"learned--digits--s{s}"])["trial_id"]
                for s in GRID} == sources
        # the grid's reported score is the new test score of the same (validation-chosen) final trial
        final = other.set_index("trial_id")["metrics_test_acc"]
        expected = statistics.fmean(final[selected[i]] for i in (2, 5, 8))
        assert table.set_index("method").loc["grid (tpe, 3 trials)", "acc_mean"] == pytest.approx(expected)


def test_without_a_test_split_the_scores_fall_back_to_validation_with_a_warning(capsys):
    table, curves = study.summarise(_board().drop(columns=["metrics_test_acc"]))
    assert "not held out" in capsys.readouterr().out
    assert set(table["score"]) == {"metrics_val_acc"}
    grid = table.set_index("method").loc["grid (tpe, 3 trials)"]
    assert grid["acc_mean"] == pytest.approx((0.90 + 0.95 + 0.90) / 3)
    assert "NOT held out" in study.markdown(table)


def test_step_band_by_hand():
    curves = study.curve_bands(study.summarise(_board())[1], "cum_seconds")["digits/grid-tpe"]
    assert curves["x"].tolist() == [10.0, 20.0, 30.0] and curves["n"].tolist() == [3, 3, 3]
    assert curves["mean"].tolist() == pytest.approx([0.70, 0.81667, 0.80], abs=1e-5)
    # at 10 s: 0.70, 0.80, 0.60 (sd 0.1); at 30 s: 0.85, 0.75, 0.80 (sd 0.05)
    assert curves["high"].tolist()[0] == pytest.approx(0.70 + T975_2 * 0.1 / math.sqrt(3), abs=1e-4)
    assert curves["low"].tolist()[2] == pytest.approx(0.80 - T975_2 * 0.05 / math.sqrt(3), abs=1e-4)
    # curves on different x: a curve is NaN before its first point and keeps its last value after its last
    a = pd.DataFrame({"x": [1.0, 3.0], "y": [1.0, 2.0]})
    b = pd.DataFrame({"x": [2.0], "y": [5.0]})
    band = step_band([a, b], "x", "y")
    assert band["x"].tolist() == [1.0, 2.0, 3.0] and band["n"].tolist() == [1, 2, 2]
    assert band["mean"].tolist() == pytest.approx([1.0, 3.0, 3.5])
    assert math.isnan(band["low"].iloc[0])  # one curve: no band
    assert band["high"].iloc[1] == pytest.approx(3.0 + T975_1 * math.sqrt(8) / math.sqrt(2), abs=1e-3)


def test_figure_is_written(tmp_path):
    table, curves = study.summarise(_board())
    study.figure(table, curves, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000


def test_only_finished_dataset_seed_pairs_are_analysed():
    board = _board()
    kept = study.complete_runs(board[board["experiment"] != "discretised--digits--s1"])
    # seed 1 has no discretised retrain (the study's last step): it was interrupted, its partial grid is left out
    assert not any("--s1" in e for e in kept["experiment"]) and any("--s2" in e for e in kept["experiment"])


def test_defaults_give_the_budget_that_can_answer_and_quick_keeps_a_smoke_run():
    args = study.parse_args([])
    assert (args.grid_trials, args.epochs, args.batch_size, args.test_fraction) == (30, 13, 32, 0.2)
    # 13 epochs: the fewest that give the main job's optimizer steps (10 epochs of 45 batches of the whole training
    # split) on the 1151 examples the test split leaves (36 batches)
    steps = study.steps_per_epoch("digits-multiscale", 32, 0.2)
    assert steps == 36 and study.steps_per_epoch("digits-multiscale", 32, None) == 45
    assert 12 * steps < 10 * 45 <= 13 * steps
    assert study.parse_args(["--test-fraction", "0"]).epochs == 10
    assert args.seeds == [0, 1, 2] and args.datasets == ["digits-multiscale", "digits-scaleshift"]
    assert "cfconv" in args.methods and args.grid_trials > study.TPE_STARTUP
    # per (dataset, seed): 2 x 30 grid trials, 6 methods + N-Jet's safe-subsampling, 1 retrain
    assert sum(n for _, n in study.plan(args)) == 6 * (60 + 7 + 1)
    assert "408 trials, 0 already in runs/study-heldout, 408 to train at 13 epochs of batch 32" in study.estimate(
        args, pd.DataFrame(columns=["experiment"]))
    quick = study.parse_args(["--quick"])
    assert (quick.grid_trials, quick.epochs, len(quick.seeds), len(quick.datasets)) == (2, 2, 1, 1)
    assert quick.storage == "runs/study-quick"
    with pytest.raises(SystemExit, match="--test-fraction must be in"):
        study.parse_args(["--test-fraction", "1.5"])


def test_a_storage_at_another_budget_is_refused_before_anything_runs():
    from nas_flex.errors import StorageError

    args = study.parse_args(["--datasets", "digits", "--seeds", "0", "1", "2", "--epochs", "10"])
    board = _board()
    # 3 x 68 planned; in the board: 9 grid trials, 7 learned runs, 3 retrains (212 s of training in all)
    assert ("204 trials, 19 already in runs/study-heldout, 185 to train at 10 epochs of batch 32; about 0.6 h of "
            "training at the 19 stored trials' mean 11 s") in study.estimate(args, board)
    if study.test_split_supported():
        study.check_budget(board, args)  # the same budget: resumes
    old = board.assign(config=json.dumps({"pooling": ["max", "max"], "epochs": 6, "batch_size": 64}))
    with pytest.raises(StorageError, match="trained with epochs=6, but this study asks epochs=10"):
        study.check_budget(old, args)


def test_tpe_and_random_arms_differ_after_the_start_up_trials():
    pytest.importorskip("optuna")
    from nas_flex.spaces import load_space
    from nas_flex.tune.searcher import optuna_searcher

    space = load_space(study.GRID_SPACE)
    drawn = {}
    for sampler in ("tpe", "random"):
        searcher = optuna_searcher(space, {"val_acc": "max"}, sampler, 0, study_name=sampler)
        configs = []
        for i in range(16):
            config = searcher.suggest(f"t{i}")["nas_flex_config"]
            configs.append((tuple(config["kernel_size"]), tuple(config["pooling"])))
            value = 1.0 - sum(config["kernel_size"]) / 28 + 0.1 * (config["pooling"][0] == "avg")
            searcher.on_trial_complete(f"t{i}", {"val_acc": value, "status": "completed", "epoch": 1, "epochs": 1})
        drawn[sampler] = configs
    start = study.TPE_STARTUP
    assert drawn["tpe"][:start] == drawn["random"][:start]  # the start-up draws: the same architectures
    assert sum(a != b for a, b in zip(drawn["tpe"][start:], drawn["random"][start:])) >= 4


def test_the_learned_methods_against_the_grid_are_corrected_as_one_family_by_holm():
    # p-values 0.01, 0.04, 0.03 (all below 5 % alone): Holm's step-down adjusts them to 0.03, 0.06, 0.06, so only
    # the first survives; the retrain's comparison (p 0.001) is not part of the learned methods' family
    rows = [{"dataset": "digits", "arm": "learned", "method": m, "p_value": p, "resolved": True, "diff": -0.05,
             "diff_method": "paired t"} for m, p in (("njet", 0.01), ("flexconv", 0.04), ("niff", 0.03))]
    rows.append({"dataset": "digits", "arm": "discretised", "method": "discretised conv", "p_value": 0.001,
                 "resolved": True, "diff": -0.05, "diff_method": "paired t"})
    rows.append({"dataset": "other", "arm": "learned", "method": "njet", "p_value": 0.04, "resolved": True,
                 "diff": -0.05, "diff_method": "paired t"})  # a family of one in its own dataset: kept
    table = study._holm(pd.DataFrame(rows))
    assert table["resolved_holm"].tolist() == [True, False, False, False, True]
    verdicts = [study._verdict(r) for _, r in table.iterrows()]
    assert "uncorrected" not in verdicts[0] and "uncorrected" not in verdicts[4]
    assert "at 5 % uncorrected only (not after Holm over the 3 methods)" in verdicts[1]

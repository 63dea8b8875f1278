"""The grid-vs-learned study's arithmetic on a hand-made leaderboard: best-so-far, compute shares, gaps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from experiments import grid_vs_learned_study as study


def _row(experiment: str, i: int, conv: str, acc: float, seconds: float, flops: float = 1e6,
         status: str = "completed", pooling=("max", "max")) -> dict:
    return {"experiment": experiment, "trial_id": f"{experiment}-{i}", "status": status,
            "started": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i),
            "written_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i, seconds=30),
            "params_conv": conv, "params_kernel_size": None, "metrics_val_acc": acc, "train_seconds": seconds,
            "examples_per_second": 100.0, "flops": flops, "config": json.dumps({"pooling": list(pooling)}),
            # what a trial writes: no size record for the fixed-size conv, one per learned-size layer otherwise
            "learned_sizes_json": "[]" if conv == "conv" else json.dumps(
                [{"name": "features.0", "kind": conv, "height": 3.0, "width": 3.0, "learns_size": True}])}


def _board() -> pd.DataFrame:
    rows = [
        # the TPE grid, seed 0: best 0.90 reached at its 2nd trial (10 + 20 = 30 s); a diverged trial still costs
        _row("grid-tpe--digits--s0", 0, "conv", 0.80, 10.0),
        _row("grid-tpe--digits--s0", 1, "conv", 0.90, 20.0, flops=2e6),
        _row("grid-tpe--digits--s0", 2, "conv", float("nan"), 5.0, status="diverged"),
        _row("grid-tpe--digits--s0", 3, "conv", 0.85, 10.0),
        # seed 1: best 0.70 at 10 s
        _row("grid-tpe--digits--s1", 0, "conv", 0.70, 10.0),
        _row("grid-tpe--digits--s1", 1, "conv", 0.60, 10.0),
        _row("learned--digits--s0", 0, "njet", 0.897, 12.0),  # within 0.5 points of 0.90
        _row("learned--digits--s1", 0, "njet", 0.60, 5.0),  # 10 points below 0.70
        _row("learned--digits--s0", 1, "njet", 0.95, 6.0, pooling=("safe", "safe")),
        _row("learned--digits--s0", 2, "flexconv", 0.80, 40.0),
        _row("discretised--digits--s0", 0, "conv", 0.91, 8.0),
        _row("someone-else", 0, "conv", 0.99, 1.0),  # not a study experiment: ignored
    ]
    return pd.DataFrame(rows)


def test_experiment_names_round_trip():
    assert study.parse_experiment(study.experiment_name("grid-tpe", "digits-multiscale", 2)) == (
        "grid-tpe", "digits-multiscale", 2)
    assert study.parse_experiment("grid_vs_learned-20260101") is None
    assert study.parse_experiment(study.experiment_name("learned", "digits", 0, "cfconv")) == ("learned", "digits", 0)


def test_summary_charges_the_grid_in_run_order_and_compares_each_learned_run():
    table, curves = study.summarise(_board())
    by = table.set_index("method")
    grid = by.loc["grid (tpe, 4 trials)"]
    assert grid["acc_mean"] == pytest.approx((0.90 + 0.70) / 2)
    assert grid["seconds"] == pytest.approx((45.0 + 20.0) / 2)  # whole searches, diverged trial included
    curve = curves["digits/grid-tpe"]
    s0 = curve[curve["seed"] == 0]
    assert s0["best_so_far"].tolist() == [0.80, 0.90, 0.90, 0.90]
    assert s0["cum_seconds"].tolist() == [10.0, 30.0, 35.0, 45.0]

    njet = by.loc["njet"]
    assert njet["matched"] == "1/2"  # seed 0 within 0.5 points; seed 1 ten points below
    assert njet["share_seconds"] == pytest.approx(12.0 / 30.0)  # vs the grid's cost to reach its best
    # FLOPs x examples: 12 s x 100 ex/s x 1e6 against (10 x 100 x 1e6 + 20 x 100 x 2e6)
    assert njet["share_flops"] == pytest.approx(12 * 100 * 1e6 / (10 * 100 * 1e6 + 20 * 100 * 2e6))
    assert njet["gap"] == pytest.approx(((0.90 - 0.897) + (0.70 - 0.60)) / 2 * 100)
    assert by.loc["njet (safe-subsampling)"]["share_seconds"] == pytest.approx(6.0 / 30.0)
    flex = by.loc["flexconv"]
    assert flex["matched"] == "0/1" and math.isnan(flex["share_seconds"]) and flex["gap"] == pytest.approx(10.0)
    assert by.loc["discretised conv"]["matched"] == "1/1"
    assert "someone-else" not in set(table["method"])
    text = study.markdown(table)
    assert "matches in 1/2 seeds at 40 % of the grid's seconds" in text and "mean gap 5.1 pts" in text
    assert "mean lead 1.0 pts" in text  # the discretised retrain: 0.91 against the grid's 0.90
    assert "below in every seed: gap 10.0 pts" in text
    # each learned method against the grid's best of the same seed, paired: njet's two seeds differ by -0.3 and
    # -10 points, too spread to resolve; flexconv has one seed, so no interval at all
    assert njet["diff"] == pytest.approx(-njet["gap"] / 100) and not njet["resolved"]
    assert "paired t over seeds: -5.1 pts" in text and "not distinguishable at this budget" in text
    assert "paired over seeds: not distinguishable at this budget (too few runs)" in text


def test_figure_is_written(tmp_path):
    table, curves = study.summarise(_board())
    study.figure(table, curves, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000


def test_only_finished_dataset_seed_pairs_are_analysed():
    kept = study.complete_runs(_board())
    # seed 1 has no discretised retrain (the study's last step): it was interrupted, its partial grid is left out
    assert set(kept["experiment"]) == {"grid-tpe--digits--s0", "learned--digits--s0", "discretised--digits--s0"}

"""Repeated measurement: derived seeds, the architecture key, the sampler seeing one mean per architecture, the
statistics on hand-made rows with known answers (against scipy), the printed ranking, and resume of a repeated
search on the embedded local Ray."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats

from nas_flex.leaderboard import Leaderboard, trial_file_name, write_trial
from nas_flex.leaderboard.ranking import format_by_architecture
from nas_flex.leaderboard.schema import trial_table
from nas_flex.leaderboard.stats import compare_runs, t_interval, t_quantile
from nas_flex.record import architecture_key, derive_seeds

BASE = {"backbone": "simple", "conv": "conv", "kernel_size": 3, "pooling": "max", "epochs": 2}


def _row(config: dict, seed: int, acc: float | None, status: str = "completed") -> dict:
    return {"status": status, "config": {**config, "seed": seed},
            "metrics": {"val_acc": acc, "val_loss": 1.0, "train_loss": 1.0, "train_acc": 0.5}}


def _board(tmp_path: Path, runs: list[tuple[dict, int, float | None, str]], experiment: str = "e") -> Leaderboard:
    for i, (config, seed, acc, status) in enumerate(runs):
        write_trial(tmp_path, _row(config, seed, acc, status), experiment=experiment, trial_id=f"t{i:03d}")
    return Leaderboard(tmp_path)


# ------------------------------------------------------------------------------------------- seeds and the key
def test_derived_seeds_are_deterministic_distinct_and_start_at_the_experiment_seed():
    seeds = derive_seeds(7, 5)
    assert seeds == derive_seeds(7, 5) and len(set(seeds)) == 5 and seeds[0] == 7
    assert all(0 <= s < 2**31 for s in seeds)
    assert derive_seeds(7, 3) == seeds[:3]  # more repeats extend the list, they do not reshuffle it
    assert derive_seeds(8, 3)[1:] != seeds[1:3]  # another experiment seed, other seeds
    with pytest.raises(ValueError, match="repeats"):
        derive_seeds(0, 0)


def test_rows_of_one_architecture_share_the_key_and_different_architectures_differ(tmp_path):
    other = {**BASE, "kernel_size": 5}
    df = _board(tmp_path, [(BASE, 0, 0.5, "completed"), (BASE, 11, 0.6, "completed"),
                           (other, 0, 0.7, "completed")]).to_pandas().set_index("trial_id")
    assert df.loc["t000", "architecture_key"] == df.loc["t001", "architecture_key"]
    assert df.loc["t000", "architecture_key"] != df.loc["t002", "architecture_key"]
    assert df.loc["t000", "config_key"] != df.loc["t001", "config_key"]  # dedupe still tells the seeds apart
    assert df.loc["t000", "architecture_key"] == architecture_key({**BASE, "seed": 123})


def test_a_storage_written_before_the_key_existed_still_reads_and_groups(tmp_path):
    for i, seed in enumerate((0, 1)):  # rows as an older nas_flex wrote them: no architecture_key column
        table = trial_table(_row(BASE, seed, 0.5 + 0.1 * i), experiment="old", trial_id=f"o{i}",
                            written_at=datetime.now(timezone.utc))
        pq.write_table(table.drop_columns(["architecture_key"]), tmp_path / trial_file_name("old", f"o{i}"))
    lb = Leaderboard(tmp_path)
    df = lb.to_pandas()
    assert len(df) == 2 and df["architecture_key"].isna().all()
    table = lb.by_architecture()
    assert len(table) == 1 and table["n"].iloc[0] == 2 and table["mean"].iloc[0] == pytest.approx(0.55)
    assert table["architecture_key"].iloc[0] == architecture_key(BASE)


# ----------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 9, 40])
def test_t_quantile_matches_scipy(df):
    for p in (0.6, 0.9, 0.975, 0.995, 0.025):
        assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), abs=1e-9)


def test_by_architecture_on_hand_made_rows_matches_the_t_interval(tmp_path):
    grid, njet, lone = BASE, {**BASE, "conv": "njet", "kernel_size": None}, {**BASE, "conv": "niff"}
    runs = [(grid, 0, 0.90, "completed"), (grid, 1, 0.92, "completed"), (grid, 2, 0.97, "completed"),
            (njet, 0, 0.95, "completed"), (njet, 1, 0.96, "completed"), (njet, 2, 0.10, "diverged"),
            (lone, 0, 0.50, "completed"), (lone, 1, 0.99, "duplicate")]
    table = _board(tmp_path, runs).by_architecture("metrics_val_acc").set_index("params_conv")
    assert list(table.index) == ["njet", "conv", "niff"]  # best mean first
    values = np.array([0.90, 0.92, 0.97])
    low, high = scipy.stats.t.interval(0.95, 2, loc=values.mean(), scale=scipy.stats.sem(values))
    g = table.loc["conv"]
    assert (g["n"], g["failed"]) == (3, 0) and g["seeds"] == [0, 1, 2]
    assert g["mean"] == pytest.approx(values.mean()) and g["sd"] == pytest.approx(values.std(ddof=1))
    assert (g["ci_low"], g["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    j = table.loc["njet"]  # the diverged seed is counted as failed, not averaged, not dropped
    assert (j["n"], j["failed"], j["seeds"]) == (2, 1, [0, 1]) and j["mean"] == pytest.approx(0.955)
    one = table.loc["niff"]  # the duplicate copies another trial's metrics: not a measurement
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.5)
    assert math.isnan(one["sd"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert t_interval([0.5])[2:] == (pytest.approx(math.nan, nan_ok=True),) * 3


def test_paired_comparison_on_hand_made_pairs_matches_scipy():
    a = {0: 0.91, 1: 0.93, 2: 0.95, 3: 0.90}
    b = {0: 0.88, 1: 0.91, 2: 0.92, 3: 0.88}  # a is ahead by 2-3 points on every seed
    comp = compare_runs(a, b)
    d = np.array([a[s] - b[s] for s in a])
    test = scipy.stats.ttest_rel(list(a.values()), list(b.values()))
    low, high = test.confidence_interval(0.95)
    assert comp.method == "paired t" and comp.n == 4
    assert comp.difference == pytest.approx(d.mean()) and (comp.ci_low, comp.ci_high) == (
        pytest.approx(low), pytest.approx(high))
    assert comp.resolved and test.pvalue < 0.05
    noisy = compare_runs({0: 0.90, 1: 0.95, 2: 0.92}, {0: 0.93, 1: 0.91, 2: 0.92})
    assert not noisy.resolved and "not distinguishable at this budget" in str(noisy)
    unpaired = compare_runs({0: 0.9, 1: 0.91, 2: 0.92}, {5: 0.5, 6: 0.52, 7: 0.51})
    welch = scipy.stats.ttest_ind([0.9, 0.91, 0.92], [0.5, 0.52, 0.51], equal_var=False).confidence_interval(0.95)
    assert unpaired.method == "Welch t" and unpaired.resolved
    assert (unpaired.ci_low, unpaired.ci_high) == (pytest.approx(welch.low), pytest.approx(welch.high))
    assert not compare_runs({0: 0.9}, {0: 0.5}).resolved  # one run each: no interval


def test_ranking_names_the_resolved_differences_and_a_single_seed_board_says_so(tmp_path, capsys):
    from nas_flex.cli import main

    grid, njet, niff = BASE, {**BASE, "conv": "njet"}, {**BASE, "conv": "niff"}
    runs = [(grid, s, v, "completed") for s, v in zip(range(3), (0.90, 0.92, 0.94))]
    runs += [(njet, s, v, "completed") for s, v in zip(range(3), (0.96, 0.975, 0.99))]  # +6, +5.5, +5 pts
    runs += [(niff, s, v, "completed") for s, v in zip(range(3), (0.93, 0.89, 0.95))]  # noise around the grid
    _board(tmp_path / "three", runs)
    text = format_by_architecture(tmp_path / "three")
    assert "3 runs per architecture" in text
    assert "Resolved ahead of the grid's best (conv k=3 pool=max): njet k=3 pool=max; resolved behind it: none" in text
    single = [(grid, 0, 0.9, "completed"), (njet, 0, 0.95, "completed")]
    _board(tmp_path / "one", single)
    assert main(["leaderboard", str(tmp_path / "one"), "--by-architecture"]) == 0
    out = capsys.readouterr().out
    assert "1 run per architecture" in out
    assert "resolved ahead of the grid's best (conv k=3 pool=max): none" in out.lower()


# ------------------------------------------------------------------------------------- the sampler's view
def test_the_sampler_sees_the_mean_once_per_architecture():
    optuna = pytest.importorskip("optuna")
    from nas_flex.spaces import SearchSpace
    from nas_flex.tune.repeats import RepeatSearcher
    from nas_flex.tune.searcher import optuna_searcher

    def space(trial):
        return {**BASE, "kernel_size": trial.suggest_categorical("kernel_size", [3, 5])}

    inner = optuna_searcher(SearchSpace(space), {"val_acc": "max"}, "grid", 0, study_name="s")
    seeds = derive_seeds(0, 3)
    searcher = RepeatSearcher(inner, seeds)
    suggested = {f"r{i}": searcher.suggest(f"r{i}") for i in range(6)}
    configs = [s["nas_flex_config"] for s in suggested.values()]
    assert [c["seed"] for c in configs] == seeds * 2
    assert len({architecture_key(c) for c in configs}) == 2
    assert len({architecture_key(c) for c in configs[:3]}) == 1
    values = {"r0": 0.5, "r1": 0.6, "r2": 0.7, "r3": 0.8, "r4": 0.9, "r5": 1.0}
    for i, (tid, value) in enumerate(values.items()):
        status = "diverged" if tid == "r4" else "completed"
        searcher.on_trial_complete(tid, {"val_acc": value, "status": status, "epoch": 2, "epochs": 2})
        told = [t for t in inner.study.trials if t.state != optuna.trial.TrialState.RUNNING]
        assert len(told) == (0 if i < 2 else 1 if i < 5 else 2)  # told once, when the last seed ended
    first, second = inner.study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == pytest.approx(0.6)
    assert second.state == optuna.trial.TrialState.FAIL  # a diverged seed fails the architecture


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_resume_of_a_repeated_search_redoes_no_finished_seed(tmp_path):
    from nas_flex.spaces import SearchSpace
    from nas_flex.tune import search

    tiny = {"backbone": "simple", "head": "dense", "width": 4, "dataset": "digits", "epochs": 1, "train_subset": 64,
            "val_subset": 32, "batch_size": 32}

    def grid(trial):
        return {**tiny, "conv": trial.suggest_categorical("conv", ["conv", "njet"])}

    space = SearchSpace(grid, sampler="grid", name="rep")
    first = search(space, storage=tmp_path, experiment="r", num_samples=1, repeats=2, verbose=0).to_pandas()
    assert len(first) == 2 and first["architecture_key"].nunique() == 1
    assert sorted(first["seed"]) == sorted(derive_seeds(0, 2))
    # one seed's row lost (as if the run had died before writing it): resume trains that seed and the next
    # architecture's two seeds, and leaves the other finished seed alone
    lost, kept = first.iloc[0], first.iloc[1]
    (tmp_path / trial_file_name("r", lost["trial_id"])).unlink()
    after = search(space, storage=tmp_path, experiment="r", resume=True, num_samples=2, verbose=0).to_pandas()
    assert len(after) == 4 and (after["status"] == "completed").all()
    again = after[after["trial_id"] == kept["trial_id"]].iloc[0]
    assert again["written_at"] == kept["written_at"]  # not retrained
    by_arch = after.groupby("architecture_key")["seed"].apply(sorted)
    assert len(by_arch) == 2 and all(s == sorted(derive_seeds(0, 2)) for s in by_arch)
    assert set(after.loc[after["architecture_key"] == kept["architecture_key"], "seed"]) == {lost["seed"],
                                                                                            kept["seed"]}


def test_bad_repeats_fail_in_one_line_before_ray(tmp_path):
    from nas_flex.errors import SearchSpaceError
    from nas_flex.spaces import SearchSpace
    from nas_flex.tune import search

    def space(trial):
        return BASE

    for bad in (0, -1, 1.5, True):
        with pytest.raises(SearchSpaceError, match="`repeats` must be an integer >= 1"):
            search(space, storage=tmp_path / "x", num_samples=1, repeats=bad, verbose=0)
    with pytest.raises(SearchSpaceError, match="REPEATS"):
        SearchSpace(space, repeats=0)
    assert not (tmp_path / "x").exists()  # nothing was created: the error came before Ray and the storage


def test_progress_lines_name_the_best_architecture_by_its_mean(capsys):
    pytest.importorskip("ray")
    from nas_flex.tune.progress import Progress

    class _Trial:
        def __init__(self, config: dict, trial_id: str) -> None:
            self.config, self.trial_id, self.last_result = {"nas_flex_config": config}, trial_id, {}

    progress = Progress(4, "val_acc", "max")
    for i, (conv, seed, acc) in enumerate([("conv", 0, 0.90), ("njet", 0, 0.95), ("njet", 1, 0.80),
                                           ("conv", 1, 0.92)]):
        progress.finished(_Trial({"conv": conv, "seed": seed}, f"t{i}"), {"val_acc": acc, "status": "completed"},
                          error=False)
    lines = capsys.readouterr().out.splitlines()
    assert "best 0.9500 (njet)" in lines[1]
    assert "best 0.9000 (conv)" in lines[2]  # njet's second seed brings its mean to 0.875
    assert "best 0.9100 (conv, mean of 2 seeds)" in lines[3]


def test_resume_groups_rows_by_architecture():
    pytest.importorskip("ray")
    import json

    from nas_flex.tune.repeats import group_resume

    seeds = derive_seeds(0, 3)

    def row(conv: str, seed: int, acc: float, status: str = "completed") -> dict:
        config = {**BASE, "conv": conv, "seed": seed}
        return {"config": json.dumps(config), "architecture_key": architecture_key(config), "seed": seed,
                "status": status, "metrics_val_acc": acc, "epochs_completed": 2, "epochs": 2,
                "search_params": json.dumps({"conv": conv})}

    finished = [row("conv", s, a) for s, a in zip(seeds, (0.8, 0.9, 1.0))]  # all three seeds: done
    finished += [row("njet", s, a, st) for s, a, st in zip(seeds, (0.9, 0.1, 0.9), ("completed", "diverged",
                                                                                      "completed"))]
    finished += [row("niff", seeds[0], 0.7)]  # one seed finished, one running, one never started
    running = [{"trial_id": "run1", "config": {**BASE, "conv": "niff", "seed": seeds[1]},
                "search_params": {"conv": "niff"}}]
    done, partial = group_resume(finished, running, seeds, {"val_acc": "max"})
    by_conv = {json.loads(d["config"])["conv"]: d for d in done}
    assert by_conv["conv"]["metrics_val_acc"] == pytest.approx(0.9) and by_conv["conv"]["status"] == "completed"
    assert by_conv["njet"]["status"] == "diverged"  # the architecture fails with its seed
    (niff,) = partial
    assert [(s, t) for s, t, _ in niff["todo"]] == [(seeds[1], "run1"), (seeds[2], None)]
    assert niff["search_params"] == {"conv": "niff"} and len(niff["done"]) == 1

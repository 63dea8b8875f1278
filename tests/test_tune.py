"""The search runner on the embedded local Ray: end to end, resume from another process, dedupe, preflight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nas_flex.errors import SearchSpaceError
from nas_flex.leaderboard import TRIAL_SCHEMA, Leaderboard
from nas_flex.spaces import SearchSpace, replay
from nas_flex.tune import ResourceError, search

ROOT = Path(__file__).resolve().parents[1]
NAS_FLEX = str(Path(sys.executable).parent / "nas-flex")
TINY = {"backbone": "simple", "head": "dense", "width": 4, "dataset": "digits", "epochs": 2, "train_subset": 96,
        "val_subset": 64, "batch_size": 32}

SPACE_FILE = textwrap.dedent('''
    """A tiny grid for the tests."""
    SAMPLER = "grid"
    TINY = {tiny}

    def space(trial):
        return {{**TINY, "conv": trial.suggest_categorical("conv", ["conv", "mixed"]),
                "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"])}}
''')


def grid4(trial):
    return {**TINY, "conv": trial.suggest_categorical("conv", ["conv", "mixed"]),
            "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}


@pytest.mark.ray
@pytest.mark.slow
def test_four_trial_search_end_to_end(tmp_path):
    space = SearchSpace(grid4, sampler="grid")
    lb = search(space, storage=tmp_path, experiment="e2e", verbose=0)
    df = lb.to_pandas()
    assert len(df) == 4 and df["trial_id"].is_unique
    assert set(TRIAL_SCHEMA.names) <= set(df.columns)
    assert (df["status"] == "completed").all()
    assert df["metrics_val_acc"].between(0, 1).all() and (df["flops"] > 0).all() and (df["params"] > 0).all()
    assert sorted(zip(df["params_conv"], df["params_pooling"])) == sorted(
        (c, p) for c in ("conv", "mixed") for p in ("max", "avg"))
    for _, row in df.iterrows():  # the stored sampler params replay to the stored config
        config = replay(space, json.loads(row["search_params"]))
        stored = json.loads(row["config"])
        assert all(stored[k] == v for k, v in config.items())
    hist = lb.history()
    assert len(hist) == 4 * 3 and set(hist["epoch"]) == {0, 1, 2}  # epoch 0: the state at initialisation
    import pandas as pd
    import torch

    assert len(pd.read_parquet(tmp_path)) == 4  # plain pandas reads the folder as it stands
    # every trial's trained weights are kept, weights_only-loadable, and export uses them instead of retraining
    for trial_id in df["trial_id"]:
        state = torch.load(tmp_path / "_weights" / f"e2e--{trial_id}.pt", weights_only=True)
        assert any(k.endswith("weight") for k in state)
    from nas_flex.export import export_best

    exported = export_best(tmp_path, tmp_path / "exported", check_examples=8)
    assert not (tmp_path / "exported" / "training").exists()
    assert exported.architecture["source"]["trial_id"] == lb.best()["trial_id"]


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_file_space_resumes_in_another_process(tmp_path):
    space_file = tmp_path / "tiny_space.py"
    space_file.write_text(SPACE_FILE.format(tiny=repr({**TINY, "epochs": 3})))
    storage = tmp_path / "lb"
    cmd = [NAS_FLEX, "search", str(space_file), "--storage", str(storage), "--experiment", "r1",
           "--max-concurrent", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(storage.glob("*.parquet"))) < 2:
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be interrupted:\n{proc.stdout.read()}")
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    first = Leaderboard(storage).to_pandas()
    assert 2 <= len(first) < 6, "the interruption came too late to test a resume"
    done_before = first.set_index("trial_id")["written_at"].to_dict()

    out = subprocess.run(cmd[:-3] + ["--resume", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the summary shows each learned-size method's best trial with its sizes at init -> after training
    after_summary = out.stdout.split("Each learned-size method's best trial")[-1]
    assert "mixed (" in after_summary and "normalized_entropy 1 -> " in after_summary, out.stdout[-2000:]
    df = Leaderboard(storage).to_pandas()
    assert len(df) == 6 and df["trial_id"].is_unique, df[["trial_id", "status"]]
    assert (df["status"] == "completed").all()
    assert len(set(zip(df["params_conv"], df["params_pooling"]))) == 6
    after = df.set_index("trial_id")["written_at"].to_dict()
    for trial_id, written in done_before.items():  # finished trials were not redone
        assert after[trial_id] == written


@pytest.mark.ray
@pytest.mark.slow
def test_identical_configs_are_trained_once(tmp_path):
    def two(trial):
        return {**TINY, "epochs": 1, "conv": trial.suggest_categorical("conv", ["conv", "mixed"])}

    lb = search(SearchSpace(two, sampler="random"), storage=tmp_path, num_samples=5, experiment="dd",
                max_concurrent=1, verbose=0)
    df = lb.to_pandas()
    assert len(df) == 5
    trained = df[df["status"] == "completed"]
    assert len(trained) == trained["config_key"].nunique() <= 2
    dups = df[df["status"] == "duplicate"]
    assert len(dups) == 5 - len(trained)
    for _, d in dups.iterrows():
        original = trained[trained["config_key"] == d["config_key"]].iloc[0]
        assert d["metrics_val_acc"] == original["metrics_val_acc"] and "duplicate of" in d["error"]


def test_gpu_request_on_a_gpu_less_machine_fails_fast(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    t0 = time.monotonic()
    with pytest.raises(ResourceError, match="gpu=1.*no CUDA GPU"):
        search(SearchSpace(grid4, sampler="grid"), storage=tmp_path, resources_per_trial={"gpu": 1}, verbose=0)
    assert time.monotonic() - t0 < 30
    assert not list(tmp_path.glob("*.parquet"))
    import ray

    assert not ray.is_initialized()


def test_bad_search_arguments_fail_before_launch(tmp_path):
    space = SearchSpace(grid4, sampler="grid")
    with pytest.raises(SearchSpaceError, match="num_samples"):
        search(SearchSpace(grid4, sampler="tpe"), storage=tmp_path, verbose=0)
    with pytest.raises(SearchSpaceError, match="unknown objective 'accuracy'"):
        search(space, storage=tmp_path, objectives={"accuracy": "max"}, verbose=0)
    with pytest.raises(SearchSpaceError, match="scheduler"):
        search(space, storage=tmp_path, scheduler="pbt", verbose=0)
    with pytest.raises(SearchSpaceError, match="nothing to resume"):
        search(space, storage=tmp_path, resume=True, verbose=0)
    with pytest.raises(ResourceError, match="cpu > 0"):
        search(space, storage=tmp_path, resources_per_trial={"cpu": 0}, verbose=0)


def test_searcher_tells_optuna_how_trials_ended():
    """ASHA-stopped trials reach Optuna as PRUNED and diverged ones as FAIL, not COMPLETE with a partial score."""
    from optuna.trial import TrialState

    from nas_flex.tune.runner import _optuna_search

    searcher = _optuna_search(SearchSpace(grid4), {"val_acc": "max"}, "tpe", 0, "unit")
    for t in ("stopped", "diverged", "done"):
        assert "nas_flex_config" in searcher.suggest(t)
    searcher.on_trial_complete("stopped", {"val_acc": 0.4, "epoch": 1, "epochs": 3, "status": "running"})
    searcher.on_trial_complete("diverged", {"val_acc": 0.1, "epoch": 1, "epochs": 3, "status": "diverged"})
    searcher.on_trial_complete("done", {"val_acc": 0.9, "epoch": 3, "epochs": 3, "status": "completed"})
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.parametrize("args, message", [
    (["search", "/no/such/space.py", "--storage", "x"], "does not exist"),
    (["search", "SPACE", "--storage", "x", "--gpus-per-trial", "1"], "no CUDA GPU"),
    (["search", "SPACE", "--storage", "x", "--objective", "accuracy"], "unknown objective"),
])
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    import torch

    from nas_flex.cli import main

    if torch.cuda.is_available() and "--gpus-per-trial" in args:
        pytest.skip("this machine has a GPU")
    space_file = tmp_path / "s.py"
    space_file.write_text(SPACE_FILE.format(tiny=repr(TINY)))
    args = [str(space_file) if a == "SPACE" else str(tmp_path / a) if a == "x" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error:") and message in err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == ["s.py"]  # nothing written


@pytest.mark.ray
@pytest.mark.slow
def test_asha_and_two_objectives_leave_no_gap(tmp_path):
    """Trials ASHA stops early still get a row (status "stopped"); a two-objective search runs end to end."""
    def space(trial):
        return {**TINY, "epochs": 3, "conv": "conv", "lr": trial.suggest_categorical("lr", [1e-4, 3e-3, 1e-2, 3e-2]),
                "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}

    lb = search(SearchSpace(space, sampler="grid"), storage=tmp_path, experiment="asha", scheduler="asha",
                objectives={"val_acc": "max", "flops": "min"}, max_concurrent=2, verbose=0)
    df = lb.to_pandas()
    assert len(df) == 8 and df["trial_id"].is_unique
    assert set(df["status"]) <= {"completed", "stopped"}
    stopped = df[df["status"] == "stopped"]
    assert (stopped["epochs_completed"] < 3).all()
    assert (df.loc[df["status"] == "completed", "epochs_completed"] == 3).all()
    assert df["metrics_val_acc"].notna().all()

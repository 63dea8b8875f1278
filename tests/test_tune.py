"""The search runner on the embedded local Ray: end to end, resume from another process, dedupe, preflight."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nas_flex.config import TrialConfig, resolve_config
from nas_flex.errors import SearchSpaceError
from nas_flex.leaderboard import TRIAL_SCHEMA, Leaderboard
from nas_flex.record import TrialRecord, TrialStatus
from nas_flex.spaces import SearchSpace, replay
from nas_flex.tune import ResourceError, StorageError, search

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
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
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
    assert not list((tmp_path / "_running").rglob("*"))  # each trial's scratch folder went with its row
    # every trial's trained weights are kept, weights_only-loadable, and export uses them instead of retraining
    for trial_id in df["trial_id"]:
        state = torch.load(tmp_path / "_weights" / f"e2e--{trial_id}.pt", weights_only=True)
        assert any(k.endswith("weight") for k in state)
    from nas_flex.export import export_best

    exported = export_best(tmp_path, tmp_path / "exported", check_examples=8)
    assert not (tmp_path / "exported" / "training").exists()
    assert exported.architecture["source"]["trial_id"] == lb.best()["trial_id"]


class _Payload:
    """A pickle that creates a marker file when anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickles(storage: Path, experiment: str, marker: Path) -> None:
    """A third party with write access to a shared storage replaces Ray's pickles (and adds some)."""
    payload = pickle.dumps(_Payload(marker))
    probe = marker.with_name("probe_ran")
    pickle.loads(pickle.dumps(_Payload(probe)))  # the payload is live: unpickling it runs it
    assert probe.exists()
    ray_dir = storage / "_ray" / experiment
    ray_dir.mkdir(parents=True, exist_ok=True)
    for file in [*ray_dir.rglob("*.pkl"), ray_dir / "tuner.pkl", ray_dir / "searcher-state-2000-01-01.pkl"]:
        file.write_bytes(payload)


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_file_space_resumes_in_another_process(tmp_path):
    """SIGINT mid-search, then --resume in a new process: no row lost or doubled, the interrupted trial continues
    from its epoch checkpoint under its own id, finished trials are not redone, and the pickles a third party planted
    in the storage are never loaded. Scratch files live under the storage, never in the temp folder."""
    space_file = tmp_path / "tiny_space.py"
    # epochs long enough (480 examples, 24 epochs: seconds per trial even on an idle machine) that the Ctrl-C lands
    # inside a trial, not after the search has finished
    space_file.write_text(SPACE_FILE.format(tiny=repr({**TINY, "epochs": 24, "train_subset": 480})).replace(
        '["max", "avg", "none"]', '["max", "avg"]'))  # four trials: two finish, one is cut short, one is new after
    storage = tmp_path / "lb"
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(system_tmp), "RAY_TMPDIR": "/tmp"}  # Ray's sockets need a short path
    cmd = [NAS_FLEX, "search", str(space_file), "--storage", str(storage), "--experiment", "r1",
           "--max-concurrent", "1", "--quiet"]
    # a shell starts background jobs with SIGINT ignored, and the child would inherit that: restore the default, so
    # the Ctrl-C below reaches the search however the test suite was started
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    running = storage / "_running" / "r1"

    def finished_and_unfinished():
        done = {f.name.removeprefix("r1--").removesuffix(".parquet") for f in storage.glob("r1--*.parquet")}
        return done, [f for f in running.glob("*/trial_state.pt") if f.parent.name not in done]

    deadline = time.monotonic() + 240
    # interrupt once two trials finished and a third (with no row yet) has checkpointed an epoch
    while time.monotonic() < deadline:
        done, unfinished = finished_and_unfinished()
        if len(done) >= 2 and unfinished:
            break
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be interrupted:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stdout.read()[-3000:]  # Ctrl-C ends the command, not just Tune
    first = Leaderboard(storage).to_pandas()
    first = first[first["status"] != "error"]  # a trial the interruption cut short may have written an error row
    assert 2 <= len(first) < 4, "the interruption came too late to test a resume"
    done_before = first.set_index("trial_id")["written_at"].to_dict()
    import torch

    interrupted = {}
    for state_file in running.glob("*/trial_state.pt"):
        state = torch.load(state_file, weights_only=True)
        interrupted[state_file.parent.name] = state["history"]
    assert interrupted, "no unfinished trial with an epoch checkpoint was left to continue"
    marker = tmp_path / "payload_ran"
    _plant_pickles(storage, "r1", marker)

    # the resume also starts a fresh worker per trial (--fresh-workers: Ray's reuse_actors=False), the other path
    out = subprocess.run(cmd[:-3] + ["--resume", "--fresh-workers", "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=400, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not marker.exists(), "resume unpickled a file from the storage"
    # the summary shows each learned-size method's best trial with its sizes at init -> after training
    after_summary = out.stdout.split("Each learned-size method's best trial")[-1]
    assert "mixed (" in after_summary and "normalized_entropy 1 -> " in after_summary, out.stdout[-2000:]
    df = Leaderboard(storage).to_pandas()
    assert len(df) == 4 and df["trial_id"].is_unique, df[["trial_id", "status"]]
    assert (df["status"] == "completed").all()
    assert len(set(zip(df["params_conv"], df["params_pooling"]))) == 4
    after = df.set_index("trial_id")["written_at"].to_dict()
    for trial_id, written in done_before.items():  # finished trials were not redone
        assert after[trial_id] == written
    history = Leaderboard(storage).history()
    for trial_id, epochs in interrupted.items():  # continued under its own id, its checkpointed epochs kept as run
        assert trial_id in after
        mine = history[history["trial_id"] == trial_id].set_index("epoch")["seconds"]
        assert {1, 2, 3, 4} <= set(mine.index) and mine.index.is_unique
        for before in epochs:
            assert mine[before["epoch"]] == before["seconds"]
    assert not list(running.rglob("*")), "scratch folders of finished trials are left"
    assert not [p.name for p in system_tmp.iterdir() if p.name.startswith("nas_flex")]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_identical_configs_are_trained_once(tmp_path):
    def two(trial):
        return {**TINY, "epochs": 1, "conv": trial.suggest_categorical("conv", ["conv", "mixed"])}

    # three samples of two configs: at least one is a duplicate, whatever the sampler draws
    lb = search(SearchSpace(two, sampler="random"), storage=tmp_path, num_samples=3, experiment="dd",
                max_concurrent=1, verbose=0)
    df = lb.to_pandas()
    assert len(df) == 3
    trained = df[df["status"] == "completed"]
    assert len(trained) == trained["config_key"].nunique() <= 2
    dups = df[df["status"] == "duplicate"]
    assert len(dups) == 3 - len(trained) >= 1
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

    from nas_flex.tune.searcher import optuna_searcher

    searcher = optuna_searcher(SearchSpace(grid4), {"val_acc": "max"}, "tpe", 0, "unit")
    for t in ("stopped", "diverged", "done"):
        assert "nas_flex_config" in searcher.suggest(t)
    searcher.on_trial_complete("stopped", {"val_acc": 0.4, "epoch": 1, "epochs": 3, "status": "running"})
    searcher.on_trial_complete("diverged", {"val_acc": 0.1, "epoch": 1, "epochs": 3, "status": "diverged"})
    searcher.on_trial_complete("done", {"val_acc": 0.9, "epoch": 3, "epochs": 3, "status": "completed"})
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.parametrize("args, message", [
    (["search", "/no/such/space.py", "--storage", "x"], "does not exist"),
    (["search", "SPACE", "--storage", "x", "--gpus-per-trial", "1"], "no CUDA GPU"),
    (["search", "SPACE", "--storage", "x", "--objective", "accuracy"], "unknown objective"),
    (["search", "SPACE", "--storage", "x", "--num-samples", "0"], "`num_samples` must be an integer >= 1"),
    (["search", "SPACE", "--storage", "x", "--num-samples", "-1"], "`num_samples` must be an integer >= 1"),
    (["search", "SPACE", "--storage", "x", "--max-concurrent", "0"], "`max_concurrent` must be an integer >= 1"),
    (["search", "SPACE", "--storage", "s.py"], "`storage`"),
])
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    import torch

    from nas_flex.cli import main

    if torch.cuda.is_available() and "--gpus-per-trial" in args:
        pytest.skip("this machine has a GPU")
    space_file = tmp_path / "s.py"
    space_file.write_text(SPACE_FILE.format(tiny=repr(TINY)))
    args = [str(space_file) if a == "SPACE" else str(tmp_path / a) if a in ("x", "s.py") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error:") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == ["s.py"]  # nothing written


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_asha_stops_the_worse_trials_and_their_rows_keep_metrics(tmp_path):
    """ASHA (grace 1 epoch, reduction factor 2) stops trials early, and each still gets a row (status "stopped")
    with its last epoch's metrics; a two-objective search runs end to end. Half the grid cannot learn (lr 1e-7), the
    trials run one at a time in the seeded grid order, so the trials stopped are the same on every run."""
    def space(trial):
        return {**TINY, "epochs": 3, "conv": "conv", "lr": trial.suggest_categorical("lr", [1e-7, 1e-2]),
                "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"])}

    lb = search(SearchSpace(space, sampler="grid"), storage=tmp_path, experiment="asha", scheduler="asha",
                objectives={"val_acc": "max", "flops": "min"}, max_concurrent=1, verbose=0)
    df = lb.to_pandas()
    assert len(df) == 6 and df["trial_id"].is_unique
    assert set(df["status"]) == {"completed", "stopped"}, df[["status", "params_lr", "metrics_val_acc"]]
    stopped = df[df["status"] == "stopped"]
    assert stopped["epochs_completed"].between(1, 2).all()
    for column in ("metrics_val_acc", "metrics_val_loss", "metrics_train_loss", "best_val_acc", "flops"):
        assert stopped[column].notna().all() and np.isfinite(stopped[column]).all(), column
    assert (stopped["params"] > 0).all()
    completed = df[df["status"] == "completed"]
    assert (completed["epochs_completed"] == 3).all() and completed["metrics_val_acc"].notna().all()
    assert not list((tmp_path / "_running").rglob("*"))  # stopped trials' scratch folders are swept too


# ------------------------------------------------------------------ bad input: one line, before Ray or any training
@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 0}, r"`num_samples` must be an integer >= 1 .*got 0"),
    ({"num_samples": -1}, r"`num_samples` must be an integer >= 1 .*got -1"),  # Ray reads -1 as "run forever"
    ({"num_samples": 2.5}, r"`num_samples` must be an integer"),
    ({"num_samples": True}, r"`num_samples` must be an integer"),
    ({"max_concurrent": 0}, r"`max_concurrent` must be an integer >= 1"),
    ({"max_failures": -1}, r"`max_failures` must be an integer >= 0"),
    ({"experiment": "../elsewhere"}, r"`experiment` must be a non-empty name without '/'"),
    ({"experiment": ""}, r"`experiment` must be a non-empty name"),
])
def test_bad_counts_and_names_fail_in_one_line_before_ray(tmp_path, kwargs, message):
    import ray

    with pytest.raises(SearchSpaceError, match=message) as info:
        search(SearchSpace(grid4, sampler="grid"), storage=tmp_path / "lb", verbose=0, **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "lb").exists() and not ray.is_initialized()


def test_a_storage_that_cannot_hold_a_leaderboard_fails_in_one_line_before_ray(tmp_path):
    import ray

    space = SearchSpace(grid4, sampler="grid")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(StorageError, match=r"`storage` .*a_file' is a file; pass a folder"):
        search(space, storage=a_file, verbose=0)
    with pytest.raises(StorageError, match=r"`storage` .*cannot be created: .*a_file' is a file"):
        search(space, storage=a_file / "lb", verbose=0)
    if os.geteuid() == 0:  # root writes into any mode-0500 folder: use a file system that refuses everyone
        if not Path("/sys").is_dir():
            pytest.skip("no /sys to stand for a read-only storage")
        read_only = Path("/sys/nas_flex_test_storage")
    else:
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o500)
    with pytest.raises(StorageError, match=r"`storage` .* is not writable") as info:
        search(space, storage=read_only / "lb", verbose=0)
    assert "\n" not in str(info.value)
    assert not ray.is_initialized() and a_file.read_text() == "not a folder"


def test_a_corrupt_parquet_file_in_the_storage_is_named_before_training(tmp_path, capsys):
    """Before: every trial trained, then the search exited 2 at the end. Now every damaged file is named first."""
    import ray

    from nas_flex.cli import main
    from nas_flex.leaderboard import write_trial

    storage = tmp_path / "lb"
    (storage / "_history").mkdir(parents=True)
    write_trial(storage, {"status": "completed", "config": {"dataset": "digits"}}, experiment="exp", trial_id="good")
    good = next(storage.glob("exp--good*.parquet"))
    data = good.read_bytes()
    (storage / "exp--truncated.parquet").write_bytes(data[: len(data) // 2])
    (storage / "_history" / "exp--foreign.parquet").write_bytes(b"PAR1 this is not parquet")
    (storage / ".exp--hidden.parquet.123.tmp").write_bytes(b"a writer's temporary file: not read")
    with pytest.raises(StorageError, match=r"2 bad file\(s\) in the leaderboard storage") as info:
        search(SearchSpace(grid4, sampler="grid"), storage=storage, verbose=0)
    message = str(info.value)
    assert "\n" not in message and good.name not in message
    assert "exp--truncated.parquet" in message and "exp--foreign.parquet" in message
    assert not ray.is_initialized()
    assert not (storage / "_running").exists() and not (storage / "_experiments").exists()  # nothing trained
    space_file = tmp_path / "s.py"
    space_file.write_text(SPACE_FILE.format(tiny=repr(TINY)))
    assert main(["search", str(space_file), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "exp--truncated.parquet" in err


# ----------------------------------------------------------------------------- resume: from rows and checkpoints
GRID4 = [{"conv": c, "pooling": p} for c in ("conv", "mixed") for p in ("max", "avg")]


def _row(point: dict, status: str = "completed", val_acc: float = 0.5) -> TrialRecord:
    metrics = {"train_loss": 1.0, "train_acc": val_acc, "val_loss": 1.0, "val_acc": val_acc}
    record = TrialRecord.failed({**TINY, **point}, "boom" if status == "error" else None,
                                started="2000-01-01T00:00:00+00:00", status=TrialStatus(status), search_params=point,
                                epochs_completed=TINY["epochs"], params=100, flops=1000.0)
    return record.replace(metrics=metrics) if status == "completed" else record


def _experiment(storage: Path, name: str, num_samples: int, space_name: str) -> None:
    (storage / "_experiments").mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "space": space_name, "sampler": "grid", "objectives": {"val_acc": "max"},
            "num_samples": num_samples, "scheduler": None, "seed": 0, "overrides": {}, "created": "2000-01-01"}
    (storage / "_experiments" / f"{name}.json").write_text(json.dumps(meta))


def _scratch(storage: Path, experiment: str, trial_id: str, point: dict, started: str) -> Path:
    folder = storage / "_running" / experiment / trial_id
    folder.mkdir(parents=True)
    info = {"trial_id": trial_id, "experiment": experiment, "config": {**TINY, **point}, "search_params": point,
            "started": started}
    (folder / "trial.json").write_text(json.dumps(info))
    return folder


def test_resume_plan_reseeds_optuna_from_rows_and_scratch_folders(tmp_path):
    """What finished comes from the rows, what did not from ``_running/``; Optuna learns the finished trials, the
    unfinished ones are suggested first under their own ids, and a grid then offers only the point never tried."""
    from optuna.trial import TrialState

    from nas_flex.leaderboard import write_trial
    from nas_flex.tune import plan_resume
    from nas_flex.tune.searcher import optuna_searcher

    space = SearchSpace(grid4, sampler="grid")
    write_trial(tmp_path, _row(GRID4[0], val_acc=0.75), experiment="e", trial_id="t0", sync=False)
    leftover = _scratch(tmp_path, "e", "t0", GRID4[0], "1")  # the run ended between t0's row and its clean-up
    write_trial(tmp_path, _row(GRID4[1], status="error"), experiment="e", trial_id="t1", sync=False)
    _scratch(tmp_path, "e", "t1", GRID4[1], "2")  # errored: retried, as Ray's own resume did
    _scratch(tmp_path, "e", "t2", GRID4[2], "3")  # interrupted mid-training
    (tmp_path / "_running" / "e" / "t9").mkdir()  # killed before it wrote its config: never started
    write_trial(tmp_path, _row(GRID4[3]), experiment="other", trial_id="t0", sync=False)  # another experiment

    plan = plan_resume(tmp_path, "e")
    finished, unfinished = plan.finished, plan.unfinished
    assert list(finished["trial_id"]) == ["t0"] and not leftover.exists()
    assert [u["trial_id"] for u in unfinished] == ["t1", "t2"]

    searcher = optuna_searcher(space, {"val_acc": "max"}, "grid", 1, "e", finished=finished.to_dict("records"),
                              resumed=unfinished)
    seeded = searcher.study.trials[0]
    assert seeded.state == TrialState.COMPLETE and seeded.value == 0.75 and seeded.params == GRID4[0]
    first, second, third = (searcher.suggest(t) for t in ("ray_a", "ray_b", "ray_c"))
    assert (first["nas_flex_trial_id"], second["nas_flex_trial_id"]) == ("t1", "t2")
    # resolved once, here in the driver: the trainable takes the TrialConfig as it is
    assert first["nas_flex_config"] == resolve_config({**TINY, **GRID4[1]})
    assert isinstance(first["nas_flex_config"], TrialConfig)
    assert second["nas_flex_config"] == resolve_config({**TINY, **GRID4[2]})
    assert "nas_flex_trial_id" not in third
    assert {k: third["nas_flex_config"][k] for k in ("conv", "pooling")} == GRID4[3]


def test_resume_unpickles_nothing_from_the_storage(tmp_path):
    """A finished experiment whose Ray folder a third party filled with crafted pickles: --resume reads the rows
    (all four trials finished), starts no Ray, and the payload never runs."""
    import ray

    from nas_flex.leaderboard import write_trial

    space = SearchSpace(grid4, sampler="grid")
    _experiment(tmp_path, "e", 4, space.name)
    for i, point in enumerate(GRID4):
        write_trial(tmp_path, _row(point), experiment="e", trial_id=f"t{i}", sync=False)
    marker = tmp_path / "payload_ran"
    _plant_pickles(tmp_path, "e", marker)
    lb = search(space, storage=tmp_path, resume=True, experiment="e", verbose=0)
    assert not marker.exists()
    assert len(lb.to_pandas()) == 4 and not ray.is_initialized()
    with pytest.raises(SearchSpaceError, match="`sampler` 'random' differs from experiment 'e'"):
        search(space, storage=tmp_path, resume=True, experiment="e", sampler="random", verbose=0)


# ------------------------------------------------------------------------------------- a duplicate's wait
def _wait(storage: Path, **kwargs) -> tuple[dict | None, list[float]]:
    """``wait_for_owner`` of trial t0 in a thread: a wait that never ends fails the test instead of hanging it."""
    from concurrent.futures import ThreadPoolExecutor

    from nas_flex.tune.trainable import wait_for_owner

    pauses: list[float] = []
    act = kwargs.pop("on_pause", lambda n: None)

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        act(len(pauses))
        time.sleep(min(seconds, 0.01))

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(wait_for_owner, storage, "e", "t0", sleep=sleep, **kwargs)
        return future.result(timeout=60), pauses


def test_a_duplicate_waits_for_its_owners_row_and_no_longer_than_the_owner_runs(tmp_path):
    from nas_flex.leaderboard import write_trial
    from nas_flex.storage import StorageLayout

    layout = StorageLayout(tmp_path)
    # the owner ended without a row (its scratch folder is gone): no wait at all, whatever the timeout
    assert _wait(tmp_path, timeout=3600) == (None, [])
    scratch = layout.running("e", "t0")
    scratch.mkdir(parents=True)
    # the owner still runs and never finishes: the wait ends at the timeout, its pauses doubling to the cap
    row, pauses = _wait(tmp_path, timeout=0.3, poll=(0.01, 0.04))
    assert row is None and pauses[:4] == [0.01, 0.02, 0.04, 0.04]
    # the owner finishes while the duplicate waits: its row comes back (only the owner's row is returned)
    write_trial(tmp_path, _row(GRID4[1], val_acc=0.25), experiment="e", trial_id="t1", sync=False)
    row, pauses = _wait(tmp_path, timeout=3600, on_pause=lambda n: n == 2 and write_trial(
        tmp_path, _row(GRID4[0], val_acc=0.75), experiment="e", trial_id="t0", sync=False))
    assert row["status"] == "completed" and row["metrics_val_acc"] == 0.75 and len(pauses) == 2
    # an owner that failed: no metrics to copy, the duplicate trains itself
    write_trial(tmp_path, _row(GRID4[0], status="error"), experiment="e", trial_id="t0", sync=False)
    assert _wait(tmp_path, timeout=3600) == (None, [])
    # the claim was handed on (the owner's row is not coming): the wait ends although the scratch folder is left
    for row_file in tmp_path.glob("e--t0*.parquet"):
        row_file.unlink()
    claim = layout.claim("e", "k")
    claim.parent.mkdir(parents=True)
    claim.write_text("t0")
    row, pauses = _wait(tmp_path, timeout=3600, claim=claim, on_pause=lambda n: claim.write_text("t7"))
    assert row is None and len(pauses) == 1


def test_search_options_group_into_tune_and_run_configs(tmp_path):
    from nas_flex.tune import RunConfig, TuneConfig
    from nas_flex.tune.options import split_options

    flat = split_options(None, None, {"scheduler": "asha", "max_concurrent": 2, "max_failures": 0, "verbose": 0})
    assert flat == (TuneConfig(scheduler="asha", max_concurrent=2), RunConfig(max_failures=0, verbose=0))
    grouped = split_options(TuneConfig(seed=3), None, {"address": "auto"})
    assert grouped == (TuneConfig(seed=3), RunConfig(address="auto"))
    assert TuneConfig(objectives=["val_acc", "flops"]).objective_modes == {"val_acc": "max", "flops": "min"}
    assert RunConfig(resources_per_trial={"GPU": 0.5}).resources == {"cpu": 1.0, "gpu": 0.5}
    space = SearchSpace(grid4, sampler="grid")
    with pytest.raises(SearchSpaceError, match=r"unknown search option\(s\) \['schedular'\]"):
        search(space, storage=tmp_path / "lb", schedular="asha", verbose=0)
    with pytest.raises(SearchSpaceError, match=r"\['seed'\] given both as keywords and in a TuneConfig"):
        search(space, storage=tmp_path / "lb", tune_config=TuneConfig(seed=1), seed=2)
    with pytest.raises(SearchSpaceError, match="`run_config` must be a RunConfig"):
        search(space, storage=tmp_path / "lb", run_config={"verbose": 0})
    with pytest.raises(SearchSpaceError, match="`max_concurrent` must be an integer >= 1"):
        TuneConfig(max_concurrent=0)
    assert not (tmp_path / "lb").exists()

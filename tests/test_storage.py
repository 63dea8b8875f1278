"""The storage package and what it promises about a shared storage folder: one atomic write that leaves nothing behind
(a full disk included), no path outside the storage (links, forged trial ids), no pickle read from it, page
checksums, a damaged merge journal repaired, and a resume that continues whatever state a kill left."""

from __future__ import annotations

import errno
import json
import os
import pickle
import threading
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from nas_flex.errors import (
    CorruptLeaderboardError,
    SearchSpaceError,
    StorageError,
    StorageFullError,
    UnsafeStorageError,
)
from nas_flex.leaderboard import Leaderboard, MergeWarning, check_storage, compact, write_trial
from nas_flex.record import TrialRecord, TrialStatus
from nas_flex.spaces import SearchSpace
from nas_flex.storage import (
    StorageLayout,
    check_no_links,
    check_trial_id,
    inside,
    private_ray_dir,
    remove_tree,
    write_atomic,
    write_json_atomic,
)

TINY = {"backbone": "simple", "head": "dense", "width": 4, "dataset": "digits", "epochs": 1, "train_subset": 64,
        "val_subset": 32, "batch_size": 32}
POINTS = [{"pooling": p} for p in ("max", "avg", "none")]


def tiny3(trial):
    return {**TINY, "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"])}


def _leftovers(root: Path) -> list[str]:
    """Every temporary file below ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def _record(point: dict, status: str = "completed") -> TrialRecord:
    record = TrialRecord.failed({**TINY, **point}, "boom" if status == "error" else None,
                                started="2000-01-01T00:00:00+00:00", status=TrialStatus(status), search_params=point,
                                epochs_completed=TINY["epochs"], params=100, flops=1000.0)
    metrics = {"train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5}
    return record.replace(metrics=metrics) if status == "completed" else record


def _experiment(storage: Path, name: str, num_samples: int, space: SearchSpace, **extra) -> None:
    meta = {"name": name, "space": space.name, "sampler": "grid", "objectives": {"val_acc": "max"},
            "num_samples": num_samples, "scheduler": None, "seed": 0, "overrides": {}, "created": "2000-01-01",
            **extra}
    write_json_atomic(StorageLayout(storage).experiment_file(name), meta, sync=False)


def _scratch(storage: Path, experiment: str, trial_id: str, point: dict) -> Path:
    folder = StorageLayout(storage).running(experiment, trial_id)
    folder.mkdir(parents=True)
    info = {"trial_id": trial_id, "experiment": experiment, "config": {**TINY, **point}, "search_params": point,
            "started": trial_id}
    (folder / "trial.json").write_text(json.dumps(info))
    return folder


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------------------------------------ atomic write
def test_the_atomic_write_leaves_the_old_file_or_the_new_one_and_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json_atomic(target, {"v": 1})
    assert json.loads(target.read_text()) == {"v": 1}

    def half_then_full(tmp: Path) -> None:
        tmp.write_text('{"v": 2')  # half written, then the disk fills up
        _full_disk()

    with pytest.raises(StorageFullError, match=r"no space left to write .*a\.json.*resume") as info:
        write_atomic(target, half_then_full)
    assert "\n" not in str(info.value) and isinstance(info.value, StorageError)
    assert json.loads(target.read_text()) == {"v": 1} and _leftovers(tmp_path) == []
    with pytest.raises(ZeroDivisionError):  # any other failure: re-raised as it is, nothing left either
        write_atomic(target, lambda tmp: (tmp.write_text("x"), 1 / 0))
    assert _leftovers(tmp_path) == []


def test_a_full_disk_while_writing_a_row_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_trial(tmp_path, _record(POINTS[0]), experiment="e", trial_id="t0", sync=False)
    monkeypatch.setattr(os, "replace", _full_disk)  # every rename of every writer fails as on a full disk
    with pytest.raises(StorageFullError, match="No space left on device") as info:
        write_trial(tmp_path, _record(POINTS[1]), experiment="e", trial_id="t1", sync=False)
    monkeypatch.undo()
    assert "\n" not in str(info.value) and _leftovers(tmp_path) == []
    assert Leaderboard(tmp_path).to_pandas()["trial_id"].tolist() == ["t0"]


# ------------------------------------------------------------------------------------------------ paths inside
def test_links_and_forged_trial_ids_are_refused(tmp_path):
    storage, elsewhere = tmp_path / "lb", tmp_path / "elsewhere"
    (elsewhere / "t0").mkdir(parents=True)
    storage.mkdir()
    check_no_links(storage)
    assert inside(storage, storage / "_running" / "e") == (storage / "_running" / "e").resolve()
    with pytest.raises(UnsafeStorageError, match="leads outside the storage"):
        inside(storage, storage / ".." / "elsewhere")
    (storage / "_running").mkdir()
    (storage / "_running" / "e").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeStorageError, match=r"_running/e' is a symbolic link inside the storage"):
        check_no_links(storage)
    with pytest.raises(UnsafeStorageError, match="leads outside the storage"):
        remove_tree(storage, storage / "_running" / "e" / "t0")
    assert (elsewhere / "t0").is_dir()
    for bad in ("../x", "", ".hidden", "a/b", None):
        with pytest.raises(UnsafeStorageError, match="is not a plain name"):
            check_trial_id(bad)
    assert check_trial_id("4b1f2_00000") == "4b1f2_00000"


def test_resume_through_a_linked_running_folder_deletes_nothing_outside(tmp_path):
    """``_running/<experiment>`` linked to another folder and a forged row whose trial id is ``notes``: the resume
    refuses in one line before Ray starts, and the folder the link points to keeps everything."""
    import ray

    from nas_flex.tune import plan_resume, search

    storage, elsewhere = tmp_path / "lb", tmp_path / "elsewhere"
    for name in ("notes", "t0"):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "keep.txt").write_text("the user's file")
    space = SearchSpace(tiny3, sampler="grid")
    _experiment(storage, "e", 3, space)
    write_trial(storage, _record(POINTS[0]), experiment="e", trial_id="t0", sync=False)
    write_trial(storage, _record(POINTS[1]), experiment="e", trial_id="notes", sync=False)  # forged
    (storage / "_running").mkdir()
    (storage / "_running" / "e").symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(UnsafeStorageError, match=r"_running/e' is a symbolic link") as info:
        search(space, storage=storage, resume=True, experiment="e", verbose=0)
    assert "\n" not in str(info.value) and not ray.is_initialized()
    with pytest.raises(UnsafeStorageError, match="leads outside the storage"):
        plan_resume(storage, "e")  # called directly, it refuses too
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == [
        "notes", "notes/keep.txt", "t0", "t0/keep.txt"]


def test_a_forged_trial_id_in_a_row_is_refused_before_any_path_is_made_of_it(tmp_path):
    from nas_flex.tune import plan_resume

    storage, outside = tmp_path / "lb", tmp_path / "lb" / "_running" / "x"
    outside.mkdir(parents=True)
    write_trial(storage, _record(POINTS[0]), experiment="e", trial_id="../x", sync=False)
    _scratch(storage, "e", "t1", POINTS[1])
    with pytest.raises(UnsafeStorageError, match=r"trial id '\.\./x' read from a row of experiment 'e'"):
        plan_resume(storage, "e")
    assert outside.is_dir()


def test_the_private_ray_folder_is_this_users_and_no_one_elses(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = private_ray_dir()
    assert folder == tmp_path / "cache" / "nas_flex" / "ray"
    assert (folder.stat().st_mode & 0o777) == 0o700 and (folder.parent.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o777)  # widened by someone: narrowed again
    assert (private_ray_dir().stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "linked"))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "nas_flex").symlink_to(tmp_path / "cache" / "nas_flex")
    with pytest.raises(UnsafeStorageError, match="is a link or belongs to another user"):
        private_ray_dir()


# ------------------------------------------------------------------------------------------- changed space
def test_a_resume_of_a_changed_space_names_the_change_before_ray_starts(tmp_path):
    import ray

    from nas_flex.tune import search
    from nas_flex.tune.resume import space_sample

    space = SearchSpace(tiny3, sampler="grid")
    _experiment(tmp_path, "e", 3, space, space_sample=space_sample(space, "grid", 0))
    _scratch(tmp_path, "e", "t1", POINTS[1])  # an unfinished trial, as in a killed search

    def more_epochs(trial):
        return {**tiny3(trial), "epochs": 8}

    def other_choices(trial):
        return {**TINY, "pooling": trial.suggest_categorical("pooling", ["max", "avg"])}

    for changed, what in ((more_epochs, r"'epochs' \(1 -> 8\)"), (other_choices, "'pooling'")):
        with pytest.raises(SearchSpaceError, match=f"space of experiment 'e' changed since it was recorded: {what}"):
            search(SearchSpace(changed, sampler="grid", name=space.name), storage=tmp_path, resume=True,
                   experiment="e", verbose=0)
        assert not ray.is_initialized()


# ------------------------------------------------------------------------------------------------- checksums
def test_a_flipped_byte_in_a_data_page_is_detected_and_the_file_named(tmp_path):
    for i, point in enumerate(POINTS):
        write_trial(tmp_path, _record(point).replace(params=100 + i), experiment="e", trial_id=f"t{i}", sync=False,
                    merge_at=0)
    merged = compact(tmp_path)
    meta = pq.ParquetFile(merged).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index("params"))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(merged.read_bytes())
    data[start + chunk.total_compressed_size - 1] ^= 0x10  # the last byte of the column's last data page
    merged.write_bytes(bytes(data))

    with pytest.raises(CorruptLeaderboardError, match=f"{merged.name} .*CRC checksum verification failed"):
        check_storage(tmp_path, deep=True)
    with pytest.warns(UserWarning, match=f"skipped 1 unreadable .*{merged.name}"):
        assert len(Leaderboard(tmp_path).to_pandas()) == 0  # left out and named, never a changed value


# ------------------------------------------------------------------------------------------- damaged journal
class _Killed(BaseException):
    """A merge stopped right after its output is in place (as a kill would)."""


def test_a_damaged_merge_journal_is_reported_and_repaired(tmp_path, monkeypatch):
    import nas_flex.leaderboard.merge as merge

    for i in range(3):
        write_trial(tmp_path, _record(POINTS[i]), experiment="e", trial_id=f"t{i}", sync=False, merge_at=0)

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(merge, "_retire", killed)
    with pytest.raises(_Killed):
        merge.maybe_merge(tmp_path, merge_at=2, sync=False)
    monkeypatch.undo()
    journal = tmp_path / "_merge" / "trials.json"
    assert journal.is_file() and len(pd.read_parquet(tmp_path)) == 6  # every row twice for plain pandas
    journal.write_text('{"target": "../../etc/passwd", "inputs": 7}')  # damaged (or forged)

    with pytest.warns(MergeWarning, match=r"merge journal .*trials\.json' was damaged.*3 file\(s\) whose rows"):
        merge.maybe_merge(tmp_path, merge_at=2, sync=False)
    assert not journal.exists()
    assert sorted(pd.read_parquet(tmp_path)["trial_id"]) == ["t0", "t1", "t2"]
    assert sorted(Leaderboard(tmp_path).to_pandas()["trial_id"]) == ["t0", "t1", "t2"]


# ------------------------------------------------------------------------------ resume after kills, no pickles
class _Payload:
    """A pickle that creates a marker file when anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


PLANTED = ("_ray/e/tuner.pkl", "_ray/e/searcher-state-2000-01-01.pkl", "_ray/e/trial_tbad/error.pkl")


def _attacker(storage: Path, payload: bytes, stop: threading.Event) -> None:
    """Someone with write access to the storage: plants pickles where Ray kept its files and swaps every pickle
    that appears anywhere in the storage for the payload, until ``stop``."""
    planted = [storage / name for name in PLANTED]
    while not stop.is_set():
        for file in planted + [p for p in storage.rglob("*.pkl") if p not in planted]:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(payload)
        stop.wait(0.01)


def _killed_states(storage: Path, space: SearchSpace, monkeypatch) -> None:
    """The states kills leave: t0 finished; t1 killed between its last-epoch checkpoint and its row; t2's row write
    hit a full disk; tbad's checkpoint makes it raise (a third party's file)."""
    from nas_flex.train import run_trial

    layout = StorageLayout(storage)
    _experiment(storage, "e", 4, space)
    write_trial(storage, _record(POINTS[0]), experiment="e", trial_id="t0", sync=False)
    for trial_id, point in (("t1", POINTS[1]), ("t2", POINTS[2])):
        _scratch(storage, "e", trial_id, point)
        result = run_trial({**TINY, **point}, checkpoint=layout.checkpoint("e", trial_id))
        assert result.status is TrialStatus.COMPLETED
    with monkeypatch.context() as full, pytest.raises(StorageFullError):
        full.setattr(os, "replace", _full_disk)
        write_trial(storage, result, experiment="e", trial_id="t2")
    bad = _scratch(storage, "e", "tbad", {"pooling": "max"})
    info = json.loads((bad / "trial.json").read_text())
    (bad / "trial.json").write_text(json.dumps({**info, "config": {**info["config"], "width": 5}}))
    layout.checkpoint("e", "tbad").write_bytes(b"not a checkpoint")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's embedded Ray
def test_resume_finishes_every_kill_state_with_one_row_each_and_unpickles_nothing(tmp_path, monkeypatch):
    from nas_flex.tune import search

    storage, marker = tmp_path / "lb", tmp_path / "payload_ran"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # Ray's own files: here, not in the storage
    space = SearchSpace(tiny3, sampler="grid")
    _killed_states(storage, space, monkeypatch)
    payload = pickle.dumps(_Payload(marker))
    stop = threading.Event()
    race = threading.Thread(target=_attacker, args=(storage, payload, stop), daemon=True)
    race.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lb = search(space, storage=storage, resume=True, experiment="e", max_failures=0, verbose=0)
    finally:
        stop.set()
        race.join()
    assert not marker.exists()  # no pickle of the storage was ever read
    ours = sorted(str(p.relative_to(storage)) for p in (storage / "_ray").rglob("*") if p.is_file())
    assert ours == sorted(PLANTED)  # and Ray wrote nothing there (a race lost today could be won tomorrow)
    ray_errors = list((tmp_path / "cache" / "nas_flex" / "ray").rglob("error.pkl"))
    assert ray_errors, "tbad raised, so Ray wrote its error.pkl: in the private folder"
    df = Leaderboard(storage).to_pandas()
    assert sorted(df["trial_id"]) == ["t0", "t1", "t2", "tbad"]  # exactly one row each
    status = df.set_index("trial_id")["status"].to_dict()
    assert status == {"t0": "completed", "t1": "completed", "t2": "completed", "tbad": "error"}
    assert len(lb.history().query("trial_id == 't1'")) >= TINY["epochs"]  # its history, from the checkpoint
    assert _leftovers(storage) == []
    assert not StorageLayout(storage).running("e", "t1").exists()
    assert StorageLayout(storage).running("e", "tbad").is_dir()  # errored: kept for the next resume

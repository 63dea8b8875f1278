"""Leaderboards that stay fast as they grow: automatic merging of row files (concurrent writers, a merge killed at
every step), column-projected queries against a naive pandas reference, and unreadable files that no longer hide
the other rows. Speed itself is measured by experiments/bench_leaderboard.py, not here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from leaderboard_writers import concurrent_writers
from test_leaderboard import make_result

import nas_flex.leaderboard.merge as merge
from nas_flex.cli import main
from nas_flex.errors import CorruptLeaderboardError, LeaderboardSchemaError, NasFlexError
from nas_flex.leaderboard import (
    CorruptFileWarning,
    Leaderboard,
    check_storage,
    compact,
    trial_file_name,
    write_trial,
)
from nas_flex.leaderboard.store import file_level

ROOT = Path(__file__).resolve().parents[1]
# a merge that fails inside write_trial only warns (the row is written): here it must fail the test
pytestmark = pytest.mark.filterwarnings("error::nas_flex.leaderboard.MergeWarning")


@pytest.fixture
def small_levels(monkeypatch):
    """Merges at a scale a test can reach: 4 row files make a level-1 file, 2 of a level make one of the next."""
    monkeypatch.setattr(merge, "MERGE_FANOUT", 2)
    monkeypatch.setattr(merge, "MAX_LEVEL", 3)
    return 4


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.parquet"))


def _hidden(root: Path) -> list[str]:
    """Temporary and claimed files, and merge journals, anywhere in the leaderboard."""
    out = [p.name for d in (root, root / "_history") for p in d.glob(".*")]
    return out + [p.name for p in (root / "_merge").glob("*.json")]


def _result(rng: np.random.Generator, i: int) -> dict:
    status = rng.choice(["completed", "completed", "completed", "diverged", "error"])
    res = make_result(float(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9])), float(rng.choice([1e5, 2e5, 3e5, 4e5])),
                      status=str(status), epochs=2, width=int(rng.integers(4, 32)))
    res["params"] = int(rng.choice([1000, 2000, 3000]))
    if i % 11 == 0:
        res["metrics"]["val_acc"] = float("nan")  # stored as null: ranked out
    if i % 13 == 0:
        res["flops"] = None
    return res


def _naive(root: Path) -> pd.DataFrame:
    """An independent reference: every visible file through pandas, then the latest version of each trial."""
    frames = [pd.read_parquet(f) for f in sorted(root.glob("*.parquet"))]
    df = pd.concat(frames, ignore_index=True)
    df["_fin"] = df["finished"].map(lambda t: -(2**63) if pd.isna(t) else t.value)  # a missing finish: oldest
    df = df.sort_values(["experiment", "trial_id", "_fin", "written_at"], kind="stable")
    return df.groupby(["experiment", "trial_id"], sort=True).tail(1).drop(columns="_fin").reset_index(drop=True)


def _naive_top(ref: pd.DataFrame, n: int, metric: str, way: str, status: str | None) -> list[str]:
    rows = [r for r in ref.itertuples() if (status is None or r.status == status) and pd.notna(getattr(r, metric))]
    rows.sort(key=lambda r: -getattr(r, metric) if way == "max" else getattr(r, metric))  # stable: ties in key order
    return [r.trial_id for r in rows[:n]]


def _naive_pareto(ref: pd.DataFrame, ways: dict[str, str], status: str | None) -> set[str]:
    rows = [r for r in ref.itertuples() if (status is None or r.status == status)
            and all(pd.notna(getattr(r, c)) for c in ways)]
    vals = {r.trial_id: [getattr(r, c) * (-1 if w == "max" else 1) for c, w in ways.items()] for r in rows}

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return {t for t, v in vals.items() if not any(dominates(u, v) for s, u in vals.items() if s != t)}


# ------------------------------------------------------------------------------------------------ merging
def test_writes_merge_automatically_and_lose_nothing(tmp_path, small_levels):
    board = tmp_path / "board"
    results = {}
    rng = np.random.default_rng(0)
    for i in range(45):
        results[f"t{i:02d}"] = _result(rng, i)
        write_trial(board, results[f"t{i:02d}"], experiment="e", trial_id=f"t{i:02d}", sync=False,
                    merge_at=small_levels)
    files = _visible(board)
    levels = sorted(file_level(n) for n in files)
    # 45 = 2 * 16 (level 3) + 8 (level 2) + 4 (level 1) + 1 row file: merged as it was written, level by level
    assert levels == [0, 1, 2, 3, 3], files
    assert sorted(file_level(n) for n in _visible(board / "_history")) == [0, 1, 2, 3, 3]
    assert _hidden(board) == []

    lb = Leaderboard(board)
    df = lb.to_pandas()
    assert df["trial_id"].tolist() == sorted(results)
    got = dict(zip(df["trial_id"], df["metrics_val_acc"]))
    for tid, res in results.items():
        want = res["metrics"]["val_acc"]
        assert (pd.isna(got[tid]) and want != want) or got[tid] == want, tid
    assert len(lb.history()) == 45 * 2
    plain = pd.read_parquet(board)  # pandas reads the merged layout as it is, one row per trial
    assert len(plain) == 45 and plain["trial_id"].is_unique
    # merged files: row groups of bounded size, no min/max statistics for the long JSON text (small footers)
    meta = pq.ParquetFile(next(board.glob("merged-3-*.parquet"))).metadata
    assert meta.num_rows == 16 and meta.row_group(0).num_rows <= merge.ROW_GROUP_ROWS
    names = [meta.row_group(0).column(j).path_in_schema for j in range(meta.num_columns)]
    assert not meta.row_group(0).column(names.index("config")).is_stats_set
    assert meta.row_group(0).column(names.index("metrics_val_acc")).is_stats_set


def test_an_old_backlog_of_row_files_is_merged_on_the_next_write(tmp_path, small_levels):
    for i in range(21):  # an older nas_flex: one file per trial, never merged
        write_trial(tmp_path, make_result(i / 30), experiment="e", trial_id=f"t{i:02d}", sync=False, merge_at=0)
    assert len(_visible(tmp_path)) == 21
    write_trial(tmp_path, make_result(0.99), experiment="e", trial_id="t21", sync=False, merge_at=small_levels)
    assert [file_level(n) for n in _visible(tmp_path)] == [1, 3]  # 16 + 6 rows
    df = Leaderboard(tmp_path).to_pandas()
    assert df["trial_id"].tolist() == [f"t{i:02d}" for i in range(22)]
    assert df["metrics_val_acc"].tolist() == pytest.approx([i / 30 for i in range(21)] + [0.99])


def test_a_writer_that_finds_the_lock_taken_does_not_merge(tmp_path):
    with merge._merge_lock(tmp_path, blocking=True) as held:  # as if another process were merging
        assert held is True
        for i in range(5):
            write_trial(tmp_path, make_result(), experiment="e", trial_id=f"t{i}", sync=False, merge_at=4)
        assert len(_visible(tmp_path)) == 5
    write_trial(tmp_path, make_result(), experiment="e", trial_id="t5", sync=False, merge_at=4)
    assert [file_level(n) for n in _visible(tmp_path)] == [1]
    assert len(Leaderboard(tmp_path)) == 6


def test_rewrites_across_merged_and_row_files(tmp_path, small_levels):
    for i in range(8):
        write_trial(tmp_path, make_result(0.5), experiment="e", trial_id=f"t{i}", sync=False, merge_at=small_levels)
    assert all(file_level(n) > 0 for n in _visible(tmp_path))
    late = make_result(0.9, epochs=1)
    late["finished"] = "2024-06-01T00:00:00Z"
    write_trial(tmp_path, late, experiment="e", trial_id="t3", sync=False, merge_at=small_levels)  # newer: wins
    early = make_result(0.1)
    early["finished"] = "2024-01-01T00:00:00Z"
    write_trial(tmp_path, early, experiment="e", trial_id="t4", sync=False, merge_at=small_levels)  # older: loses
    lb = Leaderboard(tmp_path)
    df = lb.to_pandas()
    assert len(df) == 8 and df.set_index("trial_id")["metrics_val_acc"].to_dict() == {
        **{f"t{i}": 0.5 for i in range(8)}, "t3": 0.9}
    assert lb.history(trial_id="t3")["epoch"].tolist() == [1]
    assert lb.best().trial_id == "t3"
    for i in range(8, 12):  # more writes: the rewrite is merged with the others, the old version dropped
        write_trial(tmp_path, make_result(0.5), experiment="e", trial_id=f"t{i}", sync=False, merge_at=small_levels)
    assert lb.to_pandas().set_index("trial_id")["metrics_val_acc"]["t3"] == 0.9
    compact(tmp_path)
    plain = pd.read_parquet(tmp_path)
    assert len(plain) == 12 and plain.set_index("trial_id")["metrics_val_acc"]["t3"] == 0.9
    assert lb.history(trial_id="t3")["epoch"].tolist() == [1]


def test_queries_on_merged_and_row_files_match_a_naive_reference(tmp_path, small_levels):
    rng = np.random.default_rng(1)
    for i in range(70):
        exp = "a" if i % 3 else "b"
        write_trial(tmp_path, _result(rng, i), experiment=exp, trial_id=f"t{i:02d}", history=False, sync=False,
                    merge_at=small_levels)
    for i in (5, 17, 40):  # rewrites: their old versions sit in merged files
        res = _result(rng, i)
        res["finished"] = "2024-07-01T00:00:00Z"
        write_trial(tmp_path, res, experiment="a", trial_id=f"t{i:02d}", history=False, sync=False, merge_at=0)
    levels = {file_level(n) for n in _visible(tmp_path)}
    assert 0 in levels and len(levels) >= 3  # both layouts at once

    lb, ref = Leaderboard(tmp_path), _naive(tmp_path)
    full = lb.to_pandas()
    assert full["trial_id"].tolist() == ref["trial_id"].tolist()
    for col in ("status", "metrics_val_acc", "flops", "params", "params_width", "written_at"):
        assert full[col].astype(object).where(full[col].notna(), None).tolist() == \
            ref[col].astype(object).where(ref[col].notna(), None).tolist(), col
    for metric, way in (("metrics_val_acc", "max"), ("flops", "min"), ("params", "min")):
        for status in ("completed", None, "diverged"):
            for n in (1, 7, 100):
                top = lb.top(n, metric, status=status)
                assert top["trial_id"].tolist() == _naive_top(ref, n, metric, way, status), (metric, status, n)
                pd.testing.assert_frame_equal(top, full.loc[top.index])  # whole rows, indexed as in to_pandas()
    assert lb.best("flops").trial_id == _naive_top(ref, 1, "flops", "min", "completed")[0]
    for ways in ({"metrics_val_acc": "max", "flops": "min"},
                 {"metrics_val_acc": "max", "flops": "min", "params": "min"},
                 {"params": "min"}, {"metrics_val_acc": "min", "params_width": "max"}):
        for status in ("completed", None):
            front = lb.pareto(ways, status=status)
            assert set(front["trial_id"]) == _naive_pareto(ref, ways, status), (ways, status)
            assert len(front) == len(set(front["trial_id"]))
            pd.testing.assert_frame_equal(front, full.loc[front.index])
            first = list(ways)[0]  # best first by the first objective
            vals = front[first].astype(float).to_numpy() * (-1 if ways[first] == "max" else 1)
            assert (np.diff(vals) >= 0).all()
    assert len(lb) == len(ref) and lb.experiments() == ["a", "b"]


def test_concurrent_writers_merging_with_a_reader_and_compaction(tmp_path, small_levels):
    board = tmp_path / "board"
    workers, per = 4, 40
    lb, seen, reads = Leaderboard(board), [0], 0
    with concurrent_writers(tmp_path, board, workers, per, merge_at=small_levels, small_levels=True) as procs:
        while any(p.poll() is None for p in procs):
            time.sleep(0.05)
            if board.exists():
                df = lb.to_pandas()  # read while files are merged away under it: never a row lost or doubled
                assert len(df) >= seen[-1] and not df.duplicated(["experiment", "trial_id"]).any()
                seen.append(len(df))
                top = lb.top(3)  # fetches whole rows from files that merges may retire meanwhile
                assert min(3, len(df)) <= len(top) <= 3 and top["metrics_val_acc"].is_monotonic_decreasing
                reads += 1
                if reads % 10 == 5:
                    compact(board)
    assert reads >= 3
    df = lb.to_pandas()
    assert len(df) == workers * per and df.groupby("experiment").size().tolist() == [per] * workers
    assert df.set_index(["experiment", "trial_id"])["metrics_val_acc"].to_dict() == {
        (f"w{w}", f"t{i:03d}"): i / per for w in range(workers) for i in range(per)}
    assert len(lb.history()) == workers * per
    plain = pd.read_parquet(board)
    assert len(plain) == workers * per and not plain.duplicated(["experiment", "trial_id"]).any()
    assert _hidden(board) == []
    # row files written while the last compaction held the lock wait for the next write's merge
    merge.maybe_merge(board, merge_at=small_levels)
    assert len(_visible(board)) < 20 and len(lb) == workers * per


# a merge killed at each of its steps (SIGKILL: no cleanup runs, the kernel drops the lock)
_CRASH = """
import os, signal, sys
from pathlib import Path
import nas_flex.leaderboard.merge as merge
from nas_flex.leaderboard import write_trial
path, point = Path(sys.argv[1]), sys.argv[2]
def die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)
write_journal, retire, restore = merge._write_journal, merge._retire, merge._restore_or_remove
if point == "output_written":  # the merged file is written under its temporary name, nothing else
    merge._write_journal = die
elif point == "journal_written":  # ... and the journal, not yet renamed into place
    merge._write_journal = lambda *a, **k: (write_journal(*a, **k), die())
elif point == "renamed":  # the merged file is in place, no input removed
    merge._retire = die
elif point == "mid_retire":  # the first input is claimed (renamed away) but not yet removed
    merge._restore_or_remove = die
elif point == "rewritten_then_claimed":  # a trial rewrote its row after the merge read it; then the claim, and death
    def rewrite(file, stat):
        if file.name == "e--t0.parquet":
            write_trial(path, {"status": "completed", "config": {}, "finished": "2030-01-01T00:00:00Z",
                               "metrics": {"val_acc": 0.99}}, experiment="e", trial_id="t0", sync=False, merge_at=0)
            merge._restore_or_remove = die
        retire(file, stat)
    merge._retire = rewrite
write_trial(path, {"status": "completed", "config": {}, "metrics": {"val_acc": 0.7},
                   "history": [{"epoch": 1, "val_acc": 0.7}]}, experiment="e", trial_id="t7", sync=False, merge_at=8)
print("merge was not killed")
"""


@pytest.mark.parametrize("point", ["output_written", "journal_written", "renamed", "mid_retire",
                                   "rewritten_then_claimed"])
def test_a_merge_killed_midway_loses_no_row(tmp_path, point):
    def res(acc: float) -> dict:
        return {"status": "completed", "config": {}, "metrics": {"val_acc": acc},
                "history": [{"epoch": 1, "val_acc": acc}]}

    for i in range(7):
        write_trial(tmp_path, res(i / 10), experiment="e", trial_id=f"t{i}", sync=False, merge_at=8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path), point], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    want = {f"t{i}": i / 10 for i in range(7)} | {"t7": 0.7}
    rewritten = point == "rewritten_then_claimed"

    lb = Leaderboard(tmp_path)
    df = lb.to_pandas()  # right after the crash: every row readable (the rewrite may still hide in its claim)
    assert df["trial_id"].tolist() == sorted(want)
    assert df.set_index("trial_id")["metrics_val_acc"].to_dict() == want | ({"t0": 0.0} if rewritten else {})
    assert len(lb.history()) == 8 - rewritten  # the rewrite has no history

    write_trial(tmp_path, res(0.8), experiment="e", trial_id="t8", sync=False, merge_at=8)  # the next merge recovers
    want |= {"t8": 0.8} | ({"t0": 0.99} if rewritten else {})
    df = lb.to_pandas()
    assert df.set_index("trial_id")["metrics_val_acc"].to_dict() == want
    assert _hidden(tmp_path) == []
    if rewritten:  # the old version of t0 stays in the merged file until a merge or compaction takes both
        assert len(pd.read_parquet(tmp_path)) == 10
        compact(tmp_path)
    plain = pd.read_parquet(tmp_path)
    assert len(plain) == 9 and plain["trial_id"].is_unique  # nothing left doubled either
    assert len(lb.history()) == 9 - rewritten


# -------------------------------------------------------------------------------------------- corrupt files
def _truncate(file: Path, keep: int = 100) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def test_a_corrupt_file_no_longer_hides_the_other_rows(tmp_path, small_levels, capsys):
    for i in range(12):
        write_trial(tmp_path, make_result(0.5 + i / 100, epochs=1), experiment="e", trial_id=f"t{i}", sync=False,
                    merge_at=small_levels)
    merged = next(tmp_path.glob("merged-1-*.parquet"))
    _truncate(merged)  # 4 rows gone with it
    (tmp_path / "empty--x.parquet").write_bytes(b"")
    lb = Leaderboard(tmp_path)
    with pytest.warns(CorruptFileWarning) as record:
        df = lb.to_pandas()
    assert len(record) == 1
    message = str(record[0].message)
    assert merged.name in message and "empty--x.parquet" in message and "2 unreadable" in message
    assert len(df) == 8
    with pytest.warns(CorruptFileWarning):
        assert lb.best().trial_id == df.sort_values("metrics_val_acc").trial_id.iloc[-1]
    with pytest.warns(CorruptFileWarning):
        assert len(lb.pareto({"metrics_val_acc": "max", "flops": "min"})) >= 1
    with pytest.raises(CorruptLeaderboardError, match=rf"empty--x\.parquet.*{merged.name}"):
        Leaderboard(tmp_path, on_corrupt="raise").top(3)
    assert issubclass(CorruptLeaderboardError, NasFlexError)
    with pytest.raises(LeaderboardSchemaError, match="`on_corrupt` must be 'warn' or 'raise', but got 'skip'"):
        Leaderboard(tmp_path, on_corrupt="skip")

    # the CLI: the table of the readable rows, and one warning line naming both files
    assert main(["leaderboard", str(tmp_path), "--top", "3"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5 and "(3 of 8 trials" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas-flex: warning: skipped 2 unreadable")
    assert merged.name in err[0] and "empty--x.parquet" in err[0]

    # writers keep merging around the bad files; the bad files stay where they are, untouched
    with pytest.warns(CorruptFileWarning):
        for i in range(12, 18):
            write_trial(tmp_path, make_result(0.1, epochs=1), experiment="e", trial_id=f"t{i}", sync=False,
                        merge_at=small_levels)
    assert merged.exists() and (tmp_path / "empty--x.parquet").read_bytes() == b""
    with pytest.warns(CorruptFileWarning):
        assert len(lb) == 14


def test_check_storage_names_every_bad_file_up_front(tmp_path):
    assert check_storage(tmp_path / "nothing yet") == 0
    for i in range(3):
        write_trial(tmp_path, make_result(), experiment="e", trial_id=f"t{i}", sync=False)
    assert check_storage(tmp_path) == 6 and check_storage(tmp_path, deep=True) == 6
    _truncate(tmp_path / trial_file_name("e", "t0"), 500)
    _truncate(tmp_path / "_history" / trial_file_name("e", "t1"), 0)
    table = pq.read_table(tmp_path / trial_file_name("e", "t2")).drop_columns(["flops"])
    pq.write_table(table, tmp_path / "old--t9.parquet")  # another schema version
    with pytest.raises(CorruptLeaderboardError) as info:
        check_storage(tmp_path)
    text = str(info.value)
    assert "\n" not in text and text.startswith("3 bad file(s) in the leaderboard storage")
    assert "e--t0.parquet (ArrowInvalid" in text and "_history/e--t1.parquet (" in text
    assert "old--t9.parquet (lacks column(s) flops" in text
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(LeaderboardSchemaError, match="is a file; it must be a directory"):
        check_storage(file)

"""The Parquet leaderboard: schema, atomic writes, one row per trial, ranking, compaction, concurrency, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from leaderboard_writers import concurrent_writers

from nas_flex.cli import main
from nas_flex.errors import LeaderboardSchemaError, NasFlexError
from nas_flex.leaderboard import (
    CONFIG_COLUMNS,
    METRIC_DIRECTIONS,
    SCHEMA_VERSION,
    TRIAL_SCHEMA,
    Leaderboard,
    compact,
    trial_file_name,
    write_trial,
)
from nas_flex.record import RESULT_FIELDS, TrialRecord, TrialStatus
from nas_flex.train.config import KEY_DOCS, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def _sizes(scale: float = 1.0) -> list[dict]:
    """Learned-size records shaped like nas_flex.sizes.learned_size_records: base keys plus raw per-method keys."""
    return [
        {"name": "features.0", "kind": "mixed", "height": 5.0, "width": 5.0, "argmax_kernel_size": 5,
         "entropy": 0.9, "normalized_entropy": 0.82, "probabilities": [0.2, 0.5, 0.3], "kernel_sizes": [3, 5, 7]},
        {"name": "features.3", "kind": "flexconv", "height": 7.25 * scale, "width": 6.5 * scale,
         "mask_mean_h": 0.0, "mask_mean_w": 0.0, "mask_sigma_h": 0.31, "mask_sigma_w": 0.28},
    ]


def make_result(val_acc: float = 0.9, flops: float = 1.0e6, *, status: str = "completed", epochs: int = 3,
                **config) -> dict:
    """A hand-built result with the shape of run_trial's (no training)."""
    cfg = resolve_config({"dataset": "digits", "conv": "flexconv", "kernel_size": 5, "pooling": "max",
                          "width": 8, "depth": 2, "epochs": epochs, "conv_hparams": {"kernel_net": "magnet"},
                          **config})
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "train_acc": val_acc - 0.1 / e, "val_loss": 1.5 / e,
         "val_acc": val_acc - 0.05 * (epochs - e), "lr": 3e-3 / e, "seconds": 0.5, "learned_sizes": _sizes(e)}
        for e in range(1, epochs + 1)
    ]
    last = history[-1]
    return {
        "status": status,
        "error": None if status == "completed" else "the loss became nan at epoch 2",
        "config": cfg,
        "started": "2024-05-01T12:00:00+00:00",
        "finished": "2024-05-01T12:03:30+00:00",
        "epochs_completed": epochs,
        "metrics": {k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "best": {"val_acc": max(h["val_acc"] for h in history), "val_loss": min(h["val_loss"] for h in history),
                 "epoch": epochs},
        "history": history,
        "params": 12345,
        "flops": flops,
        "flops_fft": 0.0,
        "train_seconds": 1.5,
        "examples_per_second": 2400.0,
        "peak_memory_bytes": 123_456_789,
        "peak_memory_kind": "process_max_rss",
        "device": "cpu (x86_64, 2 threads)",
        "learned_sizes": _sizes(epochs),
        "initial_sizes": _sizes(1),
        "size_recipes": [{"kind": "flexconv", "optimizer": "adam", "lr_factor": 0.1, "lr": 3e-4, "weight_decay": 0.0,
                          "schedule": "warmup_cosine", "update": "joint", "source": "hand-built"}],
        "nas_flex_version": "0.1.0",
        "torch_version": "2.5.1",
    }


def test_hand_built_result_is_a_trial_record():
    # the runner adds search_params (the sampler's params) to what run_trial returns
    record = TrialRecord.from_dict(make_result())
    assert set(make_result()) == set(RESULT_FIELDS) - {"search_params"} and record.search_params is None


def test_search_params_round_trip(tmp_path):
    write_trial(tmp_path, {**make_result(), "search_params": {"kernel_size": 5, "pooling": "max"}},
                experiment="e", trial_id="t1")
    row = Leaderboard(tmp_path).to_pandas().iloc[0]
    assert json.loads(row["search_params"]) == {"kernel_size": 5, "pooling": "max"}


def test_round_trip(tmp_path):
    res = make_result(0.93, 2.5e6)
    file = write_trial(tmp_path, res, experiment="digits", trial_id="t0001")
    assert file == tmp_path / "digits--t0001.parquet" and file.exists()
    lb = Leaderboard(tmp_path)
    df = lb.to_pandas()
    assert len(df) == len(lb) == 1
    row = df.iloc[0]
    assert (row.experiment, row.trial_id, row.status, row.schema_version) == ("digits", "t0001", "completed", 1)
    assert pd.isna(row.error)
    assert row.started == pd.Timestamp("2024-05-01T12:00:00", tz="UTC")
    assert row.finished == pd.Timestamp("2024-05-01T12:03:30", tz="UTC")
    assert json.loads(row.config) == res["config"]
    # the default key is the one dedupe compares: the config JSON's sha256, a key still at its "as before" value
    # (test_fraction None) left out so that keys do not change when such a key is added
    assert row.config_key == resolve_config(json.loads(row.config)).key == res["config"].key
    assert (row.params_conv, row.params_kernel_size, row.params_pooling) == ("flexconv", 5, "max")
    assert json.loads(row.params_conv_hparams) == {"kernel_net": "magnet"}
    assert (row.params_lr, row.params_epochs, row.params_amp) == (3e-3, 3, True)
    assert (row.dataset, row.epochs, row.seed, row.epochs_completed) == ("digits", 3, 0, 3)
    for k, v in res["metrics"].items():
        assert row[f"metrics_{k}"] == v
    assert (row.best_val_acc, row.best_val_loss, row.best_epoch) == (0.93, 0.5, 3)
    for k in ("params", "flops", "flops_fft", "train_seconds", "examples_per_second", "peak_memory_bytes",
              "peak_memory_kind", "device", "nas_flex_version", "torch_version"):
        assert row[k] == res[k], k
    assert list(row.learned_sizes) == [
        {"layer": "features.0", "kind": "mixed", "height": 5.0, "width": 5.0},
        {"layer": "features.3", "kind": "flexconv", "height": 21.75, "width": 19.5},
    ]
    assert json.loads(row.learned_sizes_json) == res["learned_sizes"]  # raw keys, probabilities list included

    hist = lb.history()
    assert hist["epoch"].tolist() == [1, 2, 3]
    assert hist["val_acc"].tolist() == pytest.approx([h["val_acc"] for h in res["history"]])
    assert hist["lr"].tolist() == pytest.approx([3e-3, 1.5e-3, 1e-3])
    assert [s[1]["height"] for s in hist["learned_sizes"]] == [7.25, 14.5, 21.75]
    assert json.loads(hist["learned_sizes_json"][0]) == res["history"][0]["learned_sizes"]
    assert lb.experiments() == ["digits"]


def test_schema_columns_types_and_metadata(tmp_path):
    res = make_result(kernel_size=[3, 5], data_options={"scales": [1, 2]})
    res["metrics"]["val_acc"] = float("nan")  # a trial that diverged before its first evaluation
    res["config"] = {**res["config"], "my_extra_key": "only in the JSON"}  # a resolved config is read-only
    file = write_trial(tmp_path, res, experiment="e", trial_id="t")
    schema = pq.read_schema(file)
    assert schema.equals(TRIAL_SCHEMA, check_metadata=True)
    assert schema.metadata[b"nas_flex.schema_version"] == str(SCHEMA_VERSION).encode() == b"1"
    assert json.loads(schema.metadata[b"nas_flex.metric_directions"]) == METRIC_DIRECTIONS
    assert schema.field("metrics_val_acc").metadata[b"direction"] == b"max"
    assert schema.field("flops").metadata[b"direction"] == b"min"
    utc = pa.timestamp("us", tz="UTC")
    expected = {
        "experiment": pa.string(), "trial_id": pa.string(), "status": pa.string(), "started": utc, "finished": utc,
        "config": pa.string(), "config_key": pa.string(), "params_backbone": pa.string(),
        "params_conv": pa.string(), "params_kernel_size": pa.int64(), "params_pooling": pa.string(),
        "params_width": pa.int64(), "params_lr": pa.float64(), "params_conv_hparams": pa.string(),
        "dataset": pa.string(), "epochs": pa.int64(), "seed": pa.int64(), "metrics_val_acc": pa.float64(),
        "best_epoch": pa.int64(), "params": pa.int64(), "flops": pa.float64(), "peak_memory_bytes": pa.int64(),
        "learned_sizes": pa.list_(pa.field("element", pa.struct([
            ("layer", pa.string()), ("kind", pa.string()), ("height", pa.float64()), ("width", pa.float64())]))),
        "learned_sizes_json": pa.string(), "nas_flex_version": pa.string(), "schema_version": pa.int32(),
    }
    for name, typ in expected.items():
        assert schema.field(name).type == typ, name
    # every trial-config key has its params_ column, and nothing else does
    assert set(CONFIG_COLUMNS) == set(KEY_DOCS)
    assert {n for n in schema.names if n.startswith("params_")} == {f"params_{k}" for k in KEY_DOCS}
    table = pq.read_table(file)
    assert table["params_kernel_size"][0].as_py() is None  # a per-layer list stays in config only
    assert json.loads(table["config"][0].as_py())["kernel_size"] == [3, 5]
    assert json.loads(table["params_data_options"][0].as_py()) == {"scales": [1, 2]}
    assert json.loads(table["config"][0].as_py())["my_extra_key"] == "only in the JSON"
    assert table["metrics_val_acc"][0].as_py() is None  # NaN is stored as null
    # a result key the schema does not know is refused, by name
    with pytest.raises(LeaderboardSchemaError, match="unknown key.*'val_top5'"):
        write_trial(tmp_path, {**res, "val_top5": 0.99}, experiment="e", trial_id="u")
    with pytest.raises(LeaderboardSchemaError, match="params.*must be an integer"):
        write_trial(tmp_path, {**res, "params": "many"}, experiment="e", trial_id="u")
    with pytest.raises(LeaderboardSchemaError, match=r"result\['search_params'\] must be JSON-serialisable.*set"):
        write_trial(tmp_path, {**res, "search_params": {"k": {3, 5}}}, experiment="e", trial_id="u")
    assert not list(tmp_path.glob("e--u*"))
    # NumPy scalars (a sampler's values) are stored as Python numbers, inf as null
    write_trial(tmp_path, {**res, "search_params": {"k": np.int64(5), "lr": np.float32(0.5), "x": math.inf}},
                experiment="e", trial_id="n")
    stored = pq.read_table(tmp_path / "e--n.parquet")["search_params"][0].as_py()
    assert json.loads(stored) == {"k": 5, "lr": 0.5, "x": None}


def test_read_parquet_on_the_directory_and_crash_leftovers_are_invisible(tmp_path, monkeypatch):
    for i in range(3):
        write_trial(tmp_path, make_result(0.5 + i / 10), experiment="e", trial_id=f"t{i}")
    # a crash mid-write leaves a hidden temporary file: half a Parquet file
    whole = (tmp_path / "e--t0.parquet").read_bytes()
    (tmp_path / f".e--t9.parquet.{os.getpid()}.abc.tmp").write_bytes(whole[: len(whole) // 2])
    # a write that fails before its rename leaves nothing behind
    import nas_flex.leaderboard.store as store

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_trial(tmp_path, make_result(), experiment="e", trial_id="t3")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == [
        f".e--t9.parquet.{os.getpid()}.abc.tmp", "e--t0.parquet", "e--t1.parquet", "e--t2.parquet"]
    assert sorted(p.name for p in (tmp_path / "_history").iterdir()) == ["e--t0.parquet", "e--t1.parquet",
                                                                         "e--t2.parquet"]

    df = pd.read_parquet(tmp_path)
    assert sorted(df["trial_id"]) == ["t0", "t1", "t2"]
    assert "epoch" not in df.columns  # history rows stay out
    assert len(Leaderboard(tmp_path)) == 3
    compact(tmp_path, leftovers_older_than=0)  # removes dead temporary files
    assert not list(tmp_path.glob(".*"))


def test_file_names_are_distinct_and_visible():
    assert trial_file_name("digits", "t0001") == "digits--t0001.parquet"
    odd = [("a b", "c"), ("a_b", "c"), ("a--b", "c"), ("a", "-b--c"), ("_hidden", "x"), (".dot", "x"), ("a/b", "c")]
    names = [trial_file_name(e, t) for e, t in odd]
    assert len(set(names)) == len(names)
    assert all(n[0].isalnum() and "/" not in n and n.endswith(".parquet") for n in names)


def test_rewrite_keeps_one_row_and_its_history(tmp_path):
    write_trial(tmp_path, make_result(0.5, epochs=3), experiment="e", trial_id="t")
    write_trial(tmp_path, make_result(0.7, epochs=2), experiment="e", trial_id="t")
    lb = Leaderboard(tmp_path)
    assert len(lb) == 1 and lb.to_pandas()["metrics_val_acc"].tolist() == [0.7]
    assert lb.history()["epoch"].tolist() == [1, 2]
    # after a compaction the trial is rewritten with a later finish: readers keep the later row
    write_trial(tmp_path, make_result(0.1), experiment="e", trial_id="other")
    assert compact(tmp_path) is not None
    late = make_result(0.8, epochs=1)
    late["finished"] = "2024-05-02T00:00:00Z"
    write_trial(tmp_path, late, experiment="e", trial_id="t")
    assert len(pd.read_parquet(tmp_path)) == 3  # the compacted row and the rewrite, until the next compaction
    df = lb.to_pandas()
    assert df["trial_id"].tolist() == ["other", "t"] and df["metrics_val_acc"].tolist() == [0.1, 0.8]
    assert lb.history(trial_id="t")["epoch"].tolist() == [1]
    compact(tmp_path)
    assert len(pd.read_parquet(tmp_path)) == 2
    assert lb.to_pandas()["metrics_val_acc"].tolist() == [0.1, 0.8]
    assert lb.history(trial_id="t")["epoch"].tolist() == [1]


@pytest.fixture
def ranked(tmp_path):
    """Hand-made trials: (trial_id, val_acc, flops, status)."""
    rows = [("a", 0.90, 100), ("b", 0.95, 300), ("c", 0.95, 300), ("d", 0.85, 200), ("e", 0.80, 50),
            ("f", float("nan"), 10), ("g", 0.99, 10, "diverged"), ("i", 0.90, 150)]
    for tid, acc, flops, *status in rows:
        res = make_result(acc, flops, status=status[0] if status else "completed", epochs=1)
        res["metrics"]["val_loss"] = 1.0 - acc if not math.isnan(acc) else acc
        write_trial(tmp_path, res, experiment="x", trial_id=tid)
    return Leaderboard(tmp_path)


def test_best_and_top_follow_recorded_directions(ranked):
    assert ranked.directions["metrics_val_acc"] == "max" and ranked.directions["flops"] == "min"
    assert ranked.best("metrics_val_acc").trial_id == "b"  # b and c tie: (experiment, trial_id) order
    assert ranked.best("metrics_val_loss").trial_id == "b"  # min direction
    assert ranked.best("flops").trial_id == "f"  # a missing accuracy does not hide its flops
    assert ranked.best("metrics_val_acc", status=None).trial_id == "g"
    assert ranked.top(3, "metrics_val_acc")["trial_id"].tolist() == ["b", "c", "a"]
    assert ranked.top(2, "flops")["trial_id"].tolist() == ["f", "e"]
    with pytest.raises(LeaderboardSchemaError, match=r"unknown metric 'accuracy'.*one of: .*'metrics_val_acc'"):
        ranked.best("accuracy")
    with pytest.raises(LeaderboardSchemaError, match="no 'oom' trial"):
        ranked.best(status="oom")
    # a TrialStatus member selects the rows of its string value (the Parquet column holds the plain string)
    assert ranked.best(status=TrialStatus.DIVERGED).trial_id == ranked.best(status="diverged").trial_id == "g"
    with pytest.raises(LeaderboardSchemaError, match="no 'oom' trial"):
        ranked.best(status=TrialStatus.OOM)


def test_pareto_front(ranked):
    front = ranked.pareto({"metrics_val_acc": "max", "flops": "min"})
    # d is dominated by a, i by a (same accuracy, more flops); b and c tie and both stay; f (NaN) and g
    # (diverged) are left out
    assert front["trial_id"].tolist() == ["b", "c", "a", "e"]
    assert ranked.pareto(["metrics_val_acc", "flops"])["trial_id"].tolist() == ["b", "c", "a", "e"]
    # the opposite directions give the opposite front
    flipped = ranked.pareto({"metrics_val_acc": "min", "flops": "max"})
    assert sorted(flipped["trial_id"]) == ["b", "c", "d", "e"]
    assert ranked.pareto({"metrics_val_acc": "max", "flops": "min"}, status=None)["trial_id"].tolist() == ["g"]
    with pytest.raises(LeaderboardSchemaError, match="'max' or 'min'"):
        ranked.pareto({"flops": "down"})
    with pytest.raises(LeaderboardSchemaError, match="unknown objective 'flop'.*did you mean 'flops'"):
        ranked.pareto({"flop": "min"})


def test_compact_keeps_every_row_and_runs_twice(tmp_path):
    for i in range(12):
        write_trial(tmp_path, make_result(i / 12, 1e5 * (i + 1), epochs=2), experiment=f"e{i % 2}",
                    trial_id=f"t{i:02d}")
    lb = Leaderboard(tmp_path)
    before, hist_before = lb.to_pandas(), lb.history()
    target = lb.compact()
    assert [p.name for p in tmp_path.glob("*.parquet")] == [target.name]
    assert len(list((tmp_path / "_history").glob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(lb.to_pandas(), before)
    pd.testing.assert_frame_equal(lb.history(), hist_before)
    assert len(pd.read_parquet(tmp_path)) == 12
    assert lb.compact() is None  # nothing left to merge
    pd.testing.assert_frame_equal(lb.to_pandas(), before)
    assert lb.experiments() == ["e0", "e1"]


def test_a_rewrite_during_compaction_is_kept(tmp_path, monkeypatch):
    import nas_flex.leaderboard.merge as merge

    for tid in ("a", "b"):
        write_trial(tmp_path, make_result(0.5), experiment="e", trial_id=tid)
    retire = merge._retire

    def rewrite_then_retire(file, stat):  # a trial rewrites its row after compact() read it, before its removal
        if file.name == "e--a.parquet":
            late = make_result(0.9)
            late["finished"] = "2024-06-01T00:00:00Z"
            write_trial(tmp_path, late, experiment="e", trial_id="a")
        retire(file, stat)

    monkeypatch.setattr(merge, "_retire", rewrite_then_retire)
    compact(tmp_path, history=False)
    assert (tmp_path / "e--a.parquet").exists() and not (tmp_path / "e--b.parquet").exists()
    assert Leaderboard(tmp_path).to_pandas()["metrics_val_acc"].tolist() == [0.9, 0.5]
    assert not list(tmp_path.glob(".*"))


def test_concurrent_writers_and_compaction(tmp_path):
    board = tmp_path / "board"
    lb, seen = Leaderboard(board), [0]
    with concurrent_writers(tmp_path, board, 8, 50, history_every_other=True) as procs:
        # compact (a few times: it is not free) while they write: no row may go missing
        while any(p.poll() is None for p in procs) and len(seen) < 4:
            time.sleep(0.3)  # leave the CPUs to the writers most of the time
            if board.exists():
                compact(board)
                seen.append(len(lb))
                assert seen[-1] >= seen[-2]
    df = lb.to_pandas()
    assert len(df) == 400 and df.groupby("experiment").size().tolist() == [50] * 8
    assert len(lb.history()) == 200
    compact(board)
    assert len(pd.read_parquet(board)) == 400
    assert not list(board.glob(".*")) and not list(board.glob("_history/.*"))


def test_missing_columns_are_listed(tmp_path):
    file = write_trial(tmp_path, make_result(), experiment="e", trial_id="t")
    old = pq.read_table(file).drop_columns(["metrics_val_acc", "flops"])
    pq.write_table(old, tmp_path / "old--t.parquet")
    with pytest.raises(LeaderboardSchemaError, match=r"old--t\.parquet lacks column\(s\) metrics_val_acc, flops"):
        Leaderboard(tmp_path).to_pandas()
    (tmp_path / "old--t.parquet").unlink()
    wrong = pq.read_table(file).set_column(TRIAL_SCHEMA.get_field_index("params"), "params",
                                           pa.array(["many"]))
    pq.write_table(wrong, tmp_path / "wrong--t.parquet")
    with pytest.raises(LeaderboardSchemaError, match="column 'params' has type string"):
        Leaderboard(tmp_path).to_pandas()


def test_importing_the_leaderboard_leaves_torch_and_ray_out(tmp_path):
    code = (
        "import sys\n"
        "from nas_flex.leaderboard import Leaderboard, write_trial\n"
        "light = 'pandas' not in sys.modules\n"
        f"write_trial({str(tmp_path)!r}, {{'status': 'completed', 'config': {{}}}}, experiment='e', trial_id='t')\n"
        f"assert len(Leaderboard({str(tmp_path)!r}).to_pandas()) == 1\n"
        "print(light, *sorted({'torch', 'ray', 'optuna', 'nas_flex.train', 'nas_flex.layers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]  # pandas waits for the first read; nothing of the training stack loads


def test_cli_table_and_errors(ranked, capsys):
    path = str(ranked.path)
    assert main(["leaderboard", path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["trial_id", "status", "params_conv"]
    # best val_acc first, completed trials only (as Leaderboard.top): the diverged g is left out and counted
    assert [ln.split()[0] for ln in lines[1:4]] == ["b", "c", "a"]
    assert "g" not in [ln.split()[0] for ln in lines[1:-1]]
    assert lines[-1] == ("(7 of 8 trials, completed only (1 other: --all-statuses shows them), "
                         "sorted by metrics_val_acc)")
    assert "5.0 7.2x6.5" in out  # learned sizes summarised per layer: square, then height x width
    assert main(["leaderboard", path, "--all-statuses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:4]] == ["g", "b", "c"] and lines[-1].startswith("(8 of 8 trials")

    assert main(["leaderboard", path, "--top", "2", "--sort", "flops", "--where", "status == 'completed'",
                 "--columns", "trial_id,flops", "metrics_val_acc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["trial_id", "flops", "metrics_val_acc"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["f", "e"] and lines[3].startswith("(2 of 8 trials")

    cases = [
        (["leaderboard", str(ranked.path / "nope")], "no leaderboard at"),
        (["leaderboard", path, "--columns", "trial_id", "accuracy"], "unknown column 'accuracy'"),
        (["leaderboard", path, "--sort", "flop"], "unknown sort column 'flop' (did you mean 'flops'?)"),
        (["leaderboard", path, "--where", "no_such_column > 1"], "unknown column 'no_such_column'"),
        (["leaderboard", path, "--where", "metrics_val_acc >"], "not a valid expression"),
        (["leaderboard", path, "--top", "0"], "--top must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("nas-flex: error: ") and message in err and "Traceback" not in err, err
    assert issubclass(LeaderboardSchemaError, NasFlexError)


def test_timestamps_are_utc(tmp_path):
    res = make_result()
    res["started"] = datetime(2024, 5, 1, 14, 0, tzinfo=timezone.utc).astimezone()  # a local-time datetime
    res["finished"] = "2024-05-01T16:00:00+02:00"
    write_trial(tmp_path, res, experiment="e", trial_id="t")
    row = Leaderboard(tmp_path).to_pandas().iloc[0]
    assert row.started == pd.Timestamp("2024-05-01T14:00", tz="UTC")
    assert row.finished == pd.Timestamp("2024-05-01T14:00", tz="UTC")

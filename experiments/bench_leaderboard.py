"""How fast is a large leaderboard? Timings and peak memory of the queries on 10^5 trials, and the old layout beside.

Builds a leaderboard of ``--trials`` trials laid out as a search leaves it: realistic rows of the project's schema
(varied configs, learned sizes, metrics), the first ones bulk-written as level-1 merged files and merged upwards by
the real merge code (``merge.maybe_merge``), the last ``--written`` through ``write_trial`` itself (fsync on, with
its automatic merges, as a search's trials write). Then, each in a fresh process (peak RSS from ``wait4``), times
``Leaderboard.top(10)``, ``best``, ``pareto``, ``len``, ``by_architecture`` (its rows share ~256 architecture keys
over distinct seeds), ``to_pandas``, ``pd.read_parquet(dir)``, ``check_storage``
and the ``nas-flex leaderboard --top 10`` command (whole process). The same queries run on ``--old`` trials in the
old layout (one file per trial, never merged: what nas_flex wrote before automatic merging) and on the same trials
after one merge, side by side.

    python experiments/bench_leaderboard.py [--trials 100000] [--written 2000] [--old 3000] [--dir DIR]

Only bulk rows skip the per-epoch history (queries never read it); the ``--written`` trials have it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from experiments.common import write_json
from nas_flex.leaderboard import MERGE_AT, merge, write_trial
from nas_flex.leaderboard.schema import TRIAL_SCHEMA, trial_table
from nas_flex.leaderboard.store import write_table_atomic
from nas_flex.storage import merged_file_name

ROOT = Path(__file__).resolve().parents[1]
CONVS = ["conv", "flexconv", "njet", "envelope", "niff", "cfconv", "mixed"]
START = datetime(2024, 5, 1, tzinfo=timezone.utc)


def make_result(rng: np.random.Generator, i: int) -> dict:
    """A result shaped like ``run_trial``'s: the config a search space samples, 4 conv layers, 3 epochs."""
    conv = CONVS[i % len(CONVS)]
    config = {
        "backbone": "cnn4", "conv": conv, "conv_hparams": {"kernel_net": "magnet"} if conv == "flexconv" else {},
        "kernel_size": int(rng.choice([3, 5, 7, 9, 11])), "pooling": str(rng.choice(["max", "avg", "blur"])),
        "width": int(rng.choice([16, 32, 64])), "depth": 4, "dropout": 0.1, "head": "linear",
        "dataset": "cifar10", "data_root": "~/.cache/nas_flex", "image_size": 32, "download": True,
        "data_options": {}, "train_subset": None, "val_subset": None, "epochs": 3, "batch_size": 64,
        "optimizer": "adamw", "lr": float(10 ** rng.uniform(-4, -2)), "size_lr_factor": 1.0,
        "weight_decay": 1e-4, "warmup_epochs": 0.0, "grad_clip": 1.0, "label_smoothing": 0.0, "seed": i,
        "device": "cpu", "amp": False, "deterministic": True, "num_workers": 0,
    }
    acc = [float(v) for v in np.sort(rng.uniform(0.2, 0.9, 3))]
    sizes = [{"name": f"features.{3 * k}", "kind": conv, "height": float(rng.uniform(1, 15)),
              "width": float(rng.uniform(1, 15)), "sigma": float(rng.uniform(0.1, 2))} for k in range(4)]
    history = [{"epoch": e + 1, "train_loss": 2.0 - a, "train_acc": a + 0.02, "val_loss": 2.1 - a, "val_acc": a,
                "lr": config["lr"], "seconds": 12.5, "learned_sizes": sizes} for e, a in enumerate(acc)]
    status = "completed" if rng.uniform() > 0.05 else str(rng.choice(["diverged", "oom", "error"]))
    return {
        "status": status, "error": None if status == "completed" else "the loss became nan at epoch 2",
        "config": config, "started": START + timedelta(seconds=60 * i),
        "finished": START + timedelta(seconds=60 * i + 40), "epochs_completed": 3,
        "metrics": {k: history[-1][k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "best": {"val_acc": acc[-1], "val_loss": 2.1 - acc[-1], "epoch": 3}, "history": history,
        "params": int(rng.integers(10_000, 500_000)), "flops": float(rng.uniform(1e6, 1e9)), "flops_fft": 0.0,
        "train_seconds": 37.5, "examples_per_second": float(rng.uniform(500, 5000)),
        "peak_memory_bytes": int(rng.integers(1e8, 4e9)), "peak_memory_kind": "process_max_rss",
        "device": "cpu (x86_64, 16 threads)", "learned_sizes": sizes, "nas_flex_version": "0.1.0",
        "torch_version": "2.5.1", "search_params": {"conv": conv, "kernel_size": config["kernel_size"],
                                                     "lr": config["lr"]},
    }


class BulkRows:
    """Trial rows in bulk: a pool of ``trial_table`` rows of distinct results, each drawn row then given its own
    identity, config JSON (its seed), config key, metrics, params, FLOPs and times, column by column (fast)."""

    def __init__(self, rng: np.random.Generator, pool: int = 256) -> None:
        self.rng = rng
        stamp = datetime.now(timezone.utc)
        self.pool = pa.concat_tables([trial_table(make_result(rng, i), experiment="bench", trial_id="x",
                                                  written_at=stamp) for i in range(pool)])

    def rows(self, start: int, n: int) -> pa.Table:
        rng, ids = self.rng, np.arange(start, start + n)
        table = self.pool.take(pa.array(rng.integers(0, self.pool.num_rows, n)))
        configs = []
        for cfg_text, i in zip(table.column("config").to_pylist(), ids):
            cfg = json.loads(cfg_text)
            cfg["seed"] = int(i)
            configs.append(json.dumps(cfg, sort_keys=True, separators=(",", ":")))
        sizes = rng.uniform(1, 15, (n, 4, 2))  # each trial learns its own sizes
        kinds = table.column("params_conv").to_pylist()
        learned = [[{"layer": f"features.{3 * k}", "kind": kind, "height": float(h), "width": float(w)}
                    for k, (h, w) in enumerate(layers)] for kind, layers in zip(kinds, sizes)]
        records = [json.dumps([{"name": r["layer"], "kind": r["kind"], "height": r["height"], "width": r["width"],
                                "sigma": float(s)} for r, s in zip(rows, rng.uniform(0.1, 2, 4))])
                   for rows in learned]
        acc = rng.uniform(0.2, 0.9, n)
        started = np.datetime64(START.replace(tzinfo=None), "us") + ids.astype("timedelta64[m]")  # one a minute
        new = {
            "trial_id": pa.array([f"t{i:06d}" for i in ids]),
            "config": pa.array(configs),
            "config_key": pa.array([hashlib.sha256(c.encode()).hexdigest()[:16] for c in configs]),
            "params_seed": pa.array(ids, pa.int64()),
            "seed": pa.array(ids, pa.int64()),
            "started": pa.array(started, TRIAL_SCHEMA.field("started").type),
            "finished": pa.array(started + np.timedelta64(40, "s"), TRIAL_SCHEMA.field("finished").type),
            "written_at": pa.array(np.full(n, np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")),
                                   TRIAL_SCHEMA.field("written_at").type),
            "metrics_val_acc": pa.array(acc), "best_val_acc": pa.array(acc + rng.uniform(0, 0.02, n)),
            "metrics_train_acc": pa.array(acc + 0.02), "metrics_val_loss": pa.array(2.1 - acc),
            "best_val_loss": pa.array(2.1 - acc), "metrics_train_loss": pa.array(2.0 - acc),
            "params": pa.array(rng.integers(10_000, 500_000, n), pa.int64()),
            "flops": pa.array(rng.uniform(1e6, 1e9, n)),
            "examples_per_second": pa.array(rng.uniform(500, 5000, n)),
            "train_seconds": pa.array(rng.uniform(10, 600, n)),
            "peak_memory_bytes": pa.array(rng.integers(10**8, 4 * 10**9, n), pa.int64()),
            "learned_sizes": pa.array(learned, TRIAL_SCHEMA.field("learned_sizes").type),
            "learned_sizes_json": pa.array(records),
        }
        for name, col in new.items():
            table = table.set_column(TRIAL_SCHEMA.get_field_index(name), TRIAL_SCHEMA.field(name), col)
        return table


def build_merged(path: Path, trials: int, written: int, rng: np.random.Generator) -> dict:
    """The leaderboard a search of ``trials`` trials leaves (see the module docstring); returns write timings."""
    path.mkdir(parents=True)
    chunk = MERGE_AT
    bulk = (trials - written) // chunk * chunk
    t0 = time.perf_counter()
    rows = BulkRows(rng)
    for start in range(0, bulk, chunk):  # level-1 files as a merge of `chunk` row files writes them
        write_table_atomic(rows.rows(start, chunk), path / merged_file_name(1), sync=False)
        merge.maybe_merge(path)  # the real merges upwards (levels 2..4)
        if start // chunk % 200 == 0:
            print(f"  {start + chunk:>7} rows bulk-written", flush=True)
    bulk_s = time.perf_counter() - t0
    os.sync()  # else the first fsync of a timed write pays for flushing the whole bulk build
    times, merges = [], []
    merge_files = merge.merge_files

    def timed(root, sub, schema, inputs, level, *args, **kwargs):
        t = time.perf_counter()
        out = merge_files(root, sub, schema, inputs, level, *args, **kwargs)
        merges.append((sub or "rows", level, len(inputs), time.perf_counter() - t))
        return out

    merge.merge_files = timed
    try:
        for i in range(bulk, trials):  # the rest as trials write: row + history, fsync, merges when due
            result = make_result(rng, i)
            t = time.perf_counter()
            write_trial(path, result, experiment="bench", trial_id=f"t{i:06d}")
            times.append(time.perf_counter() - t)
    finally:
        merge.merge_files = merge_files
    return {"bulk_rows": bulk, "bulk_s": bulk_s, "writes": times, "merges": merges}


def build_per_file(path: Path, trials: int, rng: np.random.Generator) -> float:
    """The old layout: one file per trial, never merged (``merge_at=0``)."""
    t0 = time.perf_counter()
    for i in range(trials):
        write_trial(path, make_result(rng, i), experiment="bench", trial_id=f"t{i:06d}", sync=False, merge_at=0)
    return time.perf_counter() - t0


_CHILD = """
import json, resource, sys, time
import pandas as pd
from nas_flex.leaderboard import Leaderboard, check_storage
path, op, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ops = {
    "top(10)": lambda: Leaderboard(path).top(10),
    "best('flops')": lambda: Leaderboard(path).best("flops"),
    "pareto(acc, flops)": lambda: Leaderboard(path).pareto({"metrics_val_acc": "max", "flops": "min"}),
    "len()": lambda: len(Leaderboard(path)),
    "by_architecture()": lambda: Leaderboard(path).by_architecture("metrics_val_acc"),
    "to_pandas()": lambda: Leaderboard(path).to_pandas(),
    "pd.read_parquet(dir)": lambda: pd.read_parquet(path),
    "check_storage()": lambda: check_storage(path),
}
times = []
for _ in range(reps):
    t = time.perf_counter()
    out = ops[op]()
    times.append(time.perf_counter() - t)
if hasattr(out, "trial_id"):
    answer = out["trial_id"].tolist() if hasattr(out["trial_id"], "tolist") else [out["trial_id"]]
    answer = sorted(answer) if op == "pd.read_parquet(dir)" else answer  # file order differs between layouts
elif op == "check_storage()":
    answer = None  # the number of files: differs between layouts by design
else:
    answer = out if isinstance(out, int) else len(out)
print(json.dumps({"times": times, "base_kb": base, "answer": answer}))
"""


def _run(args: list[str]) -> tuple[float, float, str]:
    """Run a process; its wall time, its own peak RSS (MiB) and stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {err}")
    return wall, usage.ru_maxrss / 1024, out


def measure(path: Path, reps: int) -> dict[str, tuple[float, float, float, object]]:
    """op -> (median seconds, peak RSS MiB, RSS MiB after imports, answer)."""
    out = {}
    for op in ("top(10)", "best('flops')", "pareto(acc, flops)", "len()", "by_architecture()", "to_pandas()",
               "pd.read_parquet(dir)", "check_storage()"):
        _, peak, text = _run([sys.executable, "-c", _CHILD, str(path), op, str(reps)])
        rec = json.loads(text)
        out[op] = (statistics.median(rec["times"]), peak, rec["base_kb"] / 1024, rec["answer"])
    walls, peaks = [], []
    for _ in range(reps):
        wall, peak, _ = _run([sys.executable, "-m", "nas_flex.cli", "leaderboard", str(path), "--top", "10"])
        walls.append(wall)
        peaks.append(peak)
    out["nas-flex leaderboard --top 10"] = (statistics.median(walls), max(peaks), float("nan"), None)
    walls = [_run([sys.executable, "-c", "import nas_flex.cli, nas_flex.leaderboard.table, pandas"])[0]
             for _ in range(reps)]
    out["  (its python start + imports)"] = (statistics.median(walls), float("nan"), float("nan"), None)
    return out


def layout(path: Path) -> str:
    files = [p for p in path.rglob("*.parquet")]
    rows = [p for p in path.glob("*.parquet")]
    size = sum(p.stat().st_size for p in files)
    return f"{len(rows)} row/merged files ({len(files)} with history), {size / 2**20:.0f} MiB on disk"


def _save(args: argparse.Namespace, built: dict, results: dict, same: bool) -> Path:
    """Write the run's figures to ``--json`` (by default experiments/results/bench_leaderboard.json)."""
    queries = {name: {op: {"seconds": sec, "peak_rss_mib": peak, "rss_after_import_mib": after}
                      for op, (sec, peak, after, _) in ops.items()} for name, ops in results.items()}
    return write_json(args.json, {"args": vars(args), "write_trial_seconds": built["writes"],
                                  "bulk_seconds": built["bulk_s"], "merges": built["merges"], "queries": queries,
                                  "same_answers": same})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100_000, help="trials of the large leaderboard")
    ap.add_argument("--written", type=int, default=2000, help="of them, written through write_trial (fsync on)")
    ap.add_argument("--old", type=int, default=2000, help="trials of the old one-file-per-trial layout")
    ap.add_argument("--reps", type=int, default=3, help="runs of each query (median shown)")
    ap.add_argument("--dir", default=None, help="where to build them (default: a temporary folder, removed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench_leaderboard", help="figures file (a bare name: experiments/results/)")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_leaderboard_"))
    rng = np.random.default_rng(args.seed)
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS=1, seed {args.seed}; folder {base}")
    try:
        big, old, old_merged = base / "merged", base / "per_file", base / "per_file_merged"
        print(f"building {args.trials} trials ({args.written} through write_trial) ...", flush=True)
        built = build_merged(big, args.trials, args.written, rng)
        w = np.array(built["writes"]) * 1e3
        print(f"  bulk {built['bulk_rows']} rows in {built['bulk_s']:.0f} s; write_trial (fsync, merges included): "
              f"median {np.median(w):.1f} ms, mean {w.mean():.1f} ms, max {w.max():.0f} ms (write {w.argmax()}) over "
              f"{len(w)} writes")
        by_level: dict[tuple[str, int], list[float]] = {}
        for table, level, _, sec in built["merges"]:
            by_level.setdefault((table, level), []).append(sec)
        for (table, level), secs in sorted(by_level.items()):
            print(f"    merges into level {level} ({table}): {len(secs)}, median {np.median(secs):.2f} s, "
                  f"max {max(secs):.2f} s")
        print(f"building {args.old} trials in the old layout ...", flush=True)
        old_s = build_per_file(old, args.old, np.random.default_rng(args.seed + 1))
        print(f"  {old_s:.0f} s ({old_s / args.old * 1e3:.1f} ms per write_trial, no fsync)")
        shutil.copytree(old, old_merged)
        t = time.perf_counter()
        merge.maybe_merge(old_merged)  # what the first write into an old storage does
        print(f"  merging that storage's {args.old} files (the first write into it does this): "
              f"{time.perf_counter() - t:.1f} s")
        results = {}
        for name, path, reps in ((f"{args.trials} trials, merged", big, args.reps),
                                 (f"{args.old} trials, one file each (old)", old, 1),
                                 (f"{args.old} trials, merged", old_merged, args.reps)):
            print(f"measuring {name}: {layout(path)} ...", flush=True)
            results[name] = measure(path, reps)
        names = list(results)
        print("\nseconds (median of the runs) / peak RSS MiB of the process (RSS after importing pandas + nas_flex)")
        print(f"{'query':<30}" + "".join(f"{n:>42}" for n in names))
        for op in results[names[0]]:
            cells = []
            for n in names:
                sec, peak, after, _ = results[n][op]
                mem = "" if peak != peak else f"{peak:6.0f} MiB" + ("" if after != after else f" ({after:.0f})")
                cells.append(f"{sec:8.2f} s {mem}")
            print(f"{op:<30}" + "".join(f"{c:>42}" for c in cells))
        same = all(results[names[1]][op][3] == results[names[2]][op][3] for op in results[names[1]]
                   if results[names[1]][op][3] is not None)
        print(f"\nold layout and merged layout give the same answers: {same}")
        ratio = results[names[1]]["top(10)"][0] / results[names[2]]["top(10)"][0]
        print(f"top(10) at {args.old} trials: one file each / merged = {ratio:.0f}x")
        print(f"figures: {_save(args, built, results, same)}")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

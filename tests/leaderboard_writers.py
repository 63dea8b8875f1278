"""Concurrent leaderboard writers for the tests: this file is both the worker script and the helper that starts it.

As a script: ``python leaderboard_writers.py BOARD WORKER N GO [--merge-at K] [--small-levels] [--history-every-other]``
waits until the file GO exists, then writes N one-row trials of experiment ``w<WORKER>`` to BOARD.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def concurrent_writers(folder: Path, board: Path, workers: int, per_worker: int, *, merge_at: int | None = None,
                       small_levels: bool = False, history_every_other: bool = False) -> Iterator[list]:
    """Start ``workers`` writer processes, release them together once all are ready, yield their Popen handles;
    on exit wait for them (a worker that fails raises here)."""
    go = folder / "go"
    extra = ([] if merge_at is None else ["--merge-at", str(merge_at)]) + (["--small-levels"] if small_levels else [])
    extra += ["--history-every-other"] if history_every_other else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, __file__, str(board), str(w), str(per_worker), str(go), *extra],
                              env=env) for w in range(workers)]
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("go.ready*"))) < workers:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), "a worker died on start"
            time.sleep(0.01)
        go.touch()
        yield procs
    finally:
        for p in procs:
            if not go.exists():  # failed before the start: the workers would wait for ever
                p.kill()
            p.wait(timeout=120)
    assert [p.returncode for p in procs] == [0] * workers, "a writer failed"


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("board")
    ap.add_argument("worker", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("go", type=Path)
    ap.add_argument("--merge-at", type=int)
    ap.add_argument("--small-levels", action="store_true", help="merge fan-out 2, 3 levels; a MergeWarning fails")
    ap.add_argument("--history-every-other", action="store_true")
    args = ap.parse_args()

    import warnings

    import nas_flex.leaderboard.merge as merge
    from nas_flex.leaderboard import MergeWarning, write_trial

    if args.small_levels:
        warnings.simplefilter("error", MergeWarning)
        merge.MERGE_FANOUT, merge.MAX_LEVEL = 2, 3
    Path(f"{args.go}.ready{args.worker}").touch()
    while not args.go.exists():
        time.sleep(0.002)
    options = {} if args.merge_at is None else {"merge_at": args.merge_at}
    for i in range(args.n):
        result = {"status": "completed", "config": {"seed": i}, "metrics": {"val_acc": i / args.n},
                  "history": [{"epoch": 1, "val_acc": i / args.n}]}
        write_trial(args.board, result, experiment=f"w{args.worker}", trial_id=f"t{i:03d}", sync=False,
                    history=not args.history_every_other or i % 2 == 0, **options)


if __name__ == "__main__":
    _main()

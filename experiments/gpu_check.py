"""GPU check: the CUDA paths of nas_flex, run once on one GPU in a few minutes, with figures to report.

Steps (``--steps``; all by default):

* ``env``: torch, CUDA, cuDNN, the device and whether it has bf16;
* ``layers``: the layer benchmark (``experiments/bench_layers.py``) on CUDA: every registry layer against
  ``nn.Conv2d`` and the FFT convolution of the same kernel, forward + backward, CUDA-synchronised medians of
  interleaved rounds (``nas_flex.bench.compare`` synchronises around every timed call);
* ``crossover``: ``experiments/bench_fft_crossover.py`` on CUDA, then the CUDA constants of ``conv2d_same``'s
  direct-or-FFT choice (``FFT_CROSSOVER["cuda"]``, optionally a ``WIDE_KERNEL_PENALTY["cuda"]``) fitted to the
  measurements: the constants whose choices lose the least time against the faster method, case by case. They are
  printed and written to ``OUT/conv_constants_cuda.json``; ``--apply`` also writes them into the constants file the
  package reads at import (``nas_flex.functional.conv.CONSTANTS_FILE``), which overrides the built-in defaults;
* ``amp``: one ``nas_flex.train.run_trial`` per registry layer kind with ``amp: True`` (bf16 where the GPU has it,
  else fp16 with a gradient scaler) on ``digits-multiscale`` (built in, no download), as the main job configures
  each method: status, accuracy, time, CUDA peak memory;
* ``search``: a 2-trial ``nas_flex.search`` with ``resources_per_trial={"cpu": 1, "gpu": 0.5}``; it passes only
  if both trials completed on the GPU and their [started, finished] intervals overlap (the leaderboard's
  timestamps have one-second resolution, so an overlap of at least 2 s is asked for). Needs ray[tune] and optuna.

Every figure is printed and written to ``OUT/gpu_check.json``, the printed lines to ``OUT/gpu_check.log`` (``OUT``:
``--out``, by default ``experiments/results/gpu_check``; the search step's leaderboard goes to ``OUT/search``). The exit
status is 0 when every check passed, 1 when one failed (listed at the end), 2 when it could not start (no CUDA, a
missing package): that is said at once, before any work.

    python -m experiments.gpu_check                                # one CUDA GPU, a few minutes
    python -m experiments.gpu_check --smoke --out /tmp/gpu_smoke   # CPU self-test of every step

(from the repository root).

``--smoke`` runs every step on the CPU at toy sizes (AMP is a no-op off CUDA; the search asks for half a CPU per
trial instead of half a GPU): it checks the script, not the GPU. ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from experiments.common import RESULTS, main_job_base, main_job_config, main_job_methods

STEPS = ("env", "layers", "crossover", "amp", "search")
CONSTANTS_FILE = "conv_constants_cuda.json"

SMOKE_TRIAL = {"backbone": "simple", "width": 4, "dataset": "digits", "epochs": 1, "train_subset": 64,
               "val_subset": 32}


class CheckFailed(Exception):
    """A check of the GPU path did not hold."""


# ------------------------------------------------------------------------------------------- crossover fitting
def conv_choice(k: int, model_ratio: float, crossover: float, penalty: tuple[int, float] | None) -> str:
    """What ``choose_conv_method`` picks for a square k x k kernel whose flop model says spatial/fft work is
    ``model_ratio``, with the constants ``crossover`` and ``penalty`` (width from which, factor)."""
    if k * k <= 9:
        return "spatial"
    if penalty and penalty[0] and k >= penalty[0]:
        model_ratio *= penalty[1]
    return "fft" if model_ratio > crossover else "spatial"


def choice_regret(rows: Sequence[Mapping[str, Any]], crossover: float, penalty: tuple[int, float] | None) -> float:
    """Mean over the measured cases of (time of the chosen method / time of the faster one) - 1."""
    lost = []
    for r in rows:
        chosen = conv_choice(int(r["k"]), float(r["model_ratio"]), crossover, penalty)
        best = min(r["spatial_s"], r["fft_s"])
        lost.append(r[f"{chosen}_s"] / best - 1.0)
    return sum(lost) / len(lost) if lost else 0.0


def _round2(x: float) -> float:
    """Two significant digits: a constant, not a fitted decimal."""
    if x <= 0 or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")


def fit_crossover(rows: Sequence[Mapping[str, Any]], penalty_factors: Sequence[float] = (2.0, 3.0, 5.0, 8.0),
                  ) -> dict[str, Any]:
    """The crossover (and wide-kernel penalty, only where it lowers the loss) that best fits measured times.

    Args:
        rows: measurements (``bench_fft_crossover.measure``): k, spatial_s, fft_s, model_ratio (the flop model's
            spatial / fft work for that case, without a penalty).
        penalty_factors: penalty factors tried, each from every measured kernel side.

    Returns:
        {"crossover", "wide_kernel_penalty" (None or (width, factor)), "regret"}: the fitted constants and the
        mean fraction of time they lose against the faster method. Of equally good crossovers the middle one (of
        the range of thresholds that give the same choices) is taken, rounded to two significant digits.
    """
    if not rows:
        raise ValueError("fit_crossover: no measurements")
    widths = sorted({int(r["k"]) for r in rows if int(r["k"]) ** 2 > 9})
    penalties: list[tuple[int, float] | None] = [None] + [(w, f) for w in widths for f in penalty_factors]
    best: tuple[float, int, float, tuple[int, float] | None] | None = None
    for complexity, penalty in enumerate(penalties):
        ratios = sorted({float(r["model_ratio"]) * (penalty[1] if penalty and int(r["k"]) >= penalty[0] else 1.0)
                         for r in rows})
        # one threshold per gap between neighbouring ratios (geometric middle), and one below / above all
        cuts = [ratios[0] / 2] + [math.sqrt(a * b) for a, b in zip(ratios, ratios[1:])] + [ratios[-1] * 2]
        scored = [(choice_regret(rows, c, penalty), c) for c in cuts]
        low = min(s for s, _ in scored)
        tied = [c for s, c in scored if s <= low + 1e-12]
        c = _round2(tied[len(tied) // 2])
        if choice_regret(rows, c, penalty) > low + 1e-12:  # rounding moved it across a measured ratio
            c = tied[len(tied) // 2]
        # a penalty must earn its place: it is kept only when it lowers the loss by more than 1 %
        key = (low if penalty is None else low + 0.01, complexity)
        if best is None or key < (best[0], best[1]):
            best = (key[0], complexity, c, penalty)
    assert best is not None
    _, _, crossover, penalty = best
    return {"crossover": crossover, "wide_kernel_penalty": penalty, "regret": choice_regret(rows, crossover, penalty)}


def constants_entry(crossover: float, penalty: tuple[int, float] | None, **notes: Any) -> dict[str, Any]:
    """One device type's entry of a conv constants file (``nas_flex.functional.conv.read_conv_constants``)."""
    return {"fft_crossover": float(crossover), "wide_kernel_penalty": [int(penalty[0]), float(penalty[1])]
            if penalty else None, **notes}


def write_constants(device_type: str, entry: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write ``device_type``'s constants into a conv constants file, keeping the other device types' entries.

    Args:
        device_type: "cuda" (or "cpu").
        entry: from ``constants_entry``.
        path: the file; by default the one ``nas_flex.functional.conv`` reads at import (``CONSTANTS_FILE``).

    Returns:
        The path written. The file is replaced in one step (a temporary file, then ``os.replace``), and read back
        through ``read_conv_constants`` first, so a bad entry never reaches the package.
    """
    from nas_flex.functional import conv

    path = Path(path) if path is not None else conv.CONSTANTS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[device_type] = dict(entry)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    try:
        conv.read_conv_constants(tmp)
    except Exception:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ overlap
def _time(value: Any) -> float:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    raise CheckFailed(f"not a timestamp: {value!r}")


def trial_overlap(rows: Sequence[Mapping[str, Any]]) -> float:
    """Seconds during which every trial ran at once: min(finished) - max(started) (negative: they did not)."""
    if len(rows) < 2:
        raise CheckFailed(f"an overlap needs at least two trials, got {len(rows)}")
    return min(_time(r["finished"]) for r in rows) - max(_time(r["started"]) for r in rows)


# ----------------------------------------------------------------------------------------------------- steps
class Check:
    """Runs the steps, prints and logs every line, collects figures and failures."""

    def __init__(self, out: Path, smoke: bool, args: argparse.Namespace) -> None:
        self.out, self.smoke, self.args = out, smoke, args
        self.device = "cpu" if smoke else "cuda"
        self.results: dict[str, Any] = {"smoke": smoke, "argv": sys.argv[1:], "steps": {}}
        self.failures: list[str] = []
        self.lines: list[str] = []

    def log(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def fail(self, step: str, message: str) -> None:
        self.failures.append(f"{step}: {message}")
        self.log(f"FAILED {step}: {message}")

    def env(self) -> dict[str, Any]:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn}
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                        memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                        bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
        else:
            info.update(device="cpu (smoke test)", threads=torch.get_num_threads())
        for k, v in info.items():
            self.log(f"  {k}: {v}")
        return info

    def layers(self) -> list[dict[str, Any]]:
        from experiments import bench_layers

        if self.smoke:
            cases = [c for c in bench_layers.CASES if c[0] in ("conv", "njet", "niff") and c[1] != "large"]
            return bench_layers.measure("cpu", batch=2, channels=4, size=16, rounds=1, cases=cases, log=self.log)
        return bench_layers.measure("cuda", rounds=self.args.rounds, log=self.log)

    def crossover(self) -> dict[str, Any]:
        from experiments import bench_fft_crossover
        from nas_flex.functional import conv

        if self.smoke:
            rows = bench_fft_crossover.measure("cpu", sizes=[16], kernels=[3, 7, 15], batch=2, channels=4,
                                               rounds=1, log=self.log)
        else:
            rows = bench_fft_crossover.measure("cuda", sizes=[32, 64], kernels=bench_fft_crossover.KERNELS,
                                               rounds=self.args.rounds, log=self.log)
        current = (conv.FFT_CROSSOVER.get("cuda", conv.FFT_CROSSOVER["cpu"]), conv.WIDE_KERNEL_PENALTY.get("cuda"))
        fit = fit_crossover(rows)
        now = choice_regret(rows, *current)
        self.log(f"current CUDA constants: crossover {current[0]:g}, wide-kernel penalty {current[1]}: the chosen "
                 f"method takes {100 * now:.1f}% longer than the faster one, on average over these cases")
        self.log(f"fitted: crossover {fit['crossover']:g}, wide-kernel penalty {fit['wide_kernel_penalty']}: "
                 f"{100 * fit['regret']:.1f}% longer on average")
        where = "smoke test on the CPU: NOT for the package" if self.smoke else torch.cuda.get_device_name(0)
        entry = constants_entry(fit["crossover"], fit["wide_kernel_penalty"], fitted_on=where,
                                date=str(datetime.now().date()), torch=torch.__version__,
                                regret=fit["regret"], regret_before=now)
        written = write_constants("cuda", entry, self.out / CONSTANTS_FILE)
        applied = self.args.apply and not self.smoke
        if applied:
            write_constants("cuda", entry)
            self.log(f"applied: {conv.CONSTANTS_FILE} (read when nas_flex.functional.conv is imported)")
        self.log(f"written to {written}" + ("" if applied else "; --apply makes the package use them"))
        return {"rows": rows, "current": {"crossover": current[0], "wide_kernel_penalty": current[1],
                                          "regret": now}, "fitted": fit, "entry": entry}

    def amp(self) -> list[dict[str, Any]]:
        from nas_flex.layers import available
        from nas_flex.train import run_trial

        base = SMOKE_TRIAL if self.smoke else {**main_job_base(), "pooling": "max", "epochs": self.args.epochs}
        methods = main_job_methods()
        dtype = "none (CPU)" if self.smoke else ("bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler")
        self.log(f"AMP: {dtype}; {base['dataset']}, {base['epochs']} epoch(s), one trial per layer kind")
        self.log(f"{'kind':<9} {'status':<10} {'val_acc':>8} {'train s':>8} {'ex/s':>9} {'peak MiB':>9}  memory kind")
        rows = []
        for kind in available():
            # as the main job configures each method (the grid's conv at 5x5); a kind it does not run: the base
            main = main_job_config(kind, "max", kernel_size=5) if kind in methods else {"conv": kind}
            cfg = {**main, **base, "conv": kind, "amp": True, "device": self.device}
            t0 = time.perf_counter()
            try:
                r = run_trial(cfg).to_dict()
            except Exception as err:  # noqa: BLE001 - one kind failing must not hide the others
                self.fail("amp", f"{kind}: {type(err).__name__}: {err}")
                continue
            sizes = [s for rec in r["learned_sizes"] for s in (rec["height"], rec["width"])]
            row = {"kind": kind, "status": r["status"], "val_acc": r["metrics"]["val_acc"],
                   "train_seconds": r["train_seconds"], "examples_per_second": r["examples_per_second"],
                   "peak_memory_mib": r["peak_memory_bytes"] / 2**20, "peak_memory_kind": r["peak_memory_kind"],
                   "device": r["device"], "wall_seconds": time.perf_counter() - t0, "amp_dtype": dtype}
            rows.append(row)
            self.log(f"{kind:<9} {row['status']:<10} {row['val_acc']:>8.4f} {row['train_seconds']:>8.1f} "
                     f"{row['examples_per_second']:>9.0f} {row['peak_memory_mib']:>9.1f}  {row['peak_memory_kind']}")
            if r["status"] != "completed":
                self.fail("amp", f"{kind}: status {r['status']}: {r['error']}")
            elif not math.isfinite(row["val_acc"]) or not all(math.isfinite(s) for s in sizes):
                self.fail("amp", f"{kind}: non-finite accuracy or learned size")
            elif not self.smoke and row["peak_memory_kind"] != "cuda_max_allocated":
                self.fail("amp", f"{kind}: peak memory {row['peak_memory_kind']!r}, not CUDA's")
        return rows

    def search(self) -> dict[str, Any]:
        from nas_flex.leaderboard import Leaderboard
        from nas_flex.spaces import SearchSpace
        from nas_flex.tune import search

        storage = self.out / "search"
        if self.smoke:
            # long enough (a few seconds per trial) for an overlap at the timestamps' one-second resolution
            base = {**SMOKE_TRIAL, "epochs": 60, "train_subset": 256, "device": "cpu"}
            resources = {"cpu": 0.5, "gpu": 0.0}  # two trials fit even on one core
        else:
            base = {**main_job_base(), "pooling": "max", "epochs": self.args.search_epochs, "amp": True,
                    "device": "auto"}
            resources = {"cpu": 1.0, "gpu": 0.5}

        def space(trial):
            return {**base, "conv": "conv", "kernel_size": trial.suggest_categorical("kernel_size", [3, 5])}

        # Tune keeps one trial pending at a time under a search algorithm, so the second trial would only be
        # created once the first one's worker runs; two pending trials let both start together
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "2")
        self.log(f"2 trials, resources_per_trial {resources}, {base['epochs']} epochs each")
        search(SearchSpace(space, name="gpu_check", sampler="grid"), storage=storage, num_samples=2,
               resources_per_trial=resources, experiment="gpu_check", verbose=1)
        df = Leaderboard(storage).to_pandas()
        rows = df[["trial_id", "status", "started", "finished", "device", "train_seconds",
                   "metrics_val_acc"]].to_dict("records")
        for r in rows:
            self.log(f"  {r['trial_id']}: {r['status']} on {r['device']}, {r['started']} .. {r['finished']}, "
                     f"{r['train_seconds']:.1f} s training, val_acc {r['metrics_val_acc']:.4f}")
        overlap = trial_overlap(rows) if len(rows) == 2 else float("nan")
        self.log(f"  both trials ran at once for {overlap:.0f} s (timestamps to the second)")
        if len(rows) != 2 or any(r["status"] != "completed" for r in rows):
            self.fail("search", f"expected 2 completed trials, got {[(r['trial_id'], r['status']) for r in rows]}")
        elif not self.smoke and any(str(r["device"]).startswith("cpu") for r in rows):
            self.fail("search", "a trial ran on the CPU, not on the GPU")
        elif not overlap >= 2:
            self.fail("search", f"the trials did not run at the same time (overlap {overlap:.0f} s); if each "
                                "trial is only a few seconds long, raise --search-epochs")
        for r in rows:
            r["started"], r["finished"] = str(r["started"]), str(r["finished"])
        return {"trials": rows, "overlap_seconds": overlap, "resources_per_trial": resources}


def _missing(steps: Sequence[str]) -> list[str]:
    need = {"amp": ["sklearn"], "search": ["ray", "optuna", "sklearn"]}
    return sorted({m for s in steps for m in need.get(s, []) if importlib.util.find_spec(m) is None})


def main(argv: Sequence[str] | None = None, *, log_error: Callable[[str], None] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check", help="where the figures and constants go")
    ap.add_argument("--smoke", action="store_true", help="CPU self-test at toy sizes (checks the script only)")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="the steps to run (default: all)")
    ap.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="steps not to run")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds of the benchmarks")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each AMP trial")
    ap.add_argument("--search-epochs", type=int, default=12, help="epochs of each search trial")
    ap.add_argument("--apply", action="store_true", help="also write the fitted constants into conv.py")
    args = ap.parse_args(argv)
    error = log_error or (lambda line: print(line, file=sys.stderr, flush=True))
    steps = [s for s in args.steps if s not in args.skip]
    # fail fast, before any work: no CUDA, or a package a step needs
    if not args.smoke and not torch.cuda.is_available():
        error(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              "torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU, or pass --smoke for "
              "the CPU self-test of the script.")
        return 2
    missing = _missing(steps)
    if missing:
        error(f"gpu_check: the steps {steps} need the packages {missing}, which are not installed (pip install "
              "'nas_flex[search,data]'); or leave those steps out with --skip")
        return 2
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.smoke, args)
    started = time.perf_counter()
    for step in steps:
        check.log(f"\n=== {step} ===")
        t0 = time.perf_counter()
        try:
            check.results["steps"][step] = getattr(check, step)()
        except Exception as err:  # noqa: BLE001 - a step that breaks is a failed check; the next steps still run
            check.fail(step, f"{type(err).__name__}: {err}")
            check.log(traceback.format_exc())
        check.log(f"({step}: {time.perf_counter() - t0:.0f} s)")
    check.results["seconds"] = time.perf_counter() - started
    check.results["failures"] = check.failures
    (args.out / "gpu_check.json").write_text(json.dumps(check.results, indent=2, default=str))
    check.log(f"\n{'FAILED: ' + '; '.join(check.failures) if check.failures else 'all checks passed'} "
              f"({check.results['seconds']:.0f} s; figures in {args.out / 'gpu_check.json'})")
    (args.out / "gpu_check.log").write_text("\n".join(check.lines) + "\n")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())

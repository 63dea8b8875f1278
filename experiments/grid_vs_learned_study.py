"""Grid or learned, at equal compute: a searched per-layer kernel-size grid against one run of each learned-size method.

Per dataset and seed, in one leaderboard:

* ``grid-tpe`` / ``grid-random``: ``search_spaces/per_layer_grid.py`` (a kernel size per convolution, 3 x 3 x 3 x 3,
  and a pooling per stage, max / avg / strided conv: 729 plain CNNs), ``--grid-trials`` trials by TPE and by random
  sampling;
* ``learned``: one run of every learned-size method (``search_spaces/per_layer_learned.py``'s methods, each with its
  own size recipe), max pooling per stage, plus N-Jet with its safe-subsampling per stage;
* ``discretised``: the best learned run's sizes rounded to odd integers per layer (``nas_flex.export.discretise``)
  and retrained as a plain CNN: does the learned size carry over to a fixed architecture?

Every trial trains on the same backbone, data, epochs and seed. The answer is the grid's best-so-far validation
accuracy against its cumulative training compute (training seconds, and forward FLOPs x training examples),
trials charged in the order they ran, against each learned method's single run; for each learned method, the share
of the grid's compute at which it matches the grid's best (within 0.5 points), or the gap that remains.

Usage (the figures in docs/results.md come from the first command; scope: 2-core x86 CPU, one thread per trial):

    python -m experiments.grid_vs_learned_study                      # small CPU budget, embedded Ray
    python -m experiments.grid_vs_learned_study --quick              # smoke run: 1 dataset, 1 seed, 2 epochs
    python -m experiments.grid_vs_learned_study --address auto --resources cpu=4,gpu=0.5 --epochs 30 \\
        --grid-trials 40 --storage /shared/runs/study                 # a cluster, full budget
    python -m experiments.grid_vs_learned_study --analyse-only        # redo the table and figure from the storage

An interrupted study is continued by running the same command again: experiments already complete in the storage
are skipped (nothing is unpickled; the leaderboard rows say what finished).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.common import RESULTS, SPACES, space_constants
from nas_flex.leaderboard.stats import UNRESOLVED, compare_runs

GRID_SPACE = SPACES / "per_layer_grid.py"
LEARNED_SPACE = SPACES / "per_layer_learned.py"
ARMS = ("grid-tpe", "grid-random", "learned", "discretised")
MATCH = 0.005  # "matches the grid's best": within 0.5 points of accuracy


# ------------------------------------------------------------------------------------------------------- running
def experiment_name(arm: str, dataset: str, seed: int, tag: str | None = None) -> str:
    return f"{arm}--{dataset}--s{seed}" + (f"--{tag}" if tag else "")


def parse_experiment(name: str) -> tuple[str, str, int] | None:
    """(arm, dataset, seed) of a study experiment name (an optional ``--tag`` after it, e.g. for learned methods
    added later), or None for other experiments in the storage."""
    parts = name.split("--")
    if len(parts) not in (3, 4) or parts[0] not in ARMS or not parts[2].startswith("s") or not parts[2][1:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2][1:])


def _learned_space(methods: list[str]):
    """The study's learned arm: each method once with max pooling, and N-Jet also with safe-subsampling."""
    module = space_constants(LEARNED_SPACE)
    runs = [(m, "max,max") for m in methods] + ([("njet", "safe,safe")] if "njet" in methods else [])

    def space(trial):
        method, plan = runs[trial.suggest_categorical("run", list(range(len(runs))))]
        config = {**module["BASE"], "conv": method, "pooling": plan.split(",")}
        if method in module["HPARAMS"]:
            config["conv_hparams"] = dict(module["HPARAMS"][method])
        if method in module["KERNEL_SIZE"]:
            config["kernel_size"] = module["KERNEL_SIZE"][method]
        return config

    return space, len(runs)


def _finished(storage: Path, experiment: str) -> int:
    from nas_flex.leaderboard import Leaderboard

    if not storage.exists():
        return 0
    try:
        df = Leaderboard(storage).to_pandas()
    except Exception:  # an empty storage
        return 0
    return int((df["experiment"] == experiment).sum()) if "experiment" in df.columns else 0


def run_study(args: argparse.Namespace) -> None:
    import ray

    import nas_flex
    from nas_flex.export import discretise
    from nas_flex.leaderboard import Leaderboard

    storage = Path(args.storage)
    if not ray.is_initialized():  # one Ray for the whole study (nas_flex.search reuses it) instead of one per search
        ray.init(address=args.address, num_cpus=None if args.address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    common = {"storage": storage, "dedupe": False, "address": args.address, "verbose": args.verbose,
              "resources_per_trial": args.resources, "max_concurrent": args.max_concurrent}
    learned_space, n_learned = _learned_space(args.methods)
    for dataset in args.datasets:
        for seed in args.seeds:
            over = {"dataset": dataset, "epochs": args.epochs, "seed": seed}
            plan = [(f"grid-{s}", GRID_SPACE, {"sampler": s, "num_samples": args.grid_trials}) for s in args.samplers]
            plan.append(("learned", learned_space, {"sampler": "grid", "num_samples": n_learned}))
            for arm, space, kw in plan:
                name = experiment_name(arm, dataset, seed, args.tag if arm == "learned" else None)
                if _finished(storage, name) >= kw["num_samples"]:
                    print(f"[study] {name}: already in {storage}, skipped")
                    continue
                t0 = time.perf_counter()
                nas_flex.search(space, experiment=name, seed=seed, overrides=over, **kw, **common)
                print(f"[study] {name}: {time.perf_counter() - t0:.0f} s")
            name = experiment_name("discretised", dataset, seed)
            if _finished(storage, name) >= 1:
                continue
            df = Leaderboard(storage).to_pandas()
            runs = df[(df["experiment"] == experiment_name("learned", dataset, seed)) & (df["status"] == "completed")]
            runs = runs[runs["params_conv"] != "mixed"] if args.discretise_skip_mixed else runs
            if runs.empty:
                print(f"[study] {name}: no completed learned run to discretise")
                continue
            best = runs.sort_values("metrics_val_acc", ascending=False).iloc[0]
            plain = discretise(best)

            def fixed(trial, plain=plain):
                return dict(plain)

            nas_flex.search(fixed, experiment=name, seed=seed, sampler="random", num_samples=1, **common)


# ------------------------------------------------------------------------------------------------------ analysis
def study_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The study's rows with ``arm``, ``dataset_`` and ``seed_`` parsed from the experiment names."""
    parsed = df["experiment"].map(parse_experiment)
    out = df[parsed.notna()].copy()
    out["arm"] = [p[0] for p in parsed.dropna()]
    out["dataset_"] = [p[1] for p in parsed.dropna()]
    out["seed_"] = [p[2] for p in parsed.dropna()]
    return out


def _method(row: pd.Series) -> str:
    pooling = row.get("config_pooling")
    name = str(row["params_conv"])
    return f"{name} (safe-subsampling)" if pooling == ["safe", "safe"] else name


def summarise(df: pd.DataFrame, metric: str = "metrics_val_acc") -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The study's answer per dataset: one row per grid arm and per learned method (mean and spread over seeds).

    Returns:
        (table, curves): ``table`` with dataset, method, arm, seeds, acc_mean, acc_std, acc_min, acc_max,
        seconds (mean per seed: a grid arm's whole search, a learned method's one run), flops (forward FLOPs x
        examples, same), and for learned methods and the discretised retrain: matched (seeds in which the run is
        within 0.5 points of the TPE grid's best), share_seconds / share_flops (the run's compute over what the grid
        spent to reach its best, mean over the matched seeds) and gap (grid best - run, mean over seeds, points);
        ``curves``: per grid arm, the grid's best-so-far curve per seed (``nas_flex.report.curves.grid_curve``).
    """
    import json

    from nas_flex.report.curves import grid_cost_to_reach, grid_curve, training_compute

    df = study_frame(df)
    df["config_pooling"] = df["config"].map(lambda c: json.loads(c).get("pooling"))
    rows, curves = [], {}
    for dataset, part in df.groupby("dataset_", sort=True):
        grid_best: dict[int, tuple[float, dict[str, float]]] = {}
        for arm in sorted(a for a in part["arm"].unique() if a.startswith("grid-")):
            curve = grid_curve(part[part["arm"] == arm], metric)
            curve["seed"] = curve["experiment"].map(lambda e: parse_experiment(e)[2])
            curves[f"{dataset}/{arm}"] = curve
            finals = curve.groupby("seed").tail(1)
            if arm == "grid-tpe" or not grid_best:
                for _, last in finals.iterrows():
                    cost = grid_cost_to_reach(curve[curve["seed"] == last["seed"]], last["best_so_far"])
                    grid_best[int(last["seed"])] = (float(last["best_so_far"]), cost or {})
            acc = finals["best_so_far"]
            rows.append({"dataset": dataset, "method": f"grid ({arm.split('-')[1]}, {int(curve['order'].max())} "
                         "trials)", "arm": arm, "seeds": len(finals), "acc_mean": acc.mean(), "acc_std": acc.std(),
                         "acc_min": acc.min(), "acc_max": acc.max(), "seconds": finals["cum_seconds"].mean(),
                         "flops": finals["cum_flops"].mean()})
        runs = training_compute(part[part["arm"].isin(["learned", "discretised"]) & (part["status"] == "completed")])
        runs["method"] = [("discretised " if a == "discretised" else "") + _method(r)
                          for a, (_, r) in zip(runs["arm"], runs.iterrows())]
        for method, group in runs.groupby("method", sort=True):
            acc = pd.to_numeric(group[metric])
            row = {"dataset": dataset, "method": method, "arm": group["arm"].iloc[0], "seeds": len(group),
                   "acc_mean": acc.mean(), "acc_std": acc.std(), "acc_min": acc.min(), "acc_max": acc.max(),
                   "seconds": group["train_seconds"].mean(), "flops": group["train_flops"].mean()}
            matched, shares_s, shares_f, gaps = 0, [], [], []
            mine, grids = {}, {}  # per seed: the run and the grid's best, for the paired comparison
            for _, r in group.iterrows():
                if int(r["seed_"]) not in grid_best:
                    continue
                best, cost = grid_best[int(r["seed_"])]
                mine[int(r["seed_"])], grids[int(r["seed_"])] = float(r[metric]), best
                gaps.append(100 * (best - float(r[metric])))
                if float(r[metric]) >= best - MATCH and cost:
                    matched += 1
                    shares_s.append(r["train_seconds"] / cost["seconds"])
                    shares_f.append(r["train_flops"] / cost["flops"] if cost["flops"] else math.nan)
            row.update(matched=f"{matched}/{len(gaps)}", share_seconds=np.mean(shares_s) if shares_s else math.nan,
                       share_flops=np.mean(shares_f) if shares_f else math.nan,
                       gap=np.mean(gaps) if gaps else math.nan)
            comp = compare_runs(mine, grids, a_name=method, b_name="grid")
            row.update(diff=comp.difference, diff_low=comp.ci_low, diff_high=comp.ci_high, resolved=comp.resolved,
                       diff_method=comp.method)
            rows.append(row)
    return pd.DataFrame(rows), curves


def _paired(r: pd.Series) -> str:
    """The paired t comparison with the grid's best over the shared seeds, as a verdict's tail."""
    if r.arm.startswith("grid") or not isinstance(r.get("diff_method"), str):
        return ""
    if not math.isfinite(r.diff_low):
        return f"; paired over seeds: {UNRESOLVED} ({r.diff_method})"
    verdict = "resolved" if r.resolved else UNRESOLVED
    return (f"; paired t over seeds: {100 * r['diff']:+.1f} pts [{100 * r.diff_low:+.1f}, {100 * r.diff_high:+.1f}] "
            f"(95 %): {verdict}")


def markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (one block per dataset)."""
    lines = []
    for dataset, part in table.groupby("dataset", sort=True):
        lines += [f"**{dataset}**", "",
                  "| method | val_acc mean +- sd (min-max) | train s | fwd GFLOP x ex | vs grid (TPE) best |",
                  "| --- | --- | --- | --- | --- |"]
        for _, r in part.sort_values("acc_mean", ascending=False, kind="stable").iterrows():  # ranked by mean
            acc = f"{r.acc_mean:.3f} +- {0 if math.isnan(r.acc_std) else r.acc_std:.3f} ({r.acc_min:.3f}-" \
                  f"{r.acc_max:.3f})"
            if r.arm.startswith("grid"):
                verdict = "(the grid)"
            elif isinstance(r.get("matched"), str) and not r.matched.startswith("0/"):
                verdict = (f"matches in {r.matched} seeds at {100 * r.share_seconds:.0f} % of the grid's seconds, "
                           f"{100 * r.share_flops:.0f} % of its FLOPs; mean "
                           + (f"gap {r.gap:.1f} pts" if r.gap > 0 else f"lead {-r.gap:.1f} pts"))
            else:
                verdict = f"below in every seed: gap {r.gap:.1f} pts"
            verdict += _paired(r)
            lines.append(f"| {r.method} | {acc} | {r.seconds:.0f} | {r.flops / 1e9:.1f} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def figure(table: pd.DataFrame, curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Best-so-far accuracy against cumulative compute (seconds, FLOPs x examples) per dataset; learned runs as
    points with their spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for i, dataset in enumerate(datasets):
        for j, (col, cum, label) in enumerate([("seconds", "cum_seconds", "training seconds (cumulative)"),
                                               ("flops", "cum_flops", "forward FLOPs x training examples")]):
            ax = axes[i][j]
            for k, arm in enumerate(("grid-tpe", "grid-random")):
                curve = curves.get(f"{dataset}/{arm}")
                if curve is None:
                    continue
                for s, (_, c) in enumerate(curve.groupby("seed")):
                    ax.step(c[cum], c["best_so_far"], where="post", color=("k", "0.55")[k], lw=1.2, alpha=0.8,
                            label=f"grid, {arm.split('-')[1]} (per seed)" if s == 0 else None)
            learned = table[(table["dataset"] == dataset) & ~table["arm"].str.startswith("grid")]
            for n, (_, r) in enumerate(learned.iterrows()):
                lo, hi = r.acc_mean - r.acc_min, r.acc_max - r.acc_mean
                marker = "D" if r.arm == "discretised" else "o"
                ax.errorbar([r[col]], [r.acc_mean], yerr=[[lo], [hi]], fmt=marker, color=colors(n % 10),
                            capsize=3, label=r.method)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("validation accuracy (best so far for the grid)")
            ax.set_title(f"{dataset}: grid search vs one learned run")
            ax.grid(alpha=0.3)
        axes[i][1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def complete_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Only the (dataset, seed) pairs whose study finished (their discretised retrain, the last step, has a row): an
    interrupted pair's partial grid would be charged as if it were the whole search."""
    parsed = df["experiment"].map(parse_experiment)
    pairs = {(p[1], p[2]) for p in parsed.dropna() if p[0] == "discretised"}
    return df[[p is not None and (p[1], p[2]) in pairs for p in parsed]]


def analyse(storage: Path, out: Path) -> pd.DataFrame:
    from nas_flex.leaderboard import Leaderboard

    table, curves = summarise(complete_runs(Leaderboard(storage).to_pandas()))
    if table.empty:
        raise SystemExit(f"no study rows in {storage}: run the study first")
    text = markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    table.to_csv(out / "study.csv", index=False)
    figure(table, curves, out / "study.png")
    print(text)
    print(f"[study] table: {out / 'study.md'}, figure: {out / 'study.png'}")
    return table


# ---------------------------------------------------------------------------------------------------------- main
def _resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--resources must look like cpu=1,gpu=0.5, but got {text!r}") from None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--storage", default="runs/study", help="the leaderboard folder (default runs/study)")
    p.add_argument("--out", default=str(RESULTS / "study"), help="table and figure folder")
    p.add_argument("--datasets", nargs="+", default=["digits-multiscale", "digits-scaleshift"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--grid-trials", type=int, default=8, help="trials of each grid arm (of 729 architectures)")
    p.add_argument("--samplers", nargs="+", default=["tpe", "random"], choices=["tpe", "random"])
    p.add_argument("--methods", nargs="+", default=None, help="learned methods (default: all of the space's)")
    p.add_argument("--tag", default=None, help="suffix of the learned arm's experiment names: add methods to a study "
                   "already run (--methods M --tag M); the grids and the discretised retrain are reused")
    p.add_argument("--discretise-skip-mixed", action="store_true", help="discretise the best non-DARTS run")
    p.add_argument("--address", default=None, help="a Ray cluster ('auto', 'ray://head:10001'); default: local")
    p.add_argument("--resources", type=_resources, default=None, help="per trial, e.g. cpu=1,gpu=0.5")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 dataset, 1 seed, 2 grid trials, 2 epochs")
    p.add_argument("--analyse-only", action="store_true", help="only redo the table and figure")
    p.add_argument("--verbose", type=int, default=1)
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = list(space_constants(LEARNED_SPACE)["METHODS"])
    if args.quick:
        args.datasets, args.seeds, args.grid_trials, args.epochs = args.datasets[:1], args.seeds[:1], 2, 2
    for name in ("epochs", "grid_trials"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.analyse_only:
        run_study(args)
    analyse(Path(args.storage), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

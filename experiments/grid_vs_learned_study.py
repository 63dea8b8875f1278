"""Grid or learned, at equal compute: a searched per-layer kernel-size grid against one run of each learned-size method.

Per dataset and seed, in one leaderboard:

* ``grid-tpe`` / ``grid-random``: ``search_spaces/per_layer_grid.py`` (a kernel size per convolution, 3 x 3 x 3 x 3,
  and a pooling per stage, max / avg / strided conv: 729 plain CNNs), ``--grid-trials`` trials by TPE and by random
  sampling (30 by default: TPE's first 10 are Optuna's random start-up, the same draws as the random arm's);
* ``learned``: one run of every learned-size method (``search_spaces/per_layer_learned.py``'s methods, CF-Conv
  included, each with its own size recipe), max pooling per stage, plus N-Jet with its safe-subsampling per stage;
* ``discretised``: the learned run best on validation, its sizes rounded to odd integers per layer
  (``nas_flex.export.discretise``) and retrained as a plain CNN: does the learned size carry over to a fixed
  architecture?

Every trial trains on the same backbone and data, for the main job's step budget, with the same seed, and holds out
a test split (``test_fraction``, 0.2 by default) that no arm, sampler or early stopping sees. The main job trains 10
epochs of batch 32 on the whole training split (1438 examples: 450 optimizer steps); the test split takes a fifth of
that, so the study's default epochs are the fewest that give at least as many steps (``budget_epochs``: 13 epochs
of 1151 examples, 468 steps), not 10 (360 steps, where FlexConv and NIFF are still on the steep part of their
curves). Selection and scoring are kept apart: every choice (the grid's best so far, the learned run to discretise)
reads the validation accuracy; every reported number is the chosen trial's test accuracy.

The answer, per dataset, as a measurement over seeds (mean and 95 % t interval): each arm's test accuracy; the
grid's curve (at each trial, in the order they ran, the test accuracy of the trial best on validation so far)
against its cumulative training compute (seconds, and forward FLOPs x training examples), as a mean over seeds with
a 95 % band; for each learned method, the share of the grid's compute its one run needs (its compute over what the
grid had spent when its curve first reached the run's test accuracy, or the grid's final one if the run is above
it), the gap to the grid's final accuracy (paired over seeds), and whether the discretised retrain keeps the
learned run's accuracy (paired difference).

Usage (scope: a 2-core x86 CPU, one thread per trial, unless said otherwise):

    python -m experiments.grid_vs_learned_study                      # the full study (hours on 2 CPU cores)
    python -m experiments.grid_vs_learned_study --quick              # smoke run: 1 dataset, 1 seed, 2 epochs
    python -m experiments.grid_vs_learned_study --address auto --resources cpu=4,gpu=0.5 \\
        --storage /shared/runs/study-heldout                          # a cluster
    python -m experiments.grid_vs_learned_study --analyse-only        # redo the table and figure from the storage

An interrupted study is continued by running the same command again: experiments already complete in the storage
are skipped (nothing is unpickled; the leaderboard rows say what finished). A storage whose study rows were trained
at another budget (epochs, batch size, test fraction) is refused before anything runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.common import RESULTS, SPACES, space_constants
from nas_flex.errors import NasFlexError, StorageError
from nas_flex.leaderboard.stats import UNRESOLVED, compare_runs, holm_bonferroni, t_interval

GRID_SPACE = SPACES / "per_layer_grid.py"
LEARNED_SPACE = SPACES / "per_layer_learned.py"
ARMS = ("grid-tpe", "grid-random", "learned", "discretised")
#: the column every arm selects on, and the held-out column every reported score reads
SELECT, SCORE = "metrics_val_acc", "metrics_test_acc"
#: the config keys that set a trial's budget: a storage holding study rows at another budget is refused
BUDGET_KEYS = ("epochs", "batch_size", "test_fraction")
#: Optuna's TPE draws its first trials at random (``TPESampler(n_startup_trials=10)``): below this the TPE and random
#: arms draw the same architectures
TPE_STARTUP = 10


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


def _study_rows(storage: Path) -> pd.DataFrame:
    """The storage's rows (an empty frame for a missing or empty storage)."""
    from nas_flex.leaderboard import Leaderboard

    if not storage.exists():
        return pd.DataFrame(columns=["experiment"])
    try:
        return Leaderboard(storage).to_pandas()
    except Exception:  # noqa: BLE001 - an empty storage
        return pd.DataFrame(columns=["experiment"])


def _finished(storage: Path, experiment: str) -> int:
    df = _study_rows(storage)
    return int((df["experiment"] == experiment).sum()) if "experiment" in df.columns else 0


def test_split_supported() -> bool:
    """Whether this nas_flex's trial config has the held-out split (the ``test_fraction`` key)."""
    from nas_flex.config import FIELD_NAMES

    return "test_fraction" in FIELD_NAMES


#: the main job's budget (``search_spaces/grid_vs_learned.py``): epochs and batch size on the whole training split
MAIN_JOB_EPOCHS, MAIN_JOB_BATCH = 10, 32


def steps_per_epoch(dataset: str, batch_size: int, test_fraction: float | None, seed: int = 0) -> int:
    """Optimizer steps of one epoch of ``dataset``'s training split (the last, smaller batch is kept)."""
    from nas_flex.data import get_dataset

    n = len(get_dataset(dataset, seed=seed, test_fraction=test_fraction or None).train)
    return math.ceil(n / batch_size)


def budget_epochs(datasets: list[str], batch_size: int, test_fraction: float) -> int:
    """The fewest epochs at which every dataset's training split (after the test split) gets at least the main
    job's optimizer steps (its 10 epochs of batch 32 on the whole training split)."""
    need = max(MAIN_JOB_EPOCHS * steps_per_epoch(d, MAIN_JOB_BATCH, None) for d in datasets)
    return max(math.ceil(need / steps_per_epoch(d, batch_size, test_fraction)) for d in datasets)


def budget(args: argparse.Namespace, dataset: str, seed: int) -> dict:
    """The overrides every arm of one (dataset, seed) trains with: data, step budget, seed, held-out split."""
    over = {"dataset": dataset, "epochs": args.epochs, "batch_size": args.batch_size, "seed": seed}
    if args.test_fraction > 0 and test_split_supported():
        over["test_fraction"] = args.test_fraction
    return over


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Every experiment the study runs, with its number of trials, in the order it runs them."""
    n_learned = len(args.methods) + ("njet" in args.methods)
    out = []
    for dataset in args.datasets:
        for seed in args.seeds:
            out += [(experiment_name(f"grid-{s}", dataset, seed), args.grid_trials) for s in args.samplers]
            out += [(experiment_name("learned", dataset, seed, args.tag), n_learned),
                    (experiment_name("discretised", dataset, seed), 1)]
    return out


def check_budget(rows: pd.DataFrame, args: argparse.Namespace) -> None:
    """Refuse a storage whose rows of this study's experiments were trained at another budget (resuming would mix
    budgets in one curve).

    Raises:
        StorageError: naming the experiment, the key, the stored and the asked value.
    """
    if rows.empty or "config" not in rows.columns:
        return
    names = {name for name, _ in plan(args)}
    for _, row in rows[rows["experiment"].isin(names)].iterrows():
        dataset, seed = parse_experiment(row["experiment"])[1:]
        config, asked = json.loads(row["config"] or "{}"), budget(args, dataset, seed)
        for key in BUDGET_KEYS:
            if config.get(key) != asked.get(key):
                raise StorageError(
                    f"--storage {args.storage} holds {row['experiment']} trained with {key}={config.get(key)!r}, "
                    f"but this study asks {key}={asked.get(key)!r}: use another --storage or the same budget")


def _done(args: argparse.Namespace, rows: pd.DataFrame) -> dict[str, int]:
    """Per planned experiment, its trials already in the storage (at most the planned number)."""
    counts = rows["experiment"].value_counts() if "experiment" in rows.columns else pd.Series(dtype=int)
    return {name: min(int(counts.get(name, 0)), n) for name, n in plan(args)}


def estimate(args: argparse.Namespace, rows: pd.DataFrame) -> str:
    """What the study will train: trials in all, those already in the storage, and their budget."""
    items, done = plan(args), _done(args, rows)
    total, have = sum(n for _, n in items), sum(done.values())
    per_pair = total // max(1, len(args.datasets) * len(args.seeds))
    text = (f"[study] {len(args.datasets)} dataset(s) x {len(args.seeds)} seed(s), {per_pair} trials each "
            f"({len(args.samplers)} grid arm(s) x {args.grid_trials}, the learned runs, 1 retrain): {total} trials, "
            f"{have} already in {args.storage}, {total - have} to train at {args.epochs} epochs of batch "
            f"{args.batch_size}")
    seconds = pd.to_numeric(rows.get("train_seconds", pd.Series(dtype=float)), errors="coerce")
    mine = seconds[rows["experiment"].isin(done)] if "experiment" in rows.columns else seconds.iloc[:0]
    if mine.notna().any() and total > have:
        text += (f"; about {mine.mean() * (total - have) / 3600:.1f} h of training at the {mine.notna().sum()} "
                 f"stored trials' mean {mine.mean():.0f} s (divide by the trials run at once)")
    return text


def _discretise_step(storage: Path, dataset: str, seed: int, over: dict, common: dict, skip_mixed: bool) -> None:
    import nas_flex
    from nas_flex.export import discretise

    name = experiment_name("discretised", dataset, seed)
    if _finished(storage, name) >= 1:
        return
    df = _study_rows(storage)
    source = discretise_source(df[df["experiment"] == experiment_name("learned", dataset, seed)], skip_mixed)
    if source is None:
        print(f"[study] {name}: no completed learned run to discretise")
        return
    plain = {**discretise(source), **over}

    def fixed(trial, plain=plain):
        return dict(plain)

    nas_flex.search(fixed, experiment=name, seed=seed, sampler="random", num_samples=1, **common)


def run_study(args: argparse.Namespace) -> None:
    import ray

    import nas_flex

    storage = Path(args.storage)
    rows = _study_rows(storage)
    check_budget(rows, args)  # before Ray starts
    print(estimate(args, rows))
    if sum(_done(args, rows).values()) == sum(n for _, n in plan(args)):
        return  # everything is in the storage: no Ray to start
    if args.test_fraction > 0 and not test_split_supported():
        print("[study] warning: this nas_flex has no `test_fraction` (held-out test split): the arms train without "
              "one, and the scores below are validation accuracies, the split every arm selected on")
    if not ray.is_initialized():  # one Ray for the whole study (nas_flex.search reuses it) instead of one per search
        ray.init(address=args.address, num_cpus=None if args.address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    common = {"storage": storage, "dedupe": False, "address": args.address, "verbose": args.verbose,
              "resources_per_trial": args.resources, "max_concurrent": args.max_concurrent}
    learned_space, n_learned = _learned_space(args.methods)
    for dataset in args.datasets:
        for seed in args.seeds:
            over = budget(args, dataset, seed)
            arms = [(f"grid-{s}", GRID_SPACE, {"sampler": s, "num_samples": args.grid_trials}) for s in args.samplers]
            arms.append(("learned", learned_space, {"sampler": "grid", "num_samples": n_learned}))
            for arm, space, kw in arms:
                name = experiment_name(arm, dataset, seed, args.tag if arm == "learned" else None)
                if _finished(storage, name) >= kw["num_samples"]:
                    print(f"[study] {name}: already in {storage}, skipped")
                    continue
                t0 = time.perf_counter()
                nas_flex.search(space, experiment=name, seed=seed, overrides=over, **kw, **common)
                print(f"[study] {name}: {time.perf_counter() - t0:.0f} s")
            _discretise_step(storage, dataset, seed, over, common, args.discretise_skip_mixed)


# ------------------------------------------------------------------------------------------------------ analysis
def study_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The study's rows with ``arm``, ``dataset_`` and ``seed_`` parsed from the experiment names."""
    parsed = df["experiment"].map(parse_experiment)
    out = df[parsed.notna()].copy()
    out["arm"] = [p[0] for p in parsed.dropna()]
    out["dataset_"] = [p[1] for p in parsed.dropna()]
    out["seed_"] = [p[2] for p in parsed.dropna()]
    return out


def score_column(df: pd.DataFrame) -> str:
    """The column the study reports: the held-out ``metrics_test_acc`` when the rows have it, else (rows trained
    without a test split) ``metrics_val_acc``, with a printed warning that those scores are not held out."""
    if SCORE in df.columns and pd.to_numeric(df[SCORE], errors="coerce").notna().any():
        return SCORE
    print(f"[study] warning: the rows have no {SCORE} (trained without a test split): the scores reported are "
          f"{SELECT}, the split every arm selected on, so they are not held out and favour the grid")
    return SELECT


def _run_order(df: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("started", "written_at", "trial_id") if k in df.columns]
    return df.sort_values(keys, kind="stable", na_position="last")


def select_by_validation(rows: pd.DataFrame) -> pd.Series | None:
    """The completed row best on validation (ties: the earliest to run), or None. Only ``metrics_val_acc`` and the
    run order decide; no other metric is read."""
    done = rows[rows["status"] == "completed"]
    value = pd.to_numeric(done[SELECT], errors="coerce")
    done = _run_order(done[value.notna()])
    if done.empty:
        return None
    return done.loc[pd.to_numeric(done[SELECT]).idxmax()]  # idxmax: the first of equal maxima, in run order


def discretise_source(rows: pd.DataFrame, skip_mixed: bool = False) -> pd.Series | None:
    """The learned run a (dataset, seed)'s discretised retrain starts from: of its learned rows, the one best on
    validation (without DARTS' mixed kernel with ``skip_mixed``)."""
    if skip_mixed and "params_conv" in rows.columns:
        rows = rows[rows["params_conv"] != "mixed"]
    return select_by_validation(rows) if not rows.empty else None


def _method(row: pd.Series) -> str:
    pooling = row.get("config_pooling")
    name = str(row["params_conv"])
    return f"{name} (safe-subsampling)" if pooling == ["safe", "safe"] else name


def _interval(prefix: str, values: list[float]) -> dict[str, float]:
    n, mean, sd, low, high = t_interval(values)
    return {f"{prefix}_mean": mean, f"{prefix}_sd": sd, f"{prefix}_low": low, f"{prefix}_high": high}


def _ratio_interval(prefix: str, values: list[float]) -> dict[str, float]:
    """A ratio's geometric mean over seeds with the 95 % t interval taken on the log scale: a share of compute is
    positive and skewed (0.25 and 4 are the same distance from 1), so its arithmetic t interval can reach below 0.
    ``_sd`` is the standard deviation of the logs."""
    logs = [math.log(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    n, mean, sd, low, high = t_interval(logs)
    return {f"{prefix}_mean": math.exp(mean) if n else math.nan, f"{prefix}_sd": sd,
            f"{prefix}_low": math.exp(low) if math.isfinite(low) else math.nan,
            f"{prefix}_high": math.exp(high) if math.isfinite(high) else math.nan}


def _grid_arm(dataset: str, arm: str, rows: pd.DataFrame, score: str) -> tuple[dict, pd.DataFrame]:
    """One grid arm's row of the table (its final score per seed, mean and interval) and its curve per seed."""
    from nas_flex.report.curves import grid_curve

    curve = grid_curve(rows, SELECT, "max", score=score)
    curve["seed"] = curve["experiment"].map(lambda e: parse_experiment(e)[2])
    finals = curve.groupby("seed").tail(1)
    acc = finals["score_so_far"].astype(float)
    row = {"dataset": dataset, "method": f"grid ({arm.split('-')[1]}, {int(curve['order'].max())} trials)",
           "arm": arm, "seeds": int(acc.notna().sum()), "acc_std": acc.std(), "acc_min": acc.min(),
           "acc_max": acc.max(), "seconds": finals["cum_seconds"].mean(), "flops": finals["cum_flops"].mean()}
    n, row["acc_mean"], _, row["acc_low"], row["acc_high"] = t_interval(acc.tolist())
    return row, curve


def _against_grid(runs: dict[int, pd.Series], curve: pd.DataFrame, score: str) -> dict:
    """Shares of the grid's compute, gap and paired comparison of one learned method's runs (one per seed)."""
    from nas_flex.report.curves import grid_cost_to_reach

    shares_s, shares_f, whole_s, whole_f, mine, grids = [], [], [], [], {}, {}
    for seed, r in runs.items():
        own = curve[curve["seed"] == seed]
        final = float(own["score_so_far"].iloc[-1]) if len(own) else math.nan
        value = float(r[score])
        if not (math.isfinite(final) and math.isfinite(value)):
            continue
        mine[seed], grids[seed] = value, final
        # the run against the grid's whole search (all its trials)
        whole_s.append(r["train_seconds"] / float(own["cum_seconds"].iloc[-1]))
        whole_f.append(r["train_flops"] / float(own["cum_flops"].iloc[-1]))
        # the grid's compute when its curve first reached the run's score (its final score if the run is above)
        cost = grid_cost_to_reach(own, min(value, final), column="score_so_far")
        shares_s.append(r["train_seconds"] / cost["seconds"] if cost and cost["seconds"] > 0 else math.nan)
        shares_f.append(r["train_flops"] / cost["flops"] if cost and cost["flops"] > 0 else math.nan)
    comp = compare_runs(mine, grids, a_name="run", b_name="grid")
    return {**_ratio_interval("share_seconds", shares_s), **_ratio_interval("share_flops", shares_f),
            **_ratio_interval("whole_seconds", whole_s), **_ratio_interval("whole_flops", whole_f),
            # 0.0 - x: a tie prints as 0.0, not -0.0
            "gap_mean": 0.0 - 100 * comp.difference, "gap_low": 0.0 - 100 * comp.ci_high,
            "gap_high": 0.0 - 100 * comp.ci_low,
            "diff": comp.difference, "diff_low": comp.ci_low, "diff_high": comp.ci_high, "resolved": comp.resolved,
            "diff_method": comp.method, "p_value": comp.p_value}


def _keeps(retrains: dict[int, pd.Series], sources: dict[int, pd.Series], score: str) -> dict:
    """The discretised retrain against the learned run it came from, paired over seeds (retrain - run)."""
    comp = compare_runs({s: float(r[score]) for s, r in retrains.items()},
                        {s: float(r[score]) for s, r in sources.items()}, a_name="retrain", b_name="learned")
    return {"keep_diff": comp.difference, "keep_low": comp.ci_low, "keep_high": comp.ci_high,
            "keep_resolved": comp.resolved, "keep_method": comp.method}


def _learned_rows(dataset: str, part: pd.DataFrame, curve: pd.DataFrame | None, score: str,
                  skip_mixed: bool) -> list[dict]:
    """One row per learned method and for the discretised retrain: its score over seeds and against the grid."""
    from nas_flex.report.curves import training_compute

    runs = training_compute(part[part["arm"].isin(["learned", "discretised"]) & (part["status"] == "completed")])
    runs["method"] = [("discretised " if a == "discretised" else "") + _method(r)
                      for a, (_, r) in zip(runs["arm"], runs.iterrows())]
    sources = {}
    for seed in runs.loc[runs["arm"] == "discretised", "seed_"].unique():
        learned = part[(part["experiment"] == experiment_name("learned", dataset, int(seed)))]
        source = discretise_source(training_compute(learned), skip_mixed)
        if source is not None:
            sources[int(seed)] = source
    rows = []
    for method, group in runs.groupby("method", sort=True):
        chosen = {int(s): select_by_validation(g) for s, g in group.groupby("seed_")}  # one run per seed
        chosen = {s: r for s, r in chosen.items()
                  if r is not None and np.isfinite(pd.to_numeric(r[score], errors="coerce"))}
        if not chosen:  # no completed run with a score (e.g. rows from before the test split)
            continue
        acc = [float(r[score]) for r in chosen.values()]
        row = {"dataset": dataset, "method": method, "arm": group["arm"].iloc[0], "seeds": len(acc),
               "acc_std": np.std(acc, ddof=1) if len(acc) > 1 else math.nan, "acc_min": min(acc),
               "acc_max": max(acc), "seconds": np.mean([r["train_seconds"] for r in chosen.values()]),
               "flops": np.mean([r["train_flops"] for r in chosen.values()])}
        _, row["acc_mean"], _, row["acc_low"], row["acc_high"] = t_interval(acc)
        if curve is not None:
            row.update(_against_grid(chosen, curve, score))
        if row["arm"] == "discretised":
            row.update(_keeps(chosen, {s: sources[s] for s in chosen if s in sources}, score))
        rows.append(row)
    return rows


def summarise(df: pd.DataFrame, score: str | None = None,
              skip_mixed: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The study's answer per dataset: one row per grid arm, per learned method and for the discretised retrain.

    Every choice reads ``metrics_val_acc``; every reported accuracy is ``score`` (default: ``score_column(df)``,
    the held-out test accuracy when the rows have it).

    Returns:
        (table, curves): ``table`` with dataset, method, arm, seeds, score, acc_mean with its 95 % t interval
        acc_low / acc_high over seeds, acc_std, acc_min, acc_max, seconds and flops (mean per seed: a grid arm's
        whole search, a learned method's one run); for learned methods and the retrain, against the TPE grid of the
        same seed: share_seconds_* / share_flops_* (the run's compute over the grid's when its curve first reached
        the run's score, or its final score if the run is above it: geometric mean over seeds, sd of the logs, and
        the 95 % t interval on the log scale), whole_seconds_* / whole_flops_* (the same for the run's compute over
        the grid's whole search), gap_*
        (grid's final score - run, points, paired t interval), diff / diff_low / diff_high / resolved /
        diff_method (``compare_runs``, run - grid); for the retrain, keep_diff / keep_low / keep_high /
        keep_resolved / keep_method (retrain - the learned run it came from, paired). ``curves``: per
        "dataset/arm", the grid curve of every seed (``grid_curve`` with ``score``, and a ``seed`` column).
    """
    df = study_frame(df)
    score = score or score_column(df)
    df["config_pooling"] = df["config"].map(lambda c: json.loads(c).get("pooling"))
    rows, curves = [], {}
    for dataset, part in df.groupby("dataset_", sort=True):
        reference = None
        for arm in sorted(a for a in part["arm"].unique() if a.startswith("grid-")):
            row, curve = _grid_arm(dataset, arm, part[part["arm"] == arm], score)
            rows.append(row)
            curves[f"{dataset}/{arm}"] = curve
            if arm == "grid-tpe" or reference is None:
                reference = curve
        rows += _learned_rows(dataset, part, reference, score, skip_mixed)
    table = _holm(pd.DataFrame(rows))
    if not table.empty:
        table.insert(4, "score", score)
    return table, curves


def _holm(table: pd.DataFrame) -> pd.DataFrame:
    """``resolved_holm``: per dataset, the learned methods' comparisons with the grid as one family, corrected by
    Holm's step-down procedure (``holm_bonferroni``); the retrain's row is not part of the family."""
    if table.empty or "p_value" not in table.columns:
        return table
    table = table.copy()
    table["resolved_holm"] = False
    for _, part in table[table["arm"] == "learned"].groupby("dataset"):
        _, rejected = holm_bonferroni(part["p_value"].tolist())
        table.loc[part.index, "resolved_holm"] = rejected
        table.loc[part.index, "family"] = len(part)
    return table


def curve_bands(curves: dict[str, pd.DataFrame], x: str) -> dict[str, pd.DataFrame]:
    """Per "dataset/arm": the grid's curve as a mean over seeds with its 95 % band, against ``x`` (``cum_seconds``
    or ``cum_flops``), every seed's step curve read on the union of their x values (``step_band``)."""
    from nas_flex.report.curves import step_band

    return {key: step_band([c for _, c in curve.groupby("seed")], x, "score_so_far")
            for key, curve in curves.items() if len(curve)}


def _ci(mean: float, low: float, high: float, scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    """``mean [low, high]`` scaled, or the mean alone with why there is no interval."""
    if not math.isfinite(mean):
        return "-"
    text = f"{scale * mean:{sign}.{digits}f}"
    if math.isfinite(low) and math.isfinite(high):
        return text + f" [{scale * low:{sign}.{digits}f}, {scale * high:{sign}.{digits}f}]"
    return text  # one seed: no interval (the table's note says so)


def _share(r: pd.Series, unit: str) -> str:
    """A share of the grid's compute in %, with its interval; two decimals below 1 %, so a bound is never 0."""
    values = [100 * r[f"share_{unit}_{k}"] for k in ("mean", "low", "high")]

    def fmt(v: float) -> str:
        return f"{v:.0f}" if v >= 1 else f"{v:.2f}"

    if not math.isfinite(values[0]):
        return "-"
    return fmt(values[0]) + (f" [{fmt(values[1])}, {fmt(values[2])}]" if math.isfinite(values[1]) else "")


def _verdict(r: pd.Series) -> str:
    """What a learned method's (or the retrain's) row says against the grid, and for the retrain, against its run."""
    if r.arm.startswith("grid"):
        return "(the grid)"
    if not isinstance(r.get("diff_method"), str):
        return "no grid of the same seeds"
    if r.resolved:
        where = "above the grid's final" if r["diff"] > 0 else "below the grid's final: a gap remains"
        if r.arm == "learned" and not r.get("resolved_holm", True):
            where += f" at 5 % uncorrected only (not after Holm over the {int(r.family)} methods)"
    else:
        where = UNRESOLVED
    text = f"{where} ({r.diff_method})"
    if isinstance(r.get("keep_method"), str):
        if not math.isfinite(r.keep_low):
            kept = "too few seeds to tell whether it keeps the learned run's accuracy"
        elif r.keep_resolved:
            kept = "loses accuracy against its learned run" if r.keep_diff < 0 else "beats its learned run"
        else:
            kept = "keeps its learned run's accuracy (" + UNRESOLVED + ")"
        text += (f"; retrain - learned run {_ci(r.keep_diff, r.keep_low, r.keep_high, 100, 1, '+')} pts "
                 f"({r.keep_method}): {kept}")
    return text


def markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (one block per dataset), every figure a mean over seeds with its 95 % t
    interval."""
    lines = []
    for dataset, part in table.groupby("dataset", sort=True):
        held = part["score"].iloc[0] == SCORE
        what = "test accuracy (held out)" if held else "validation accuracy (NOT held out: no test split)"
        lines += [f"**{dataset}**", "",
                  f"| method | seeds | {what}, mean [95 % CI] | train s | fwd GFLOP x ex | share of the grid's "
                  "seconds / FLOPs, % [95 % CI] | run - grid's final, pts [95 % CI] | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in part.sort_values("acc_mean", ascending=False, kind="stable").iterrows():  # ranked by mean
            share = gap = ""
            if not r.arm.startswith("grid") and isinstance(r.get("diff_method"), str):
                share = (f"{_share(r, 'seconds')} / {_share(r, 'flops')}")
                gap = _ci(r["diff"], r.diff_low, r.diff_high, 100, 1, "+")
            lines.append(f"| {r.method} | {r.seeds} | {_ci(r.acc_mean, r.acc_low, r.acc_high)} | {r.seconds:.0f} | "
                         f"{r.flops / 1e9:.1f} | {share} | {gap} | {_verdict(r)} |")
        lines += ["", "Each figure is a mean over seeds with its 95 % Student t interval (none with one seed). "
                  "Share: the run's compute over the grid's (the TPE arm) when the grid's curve first reached the "
                  "run's score, or its final score if the run is above it; a geometric mean over seeds with the t "
                  "interval on the log scale. Run - grid: the run's score minus the grid's final one, paired over "
                  "seeds (positive: the run is ahead).", ""]
    return "\n".join(lines)


def _short_verdict(r: pd.Series) -> str:
    if not math.isfinite(r.diff_low):
        return "too few seeds to test"
    if not r.resolved:
        return "not distinguishable"
    side = "ahead" if r["diff"] > 0 else "behind"
    if r.arm == "learned" and not r.get("resolved_holm", True):
        return f"{side} at 5 % uncorrected, not after Holm"
    return f"**{side}**" + (" (Holm)" if r.arm == "learned" else "")


def readme_table(table: pd.DataFrame) -> str:
    """The study in one Markdown table for the README: per method and dataset, the held-out accuracy, the run's
    difference to the TPE grid's final accuracy (positive: the run is ahead; paired over seeds) with its verdict
    (Holm over the learned methods), and the share of the grid's training seconds at which the grid's curve reached
    the run's accuracy."""
    datasets = sorted(table["dataset"].unique())
    head = "| method | " + " | ".join(f"{d.removeprefix('digits-')}: test acc [95 % CI] | run - grid, pts "
                                      f"[95 % CI]: verdict | share of the grid's seconds, % [95 % CI]"
                                      for d in datasets) + " |"
    lines = [head, "|" + " --- |" * (1 + 3 * len(datasets))]
    by = {d: table[table["dataset"] == d].set_index("method") for d in datasets}
    first = by[datasets[0]]
    grids = [m for m in first.index if first.loc[m, "arm"].startswith("grid")]
    learned = first[first["arm"] == "learned"].sort_values("acc_mean", ascending=False, kind="stable").index
    retrain = [m for m in first.index if first.loc[m, "arm"] == "discretised"]
    for method in [*sorted(grids, reverse=True), *learned, *retrain]:
        cells = [method.replace("discretised conv", "discretised and retrained")]
        for d in datasets:
            if method not in by[d].index:
                cells += ["-", "-", "-"]
                continue
            r = by[d].loc[method]
            cells.append(_ci(r.acc_mean, r.acc_low, r.acc_high))
            if r.arm.startswith("grid"):
                cells += ["(the grid)" if "tpe" in method else "", ""]
                continue
            cells.append(f"{_ci(r['diff'], r.diff_low, r.diff_high, 100, 1, '+')}: {_short_verdict(r)}")
            cells.append(_share(r, "seconds"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(table: pd.DataFrame, curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Per dataset, the grids' curves (mean over seeds, 95 % band) against cumulative compute (seconds, FLOPs x
    examples), and each learned method's run at its mean compute with the 95 % interval of its score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    colors = plt.get_cmap("tab10")
    held = (table["score"] == SCORE).all()
    for j, (col, cum, label) in enumerate([("seconds", "cum_seconds", "training seconds (cumulative)"),
                                           ("flops", "cum_flops", "forward FLOPs x training examples")]):
        bands = curve_bands(curves, cum)
        for i, dataset in enumerate(datasets):
            ax = axes[i][j]
            for k, arm in enumerate(("grid-tpe", "grid-random")):
                if (band := bands.get(f"{dataset}/{arm}")) is None:
                    continue
                color = ("k", "0.55")[k]
                ax.step(band["x"], band["mean"], where="post", color=color, lw=1.4,
                        label=f"grid, {arm.split('-')[1]} (mean over seeds, 95 % band)")
                ax.fill_between(band["x"], band["low"], band["high"], step="post", color=color, alpha=0.15, lw=0)
            learned = table[(table["dataset"] == dataset) & ~table["arm"].str.startswith("grid")]
            for n, (_, r) in enumerate(learned.iterrows()):
                err = [[r.acc_mean - r.acc_low], [r.acc_high - r.acc_mean]] if math.isfinite(r.acc_low) else None
                ax.errorbar([r[col]], [r.acc_mean], yerr=err, fmt="D" if r.arm == "discretised" else "o",
                            color=colors(n % 10), capsize=3, label=r.method)
            ax.set_xscale("log")
            ax.set_ylim(0.0, 1.02)  # an accuracy: a t interval past 0 or 1 is drawn cut at the axis
            ax.set_xlabel(label)
            ax.set_ylabel(("test" if held else "validation (not held out)") + " accuracy (grid: of its trial best "
                          "on validation so far)", fontsize=8)
            ax.set_title(f"{dataset}: grid search vs one learned run")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="best")
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


def analyse(storage: Path, out: Path, skip_mixed: bool = False) -> pd.DataFrame:
    from nas_flex.leaderboard import Leaderboard

    table, curves = summarise(complete_runs(Leaderboard(storage).to_pandas()), skip_mixed=skip_mixed)
    if table.empty:
        raise SystemExit(f"no study rows in {storage}: run the study first")
    text = markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    (out / "readme_table.md").write_text(readme_table(table) + "\n")
    table.to_csv(out / "study.csv", index=False)
    for cum in ("cum_seconds", "cum_flops"):  # the bands the figure draws, as numbers
        bands = curve_bands(curves, cum)
        if bands:
            pd.concat([b.assign(curve=k) for k, b in bands.items()]).to_csv(out / f"bands_{cum}.csv", index=False)
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
    p.add_argument("--storage", default=None, help="the leaderboard folder (default runs/study-heldout; with --quick "
                   "runs/study-quick)")
    p.add_argument("--out", default=None, help="table and figure folder (default experiments/results/study_heldout; "
                   "with --quick <storage>/results)")
    p.add_argument("--datasets", nargs="+", default=["digits-multiscale", "digits-scaleshift"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="every arm's epochs (default: the fewest that give the "
                   "main job's optimizer steps, 10 epochs of batch 32 of the whole training split, on what the test "
                   "split leaves: 13 at the default batch size and test fraction)")
    p.add_argument("--batch-size", type=int, default=32, help="every arm's batch size (default 32: the main job's)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="the held-out test split of every arm's data "
                   "(default 0.2; 0: none, the scores are then validation accuracies)")
    p.add_argument("--grid-trials", type=int, default=30, help="trials of each grid arm (of 729 architectures; "
                   f"TPE's first {TPE_STARTUP} are random start-up)")
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
    if args.epochs is None:
        if not 0.0 <= args.test_fraction < 1.0 or args.batch_size < 1:
            raise SystemExit("--test-fraction must be in [0, 1) and --batch-size >= 1")
        args.epochs = budget_epochs(args.datasets, args.batch_size, args.test_fraction)
    args.storage = args.storage or ("runs/study-quick" if args.quick else "runs/study-heldout")
    args.out = args.out or (str(Path(args.storage) / "results") if args.quick else str(RESULTS / "study_heldout"))
    for name in ("epochs", "grid_trials", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise SystemExit(f"--test-fraction must be in [0, 1), but got {args.test_fraction}")
    if "tpe" in args.samplers and "random" in args.samplers and args.grid_trials <= TPE_STARTUP and not args.quick:
        print(f"[study] warning: --grid-trials {args.grid_trials} <= TPE's {TPE_STARTUP} random start-up trials: "
              "the tpe and random arms draw the same architectures")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.analyse_only:
            run_study(args)
        analyse(Path(args.storage), Path(args.out), args.discretise_skip_mixed)
    except NasFlexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

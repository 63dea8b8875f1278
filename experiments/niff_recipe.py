"""NIFF's gap to a 7x7 convolution at the main job's budget: is it the budget or the training recipe?

On the main job (``search_spaces/grid_vs_learned.py``) NIFF trails the 7x7 grid point by about 12 points. This
script trains the main job's NIFF and conv 7x7 configs (``experiments.common.main_job_config``, max pooling, via
``nas_flex.train.run_trial``) on digits-multiscale under three recipes, seeds 0, 1, 2:

* ``nas_flex``: the main job's recipe and budget (Adam, peak lr 1e-2, 1 warm-up epoch + cosine, no weight decay,
  10 epochs of batch 32 = 450 steps): the baseline row.
* ``authors``: the NIFF authors' CIFAR-10 recipe (Grabinski et al., TMLR 2024, App. I: SGD with momentum 0.9,
  lr 0.02, cosine schedule, weight decay 2e-3, label smoothing 0.1; nas_flex's SGD is Nesterov, as the ConvNeXt
  training script the authors point to builds it; no warm-up is stated) at the same 450 steps of batch 32 (theirs:
  150 epochs of batch 256).
* ``nas_flex_3x``: the main job's recipe at 3x the epochs (30 epochs, 1,350 steps): is the gap budget?

For each run: final val_acc, train loss, training seconds and NIFF's learned 90 %-mass kernel sides. The summary
gives val_acc mean +- sd per (recipe, method) and NIFF minus conv 7x7 per seed under the same recipe (paired: the
same seed draws the same data split and order). Results are rewritten after every run to
``experiments/results/niff_recipe.json`` (``"complete": false`` until the last run), so an interrupted run keeps what
it measured; ``--resume`` skips the runs that file already holds.

Usage (from the repository root; 53 min wall at 1 thread on the 2-core machine under load, 47 of them training):
    python -m experiments.niff_recipe
    python -m experiments.niff_recipe --recipes nas_flex authors --seeds 0     # a subset
    python -m experiments.niff_recipe --resume                                  # continue an interrupted run
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from experiments.common import RESULTS, main_job_config, write_json

NAME = "niff_recipe"

#: recipe -> (what it is, the trial-config keys it changes on the main job's config)
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "nas_flex": ("main job: Adam lr 1e-2, 1 warm-up epoch + cosine, no weight decay, 10 x 32", {}),
    "authors": ("NIFF authors' CIFAR-10 recipe: SGD (momentum 0.9, Nesterov) lr 0.02, cosine, weight decay 2e-3, "
                "label smoothing 0.1, no warm-up, at 10 x 32",
                {"optimizer": "sgd", "lr": 0.02, "weight_decay": 2e-3, "label_smoothing": 0.1, "warmup_epochs": 0}),
    "nas_flex_3x": ("main job's recipe at 3x the epochs: 30 x 32", {"epochs": 30}),
}
#: method label -> the main job's config for it
METHODS: dict[str, dict[str, Any]] = {
    "niff": {"method": "niff"},
    "conv7": {"method": "conv", "kernel_size": 7},
}
#: the order the runs go in: the baseline pair first, then what decides "budget or recipe"
DEFAULT_PLAN = [("nas_flex", "niff"), ("nas_flex", "conv7"), ("authors", "niff"), ("nas_flex_3x", "niff"),
                ("nas_flex_3x", "conv7"), ("authors", "conv7")]


def trial_config(recipe: str, method: str, seed: int) -> dict[str, Any]:
    """The main job's config for ``method`` (max pooling) with ``recipe``'s changes and ``seed``."""
    config = main_job_config(pooling="max", **METHODS[method])
    return {**config, **RECIPES[recipe][1], "seed": seed, "device": "cpu"}


def run_one(recipe: str, method: str, seed: int) -> dict[str, Any]:
    """Train one config and keep what the comparison needs."""
    from nas_flex.train import run_trial

    config = trial_config(recipe, method, seed)
    result = run_trial(config).to_dict()
    last = result["history"][-1] if result["history"] else {}
    sizes = [[round(r["height"], 2), round(r["width"], 2)] for r in result["learned_sizes"] if r.get("kind") == "niff"]
    return {"recipe": recipe, "method": method, "seed": seed, "status": result["status"],
            "val_acc": result["metrics"]["val_acc"], "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"), "train_seconds": result["train_seconds"],
            "steps": config["epochs"] * -(-1438 // config["batch_size"]), "learned_sizes": sizes, "config": config}


def _mean_sd(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """val_acc mean +- sd per (recipe, method); NIFF - conv 7x7 per seed under the same recipe, and against the
    main job's recipe's conv 7x7."""
    acc = {(r["recipe"], r["method"], r["seed"]): r["val_acc"] for r in runs}
    out: dict[str, Any] = {}
    for recipe in RECIPES:
        row: dict[str, Any] = {}
        for method in METHODS:
            values = [v for (rc, m, _), v in acc.items() if rc == recipe and m == method]
            if values:
                row[method] = {"val_acc": _mean_sd(values), "n": len(values)}
        for ref_recipe, key in ((recipe, "niff_minus_conv7"), ("nas_flex", "niff_minus_conv7_main_recipe")):
            diffs = {s: acc[(recipe, "niff", s)] - acc[(ref_recipe, "conv7", s)] for (rc, m, s) in acc
                     if rc == recipe and m == "niff" and (ref_recipe, "conv7", s) in acc}
            if diffs:
                row[key] = {"per_seed": diffs, "mean_sd": _mean_sd(list(diffs.values()))}
        if row:
            out[recipe] = row
    return out


def figure(runs: list[dict[str, Any]]) -> None:
    """val_acc per seed (dots) and mean (bar) for each recipe and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    recipes = [rc for rc in RECIPES if any(r["recipe"] == rc for r in runs)]
    for j, (method, color) in enumerate((("niff", "tab:orange"), ("conv7", "tab:blue"))):
        for i, recipe in enumerate(recipes):
            values = [r["val_acc"] for r in runs if r["recipe"] == recipe and r["method"] == method]
            if not values:
                continue
            x = i + (j - 0.5) * 0.35
            ax.bar(x, statistics.fmean(values), width=0.3, color=color, alpha=0.35,
                   label={"niff": "NIFF", "conv7": "conv 7x7"}[method] if i == 0 else None)
            ax.scatter([x] * len(values), values, color=color, s=14, zorder=3)
    ax.set_xticks(range(len(recipes)), recipes)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("val_acc (digits-multiscale)")
    ax.set_title("NIFF vs conv 7x7 on the main job's net: recipe and budget", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    path = RESULTS / f"{NAME}.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=None, help="only these recipes")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None, help="only these methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--resume", action="store_true", help=f"keep the runs in results/{NAME}.json, run the rest")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    plan = [(rc, m) for rc, m in DEFAULT_PLAN if (args.recipes is None or rc in args.recipes)
            and (args.methods is None or m in args.methods)]
    runs: list[dict[str, Any]] = []
    path = RESULTS / f"{NAME}.json"
    if args.resume and path.exists():
        runs = json.loads(path.read_text())["runs"]
    done = {(r["recipe"], r["method"], r["seed"]) for r in runs}
    todo = [(rc, m, s) for rc, m in plan for s in args.seeds if (rc, m, s) not in done]
    for i, (recipe, method, seed) in enumerate(todo):
        r = run_one(recipe, method, seed)
        runs.append(r)
        print(f"[{i + 1}/{len(todo)}] {recipe:<11} {method:<5} seed {seed}: val_acc {r['val_acc']:.3f} "
              f"train_loss {r['train_loss']:.3f} ({r['train_seconds']:.0f} s)", flush=True)
        write_json(path, {"recipes": {k: v[0] for k, v in RECIPES.items()}, "runs": runs,
                          "summary": summarise(runs), "complete": i == len(todo) - 1})
    summary = summarise(runs)
    for recipe, row in summary.items():
        for method in METHODS:
            if method in row:
                m, s = row[method]["val_acc"]
                print(f"{recipe:<11} {method:<5}: val_acc {m:.3f} +- {s:.3f} (n={row[method]['n']})")
        if "niff_minus_conv7" in row:
            d = row["niff_minus_conv7"]
            print(f"{recipe:<11} NIFF - conv7 per seed: "
                  + ", ".join(f"{s}: {100 * v:+.1f}" for s, v in d["per_seed"].items())
                  + f" pts (mean {100 * d['mean_sd'][0]:+.1f} +- {100 * d['mean_sd'][1]:.1f})")
    if runs:
        figure(runs)


if __name__ == "__main__":
    main()

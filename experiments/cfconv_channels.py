"""CF-Conv's joint MLP with categorical channel inputs, trained: channel inputs index / onehot / embedding against the
layer's default (one MLP per channel pair), 3 seeds each, in two regimes.

* ``a`` (the paper's regime, as far as it is affordable on a CPU): a binary task and about 1 % of a layer's kernel
  positions sampled per step. The paper's task (Cats vs Dogs at 150 x 150) is not available offline; here the binary
  task is scikit-learn's digits split into "digit < 5" against "digit >= 5" (all 1797 images: two single digit
  classes would leave ~290 training and ~70 validation images, where one image is 1.4 points), at 16 x 16 px, the
  simple backbone of 4 CF-Conv layers of 16 filters with max pooling, Adam lr 1e-2 (warm-up + cosine, the trial's
  default), 12 epochs of batch 32 (540 steps), ``sampled_positions`` 256: 0.7 % of layer 2's 16 x 9 x 16 x 16
  positions per step, 2.5 % of layers 3-4's (8 x 5 x 16 x 16), 11 % of layer 1's (16 x 9 x 1 x 16).
* ``b`` (nas_flex's widths): the main job's CF-Conv config (``search_spaces/grid_vs_learned.py``: digits-multiscale at
  32 px, 4 layers of 16, max pooling, Adam lr 1e-2, batch 32, ``sampled_positions`` 2**15: 23 % of layer 2's
  32 x 17 x 16 x 16 positions per step, 89 % of layers 3-4's), at a reduced number of epochs (``--epochs-b``,
  default 2 of the main job's 10: 90 steps, one of them warm-up; a joint-MLP trial of the main job's size costs
  several minutes of a loaded CPU per epoch).

Every trial is ``nas_flex.train.run_trial`` on its config; the trained weights come back through its checkpoint file
(loaded with ``weights_only=True``) to measure, per CF-Conv layer, the effective rank across output channels of
(i) the kernel the layer applies (its stored state: positions never sampled still hold their U[-1, 1] start) and
(ii) the MLP's own kernel evaluated at every position: exp of the entropy of the normalised singular values of the
(C_out, C_in x H x Wf x 2) spectrum (the measure of docs/reproductions.md's init table).

Each trial is appended to ``experiments/results/cfconv_channels.jsonl`` as it finishes (partial results survive a
stop; a rerun skips trials already there); ``summary`` (run after, or alone) writes the means, sds and the paired
differences against per pair to ``cfconv_channels.json`` and the figure ``cfconv_channels.png``.

Usage (from the repository root):
    python -m experiments.cfconv_channels run --regimes a b --seeds 0 1 2
    python -m experiments.cfconv_channels init        # the MLP's ranks at initialisation (no training)
    python -m experiments.cfconv_channels summary
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments.common import RESULTS, append_jsonl, main_job_config, write_json

NAME = "cfconv_channels"
#: conv_hparams of each variant; "per_pair" is the layer's default
VARIANTS: dict[str, dict[str, Any]] = {
    "per_pair": {},
    "index": {"parameterization": "joint"},
    "onehot": {"parameterization": "joint", "channel_inputs": "onehot"},
    "embedding": {"parameterization": "joint", "channel_inputs": "embedding"},
}
BINARY_DATASET = "digits-binary"
SAMPLED_A = 256


def build_binary_digits(name: str, *, image_size: int | None, seed: int, **_: Any) -> Any:
    """``digits-binary``: the digits dataset's split (``digits``, 20 % validation) with label 1 for the digits 5-9
    and 0 for 0-4."""
    from nas_flex.data import DatasetSplits
    from nas_flex.data.digits import build_digits
    from nas_flex.data.tensors import ArrayDataset

    base = build_digits("digits", image_size=image_size, seed=seed, val_fraction=0.2)

    def binary(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(ds.inputs, (ds.targets >= 5).long(), **ds.meta)

    return DatasetSplits(name=name, kind="image", train=binary(base.train), val=binary(base.val), num_classes=2,
                         input_shape=base.input_shape, classes=("0-4", "5-9"), mean=base.mean, std=base.std,
                         options={})


def _register_binary() -> None:
    """Register ``digits-binary`` (a no-op when it is already registered)."""
    from nas_flex.data import register

    register(BINARY_DATASET, description="digits < 5 against digits >= 5")(build_binary_digits)


def regime_config(regime: str, epochs: int) -> dict[str, Any]:
    """The trial config of a regime, without the variant's layer options and the seed."""
    if regime == "a":
        return {"backbone": "simple", "depth": 4, "width": 16, "dataset": BINARY_DATASET, "image_size": 16,
                "epochs": epochs, "batch_size": 32, "lr": 1e-2, "conv": "cfconv", "pooling": "max"}
    return {**main_job_config("cfconv", "max"), "epochs": epochs}


def effective_rank(spectrum: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of a (C_out, C_in, H, Wf) complex kernel as a
    (C_out, C_in x H x Wf x 2) real matrix: C_out when every output channel is its own, 1 when all are one."""
    m = torch.view_as_real(spectrum).reshape(spectrum.shape[0], -1)
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def layer_ranks(cfg: dict[str, Any], checkpoint: Path | None) -> dict[str, list[float]]:
    """Per CF-Conv layer of the trained model (``checkpoint``; None: the model at init under ``cfg``'s seed): the
    rank of the applied kernel (the state) and of the MLP's."""
    from nas_flex.data import dataset_from_config
    from nas_flex.layers.cfconv import CFConv
    from nas_flex.models import build
    from nas_flex.train import resolve_config

    cfg = resolve_config(cfg).to_dict()
    splits = dataset_from_config(cfg)
    torch.manual_seed(cfg["seed"])
    model = build(cfg, in_channels=splits.input_shape[0], num_classes=splits.num_classes)
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, CFConv)]
    out: dict[str, list[float]] = {"state": [], "mlp": []}
    with torch.no_grad():
        model(splits.val[0][0][None])  # sets each layer's last input size
        for layer in layers:
            out["state"].append(effective_rank(layer.frequency_kernel()))
            sampled, layer.sampled_positions = layer.sampled_positions, None  # the MLP at every position
            out["mlp"].append(effective_rank(layer.frequency_kernel()))
            layer.sampled_positions = sampled
    return out


def run_one(regime: str, variant: str, seed: int, epochs: int) -> dict[str, Any]:
    from nas_flex.train import run_trial

    cfg = _config(regime, variant, seed, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "trial.pt"
        t0 = time.perf_counter()
        result = run_trial(cfg, checkpoint=ckpt)
        wall = time.perf_counter() - t0
        ranks = layer_ranks(cfg, ckpt) if result.status.value == "completed" else {"state": [], "mlp": []}
    return {"regime": regime, "variant": variant, "seed": seed, "config": cfg, "status": result.status.value,
            "val_acc": result.metrics["val_acc"], "best_val_acc": result.best["val_acc"],
            "train_seconds": result.train_seconds, "wall_seconds": wall, "rank_state": ranks["state"],
            "rank_mlp": ranks["mlp"]}


def _config(regime: str, variant: str, seed: int, epochs: int) -> dict[str, Any]:
    return {**regime_config(regime, epochs), "seed": seed,
            "conv_hparams": {**VARIANTS[variant], **({"sampled_positions": SAMPLED_A} if regime == "a" else {})}}


def init_ranks(regimes: list[str], seeds: list[int], variants: list[str]) -> None:
    """The MLP's rank per layer at initialisation (no training), per regime, variant and seed, into
    ``cfconv_channels_init.json``: what training started from."""
    torch.set_num_threads(1)
    _register_binary()
    rows = [{"regime": r, "variant": v, "seed": s, "rank_mlp": layer_ranks(_config(r, v, s, 1), None)["mlp"]}
            for r in regimes for v in variants for s in seeds]
    write_json(f"{NAME}_init", {"rows": rows})


def _done() -> set[tuple[str, str, int, int]]:
    path = RESULTS / f"{NAME}.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["regime"], r["variant"], r["seed"], r["config"]["epochs"]) for r in rows}


def run(regimes: list[str], seeds: list[int], variants: list[str], epochs: dict[str, int]) -> None:
    torch.set_num_threads(1)
    _register_binary()
    done = _done()
    for regime in regimes:
        for seed in seeds:  # seed-major: a stopped run still holds paired trials
            for variant in variants:
                if (regime, variant, seed, epochs[regime]) in done:
                    continue
                rec = run_one(regime, variant, seed, epochs[regime])
                append_jsonl(NAME, rec)
                print(f"{regime} {variant:9s} seed {seed}: {rec['status']} val_acc {rec['val_acc']:.3f} "
                      f"rank state {[round(r, 1) for r in rec['rank_state']]} "
                      f"mlp {[round(r, 1) for r in rec['rank_mlp']]} ({rec['wall_seconds']:.0f} s)", flush=True)


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
            "n": len(values)}


def _layer_means(ranks: list[list[float]]) -> list[float] | None:
    return [statistics.fmean(v) for v in zip(*ranks, strict=True)] if ranks else None


def summarise(rows: list[dict[str, Any]], init: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Per regime and variant: val_acc and per-layer ranks mean +- sd over seeds, and val_acc minus per pair's on
    the same seed (mean +- sd of the paired differences); ``init``: ``init_ranks``' rows, the MLP's rank per layer
    at initialisation (mean over seeds)."""
    out: dict[str, Any] = {}
    for regime in sorted({r["regime"] for r in rows}):
        mine = [r for r in rows if r["regime"] == regime and r["status"] == "completed"]
        base = {r["seed"]: r["val_acc"] for r in mine if r["variant"] == "per_pair"}
        out[regime] = {"config": next((r["config"] for r in mine), None), "variants": {}}
        for variant in VARIANTS:
            rs = [r for r in mine if r["variant"] == variant]
            if not rs:
                continue
            paired = [r["val_acc"] - base[r["seed"]] for r in rs if r["seed"] in base]
            out[regime]["variants"][variant] = {
                "seeds": [r["seed"] for r in rs], "val_acc": [r["val_acc"] for r in rs],
                "val_acc_stats": _mean_sd([r["val_acc"] for r in rs]),
                "rank_state": [_mean_sd(list(v))["mean"] for v in zip(*[r["rank_state"] for r in rs], strict=True)],
                "rank_mlp": [_mean_sd(list(v))["mean"] for v in zip(*[r["rank_mlp"] for r in rs], strict=True)],
                "rank_mlp_init": _layer_means([i["rank_mlp"] for i in init
                                               if i["regime"] == regime and i["variant"] == variant]),
                "minus_per_pair": _mean_sd(paired) if variant != "per_pair" and paired else None,
                "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in rs),
            }
    return out


def figure(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summary), 2, figsize=(11, 3.8 * len(summary)), squeeze=False)
    for k, (regime, block) in enumerate(summary.items()):
        acc_ax, rank_ax = axes[k, 0], axes[k, 1]
        names = list(block["variants"])
        for x, name in enumerate(names):
            v = block["variants"][name]
            acc_ax.scatter([x] * len(v["val_acc"]), v["val_acc"], color="C0", s=14)
            acc_ax.errorbar(x + 0.15, v["val_acc_stats"]["mean"], yerr=v["val_acc_stats"]["sd"], fmt="o", color="k")
            (line,) = rank_ax.plot(range(1, len(v["rank_mlp"]) + 1), v["rank_mlp"], marker="o", label=name)
            if v["rank_mlp_init"]:
                rank_ax.plot(range(1, len(v["rank_mlp_init"]) + 1), v["rank_mlp_init"], ls="--",
                             color=line.get_color(), alpha=0.6)
        acc_ax.set_xticks(range(len(names)), names)
        acc_ax.set_ylabel("val_acc")
        acc_ax.set_title(f"regime {regime}: val_acc per seed, mean +- sd")
        rank_ax.set_xlabel("CF-Conv layer")
        rank_ax.set_xticks(range(1, 1 + max(len(v["rank_mlp"]) for v in block["variants"].values())))
        rank_ax.set_ylabel("effective rank of the MLP's kernel")
        rank_ax.set_title(f"regime {regime}: MLP rank, trained (dashed: init)")
        rank_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary() -> None:
    rows = [json.loads(line) for line in (RESULTS / f"{NAME}.jsonl").read_text().splitlines() if line.strip()]
    init_path = RESULTS / f"{NAME}_init.json"
    summary = summarise(rows, json.loads(init_path.read_text())["rows"] if init_path.exists() else [])
    write_json(NAME, {"summary": summary, "note": "val_acc mean +- sd over seeds; minus_per_pair: paired by seed"})
    figure(summary, RESULTS / f"{NAME}.png")
    for regime, block in summary.items():
        for name, v in block["variants"].items():
            st, d = v["val_acc_stats"], v["minus_per_pair"]
            diff = f" minus per pair {d['mean']:+.3f} +- {d['sd']:.3f}" if d else ""
            print(f"{regime} {name:9s} val_acc {st['mean']:.3f} +- {st['sd']:.3f} (n={st['n']}){diff} rank mlp "
                  f"{[round(r, 1) for r in v['rank_mlp']]} state {[round(r, 1) for r in v['rank_state']]} mlp at init "
                  f"{[round(r, 1) for r in v['rank_mlp_init'] or []]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    r = sub.add_parser("run")
    r.add_argument("--regimes", nargs="+", default=["a", "b"], choices=["a", "b"])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    r.add_argument("--epochs-a", type=int, default=12)
    r.add_argument("--epochs-b", type=int, default=2)
    sub.add_parser("init", help="the MLP's rank per layer at initialisation, every regime, variant and seed")
    sub.add_parser("summary")
    args = parser.parse_args()
    if args.part == "run":
        run(args.regimes, args.seeds, args.variants, {"a": args.epochs_a, "b": args.epochs_b})
    if args.part == "init":
        init_ranks(["a", "b"], [0, 1, 2], list(VARIANTS))
    write_summary()


if __name__ == "__main__":
    main()

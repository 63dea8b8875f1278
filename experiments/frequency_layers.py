"""NIFF and CF-Conv on the main job's trial config (search_spaces/grid_vs_learned.py), why CF-Conv's joint MLP (the
paper's recommended parameterization) stays far below a plain convolution there, and what a training step costs.

Three parts, all single-threaded on the CPU, seed 0:

* ``trials``: ``nas_flex.train.run_trial`` with the config the main job gives each method (its space's ``BASE``:
  by default its budget, 10 epochs of batch 32), optionally another budget or other layer options; prints val_acc
  and training seconds per epoch and at the end.
* ``collapse``: trains the main job's CF-Conv model for a few Adam steps and prints, per CF-Conv layer, the mean
  |cos| between its channel-pair spatial kernels, the mean |cos| between its output channels' kernels (C_in x H x W
  each) and the effective rank of that (C_out, C_in x H x W) matrix (|cos| 1 / rank 1: every output channel is the
  same sum of the inputs). The joint MLP over (f_y, f_x, c_in, c_out) drives layers 2-4 from rank ~16 to about 2
  within 20 steps, with or without a Fourier encoding of its input (``encoding``) and at a 10x smaller lr
  (``--lr 1e-3``); evaluated everywhere (``sampled_positions: null``) it is rank 2-4 already at init. The per-pair
  MLPs (the layer's default) keep ~15.
* ``step``: seconds per training step of the main job's model for several layers, medians of interleaved rounds,
  as ratios to the first.

Every part appends its figures, with the run's scope, to ``experiments/results/frequency_layers.jsonl``.

Usage (from the repository root):
    python -m experiments.frequency_layers trials --method cfconv --pooling avg          # the main job's budget
    python -m experiments.frequency_layers trials --method cfconv --hparams '{"parameterization": "joint"}'
    python -m experiments.frequency_layers trials --method cfconv --epochs 6 --batch-size 64 \\
        --hparams '{"parameterization": "joint", "encoding": "all"}'
    python -m experiments.frequency_layers trials --method niff --pooling avg --epochs 18 --batch-size 64
    python -m experiments.frequency_layers collapse --steps 40
    python -m experiments.frequency_layers collapse --steps 20 \\
        --variants '{"parameterization": "joint", "sampled_positions": null}'
    python -m experiments.frequency_layers step --rounds 15
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from experiments.common import append_jsonl, main_job_base

#: the main job's shared trial config (backbone, data, width, budget, learning rate), from its space file
BASE = main_job_base()
RESULTS_NAME = "frequency_layers"


def run_trials(method: str, pooling: str, epochs: int, hparams: dict, batch_size: int, out: str = RESULTS_NAME,
               ) -> None:
    from nas_flex.train import run_trial

    config = {**BASE, "conv": method, "pooling": pooling, "epochs": epochs, "batch_size": batch_size}
    if hparams:
        config["conv_hparams"] = hparams

    def report(m: dict) -> None:
        print(f"epoch {m['epoch']}: train_loss {m['train_loss']:.3f} val_acc {m['val_acc']:.3f} "
              f"({m['seconds']:.0f} s)", flush=True)

    result = run_trial(config, report=report).to_dict()

    def sizes(records: list[dict]) -> list[tuple]:
        return [(r["name"], round(r["height"], 1), round(r["width"], 1)) for r in records]

    print(json.dumps(config), "->", result["status"], f"val_acc {result['metrics']['val_acc']:.3f}",
          f"train_seconds {result['train_seconds']:.0f}", "sizes at init", sizes(result.get("initial_sizes") or []),
          "learned", sizes(result["learned_sizes"]))
    append_jsonl(out, {"part": "trials", "config": config, "status": result["status"],
                                "val_acc": result["metrics"]["val_acc"], "train_seconds": result["train_seconds"],
                                "initial_sizes": sizes(result.get("initial_sizes") or []),
                                "learned_sizes": sizes(result["learned_sizes"])})


def _mean_abs_cos(rows: torch.Tensor) -> float:
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = rows.shape[0]
    return float(((rows @ rows.T).abs().sum() - n) / (n * (n - 1)))


def pair_cosine(layer: torch.nn.Module) -> float:
    """Mean |cos| between the spatial kernels of a layer's distinct channel pairs (1 for any two 1x1 kernels, so
    it over-states collapse for kernels concentrated at the centre tap)."""
    with torch.no_grad():
        return _mean_abs_cos(layer.spatial_kernel().flatten(2).flatten(0, 1))


def channel_diversity(layer: torch.nn.Module) -> tuple[float, float]:
    """(mean |cos| between output channels, effective rank) of the layer's (C_out, C_in * H * W) spatial kernel: an
    output channel is the function sum_i k[o, i] * x_i, so |cos| 1 / rank 1 means every output channel computes the
    same thing up to scale. Effective rank: (sum of singular values)^2 / (sum of their squares), C_out at most."""
    with torch.no_grad():
        k = layer.spatial_kernel().flatten(1)
        s = torch.linalg.svdvals(k)
        return _mean_abs_cos(k), float(s.sum() ** 2 / s.square().sum())


def collapse(steps: int, variants: list[dict], lr: float, out: str = RESULTS_NAME) -> None:
    from nas_flex.data import get_dataset
    from nas_flex.layers.cfconv import CFConv
    from nas_flex.models import build

    splits = get_dataset(BASE["dataset"], seed=0)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.tensor([int(splits.train[i][1]) for i in range(len(splits.train))])
    for hparams in variants:
        torch.manual_seed(0)
        name = json.dumps(hparams)
        model = build({**BASE, "conv": "cfconv", "pooling": "max", "conv_hparams": hparams}, in_channels=1,
                      num_classes=10)
        layers = [m for m in model.modules() if isinstance(m, CFConv)]
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        start = time.perf_counter()
        for step in range(steps + 1):
            idx = torch.randint(len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if step % 20 == 0:
                div = [channel_diversity(m) for m in layers]
                pair = [pair_cosine(m) for m in layers]
                cos = " ".join(f"{c:.2f}" for c in pair)
                out_cos = " ".join(f"{c:.2f}" for c, _ in div)
                rank = " ".join(f"{r:.1f}" for _, r in div)
                print(f"{name} step {step:3d} loss {loss.item():.3f} by layer: pair |cos| {cos}; output-channel |cos| "
                      f"{out_cos}; effective rank {rank} (of {layers[-1].out_channels}) "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
                append_jsonl(out, {"part": "collapse", "hparams": hparams, "lr": lr, "step": step,
                                            "loss": loss.item(), "pair_cos": pair,
                                            "output_channel_cos": [c for c, _ in div],
                                            "effective_rank": [r for _, r in div]})
            opt.zero_grad()
            loss.backward()
            opt.step()


def step_times(variants: list[dict], rounds: int, batch_size: int, out: str = RESULTS_NAME) -> None:
    """Seconds per training step (forward, backward, Adam) of the main job's model, per variant, medians of
    interleaved rounds (one step per variant per round, after two warm-up steps each), and each median over the
    first variant's. A variant's ``"gather": true`` makes per-pair CF-Conv gather each sampled position's MLP
    weights at every sampled share (``CFConv.broadcast_share`` = inf), the evaluation before broadcasting."""
    import statistics

    from nas_flex.models import build

    runs = []
    from nas_flex.layers.cfconv import CFConv

    for spec in variants:
        torch.manual_seed(0)
        config = {**BASE, "pooling": "max", **{k: v for k, v in spec.items() if k != "gather"}}
        model = build(config, in_channels=1, num_classes=10)
        if spec.get("gather"):  # CF-Conv per pair: gather each sampled position's weights at any sampled share
            for m in model.modules():
                if isinstance(m, CFConv):
                    m.broadcast_share = math.inf
        opt = torch.optim.Adam(model.parameters(), lr=BASE["lr"])
        runs.append((json.dumps(spec), model, opt, []))
    x, y = torch.randn(batch_size, 1, 32, 32), torch.randint(10, (batch_size,))

    def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _, model, opt, _ in runs:
        for _ in range(2):
            one_step(model, opt)
    for _ in range(rounds):
        for _, model, opt, times in runs:
            times.append(one_step(model, opt))
    first = statistics.median(runs[0][3])
    for name, _, _, times in runs:
        med = statistics.median(times)
        print(f"{name}: {1e3 * med:.1f} ms per step of batch {batch_size} ({med / first:.2f}x the first)", flush=True)
    append_jsonl(out, {"part": "step", "batch_size": batch_size, "rounds": rounds,
                                "median_seconds": {name: statistics.median(times) for name, _, _, times in runs}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    t = sub.add_parser("trials")
    t.add_argument("--method", default="cfconv")
    t.add_argument("--pooling", default="max", choices=["max", "avg"])
    t.add_argument("--epochs", type=int, default=BASE["epochs"], help="default: the main job's")
    t.add_argument("--batch-size", type=int, default=BASE["batch_size"], help="examples per step (default: the main "
                   "job's; run_trial's own default, used by the earlier 6-epoch runs, is 64)")
    t.add_argument("--hparams", default="{}", help="the layer's conv_hparams as JSON")
    c = sub.add_parser("collapse")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--lr", type=float, default=BASE["lr"])
    c.add_argument("--variants", nargs="+", default=['{"parameterization": "joint"}',
                                                     '{"parameterization": "joint", "encoding": "all"}', '{}'],
                   help="conv_hparams of each CF-Conv variant, as JSON ({}: the layer's default, per pair)")
    st = sub.add_parser("step")
    st.add_argument("--rounds", type=int, default=15)
    st.add_argument("--batch-size", type=int, default=32)
    st.add_argument("--variants", nargs="+", help="trial config entries of each variant, as JSON", default=[
        '{"conv": "niff"}', '{"conv": "cfconv"}', '{"conv": "cfconv", "gather": true}',
        '{"conv": "cfconv", "conv_hparams": {"parameterization": "joint"}}', '{"conv": "conv", "kernel_size": 7}'])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=RESULTS_NAME,
                        help="figures file, appended (a bare name: experiments/results/)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "trials":
        run_trials(args.method, args.pooling, args.epochs, json.loads(args.hparams), args.batch_size, args.out)
    elif args.part == "step":
        step_times([json.loads(v) for v in args.variants], args.rounds, args.batch_size, args.out)
    else:
        collapse(args.steps, [json.loads(v) for v in args.variants], args.lr, args.out)


if __name__ == "__main__":
    main()

"""NIFF and CF-Conv on the main job's trial config (search_spaces/grid_vs_learned.py), and why CF-Conv's joint MLP
stays far below a plain convolution there.

Two parts, both single-threaded on the CPU, seed 0:

* ``trials``: ``nas_flex.train.run_trial`` with the config the main job gives each method (``BASE`` below, copied
  from the space), optionally more epochs or other layer options; prints val_acc per epoch and at the end.
* ``collapse``: trains the main job's CF-Conv model for a few Adam steps and prints, per CF-Conv layer, the mean
  |cos| between its channel-pair spatial kernels (1.0: every pair has the same kernel, so every output channel is
  the same sum of the inputs). The joint MLP over (f_y, f_x, c_in, c_out) drives it towards 1 within tens of steps;
  the per-pair MLPs keep it near 0.4.

Usage:
    python experiments/frequency_layers.py trials --method niff --pooling avg --epochs 18
    python experiments/frequency_layers.py trials --method cfconv --hparams '{"parameterization": "per_pair"}'
    python experiments/frequency_layers.py collapse --steps 60
"""

from __future__ import annotations

import argparse
import json
import time

import torch

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 6, "lr": 1e-2}


def run_trials(method: str, pooling: str, epochs: int, hparams: dict) -> None:
    from nas_flex.train import run_trial

    config = {**BASE, "conv": method, "pooling": pooling, "epochs": epochs}
    if hparams:
        config["conv_hparams"] = hparams

    def report(m: dict) -> None:
        print(f"epoch {m['epoch']}: train_loss {m['train_loss']:.3f} val_acc {m['val_acc']:.3f}", flush=True)

    result = run_trial(config, report=report)
    sizes = [(r["name"], round(r["height"], 1), round(r["width"], 1)) for r in result["learned_sizes"]]
    print(json.dumps(config), "->", result["status"], f"val_acc {result['metrics']['val_acc']:.3f}", sizes)


def pair_cosine(layer: torch.nn.Module) -> float:
    """Mean |cos| between the spatial kernels of a layer's distinct channel pairs."""
    with torch.no_grad():
        k = layer.spatial_kernel().flatten(2).flatten(0, 1)
        k = k / k.norm(dim=1, keepdim=True).clamp_min(1e-12)
        n = k.shape[0]
        return float(((k @ k.T).abs().sum() - n) / (n * (n - 1)))


def collapse(steps: int, parameterizations: list[str], lr: float) -> None:
    from nas_flex.data import get_dataset
    from nas_flex.layers.cfconv import CFConv
    from nas_flex.models import build

    splits = get_dataset(BASE["dataset"], seed=0)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.tensor([int(splits.train[i][1]) for i in range(len(splits.train))])
    for parameterization in parameterizations:
        torch.manual_seed(0)
        hparams = {"parameterization": parameterization}
        model = build({**BASE, "conv": "cfconv", "pooling": "max", "conv_hparams": hparams}, in_channels=1,
                      num_classes=10)
        layers = [m for m in model.modules() if isinstance(m, CFConv)]
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        start = time.perf_counter()
        for step in range(steps + 1):
            idx = torch.randint(len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if step % 20 == 0:
                cos = " ".join(f"{pair_cosine(m):.2f}" for m in layers)
                print(f"{parameterization:8s} step {step:3d} loss {float(loss):.3f} pair |cos| by layer: {cos} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            opt.zero_grad()
            loss.backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    t = sub.add_parser("trials")
    t.add_argument("--method", default="cfconv")
    t.add_argument("--pooling", default="max", choices=["max", "avg"])
    t.add_argument("--epochs", type=int, default=BASE["epochs"])
    t.add_argument("--hparams", default="{}", help="the layer's conv_hparams as JSON")
    c = sub.add_parser("collapse")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--lr", type=float, default=BASE["lr"])
    c.add_argument("--parameterizations", nargs="+", default=["joint", "per_pair"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "trials":
        run_trials(args.method, args.pooling, args.epochs, json.loads(args.hparams))
    else:
        collapse(args.steps, args.parameterizations, args.lr)


if __name__ == "__main__":
    main()

"""The main job's learned-size trials, run directly (no Ray): accuracy and each layer's size, init -> learned.

The configs are exactly those ``search_spaces/grid_vs_learned.py`` produces (its ``space`` is called with fixed
choices); ``--epochs``, ``--size-update`` and ``--set KEY=JSON`` change them, to measure the budget at which a size
parameter leaves its initial value (e.g. the DARTS alphas' normalized entropy). One trial at a time, one thread.

    python experiments/main_job_sizes.py                                   # every method, both poolings, 6 epochs
    python experiments/main_job_sizes.py --methods mixed --pooling max --epochs 6 12 24 --size-update joint bilevel
    python experiments/main_job_sizes.py --methods flexconv --set 'conv_hparams={}'   # the authors' mask init

Prints one line per trial (val_acc, seconds) and one per learned-size layer (size and raw size parameter, init ->
learned); for the mixed kernel also its lowest normalized entropy by epoch (the alphas' own Adam has a constant
learning rate, so one long run shows the budget at which they leave uniform). ``--out FILE.jsonl`` appends every
result's summary, with each layer's raw size parameter after every epoch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from nas_flex.spaces import load_space
from nas_flex.train import run_trial

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "grid_vs_learned.py"


class _Fixed:
    """A stand-in for an Optuna trial that answers each ``suggest_categorical`` from ``choices``."""

    def __init__(self, choices: dict[str, Any]) -> None:
        self.choices = choices

    def suggest_categorical(self, name: str, options: list[Any]) -> Any:
        value = self.choices[name]
        if value not in options:
            raise ValueError(f"{name}={value!r} is not one of the space's choices {options}")
        return value


def main_job_config(method: str, pooling: str, kernel_size: int | None = None) -> dict[str, Any]:
    """The trial config the main job's space gives for these choices (the space now fixes one pooling for its
    3-seed budget; ``pooling`` here still chooses either)."""
    choices = {"method": method, "pooling": pooling, "kernel_size": kernel_size}
    return {**load_space(SPACE)(_Fixed(choices)), "pooling": pooling}


def _size_parameter(record: dict[str, Any]) -> tuple[str, float] | None:
    """The one raw size parameter worth showing per kind (name, value)."""
    for key in ("normalized_entropy", "mask_sigma_h", "mask_sigma", "sigma"):
        if key in record:
            return key, float(record[key])
    return None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The figures this script prints: accuracy, seconds, and per layer size and raw parameter, init -> learned."""
    layers = []
    for init, last in zip(result["initial_sizes"] or [], result["learned_sizes"] or [], strict=True):
        row = {"name": last["name"], "kind": last["kind"], "size_init": (init["height"] + init["width"]) / 2,
               "size_learned": (last["height"] + last["width"]) / 2}
        param = _size_parameter(last)
        if param is not None:
            row.update(param=param[0], param_init=_size_parameter(init)[1], param_learned=param[1])
        if "probabilities" in last:
            row["probabilities"] = [round(p, 3) for p in last["probabilities"]]
        layers.append(row)
    cfg = result["config"]
    # each layer's raw size parameter after every epoch (epoch 0: init), to read the budget at which it moves
    trace = [[(_size_parameter(r) or ("", float("nan")))[1] for r in h["learned_sizes"]] for h in result["history"]]
    return {"conv": cfg["conv"], "pooling": cfg["pooling"], "kernel_size": cfg.get("kernel_size"),
            "param_history": trace, "epochs": cfg["epochs"], "size_update": cfg["size_update"],
            "conv_hparams": cfg["conv_hparams"],
            "status": result["status"], "val_acc": result["metrics"]["val_acc"],
            "best_val_acc": result["best"]["val_acc"], "train_seconds": result["train_seconds"], "layers": layers}


def _print(summary: dict[str, Any]) -> None:
    print(f"{summary['conv']:<9} {summary['pooling']:<4} ep {summary['epochs']:>2} {summary['size_update']:<7} "
          f"hp {json.dumps(summary['conv_hparams'])}: {summary['status']} val_acc {summary['val_acc']:.3f} "
          f"(best {summary['best_val_acc']:.3f}), {summary['train_seconds']:.0f} s", flush=True)
    for layer in summary["layers"]:
        text = f"    {layer['name']:<14} size {layer['size_init']:5.2f} -> {layer['size_learned']:5.2f}"
        if "param" in layer:
            change = layer["param_learned"] / layer["param_init"] - 1 if layer["param_init"] else float("nan")
            text += (f"   {layer['param']} {layer['param_init']:.3f} -> {layer['param_learned']:.3f} "
                     f"({change:+.0%})")
        if "probabilities" in layer:
            text += f"  p={layer['probabilities']}"
        print(text, flush=True)
    if summary["layers"] and summary["layers"][0].get("param") == "normalized_entropy":
        lowest = [min(epoch) for epoch in summary["param_history"]]
        below = next((e for e, v in enumerate(lowest) if v < 0.9), None)
        marks = sorted({e for e in (1, 2, 3, 6, 12, 24, 48, 96) if e < len(lowest)} | {len(lowest) - 1})
        print("    lowest normalized entropy by epoch: " + ", ".join(f"{e}: {lowest[e]:.4f}" for e in marks)
              + f"; first below 0.9: {'epoch ' + str(below) if below is not None else 'not reached'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["njet", "envelope", "mixed", "flexconv"])
    parser.add_argument("--pooling", nargs="+", default=["max", "avg"])
    parser.add_argument("--kernel-size", nargs="+", type=int, default=[3, 5, 7], help="for method conv")
    parser.add_argument("--epochs", nargs="+", type=int, default=[None], help="default: the space's")
    parser.add_argument("--size-update", nargs="+", default=["joint"], choices=["joint", "bilevel"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a config key")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="append the summaries to this .jsonl file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    t0 = time.perf_counter()
    for method, pooling, epochs, update in itertools.product(args.methods, args.pooling, args.epochs,
                                                              args.size_update):
        for k in args.kernel_size if method == "conv" else [None]:
            cfg = {**main_job_config(method, pooling, k), "size_update": update, **extra}
            if epochs is not None:
                cfg["epochs"] = epochs
            summary = summarize(run_trial(cfg).to_dict())
            _print(summary)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(summary) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

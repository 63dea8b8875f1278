"""What the size-reproduction scripts share: the command line, runs with kept weights, evaluation, small figures.

Each script (``njet_resize.py``, ``flexconv_sizes.py``, ``flexconv_alias.py``, ``envelope_apertures.py``,
``njet_sigma_schedule.py``, ``njet_alpha_init.py``) runs from the repository root as ``python -m experiments.<name>``,
has a CPU budget of minutes at one thread on the built-in digits data, and ``--full`` for the paper-size run
(more epochs and seeds; ``--device cuda`` where a GPU is available).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nas_flex.train import run_trial

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--full", action="store_true", help="the paper-size run: more epochs and seeds (GPU advised)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of the chosen budget")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds of the chosen budget")
    p.add_argument("--out", default=str(RESULTS), help=f"folder for the figure and the JSON (default {RESULTS})")
    return p


def setup(args: argparse.Namespace, epochs: tuple[int, int], seeds: tuple[Sequence[int], Sequence[int]]
          ) -> tuple[int, list[int], Path]:
    """Threads, the budget (CPU default or ``--full``), and the output folder."""
    torch.set_num_threads(args.threads)
    n_epochs = args.epochs or epochs[1 if args.full else 0]
    run_seeds = list(args.seeds or seeds[1 if args.full else 0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return n_epochs, run_seeds, out


def train(config: dict[str, Any], *, keep_weights: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``run_trial(config).to_dict()``; with ``keep_weights`` also the trained state_dict (read ``weights_only``)."""
    if not keep_weights:
        return run_trial(config).to_dict(), {}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_trial(config, checkpoint_dir=tmp).to_dict()
        state = torch.load(Path(tmp) / "trial_state.pt", map_location="cpu", weights_only=True)["model"]
    return result, state


def load_model(config: dict[str, Any], state: dict[str, torch.Tensor], *, image_size: int):
    """(the trained model, in eval mode, and the dataset splits) of ``config`` at another ``image_size``."""
    from nas_flex.data import get_dataset
    from nas_flex.models import build
    from nas_flex.train.config import resolve_config

    cfg = resolve_config({**config, "image_size": image_size})
    splits = get_dataset(cfg["dataset"], image_size=image_size, seed=cfg["seed"], **cfg["data_options"])
    model = build(cfg, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
                  input_size=tuple(splits.input_shape[1:]))
    model.load_state_dict(state)
    model.eval()
    return model, splits


def recalibrate_batchnorm(model: torch.nn.Module, dataset) -> None:
    """Re-estimate every BatchNorm's running statistics on ``dataset`` (a cumulative average over one pass, no
    gradient, dropout off), then leave the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False):
            model(x)
    model.eval()


def evaluate(config: dict[str, Any], state: dict[str, torch.Tensor], *, image_size: int,
             kernel_scale: dict[str, float] | None = None, recalibrate_bn: bool = False) -> float:
    """Validation accuracy of trained weights on the trial's dataset at another ``image_size``.

    ``kernel_scale``: layer kind -> factor on that kind's convolution (its output less its bias), e.g. FlexConv's
    change of sampling rate, (r_train / r_test)^2 in 2-D (Romero et al. 2022, Eq. 9): a kernel sampled twice as
    densely sums four times as many taps. ``recalibrate_bn``: re-estimate the BatchNorm statistics on the training
    split at ``image_size`` first (labels unused).
    """
    model, splits = load_model(config, state, image_size=image_size)
    for module in model.modules():
        factor = (kernel_scale or {}).get(getattr(module, "kind", None))
        if factor is not None:
            module.register_forward_hook(_rescale_hook(factor))
    if recalibrate_bn:
        recalibrate_batchnorm(model, splits.train)
    loader = torch.utils.data.DataLoader(splits.val, batch_size=256, shuffle=False)
    correct = count = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            count += len(y)
    return correct / count


def _rescale_hook(factor: float):
    def hook(module, inputs, output):
        bias = getattr(module, "bias", None)
        if bias is None:
            return output * factor
        b = bias.view(1, -1, *([1] * (output.dim() - 2)))
        return (output - b) * factor + b

    return hook


def layer_records(result: dict[str, Any], epoch: int | None = None) -> list[dict[str, Any]]:
    """The learned-size records after training (or at ``epoch``: 0 is initialisation)."""
    if epoch is None:
        return result["learned_sizes"]
    return next(h["learned_sizes"] for h in result["history"] if h["epoch"] == epoch)


def save(fig, out: Path, name: str, data: Any) -> Path:
    """The figure as a small PNG and the numbers behind it as JSON, both named ``name``."""
    path = out / f"{name}.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    print(f"wrote {path} ({path.stat().st_size // 1024} KB) and {name}.json")
    return path


def scope(args: argparse.Namespace, epochs: int, seeds: Sequence[int]) -> str:
    """One line saying what ran: device, threads, budget."""
    return (f"device {args.device}, {args.threads} thread(s), {epochs} epochs, seeds {list(seeds)}"
            f"{' (--full)' if args.full else ''}")

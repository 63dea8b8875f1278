"""``run_trial(config, report=None)``: the one training loop every search trial runs. No Ray here: progress goes
out through the ``report`` callback, and everything the leaderboard records comes back as a plain dict.
"""

from __future__ import annotations

import math
import os
import platform
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nas_flex import __version__
from nas_flex.errors import NonFiniteError
from nas_flex.layers.base import KernelLayer
from nas_flex.record import RESULT_FIELDS, TrialRecord, TrialStatus, utc_now
from nas_flex.sizes import learned_size_records
from nas_flex.train.config import resolve_config
from nas_flex.train.metering import FlopCount, count_flops, count_parameters
from nas_flex.train.optim import TrialOptimizers, make_optimizers

__all__ = ["run_trial", "train_one_epoch", "warmup_cosine", "resolve_device", "RESULT_KEYS"]

Report = Callable[[dict[str, Any]], None]

#: the fields of the returned ``TrialRecord`` (``search_params`` is the tuner's, left None here)
RESULT_KEYS = RESULT_FIELDS


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else the CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config device={name!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _kernel_layers(model: nn.Module) -> Iterator[KernelLayer]:
    return (m for m in model.modules() if isinstance(m, KernelLayer))


def _non_finite_state(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or inf. The loss alone misses some divergences: at lr 1e6
    with SGD a BatchNorm's ``running_var`` overflows to inf while the training loss, computed with batch statistics,
    stays finite (issue 11)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    floats = [(n, t) for n, t in named if t.is_floating_point() or t.is_complex()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in floats]).cpu()  # one device sync per check
    return [n for (n, _), ok in zip(floats, finite.tolist()) if not ok]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _split_for_bilevel(train, cfg: dict[str, Any]):
    """(weights' part, size parameters' part) of the training split: DARTS holds out ``bilevel_split`` of it."""
    n = len(train)
    held = int(round(n * cfg["bilevel_split"]))
    if held < 1 or held >= n:
        raise ValueError(
            f"bilevel_split={cfg['bilevel_split']} of {n} training examples leaves an empty part; use a value "
            f"between 1/{n} and 1 - 1/{n}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"] + 7919)).tolist()
    return torch.utils.data.Subset(train, order[held:]), torch.utils.data.Subset(train, order[:held])


def _cycle(dataset, cfg: dict[str, Any], loader_args: dict[str, Any], epoch: int):
    """Endless shuffled batches of ``dataset``, the order a function of (seed, epoch, pass) only."""
    pass_ = 0
    while True:
        g = torch.Generator().manual_seed(cfg["seed"] * 1000003 + epoch * 101 + pass_ + 17)
        yield from torch.utils.data.DataLoader(dataset, shuffle=True, generator=g, **loader_args)
        pass_ += 1


def _loaders(cfg: dict[str, Any], device: torch.device):
    from nas_flex.data import get_dataset

    splits = get_dataset(cfg["dataset"], root=cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"],
                         download=cfg["download"], **cfg["data_options"])
    train, val = splits.train, splits.val
    if cfg["train_subset"]:
        g = torch.Generator().manual_seed(cfg["seed"])
        train = torch.utils.data.Subset(train, torch.randperm(len(train), generator=g)[: cfg["train_subset"]].tolist())
    if cfg["val_subset"]:
        val = torch.utils.data.Subset(val, list(range(min(cfg["val_subset"], len(val)))))
    pin = device.type == "cuda"
    common = {"batch_size": cfg["batch_size"], "num_workers": cfg["num_workers"], "pin_memory": pin}
    val_loader = torch.utils.data.DataLoader(val, shuffle=False, **common)
    return splits, train, val_loader, common


def _evaluate(model: nn.Module, loader, device: torch.device, autocast: dict[str, Any]) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad(), torch.autocast(**autocast):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x).float()
            loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    model.train()
    return loss_sum / max(count, 1), correct / max(count, 1)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def run_trial(config: dict[str, Any], report: Report | None = None, *,
              checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build the model and data a trial config describes, train it, and return what the leaderboard records.

    Args:
        config: a trial config (``nas_flex.train.config.KEY_DOCS`` lists the keys and defaults).
        report: called after every epoch with that epoch's metrics (epoch, train_loss, train_acc, train_reg,
            val_loss, val_acc, lr, seconds, learned_sizes) and the trial's params and flops; the search runner passes
            Ray Tune's report here. ``train_loss`` is the task loss; ``train_reg`` the layers' regularization term
            (mean per step) that the optimiser adds to it.
        checkpoint_dir: if given, the trial saves its state there after every epoch (``torch.save`` of tensors and
            plain values, loadable with ``weights_only=True``) and resumes from it when called again.

    Returns:
        A ``nas_flex.record.TrialRecord``. ``status`` is completed, diverged (a NaN/inf loss or size
        parameter, or any NaN/inf parameter or buffer after an epoch: the metrics so far are kept) or oom.
        Other errors propagate (the runner records them).
        ``history`` starts with an epoch-0 record (validation metrics and learned sizes at initialisation, not
        reported to ``report``); ``initial_sizes`` repeats its sizes next to the final ``learned_sizes``, and
        ``size_recipes`` says how each layer kind's size parameters were trained (``nas_flex.train.optim``).

    Example:
        >>> result = run_trial({"dataset": "digits", "epochs": 1})  # doctest: +SKIP
        >>> result.status, result.metrics["val_acc"]  # doctest: +SKIP
    """
    cfg = resolve_config(config)
    started = utc_now()
    device = resolve_device(cfg["device"])
    _seed_everything(cfg["seed"], cfg["deterministic"])
    splits, train_set, val_loader, loader_args = _loaders(cfg, device)

    from nas_flex.models import build as build_model

    model = build_model(cfg, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
                        input_size=tuple(splits.input_shape[1:]))
    params = count_parameters(model)
    model.to(device)
    sample = splits.val[0][0].unsqueeze(0).to(device)

    def meter() -> FlopCount:
        # one example in eval mode, FFTs counted. Learned sizes change the cost (a FlexConv crop grows, an N-Jet
        # kernel follows sigma), so the cost is measured after every epoch, and the final figure is the trained
        # model's.
        was_training = model.training
        model.eval()
        try:
            return count_flops(model, sample)
        finally:
            model.train(was_training)

    flops = meter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bilevel = cfg["size_update"] == "bilevel" and any(True for m in _kernel_layers(model) for _ in m.size_parameters())
    train_set, size_set = _split_for_bilevel(train_set, cfg) if bilevel else (train_set, None)
    steps_per_epoch = math.ceil(len(train_set) / cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    warmup_steps = int(min(cfg["warmup_epochs"], max(cfg["epochs"] - 1, 0)) * steps_per_epoch)
    opts = make_optimizers(model, {**cfg, "size_update": "bilevel" if bilevel else "joint"},
                           lambda s: warmup_cosine(s, total_steps, warmup_steps))
    use_amp = cfg["amp"] and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = {"device_type": device.type, "dtype": amp_dtype, "enabled": use_amp}
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    history: list[dict[str, Any]] = []
    start_epoch, train_seconds, examples = 0, 0.0, 0
    ckpt_path = Path(checkpoint_dir) / "trial_state.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opts.load_state_dict(state["optimizers"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
        train_seconds, examples = float(state["train_seconds"]), int(state["examples"])
        torch.set_rng_state(state["rng"].cpu())  # dropout and sampling continue as if never interrupted
    else:
        # epoch 0: the sizes (and raw size parameters) at initialisation, so "moved from X to Y" can be read off
        val_loss, val_acc = _evaluate(model, val_loader, device, autocast)
        history.append({"epoch": 0, "train_loss": None, "train_acc": None, "train_reg": None, "val_loss": val_loss,
                        "val_acc": val_acc, "lr": opts.weights.param_groups[0]["lr"], "seconds": 0.0,
                        "flops": flops.per_sample, "learned_sizes": learned_size_records(model)})

    status, error = TrialStatus.COMPLETED, None
    for epoch in range(start_epoch, cfg["epochs"]):
        g = torch.Generator().manual_seed(cfg["seed"] * 1000003 + epoch)  # order depends on (seed, epoch) only
        loader = torch.utils.data.DataLoader(train_set, shuffle=True, generator=g, drop_last=False, **loader_args)
        size_batches = _cycle(size_set, cfg, loader_args, epoch) if size_set is not None else None
        t0 = time.perf_counter()
        try:
            stats = train_one_epoch(model, loader, opts, scaler, cfg, epoch=epoch, device=device,
                                    autocast=autocast, size_batches=size_batches)
        except NonFiniteError as err:
            status, error, stats = TrialStatus.DIVERGED, str(err), None
        except torch.cuda.OutOfMemoryError as err:
            status, error, stats = TrialStatus.OOM, str(err).splitlines()[0], None
        if stats is not None and (bad := _non_finite_state(model)):
            shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            status = TrialStatus.DIVERGED
            error = f"non-finite values in {shown} after epoch {epoch + 1} (the loss was finite)"
            stats = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if stats is None:
            break
        examples += stats["count"]
        val_loss, val_acc = _evaluate(model, val_loader, device, autocast)
        flops = meter()
        record = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "train_acc": stats["acc"],
            "train_reg": stats["reg"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opts.weights.param_groups[0]["lr"],
            "seconds": seconds,
            "flops": flops.per_sample,
            "learned_sizes": learned_size_records(model),
        }
        history.append(record)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model=model, opts=opts, scaler=scaler, epoch=epoch, history=history,
                             train_seconds=train_seconds, examples=examples)
        if report is not None:
            report({**record, "params": params})

    trained = [h for h in history if h["epoch"] >= 1]  # epoch 0 is the state at initialisation
    metric_keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    last = trained[-1] if trained else {}
    metrics = {k: last.get(k, float("nan")) for k in metric_keys}
    best = {
        "val_acc": max((h["val_acc"] for h in trained), default=float("nan")),
        "val_loss": min((h["val_loss"] for h in trained), default=float("nan")),
        "epoch": max(trained, key=lambda h: h["val_acc"])["epoch"] if trained else 0,
    }
    peak, peak_kind = _peak_memory(device)
    initial = history[0]["learned_sizes"] if history and history[0]["epoch"] == 0 else None
    return TrialRecord(
        status=status,
        error=error,
        config=cfg,
        started=started,
        finished=utc_now(),
        epochs_completed=len(trained),
        metrics=metrics,
        best=best,
        history=history,
        params=params,
        flops=flops.per_sample,  # of the trained model (the last epoch's learned sizes)
        flops_fft=flops.fft / max(flops.batch_size, 1),
        train_seconds=train_seconds,
        examples_per_second=examples / train_seconds if train_seconds > 0 else float("nan"),
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
        device=_device_name(device),
        learned_sizes=learned_size_records(model),
        initial_sizes=initial,
        size_recipes=opts.recipes,
        nas_flex_version=__version__,
        torch_version=torch.__version__,
    )


def _save_checkpoint(path: Path, *, model: nn.Module, opts: TrialOptimizers, scaler, epoch: int,
                     history: list[dict[str, Any]], train_seconds: float, examples: int) -> None:
    """The trial's state after ``epoch``, written atomically; tensors and plain values (``weights_only`` loads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizers": opts.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "history": history, "train_seconds": train_seconds, "examples": examples,
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _training_step(model: nn.Module, layers: list[KernelLayer], x: Tensor, y: Tensor, opts: TrialOptimizers, scaler,
                   cfg: dict[str, Any], *, which: str, epoch: int, autocast: dict[str, Any]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """One forward/backward/step on (x, y) of the optimizers ``which`` names; returns (logits, task loss, reg)."""
    with torch.autocast(**autocast):
        out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y, label_smoothing=cfg["label_smoothing"])
    reg = sum((layer.regularization() for layer in layers), torch.zeros((), device=x.device))
    total = loss + reg
    if not torch.isfinite(total):
        raise NonFiniteError(
            f"the loss became {float(total.detach())} at epoch {epoch} (regularization {float(reg.detach())})"
        )
    opts.zero_grad()
    scaler.scale(total).backward()
    if cfg["grad_clip"]:
        for opt in opts.all:
            scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    opts.step(scaler, which)
    for layer in layers:
        layer.constrain_()
    return out, loss, reg


def train_one_epoch(model: nn.Module, loader, opts: TrialOptimizers, scaler, cfg: dict[str, Any], *, epoch: int,
                    device: torch.device, autocast: dict[str, Any], size_batches=None) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    With ``size_batches`` (bilevel, DARTS first-order) each weight step is preceded by a step of the size
    parameters on the next held-out batch; otherwise one step updates both.

    Returns:
        loss: mean task loss (cross-entropy) per example; reg: mean regularization term per step (the optimised
        loss is loss + reg); acc: training accuracy; count: examples seen.

    Raises:
        NonFiniteError: the loss became NaN or inf.
    """
    model.train()
    loss_sum, reg_sum, correct, count, steps = 0.0, 0.0, 0, 0, 0
    layers = list(_kernel_layers(model))
    common = {"epoch": epoch, "autocast": autocast}
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if size_batches is not None:
            xs, ys = next(size_batches)
            _training_step(model, layers, xs.to(device), ys.to(device), opts, scaler, cfg, which="size", **common)
        out, loss, reg = _training_step(model, layers, x, y, opts, scaler, cfg,
                                        which="weights" if size_batches is not None else "all", **common)
        opts.schedule_step()
        loss_sum += float(loss.detach()) * len(y)
        reg_sum += float(reg.detach())
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
        steps += 1
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "reg": reg_sum / max(steps, 1),
            "count": count}


def format_exception(err: BaseException) -> str:
    """One-line error text plus the last frame, for a leaderboard row."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(err).__name__}: {err}{where}"


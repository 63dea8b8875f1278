"""``run_trial(config, report=None)``: the one training loop every search trial runs. No Ray here: progress goes
out through the ``report`` callback, and everything the leaderboard records comes back as a
``nas_flex.record.TrialRecord``.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nas_flex import __version__
from nas_flex.errors import HyperparameterError, NonFiniteError
from nas_flex.layers.base import KernelLayer
from nas_flex.record import TASK_METRICS, TrialRecord, TrialStatus, utc_now
from nas_flex.sizes import learned_size_records
from nas_flex.train.bounds import mark_bounds, size_parameter_start, travel_budgets
from nas_flex.train.config import resolve_config
from nas_flex.train.metering import FlopCount, FlopMeter, count_parameters, peak_memory, reset_peak_memory
from nas_flex.train.optim import TrialOptimizers, make_optimizers

__all__ = ["run_trial", "setup_trial", "train_one_epoch", "evaluate", "save_checkpoint", "load_checkpoint",
           "summarise", "score_test",
           "TrialSetup", "TrialProgress", "warmup_cosine", "resolve_device", "format_exception"]

Report = Callable[[dict[str, Any]], None]


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
    # set both ways: a worker process runs several trials, and one trial's choice must not carry into the next
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False


def _kernel_layers(model: nn.Module) -> Iterator[KernelLayer]:
    return (m for m in model.modules() if isinstance(m, KernelLayer))


def _non_finite_state(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or inf. The loss alone misses some divergences: at lr 1e6
    with SGD a BatchNorm's ``running_var`` overflows to inf while the training loss, computed with batch statistics,
    stays finite."""
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
    """(splits, training set, validation loader, DataLoader arguments) of the config's dataset and subsets."""
    from nas_flex.data import dataset_from_config

    splits = dataset_from_config(cfg)
    train, val = splits.train, splits.val
    if cfg["train_subset"]:
        g = torch.Generator().manual_seed(cfg["seed"])
        train = torch.utils.data.Subset(train, torch.randperm(len(train), generator=g)[: cfg["train_subset"]].tolist())
    if cfg["val_subset"]:
        val = torch.utils.data.Subset(val, list(range(min(cfg["val_subset"], len(val)))))
    pin = device.type == "cuda"
    common = {"batch_size": cfg["batch_size"], "num_workers": cfg["num_workers"], "pin_memory": pin}
    val_loader = _eval_loader(val, common)
    return splits, train, val_loader, common


def _eval_loader(dataset, loader_args: dict[str, Any]):
    """A DataLoader for evaluation with a generator of its own: starting an iteration draws a base seed, which would
    otherwise come from torch's global RNG and shift every later draw of it (CF-Conv's sampled positions), so how
    often a trial validates would change what it trains."""
    return torch.utils.data.DataLoader(dataset, shuffle=False, generator=torch.Generator().manual_seed(0),
                                       **loader_args)


def evaluate(model: nn.Module, loader, device: torch.device, autocast: dict[str, Any]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` over ``loader`` in eval mode; leaves the model in train mode."""
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
    """(bytes, kind) of the trial's peak memory since set-up (``nas_flex.train.metering.peak_memory``)."""
    return peak_memory(device)


# ------------------------------------------------------------------------------------------------------- setup
def _meter(model: nn.Module, sample: Tensor) -> FlopMeter:
    """The FLOP meter of one example in eval mode, FFTs counted. Learned sizes change the cost (a FlexConv crop
    grows, an N-Jet kernel follows sigma), so a trial reads it after every epoch and records the trained model's;
    the meter counts again only when a layer's kernel size changed (``FlopMeter``)."""
    return FlopMeter(model, sample)


@dataclass
class TrialSetup:
    """What setup builds for one trial: config, device, data, model and its optimisation, fixed for the run."""

    cfg: dict[str, Any]
    device: torch.device
    model: nn.Module
    params: int
    sample: Tensor  # one validation example, batch of 1: what FLOPs are counted on
    flop_meter: FlopMeter  # counts the model's FLOPs on ``sample`` when its kernel sizes changed
    train_set: Any
    size_set: Any  # bilevel: the held-out part the size parameters step on; else None
    val_loader: Any
    loader_args: dict[str, Any]
    opts: TrialOptimizers
    scaler: torch.amp.GradScaler
    autocast: dict[str, Any]
    size_start: dict[str, list[Tensor]] = field(default_factory=dict)  # size parameters at init (bounds.py)
    test_loader: Any = None  # the held-out test split (config test_fraction), scored once after the last epoch

    def meter(self) -> FlopCount:
        """The model's FLOPs now (``_meter``)."""
        return self.flop_meter()


@dataclass
class TrialProgress:
    """What a trial has produced so far; a checkpoint holds it and a resumed trial continues from it."""

    flops: FlopCount
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    train_seconds: float = 0.0
    examples: int = 0
    status: TrialStatus = TrialStatus.COMPLETED
    error: str | None = None


def _optimisation(cfg: dict[str, Any], model: nn.Module, train_set, device: torch.device):
    """(weights' training set, size parameters' set or None, optimizers, AMP scaler, autocast arguments)."""
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
    return train_set, size_set, opts, scaler, autocast


def setup_trial(cfg: Mapping[str, Any], *, device: str | None = None) -> tuple[TrialSetup, FlopCount]:
    """Seed, data, model and optimizers of a resolved config, and the model's FLOPs at initialisation.

    The order (seed, data, model, FLOPs, optimizers) fixes the random stream: a trial is a function of its config.
    ``device`` overrides the config's ``device`` (chosen at run time; the config is not changed).
    """
    device = resolve_device(device or cfg["device"])
    _seed_everything(cfg["seed"], cfg["deterministic"])
    splits, train_set, val_loader, loader_args = _loaders(cfg, device)

    from nas_flex.models import build as build_model

    model = build_model(cfg, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
                        input_size=tuple(splits.input_shape[1:]))
    params = count_parameters(model)
    model.to(device)
    sample = splits.val[0][0].unsqueeze(0).to(device)
    flop_meter = _meter(model, sample)
    flops = flop_meter()
    reset_peak_memory(device)
    train_set, size_set, opts, scaler, autocast = _optimisation(cfg, model, train_set, device)
    test_loader = None if splits.test is None else _eval_loader(splits.test, loader_args)
    trial = TrialSetup(cfg=cfg, device=device, model=model, params=params, sample=sample, flop_meter=flop_meter,
                       train_set=train_set, size_set=size_set, val_loader=val_loader, loader_args=loader_args,
                       opts=opts, scaler=scaler, autocast=autocast, size_start=size_parameter_start(model),
                       test_loader=test_loader)
    return trial, flops


# -------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, trial: TrialSetup, progress: TrialProgress, epoch: int) -> None:
    """The trial's state after ``epoch``, written atomically; tensors and plain values (``weights_only`` loads it)."""
    from nas_flex.storage.atomic import write_atomic

    state = {"model": trial.model.state_dict(), "optimizers": trial.opts.state_dict(),
             "scaler": trial.scaler.state_dict(), "epoch": epoch, "history": progress.history,
             "train_seconds": progress.train_seconds, "examples": progress.examples, "rng": torch.get_rng_state()}
    write_atomic(path, lambda tmp: torch.save(state, tmp), sync=False)


def load_checkpoint(path: Path, trial: TrialSetup) -> TrialProgress:
    """Restore model, optimizers, scaler and torch's RNG from ``save_checkpoint``'s file; the progress it holds.

    The FLOPs are measured on the restored model: a trial resumed after its last epoch reports the trained model's
    cost, not the initial one's.
    """
    state = torch.load(path, map_location=trial.device, weights_only=True)
    trial.model.load_state_dict(state["model"])
    trial.opts.load_state_dict(state["optimizers"])
    trial.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"].cpu())  # dropout and sampling continue as if never interrupted
    return TrialProgress(flops=trial.meter(), history=list(state["history"]), start_epoch=int(state["epoch"]) + 1,
                     train_seconds=float(state["train_seconds"]), examples=int(state["examples"]))


def _initial_progress(trial: TrialSetup, flops: FlopCount) -> TrialProgress:
    """A fresh trial's progress: the epoch-0 record (validation metrics and sizes, raw size parameters included, at
    initialisation), so "moved from X to Y" can be read off. The initial model is validated only when every epoch
    is (``val_every`` 1)."""
    val_loss, val_acc = (evaluate(trial.model, trial.val_loader, trial.device, trial.autocast)
                         if trial.cfg.get("val_every", 1) == 1 else (None, None))
    epoch0 = {"epoch": 0, "train_loss": None, "train_acc": None, "train_reg": None, "val_loss": val_loss,
              "val_acc": val_acc, "lr": trial.opts.weights.param_groups[0]["lr"], "seconds": 0.0,
              "flops": flops.per_sample, "learned_sizes": learned_size_records(trial.model)}
    return TrialProgress(flops=flops, history=[epoch0])


# ----------------------------------------------------------------------------------------------------- epochs
def _epoch_loaders(trial: TrialSetup, epoch: int):
    """(training batches, held-out size batches or None) of ``epoch``; the order depends on (seed, epoch) only."""
    g = torch.Generator().manual_seed(trial.cfg["seed"] * 1000003 + epoch)
    loader = torch.utils.data.DataLoader(trial.train_set, shuffle=True, generator=g, drop_last=False,
                                         **trial.loader_args)
    size_batches = None if trial.size_set is None else _cycle(trial.size_set, trial.cfg, trial.loader_args, epoch)
    return loader, size_batches


def _guarded_epoch(trial: TrialSetup, epoch: int, loader, size_batches
                   ) -> tuple[dict[str, float] | None, TrialStatus, str | None]:
    """``train_one_epoch`` with divergence and out-of-memory caught: (stats or None, status, error)."""
    try:
        stats = train_one_epoch(trial.model, loader, trial.opts, trial.scaler, trial.cfg, epoch=epoch,
                                device=trial.device, autocast=trial.autocast, size_batches=size_batches)
    except NonFiniteError as err:
        return None, TrialStatus.DIVERGED, str(err)
    except torch.cuda.OutOfMemoryError as err:
        return None, TrialStatus.OOM, str(err).splitlines()[0]
    if bad := _non_finite_state(trial.model):
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        return None, TrialStatus.DIVERGED, f"non-finite values in {shown} after epoch {epoch + 1} (the loss was finite)"
    return stats, TrialStatus.COMPLETED, None


def _epoch_record(trial: TrialSetup, epoch: int, stats: dict[str, float], seconds: float
                  ) -> tuple[dict[str, Any], FlopCount]:
    """(the history record after ``epoch`` (0-based) trained: its metrics, validation, FLOPs and learned sizes;
    the FLOPs). Validation runs after every ``val_every``-th epoch and after the last; else val_* are None."""
    done, every = epoch + 1, trial.cfg.get("val_every", 1)
    val_loss, val_acc = (evaluate(trial.model, trial.val_loader, trial.device, trial.autocast)
                         if done % every == 0 or done == trial.cfg["epochs"] else (None, None))
    flops = trial.meter()
    return {
        "epoch": epoch + 1,
        "train_loss": stats["loss"],
        "train_acc": stats["acc"],
        "train_reg": stats["reg"],
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": trial.opts.weights.param_groups[0]["lr"],
        "seconds": seconds,
        "flops": flops.per_sample,
        "learned_sizes": learned_size_records(trial.model),
    }, flops


def _train_epochs(trial: TrialSetup, progress: TrialProgress, report: Report | None, ckpt_path: Path | None) -> None:
    """Train from ``progress.start_epoch`` to the configured epochs, or until the trial diverges or runs out of
    memory; updates ``progress``, saves a checkpoint and reports after every epoch."""
    for epoch in range(progress.start_epoch, trial.cfg["epochs"]):
        loader, size_batches = _epoch_loaders(trial, epoch)
        t0 = time.perf_counter()
        stats, status, error = _guarded_epoch(trial, epoch, loader, size_batches)
        if trial.device.type == "cuda":
            torch.cuda.synchronize(trial.device)
        seconds = time.perf_counter() - t0
        progress.train_seconds += seconds
        if stats is None:
            progress.status, progress.error = status, error
            return
        progress.examples += stats["count"]
        record, progress.flops = _epoch_record(trial, epoch, stats, seconds)
        progress.history.append(record)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, trial, progress, epoch)
        if report is not None and record["val_acc"] is not None:  # the searcher and ASHA see validated epochs
            report({**record, "params": trial.params})


# ---------------------------------------------------------------------------------------------------- summary
def score_test(trial: TrialSetup, progress: TrialProgress) -> dict[str, float]:
    """``{"test_loss", "test_acc"}`` of the trained model on the held-out test split, or {} without one or when the
    trial did not train all its epochs. Called once, after the last epoch; never reported per epoch."""
    trained = sum(1 for h in progress.history if h["epoch"] >= 1)
    if trial.test_loader is None or progress.status is not TrialStatus.COMPLETED or trained < trial.cfg["epochs"]:
        return {}
    test_loss, test_acc = evaluate(trial.model, trial.test_loader, trial.device, trial.autocast)
    return {"test_loss": test_loss, "test_acc": test_acc}


def summarise(trial: TrialSetup, progress: TrialProgress, *, started: str) -> TrialRecord:
    """The ``TrialRecord`` of a trial that stopped training: final and best metrics, compute, sizes, versions."""
    trained = [h for h in progress.history if h["epoch"] >= 1]  # epoch 0 is the state at initialisation
    last = trained[-1] if trained else {}
    validated = [h for h in trained if h["val_acc"] is not None]  # every epoch unless val_every > 1
    best = {
        "val_acc": max((h["val_acc"] for h in validated), default=float("nan")),
        "val_loss": min((h["val_loss"] for h in validated), default=float("nan")),
        "epoch": max(validated, key=lambda h: h["val_acc"])["epoch"] if validated else 0,
    }
    history, flops, seconds = progress.history, progress.flops, progress.train_seconds
    peak, peak_kind = _peak_memory(trial.device)
    return TrialRecord(
        status=progress.status,
        error=progress.error,
        config=trial.cfg,
        started=started,
        finished=utc_now(),
        epochs_completed=len(trained),
        metrics={k: float("nan") if last.get(k) is None else last[k] for k in TASK_METRICS},
        best=best,
        history=history,
        params=trial.params,
        flops=flops.per_sample,  # of the trained model (the last epoch's learned sizes)
        flops_fft=flops.fft / max(flops.batch_size, 1),
        train_seconds=seconds,
        examples_per_second=progress.examples / seconds if seconds > 0 else float("nan"),
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
        device=_device_name(trial.device),
        learned_sizes=mark_bounds(learned_size_records(trial.model), trial.model, trial.size_start,
                                  travel_budgets(trial.opts.all, trial.opts.schedulers)),
        initial_sizes=history[0]["learned_sizes"] if history and history[0]["epoch"] == 0 else None,
        size_recipes=trial.opts.recipes,
        nas_flex_version=__version__,
        torch_version=torch.__version__,
    )


# ------------------------------------------------------------------------------------------------------- trial
def run_trial(config: Mapping[str, Any], report: Report | None = None, *, checkpoint: str | os.PathLike | None = None,
              checkpoint_dir: str | os.PathLike | None = None, device: str | None = None) -> TrialRecord:
    """Build the model and data a trial config describes, train it, and return what the leaderboard records.

    The steps, as in timm's and torchvision's reference scripts: ``setup_trial`` (seed, data, model, optimizers),
    resume from ``load_checkpoint`` or evaluate the initial model, ``train_one_epoch`` + ``evaluate`` per epoch
    (``save_checkpoint`` after each), ``summarise``.

    Args:
        config: a trial config (``nas_flex.train.config.KEY_DOCS`` lists the keys and defaults): a plain dict is
            resolved here, a resolved ``TrialConfig`` is used as it is.
        report: called after every epoch with that epoch's metrics (epoch, train_loss, train_acc, train_reg,
            val_loss, val_acc, lr, seconds, learned_sizes) and the trial's params and flops; the search runner passes
            Ray Tune's report here. ``train_loss`` is the task loss; ``train_reg`` the layers' regularization term
            (mean per step) that the optimiser adds to it.
        checkpoint: if given, the file the trial saves its state to after every epoch (atomically; ``torch.save``
            of tensors and plain values, loadable with ``weights_only=True``) and resumes from when called again.
        checkpoint_dir: a folder instead of ``checkpoint``: the file is its ``trial_state.pt``.
        device: where to train, chosen by the caller at run time (the search's worker: the GPU Ray gave it);
            default: the config's ``device``. The config, and so the stored row's ``config``, is left as asked.

    Returns:
        A ``nas_flex.record.TrialRecord``. ``status`` is completed, diverged (a NaN/inf loss or size
        parameter, or any NaN/inf parameter or buffer after an epoch: the metrics so far are kept) or oom.
        Other errors propagate (the runner records them).
        ``history`` starts with an epoch-0 record (validation metrics and learned sizes at initialisation, not
        reported to ``report``); ``initial_sizes`` repeats its sizes next to the final ``learned_sizes``, and
        ``size_recipes`` says how each layer kind's size parameters were trained (``nas_flex.train.optim``).
        With the config's ``test_fraction``, a trial that trained all its epochs (also one resumed after them) is
        scored once on the held-out test split: ``metrics["test_loss"]`` and ``metrics["test_acc"]``, which
        ``report`` never receives.

    Example:
        >>> result = run_trial({"dataset": "digits", "epochs": 1})  # doctest: +SKIP
        >>> result.status, result.metrics["val_acc"]  # doctest: +SKIP
    """
    if checkpoint is not None and checkpoint_dir is not None:
        raise HyperparameterError("pass `checkpoint` (a file) or `checkpoint_dir` (a folder), not both")
    if checkpoint_dir is not None:
        from nas_flex.storage.layout import TRIAL_STATE_FILE

        checkpoint = Path(checkpoint_dir) / TRIAL_STATE_FILE
    cfg = resolve_config(config)
    started = utc_now()
    trial, flops = setup_trial(cfg, device=device)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        progress = load_checkpoint(ckpt_path, trial)
    else:
        progress = _initial_progress(trial, flops)
    _train_epochs(trial, progress, report, ckpt_path)
    record = summarise(trial, progress, started=started)
    test = score_test(trial, progress)  # after the epochs were reported: no searcher or scheduler sees it
    return record.replace(metrics={**record.metrics, **test}) if test else record


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


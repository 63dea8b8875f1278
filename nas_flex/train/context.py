"""A user's own training function as a search trial: ``TrialContext`` (what the function gets) and ``run_trainable``
(run it and return the same ``TrialRecord`` as the built-in loop). No Ray here.

The contract: ``trainable(config, ctx) -> None``. ``config`` is the resolved trial config; the function builds its
model (``nas_flex.models.convert`` puts learned-size layers into any torchvision-style model), trains it for
``config["epochs"]`` epochs and calls ``ctx.report(model, val_acc=...)`` once per epoch. nas_flex reads the learned
sizes, FLOPs (FFTs counted) and parameter count from the model itself, times the epochs and writes the row. With a
``test_fraction`` in the config, ``ctx.data().test`` is the held-out test split, and ``ctx.report_test(test_acc=...)``
after the last epoch records its score in the row without reporting it to the searcher or scheduler.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nas_flex.errors import NonFiniteError, SearchSpaceError, TrainableError
from nas_flex.layers.base import KernelLayer
from nas_flex.record import TASK_METRICS, TEST_METRICS, TrialRecord, TrialStatus, utc_now
from nas_flex.sizes import learned_size_records
from nas_flex.train.config import resolve_config
from nas_flex.train.metering import FlopCount, count_parameters, reset_peak_memory
from nas_flex.train.optim import param_groups
from nas_flex.train.trial import (
    _device_name,
    _meter,
    _peak_memory,
    _seed_everything,
    format_exception,
    resolve_device,
)

__all__ = ["TrialContext", "TrainableError", "run_trainable", "check_trainable", "trainable_name", "REPORT_METRICS"]

Trainable = Callable[[dict[str, Any], "TrialContext"], Any]

#: the metrics ``TrialContext.report`` takes (the history table's per-epoch columns)
REPORT_METRICS = (*TASK_METRICS, "train_reg", "lr")


def trainable_name(fn: Any) -> str:
    """The name a row's error text gives the user's function: its qualified name and module."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and not module.startswith("nas_flex_space_") else name


def check_trainable(fn: Any) -> None:
    """``fn`` can be called as ``fn(config, ctx)``; else a one-line ``SearchSpaceError`` (raised before Ray starts)."""
    if not callable(fn):
        raise SearchSpaceError(f"`trainable` must be a function trainable(config, ctx), but got "
                               f"{type(fn).__name__} {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: its call will tell
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise SearchSpaceError(f"`trainable` must take two arguments (config, ctx), but "
                               f"{trainable_name(fn)}{signature} does not") from None


def _kernel_layers(model: nn.Module) -> Iterator[KernelLayer]:
    return (m for m in model.modules() if isinstance(m, KernelLayer))


def _metric(name: str, value: Any) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TrainableError(f"ctx.report metric {name}={value!r} must be a number")
    return float(value)


class TrialContext:
    """What a user's training function gets from nas_flex: config, device, seed, size-recipe optimizer groups, the
    per-epoch report and checkpoints.

    Attributes:
        config: the resolved trial config (every key with its default filled in).
        device: CUDA when the trial got a GPU (``config["device"]``), else the CPU. Mixed precision is the function's.
        seed: ``config["seed"]``; Python, NumPy and torch were seeded with it before the function was called.
        checkpoint_path: where ``save`` writes and ``load`` reads (the trial's scratch folder in the storage), or
            None when the trial keeps no checkpoint.

    Example:
        >>> def trainable(config, ctx):  # doctest: +SKIP
        ...     model = my_model().to(ctx.device)
        ...     opt = torch.optim.Adam(ctx.param_groups(model, lr=config["lr"]))
        ...     for epoch in range(ctx.load(model, optimizer=opt), config["epochs"]):
        ...         ...  # loss = task loss + ctx.regularization(model); step; ctx.constrain(model)
        ...         ctx.report(model, example=x, train_loss=..., val_loss=..., val_acc=...)
        ...         ctx.save(model, optimizer=opt)
    """

    def __init__(self, config: dict[str, Any], *, device: torch.device | None = None,
                 checkpoint_path: str | os.PathLike | None = None) -> None:
        self.config = config
        self.device = device if device is not None else resolve_device(config["device"])
        self.seed = int(config["seed"])
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.initial_sizes: list[dict[str, Any]] | None = None
        self.recipes: list[dict[str, Any]] = []
        self.model: nn.Module | None = None  # the model last reported
        self.flops: FlopCount | None = None
        self.on_report: Callable[[dict[str, Any]], None] | None = None
        self.test_metrics: dict[str, float] = {}  # ``report_test``'s: the row's only, never ``on_report``'s
        self._example: Tensor | None = None
        self._splits: Any = None
        self._clock = time.perf_counter()

    @property
    def epoch(self) -> int:
        """Epochs reported so far: the 0-based index of the next epoch to train."""
        return len(self.history)

    # ---------------------------------------------------------------------------------------------- inputs
    def data(self) -> Any:
        """The config's dataset (``nas_flex.data.dataset_from_config``: ``dataset``, ``data_root``, ``image_size``,
        ``test_fraction``, ``data_options``): a ``DatasetSplits`` with ``train``, ``val``, ``test`` (None without
        ``test_fraction``), ``input_shape`` and ``num_classes``. Built once per trial; its first validation example is
        what FLOPs are counted on unless ``report`` gets one. Score ``test`` once, after training, with
        ``report_test``; select on ``val``."""
        if self._splits is None:
            from nas_flex.data import dataset_from_config

            self._splits = dataset_from_config(self.config)
        return self._splits

    def param_groups(self, model: nn.Module, lr: float | None = None, *,
                     weight_decay: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups for ``model``: its weights at ``lr`` (default ``config["lr"]``) and each learned-size layer
        kind's size parameters by that layer's own recipe (``nas_flex.train.optim.param_groups``); the config's
        ``size_lr_factor`` overrides the recipes. Pass them to any ``torch.optim`` optimizer."""
        self._first_sight(model)
        groups, self.recipes = param_groups(
            model, self.config["lr"] if lr is None else lr,
            weight_decay=self.config["weight_decay"] if weight_decay is None else weight_decay,
            size_lr_factor=self.config["size_lr_factor"])
        return groups

    def regularization(self, model: nn.Module) -> Tensor:
        """The learned-size layers' regularization terms, summed (add it to the loss, as the built-in loop does)."""
        return sum((layer.regularization() for layer in _kernel_layers(model)), torch.zeros((), device=self.device))

    def constrain(self, model: nn.Module) -> None:
        """Project every learned-size layer's size parameters back into their valid range; call after each step."""
        with torch.no_grad():
            for layer in _kernel_layers(model):
                layer.constrain_()

    # ---------------------------------------------------------------------------------------------- report
    def report(self, model: nn.Module, *, example: Tensor | None = None, **metrics: Any) -> None:
        """Record one trained epoch: the function's ``metrics`` (any of ``REPORT_METRICS``: train_loss, train_acc,
        val_loss, val_acc, train_reg, lr), and from ``model`` itself its learned sizes and FLOPs per example.

        Args:
            model: the model being trained.
            example: an input batch (its first example is kept); needed once unless ``data()`` was used.
            **metrics: the epoch's metrics; ``val_acc`` (and ``val_loss``) rank the trial.
        """
        seconds = time.perf_counter() - self._clock
        unknown = sorted(set(metrics) - set(REPORT_METRICS))
        if unknown or not metrics:
            raise TrainableError(f"ctx.report takes metrics among {list(REPORT_METRICS)}, but got "
                                 f"{sorted(metrics) if metrics else 'none'}")
        values = {k: _metric(k, v) for k, v in metrics.items()}
        self.flops = _meter(model, self._example_of(example))()  # a user's model may be any module: counted each time
        self.model = model
        self.train_seconds += seconds
        record = {"epoch": self.epoch + 1, **{k: values.get(k) for k in REPORT_METRICS}, "seconds": seconds,
                  "flops": self.flops.per_sample, "learned_sizes": learned_size_records(model)}
        self.history.append(record)
        if self.on_report is not None:
            self.on_report({**record, "params": count_parameters(model)})
        self._clock = time.perf_counter()

    def report_test(self, **metrics: Any) -> None:
        """Record the trained model's score on the held-out test split (``data().test``): ``test_acc`` and / or
        ``test_loss``. Call it once, after the last epoch. It goes into the row (``metrics_test_acc``,
        ``metrics_test_loss``) only: the per-epoch stream the searcher and scheduler read never carries it.

        Raises:
            TrainableError: another metric name, no metric, or a value that is not a number.
        """
        unknown = sorted(set(metrics) - set(TEST_METRICS))
        if unknown or not metrics:
            raise TrainableError(f"ctx.report_test takes metrics among {list(TEST_METRICS)}, but got "
                                 f"{sorted(metrics) if metrics else 'none'}")
        self.test_metrics.update({k: _metric(k, v) for k, v in metrics.items()})

    def _example_of(self, example: Tensor | None) -> Tensor:
        if example is not None:
            self._example = example.detach()[:1].to(self.device)
        elif self._example is None:
            if self._splits is None:
                raise TrainableError("ctx.report needs `example=` (an input batch) once, to count the model's "
                                     "FLOPs, unless the data came from ctx.data()")
            self._example = self._splits.val[0][0].unsqueeze(0).to(self.device)
        return self._example

    def _first_sight(self, model: nn.Module) -> None:
        """The sizes at initialisation: the model as first handed to the context, on a fresh start."""
        if self.initial_sizes is None and not self.history:
            self.initial_sizes = learned_size_records(model)

    # ----------------------------------------------------------------------------------------- checkpoints
    def save(self, model: nn.Module, **objects: Any) -> None:
        """Checkpoint the trial after its last reported epoch: ``model``'s and each object's ``state_dict()``
        (optimizer, scheduler, scaler, ...), the reported history and torch's RNG, written atomically with
        ``torch.save`` (tensors and plain values: it loads with ``weights_only=True``). No-op without a path."""
        if self.checkpoint_path is None:
            return
        t0 = time.perf_counter()
        state = {"model": model.state_dict(), "objects": {k: v.state_dict() for k, v in objects.items()},
                 "epoch": self.epoch, "history": self.history, "train_seconds": self.train_seconds,
                 "initial_sizes": self.initial_sizes, "rng": torch.get_rng_state(), "test": self.test_metrics}
        from nas_flex.storage.atomic import write_atomic

        write_atomic(self.checkpoint_path, lambda tmp: torch.save(state, tmp), sync=False)
        self._clock += time.perf_counter() - t0  # saving is not training time

    def load(self, model: nn.Module, **objects: Any) -> int:
        """Restore ``model`` and ``objects`` from the last ``save`` (a retried or resumed trial) and return the epoch
        to continue from; 0, with nothing changed, when there is no checkpoint."""
        self._first_sight(model)
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            self._clock = time.perf_counter()
            return 0
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        missing = sorted(set(objects) - set(state["objects"]))
        if missing:
            raise TrainableError(f"ctx.load got {missing}, which the checkpoint does not hold (it has "
                                 f"{sorted(state['objects'])}); pass save and load the same names")
        model.load_state_dict(state["model"])
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        torch.set_rng_state(state["rng"].cpu())
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.initial_sizes = state["initial_sizes"]
        self.test_metrics = dict(state.get("test", {}))  # a checkpoint from before test splits has none
        self._clock = time.perf_counter()
        return int(state["epoch"])

    # --------------------------------------------------------------------------------------------- the row
    def summarise(self, *, started: str, status: TrialStatus = TrialStatus.COMPLETED,
                  error: str | None = None) -> TrialRecord:
        """The ``TrialRecord`` of the reported epochs (the same fields as a built-in trial's)."""
        last = self.history[-1] if self.history else {}
        accs = [h["val_acc"] for h in self.history if h["val_acc"] is not None]
        losses = [h["val_loss"] for h in self.history if h["val_loss"] is not None]
        best_epoch = max((h for h in self.history if h["val_acc"] is not None), key=lambda h: h["val_acc"],
                         default={"epoch": 0})["epoch"]
        flops = self.flops
        peak, peak_kind = _peak_memory(self.device)
        return TrialRecord(
            status=status, error=error, config=self.config, started=started, finished=utc_now(),
            epochs_completed=len(self.history),
            metrics={**{k: math.nan if last.get(k) is None else last[k] for k in TASK_METRICS}, **self.test_metrics},
            best={"val_acc": max(accs, default=math.nan), "val_loss": min(losses, default=math.nan),
                  "epoch": best_epoch},
            history=self.history,
            params=count_parameters(self.model) if self.model is not None else 0,
            flops=flops.per_sample if flops is not None else math.nan,
            flops_fft=flops.fft / max(flops.batch_size, 1) if flops is not None else math.nan,
            train_seconds=self.train_seconds,
            examples_per_second=math.nan,  # how many examples the function's loop saw is its own business
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, device=_device_name(self.device),
            learned_sizes=last.get("learned_sizes", ()),  # the model as last reported (a diverged one has NaNs)
            initial_sizes=self.initial_sizes, size_recipes=self.recipes,
            torch_version=torch.__version__,
        )


def run_trainable(fn: Trainable, config: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None, *,
                  checkpoint: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None,
                  device: str | None = None) -> TrialRecord:
    """Run the user's ``fn(config, ctx)`` as one trial, the way ``run_trial`` runs the built-in loop.

    Seeds Python, NumPy and torch from ``config["seed"]``, builds the ``TrialContext`` (its checkpoint file
    ``checkpoint``), calls ``fn`` and summarises what it reported.

    Args:
        fn: the user's training function ``fn(config, ctx)``.
        config: a trial config (resolved here).
        report: called after every reported epoch with its record (as ``run_trial``'s ``report``).
        checkpoint: the trial's checkpoint file (``ctx.checkpoint_path``); None: no checkpoint.
        checkpoint_dir: older form: the folder holding it (as ``run_trial``'s).
        device: where to train (``ctx.device``), chosen by the caller at run time; default: the config's ``device``.

    Returns:
        A completed ``TrialRecord``; status "oom" when the accelerator ran out of memory, "diverged" when a layer
        raised ``NonFiniteError`` (the epochs reported so far are kept).

    Raises:
        TrainableError: ``fn`` raised (the message names ``fn`` and the exception) or reported no epoch.
    """
    from nas_flex.storage.layout import TRIAL_STATE_FILE

    if checkpoint is None and checkpoint_dir is not None:
        checkpoint = Path(checkpoint_dir) / TRIAL_STATE_FILE
    cfg = resolve_config(config)
    started = utc_now()
    device = resolve_device(device or cfg["device"])
    _seed_everything(cfg["seed"], cfg["deterministic"])
    ctx = TrialContext(cfg, device=device, checkpoint_path=None if checkpoint is None else Path(checkpoint))
    ctx.on_report = report
    reset_peak_memory(device)
    name = trainable_name(fn)
    try:
        fn(dict(cfg), ctx)
    except torch.cuda.OutOfMemoryError as err:
        return ctx.summarise(started=started, status=TrialStatus.OOM, error=str(err).splitlines()[0])
    except NonFiniteError as err:  # a learned-size layer's NaN / inf, as the built-in loop records it
        return ctx.summarise(started=started, status=TrialStatus.DIVERGED, error=str(err))
    except Exception as err:
        raise TrainableError(f"trainable {name} raised {format_exception(err)}") from err
    if not ctx.history:
        raise TrainableError(f"trainable {name} returned without reporting an epoch: call "
                             "ctx.report(model, val_acc=...) after each epoch")
    return ctx.summarise(started=started)

"""The trial record: one typed result per trial, shared by the trainer, the tuner, the leaderboard and export.

Modelled on Optuna's ``FrozenTrial`` + ``TrialState``: ``TrialStatus`` names every state a trial's row can be in and
``TrialRecord`` is the frozen result ``nas_flex.train.run_trial`` returns, the tuner writes and the leaderboard stores.
Every metric's column, direction, label and whether a search can optimise it live here once (``METRIC_TABLE``). The
module needs only the standard library, so the torch-free leaderboard can use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = [
    "TrialStatus", "TrialRecord", "RESULT_FIELDS", "TASK_METRICS", "Metric", "METRIC_TABLE", "METRIC_DIRECTIONS",
    "METRICS", "METRIC_COLUMNS", "HISTORY_METRIC_DIRECTIONS", "METRIC_LABELS", "config_hash", "utc_now", "to_jsonable",
    "architecture_key", "derive_seeds", "REPEAT_KEYS", "TEST_METRICS", "KEY_NEUTRAL", "keyed_values",
]


class TrialStatus(str, Enum):
    """The state of a trial. A leaderboard row holds every state but ``RUNNING`` (a progress report's state)."""

    COMPLETED = "completed"  # trained for all its epochs
    DIVERGED = "diverged"  # a loss, size parameter or weight became NaN / inf
    ERROR = "error"  # raised before or during training; ``error`` says what
    OOM = "oom"  # the accelerator ran out of memory; the metrics so far are kept
    DUPLICATE = "duplicate"  # the same resolved config as an earlier trial of the experiment: its metrics, not rerun
    STOPPED = "stopped"  # ended early by a scheduler (ASHA) or by the user
    RUNNING = "running"  # still training (reported to Ray Tune, never written as a row)

    def __str__(self) -> str:
        return self.value


#: the per-epoch task metrics of a trial (``TrialRecord.metrics`` keys)
TASK_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")

#: the held-out test split's metrics (``TrialRecord.metrics`` keys when the config has a ``test_fraction``): scored
#: once, after the last epoch, and never reported to the searcher or the scheduler
TEST_METRICS = ("test_loss", "test_acc")

@dataclass(frozen=True)
class Metric:
    """One metric: where it is stored, which way is better, how a figure names it, and whether a search can
    optimise it.

    Attributes:
        name: the metric's short name, the one ``search(objectives=...)`` takes when ``optimisable``.
        column: its column in the trial table (None: only in the per-epoch history).
        direction: "max" or "min": which way is better.
        label: a readable name for axis labels and titles.
        optimisable: a search may optimise it (an objective).
        history: its column in the per-epoch history table (None: not recorded per epoch).
    """

    name: str
    column: str | None
    direction: str
    label: str
    optimisable: bool = False
    history: str | None = None


#: every metric, once: the tables below and the leaderboard's recorded directions derive from it
METRIC_TABLE: tuple[Metric, ...] = (
    Metric("val_acc", "metrics_val_acc", "max", "validation accuracy", True, "val_acc"),
    Metric("val_loss", "metrics_val_loss", "min", "validation loss", True, "val_loss"),
    Metric("train_acc", "metrics_train_acc", "max", "training accuracy", True, "train_acc"),
    Metric("train_loss", "metrics_train_loss", "min", "training loss", True, "train_loss"),
    Metric("test_acc", "metrics_test_acc", "max", "test accuracy (held-out split)"),
    Metric("test_loss", "metrics_test_loss", "min", "test loss (held-out split)"),
    Metric("best_val_acc", "best_val_acc", "max", "best-epoch validation accuracy"),
    Metric("best_val_loss", "best_val_loss", "min", "best-epoch validation loss"),
    Metric("params", "params", "min", "parameters", True),
    Metric("flops", "flops", "min", "FLOPs per example (FFTs counted)", True, "flops"),
    Metric("flops_fft", "flops_fft", "min", "FFT FLOPs per example"),
    Metric("train_seconds", "train_seconds", "min", "training time (s)", True),
    Metric("examples_per_second", "examples_per_second", "max", "training examples per second"),
    Metric("peak_memory_bytes", "peak_memory_bytes", "min", "peak memory (bytes)"),
    Metric("train_reg", None, "min", "size regularisation loss", history="train_reg"),
    Metric("seconds", None, "min", "epoch time (s)", history="seconds"),
)

#: ranking direction of every metric column of the trial table
METRIC_DIRECTIONS: dict[str, str] = {m.column: m.direction for m in METRIC_TABLE if m.column}

#: metric a search may optimise -> its leaderboard column
METRIC_COLUMNS: dict[str, str] = {m.name: m.column for m in METRIC_TABLE if m.optimisable and m.column}

#: metric a search may optimise -> its natural direction ("max" or "min")
METRICS: dict[str, str] = {m.name: m.direction for m in METRIC_TABLE if m.optimisable}

#: ranking direction of the per-epoch metric columns of the history table
HISTORY_METRIC_DIRECTIONS: dict[str, str] = {m.history: m.direction for m in METRIC_TABLE if m.history}

#: a readable name of every metric column of the trial table
METRIC_LABELS: dict[str, str] = {m.column: m.label for m in METRIC_TABLE if m.column}


def _nan_metrics() -> dict[str, float]:
    return {k: math.nan for k in TASK_METRICS}


def _nan_best() -> dict[str, float | int]:
    return {"val_acc": math.nan, "val_loss": math.nan, "epoch": 0}


def _version() -> str:
    from nas_flex import __version__

    return __version__


@dataclass(frozen=True)
class TrialRecord:
    """What one trial produced: its state, config, metrics, learned sizes and compute.

    ``to_dict()`` gives the plain, JSON-safe mapping the leaderboard stores (``status`` as its string value);
    ``from_dict`` reads one back and names unknown keys. Fields a failed trial never reached keep their defaults
    (NaN metrics, zero counts).
    """

    status: TrialStatus
    config: Mapping[str, Any]
    error: str | None = None
    started: str = ""
    finished: str = ""
    epochs_completed: int = 0
    metrics: Mapping[str, float] = field(default_factory=_nan_metrics)
    best: Mapping[str, float | int] = field(default_factory=_nan_best)
    history: tuple[Mapping[str, Any], ...] = ()
    params: int = 0
    flops: float = math.nan
    flops_fft: float = math.nan
    train_seconds: float = 0.0
    examples_per_second: float = math.nan
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    device: str = ""
    learned_sizes: tuple[Mapping[str, Any], ...] = ()
    initial_sizes: tuple[Mapping[str, Any], ...] | None = None  # None: not measured (a resumed trial's epoch 0)
    size_recipes: Mapping[str, Any] = field(default_factory=dict)
    nas_flex_version: str = field(default_factory=_version)
    torch_version: str = ""
    search_params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))
        for name in ("history", "learned_sizes", "initial_sizes"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def failed(cls, config: Mapping[str, Any], error: str | None, *, started: str = "",
               status: TrialStatus = TrialStatus.ERROR, **fields: Any) -> TrialRecord:
        """The record of a trial that produced no trained model (finished now)."""
        return cls(status=status, config=config, error=error, started=started, finished=utc_now(), **fields)

    def replace(self, **changes: Any) -> TrialRecord:
        """A copy with ``changes`` applied (the record itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``status`` as its string, sequences as lists, mappings as dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, TrialStatus):
                value = value.value
            elif isinstance(value, tuple):
                value = [dict(v) if isinstance(v, Mapping) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """A record from ``to_dict()``'s mapping; unknown keys raise ``ValueError`` naming them."""
        unknown = sorted(set(data) - set(RESULT_FIELDS))
        if unknown:
            raise ValueError(f"unknown trial-record key(s) {unknown}; a TrialRecord has {list(RESULT_FIELDS)}")
        return cls(**data)


#: the fields of a ``TrialRecord`` (the keys of ``TrialRecord.to_dict()``)
RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialRecord))


def config_hash(canonical_json: str) -> str:
    """The key of a config: the first 16 hex digits of the sha256 of its canonical JSON text."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()[:16]


#: config keys left out of an ``architecture_key``: the seed, which varies between repeated runs of one
#: architecture, and the run-only keys of ``nas_flex.config`` (where and how a trial runs, not what it trains)
REPEAT_KEYS: tuple[str, ...] = ("seed", "device", "num_workers", "download", "val_every")


#: config keys added after the first leaderboards were written, with the value that means "as before": a config
#: holding that value is keyed as if the key were absent, so existing storages keep their config and architecture keys
KEY_NEUTRAL: dict[str, Any] = {"test_fraction": None, "val_every": 1}


def keyed_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the keys that hold their ``KEY_NEUTRAL`` value: what the config keys are computed from."""
    return {k: v for k, v in config.items() if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}


def architecture_key(config: Mapping[str, Any]) -> str:
    """The key of the architecture a config trains: ``config_hash`` of its canonical JSON without the seed and the
    run-only keys (``REPEAT_KEYS``), so the repeated runs of one architecture (``repeats``) share it and different
    architectures differ. ``nas_flex.config.TrialConfig.architecture_key`` is this function.

    Example:
        >>> architecture_key({"conv": "njet", "seed": 0}) == architecture_key({"conv": "njet", "seed": 7})
        True
    """
    rest = {k: v for k, v in keyed_values(config).items() if k not in REPEAT_KEYS}
    return config_hash(json.dumps(to_jsonable(rest), sort_keys=True, separators=(",", ":"), default=str))


def derive_seeds(seed: int, repeats: int) -> list[int]:
    """The training seeds of ``repeats`` runs of one architecture, derived from the experiment's ``seed``: the first
    is ``seed`` itself (so ``repeats=1`` trains what a plain search trains), repeat k >= 1 is the first 31 bits of
    sha256("nas_flex-repeat:<seed>:<k>") (skipping, in the rare case, a value already taken). Deterministic,
    distinct, in [0, 2**31), and the same for every architecture of the experiment, so runs pair up by seed.

    Example:
        >>> derive_seeds(0, 3)[0], len(set(derive_seeds(0, 3)))
        (0, 3)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an integer >= 1, but got {repeats!r}")
    seeds = [int(seed)]
    k = 1
    while len(seeds) < repeats:
        digest = hashlib.sha256(f"nas_flex-repeat:{int(seed)}:{k}".encode()).digest()
        candidate = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
        if candidate not in seeds:
            seeds.append(candidate)
        k += 1
    return seeds


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the format of ``started`` / ``finished``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy / torch scalars as Python numbers (arrays as lists), NaN / inf as None, tuples as lists,
    keys as str."""
    if hasattr(value, "tolist") and not isinstance(value, (list, dict, str, bytes)):
        value = value.tolist()  # numpy / torch: a scalar becomes a Python number, an array nested lists
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value

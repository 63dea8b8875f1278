"""The trial config, described once: one field table from which everything else is derived.

``FIELDS`` lists every key of a trial config with its default, accepted Python types, leaderboard (Arrow) column
type, meaning and range rule. From it come:

* ``resolve_config``: defaults filled in, unknown keys rejected by name (with the closest valid one), types and
  ranges checked; it returns a frozen ``TrialConfig`` and is a no-op on one;
* ``KEY_DOCS`` / ``DEFAULTS`` (re-exported by ``nas_flex.train.config``);
* the leaderboard's ``params_*`` columns (``nas_flex.leaderboard.schema.CONFIG_COLUMNS``, from ``arrow_types()``).

A ``TrialConfig`` is resolved once per trial (by the search driver or the first function that receives a plain
dict); the trainable, ``run_trial`` and ``models.build`` read it without checking it again. It carries its ``key``
(what dedupe and the leaderboard's ``config_key`` compare) and its ``architecture_key``: the key of the config
without ``seed`` and without the run-only fields (``RUN_ONLY``: where and how the trial runs, not what it trains).
The device a trial ran on is chosen at run time and recorded in the row's ``device`` column; the config keeps what
the user asked for (``"auto"`` stays ``"auto"``).

Standard library only (and the torch-free ``nas_flex.errors`` / ``nas_flex.record``), so the leaderboard, the
search driver and a user's script import it without torch.

Example:
    >>> cfg = resolve_config({"conv": "flexconv", "epochs": 2})
    >>> cfg["epochs"], cfg["batch_size"]
    (2, 64)
    >>> resolve_config(cfg) is cfg
    True
    >>> len(cfg.key), cfg.key == resolve_config({"epochs": 2, "conv": "flexconv", "seed": 0}).key
    (16, True)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nas_flex.errors import HyperparameterError, check_known
from nas_flex.record import architecture_key, config_hash, keyed_values

__all__ = ["ConfigField", "FIELDS", "FIELD_NAMES", "DEFAULTS", "KEY_DOCS", "RUN_ONLY", "TrialConfig",
           "resolve_config", "canonical_key", "arrow_types"]

_NUMBER = (int, float)


@dataclass(frozen=True)
class ConfigField:
    """One key of a trial config.

    Attributes:
        name: the key.
        default: its value when the config leaves it out (None: the backbone's / dataset's / layer's own default).
        types: the accepted Python types (bool is never an int here), or None: any JSON value, checked where it is
            used (the model builder, the dataset).
        arrow: the type of its ``params_<name>`` leaderboard column: "string", "int64", "float64", "bool", or
            "json" (stored as JSON text).
        doc: what it means.
        rule: a range rule as text (e.g. ">= 1"), or "" for none; ``check`` implements it.
        check: True when a value of the right type satisfies ``rule``.
        run_only: it says where or how the trial runs, not what it trains (left out of ``architecture_key``).
    """

    name: str
    default: Any
    types: tuple[type, ...] | None
    arrow: str
    doc: str
    rule: str = ""
    check: Callable[[Any], bool] | None = None
    run_only: bool = False


def _f(name: str, default: Any, types: tuple[type, ...] | None, arrow: str, doc: str, rule: str = "",
       check: Callable[[Any], bool] | None = None, run_only: bool = False) -> ConfigField:
    return ConfigField(name, default, types, arrow, doc, rule, check, run_only)


def _one_of(*choices: str) -> tuple[str, Callable[[Any], bool]]:
    return " or ".join(repr(c) for c in choices), lambda v: v in choices


_AT_LEAST_1 = (">= 1", lambda v: v >= 1)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)

#: every key of a trial config, in the order the docs list them (model, data, optimisation, run)
FIELDS: tuple[ConfigField, ...] = (
    # model
    _f("backbone", "simple", (str,), "string", "simple | resnet | flexnet | tcn (nas_flex.models.BACKBONES)"),
    _f("conv", "conv", (str,), "string", "registry layer name (nas_flex.layers.available())"),
    _f("conv_hparams", {}, (dict,), "json", "the layer's hyperparameters, papers' names"),
    _f("kernel_size", None, None, "int64", "int, or one per convolution; for layers that take one (conv, envelope)"),
    _f("pooling", None, None, "string",
       "max | avg | conv | none | safe (N-Jet safe-subsampling), or a list: one per pooling step"),
    _f("width", None, None, "int64", "channels (backbone-specific meaning)"),
    _f("depth", None, None, "int64", "layers or blocks (backbone-specific meaning)"),
    _f("dropout", None, None, "float64", "dropout probability"),
    _f("head", None, None, "string", "simple backbone only: gap | dense"),
    # data
    _f("dataset", "digits", (str,), "string", "nas_flex.data.available_datasets()"),
    _f("data_root", None, None, "string", "folder of a torchvision dataset"),
    _f("image_size", None, None, "int64", "resize images to this side (dataset default if None)"),
    _f("download", False, (bool,), "bool", "let torchvision download a missing dataset (never implicit)",
       run_only=True),
    _f("data_options", {}, (dict,), "json",
       "the dataset's own options, e.g. {'scales': [1, 2]} (nas_flex.data.describe_dataset)"),
    _f("train_subset", None, None, "int64", "use only this many training examples (quick searches)"),
    _f("val_subset", None, None, "int64", "use only this many validation examples"),
    _f("test_fraction", None, (*_NUMBER, type(None)), "float64",
       "hold out this fraction of the data as a test split, scored once after the last epoch (metrics_test_acc, "
       "metrics_test_loss) and never seen by a searcher or scheduler; None: no test split",
       "in (0, 1) or None", lambda v: v is None or 0 < v < 1),
    # optimisation
    _f("epochs", 10, (int,), "int64", "training epochs", *_AT_LEAST_1),
    _f("batch_size", 64, (int,), "int64", "examples per step", *_AT_LEAST_1),
    _f("optimizer", "adam", (str,), "string", "adam | sgd (momentum 0.9, Nesterov)", *_one_of("adam", "sgd")),
    _f("lr", 3e-3, _NUMBER, "float64", "peak learning rate", "> 0", lambda v: v > 0),
    _f("size_lr_factor", None, (*_NUMBER, type(None)), "float64",
       "override: every size parameter at lr x this in the weights' optimizer; None: each layer's own recipe "
       "(KernelLayer.size_recipe: N-Jet, envelope 1x, FlexConv 0.1x, DARTS Adam)",
       ">= 0 or None", lambda v: v is None or v >= 0),
    _f("size_update", "joint", (str,), "string",
       "joint: size parameters step on the training batch; bilevel: DARTS first-order, they step on a held-out "
       "part of the training split (bilevel_split) before each weight step", *_one_of("joint", "bilevel")),
    _f("bilevel_split", 0.5, _NUMBER, "float64",
       "bilevel: the fraction of the training split held out for the size steps (DARTS: 0.5)",
       "in (0, 1)", lambda v: 0 < v < 1),
    _f("weight_decay", 0.0, _NUMBER, "float64", "L2 on ordinary weights; never on size parameters", *_NON_NEGATIVE),
    _f("warmup_epochs", 1.0, _NUMBER, "float64", "linear warm-up before the cosine decay (clipped below epochs)"),
    _f("grad_clip", None, None, "float64", "clip the gradient norm to this"),
    _f("label_smoothing", 0.0, _NUMBER, "float64", "cross-entropy label smoothing"),
    # run
    _f("seed", 0, (int,), "int64", "seeds Python, NumPy and torch; the data split and order follow it"),
    _f("device", "auto", (str,), "string", "auto | cpu | cuda | cuda:N (auto: chosen when the trial runs; the "
       "row's device column says what ran)", run_only=True),
    _f("amp", True, (bool,), "bool",
       "mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); off on CPU"),
    _f("deterministic", False, (bool,), "bool", "cuDNN deterministic kernels (slower)"),
    _f("num_workers", 0, (int,), "int64", "DataLoader workers", run_only=True),
    _f("val_every", 1, (int,), "int64",
       "validate after every this many epochs and always after the last (1: every epoch, and the model at "
       "initialisation); larger values save the validation passes when only the final accuracy is read, but the "
       "per-epoch curves, ASHA and the 'best epoch' see only the validated epochs", *_AT_LEAST_1, run_only=True),
)

_BY_NAME: dict[str, ConfigField] = {f.name: f for f in FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(_BY_NAME)
#: key -> (default, what it means)
KEY_DOCS: dict[str, tuple[Any, str]] = {f.name: (f.default, f.doc) for f in FIELDS}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS}
#: fields left out of ``TrialConfig.architecture_key`` besides ``seed``: where and how a trial runs
RUN_ONLY: tuple[str, ...] = tuple(f.name for f in FIELDS if f.run_only)


def arrow_types() -> dict[str, str]:
    """Key -> the type name of its leaderboard ``params_<key>`` column ("string", "int64", "float64", "bool",
    "json")."""
    return {f.name: f.arrow for f in FIELDS}


def _canonical(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


class TrialConfig(Mapping):
    """A resolved trial config: read-only, JSON-serialisable through ``to_dict()``, with its keys.

    Build one with ``resolve_config``; reading ``cfg["conv"]`` works as on a dict (nested values come back as
    copies, so the config cannot be changed through them). Equal to a dict with the same content.
    """

    __slots__ = ("_values", "_key", "_architecture_key")

    def __init__(self, values: Mapping[str, Any], _token: object = None) -> None:
        if _token is not _RESOLVED:
            raise TypeError("build a TrialConfig with nas_flex.config.resolve_config(...)")
        self._values = copy.deepcopy(dict(values))
        self._key: str | None = None
        self._architecture_key: str | None = None

    def __getitem__(self, name: str) -> Any:
        value = self._values[name]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"TrialConfig({self._values!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray) as its values; unpickling does not re-check them
        return (_rebuild, (self._values,))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy (JSON-serialisable)."""
        return copy.deepcopy(self._values)

    @property
    def key(self) -> str:
        """16 hex digits of the sha256 of the canonical JSON (``nas_flex.record.config_hash``) without the keys at
        their ``nas_flex.record.KEY_NEUTRAL`` value: the leaderboard's ``config_key`` and what dedupe compares."""
        if self._key is None:
            self._key = config_hash(_canonical(keyed_values(self._values)))
        return self._key

    @property
    def architecture_key(self) -> str:
        """The key of the config without ``seed`` and the run-only fields (``RUN_ONLY``): equal for repeats of one
        architecture and recipe with other seeds, or run on another device."""
        if self._architecture_key is None:  # the leaderboard's column: one definition, in nas_flex.record
            self._architecture_key = architecture_key(self._values)
        return self._architecture_key


_RESOLVED = object()


def _rebuild(values: dict[str, Any]) -> TrialConfig:
    return TrialConfig(values, _RESOLVED)


def _check_field(field: ConfigField, value: Any) -> None:
    """Raise HyperparameterError, naming the key, if ``value`` is not of the field's types or breaks its rule."""
    types = field.types
    if types is None:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise HyperparameterError(
            f"config key {field.name!r} must be {'/'.join(t.__name__ for t in types)}, but got {value!r}"
        )
    if field.check is not None and not field.check(value):
        raise HyperparameterError(f"config key {field.name!r} must be {field.rule}, but got {value!r}")


def _check(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in, after every check: the one place a trial config is validated."""
    if not isinstance(config, Mapping):
        raise HyperparameterError(f"a trial config must be a dict, but got {type(config).__name__}")
    check_known(config, FIELD_NAMES, "trial config key(s)")
    out = {**{k: copy.deepcopy(v) for k, v in DEFAULTS.items()}, **config}
    for field in FIELDS:
        _check_field(field, out[field.name])
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise HyperparameterError(f"a trial config must be JSON-serialisable: {err}") from None
    return out


def resolve_config(config: Mapping[str, Any]) -> TrialConfig:
    """Resolve a trial config once: defaults filled in, unknown keys, wrong types and out-of-range values rejected.

    Args:
        config: a dict of trial config keys (``FIELDS``), or a ``TrialConfig`` (returned as it is, unchecked).

    Returns:
        The frozen ``TrialConfig``.

    Raises:
        HyperparameterError: naming the key (an unknown one with the closest valid key).
    """
    if isinstance(config, TrialConfig):
        return config
    return TrialConfig(_check(config), _RESOLVED)


def canonical_key(config: Mapping[str, Any]) -> str:
    """A canonical JSON text of the resolved config: equal for configs that train the same model the same way."""
    return _canonical(keyed_values(resolve_config(config)._values))

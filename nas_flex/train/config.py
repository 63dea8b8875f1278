"""The trial config: a plain, JSON-safe dict that is the single source of truth for one trial.

The same dict rebuilds the model (``nas_flex.models.build``), is stored in the leaderboard row, and is what export
starts from. ``resolve_config`` fills in the defaults below and rejects unknown keys by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nas_flex.errors import HyperparameterError, did_you_mean

__all__ = ["DEFAULTS", "KEY_DOCS", "resolve_config", "canonical_key"]

# key -> (default, what it means). None means "the backbone's / dataset's / layer's own default".
KEY_DOCS: dict[str, tuple[Any, str]] = {
    # model
    "backbone": ("simple", "simple | resnet | flexnet | tcn, or a registered one (nas_flex.models.available())"),
    "conv": ("conv", "registry layer name (nas_flex.layers.available())"),
    "conv_hparams": ({}, "the layer's hyperparameters, papers' names"),
    "kernel_size": (None, "int, or one per convolution; for layers that take one (conv, envelope)"),
    "pooling": (None, "max | avg | conv | none | safe (N-Jet safe-subsampling), or a list: one per pooling step"),
    "width": (None, "channels (backbone-specific meaning)"),
    "depth": (None, "layers or blocks (backbone-specific meaning)"),
    "dropout": (None, "dropout probability"),
    "head": (None, "simple backbone only: gap | dense"),
    # data
    "dataset": ("digits", "a name from nas_flex.data.available(), e.g. imagefolder or npz with data_root"),
    "data_root": (None, "folder of a torchvision or imagefolder dataset, or an npz file"),
    "image_size": (None, "resize images to this side (dataset default if None)"),
    "download": (False, "let torchvision download a missing dataset (never implicit)"),
    "data_options": ({}, "the dataset's own options, e.g. {'scales': [1, 2]} (nas_flex.data.describe_dataset)"),
    "train_subset": (None, "use only this many training examples (quick searches)"),
    "val_subset": (None, "use only this many validation examples"),
    # optimisation
    "epochs": (10, "training epochs"),
    "batch_size": (64, "examples per step"),
    "optimizer": ("adam", "adam | sgd (momentum 0.9, Nesterov)"),
    "lr": (3e-3, "peak learning rate"),
    "size_lr_factor": (None, "override: every size parameter at lr x this in the weights' optimizer; None: each "
                       "layer's own recipe (KernelLayer.size_recipe: N-Jet, envelope 1x, FlexConv 0.1x, DARTS Adam)"),
    "size_update": ("joint", "joint: size parameters step on the training batch; bilevel: DARTS first-order, they "
                    "step on a held-out part of the training split (bilevel_split) before each weight step"),
    "bilevel_split": (0.5, "bilevel: the fraction of the training split held out for the size steps (DARTS: 0.5)"),
    "weight_decay": (0.0, "L2 on ordinary weights; never on size parameters"),
    "warmup_epochs": (1.0, "linear warm-up before the cosine decay (clipped below epochs)"),
    "grad_clip": (None, "clip the gradient norm to this"),
    "label_smoothing": (0.0, "cross-entropy label smoothing"),
    # run
    "seed": (0, "seeds Python, NumPy and torch; the data split and order follow it"),
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
    "amp": (True, "mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); off on CPU"),
    "deterministic": (False, "cuDNN deterministic kernels (slower)"),
    "num_workers": (0, "DataLoader workers"),
}
DEFAULTS: dict[str, Any] = {k: v[0] for k, v in KEY_DOCS.items()}

_TYPES: dict[str, tuple[type, ...]] = {
    "backbone": (str,), "conv": (str,), "conv_hparams": (dict,), "data_options": (dict,), "dataset": (str,),
    "optimizer": (str,),
    "device": (str,), "epochs": (int,), "batch_size": (int,), "seed": (int,), "num_workers": (int,),
    "lr": (int, float), "size_lr_factor": (int, float, type(None)), "weight_decay": (int, float),
    "size_update": (str,), "bilevel_split": (int, float),
    "warmup_epochs": (int, float), "label_smoothing": (int, float), "amp": (bool,), "deterministic": (bool,),
    "download": (bool,),
}


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; unknown keys and wrongly typed values raise, naming the key."""
    if not isinstance(config, Mapping):
        raise HyperparameterError(f"a trial config must be a dict, but got {type(config).__name__}")
    unknown = [k for k in config if k not in KEY_DOCS]
    if unknown:
        hints = [f"{k!r}{did_you_mean(k, KEY_DOCS)}" for k in unknown]
        raise HyperparameterError(f"unknown trial config key(s): {', '.join(hints)}; valid keys: {', '.join(KEY_DOCS)}")
    out = {**{k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}, **config}
    for key, types in _TYPES.items():
        value = out[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise HyperparameterError(
                f"config key {key!r} must be {'/'.join(t.__name__ for t in types)}, but got {value!r}"
            )
    for key in ("epochs", "batch_size"):
        if out[key] < 1:
            raise HyperparameterError(f"config key {key!r} must be >= 1, but got {out[key]!r}")
    if out["lr"] <= 0 or (out["size_lr_factor"] or 0) < 0 or out["weight_decay"] < 0:
        raise HyperparameterError(
            f"need lr > 0, size_lr_factor >= 0, weight_decay >= 0, but got lr={out['lr']}, "
            f"size_lr_factor={out['size_lr_factor']}, weight_decay={out['weight_decay']}"
        )
    if out["size_update"] not in ("joint", "bilevel"):
        raise HyperparameterError(
            f"config key 'size_update' must be 'joint' or 'bilevel', but got {out['size_update']!r}"
        )
    if not 0 < out["bilevel_split"] < 1:
        raise HyperparameterError(
            f"config key 'bilevel_split' must be in (0, 1), but got {out['bilevel_split']!r}"
        )
    if out["optimizer"] not in ("adam", "sgd"):
        raise HyperparameterError(f"config key 'optimizer' must be 'adam' or 'sgd', but got {out['optimizer']!r}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise HyperparameterError(f"a trial config must be JSON-serialisable: {err}") from None
    return out


def canonical_key(config: Mapping[str, Any]) -> str:
    """A canonical JSON text of the resolved config: equal for configs that train the same model the same way."""
    return json.dumps(resolve_config(config), sort_keys=True, separators=(",", ":"))

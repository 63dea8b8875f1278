"""Architectures as data: odd-rounded learned sizes, ``discretise`` (a learned-size result -> a plain-CNN trial
config) and the loader that rebuilds a trainable model from an exported architecture JSON (+ weights).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_flex.export.deploy import ExportError

__all__ = [
    "ARCHITECTURE_FILE",
    "WEIGHTS_FILE",
    "STATE_DICT_FILE",
    "round_odd",
    "row_config",
    "dataset_dims",
    "discretise",
    "load_architecture",
    "load_model",
    "load_state_dict_file",
]

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_DICT_FILE = "state_dict.pt"
FORMAT = "nas_flex.architecture"
FORMAT_VERSION = 1


def round_odd(size: float) -> int:
    """The nearest odd integer >= 1 to a learned size in pixels (halves round up: 4.0 -> 5, 5.9 -> 5, 6.0 -> 7)."""
    if not math.isfinite(float(size)):
        raise ExportError(f"a learned kernel size must be finite to round it, but got {size!r}")
    return max(1, 2 * math.floor((float(size) - 1) / 2 + 0.5) + 1)


def _largest_odd_at_most(n: int) -> int:
    return max(1, n if n % 2 else n - 1)


def row_config(config_or_row: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(trial config, learned-size records or None) from a leaderboard row (Series / mapping with a ``config`` JSON
    text) or a plain trial config."""
    if hasattr(config_or_row, "to_dict") and not isinstance(config_or_row, Mapping):
        config_or_row = config_or_row.to_dict()  # a pandas Series
    if not isinstance(config_or_row, Mapping):
        got = type(config_or_row).__name__
        raise ExportError(f"expected a trial config (dict) or a leaderboard row, but got {got}")
    if isinstance(config_or_row.get("config"), str):
        config = json.loads(config_or_row["config"])
        sizes = config_or_row.get("learned_sizes_json")
        records = json.loads(sizes) if isinstance(sizes, str) and sizes else None
        return config, records
    return dict(config_or_row), None


def dataset_dims(config: Mapping[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """(in_channels, num_classes, input_size) of a trial config's dataset (loads the dataset's splits)."""
    from nas_flex.data import dataset_from_config
    from nas_flex.train.config import resolve_config

    splits = dataset_from_config(resolve_config(config))
    return int(splits.input_shape[0]), int(splits.num_classes), tuple(int(s) for s in splits.input_shape[1:])


def _conv_grids(model: nn.Module, input_size: Sequence[int], in_channels: int) -> list[tuple[str, tuple[int, int]]]:
    """(name, (H, W) of its input) for every registry layer of ``model``, in module (= build) order."""
    from nas_flex.layers.base import KernelLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, KernelLayer)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, *input_size))
    return [(name, tuple(m.last_input_size)) for name, m in layers]


def discretise(config_or_row: Any, learned_sizes: Sequence[Mapping[str, Any]] | None = None, *,
               in_channels: int | None = None, num_classes: int | None = None,
               input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Turn a learned-size result into a discrete architecture: a new trial config of plain convolutions.

    Every learned-size layer's learned (height, width) is rounded to the nearest odd integer and becomes the
    ``kernel_size`` entry of that convolution (one entry per convolution in build order: an int when square,
    ``[h, w]`` otherwise), with ``conv="conv"`` and ``conv_hparams={}``. A size larger than the layer's input grid
    is capped at the largest odd side that fits (a plain convolution must fit its input). N-Jet's ``pooling="safe"``
    has no plain-convolution form and becomes ``"avg"`` (blur-and-subsample, like safe-subsampling, but always a
    factor 2). Everything else (backbone, width, data, optimisation, seed) is kept, so the result retrains as a
    plain CNN to compare with the learned-size trial.

    Args:
        config_or_row: a leaderboard row (its ``config`` and ``learned_sizes_json`` are read) or a trial config.
        learned_sizes: learned-size records ({"name", "height", "width", ...}, as ``nas_flex.learned_sizes`` or
            ``learned_sizes_json`` give them); default: the row's.
        in_channels, num_classes, input_size: the dataset's; default: read from the config's dataset.

    Returns:
        The new trial config (validated with ``resolve_config`` and by building the model and running it once).

    Raises:
        ExportError: no learned sizes, or they do not match the model's convolutions.
    """
    from nas_flex.models import build
    from nas_flex.train.config import resolve_config

    config, records = row_config(config_or_row)
    records = list(learned_sizes) if learned_sizes is not None else records
    if not records:
        raise ExportError(
            f"discretise needs learned sizes, but the trial (conv={config.get('conv', 'conv')!r}) has none; a "
            "conv='conv' trial is already discrete"
        )
    if config.get("backbone") == "tcn":
        raise ExportError("discretise supports the 2-D backbones (simple, resnet, flexnet), not 'tcn'")
    new = _plain_config(config)
    in_channels, num_classes, input_size = _dims_or_dataset(config, in_channels, num_classes, input_size)
    # the plain model's convolutions and their input grids, from a 1x1-kernel build of the same backbone
    probe = build({**new, "kernel_size": 1}, in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    grids = _conv_grids(probe, input_size, in_channels)
    new["kernel_size"] = _odd_sizes(_match_records(records, grids), grids)
    resolve_config(new)
    model = build(new, in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    _conv_grids(model, input_size, in_channels)  # runs once: every kernel fits its grid
    return new


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with plain convolutions (no kernel size yet) and N-Jet's safe pooling as average pooling."""
    from nas_flex.train.config import resolve_config

    new = {k: v for k, v in config.items() if k != "kernel_size"}
    new.update(conv="conv", conv_hparams={})
    pooling = new.get("pooling")
    if isinstance(pooling, list):
        new["pooling"] = ["avg" if m == "safe" else m for m in pooling]
    elif pooling == "safe":
        new["pooling"] = "avg"
    resolve_config(new)
    return new


def _dims_or_dataset(config: Mapping[str, Any], in_channels: int | None, num_classes: int | None,
                     input_size: Sequence[int] | None) -> tuple[int, int, tuple[int, ...]]:
    """The given dataset dims, the missing ones read from the config's dataset; the input size as (H, W)."""
    if in_channels is None or num_classes is None or input_size is None:
        c, k, s = dataset_dims(config)
        in_channels = c if in_channels is None else in_channels
        num_classes = k if num_classes is None else num_classes
        input_size = s if input_size is None else input_size
    return in_channels, num_classes, tuple(input_size)[-2:]


def _match_records(records: Sequence[Mapping[str, Any]],
                   grids: Sequence[tuple[str, tuple[int, int]]]) -> list[Mapping[str, Any]]:
    """One learned-size record per convolution of the plain model: by layer name, else by position."""
    by_name = {str(r.get("name")): r for r in records}
    if all(name in by_name for name, _ in grids):
        return [by_name[name] for name, _ in grids]
    if len(records) == len(grids):
        return list(records)
    raise ExportError(
        f"the learned sizes name layers {sorted(by_name)}, but the plain model's convolutions are "
        f"{[n for n, _ in grids]}; pass one learned-size record per convolution"
    )


def _odd_sizes(matched: Sequence[Mapping[str, Any]], grids: Sequence[tuple[str, tuple[int, int]]]) -> list[Any]:
    """Each learned (height, width) rounded to odd, capped at the largest odd side that fits the layer's grid; an
    int when square, ``[h, w]`` otherwise."""
    sizes: list[Any] = []
    for rec, (_, (gh, gw)) in zip(matched, grids):
        kh = min(round_odd(rec["height"]), _largest_odd_at_most(gh))
        kw = min(round_odd(rec["width"]), _largest_odd_at_most(gw))
        sizes.append(kh if kh == kw else [kh, kw])
    return sizes


# ------------------------------------------------------------------------------------------------------- loading
def load_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """The architecture JSON of an export directory (or the JSON file itself)."""
    p = Path(path)
    file = p / ARCHITECTURE_FILE if p.is_dir() else p
    if not file.is_file():
        raise ExportError(f"no architecture JSON at {str(file)!r}: pass an export directory or its {ARCHITECTURE_FILE}")
    arch = json.loads(file.read_text())
    if arch.get("format") != FORMAT:
        raise ExportError(f"{str(file)!r} is not a nas_flex architecture (format={arch.get('format')!r})")
    return arch


def _why_unloadable(err: BaseException) -> str:
    """One line saying why a weights file did not load (torch's weights_only refusal is a paragraph)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    refused = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
    if refused:  # a pickle that asks for code: weights_only refused it and nothing ran
        return f"it is not a plain state_dict, loading was refused (weights_only): {refused[0][:200]}"
    first = lines[0].split(". ")[0][:200] if lines else ""  # torch appends advice sentences
    return f"{type(err).__name__}: {first} (truncated or not a weights file?)"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state_dict from a ``.safetensors`` file (non-tensor entries from its metadata), a ``torch.save`` file
    (loaded with ``weights_only=True``; a run_trial ``trial_state.pt`` gives its ``model``), or an export folder.

    Raises:
        ExportError: one line naming the file, when it is missing, truncated, not a weights file, or a pickle that
            asks for code (refused by ``weights_only``; nothing in it runs).
    """
    p = Path(path)
    if p.is_dir():
        p = p / STATE_DICT_FILE if (p / STATE_DICT_FILE).is_file() else p / WEIGHTS_FILE
    if not p.is_file():
        raise ExportError(f"no weights at {str(p)!r}")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            state: Any = dict(load_file(str(p)))
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            extra = json.loads(meta.get("nas_flex_extra_state", "{}"))
            for key, value in extra.items():
                state[key] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
            return state
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notes on files that fail anyway
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch, zipfile, pickle and safetensors each raise their own kinds
        raise ExportError(f"cannot load the weights file {str(p)!r}: {_why_unloadable(err)}") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # a run_trial checkpoint
    if not isinstance(state, Mapping):
        raise ExportError(f"the weights file {str(p)!r} holds a {type(state).__name__}, not a state_dict")
    return dict(state)


def load_model(path: str | os.PathLike, *, weights: bool | str | os.PathLike = True) -> nn.Module:
    """Rebuild the trainable nas_flex model of an export (learned-size layers and all) from its architecture JSON.

    Args:
        path: the export directory (or its architecture JSON).
        weights: True loads the export's trained weights; False leaves the model freshly initialised; a path
            loads that state_dict file instead.

    Returns:
        The model in eval mode, run once on a zero input of the exported size (so each layer knows its grid).
    """
    from nas_flex.models import build

    arch = load_architecture(path)
    input_size = tuple(arch["input_size"])
    model = build(arch["config"], in_channels=arch["in_channels"], num_classes=arch["num_classes"],
                  input_size=input_size)
    if weights is not False:
        where = Path(path) if weights is True else Path(weights)
        if weights is True and not where.is_dir():
            where = where.parent
        model.load_state_dict(load_state_dict_file(where))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, arch["in_channels"], *input_size))
    return model

"""In-memory datasets and the small array helpers the builders share: seeded streams, stratified splits, resizing,
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "ByteImageDataset", "rng", "stratified_split", "resize", "channel_stats"]


class ArrayDataset(Dataset):
    """``(inputs[i], int(targets[i]))`` pairs held in memory, already normalised.

    Args:
        inputs: float32, (N, C, H, W) or (N, C, L).
        targets: int64, (N,).
        **meta: per-sample facts of how each input was made, one entry per sample, e.g. ``source_index`` (the
            digit it came from), ``scale`` or ``box`` (where a crop was taken). Read by tests and plots.

    The tensors may be shared with the in-memory cache: treat them as read-only.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, **meta: torch.Tensor) -> None:
        if len(inputs) != len(targets) or any(len(v) != len(targets) for v in meta.values()):
            raise ValueError("inputs, targets and every meta entry must have one entry per sample")
        self.inputs = inputs
        self.targets = targets
        self.meta = meta

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inputs[index], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader fetches a whole batch through this when present: one gather instead of N indexings
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.inputs[idx].unbind(0), self.targets[idx].tolist()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, input_shape={tuple(self.inputs.shape[1:])})"


class ByteImageDataset(Dataset):
    """uint8 images held in memory, made float, resized and normalised per item (a torchvision dataset's pixels).

    Args:
        images: uint8, (N, C, H, W) (may be a non-contiguous view).
        targets: int64, (N,).
        mean, std: per channel, for pixels scaled to [0, 1].
        size: resize to (size, size) (bilinear, antialiased); None keeps the stored size.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 size: int | None = None) -> None:
        self.images = images
        self.targets = targets
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.size = None if size is None or size == images.shape[-1] == images.shape[-2] else int(size)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if self.size is not None:
            x = resize(x, self.size)
        return (x - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._convert(self.images[index : index + 1])[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self._convert(self.images[idx]).unbind(0), self.targets[idx].tolist()))

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        h, w = (self.size, self.size) if self.size else (h, w)
        return f"{type(self).__name__}(n={len(self)}, input_shape={(c, h, w)})"


def rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent NumPy generator for each purpose (``stream``) under one user ``seed``."""
    return np.random.default_rng([seed, *stream])


def stratified_split(labels: np.ndarray, val_fraction: float, generator: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices (each sorted) with ``round(val_fraction * n_c)`` of each class's ``n_c`` in val."""
    train, val = [], []
    for c in np.unique(labels):
        idx = generator.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) float images, antialiased when shrinking."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, ...) inputs, as plain floats (JSON-safe, rounded to 6 digits)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (N, C, ...) -> (C, N * ...)
    return (tuple(round(float(v), 6) for v in flat.mean(1)), tuple(round(float(v), 6) for v in flat.std(1)))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of (N, C, ...) inputs."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def as_meta(values: Any) -> torch.Tensor:
    """A per-sample meta entry as a tensor."""
    return torch.as_tensor(np.asarray(values))

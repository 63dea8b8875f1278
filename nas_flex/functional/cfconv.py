"""Stateless ops of CF-Conv (Harper, Wood, Gerstoft, Larson, "Scaling Continuous Kernels with Sparse Fourier Domain
Learning"): kernel positions and their coordinates, uniform position sampling, the per-pair MLP, and the sparse
EMA step that merges sampled MLP values into a stored kernel state.

A *position* is one complex kernel entry (h, w, c_in, c_out) on the rfft2 layout of an H x W input; the state is a
real tensor (H, W // 2 + 1, C_in, C_out, 2) (last axis: real, imaginary), and position p is its flat index
``p = ((h * Wf + w) * C_in + c_in) * C_out + c_out`` with Wf = W // 2 + 1. Coordinates are normalised to [-1, 1]:
the frequencies those of the full fft2 plane at that index (``nas_flex.kernels.frequency.full_grid``: an even axis
has its Nyquist frequency at -1), the channel indices linearly (0 when a dimension has one channel). The kernel value
at a position is the Hermitian part (M(f) + conj(M(-f))) / 2 of the MLP, so ``position_coords(..., mirror=True)``
gives the coordinates of -f for the same channel pair.

The convolution itself is ``nas_flex.functional.niff.circular_conv2d_rfft``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nas_flex.errors import ShapeError
from nas_flex.functional.niff import ACTIVATIONS
from nas_flex.kernels.frequency import frequencies

__all__ = [
    "state_shape",
    "sample_positions",
    "position_coords",
    "pair_index",
    "channel_indices",
    "channel_inputs",
    "fourier_encode",
    "pairwise_mlp",
    "pairwise_mlp_grid",
    "ema_merge",
    "state_to_spectrum",
]


def state_shape(h: int, w: int, c_in: int, c_out: int) -> tuple[int, int, int, int, int]:
    """Shape (H, W // 2 + 1, C_in, C_out, 2) of the CF-Conv kernel state for an H x W input."""
    return h, w // 2 + 1, c_in, c_out, 2


def sample_positions(total: int, count: int, *, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """Uniformly sampled distinct positions out of ``total``, sorted (int64).

    ``count >= total`` selects every position. A ``count`` of at least a quarter of ``total`` is drawn without
    replacement (exactly ``count``); a smaller one is drawn with replacement and deduplicated, which costs
    O(count) instead of O(total) memory and returns slightly fewer than ``count`` positions when collisions occur
    (expected shortfall count^2 / (2 total)).
    """
    if count >= total:
        return torch.arange(total, device=device)
    if 4 * count >= total:
        idx = torch.randperm(total, device=device, generator=generator)[:count]
    else:
        idx = torch.randint(total, (count,), device=device, generator=generator)
    return torch.unique(idx)  # sorted, distinct


def _channel_coord(index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    if n == 1:
        return torch.zeros(index.shape, device=index.device, dtype=dtype)
    return index.to(dtype) * (2.0 / (n - 1)) - 1.0


def position_coords(positions: Tensor, h: int, w: int, c_in: int, c_out: int, *, dtype: torch.dtype,
                    channels: bool = True, mirror: bool = False) -> Tensor:
    """Normalised coordinates of flat state positions.

    Args:
        positions: (P,) int64 flat indices (see the module docstring).
        h, w: the input size; c_in, c_out: the channel counts.
        dtype: the coordinates' dtype.
        channels: True: (f_y, f_x, c_in, c_out) for the joint MLP; False: (f_y, f_x) for the per-pair MLPs.
        mirror: the coordinates of the mirrored frequency -f (indices (-row mod H, -col mod W)), same channels.

    Returns:
        (P, 4) or (P, 2).
    """
    wf = w // 2 + 1
    o = positions % c_out
    rest = positions // c_out
    i = rest % c_in
    rest = rest // c_in
    col = rest % wf
    row = rest // wf
    if mirror:
        row, col = (-row) % h, (-col) % w
    fy = frequencies(h, device=positions.device, dtype=dtype)[row]
    fx = frequencies(w, device=positions.device, dtype=dtype)[col]
    if not channels:
        return torch.stack([fy, fx], dim=-1)
    return torch.stack([fy, fx, _channel_coord(i, c_in, dtype), _channel_coord(o, c_out, dtype)], dim=-1)


def fourier_encode(coords: Tensor, octaves: int, columns: tuple[int, ...] | None = None) -> Tensor:
    """Sinusoidal (NeRF / Tancik et al. 2020) encoding of coordinates in [-1, 1]: each selected column x is kept and
    joined by sin(2^k pi x), cos(2^k pi x) for k = 0 .. octaves - 1.

    Args:
        coords: (P, D) coordinates.
        octaves: frequencies per column (0: the coordinates unchanged).
        columns: which columns to encode (None: all); the others pass through unchanged.

    Returns:
        (P, D + 2 * octaves * len(columns)): the coordinates, then per encoded column its sines and cosines.
    """
    if octaves == 0:
        return coords
    cols = list(range(coords.shape[-1])) if columns is None else list(columns)
    scales = math.pi * 2.0 ** torch.arange(octaves, device=coords.device, dtype=coords.dtype)  # (L,)
    arg = (coords[:, cols].unsqueeze(-1) * scales).flatten(1)  # (P, len(cols) * L)
    return torch.cat([coords, torch.sin(arg), torch.cos(arg)], dim=-1)


def channel_indices(positions: Tensor, c_in: int, c_out: int) -> tuple[Tensor, Tensor]:
    """(c_in index, c_out index) of each flat state position (the state's last two position axes)."""
    return (positions // c_out) % c_in, positions % c_out


def channel_inputs(positions: Tensor, c_in: int, c_out: int, *, dtype: torch.dtype,
                   table_in: Tensor | None = None, table_out: Tensor | None = None) -> Tensor:
    """Categorical channel inputs of flat state positions for CF-Conv's joint MLP.

    Without tables: one-hot vectors of c_in and c_out, concatenated: (P, C_in + C_out). With tables (learned
    embeddings, (C_in, D) and (C_out, D)): their rows, concatenated: (P, 2 D). Either way no channel is closer
    to its neighbour index than to any other, unlike the scalar index coordinate.
    """
    i, o = channel_indices(positions, c_in, c_out)
    if table_in is None or table_out is None:
        eye_in = torch.eye(c_in, device=positions.device, dtype=dtype)
        eye_out = torch.eye(c_out, device=positions.device, dtype=dtype)
        return torch.cat([eye_in[i], eye_out[o]], dim=-1)
    return torch.cat([table_in.to(dtype)[i], table_out.to(dtype)[o]], dim=-1)


def pair_index(positions: Tensor, c_in: int, c_out: int) -> Tensor:
    """The (c_in, c_out) pair of each flat position, as c_in * C_out + c_out (the per-pair MLP's index)."""
    return positions % (c_in * c_out)


def pairwise_mlp(coords: Tensor, pairs: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    """One small MLP per (c_in, c_out) pair, twice (real and imaginary part): the paper's Phi(H, W) option.

    Args:
        coords: (P, D) coordinates.
        pairs: (P,) which pair's MLP evaluates each position.
        weights: per layer (2, pairs, out, in).
        biases: per layer (2, pairs, out).
        activation: "relu" or "silu", between layers.

    Returns:
        (2, P, out_last).
    """
    act = ACTIVATIONS[activation]
    h = coords.unsqueeze(0).expand(2, *coords.shape)  # (P, D) -> (2, P, D)
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if layer:
            h = act(h)
        # gather each position's weights: (2, pairs, out, in) -> (2, P, out, in); (2, P, out, in) @ (2, P, in, 1)
        h = (w[:, pairs] @ h.unsqueeze(-1)).squeeze(-1) + b[:, pairs]
    return h


def pairwise_mlp_grid(coords: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str) -> Tensor:
    """``pairwise_mlp`` at every (coordinate row, pair) combination, by broadcasting instead of gathering each
    position's weights: what the per-pair MLPs give when every position of a block of frequencies is evaluated
    (a state that 2^15 samples cover whole, eval at a new size, ``sampled_positions=None``).

    Args:
        coords: (F, D) coordinates, one row per frequency.
        weights: per layer (2, pairs, out, in).
        biases: per layer (2, pairs, out).
        activation: "relu" or "silu", between layers.

    Returns:
        (2, F * pairs, out_last), frequency-major and pair-minor: the flat position order of the state, so row
        f * pairs + q equals ``pairwise_mlp(coords[f:f + 1], tensor([q]), ...)``.
    """
    act = ACTIVATIONS[activation]
    h = coords[None, :, None, :]  # (1, F, 1, D): one row per frequency, shared by every pair and part
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if layer:
            h = act(h)
        # (., F, ., 1, in) * (2, 1, pairs, out, in), summed over in -> (2, F, pairs, out)
        h = (h.unsqueeze(-2) * w.unsqueeze(1)).sum(-1) + b.unsqueeze(1)
    return h.flatten(1, 2)


def ema_merge(state: Tensor, positions: Tensor | None, values: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """The sparse EMA step: merge MLP values into the state at sampled positions.

    ``new = decay * state[positions] + (1 - decay) * values`` at the sampled positions (``decay`` is the share of
    the old value kept, TensorFlow's ``ExponentialMovingAverage`` convention); every other position keeps its
    state. Gradients flow from the returned kernel into ``values`` (scaled by ``1 - decay``), never into the state.

    Args:
        state: (H, Wf, C_in, C_out, 2) the stored state (not modified).
        positions: (P,) distinct flat positions, or None for every position in flat order (a step that samples
            the whole state: the same result without the gather and scatter).
        values: (P, 2) the MLP's (real, imaginary) values there.
        decay: the share of the old value kept, in [0, 1).

    Returns:
        (kernel, new): the full kernel (H, Wf, C_in, C_out, 2) to convolve with, and the (P, 2) new values to write
        into the state (detached).
    """
    flat = state.detach().reshape(-1, 2)  # (H*Wf*C_in*C_out, 2)
    count = flat.shape[0] if positions is None else positions.numel()
    if values.shape != (count, 2):
        raise ShapeError(f"ema_merge: `values` must have shape ({count}, 2), but got {tuple(values.shape)}")
    if positions is None:
        new = decay * flat + (1.0 - decay) * values.to(flat.dtype)
        return new.reshape(state.shape), new.detach()
    new = decay * flat[positions] + (1.0 - decay) * values.to(flat.dtype)
    kernel = flat.index_put((positions,), new)  # out of place: a full copy with the sampled rows replaced
    return kernel.reshape(state.shape), new.detach()


def state_to_spectrum(state: Tensor) -> Tensor:
    """(H, Wf, C_in, C_out, 2) real state -> complex (H, Wf, C_in, C_out) spectrum, a view where ``state`` is
    contiguous (the layout ``circular_conv2d_rfft(..., layout="hwio")`` takes without a copy)."""
    return torch.view_as_complex(state.contiguous())

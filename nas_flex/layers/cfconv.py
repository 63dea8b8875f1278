"""CF-Conv: continuous Fourier convolution with sparse updates of a stored kernel state.

Harper, Wood, Gerstoft, Larson, "Scaling Continuous Kernels with Sparse Fourier Domain Learning". The kernel lives in
the Fourier domain, G_o = sum_i F_i K_{i,o}, with complex K (real and imaginary part, the "split kernel"). Its values
come from one small MLP per (c_in, c_out) pair over (h, w) (the paper's Phi(H, W), nas_flex's default), or from one
MLP over normalised (h, w, c_in, c_out) positions (Phi(H, W, C_in, C_out), the paper's recommendation, one MLP per
part: it collapses a layer's output channels at nas_flex's widths, see ``CFConv``). Evaluating the MLP at all
H x W x C_in x C_out positions with gradients is what exhausts memory, so training evaluates it only at uniformly
sampled positions and merges those values into a stored kernel state by an exponential moving average; the other
positions keep their state. Activations are left to the caller, in the spatial domain: the layer ends with an
inverse FFT.

There is no public code for the paper; the choices below that it leaves open are nas_flex's, and are documented on
the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, ShapeError
from nas_flex.functional.cfconv import (
    channel_inputs,
    ema_merge,
    fourier_encode,
    pair_index,
    pairwise_mlp,
    pairwise_mlp_grid,
    position_coords,
    sample_positions,
    state_shape,
    state_to_spectrum,
)
from nas_flex.functional.niff import circular_conv2d_rfft, compute_dtype
from nas_flex.kernels.frequency import hermitian_project
from nas_flex.layers.base import check_finite, check_positive_int
from nas_flex.layers.frequency import DEFAULT_GRID, FrequencyKernelLayer, TwinMLP, he_init_, size_repr
from nas_flex.layers.registry import register

__all__ = ["CFConv", "CFCONV_CHANNEL_INPUTS", "CFCONV_ENCODINGS", "CFCONV_PARAMETERIZATIONS", "DEFAULT_HIDDEN"]

CFCONV_PARAMETERIZATIONS = ("joint", "per_pair")
CFCONV_ENCODINGS = ("none", "channels", "all")
CFCONV_CHANNEL_INPUTS = ("index", "onehot", "embedding")
# the paper's MLPs: [32, 32, 32, 16, 16, 16, 8, 8, 8, 1] for the joint MLP, [2, 1] per pair (hidden widths here)
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"joint": (32, 32, 32, 16, 16, 16, 8, 8, 8), "per_pair": (2,)}
# positions per chunk when the MLP is evaluated everywhere without gradients (eval at a new size, spatial_kernel)
_CHUNK = 2**16


class _PairMLP(nn.Module):
    """One MLP per (c_in, c_out) pair, for the real and imaginary part: (P, 2) coords + (P,) pairs -> (2, P, 1)."""

    def __init__(self, pairs: int, hidden: Sequence[int], *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        widths = [2, *hidden, 1]
        factory = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(2, pairs, o, i, **factory)) for i, o in zip(widths[:-1], widths[1:])]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(2, pairs, o, **factory)) for o in widths[1:]])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_init_(list(self.weights), list(self.biases))  # fan-in is the last axis: per pair

    def forward(self, coords: Tensor, pairs: Tensor, dtype: torch.dtype) -> Tensor:
        return pairwise_mlp(
            coords.to(dtype), pairs, [w.to(dtype) for w in self.weights], [b.to(dtype) for b in self.biases], "relu"
        )

    def grid(self, coords: Tensor, dtype: torch.dtype) -> Tensor:
        """Every pair's MLP at each coordinate row: (F, 2) -> (2, F * pairs, 1), frequency-major, pair-minor."""
        return pairwise_mlp_grid(
            coords.to(dtype), [w.to(dtype) for w in self.weights], [b.to(dtype) for b in self.biases], "relu"
        )


def _checked_options(sampled_positions: int | None, decay: float, parameterization: str,
                     hidden_features: Sequence[int] | None, encoding: str, encoding_octaves: int,
                     bias: bool) -> tuple[int, ...]:
    """Validate CFConv's options (one clear error each); returns the MLP's hidden widths."""
    if sampled_positions is not None:
        check_positive_int("sampled_positions", sampled_positions)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise HyperparameterError(
            f"`0 <= decay < 1` must hold (the share of the old state kept), but got {decay=!r}"
        )
    if parameterization not in CFCONV_PARAMETERIZATIONS:
        raise HyperparameterError(
            f"`parameterization` must be one of {list(CFCONV_PARAMETERIZATIONS)}, but got {parameterization=!r}"
        )
    hidden = DEFAULT_HIDDEN[parameterization] if hidden_features is None else hidden_features
    if not isinstance(hidden, (tuple, list)) or any(
        isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in hidden
    ):
        raise HyperparameterError(
            f"`hidden_features` must be a sequence of positive ints (or None), but got {hidden_features=!r}"
        )
    if encoding not in CFCONV_ENCODINGS:
        raise HyperparameterError(f"`encoding` must be one of {list(CFCONV_ENCODINGS)}, but got {encoding=!r}")
    if encoding != "none" and parameterization != "joint":
        raise HyperparameterError(
            f"`encoding` applies to the joint MLP only, but got {encoding=!r} with {parameterization=!r}; "
            "pass parameterization='joint' with it"
        )
    if isinstance(encoding_octaves, bool) or not isinstance(encoding_octaves, int) or encoding_octaves < 0:
        raise HyperparameterError(f"`encoding_octaves` must be an int >= 0, but got {encoding_octaves=!r}")
    if not isinstance(bias, bool):
        raise HyperparameterError(f"`bias` must be a bool, but got {bias=!r}")
    return tuple(hidden)


def _checked_channel_inputs(channel_inputs: str, embedding_dim: int, parameterization: str, encoding: str) -> None:
    if channel_inputs not in CFCONV_CHANNEL_INPUTS:
        raise HyperparameterError(
            f"`channel_inputs` must be one of {list(CFCONV_CHANNEL_INPUTS)}, but got {channel_inputs=!r}")
    if channel_inputs != "index" and parameterization != "joint":
        raise HyperparameterError(
            f"`channel_inputs` applies to the joint MLP only, but got {channel_inputs=!r} with "
            f"{parameterization=!r}; pass parameterization='joint' with it")
    if channel_inputs != "index" and encoding == "channels":
        raise HyperparameterError(
            f"encoding='channels' encodes the scalar channel indices, which {channel_inputs=!r} replaces; use "
            "encoding='none' or 'all' (frequencies only) with it")
    check_positive_int("channel_embedding_dim", embedding_dim)


@register("cfconv")
class CFConv(FrequencyKernelLayer):
    """Continuous Fourier convolution (CF-Conv) with sparse EMA updates of a stored kernel state.

    **Kernel.** Complex, on the rfft2 layout of the input: entry (h, w, c_in, c_out) for the H x (W // 2 + 1)
    non-negative-column frequencies (the other half follows from Hermitian symmetry, which is enforced, so the
    layer is exactly a circular convolution with the real kernel ``spatial_kernel()``). The MLPs (ReLU, one per
    real / imaginary part, per channel pair by default) see normalised coordinates: frequencies in [-1, 1) of the
    full fft2 plane (1 = Nyquist), and for the joint MLP the channel indices mapped linearly to [-1, 1]. Per pair,
    the MLPs are evaluated by broadcasting over every pair when a step covers whole frequencies (a state that
    ``sampled_positions`` covers whole, eval at a new size, ``sampled_positions=None``) and by gathering each
    sampled position's pair otherwise; both give the same values. The kernel value at frequency f is the Hermitian part
    (M(f) + conj(M(-f))) / 2 of the MLP M, as NIFF's authors build theirs (what an ``ifft2(...).real`` applies), so
    the kernel is the same whichever half-plane is stored. The MLPs start variance-preserving (``he_init_``: He
    fan-in weights, zero biases): with nn.Linear's default the paper's ten joint ReLU layers shrink the input-dependent
    part of the output to 5e-5 of its mean, every channel pair gets the same constant kernel and the first layer's
    gradient is 2000x smaller than the last's (measured; ``tests/test_cfconv.py`` checks the init). The convolution
    uses the kernel times 1 / sqrt(C_in) (fan-in scaling, our addition: with U[-1, 1] entries the output variance is
    then about 2/3 of a white input's, independent of C_in).

    **State.** A buffer ``kernel_state`` of shape (H, W // 2 + 1, C_in, C_out, 2) (the paper's H x W x C_in x C_out x 2
    on the rfft layout; last axis real, imaginary), saved in ``state_dict``. It is created at the first forward with
    ``sampled_positions`` set, U[-1, 1] as in the paper, for that input's size (loading a ``state_dict`` adopts the
    saved size).

    **Training step** (``sampled_positions=P``): P positions are drawn uniformly (distinct; see
    ``nas_flex.functional.cfconv.sample_positions``), the MLP is evaluated there with gradients, and
    ``new = decay * state + (1 - decay) * mlp`` at those positions: the kernel of this forward is the state with the
    sampled positions replaced by ``new`` (gradients reach the MLP through ``new``, scaled by ``1 - decay``), and
    ``new`` is written into the state. Unselected positions keep their state. ``decay`` is the share of the old value
    kept per update, the convention of the paper's framework (Keras / TensorFlow ``ExponentialMovingAverage(decay)``;
    the authors use KerasCV): the paper's "decay rate of 0.1" gives the MLP a 0.9 share per update, so a sampled
    position holds the current MLP up to 10 % of its previous value. (The other reading, the MLP's share 0.1, makes
    the state lag about ten updates of each position behind the MLP and gives the MLP a tenth of the gradient.)
    **Eval** uses the stored state.

    ``sampled_positions=None`` evaluates the MLP at every position, with gradients, in training and in eval (the
    paper's "naive" evaluation): the kernel *is* the MLP, there is no state and the forward is deterministic.

    **Input size.** The MLP is continuous, so with ``sampled_positions=None`` any input size works. The state is tied
    to the size it was created (or loaded) at: in eval, another size is served by evaluating the MLP on that size's
    grid (no gradients, the state untouched); in training, another size raises ``ShapeError`` naming both sizes,
    because the sparse updates cannot follow it: call ``resize_state_(h, w)`` (resamples the state from the MLP) to
    continue at the new size.

    The kernel is as large as the input; there is no explicit size parameter (``size_parameters()`` yields nothing).
    ``effective_kernel_size`` is, per dimension, the side of the centred window holding 90 % of the spatial
    kernel's absolute mass, continuous in the kernel (as NIFF's), on the last input's grid (before the first forward:
    the MLP's kernel on the 32 x 32 ``DEFAULT_GRID``).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        sampled_positions: positions P evaluated per training step (the paper: 2**12, 2**15, 2**18); None evaluates
            every position. Default 2**15.
        decay: the share of the old state kept per update, in [0, 1) (see above). Default 0.1 (the paper's "decay
            rate"; the MLP's share is 0.9).
        parameterization: "per_pair" (default: one MLP per (c_in, c_out) pair over (h, w), the paper's
            Phi(H, W), which it evaluates as the alternative) or "joint" (one MLP over (h, w, c_in, c_out), the
            paper's recommended Phi(H, W, C_in, C_out)). The default deviates from the paper's recommendation on a
            measurement: at 16 channels (the main job's width; nas_flex's backbones use 16-64) the joint MLP drives
            a layer's output channels onto one, the effective rank of its (C_out, C_in x H x W) kernel falling from
            ~16 (the U[-1, 1] state) to about 2 within 20 Adam steps, at lr 1e-2 as at 1e-3, because the MLP itself
            is nearly rank-deficient across channels (evaluated everywhere at init: ranks 1.8-3.8 of 16), and the
            main job's CF-Conv stays near chance; per pair the ranks stay near 15 and the main job reaches about
            0.64 (``experiments/frequency_layers.py``; docs/results.md, "NIFF and CF-Conv at the main job's config").
        hidden_features: the MLP's hidden widths; default the paper's (32, 32, 32, 16, 16, 16, 8, 8, 8) for
            "joint", (2,) for "per_pair" (its [2, 1] neurons). The output width is 1 per part.
        encoding: the joint MLP's input encoding (the paper does not give one; "joint" only): "none" (default:
            the normalised coordinates themselves), "channels" (c_in, c_out also as sinusoids,
            ``fourier_encode``; Tancik et al. 2020, the remedy for spectral bias the paper cites) or "all" (every
            coordinate). Measured on the main job's config (``experiments/frequency_layers.py``, max pool, 6
            epochs): "none" 0.128, "all" 0.245, "channels" with 8 octaves 0.092; it does not remove the channel
            collapse described in docs/results.md, so it stays off.
        encoding_octaves: sinusoid frequencies per encoded coordinate, 2^k pi for k < encoding_octaves. Default 4.
        channel_inputs: how the joint MLP sees the channel pair ("joint" only; the paper feeds the indices as
            continuous inputs and gives no encoding): "index" (default: c_in and c_out mapped linearly to [-1, 1],
            which ties neighbouring indices' kernels together), "onehot" (one-hot c_in and c_out, concatenated with
            the frequency coordinates: C_in + C_out more inputs) or "embedding" (a learned vector per input and per
            output channel, ``channel_embedding_in`` (C_in, D) and ``channel_embedding_out`` (C_out, D), N(0, 1) at
            init, trained with the weights). Categorical inputs raise the effective rank of the joint MLP's kernel
            across output channels at init (``tests/test_cfconv_channels.py``), but not after training: in a binary
            task with ~1 % of the positions sampled per step (the paper's regime) one-hot and embedding inputs end
            15-17 points below per pair and 10-12 below the index, their MLP at rank 2-5 of 16 like the index's
            (``experiments/cfconv_channels.py``, 3 seeds; docs/reproductions.md); per pair stays the default.
        channel_embedding_dim: D, the embedding's width for ``channel_inputs="embedding"``. Default 4.
        bias: add a learnable bias per output channel (spatial domain; nn.Conv2d's default; not in the paper).

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W).

    Example:
        >>> import torch
        >>> layer = CFConv(3, 8, sampled_positions=2**10)
        >>> layer(torch.randn(2, 3, 16, 12)).shape
        torch.Size([2, 8, 16, 12])
        >>> tuple(layer.kernel_state.shape)
        (16, 7, 3, 8, 2)
    """

    domain: ClassVar[str] = "frequency"
    # Per pair, a step whose sample covers at least this share of the state evaluates every pair's MLP at every
    # frequency by broadcasting and picks the sampled positions from that: per position 2-3x cheaper than gathering
    # each position's weights (measured on the main job's layers, CPU, one thread), so cheaper from about half on.
    # An instance attribute so a benchmark can compare both paths (``experiments/frequency_layers.py step``).
    broadcast_share: float = 0.5
    example_hparams: ClassVar[dict[str, Any]] = {"sampled_positions": None}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        sampled_positions: int | None = 2**15,
        decay: float = 0.1,
        parameterization: str = "per_pair",
        hidden_features: Sequence[int] | None = None,
        encoding: str = "none",
        encoding_octaves: int = 4,
        channel_inputs: str = "index",
        channel_embedding_dim: int = 4,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        hidden = _checked_options(sampled_positions, decay, parameterization, hidden_features, encoding,
                                  encoding_octaves, bias)
        _checked_channel_inputs(channel_inputs, channel_embedding_dim, parameterization, encoding)
        self.channel_inputs = channel_inputs
        self.channel_embedding_dim = channel_embedding_dim
        self.encoding = encoding
        self.encoding_octaves = encoding_octaves
        self.sampled_positions = sampled_positions
        self.decay = float(decay)
        self.parameterization = parameterization
        self.hidden_features = tuple(hidden)
        factory = {"device": device, "dtype": dtype}
        self.channel_embedding_in = self.channel_embedding_out = None
        if channel_inputs == "embedding":
            self.channel_embedding_in = nn.Parameter(torch.empty(in_channels, channel_embedding_dim, **factory))
            self.channel_embedding_out = nn.Parameter(torch.empty(out_channels, channel_embedding_dim, **factory))
        if parameterization == "joint":
            self.kernel_mlp: nn.Module = TwinMLP(self._joint_in_features(), self.hidden_features, 1, "relu",
                                                 init="he", **factory)
        else:
            self.kernel_mlp = _PairMLP(in_channels * out_channels, self.hidden_features, **factory)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.register_buffer("kernel_state", None)
        self._state_size: tuple[int, int] | None = None  # the (H, W) the state belongs to
        self.last_positions: Tensor | None = None  # the flat positions the last training step updated
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the MLP and the bias, and drop the kernel state (re-created, U[-1, 1], at the next
        training forward)."""
        self.kernel_mlp.reset_parameters()
        if self.channel_embedding_in is not None:  # unit-variance rows, the scale of a one-hot input
            nn.init.normal_(self.channel_embedding_in)
            nn.init.normal_(self.channel_embedding_out)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)
        self.kernel_state = None
        self._state_size = None

    # ------------------------------------------------------------------------------------------------- state
    @property
    def state_size(self) -> tuple[int, int] | None:
        """(H, W) of the input the kernel state belongs to; None before it exists."""
        return self._state_size

    def _encoded_columns(self) -> tuple[int, ...]:
        """The joint MLP's coordinate columns (f_y, f_x, c_in, c_out) that get the sinusoidal encoding (with
        categorical channel inputs the coordinates are (f_y, f_x) only)."""
        columns = {"channels": (2, 3), "all": (0, 1, 2, 3), "none": ()}[self.encoding]
        return columns if self.channel_inputs == "index" else tuple(c for c in columns if c < 2)

    def _joint_in_features(self) -> int:
        octaves = self.encoding_octaves if self.encoding != "none" else 0
        coords = 4 if self.channel_inputs == "index" else 2
        channels = {"index": 0, "onehot": self.in_channels + self.out_channels,
                    "embedding": 2 * self.channel_embedding_dim}[self.channel_inputs]
        return coords + 2 * octaves * len(self._encoded_columns()) + channels

    def _joint_inputs(self, positions: Tensor, coords: Tensor) -> Tensor:
        """The joint MLP's input rows: (P, 4) coordinates of ``positions`` -> (P, in_features)."""
        octaves = self.encoding_octaves if self.encoding != "none" else 0
        if self.channel_inputs == "index":
            return fourier_encode(coords, octaves, self._encoded_columns())
        # (P, 2) frequencies, encoded, then (P, C_in + C_out) one-hot or (P, 2 D) embedding rows
        freqs = fourier_encode(coords[:, :2], octaves, self._encoded_columns())
        cats = channel_inputs(positions, self.in_channels, self.out_channels, dtype=coords.dtype,
                              table_in=self.channel_embedding_in, table_out=self.channel_embedding_out)
        return torch.cat([freqs, cats], dim=-1)

    def _ref(self) -> Tensor:
        return next(self.kernel_mlp.parameters())

    def _create_state(self, h: int, w: int) -> None:
        ref = self._ref()
        state = torch.empty(state_shape(h, w, self.in_channels, self.out_channels), device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            state.uniform_(-1.0, 1.0)  # the paper: U[-1, 1], no preferred position or frequency
        self.kernel_state = state
        self._state_size = (h, w)

    def resize_state_(self, h: int, w: int) -> None:
        """Re-create the kernel state for an H x W input from the MLP evaluated at every position (no gradients),
        so sparse training can continue at a new input size."""
        check_positive_int("h", h)
        check_positive_int("w", w)
        with torch.no_grad():
            state = self._mlp_everywhere(h, w, chunk=_CHUNK)
        self.kernel_state = state.to(self._ref().dtype)
        self._state_size = (h, w)

    def get_extra_state(self) -> dict[str, Any]:
        return {"state_size": self._state_size}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        size = state.get("state_size")
        self._state_size = tuple(size) if size is not None else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # The state's shape depends on the input size it was made for: adopt the checkpoint's, so a fresh layer can
        # load a trained one. A checkpoint that says it has no state drops ours.
        incoming = state_dict.get(prefix + "kernel_state")
        extra = state_dict.get(prefix + "_extra_state")
        if incoming is not None:
            current = self.kernel_state
            if current is None or current.shape != incoming.shape:
                ref = self._ref()
                self.kernel_state = torch.empty(incoming.shape, device=ref.device, dtype=ref.dtype)
        elif isinstance(extra, dict) and extra.get("state_size") is None:
            self.kernel_state = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if incoming is not None and self.kernel_state is not None:
            check_finite("kernel_state", self.kernel_state, type(self).__name__)  # forward only checks new values

    # ------------------------------------------------------------------------------------------------ kernels
    def _mlp_at(self, positions: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """The Hermitian part of the MLP, (M(f) + conj(M(-f))) / 2, at flat positions: (P,) -> (P, 2) (real,
        imaginary), checked for NaN / inf (the kernel's only source of new values: the state was finite before).

        The MLP is evaluated at each position's frequency f and at -f (same channel pair), one batch of 2P."""
        joint = self.parameterization == "joint"
        both = torch.cat([positions, positions])
        coords = torch.cat([
            position_coords(positions, h, w, self.in_channels, self.out_channels, dtype=dtype, channels=joint),
            position_coords(positions, h, w, self.in_channels, self.out_channels, dtype=dtype, channels=joint,
                            mirror=True),
        ])
        if joint:
            # (2P, 4) -> (2P, in_features) -> (2, 2P, 1)
            out = self.kernel_mlp(self._joint_inputs(both, coords), dtype)
        else:
            out = self.kernel_mlp(coords, pair_index(both, self.in_channels, self.out_channels), dtype)
        out = out[..., 0]  # (2, 2P): real, imaginary part at f (first P) and at -f (last P)
        p = positions.numel()
        at, mirrored = out[:, :p], out[:, p:]
        values = 0.5 * torch.stack([at[0] + mirrored[0], at[1] - mirrored[1]], dim=-1)  # (P, 2)
        return check_finite("kernel", values, type(self).__name__)

    def _mlp_everywhere(self, h: int, w: int, chunk: int | None = None) -> Tensor:
        """The MLP evaluated at every position: (H, Wf, C_in, C_out, 2); ``chunk`` bounds the memory (no grad)."""
        shape = state_shape(h, w, self.in_channels, self.out_channels)
        total = math.prod(shape[:-1])
        dtype = compute_dtype(self._ref().dtype)
        device = self._ref().device
        step = total if chunk is None else chunk
        if self.parameterization == "per_pair":  # whole frequencies at a time, every pair by broadcasting
            pairs = self.in_channels * self.out_channels
            freqs = total // pairs
            rows = max(1, step // pairs)
            parts = [self._pairs_at_frequencies(torch.arange(s, min(s + rows, freqs), device=device), h, w, dtype)
                     for s in range(0, freqs, rows)]
        else:
            parts = [
                self._mlp_at(torch.arange(s, min(s + step, total), device=device), h, w, dtype)
                for s in range(0, total, step)
            ]
        return torch.cat(parts).reshape(shape)

    def _pairs_at_frequencies(self, freqs: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """Per-pair parameterization: the Hermitian part of every pair's MLP at flat frequency indices (row * Wf +
        col): (F,) -> (F * C_in * C_out, 2), in the state's flat order. The same values as ``_mlp_at`` at those
        positions, without gathering each position's weights."""
        pairs = self.in_channels * self.out_channels
        first = freqs * pairs  # the position of pair 0 at each frequency: its coordinates are the frequency's
        coords = torch.cat([
            position_coords(first, h, w, self.in_channels, self.out_channels, dtype=dtype, channels=False),
            position_coords(first, h, w, self.in_channels, self.out_channels, dtype=dtype, channels=False,
                            mirror=True),
        ])
        out = self.kernel_mlp.grid(coords, dtype)[..., 0]  # (2, 2F * pairs): at f (first F * pairs), at -f
        n = freqs.numel() * pairs
        at, mirrored = out[:, :n], out[:, n:]
        values = 0.5 * torch.stack([at[0] + mirrored[0], at[1] - mirrored[1]], dim=-1)  # (F * pairs, 2)
        return check_finite("kernel", values, type(self).__name__)

    def _spectrum(self, kernel: Tensor, w: int) -> Tensor:
        """Real (H, Wf, C_in, C_out, 2) kernel -> its Hermitian complex spectrum (H, Wf, C_in, C_out), unscaled."""
        kernel = kernel.to(compute_dtype(kernel.dtype))
        return hermitian_project(state_to_spectrum(kernel), w, dims=(0, 1))

    def _eval_kernel(self, h: int, w: int) -> Tensor:
        """The kernel used in eval for an H x W input: with sampled updates, the state at its own size, else the MLP
        on that grid as a constant (no gradients); with ``sampled_positions=None``, the MLP (with gradients)."""
        if self.sampled_positions is None:
            return self._mlp_everywhere(h, w, chunk=None if torch.is_grad_enabled() else _CHUNK)
        if self.kernel_state is not None and self._state_size == (h, w):
            return self.kernel_state
        with torch.no_grad():
            return self._mlp_everywhere(h, w, chunk=_CHUNK)

    def frequency_kernel(self, size: tuple[int, int] | None = None) -> Tensor:
        """The kernel the layer applies in eval, as a spectrum: complex (C_out, C_in, H, W // 2 + 1), Hermitian, with
        the 1 / sqrt(C_in) scale. ``size`` defaults to the last input's (H, W) (``DEFAULT_GRID`` before any)."""
        h, w = size or self.last_input_size or DEFAULT_GRID
        with torch.autocast(device_type=self._ref().device.type, enabled=False):
            spec = self._spectrum(self._eval_kernel(h, w), w)  # (H, Wf, C_in, C_out)
            return spec.permute(3, 2, 0, 1) / math.sqrt(self.in_channels)  # -> (C_out, C_in, H, Wf)

    def size_record(self) -> dict[str, Any]:
        return {"parameterization": self.parameterization, "sampled_positions": self.sampled_positions,
                **self._mass_record()}

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        h, w = self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.training and self.sampled_positions is not None:
                kernel = self._sparse_step(h, w)
            else:
                kernel = self._eval_kernel(h, w)
            # Not projected to Hermitian here: irfft2 applies exactly the Hermitian part of its input, and for a
            # Hermitian input spectrum X the Hermitian part of X * K is X * herm(K) (on a self-conjugate column,
            # conj(X[-r]) = X[r]), so the output and its gradients equal those of the projected kernel that
            # frequency_kernel() and spatial_kernel() report, without two more passes over C_in x C_out x H x Wf.
            spec = state_to_spectrum(kernel.to(compute_dtype(kernel.dtype)))  # (H, Wf, C_in, C_out)
            # the fan-in scale on the output instead of on the C_in x C_out x H x Wf kernel
            y = circular_conv2d_rfft(x, spec, layout="hwio") * (1.0 / math.sqrt(self.in_channels))
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)

    def _sparse_step(self, h: int, w: int) -> Tensor:
        """One training step's kernel: EMA-merge the MLP at sampled positions into the state (and store it)."""
        if self.kernel_state is None:
            self._create_state(h, w)
        elif self._state_size != (h, w):
            sh, sw = self._state_size
            raise ShapeError(
                f"CFConv: the kernel state belongs to a {sh}x{sw} input, but training got a {h}x{w} input; sparse "
                f"updates cannot follow a size change. Call layer.resize_state_({h}, {w}) to resample the state from "
                f"the MLP, keep training at {sh}x{sw}, or use sampled_positions=None (eval at another size works)."
            )
        state = self.kernel_state
        total = math.prod(state.shape[:-1])
        dense = self.sampled_positions >= total  # every position is sampled (a small layer)
        positions = (torch.arange(total, device=state.device) if dense
                     else sample_positions(total, self.sampled_positions, device=state.device))
        self.last_positions = positions
        if dense or (self.parameterization == "per_pair" and self.sampled_positions >= self.broadcast_share * total):
            # every pair's MLP at every frequency by broadcasting, then the sampled positions picked from it: the same
            # values and gradients, cheaper than gathering each position's weights once the sample covers this share
            everywhere = self._mlp_everywhere(h, w).reshape(-1, 2)  # (total, 2), with gradients
            values = everywhere if dense else everywhere[positions]
        else:
            values = self._mlp_at(positions, h, w, compute_dtype(state.dtype))  # (P, 2), with gradients
        # a dense step needs no gather and scatter: positions=None is every position in order
        kernel, new = ema_merge(state, None if dense else positions, values, self.decay)
        with torch.no_grad():
            if dense:
                state.copy_(new.reshape(state.shape))
            else:
                state.view(-1, 2)[positions] = new.to(state.dtype)
        return kernel

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, {size_repr(self)}"
        if self.sampled_positions != 2**15:
            s += f", sampled_positions={self.sampled_positions}"
        if self.decay != 0.1:
            s += f", decay={self.decay}"
        if self.parameterization != "per_pair":
            s += f", parameterization={self.parameterization!r}"
        if self.encoding != "none":
            s += f", encoding={self.encoding!r}, encoding_octaves={self.encoding_octaves}"
        if self.channel_inputs != "index":
            s += f", channel_inputs={self.channel_inputs!r}"
            if self.channel_inputs == "embedding":
                s += f", channel_embedding_dim={self.channel_embedding_dim}"
        if self.hidden_features != DEFAULT_HIDDEN[self.parameterization]:
            s += f", hidden_features={self.hidden_features}"
        if self.state_size is not None:
            s += f", state for {self.state_size[0]}x{self.state_size[1]}"
        return s + ("" if self.bias is not None else ", bias=False")

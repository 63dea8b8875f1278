"""The differentiable-NAS kernel-size choice: a weight-sharing mixed kernel (DARTS; NNI's superkernel).

Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, relaxes a categorical choice of
operation into a softmax over architecture weights alpha. For kernel size, the NAS frameworks share one weight of the
largest candidate size and crop smaller candidates from its centre (single-path / "superkernel" weight sharing, as in
NNI's retiarii ValueChoice on kernel_size and Stamoulis et al., "Single-Path NAS", 2019). Because every candidate is a
centred crop of the same weight, the alpha-weighted sum of the candidates' outputs is one convolution with the
alpha-weighted kernel ``W * sum_i softmax(alpha)_i * box_i``: that is how forward runs it, at the cost of one conv.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError
from nas_flex.functional.conv import conv2d_same
from nas_flex.layers.base import KernelLayer, SizeRecipe, check_finite, conv_init_
from nas_flex.layers.registry import register

__all__ = ["MixedConv", "mixed_kernel_mask"]


def mixed_kernel_mask(probs: Tensor, kernel_sizes: tuple[int, ...]) -> Tensor:
    """The (K, K) weighting ``sum_i probs_i * box_i`` where box_i is 1 on the centred k_i x k_i square.

    Args:
        probs: (n,) candidate probabilities.
        kernel_sizes: the n odd candidate sides, largest last or anywhere; K = max.

    Returns:
        (K, K) tensor, differentiable in ``probs``.
    """
    big = max(kernel_sizes)
    r = torch.arange(big, device=probs.device, dtype=probs.dtype) - big // 2  # offsets from the centre
    cheb = torch.maximum(r.abs()[:, None], r.abs()[None, :])  # (K, K) Chebyshev distance to the centre
    half = torch.tensor([k // 2 for k in kernel_sizes], device=probs.device, dtype=probs.dtype)
    boxes = (cheb[None] <= half[:, None, None]).to(probs.dtype)  # (n, K, K)
    return torch.einsum("n,nhw->hw", probs, boxes)


@register("mixed")
class MixedConv(KernelLayer):
    """Mixed-kernel convolution with a softmax over candidate kernel sizes (DARTS-style, weight-shared).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_sizes: odd candidate sides, at least two, distinct. Default (3, 5, 7).
        bias: add a learnable bias.

    The architecture weights ``alpha`` (one per candidate, DARTS's 1e-3 * N(0, 1) initialisation) are the
    ``size_parameters()``; the candidates share one weight of the largest size. ``effective_kernel_size`` is the
    softmax-expected side; ``size_record()`` also reports the argmax side and the softmax entropy, so a near-uniform
    alpha is not mistaken for a confident choice.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W); the largest candidate must fit in the input.

    Example:
        >>> import torch
        >>> layer = MixedConv(3, 8, kernel_sizes=(3, 5, 7))
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> round(layer.effective_kernel_size[0])
        5
    """

    example_hparams: ClassVar[dict[str, Any]] = {"kernel_sizes": (3, 5)}
    size_parameter_names: ClassVar[tuple[str, ...]] = ("normalized_entropy", "argmax_kernel_size")
    #: DARTS (Liu et al. 2019, Sec. 3.1 and the authors' train_search.py): the architecture weights have their own Adam
    #: at a constant learning rate 3e-4, betas (0.5, 0.999), weight decay 1e-3. DARTS steps them on held-out data
    #: (bilevel); ``size_update="bilevel"`` in a trial config does that, the default steps them on the training batch.
    size_recipe: ClassVar[SizeRecipe] = SizeRecipe(
        source="DARTS (Liu et al. 2019): own Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3",
        optimizer="adam", lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: tuple[int, ...] | list[int] = (3, 5, 7),
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels)
        sizes = tuple(kernel_sizes) if isinstance(kernel_sizes, (tuple, list)) else None
        if (
            sizes is None
            or len(sizes) < 2
            or len(set(sizes)) != len(sizes)
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes)
        ):
            raise HyperparameterError(
                f"`kernel_sizes` must be at least two distinct odd positive ints, but got {kernel_sizes=!r}"
            )
        self.kernel_sizes: tuple[int, ...] = tuple(sorted(sizes))
        big = self.kernel_sizes[-1]
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, big, big, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.alpha = nn.Parameter(torch.empty(len(self.kernel_sizes), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_init_(self.weight, self.bias)  # fan-in of the largest kernel, which holds all the smaller ones
        nn.init.normal_(self.alpha, std=1e-3)  # DARTS: alphas start near uniform

    # ------------------------------------------------------------------------------------------------- size
    def probabilities(self) -> Tensor:
        """softmax(alpha): the candidates' probabilities, in the order of ``kernel_sizes`` (ascending)."""
        return torch.softmax(self.alpha, dim=0)

    @property
    def effective_kernel_size(self) -> tuple[float, float]:
        """(height, width) in pixels: the softmax-expected candidate side."""
        with torch.no_grad():
            p = self.probabilities().double().cpu()
            k = float((p * torch.tensor(self.kernel_sizes, dtype=p.dtype)).sum())
        return k, k

    def size_parameters(self) -> Iterator[nn.Parameter]:
        yield self.alpha

    def size_record(self) -> dict[str, Any]:
        with torch.no_grad():
            p = self.probabilities().double().cpu()
            entropy = float(-(p * p.clamp_min(1e-300).log()).sum())
        return {
            "argmax_kernel_size": self.kernel_sizes[int(p.argmax())],
            "entropy": entropy,  # nats; log(n) is uniform
            "normalized_entropy": entropy / math.log(len(self.kernel_sizes)),  # 1 = uniform, 0 = one-hot
            "probabilities": [float(v) for v in p],
            "kernel_sizes": list(self.kernel_sizes),
        }

    # ----------------------------------------------------------------------------------------------- forward
    def mixed_weight(self) -> Tensor:
        """The alpha-weighted kernel (C_out, C_in, K, K) that forward convolves with."""
        probs = check_finite("alpha", self.probabilities(), type(self).__name__)
        return self.weight * mixed_kernel_mask(probs, self.kernel_sizes)

    def forward(self, x: Tensor) -> Tensor:
        big = self.kernel_sizes[-1]
        self._check_input(x, max_kernel=(big, big))
        return conv2d_same(x, self.mixed_weight(), self.bias)

    def to_conv2d(self) -> nn.Conv2d:
        with torch.no_grad():
            return self._as_conv2d(self.mixed_weight())

    def extra_repr(self) -> str:
        rec = self.size_record()
        probs = ", ".join(f"{k}:{p:.2f}" for k, p in zip(self.kernel_sizes, rec["probabilities"]))
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.effective_kernel_size[0]:.2f} "
            f"(learned, softmax over {{{probs}}}, entropy={rec['normalized_entropy']:.2f})"
        )
        return s + ("" if self.bias is not None else ", bias=False")

"""Kernel nets: small networks mapping relative positions to kernel values, for continuous-kernel convolutions.

* ``MAGNet``: Multiplicative Anisotropic Gabor Network, Romero, Bruintjes et al., "FlexConv: Continuous Kernel
  Convolutions with Differentiable Kernel Sizes", ICLR 2022, Sec. 3.2 and App. D.1 (the default).
* ``MFNGabor`` and ``MFNFourier``: the Multiplicative Filter Networks of Fathony, Sahu, Willmott, Kolter,
  "Multiplicative Filter Networks", ICLR 2021 (isotropic Gabor and sine filters).
* ``SIREN``: Sitzmann, Martel, Bergman, Lindell, Wetzstein, "Implicit Neural Representations with Periodic
  Activation Functions", NeurIPS 2020.

Every net maps positions ``(P, D)`` to values ``(P, out_features)``; a FlexConv asks for ``C_out * C_in`` values per
position. An MFN-type net is ``h_1 = g_1(x)``, ``h_l = (W_l h_{l-1} + b_l) * g_l(x)``, ``out = W_out h_L + b_out``
with ``num_layers + 1`` filters ``g`` (the authors' ``kernel_no_layers`` convention: ``num_layers=3`` gives four
filters, three hidden linears and the output linear). All filters of a net are evaluated as one batched op, so
generating a kernel costs a handful of ops whatever the channel count.

The MFN-type nets expose ``layer_max_frequencies()``, the analytic per-layer bound on the frequencies they can
produce (FlexConv App. A.1), which the alias-free regularizer penalises; SIREN has no such bound (stacked
sine nonlinearities), and returns None.

Pick a net by name with ``build_kernel_net(name, ...)``; ``KERNEL_NETS`` lists the names.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nas_flex.errors import HyperparameterError, ShapeError, check_known, unknown_name
from nas_flex.layers.base import check_positive_int

__all__ = [
    "KernelNet",
    "MAGNet",
    "MFNGabor",
    "MFNFourier",
    "SIREN",
    "KERNEL_NETS",
    "build_kernel_net",
    "kernel_net_options",
]

Factory = dict[str, Any]


class KernelNet(nn.Module):
    """Base class: a net mapping positions ``(P, D)`` to kernel values ``(P, out_features)``.

    Subclasses fill their parameters in ``reset_parameters``, compute hidden features ``(P, H)`` and finish with
    ``_output``, which holds the output linear layer (``output_weight`` ``(out, H)``, ``output_bias`` ``(out,)``)
    shared by all nets.

    Args:
        in_features: D, the dimension of the positions (2 for images, 1 for sequences).
        out_features: values per position (C_out * C_in for a convolution kernel).
        hidden_channels: H, width of the hidden layers.
        num_layers: depth; its meaning per net is documented there.
        init_region: (low, high) relative positions where the kernel is used at first (a FlexConv's initial mask
            support). Gabor nets draw their envelope centres from it; the other nets ignore it.
    """

    #: whether ``layer_max_frequencies`` returns a bound (the alias-free regularizer needs one)
    has_frequency_bound: ClassVar[bool] = False
    min_layers: ClassVar[int] = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_channels: int = 32,
        num_layers: int = 3,
        *,
        init_region: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if num_layers < self.min_layers:
            raise HyperparameterError(
                f"{type(self).__name__} needs `num_layers >= {self.min_layers}`, but got {num_layers=}"
            )
        low, high = (float(v) for v in init_region)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise HyperparameterError(f"`init_region` must be a finite (low, high) with low <= high, got {init_region}")
        self.init_region = (low, high)
        factory: Factory = {"device": device, "dtype": dtype}
        self.output_weight = nn.Parameter(torch.empty(out_features, hidden_channels, **factory))
        self.output_bias = nn.Parameter(torch.empty(out_features, **factory))

    def reset_parameters(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def _output(self, h: Tensor, scale: Tensor | None) -> Tensor:
        """The output layer ``scale * (h W^T + b)`` as a ``(P, out)`` transposed view of a contiguous ``(out, P)``.

        The per-position ``scale`` (a FlexConv's mask) is folded into the matmul, ``[scale * h, scale] @ [W, b]^T``,
        so no elementwise pass over the large ``(P, out)`` result is needed, forward or backward. Returning the
        transposed view lets the caller reshape ``(out, P)`` into ``(C_out, C_in, *kernel)`` without a copy.
        """
        if scale is None:
            out = torch.addmm(self.output_bias.unsqueeze(1), self.output_weight, h.t())  # (out, P)
        else:
            s = scale.reshape(-1, 1)
            h_aug = torch.cat([h * s, s], dim=1)  # (P, H + 1)
            w_aug = torch.cat([self.output_weight, self.output_bias.unsqueeze(1)], dim=1)  # (out, H + 1)
            out = torch.mm(w_aug, h_aug.t())  # (out, P)
        return out.t()

    def forward(self, positions: Tensor, scale: Tensor | None = None) -> Tensor:
        """Kernel values at ``positions``.

        Args:
            positions: (P, D) relative positions, usually in [-1, 1].
            scale: optional (P,) factor per position multiplied into the output (a FlexConv's mask), computed
                without an extra pass over the output.

        Shape:
            (P, D) -> (P, out_features), returned as the transpose of a contiguous (out_features, P) tensor.
        """
        if positions.dim() != 2 or positions.shape[1] != self.in_features:
            raise ShapeError(
                f"{type(self).__name__} expects positions of shape (P, {self.in_features}), "
                f"but got {tuple(positions.shape)}"
            )
        return self._output(self._features(positions), scale)

    def _features(self, positions: Tensor) -> Tensor:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def layer_max_frequencies(self, sigma_cut: float = 2.0) -> Tensor | None:
        """Upper bound on the frequency each filter layer contributes, ``(num_filters, D)`` in cycles per unit of
        position, per axis; the net's output holds no frequency above ``layer_max_frequencies().sum(0)`` per axis.
        None where no analytic bound exists."""
        return None

    def max_frequency(self, sigma_cut: float = 2.0) -> Tensor | None:
        """The net's maximum frequency (cycles per unit), over all axes: a scalar tensor, or None without a bound."""
        per_layer = self.layer_max_frequencies(sigma_cut)
        return None if per_layer is None else per_layer.sum(0).max()

    def _init_output(self) -> None:
        # the output linear keeps torch's default Linear initialisation, as in the authors' code: U(+-1/sqrt(H))
        bound = 1.0 / math.sqrt(self.hidden_channels)
        nn.init.uniform_(self.output_weight, -bound, bound)
        nn.init.uniform_(self.output_bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"hidden_channels={self.hidden_channels}, num_layers={self.num_layers}"
        )


def _gamma_(param: Tensor, concentration: float, rate: float) -> None:
    """Fill ``param`` in place with Gamma(concentration, rate) samples (skipped on the meta device)."""
    if param.is_meta:
        return
    dtype = param.dtype if param.dtype in (torch.float32, torch.float64) else torch.float32
    dist = torch.distributions.Gamma(
        torch.tensor(concentration, device=param.device, dtype=dtype),
        torch.tensor(rate, device=param.device, dtype=dtype),
    )
    with torch.no_grad():
        param.copy_(dist.sample(param.shape))


class _MFN(KernelNet):
    """Multiplicative Filter Network skeleton: ``num_layers + 1`` filters, ``num_layers`` hidden linears.

    Subclasses provide ``_filters(positions) -> (num_layers + 1, P, H)``. Every filter has a sine term
    ``sin(W_l x + b_l)`` (``filter_weight`` ``(F, H, D)``, ``filter_bias`` ``(F, H)``).
    """

    has_frequency_bound: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_channels: int = 32,
        num_layers: int = 3,
        *,
        input_scale: float = 25.6,
        weight_scale: float = 1.0,
        init_region: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, hidden_channels, num_layers, init_region=init_region, device=device, dtype=dtype
        )
        for name, value in (("input_scale", input_scale), ("weight_scale", weight_scale)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise HyperparameterError(f"`{name} > 0` must hold (finite), but got {name}={value!r}")
        self.input_scale = float(input_scale)
        self.weight_scale = float(weight_scale)
        factory: Factory = {"device": device, "dtype": dtype}
        n_filters, h, d = num_layers + 1, hidden_channels, in_features
        self.filter_weight = nn.Parameter(torch.empty(n_filters, h, d, **factory))
        self.filter_bias = nn.Parameter(torch.empty(n_filters, h, **factory))
        self.hidden_weight = nn.Parameter(torch.empty(num_layers, h, h, **factory))
        self.hidden_bias = nn.Parameter(torch.empty(num_layers, h, **factory))

    @property
    def num_filters(self) -> int:
        return self.num_layers + 1

    def _init_linears(self) -> None:
        """The MFN initialisation of Fathony et al. for the hidden and output linears (kept by the FlexConv code)."""
        h = self.hidden_channels
        bound = math.sqrt(self.weight_scale / h)
        nn.init.uniform_(self.hidden_weight, -bound, bound)
        nn.init.uniform_(self.hidden_bias, -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))
        nn.init.uniform_(self.filter_bias, -math.pi, math.pi)
        self._init_output()

    def _base_filter_weight_(self) -> None:
        """U(-1/sqrt(D), 1/sqrt(D)) times input_scale / sqrt(num_filters) (Fathony et al.; torch's default Linear
        bound for fan-in D)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.filter_weight, -bound, bound)
        with torch.no_grad():
            self.filter_weight.mul_(self.input_scale / math.sqrt(self.num_filters))

    def _sines(self, positions: Tensor) -> Tensor:
        """``W_l x + b_l`` for every filter: (F, P, H)."""
        n_filters = self.num_filters
        # (F, H) -> (F, 1, H) bias + (F, P, D) @ (F, D, H)
        return torch.baddbmm(
            self.filter_bias.unsqueeze(1),
            positions.unsqueeze(0).expand(n_filters, -1, -1),
            self.filter_weight.transpose(1, 2),
        )

    def _filters(self, positions: Tensor) -> Tensor:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def _features(self, positions: Tensor) -> Tensor:
        # unbind: one autograd node per tensor instead of one (zero-filled) select-backward per layer
        g = self._filters(positions).unbind(0)  # F x (P, H)
        weights, biases = self.hidden_weight.unbind(0), self.hidden_bias.unbind(0)
        h = g[0]
        for layer in range(self.num_layers):
            h = torch.addmm(biases[layer], h, weights[layer].t()) * g[layer + 1]
        return h

    def _sine_frequencies(self) -> Tensor:
        """Per filter, unit and axis: the sine's frequency |W| / 2 pi (cycles per unit). (F, H, D)."""
        return self.filter_weight.abs() / (2.0 * math.pi)


class _GaborMFN(_MFN):
    """MFN with Gabor filters ``g_l(x) = exp(-0.5 sum_d (gamma_ld (x_d - mu_ld))^2) sin(W_l x + b_l)``.

    ``filter_gamma`` is (F, H, D) (anisotropic, MAGNet) or (F, H, 1) (isotropic, MFN-Gabor); ``filter_mu`` (F, H, D).
    """

    anisotropic: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_channels: int = 32,
        num_layers: int = 3,
        *,
        input_scale: float = 25.6,
        weight_scale: float = 1.0,
        alpha: float = 6.0,
        beta: float = 1.0,
        init_region: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            hidden_channels,
            num_layers,
            input_scale=input_scale,
            weight_scale=weight_scale,
            init_region=init_region,
            device=device,
            dtype=dtype,
        )
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise HyperparameterError(f"`{name} > 0` must hold (finite), but got {name}={value!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        factory: Factory = {"device": device, "dtype": dtype}
        n_gamma = in_features if self.anisotropic else 1
        self.filter_gamma = nn.Parameter(torch.empty(self.num_filters, hidden_channels, n_gamma, **factory))
        self.filter_mu = nn.Parameter(torch.empty(self.num_filters, hidden_channels, in_features, **factory))
        self.reset_parameters()

    def _gamma_concentration(self, layer: int) -> float:
        raise NotImplementedError  # pragma: no cover

    def reset_parameters(self) -> None:
        for layer in range(self.num_filters):
            _gamma_(self.filter_gamma[layer], self._gamma_concentration(layer), self.beta)
        self._base_filter_weight_()
        with torch.no_grad():
            # the sine frequencies scale with the envelope's gamma, so narrow envelopes carry high frequencies
            self.filter_weight.mul_(self.filter_gamma)
        nn.init.uniform_(self.filter_mu, *self.init_region)
        self._init_linears()

    def _filters(self, positions: Tensor) -> Tensor:
        # envelope: (1, P, 1, D) - (F, 1, H, D) -> (F, P, H, D), scaled per axis by gamma (F, 1, H, D or 1)
        u = (positions[None, :, None, :] - self.filter_mu.unsqueeze(1)) * self.filter_gamma.unsqueeze(1)
        envelope = torch.exp(-0.5 * u.square().sum(-1))  # (F, P, H)
        return envelope * torch.sin(self._sines(positions))

    def layer_max_frequencies(self, sigma_cut: float = 2.0) -> Tensor:
        """Per filter and axis: ``max_i (|W_ld,i| + sigma_cut * gamma_ld,i) / (2 pi)`` (cycles per unit), (F, D).

        The sine of unit i puts its energy at |W_i| / 2 pi along each axis and the envelope blurs it by a Gaussian
        of standard deviation gamma_i / 2 pi, cut at ``sigma_cut`` (2: 95 %, the paper's choice), App. A.1 Eq. 16.
        The sine and envelope terms are paired per unit and per axis, which bounds every axis (the paper's Eq. 16
        takes min over the axes' gammas, which can underestimate; the authors' code adds the maxima over all units).
        """
        gamma = self.filter_gamma.abs().expand_as(self.filter_weight)  # (F, H, D)
        per_unit = self._sine_frequencies() + gamma * (sigma_cut / (2.0 * math.pi))
        return per_unit.amax(dim=1)


class MAGNet(_GaborMFN):
    """Multiplicative Anisotropic Gabor Network (FlexConv, Sec. 3.2): the default kernel net.

    ``num_layers + 1`` anisotropic Gabor filters (the authors' ``kernel_no_layers``: 3 gives four filters). The
    initialisation follows the paper (Sec. 3.2, App. D.1) and the authors' code:

    * envelope widths ``gamma`` of filter ``l`` (0-based) ~ Gamma(alpha / (l + 1), beta), alpha 6, beta 1, drawn
      per unit and per axis (more varied than the MFN's Gamma(alpha / (L + 1), beta));
    * sine weights ``W`` ~ U(-1/sqrt(D), 1/sqrt(D)) * input_scale / sqrt(num_layers + 1) * gamma, input_scale 25.6;
    * sine biases ~ U(-pi, pi); envelope centres ``mu`` ~ U(init_region);
    * hidden linears U(+-sqrt(weight_scale / H)) (biases U(+-1/sqrt(H))), the output linear U(+-1/sqrt(H)).

    Example:
        >>> net = MAGNet(2, 6, hidden_channels=8)
        >>> net(torch.rand(25, 2) * 2 - 1).shape
        torch.Size([25, 6])
        >>> net.layer_max_frequencies().shape  # (num_layers + 1, D)
        torch.Size([4, 2])
    """

    anisotropic: ClassVar[bool] = True

    def _gamma_concentration(self, layer: int) -> float:
        return self.alpha / (layer + 1)


class MFNGabor(_GaborMFN):
    """Multiplicative Gabor Network (Fathony et al. 2021): isotropic Gabor filters.

    As ``MAGNet`` but with one envelope width per unit (both axes), drawn from Gamma(alpha / (num_layers + 1),
    beta) at every layer, as in the MFN paper.
    """

    anisotropic: ClassVar[bool] = False

    def _gamma_concentration(self, layer: int) -> float:
        return self.alpha / self.num_filters


class MFNFourier(_MFN):
    """Fourier Multiplicative Filter Network (Fathony et al. 2021): sine filters ``g_l(x) = sin(W_l x + b_l)``.

    ``W`` ~ U(-1/sqrt(D), 1/sqrt(D)) * input_scale / sqrt(num_layers + 1), biases U(-pi, pi). input_scale defaults
    to 25.6, the value the FlexConv code uses for its Gabor nets on the [-1, 1] kernel grid (its Fourier net fell
    back to the MFN paper's 256, tuned for 256-pixel images, which puts most initial frequencies above the Nyquist
    frequency of a 33-sample kernel).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_channels: int = 32,
        num_layers: int = 3,
        *,
        input_scale: float = 25.6,
        weight_scale: float = 1.0,
        init_region: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            hidden_channels,
            num_layers,
            input_scale=input_scale,
            weight_scale=weight_scale,
            init_region=init_region,
            device=device,
            dtype=dtype,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._base_filter_weight_()
        self._init_linears()

    def _filters(self, positions: Tensor) -> Tensor:
        return torch.sin(self._sines(positions))

    def layer_max_frequencies(self, sigma_cut: float = 2.0) -> Tensor:
        """Per filter and axis: ``max_i |W_ld,i| / (2 pi)`` (cycles per unit), (F, D): pure sines, exact."""
        return self._sine_frequencies().amax(dim=1)


class SIREN(KernelNet):
    """SIREN (Sitzmann et al. 2020): ``num_layers`` linear layers, all but the last followed by ``sin(omega_0 .)``.

    ``h_1 = sin(omega_0 (W_1 x + b_1))``, ``h_l = sin(omega_0 (W_l h_{l-1} + b_l))``, ``out = W_out h + b_out``
    (the authors' ``kernel_no_layers`` convention: ``num_layers`` counts every linear layer, at least 2).
    Initialisation: first layer W ~ U(-1/D, 1/D), later layers (output included) W ~ U(+-sqrt(6 / H) / omega_0),
    biases U(+-1/sqrt(fan_in)); omega_0 = 30.

    No analytic frequency bound exists for stacked sines, so the alias-free regularizer does not apply.
    """

    min_layers: ClassVar[int] = 2

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_channels: int = 32,
        num_layers: int = 3,
        *,
        omega_0: float = 30.0,
        init_region: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, hidden_channels, num_layers, init_region=init_region, device=device, dtype=dtype
        )
        if not (isinstance(omega_0, (int, float)) and math.isfinite(omega_0) and omega_0 > 0):
            raise HyperparameterError(f"`omega_0 > 0` must hold (finite), but got {omega_0=!r}")
        self.omega_0 = float(omega_0)
        factory: Factory = {"device": device, "dtype": dtype}
        h = hidden_channels
        self.first_weight = nn.Parameter(torch.empty(h, in_features, **factory))
        self.first_bias = nn.Parameter(torch.empty(h, **factory))
        self.hidden_weight = nn.Parameter(torch.empty(num_layers - 2, h, h, **factory))
        self.hidden_bias = nn.Parameter(torch.empty(num_layers - 2, h, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, h = self.in_features, self.hidden_channels
        nn.init.uniform_(self.first_weight, -1.0 / d, 1.0 / d)
        nn.init.uniform_(self.first_bias, -1.0 / math.sqrt(d), 1.0 / math.sqrt(d))
        bound = math.sqrt(6.0 / h) / self.omega_0
        nn.init.uniform_(self.hidden_weight, -bound, bound)
        nn.init.uniform_(self.hidden_bias, -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))
        nn.init.uniform_(self.output_weight, -bound, bound)
        nn.init.uniform_(self.output_bias, -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))

    def _features(self, positions: Tensor) -> Tensor:
        h = torch.sin(self.omega_0 * torch.addmm(self.first_bias, positions, self.first_weight.t()))
        for weight, bias in zip(self.hidden_weight.unbind(0), self.hidden_bias.unbind(0)):
            h = torch.sin(self.omega_0 * torch.addmm(bias, h, weight.t()))
        return h


#: kernel-net name -> class; ``build_kernel_net`` looks names up here.
KERNEL_NETS: dict[str, type[KernelNet]] = {
    "magnet": MAGNet,
    "mfn_gabor": MFNGabor,
    "mfn_fourier": MFNFourier,
    "siren": SIREN,
}


def build_kernel_net(
    name: str,
    in_features: int,
    out_features: int,
    hidden_channels: int = 32,
    num_layers: int = 3,
    **options: Any,
) -> KernelNet:
    """Build the kernel net ``name`` (one of ``KERNEL_NETS``).

    Args:
        name: "magnet", "mfn_gabor", "mfn_fourier" or "siren".
        in_features: D, the dimension of the positions.
        out_features: values per position.
        hidden_channels: width of the hidden layers.
        num_layers: depth (see the net's docstring).
        **options: the net's own keyword arguments (``input_scale``, ``alpha``, ``omega_0``, ``init_region``,
            ``device``, ``dtype``, ...).

    Raises:
        UnknownNameError: for an unknown ``name``, listing the valid ones.

    Example:
        >>> build_kernel_net("siren", 2, 4, hidden_channels=8).out_features
        4
    """
    cls = KERNEL_NETS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise unknown_name("kernel_net", name, KERNEL_NETS)
    check_known(options, kernel_net_options(name), f"option(s) of kernel net {name!r}")
    return cls(in_features, out_features, hidden_channels, num_layers, **options)


def kernel_net_options(name: str) -> list[str]:
    """The keyword options the kernel net ``name`` accepts beyond the positional sizes (``build_kernel_net``)."""
    cls = KERNEL_NETS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise unknown_name("kernel_net", name, KERNEL_NETS)
    params = inspect.signature(cls.__init__).parameters
    sizes = ("self", "in_features", "out_features", "hidden_channels", "num_layers")
    return [p for p in params if p not in sizes]

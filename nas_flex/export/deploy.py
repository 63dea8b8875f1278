"""The deployable model: a trained nas_flex model with every learned size frozen into plain PyTorch modules.

* a spatial registry layer (conv, mixed, flexconv, njet, envelope) becomes its ``to_conv2d()``: an ``nn.Conv2d``
  with the cropped kernel of the grid the layer last saw;
* a frequency layer (niff, cfconv) becomes ``FixedCircularConv2d``: its spectrum for the input size it last saw,
  stored as buffers, applied with rfft2 / irfft2 (no MLP); another input size raises;
* N-Jet safe-subsampling (``SafeSubsample2d``) becomes ``FixedSubsample2d`` with the final sigma frozen;
* a ``Pool2d`` max / avg / none step becomes its plain torch op.

Everything else (BatchNorm, ReLU, Linear, ...) is kept as it is. The result scripts with TorchScript, exports
with ``torch.export`` and to ONNX (the frequency layers' FFTs become ONNX ``DFT`` ops), and in eval mode gives the
trained model's output on inputs of the size it was frozen for.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas_flex.errors import EquivalenceError, ExportError

__all__ = [
    "ExportError",
    "EquivalenceError",
    "FixedCircularConv2d",
    "FixedSubsample2d",
    "to_deployable",
    "check_outputs_match",
]


class FixedCircularConv2d(nn.Module):
    """A circular convolution with a fixed kernel, given as its rfft2 spectrum for one input size.

    The frozen form of a frequency-domain layer (NIFF, CF-Conv): ``y[o] = irfft2(sum_i rfft2(x[i]) K[o, i]) + b[o]``.
    The spectrum and bias are buffers (nothing to train, no kernel net).

    Args:
        spectrum: complex (C_out, C_in, H, W // 2 + 1), the layer's ``frequency_kernel((H, W))``.
        size: (H, W), the input size the spectrum is for.
        bias: (C_out,) or None.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W), only for the (H, W) given; another size raises.
    """

    def __init__(self, spectrum: Tensor, size: tuple[int, int], bias: Tensor | None = None) -> None:
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if spectrum.dim() != 4 or spectrum.shape[-2:] != (h, w // 2 + 1):
            raise ExportError(
                f"FixedCircularConv2d: `spectrum` must be (C_out, C_in, {h}, {w // 2 + 1}) for a {h}x{w} input, "
                f"but got shape {tuple(spectrum.shape)}"
            )
        spectrum = spectrum.detach()
        # real and imaginary parts as two real buffers: safetensors, TorchScript and torch.export all take them
        self.register_buffer("spectrum_real", spectrum.real.contiguous().clone())
        self.register_buffer("spectrum_imag", spectrum.imag.contiguous().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.height = h
        self.width = w
        self.in_channels = int(spectrum.shape[1])
        self.out_channels = int(spectrum.shape[0])

    @classmethod
    def from_layer(cls, layer: nn.Module) -> FixedCircularConv2d:
        """Freeze a frequency layer (anything with ``frequency_kernel(size)``) at the input size it last saw."""
        size = getattr(layer, "last_input_size", None)
        if size is None:
            raise ExportError(
                f"{type(layer).__name__} has not seen an input yet: run the model on an example before freezing it "
                "(the fixed kernel is for the input size it last saw)"
            )
        with torch.no_grad():
            spectrum = layer.frequency_kernel(tuple(size))
        return cls(spectrum, tuple(size), getattr(layer, "bias", None))

    def spatial_kernel(self) -> Tensor:
        """The equivalent circular spatial kernel (C_out, C_in, H, W) (tap (0, 0) at index (0, 0))."""
        spec = torch.complex(self.spectrum_real, self.spectrum_imag)
        return torch.fft.irfft2(spec, s=(self.height, self.width))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2] != self.height or x.shape[-1] != self.width:
            raise RuntimeError(
                "FixedCircularConv2d: this frozen frequency-domain kernel is for inputs of size "
                f"{self.height}x{self.width} (N, C, H, W); got another shape. Export again for that input size."
            )
        dtype = x.dtype
        # (N, C_in, H, W) -> real and imaginary parts (N, C_in, H, Wf). The channel mix is written in real arithmetic
        # (four real einsums) because the ONNX exporter has no complex einsum; rfft2 / irfft2 map to ONNX DFT.
        xf = torch.view_as_real(torch.fft.rfft2(x.float()))
        xr, xi = xf[..., 0], xf[..., 1]
        kr, ki = self.spectrum_real, self.spectrum_imag  # (C_out, C_in, H, Wf)
        yr = torch.einsum("nihw,oihw->nohw", xr, kr) - torch.einsum("nihw,oihw->nohw", xi, ki)
        yi = torch.einsum("nihw,oihw->nohw", xr, ki) + torch.einsum("nihw,oihw->nohw", xi, kr)
        y = torch.fft.irfft2(torch.complex(yr, yi), s=[self.height, self.width])  # (N, C_out, H, W)
        bias = self.bias
        if bias is not None:
            y = y + bias.view(1, -1, 1, 1)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.height}x{self.width} "
                f"(fixed, circular), bias={self.bias is not None}")


class FixedSubsample2d(nn.Module):
    """N-Jet safe-subsampling with a frozen sigma: a side n becomes max(1, round(n * 2^(-sigma / r))).

    Args:
        sigma: the final sigma (pixels) of the N-Jet layer before it.
        r: the safe-subsampling hyperparameter.
        mode: "bilinear", "nearest" or "area" (as ``SafeSubsample2d``).

    Shape:
        (N, C, H, W) -> (N, C, H', W').
    """

    def __init__(self, sigma: float, r: float = 4.0, mode: str = "bilinear") -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.r = float(r)
        self.mode = mode
        # the same float expression as nas_flex.functional.njet.safe_subsample_size, so sizes agree exactly
        self.factor = 0.5 ** (self.sigma / self.r)

    def _side(self, n: int) -> int:
        return max(1, min(n, int(math.floor(n * self.factor + 0.5))))

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[-2]
        w = x.shape[-1]
        oh = self._side(h)
        ow = self._side(w)
        if oh == h and ow == w:
            return x
        if self.mode == "bilinear":
            return F.interpolate(x, size=[oh, ow], mode="bilinear", align_corners=False)
        return F.interpolate(x, size=[oh, ow], mode=self.mode)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:.4f} (frozen), r={self.r:g}, mode={self.mode!r}"


def _frozen(module: nn.Module) -> nn.Module | None:
    """The plain replacement of one module, or None to keep it (and look inside it)."""
    from nas_flex.layers.base import KernelLayer
    from nas_flex.layers.njet import SafeSubsample2d
    from nas_flex.layers.pooling import Pool2d

    if isinstance(module, KernelLayer):
        if module.domain == "frequency":
            return FixedCircularConv2d.from_layer(module)
        return module.to_conv1d() if module.spatial_dims == 1 else module.to_conv2d()
    if isinstance(module, SafeSubsample2d):
        return FixedSubsample2d(module.current_sigma(), module.r, module.mode)
    if isinstance(module, Pool2d) and module.mode in ("max", "avg", "none"):
        return copy.deepcopy(module.op)
    return None


def _replace(parent: nn.Module) -> None:
    for name, child in list(parent.named_children()):
        new = _frozen(child)
        if new is None:
            _replace(child)
        else:
            setattr(parent, name, new)


@torch.no_grad()
def to_deployable(model: nn.Module, example: Tensor | None = None) -> nn.Module:
    """A plain-PyTorch copy of a trained nas_flex model, in eval mode, with every learned size frozen.

    Args:
        model: the trained model (left unchanged).
        example: a batch of real inputs (N, C, H, W). The model is run on it in eval mode first, so every layer
            knows the grid it works on (N-Jet's kernel cap and the frequency layers' kernels depend on it). Omit it
            only if the model has just been run on inputs of the deployment size.

    Returns:
        The deployable module (eval mode): no ``KernelLayer``, no kernel net, no ``SafeSubsample2d``.
    """
    from nas_flex.layers.base import KernelLayer

    was_training = model.training
    model.eval()
    try:
        if example is not None:
            model(example)
        plain = copy.deepcopy(model)
    finally:
        model.train(was_training)
    plain.eval()
    root = _frozen(plain)
    if root is not None:
        plain = root
    else:
        _replace(plain)
    leftover = [n for n, m in plain.named_modules() if isinstance(m, KernelLayer)]
    if leftover:
        raise ExportError(f"to_deployable left learned-size layers in the model: {leftover}")
    return plain.eval()


def check_outputs_match(reference: Tensor, candidate: Tensor, *, rtol: float = 1e-4, what: str = "deployable model",
                        ) -> float:
    """Raise ``EquivalenceError`` unless ``candidate`` equals ``reference`` up to ``rtol`` relative to the output's
    scale (max |reference|, at least 1e-6); return the largest difference relative to that scale."""
    if reference.shape != candidate.shape:
        raise EquivalenceError(f"the {what}'s output has shape {tuple(candidate.shape)}, the trained model's "
                               f"{tuple(reference.shape)}")
    scale = max(float(reference.abs().max()) if reference.numel() else 0.0, 1e-6)
    diff = float((reference - candidate).abs().max()) if reference.numel() else 0.0
    rel = diff / scale
    if not math.isfinite(rel) or rel > rtol:
        raise EquivalenceError(
            f"the {what} does not reproduce the trained model: max |difference| = {diff:.3g}, {rel:.3g} of the "
            f"output scale {scale:.3g}, above the tolerance rtol={rtol:g}. The export is not trustworthy; please "
            "report this with the architecture JSON."
        )
    return rel

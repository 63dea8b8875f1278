"""'Same'-size stride-1 convolution, spatial or by FFT, and the choice between them.

Every layer in nas_flex ends in ``conv2d_same(x, weight, bias)``: the layer generates its (cropped) kernel once per
forward, and this op runs it the cheaper way. The FFT path is exact linear (zero-padded) cross-correlation, the same
operation as ``F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2))``, for odd kernel sides of any aspect ratio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nas_flex.errors import HyperparameterError, ShapeError

__all__ = [
    "conv2d_same", "fft_conv2d", "choose_conv_method", "fft_flops", "next_fast_len", "FFT_CROSSOVER",
    "WIDE_KERNEL_PENALTY", "fft_conv_flops", "spatial_conv_flops", "CONSTANTS_FILE", "read_conv_constants",
]

Method = Literal["auto", "spatial", "fft"]

# The FFT path is taken when (estimated spatial flops x penalty) > FFT_CROSSOVER x (estimated FFT-path flops).
# Calibrated with experiments/bench_fft_crossover.py (batch 16, 32 -> 32 channels, 32x32 and 64x64, forward +
# backward). On the 2-core x86 CPU the measured break-even sits at a flop ratio of 27-39 for kernels up to 13 px
# wide, and the direct convolution falls off a cliff (about 5x slower per flop) once the kernel is 15 px or more
# *wide* (oneDNN's fast path; tall-narrow kernels stay fast): so FFT wins from k = 15 for square kernels, and a
# 7x27 crop goes to FFT while a 27x7 one stays spatial. CUDA has not been measured on this project's machines yet;
# its value is a conservative guess (cuDNN is efficient at every size) until the benchmark is run on a GPU.
# Measured constants for a device type replace these defaults from CONSTANTS_FILE when it exists (below).
FFT_CROSSOVER: dict[str, float] = {"cpu": 32.0, "cuda": 10.0}
# (kernel width from which the direct convolution is slower per flop, factor), per device type
WIDE_KERNEL_PENALTY: dict[str, tuple[int, float]] = {"cpu": (15, 5.0)}

#: Per-device constants fitted to measurements (``python -m experiments.gpu_check --apply`` writes it), read once at
#: import; when it is absent the defaults above hold. JSON: {device_type: {"fft_crossover": float,
#: "wide_kernel_penalty": [width, factor] or null, ...notes}}.
CONSTANTS_FILE = Path(__file__).with_name("conv_constants.json")


def read_conv_constants(path: str | Path) -> dict[str, tuple[float, tuple[int, float] | None]]:
    """The per-device constants in a constants file: {device_type: (fft_crossover, wide_kernel_penalty or None)}.

    Raises:
        HyperparameterError: the file is not JSON of that shape (a positive crossover; a penalty of a width >= 1
            and a factor > 0, or null), naming the file and the entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HyperparameterError(f"conv constants file {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise HyperparameterError(f"conv constants file {str(path)!r} must hold an object of device types")
    return {str(device): _device_constants(path, str(device), entry) for device, entry in data.items()}


def _device_constants(path: Path, device: str, entry: Any) -> tuple[float, tuple[int, float] | None]:
    where = f"conv constants file {str(path)!r}, device {device!r}"
    crossover = entry.get("fft_crossover") if isinstance(entry, dict) else None
    if isinstance(crossover, bool) or not isinstance(crossover, (int, float)) or not 0 < crossover < math.inf:
        raise HyperparameterError(f"{where}: `fft_crossover` must be a positive number, but got {crossover!r}")
    penalty = entry.get("wide_kernel_penalty")
    if penalty is None:
        return float(crossover), None
    if (not isinstance(penalty, list) or len(penalty) != 2 or not isinstance(penalty[0], int)
            or not isinstance(penalty[1], (int, float)) or penalty[0] < 1 or not 0 < penalty[1] < math.inf):
        raise HyperparameterError(f"{where}: `wide_kernel_penalty` must be null or [width >= 1, factor > 0], "
                                  f"but got {penalty!r}")
    return float(crossover), (int(penalty[0]), float(penalty[1]))


def _use_measured_constants(path: Path) -> None:
    if not path.is_file():
        return
    for device, (crossover, penalty) in read_conv_constants(path).items():
        FFT_CROSSOVER[device] = crossover
        if penalty is None:
            WIDE_KERNEL_PENALTY.pop(device, None)
        else:
            WIDE_KERNEL_PENALTY[device] = penalty


_use_measured_constants(CONSTANTS_FILE)


def next_fast_len(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast for pocketfft and cuFFT)."""
    if n < 1:
        raise ValueError(f"`n >= 1` must hold, but got {n=}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_flops(shape: tuple[int, ...]) -> float:
    """Real flops of one complex FFT over the last ``len(shape)`` axes: about 5 N log2 N for N points.

    torch's FlopCounterMode does not count FFTs; nas_flex meters them with this so frequency-domain layers are not
    reported as free. A real-input FFT (rfft) costs about half of this.
    """
    n = math.prod(shape)
    return 5.0 * n * math.log2(n) if n > 1 else 0.0


def fft_conv_flops(n: int, c_in: int, c_out: int, h: int, w: int, kh: int, kw: int) -> float:
    """Approximate real flops of ``fft_conv2d`` forward (FFTs of input, kernel and output plus the channel mix)."""
    hf, wf = next_fast_len(h + kh - 1), next_fast_len(w + kw - 1)
    freq = hf * (wf // 2 + 1)
    ffts = 0.5 * fft_flops((hf, wf)) * (n * c_in + c_in * c_out + n * c_out)
    mix = 8.0 * n * c_in * c_out * freq  # complex multiply-add = 8 real flops
    return ffts + mix


def spatial_conv_flops(n: int, c_in: int, c_out: int, h: int, w: int, kh: int, kw: int) -> float:
    """Real flops of the direct convolution forward (one multiply-add per tap, input pixel and channel pair)."""
    return 2.0 * n * c_in * c_out * h * w * kh * kw


def choose_conv_method(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], device_type: str = "cpu") -> str:
    """'spatial' or 'fft': whichever the flop model, calibrated per device type, says is cheaper."""
    n, c_in, h, w = x_shape
    c_out, c_in_w, kh, kw = weight_shape
    if kh * kw <= 9:  # 3x3 and smaller: direct convolution always wins (im2col / cuDNN are tuned for them)
        return "spatial"
    spatial = spatial_conv_flops(max(n, 1), c_in_w, c_out, h, w, kh, kw)
    wide, penalty = WIDE_KERNEL_PENALTY.get(device_type, (0, 1.0))
    if wide and kw >= wide:
        spatial *= penalty
    fft = fft_conv_flops(max(n, 1), c_in, c_out, h, w, kh, kw)
    ratio = FFT_CROSSOVER.get(device_type, FFT_CROSSOVER["cpu"])
    return "fft" if spatial > ratio * fft else "spatial"


def _check_weight(x: Tensor, weight: Tensor, op: str) -> tuple[int, int]:
    if x.dim() != 4:
        raise ShapeError(f"{op}: `x` must have shape (N, C_in, H, W), but got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ShapeError(f"{op}: `weight` must have shape (C_out, C_in, kh, kw), but got shape {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ShapeError(f"{op}: kernel sides must be odd for a centred 'same' convolution, but got {kh}x{kw}")
    if weight.shape[1] != x.shape[1]:
        raise ShapeError(
            f"{op}: `weight` expects C_in={weight.shape[1]} but `x` has C_in={x.shape[1]} (shape {tuple(x.shape)})"
        )
    return kh, kw


def fft_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """'Same' cross-correlation by FFT, equal to ``F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2))``.

    The input is zero-padded to a fast FFT length of at least H + kh - 1 (so no circular wrap-around), both are
    transformed with rfft2, the channels are mixed per frequency as one batched complex matmul, and the centre
    H x W of the inverse transform is returned. Under autocast it computes in float32 (cuFFT's half precision
    only takes power-of-two sizes).

    Args:
        x: input (N, C_in, H, W).
        weight: kernel (C_out, C_in, kh, kw), odd kh and kw; any size, also larger than the input.
        bias: (C_out,) or None.

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)

    Example:
        >>> import torch, torch.nn.functional as F
        >>> x, w = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 7, 5)
        >>> torch.allclose(fft_conv2d(x, w), F.conv2d(x, w, padding=(3, 2)), atol=1e-4)
        True
    """
    kh, kw = _check_weight(x, weight, "fft_conv2d")
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    weight = weight.to(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        hf, wf = next_fast_len(h + kh - 1), next_fast_len(w + kw - 1)
        xf = torch.fft.rfft2(x, s=(hf, wf))  # (N, C_in, Hf, Wf//2+1)
        # cross-correlation = convolution with the flipped kernel
        kf = torch.fft.rfft2(weight.flip(-2, -1), s=(hf, wf))  # (C_out, C_in, Hf, Wf//2+1)
        fh, fw = xf.shape[-2:]
        # per-frequency channel mix as one batched matmul: (F, N, C_in) @ (F, C_in, C_out) -> (F, N, C_out)
        xm = xf.permute(2, 3, 0, 1).reshape(fh * fw, n, c_in)
        km = kf.permute(2, 3, 1, 0).reshape(fh * fw, c_in, c_out)
        yf = torch.bmm(xm, km).reshape(fh, fw, n, c_out).permute(2, 3, 0, 1)  # (N, C_out, Hf, Wf//2+1)
        y = torch.fft.irfft2(yf, s=(hf, wf))
        ph, pw = kh // 2, kw // 2
        y = y[..., ph : ph + h, pw : pw + w]  # centre H x W of the full linear convolution
        if bias is not None:
            y = y + bias.to(y.dtype).view(1, c_out, 1, 1)
    return y.to(out_dtype).contiguous()


def conv2d_same(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, method: Method = "auto") -> Tensor:
    """'Same' stride-1 cross-correlation with an odd kernel, spatially or by FFT, whichever is cheaper.

    Args:
        x: input (N, C_in, H, W).
        weight: kernel (C_out, C_in, kh, kw) with odd kh, kw.
        bias: (C_out,) or None.
        method: "auto" (flop model calibrated on this project's benchmark), "spatial" or "fft".

    Shape:
        (N, C_in, H, W) -> (N, C_out, H, W)
    """
    kh, kw = _check_weight(x, weight, "conv2d_same")
    if method == "auto":
        method = choose_conv_method(tuple(x.shape), tuple(weight.shape), x.device.type)  # type: ignore[assignment]
    if method == "fft":
        return fft_conv2d(x, weight, bias)
    if method != "spatial":
        raise HyperparameterError(f"`method` must be 'auto', 'spatial' or 'fft', but got {method=!r}")
    # a generated kernel is often a permuted view (kernel nets emit (positions, C_out * C_in)); oneDNN runs a
    # strided weight through a much slower path, forward and backward, so hand it a contiguous one
    return F.conv2d(x, weight.contiguous(), bias, padding=(kh // 2, kw // 2))

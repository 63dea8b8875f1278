"""NIFF (registered "niff"): circular convolution with MLP-generated frequency filters.

Feature tests against an independent float64 reference (a circular convolution written with shifts, no FFT), the
Hermitian property, resampling across input sizes, gradcheck, the paper's MLP sizes and the errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas_flex.errors import HyperparameterError, NonFiniteError
from nas_flex.functional.niff import circular_conv2d_rfft
from nas_flex.kernels.frequency import rfft_grid, rfft_to_full
from nas_flex.kernels.mass import continuous_size_from_mass, effective_size_from_mass
from nas_flex.layers import build
from nas_flex.layers.frequency import DEFAULT_GRID
from nas_flex.layers.niff import NIFFConv


def circular_conv_reference(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y[n, o, p] = sum_i sum_q k[o, i, q] x[n, i, p - q (mod H, W)], by explicit shifts (float64)."""
    x, k = x.double(), k.double()
    h, w = x.shape[-2:]
    y = torch.zeros(x.shape[0], k.shape[0], h, w, dtype=torch.float64)
    for qy in range(h):
        for qx in range(w):
            shifted = torch.roll(x, shifts=(qy, qx), dims=(-2, -1))  # shifted[p] = x[p - q]
            y += torch.einsum("oi,nihw->nohw", k[:, :, qy, qx], shifted)
    if bias is not None:
        y += bias.double().view(1, -1, 1, 1)
    return y


def make(mode: str = "separable", c_in: int = 3, c_out: int = 4, **kw) -> NIFFConv:
    return build("niff", c_in, c_out, mode=mode, dtype=torch.float64, **kw)


@pytest.mark.parametrize("mode", ["separable", "full"])
@pytest.mark.parametrize("hw", [(7, 10), (8, 5), (6, 6)])
def test_output_is_a_circular_convolution_with_spatial_kernel(mode, hw):
    layer = make(mode)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    y = layer(x)
    k = layer.spatial_kernel()
    assert k.shape == (4, 3, *hw)
    torch.testing.assert_close(y, circular_conv_reference(x, k, layer.bias), rtol=1e-10, atol=1e-10)


def test_separable_equals_its_composed_full_kernel():
    """The separable path (depthwise, mix in frequency, one iFFT) equals a full conv with the composed kernel."""
    layer = make("separable", mlp="light")
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y = layer(x)
    composed = layer.frequency_kernel((9, 8))
    assert composed.shape == (4, 3, 9, 5)
    torch.testing.assert_close(y, circular_conv2d_rfft(x, composed, layer.bias), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["separable", "full"])
@pytest.mark.parametrize("hw", [(7, 10), (8, 6)])
def test_spectrum_is_hermitian(mode, hw):
    """The full spectrum rebuilt from the layer's half-spectrum inverts to a real kernel: no imaginary part."""
    layer = make(mode)
    spec = layer.frequency_kernel(hw)
    kernel = torch.fft.ifft2(rfft_to_full(spec, hw[1]))
    assert kernel.imag.abs().max() < 1e-14
    torch.testing.assert_close(kernel.real, torch.fft.irfft2(spec, s=hw), rtol=1e-12, atol=1e-12)
    # the raw MLP output is not Hermitian on its own: without the projection this test would fail
    out = layer.filter_mlp(rfft_grid(*hw, dtype=torch.float64).flatten(1).T)
    raw = torch.complex(out[0], out[1]).T.reshape(-1, hw[0], hw[1] // 2 + 1)
    assert torch.fft.ifft2(rfft_to_full(raw, hw[1])).imag.abs().max() > 1e-3


def test_the_continuous_filter_is_resampled_for_a_new_size():
    """Normalised frequencies: the grid of a 2H x 2W input contains the H x W grid at even indices."""
    layer = make("full")
    small = layer.filters((6, 10))
    large = layer.filters((12, 20))
    torch.testing.assert_close(large[..., ::2, ::2], small, rtol=1e-12, atol=1e-12)
    for hw in [(6, 10), (13, 7), (12, 20)]:  # sizes change between calls; the kernel follows
        layer(torch.randn(1, 3, *hw, dtype=torch.float64))
        assert layer.last_input_size == hw and layer.spatial_kernel().shape == (4, 3, *hw)


def test_non_square_inputs_keep_their_orientation():
    """A filter that only varies with f_x (a horizontal blur) must blur along W, also for H != W."""
    layer = make("full", c_in=1, c_out=1, bias=False)
    with torch.no_grad():
        for p in layer.filter_mlp.parameters():
            p.zero_()
        layer.filter_mlp.weights[0][0, 0, 1] = 1.0  # hidden unit 0 of the real MLP: relu(f_x)
        layer.filter_mlp.weights[0][0, 1, 1] = -1.0  # hidden unit 1: relu(-f_x)
        layer.filter_mlp.weights[1][0, 0, :2] = -1.0
        layer.filter_mlp.biases[1][0, 0] = 1.0  # real part = 1 - |f_x|: a low-pass along W only
    x = torch.zeros(1, 1, 5, 9, dtype=torch.float64)
    x[0, 0, 2, 4] = 1.0
    y = layer(x)[0, 0]
    assert torch.allclose(y[[0, 1, 3, 4]], torch.zeros(()).double(), atol=1e-12)  # nothing leaks into other rows
    assert (y[2].abs() > 1e-3).sum() > 1  # spread along the row
    assert layer.effective_kernel_size[0] == 1.0 and layer.effective_kernel_size[1] > 1.0


def test_a_flat_spectrum_is_a_1x1_convolution():
    layer = make("separable")
    with torch.no_grad():
        for p in layer.filter_mlp.parameters():
            p.zero_()
        layer.filter_mlp.biases[-1][0].fill_(1.0)  # K = 1 + 0j at every frequency: a delta kernel
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    want = F.conv2d(x, layer.pointwise[:, :, None, None], layer.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)
    assert layer.effective_kernel_size == (1.0, 1.0)


def test_effective_kernel_size_is_the_continuous_90_percent_mass_window():
    layer = make("full")
    assert layer.spatial_kernel().shape == (4, 3, *DEFAULT_GRID)  # before the first forward: the default grid
    before = layer.effective_kernel_size
    assert all(1 <= s <= 32 for s in before)
    layer(torch.randn(1, 3, 12, 9, dtype=torch.float64))
    got = layer.effective_kernel_size
    assert got == continuous_size_from_mass(layer.spatial_kernel(), 0.9, circular=True)
    assert got[0] <= 12 and got[1] <= 9
    rec = layer.size_record()
    assert rec["mode"] == "full" and (rec["grid_height"], rec["grid_width"]) == (12, 9)
    window = effective_size_from_mass(layer.spatial_kernel(), 0.9, circular=True)
    assert (rec["window_height"], rec["window_width"]) == window  # the integer window stays as a record field
    assert all(w - 2 <= g <= w for g, w in zip(got, window))  # the continuous side lies in the last ring of taps
    assert 0 <= rec["mass_in_3x3"] <= 1


def test_size_moves_continuously_with_the_kernel():
    """Sliding the MLP's parameters from a 1x1 kernel towards a wide one moves the size in small steps; the integer
    90 % window jumps by whole rings of taps (1 -> 3 -> ...)."""
    layer = make("full", c_in=1, c_out=1, bias=False)
    with torch.no_grad():
        start = [p.clone() for p in layer.filter_mlp.parameters()]
        for p in layer.filter_mlp.parameters():
            p.zero_()
        layer.filter_mlp.biases[-1][0].fill_(1.0)  # a flat spectrum: the delta kernel
        delta = [p.clone() for p in layer.filter_mlp.parameters()]
    sizes = []
    for t in torch.linspace(0, 1, 201):
        with torch.no_grad():
            for p, a, b in zip(layer.filter_mlp.parameters(), delta, start):
                p.copy_((1 - t) * a + t * b)
        sizes.append(layer.effective_kernel_size)
    steps = torch.tensor(sizes).diff(dim=0).abs()
    assert sizes[0] == (1.0, 1.0) and max(sizes[-1]) > 5  # it does travel
    assert steps.max() < 0.5, f"the size jumped by {float(steps.max()):.2f} px between neighbouring kernels"


@pytest.mark.parametrize("mode", ["separable", "full"])
def test_gradcheck_including_the_mlp(mode):
    layer = make(mode, c_in=2, c_out=2, mlp="light")
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def f(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    ("mlp", "widths", "act"),
    [("small", [2, 32, 3], "relu"), ("large", [2, 16, 128, 32, 3], "silu"), ("light", [2, 8, 4, 3], "silu")],
)
def test_mlp_sizes_as_in_the_paper(mlp, widths, act):
    layer = build("niff", 3, 5, mlp=mlp)
    shapes = [tuple(w.shape) for w in layer.filter_mlp.weights]
    assert shapes == [(2, o, i) for i, o in zip(widths[:-1], widths[1:])]  # separate real and imaginary MLPs
    assert layer.filter_mlp.activation == act
    full = build("niff", 3, 5, mode="full", mlp=mlp)
    assert full.filter_mlp.weights[-1].shape[1] == 15  # C_out x C_in filters


def test_bad_hyperparameters_are_named():
    with pytest.raises(HyperparameterError, match=r"`mode` must be one of \['separable', 'full'\].*'depthwise'"):
        build("niff", 3, 4, mode="depthwise")
    with pytest.raises(HyperparameterError, match=r"`mlp` must be one of .*'huge'"):
        build("niff", 3, 4, mlp="huge")
    with pytest.raises(HyperparameterError, match="bias"):
        build("niff", 3, 4, bias="yes")


def test_autocast_computes_the_ffts_in_float32():
    layer = build("niff", 3, 4)
    x = torch.randn(2, 3, 9, 7)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_repr_is_exact_and_leaves_defaults_out():
    layer = build("niff", 3, 4)
    h, w = layer.effective_kernel_size
    assert layer.extra_repr() == f"3, 4, kernel_size={h:.1f}x{w:.1f} (learned, 90% mass on the default 32x32 grid)"
    assert layer.filter_mlp.extra_repr() == "2 -> 32 -> 3, activation=relu, x2 (real, imaginary)"
    layer(torch.randn(1, 3, 12, 10))
    h, w = layer.effective_kernel_size
    assert (h, w) != pytest.approx(DEFAULT_GRID)  # the size follows the new grid
    assert layer.extra_repr() == f"3, 4, kernel_size={h:.1f}x{w:.1f} (learned, 90% mass on a 12x10 grid)"
    layer = build("niff", 3, 4, mode="full", mlp="large", bias=False)
    h, w = layer.effective_kernel_size
    assert layer.extra_repr() == (
        f"3, 4, kernel_size={h:.1f}x{w:.1f} (learned, 90% mass on the default 32x32 grid), mode='full', "
        "mlp='large', bias=False"
    )
    assert layer.filter_mlp.extra_repr() == "2 -> 16 -> 128 -> 32 -> 12, activation=silu, x2 (real, imaginary)"
    assert build("niff", 3, 4, device="meta").extra_repr() == (
        "3, 4, kernel_size=? (learned, 90% mass; meta device) on the default 32x32 grid"
    )


@pytest.mark.gpu
def test_cuda_matches_cpu():
    layer = make("full")
    x = torch.randn(2, 3, 9, 6, dtype=torch.float64)
    want = layer(x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), want, rtol=1e-9, atol=1e-9)


def test_a_nan_in_the_mlp_is_caught_where_it_arises():
    layer = build("niff", 3, 4)
    with torch.no_grad():
        layer.filter_mlp.weights[0][1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NIFFConv"):
        layer(torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------- the authors' build
def full_plane_reference_kernels(layer: NIFFConv, h: int, w: int) -> torch.Tensor:
    """The authors' construction in float64, written independently: the MLP (F.linear) at every frequency of the
    full fft2 plane (integer index i -> (i or i - n) * 2 / n, so an even axis has -1 at n / 2), complex filters,
    and the real part of their ifft2 (= the filter of their Hermitian part). Separable: composed with the 1x1 mix.
    Returns (C_out, C_in, H, W)."""

    def freqs(n: int) -> torch.Tensor:
        return torch.tensor([(i if i < (n + 1) // 2 else i - n) * 2.0 / n for i in range(n)], dtype=torch.float64)

    coords = torch.stack(torch.meshgrid(freqs(h), freqs(w), indexing="ij"), dim=-1)  # (H, W, 2)
    act = torch.relu if layer.filter_mlp.activation == "relu" else F.silu
    parts = []
    for part in range(2):
        z = coords
        for index, (wt, b) in enumerate(zip(layer.filter_mlp.weights, layer.filter_mlp.biases)):
            if index:
                z = act(z)
            z = F.linear(z, wt[part].double(), b[part].double())
        parts.append(z)
    spectrum = torch.complex(parts[0], parts[1]).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    kernels = torch.fft.ifft2(spectrum).real
    if layer.mode == "separable":
        return layer.pointwise.double()[:, :, None, None] * kernels[None]
    return kernels.reshape(layer.out_channels, layer.in_channels, h, w) / math.sqrt(layer.in_channels)


@pytest.mark.parametrize("mode", ["separable", "full"])
@pytest.mark.parametrize("hw", [(7, 10), (8, 6), (9, 9)])
def test_kernel_is_the_hermitian_part_of_a_full_plane_evaluation(mode, hw):
    layer = make(mode)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    y = layer(x)
    want = full_plane_reference_kernels(layer, *hw)
    torch.testing.assert_close(layer.spatial_kernel(), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, circular_conv_reference(x, want, layer.bias), rtol=1e-10, atol=1e-10)


def test_a_constant_complex_filter_is_a_1x1_kernel():
    """M = 1 + 0.3j everywhere: its Hermitian part is 1, a delta (mirroring the half-plane instead makes the
    imaginary part a Hilbert transform along the width, 1 x 11 on this grid)."""
    layer = make("full", c_in=1, c_out=1, bias=False)
    with torch.no_grad():
        for p in layer.filter_mlp.parameters():
            p.zero_()
        layer.filter_mlp.biases[-1][0].fill_(1.0)
        layer.filter_mlp.biases[-1][1].fill_(0.3)
    layer(torch.randn(1, 1, 16, 16, dtype=torch.float64))
    assert layer.effective_kernel_size == (1.0, 1.0)


# ------------------------------------------------------------------------------------------------------- stem
def test_separable_on_one_input_channel_is_refused_naming_the_fix():
    with pytest.raises(HyperparameterError, match="mode='full'.*spatial stem"):
        NIFFConv(1, 8)
    assert NIFFConv(1, 8, mode="full").mode == "full"  # the fix the message names works
    assert NIFFConv(2, 8).mode == "separable"


def test_backbones_keep_a_spatial_stem():
    from nas_flex.layers.conv import Conv
    from nas_flex.models import build as build_model

    model = build_model({"backbone": "simple", "depth": 4, "width": 8, "conv": "niff"}, in_channels=1, num_classes=3)
    convs = [m for m in model.modules() if isinstance(m, (Conv, NIFFConv))]
    assert isinstance(convs[0], Conv) and convs[0].kernel_size == (NIFFConv.spatial_stem,) * 2
    assert len(convs) == 4 and all(isinstance(m, NIFFConv) and m.mode == "separable" for m in convs[1:])
    resnet = build_model({"backbone": "resnet", "depth": 20, "width": 8, "conv": "niff"}, in_channels=3, num_classes=3)
    assert isinstance(resnet.stem[0], Conv)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)

"""CF-Conv (registered "cfconv"): Fourier-domain kernels from an MLP, trained by sparse EMA updates of a state.

Feature tests against independent float64 references (a circular convolution written with shifts; the MLP and its
coordinates rebuilt from the parameters with plain F.linear), the EMA step, the state's life cycle (state_dict,
size changes), Hermitian symmetry, gradcheck, and the allocation bound of a sparse step.
"""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from nas_flex.errors import HyperparameterError, NonFiniteError, ShapeError
from nas_flex.functional.cfconv import sample_positions
from nas_flex.kernels.frequency import rfft_to_full
from nas_flex.layers import build
from nas_flex.layers.cfconv import CFConv
from nas_flex.train.metering import AllocatedBytes


def circular_conv_reference(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y[n, o, p] = sum_i sum_q k[o, i, q] x[n, i, p - q (mod H, W)], by explicit shifts (float64)."""
    x, k = x.double(), k.double()
    h, w = x.shape[-2:]
    y = torch.zeros(x.shape[0], k.shape[0], h, w, dtype=torch.float64)
    for qy in range(h):
        for qx in range(w):
            y += torch.einsum("oi,nihw->nohw", k[:, :, qy, qx], torch.roll(x, shifts=(qy, qx), dims=(-2, -1)))
    if bias is not None:
        y += bias.double().view(1, -1, 1, 1)
    return y


def _freqs(n: int) -> torch.Tensor:
    """Normalised frequencies of the full fft2 axis, written out: index i -> (i or i - n) * 2 / n (-1 at n / 2)."""
    return torch.tensor([(i if i < (n + 1) // 2 else i - n) * 2.0 / n for i in range(n)], dtype=torch.float64)


def reference_full_plane(layer: CFConv, h: int, w: int) -> torch.Tensor:
    """The MLP at every position of the full fft2 plane, complex (H, W, C_in, C_out), from the parameters with
    F.linear (float64): the joint MLP of (f_y, f_x, c_in, c_out), or per pair its own MLP of (f_y, f_x)."""
    c_in, c_out = layer.in_channels, layer.out_channels
    if layer.parameterization == "per_pair":
        grid = torch.stack(torch.meshgrid(_freqs(h), _freqs(w), indexing="ij"), dim=-1)  # (H, W, 2)
        out = torch.zeros(2, h, w, c_in, c_out, dtype=torch.float64)
        for part in range(2):
            for i in range(c_in):
                for o in range(c_out):
                    z = grid
                    for layer_index, (wt, b) in enumerate(zip(layer.kernel_mlp.weights, layer.kernel_mlp.biases)):
                        if layer_index:
                            z = torch.relu(z)
                        z = F.linear(z, wt[part, i * c_out + o].double(), b[part, i * c_out + o].double())
                    out[part, :, :, i, o] = z[..., 0]
        return torch.complex(out[0], out[1])
    ci = torch.linspace(-1, 1, c_in, dtype=torch.float64) if c_in > 1 else torch.zeros(1, dtype=torch.float64)
    co = torch.linspace(-1, 1, c_out, dtype=torch.float64) if c_out > 1 else torch.zeros(1, dtype=torch.float64)
    coords = torch.stack(torch.meshgrid(_freqs(h), _freqs(w), ci, co, indexing="ij"), dim=-1)  # (H, W, C_in, C_out, 4)
    if layer.encoding != "none":  # x, then sin(2^k pi x) per encoded column and k, then the cosines
        cols = (2, 3) if layer.encoding == "channels" else (0, 1, 2, 3)
        ks = range(layer.encoding_octaves)
        sines = [torch.sin(math.pi * 2**k * coords[..., c]) for c in cols for k in ks]
        cosines = [torch.cos(math.pi * 2**k * coords[..., c]) for c in cols for k in ks]
        coords = torch.cat([coords, torch.stack(sines + cosines, dim=-1)], dim=-1)
    parts = []
    for part in range(2):  # real, imaginary
        z = coords
        for layer_index, (wt, b) in enumerate(zip(layer.kernel_mlp.weights, layer.kernel_mlp.biases)):
            if layer_index:
                z = torch.relu(z)
            z = F.linear(z, wt[part].double(), b[part].double())
        parts.append(z[..., 0])
    return torch.complex(parts[0], parts[1])


def reference_mlp_state(layer: CFConv, h: int, w: int) -> torch.Tensor:
    """The kernel values the MLP gives on the state's layout, (H, W // 2 + 1, C_in, C_out, 2): the Hermitian part
    (M(f) + conj(M(-f))) / 2 of the full-plane evaluation, at the rfft columns."""
    m = reference_full_plane(layer, h, w)
    rows = [(-r) % h for r in range(h)]
    cols = [(-c) % w for c in range(w // 2 + 1)]
    herm = 0.5 * (m[:, : w // 2 + 1] + m[rows][:, cols].conj())
    return torch.view_as_real(herm)


def reference_kernel_full_plane(layer: CFConv, h: int, w: int) -> torch.Tensor:
    """The authors' construction end to end: ifft2 of the full-plane MLP, real part, (C_out, C_in, H, W), with the
    layer's 1 / sqrt(C_in)."""
    m = reference_full_plane(layer, h, w).permute(3, 2, 0, 1)  # (C_out, C_in, H, W)
    return torch.fft.ifft2(m).real / math.sqrt(layer.in_channels)


def spectrum_of(state: torch.Tensor, c_in: int) -> torch.Tensor:
    """(H, Wf, C_in, C_out, 2) -> complex (C_out, C_in, H, Wf) with the layer's 1 / sqrt(C_in) scale."""
    return torch.view_as_complex(state.contiguous()).permute(3, 2, 0, 1) / math.sqrt(c_in)


def make(sampled=32, c_in=3, c_out=4, **kw) -> CFConv:
    return build("cfconv", c_in, c_out, sampled_positions=sampled, dtype=torch.float64, **kw)


# ------------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("sampled", [None, 32])
@pytest.mark.parametrize("hw", [(7, 10), (6, 5)])
def test_output_is_a_circular_convolution_with_spatial_kernel(sampled, hw):
    layer = make(sampled)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    for _ in range(3):
        layer(x)  # training steps (sparse updates when sampled)
    layer.eval()
    k = layer.spatial_kernel()
    assert k.shape == (4, 3, *hw)
    torch.testing.assert_close(layer(x), circular_conv_reference(x, k, layer.bias), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_dense_kernel_is_the_mlp_everywhere(parameterization):
    """sampled_positions=None: the kernel is the MLP at every (h, w, c_in, c_out) position (checks coordinates)."""
    layer = make(None, c_in=2, c_out=3, parameterization=parameterization)
    hw = (6, 7)
    x = torch.randn(1, 2, *hw, dtype=torch.float64)
    y = layer(x)
    want = reference_kernel_full_plane(layer, *hw)
    torch.testing.assert_close(layer.spatial_kernel(), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(want, torch.fft.irfft2(spectrum_of(reference_mlp_state(layer, *hw), 2), s=hw),
                               rtol=1e-10, atol=1e-12)  # the two references agree
    torch.testing.assert_close(y, circular_conv_reference(x, want, layer.bias), rtol=1e-10, atol=1e-10)
    assert layer.kernel_state is None  # no state in dense mode
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)  # deterministic in training mode


# ------------------------------------------------------------------------------------------------- EMA step
@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_ema_step_touches_only_the_sampled_positions(parameterization):
    layer = make(40, decay=0.1, parameterization=parameterization)
    hw = (8, 6)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    layer(x)  # creates the state (and takes a first step)
    before = layer.kernel_state.clone()
    y = layer(x)
    after = layer.kernel_state
    pos = layer.last_positions
    assert 0 < pos.numel() <= 40 and pos.unique().numel() == pos.numel()
    flat_before, flat_after = before.reshape(-1, 2), after.reshape(-1, 2)
    untouched = torch.ones(flat_before.shape[0], dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(flat_after[untouched], flat_before[untouched])
    # at the sampled positions: state <- decay * state + (1 - decay) * mlp (Keras' EMA: decay is the share kept)
    mlp = reference_mlp_state(layer, *hw).reshape(-1, 2)
    torch.testing.assert_close(flat_after[pos], 0.1 * flat_before[pos] + 0.9 * mlp[pos], rtol=1e-12, atol=1e-12)
    # the training forward used the updated state
    layer.eval()
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_gradients_reach_the_mlp_through_the_sampled_positions_only(parameterization):
    layer = make(24, c_in=2, c_out=2, parameterization=parameterization)
    hw = (5, 6)
    x = torch.randn(2, 2, *hw, dtype=torch.float64)
    layer(x)
    state0 = layer.kernel_state.clone()
    torch.manual_seed(7)
    layer(x).square().sum().backward()
    pos = layer.last_positions
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    # reference: kernel = state with (0.1 state + 0.9 mlp) at pos, the MLP rebuilt from the parameters
    layer.zero_grad()
    mlp = reference_mlp_state(layer, *hw).reshape(-1, 2)
    kernel = state0.reshape(-1, 2).clone()
    kernel[pos] = 0.1 * kernel[pos] + 0.9 * mlp[pos]
    k = torch.fft.irfft2(spectrum_of(kernel.reshape(state0.shape), 2), s=hw)
    circular_conv_reference(x, k, layer.bias).square().sum().backward()
    for n, p in layer.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-8, atol=1e-10, msg=n)
    assert any(g.abs().sum() > 0 for n, g in got.items() if n.startswith("kernel_mlp"))


def test_state_is_initialised_uniform_in_minus_one_one():
    layer = build("cfconv", 8, 8, sampled_positions=1)
    with torch.no_grad():
        layer(torch.randn(1, 8, 32, 32))
    s = layer.kernel_state
    assert s.shape == (32, 17, 8, 8, 2)
    assert s.min() >= -1 and s.max() <= 1
    assert abs(float(s.mean())) < 0.02 and abs(float(s.var()) - 1 / 3) < 0.02


def test_sample_positions():
    idx = sample_positions(1000, 100)
    assert idx.dtype == torch.int64 and idx.unique().numel() == idx.numel() and torch.equal(idx, idx.sort().values)
    assert 0 <= int(idx.min()) and int(idx.max()) < 1000 and 90 <= idx.numel() <= 100
    assert sample_positions(1000, 400).numel() == 400  # large shares: exactly, without replacement
    assert torch.equal(sample_positions(10, 10), torch.arange(10))
    counts = torch.bincount(torch.cat([sample_positions(20, 4) for _ in range(2000)]), minlength=20)
    assert counts.min() > 0.7 * counts.float().mean()  # roughly uniform


# ------------------------------------------------------------------------------------------------ state life
def test_state_dict_round_trip_keeps_the_state():
    a = make(30)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    for _ in range(3):
        a(x)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make(30)  # never run: adopts the checkpoint's state and size
    b.load_state_dict(torch.load(buf))
    assert torch.equal(b.kernel_state, a.kernel_state) and b.state_size == (9, 8)
    a.eval()
    b.eval()
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    c = pickle.loads(pickle.dumps(a))
    assert torch.equal(c.kernel_state, a.kernel_state) and c.state_size == a.state_size
    # a checkpoint of a layer without state drops the state
    a.load_state_dict(make(30).state_dict())
    assert a.kernel_state is None and a.state_size is None


@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_input_size_changes(parameterization):
    layer = make(50, parameterization=parameterization)
    layer(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"belongs to a 8x8 input, but training got a 9x6 input.*resize_state_\(9, 6"):
        layer(torch.randn(1, 3, 9, 6, dtype=torch.float64))
    # eval at another size: the MLP resampled on that grid, the state untouched
    layer.eval()
    state = layer.kernel_state.clone()
    x = torch.randn(1, 3, 9, 6, dtype=torch.float64)
    k = torch.fft.irfft2(spectrum_of(reference_mlp_state(layer, 9, 6), 3), s=(9, 6))
    torch.testing.assert_close(layer(x), circular_conv_reference(x, k, layer.bias), rtol=1e-10, atol=1e-10)
    assert torch.equal(layer.kernel_state, state) and layer.state_size == (8, 8)
    # resize_state_ resamples the state from the MLP; training continues at the new size
    layer.train()
    layer.resize_state_(9, 6)
    torch.testing.assert_close(layer.kernel_state, reference_mlp_state(layer, 9, 6), rtol=1e-12, atol=1e-12)
    assert layer(x).shape == (1, 4, 9, 6)
    # dense mode follows any size
    dense = make(None)
    for hw in [(8, 8), (9, 6), (5, 11)]:
        assert dense(torch.randn(1, 3, *hw, dtype=torch.float64)).shape == (1, 4, *hw)


@pytest.mark.parametrize("sampled", [None, 32])
def test_spectrum_is_hermitian(sampled):
    layer = make(sampled)
    hw = (7, 8)
    layer(torch.randn(1, 3, *hw, dtype=torch.float64))
    spec = layer.frequency_kernel()
    kernel = torch.fft.ifft2(rfft_to_full(spec, hw[1]))
    assert kernel.imag.abs().max() < 1e-14
    torch.testing.assert_close(kernel.real, layer.spatial_kernel(), rtol=1e-12, atol=1e-12)
    # the raw stored values are not Hermitian on their own: the projection is what makes the test pass
    if sampled:
        raw = layer.kernel_state
        assert torch.fft.ifft2(rfft_to_full(spectrum_of(raw, 3), hw[1])).imag.abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_gradcheck_dense(parameterization):
    layer = make(None, c_in=2, c_out=2, parameterization=parameterization, hidden_features=(4, 4))
    with torch.no_grad():  # the init's zero biases put ReLU kinks at the grid's zero coordinates: move off them
        for b in layer.kernel_mlp.biases:
            b.uniform_(-0.5, 0.5)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def f(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_sampled_in_eval():
    layer = make(16, c_in=2, c_out=2)
    layer(torch.randn(1, 2, 5, 4, dtype=torch.float64))
    layer.eval()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- memory
def _step_bytes(layer: CFConv, x: torch.Tensor) -> int:
    with AllocatedBytes() as counter:
        layer(x).sum().backward()
    return counter.total


def test_sparse_step_allocates_a_fraction_of_a_full_evaluation():
    """The paper's memory argument, for its ten-layer joint MLP (the per-pair MLPs' [2, 1] neurons are small)."""
    x = torch.randn(2, 4, 24, 24)
    sparse = build("cfconv", 4, 4, sampled_positions=2**8, parameterization="joint")
    sparse(x)  # create the state outside the measurement
    dense = build("cfconv", 4, 4, sampled_positions=None, parameterization="joint")
    assert _step_bytes(sparse, x) * 10 < _step_bytes(dense, x)


# ----------------------------------------------------------------------------------------------- options
def test_parameterizations_and_paper_mlp():
    assert build("cfconv", 3, 4).parameterization == "per_pair"  # default (docs/results.md: joint collapses)
    joint = build("cfconv", 3, 4, parameterization="joint")
    assert "parameterization='joint'" in joint.extra_repr()
    widths = [4, 32, 32, 32, 16, 16, 16, 8, 8, 8, 1]  # the paper's [32, 32, 32, 16, 16, 16, 8, 8, 8, 1]
    assert [tuple(w.shape) for w in joint.kernel_mlp.weights] == [(2, o, i) for i, o in zip(widths[:-1], widths[1:])]
    pair = build("cfconv", 3, 4, parameterization="per_pair")
    assert [tuple(w.shape) for w in pair.kernel_mlp.weights] == [(2, 12, 2, 2), (2, 12, 1, 2)]  # [2, 1] per pair
    x = torch.randn(2, 3, 10, 9)
    for layer in (joint, pair):
        y = layer(x)
        y.square().mean().backward()
        assert y.shape == (2, 4, 10, 9) and torch.isfinite(y).all()
        assert all(p.grad is not None for p in layer.kernel_mlp.parameters())


def test_output_variance_is_sane_at_init():
    """U[-1, 1] state scaled by 1 / sqrt(C_in): output variance about 2/3 of a white input's, for any C_in."""
    for c_in in (2, 32):
        layer = build("cfconv", c_in, 8, sampled_positions=1, bias=False)
        y = layer(torch.randn(4, c_in, 16, 16))
        assert 0.4 < float(y.detach().var()) < 0.95


def test_bad_hyperparameters_are_named():
    with pytest.raises(HyperparameterError, match="sampled_positions"):
        build("cfconv", 3, 4, sampled_positions=0)
    for decay in (1.5, 1.0, -0.1):
        with pytest.raises(HyperparameterError, match="decay"):
            build("cfconv", 3, 4, decay=decay)
    with pytest.raises(HyperparameterError, match=r"\['joint', 'per_pair'\].*'hw'"):
        build("cfconv", 3, 4, parameterization="hw")
    with pytest.raises(HyperparameterError, match="hidden_features"):
        build("cfconv", 3, 4, hidden_features=(8, 0))


def test_effective_size_and_repr():
    layer = build("cfconv", 3, 4, sampled_positions=64)
    assert all(1 <= s <= 32 for s in layer.effective_kernel_size)  # before any forward: the default grid
    assert "(learned, 90% mass on the default 32x32 grid)" in layer.extra_repr()
    layer(torch.randn(1, 3, 12, 10))
    h, w = layer.effective_kernel_size
    assert h <= 12 and w <= 10
    text = layer.extra_repr()
    assert "on a 12x10 grid" in text and "sampled_positions=64" in text and "state for 12x10" in text
    assert "decay" not in text and "parameterization" not in text
    rec = layer.size_record()
    assert rec["sampled_positions"] == 64 and (rec["grid_height"], rec["grid_width"]) == (12, 10)


def test_autocast_computes_the_ffts_in_float32():
    layer = build("cfconv", 3, 4, sampled_positions=None)
    x = torch.randn(2, 3, 9, 7)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_sparse_step():
    layer = build("cfconv", 3, 4, sampled_positions=64).cuda()
    x = torch.randn(2, 3, 9, 6, device="cuda")
    layer(x).sum().backward()
    assert layer.kernel_state.device.type == "cuda" and layer.last_positions.device.type == "cuda"
    layer.eval()
    torch.testing.assert_close(layer.cpu()(x.cpu()), layer.cuda()(x).cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampled", [None, 16])
def test_a_nan_in_the_mlp_is_caught_where_it_arises(sampled):
    layer = build("cfconv", 3, 4, sampled_positions=sampled)
    x = torch.randn(1, 3, 8, 8)
    layer(x)
    with torch.no_grad():
        layer.kernel_mlp.biases[-1].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="CFConv"):
        layer(x)
    if sampled:
        state = layer.state_dict()
        state["kernel_state"][0, 0, 0, 0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="kernel_state"):
            build("cfconv", 3, 4, sampled_positions=sampled).load_state_dict(state)


# ---------------------------------------------------------------------------------------- the MLP at init
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_init_keeps_the_kernels_apart(seed):
    """The paper's ten-layer ReLU MLP, initialised variance-preserving: its output varies over positions (spread /
    mean > 0.1), the 256 channel-pair kernels differ (mean |cos| < 0.95), and the first layer's gradient is within
    10x of the last layer's. With nn.Linear's default init: spread / mean ~5e-5, |cos| 1.000, gradient ratio ~2000."""
    torch.manual_seed(seed)
    layer = build("cfconv", 16, 16, sampled_positions=None, bias=False, parameterization="joint")
    values = layer._mlp_everywhere(32, 32).detach()
    for part in range(2):
        v = values[..., part]
        assert float(v.std() / v.mean().abs().clamp_min(1e-12)) > 0.1
    k = torch.fft.irfft2(layer.frequency_kernel((32, 32)).detach(), s=(32, 32)).reshape(256, -1)
    k = k / k.norm(dim=1, keepdim=True)
    cos = (k @ k.T).abs()
    assert float((cos.sum() - 256) / (256 * 255)) < 0.95
    y = layer(torch.randn(4, 16, 32, 32))
    (y * torch.randn_like(y)).sum().backward()
    first, last = (float(w.grad.norm()) for w in (layer.kernel_mlp.weights[0], layer.kernel_mlp.weights[-1]))
    assert last / 10 < first < last * 10


# ------------------------------------------------------------------------------------ the input encoding option
def test_fourier_encoding_of_the_coordinates():
    """``encoding="all"``: the joint MLP sees each coordinate x and sin(2^k pi x), cos(2^k pi x), k < octaves, written
    out per coordinate here; "channels" encodes only (c_in, c_out); "none" (default) the coordinates alone."""
    from nas_flex.functional.cfconv import fourier_encode, position_coords

    coords = position_coords(torch.arange(40), 4, 6, 2, 5, dtype=torch.float64)  # (40, 4)
    want = [coords]
    for fn in (torch.sin, torch.cos):
        want.append(torch.stack([fn(math.pi * 2**k * coords[:, c]) for c in range(4) for k in range(3)], dim=-1))
    torch.testing.assert_close(fourier_encode(coords, 3), torch.cat(want, dim=-1))
    assert fourier_encode(coords, 0) is coords
    assert fourier_encode(coords, 3, (2, 3)).shape == (40, 4 + 2 * 3 * 2)
    assert make(None, parameterization="joint").kernel_mlp.weights[0].shape[-1] == 4
    for encoding, width in (("channels", 4 + 2 * 4 * 2), ("all", 4 + 2 * 4 * 4)):
        layer = make(None, encoding=encoding, parameterization="joint")
        assert layer.kernel_mlp.weights[0].shape[-1] == width and f"encoding={encoding!r}" in layer.extra_repr()
        with torch.no_grad():  # the layer's dense kernel is the MLP of the encoded coordinates, Hermitian part
            torch.testing.assert_close(layer._mlp_everywhere(6, 5), reference_mlp_state(layer, 6, 5))
    with pytest.raises(HyperparameterError, match="encoding"):
        make(None, encoding="sinusoidal")
    with pytest.raises(HyperparameterError, match="encoding_octaves"):
        make(None, encoding_octaves=-1)
    with pytest.raises(HyperparameterError, match="joint MLP only.*parameterization='joint'"):
        make(None, encoding="all")  # the per-pair default would ignore it


# ------------------------------------------------------------------------ the cheaper paths give the same values
def test_pairwise_mlp_grid_equals_the_gathered_evaluation():
    """Broadcasting every pair over a block of frequencies gives, in flat position order, what gathering each
    position's weights gives (the previous computation), to float64 precision, with the same gradients."""
    from nas_flex.functional.cfconv import pairwise_mlp, pairwise_mlp_grid

    torch.manual_seed(0)
    pairs, freqs = 6, 5
    weights = [torch.randn(2, pairs, o, i, dtype=torch.float64, requires_grad=True) for i, o in ((2, 3), (3, 1))]
    biases = [torch.randn(2, pairs, o, dtype=torch.float64, requires_grad=True) for o in (3, 1)]
    coords = torch.rand(freqs, 2, dtype=torch.float64) * 2 - 1
    grid = pairwise_mlp_grid(coords, weights, biases, "relu")
    gathered = pairwise_mlp(coords.repeat_interleave(pairs, 0), torch.arange(pairs).repeat(freqs), weights, biases,
                            "relu")
    assert grid.shape == (2, freqs * pairs, 1)
    torch.testing.assert_close(grid, gathered, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(grid)
    want = torch.autograd.grad((gathered * g).sum(), weights + biases)
    for a, b in zip(torch.autograd.grad((grid * g).sum(), weights + biases), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_ema_merge_of_every_position_equals_the_indexed_merge():
    from nas_flex.functional.cfconv import ema_merge

    state = torch.rand(4, 3, 2, 2, 2, dtype=torch.float64)
    values = torch.randn(48, 2, dtype=torch.float64)
    kernel, new = ema_merge(state, None, values, 0.1)
    want_kernel, want_new = ema_merge(state, torch.arange(48), values, 0.1)
    assert torch.equal(kernel, want_kernel) and torch.equal(new, want_new)
    with pytest.raises(ShapeError, match="values"):
        ema_merge(state, None, values[:40], 0.1)


@pytest.mark.parametrize("parameterization", ["joint", "per_pair"])
def test_a_step_that_samples_every_position_equals_the_gathered_step(parameterization):
    """sampled_positions >= the state's size (the main job's first layer): the step evaluates every position without
    the gather and scatter; state, output and gradients equal the previous computation's (gathered MLP at
    arange(total), indexed EMA merge) and the reference EMA of the float64 MLP."""
    from nas_flex.functional.cfconv import ema_merge, state_to_spectrum
    from nas_flex.functional.niff import circular_conv2d_rfft

    hw = (6, 5)
    layer = make(10_000, c_in=3, c_out=2, parameterization=parameterization)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    layer(x)  # creates the state, first step
    before = layer.kernel_state.clone()
    total = before[..., 0].numel()
    y = layer(x)
    y.square().sum().backward()
    assert torch.equal(layer.last_positions, torch.arange(total))
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    positions = torch.arange(total)
    kernel, new = ema_merge(before, positions, layer._mlp_at(positions, *hw, torch.float64), layer.decay)
    y_ref = circular_conv2d_rfft(x, state_to_spectrum(kernel), layout="hwio") / math.sqrt(3)
    y_ref = y_ref + layer.bias.view(1, -1, 1, 1)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.kernel_state, new.reshape(before.shape), rtol=1e-13, atol=1e-14)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)
    mlp = reference_mlp_state(layer, *hw)  # and the independent float64 reference of the EMA step
    torch.testing.assert_close(layer.kernel_state, 0.1 * before + 0.9 * mlp, rtol=1e-12, atol=1e-12)


def test_per_pair_step_over_half_the_state_broadcasts_with_the_gathered_result():
    """Per pair, a sample covering at least ``broadcast_share`` of the state is evaluated everywhere by broadcasting
    and picked at the sampled positions: the same state, output and gradients as gathering each position's weights
    (the previous computation), and the reference EMA at the sampled positions."""
    hw = (5, 6)
    x = torch.randn(2, 2, *hw, dtype=torch.float64)
    fast = make(60, c_in=2, c_out=2)  # 60 of 5 x 4 x 2 x 2 = 80 positions
    assert fast.parameterization == "per_pair" and 60 >= fast.broadcast_share * 80
    fast(x)
    slow = make(60, c_in=2, c_out=2)
    slow.load_state_dict(fast.state_dict())
    slow.broadcast_share = math.inf
    before = fast.kernel_state.clone()
    results = []
    for layer in (fast, slow):
        torch.manual_seed(3)  # the same sampled positions
        y = layer(x)
        y.square().sum().backward()
        results.append((y, layer.last_positions, layer.kernel_state, {n: p.grad for n, p in layer.named_parameters()}))
    (y_fast, pos_fast, state_fast, grad_fast), (y_slow, pos_slow, state_slow, grad_slow) = results
    assert torch.equal(pos_fast, pos_slow) and 40 <= pos_fast.numel() < 80
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state_fast, state_slow, rtol=1e-13, atol=1e-14)
    for n in grad_fast:
        torch.testing.assert_close(grad_fast[n], grad_slow[n], rtol=1e-10, atol=1e-12, msg=n)
    mlp = reference_mlp_state(fast, *hw).reshape(-1, 2)
    flat_before = before.reshape(-1, 2)
    want = flat_before.clone()
    want[pos_fast] = 0.1 * flat_before[pos_fast] + 0.9 * mlp[pos_fast]
    torch.testing.assert_close(state_fast.reshape(-1, 2), want, rtol=1e-12, atol=1e-12)

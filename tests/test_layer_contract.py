"""The layer contract (``nas_flex.layers.base``, docs/layers.md), run over every registered layer.

Parametrised over ``nas_flex.layers.available()``: a layer is covered by these tests as soon as it registers. Each
layer's ``example_hparams`` gives a small, fast instance.
"""

from __future__ import annotations

import math
import pickle
import re

import pytest
import torch
from torch import nn
from torch.func import functional_call

import nas_flex
from nas_flex.errors import HyperparameterError, NasFlexError, NonFiniteError, ShapeError, UnknownNameError
from nas_flex.layers import KernelLayer, available, build, get, register, unregister

LAYERS = available()


def _where(predicate) -> list[str]:
    """The layers for which ``predicate(cls)`` holds; a layer that fails to import lands in every list, so each of
    its tests fails with the import error instead of the whole module failing to collect."""
    names = []
    for n in LAYERS:
        try:
            if predicate(get(n)):
                names.append(n)
        except Exception:
            names.append(n)
    return names


SPATIAL = _where(lambda cls: cls.domain == "spatial")
FREQUENCY = _where(lambda cls: cls.domain == "frequency")
LEARNED = _where(lambda cls: cls.learns_size)


def make(name: str, c_in: int = 3, c_out: int = 4, **over) -> KernelLayer:
    return build(name, c_in, c_out, **{**get(name).example_hparams, **over})


# ----------------------------------------------------------------------------------------------------- registry
def test_builtin_layers_are_registered():
    assert {"conv", "mixed", "flexconv", "njet", "envelope", "niff", "cfconv"} <= set(LAYERS)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(UnknownNameError, match="unknown layer 'flexconvv'.*'flexconv'"):
        build("flexconvv", 3, 4)


def test_unknown_hparam_is_named():
    with pytest.raises(HyperparameterError, match=r"unknown hyperparameter\(s\) of layer 'conv': 'kernal_size' "
                                                  r"\(did you mean 'kernel_size'\?\); valid: kernel_size, bias"):
        build("conv", 3, 4, kernal_size=3)


def test_register_rejects_duplicates_and_adds_new_names():
    with pytest.raises(NasFlexError, match="already registered"):

        @register("conv")
        class Other(KernelLayer):  # noqa: F841
            pass

    @register("test_identity_layer")
    class Identity(KernelLayer):
        effective_kernel_size = (1.0, 1.0)

        def forward(self, x):
            return x

    try:
        assert "test_identity_layer" in available()
        assert isinstance(build("test_identity_layer", 2, 2), Identity)
        with pytest.raises(NasFlexError, match="already registered"):
            register("test_identity_layer")(type("Again", (KernelLayer,), {}))
    finally:
        unregister("test_identity_layer")
    assert "test_identity_layer" not in available()
    with pytest.raises(UnknownNameError, match="unknown layer 'test_identity_layer'"):
        build("test_identity_layer", 2, 2)
    with pytest.raises(UnknownNameError, match="unknown registered layer 'test_identity_layer'"):
        unregister("test_identity_layer")
    with pytest.raises(NasFlexError, match="'conv' is a built-in layer"):
        unregister("conv")
    assert "conv" in available()
    other = register("test_identity_layer")(type("Other", (Identity,), {}))  # the name is free again
    try:
        assert type(build("test_identity_layer", 2, 2)) is other
    finally:
        unregister("test_identity_layer")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_channel_counts_are_checked(bad):
    with pytest.raises(HyperparameterError, match="in_channels"):
        build("conv", bad, 4)


# ------------------------------------------------------------------------------------------- shapes and errors
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 3, 8, 8), (3, 3, 13, 7)])
def test_same_size_output(name, shape):
    layer = make(name)
    y = layer(torch.randn(shape))
    assert y.shape == (shape[0], 4, *shape[2:])
    assert torch.isfinite(y).all()
    assert layer.last_input_size == shape[2:]


@pytest.mark.parametrize("name", LAYERS)
def test_batch_zero(name):
    assert make(name)(torch.randn(0, 3, 9, 9)).shape == (0, 4, 9, 9)


@pytest.mark.parametrize("name", LAYERS)
def test_non_contiguous_input(name):
    layer = make(name).eval()
    base = torch.randn(2, 3, 11, 9)
    transposed = base.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, permuted strides
    channels_last = base.contiguous(memory_format=torch.channels_last)
    sliced = torch.randn(2, 6, 11, 9)[:, ::2]
    sliced_ref = sliced.contiguous()
    assert not transposed.is_contiguous() and not sliced.is_contiguous()
    ref = layer(base)
    torch.testing.assert_close(layer(transposed), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer(channels_last), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer(sliced), layer(sliced_ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_wrong_channel_count(name):
    with pytest.raises(ShapeError, match=r"C=3 .*got shape \(2, 5, 9, 9\)"):
        make(name)(torch.randn(2, 5, 9, 9))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("shape", [(3, 9, 9), (1, 1, 3, 9, 9)])
def test_wrong_number_of_dims(name, shape):
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        make(name)(torch.randn(shape))


@pytest.mark.parametrize("name", LAYERS)
def test_kernel_never_exceeds_the_input(name):
    """Fixed-size kernels larger than the input are an error; learned sizes are capped at the input's grid."""
    layer = make(name)
    x = torch.randn(1, 3, 2, 2)
    try:
        y = layer(x)
    except ShapeError as err:
        assert not layer.learns_size or get(name).domain == "spatial"
        assert "larger than the 2x2 input" in str(err)
        return
    assert y.shape == (1, 4, 2, 2)
    h, w = layer.effective_kernel_size
    assert h <= 3 and w <= 3  # the odd grid covering a 2x2 input


# ------------------------------------------------------------------------------------------ size bookkeeping
@pytest.mark.parametrize("name", LAYERS)
def test_effective_kernel_size_is_two_positive_floats(name):
    layer = make(name)
    for _ in range(2):  # before and after the first forward
        size = layer.effective_kernel_size
        assert isinstance(size, tuple) and len(size) == 2
        assert all(isinstance(s, float) and math.isfinite(s) and s > 0 for s in size), size
        layer(torch.randn(1, 3, 12, 10))


@pytest.mark.parametrize("name", LEARNED)
def test_size_parameters_belong_to_the_layer(name):
    layer = make(name)
    own = {id(p) for p in layer.parameters()}
    size = list(layer.size_parameters())
    assert all(isinstance(p, nn.Parameter) and id(p) in own for p in size)
    if get(name).domain == "spatial":
        assert size, "a spatial learned-size layer must expose the parameters that set its size"


@pytest.mark.parametrize("name", LAYERS)
def test_regularization_is_a_finite_scalar(name):
    layer = make(name)
    layer(torch.randn(1, 3, 12, 12))
    reg = layer.regularization()
    assert isinstance(reg, torch.Tensor) and reg.dim() == 0
    assert torch.isfinite(reg) and reg >= 0


@pytest.mark.parametrize("name", LEARNED)
def test_nan_in_a_size_parameter_is_caught_where_it_arises(name):
    layer = make(name)
    size = list(layer.size_parameters())
    if not size:
        pytest.skip("no explicit size parameter")
    with torch.no_grad():
        size[0].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=type(layer).__name__):
        layer(torch.randn(1, 3, 12, 12))


@pytest.mark.parametrize("name", LAYERS)
def test_learned_sizes_row(name):
    layer = make(name)
    model = nn.Sequential(nn.Identity(), layer)
    model(torch.randn(1, 3, 12, 12))
    df = nas_flex.learned_sizes(model)
    if not layer.learns_size:
        assert len(df) == 0
        return
    assert len(df) == 1
    row = df.iloc[0]
    assert row["name"] == "1" and row["kind"] == name
    assert (row["height"], row["width"]) == layer.effective_kernel_size


def _printed_size(text: str) -> tuple[float, float]:
    """The (height, width) a repr prints as ``kernel_size=5``, ``kernel_size=2.68`` or ``kernel_size=8.4x5.7``."""
    match = re.match(r"3, 4, kernel_size=(\d+(?:\.\d+)?)(?:x(\d+(?:\.\d+)?))?(?![\d.x])", text)
    assert match, text
    h = float(match[1])
    return h, float(match[2]) if match[2] else h


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("grid", [None, (11, 9)])
def test_extra_repr_shows_the_size(name, grid):
    """The size a repr prints, parsed back, is the layer's effective_kernel_size, to the digits printed."""
    layer = make(name)
    if grid is not None:
        layer(torch.randn(1, 3, *grid))
    text = layer.extra_repr()
    assert text.startswith("3, 4, kernel_size=") and repr(layer).startswith(f"{type(layer).__name__}(")
    printed = _printed_size(text)
    assert printed == pytest.approx(layer.effective_kernel_size, abs=0.051)  # one decimal, rounded
    assert ("(learned" in text) == get(name).learns_size


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck_float64_with_size_parameters(name):
    layer = make(name, c_in=2, c_out=2, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    layer(x.detach())  # materialise anything input-size dependent
    size_names = {id(p) for p in layer.size_parameters()}
    names = [n for n, p in layer.named_parameters() if id(p) in size_names]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if n in names}

    def f(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", LEARNED)
def test_a_training_step_reaches_the_size_parameters(name):
    layer = make(name)
    size = list(layer.size_parameters())
    if not size:
        pytest.skip("no explicit size parameter")
    x, target = torch.randn(4, 3, 12, 12), torch.randn(4, 4, 12, 12)
    loss = (layer(x) - target).pow(2).mean() + layer.regularization()
    loss.backward()
    grads = [p.grad for p in size]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    before = [p.detach().clone() for p in size]
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    opt.step()
    layer.constrain_()
    assert any(not torch.equal(b, p) for b, p in zip(before, size))
    assert torch.isfinite(layer(x)).all()


# ------------------------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("hw", [(12, 12), (11, 14)])
def test_to_conv2d_matches_the_layer_in_eval_mode(name, hw):
    layer = make(name, dtype=torch.float64).eval()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    y = layer(x)
    conv = layer.to_conv2d()
    assert type(conv) is nn.Conv2d and conv.stride == (1, 1)
    assert conv.weight.dtype == torch.float64
    torch.testing.assert_close(conv(x), y, rtol=1e-9, atol=1e-9)
    kh, kw = conv.kernel_size
    assert kh % 2 == 1 and kw % 2 == 1


@pytest.mark.parametrize("name", FREQUENCY)
def test_spatial_kernel_has_the_input_size(name):
    layer = make(name).eval()
    layer(torch.randn(1, 3, 11, 14))
    assert layer.spatial_kernel().shape == (4, 3, 11, 14)


@pytest.mark.parametrize("name", LAYERS)
def test_state_dict_round_trip(name):
    a = make(name)
    x = torch.randn(2, 3, 12, 10)
    a(x)
    a.eval()
    torch.manual_seed(123)
    b = make(name)
    b(x)
    b.load_state_dict(a.state_dict())
    b.eval()
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_pickle_round_trip(name):
    a = make(name)
    x = torch.randn(2, 3, 12, 10)
    a(x)
    a.eval()
    b = pickle.loads(pickle.dumps(a))
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    assert b.effective_kernel_size == a.effective_kernel_size


@pytest.mark.parametrize("name", LAYERS)
def test_builds_on_the_meta_device(name):
    layer = make(name, device="meta")
    assert sum(p.numel() for p in layer.parameters()) > 0
    assert all(p.device.type == "meta" for p in layer.parameters())


@pytest.mark.parametrize("name", LAYERS)
def test_constrain_keeps_a_valid_layer_unchanged(name):
    layer = make(name).eval()
    x = torch.randn(1, 3, 12, 12)
    y = layer(x)
    layer.constrain_()
    torch.testing.assert_close(layer(x), y)


# ------------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.slow
def test_check_finite_is_skipped_under_torch_compile():
    """``check_finite``'s compile branch: under torch.compile the check is skipped (it would branch on data), so a
    layer that checks its size parameter in forward compiles to one graph with the eager output; eager still raises.

    backend="eager" runs dynamo's tracing (where the branch matters) without a C compiler.
    """
    torch.manual_seed(0)
    layer = make("envelope", c_in=2, c_out=3)  # forward: check_finite("sigma", ...) on its size parameter
    x = torch.randn(2, 2, 9, 9)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # a graph break (the check traced) fails here
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)
    with torch.no_grad():
        layer.sigma[1] = float("nan")
    with pytest.raises(NonFiniteError, match="EnvelopeConv: `sigma` holds non-finite values"):
        layer(x)
    # compiled, the check is skipped as documented: the NaN reaches the output (of filter 1 only) instead of raising
    y = compiled(x)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()


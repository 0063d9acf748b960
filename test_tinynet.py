"""The tinynet test suite: every layer, loss, optimizer and scheduler against PyTorch in float64,
gradient checks, data loaders, training scripts and the benchmark. Run: pytest test_tinynet.py"""
import argparse
import gzip
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinynet as tn


# ════════════════════════════════════════════════════════════════════════════
# Foundation: layers, losses, Sequential, weights, gradient checking
# ════════════════════════════════════════════════════════════════════════════

# ════════════════════════════════════════════════════════════════════════════
# Helpers: float64 parity against PyTorch, with the worst relative error tracked
# ════════════════════════════════════════════════════════════════════════════

PARITY_ERRORS = []   # max|ours - torch| / max|torch| of every array compared by assert_parity


@pytest.fixture(scope="module", autouse=True)
def _report_parity(request):
    """Print, at the end of the module, how many arrays were compared and the worst relative error."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if PARITY_ERRORS and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nPyTorch parity: {len(PARITY_ERRORS)} arrays compared, worst relative "
                                f"error max|ours - torch| / max|torch| = {max(PARITY_ERRORS):.3g}")


def T(a, requires_grad=True):
    """A float64 torch tensor from a NumPy array (a copy)."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def assert_parity(ours, theirs, what=""):
    """ours (float64) equals theirs (torch tensor or array) to rtol 1e-8; records the relative error."""
    theirs = theirs.detach().numpy() if torch.is_tensor(theirs) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.dtype == np.float64, f"{what}: computed in {ours.dtype}, expected float64"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, torch {theirs.shape}"
    scale = float(np.abs(theirs).max(initial=0.0))
    err = float(np.abs(ours - theirs).max(initial=0.0)) / (scale or 1.0)
    PARITY_ERRORS.append(err)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12 * scale, err_msg=what)


def layer_parity(layer, torch_fn, x, g):
    """Forward and backward of a float64 layer vs torch_fn on x with upstream gradient g."""
    x0 = x.copy()
    xt = T(x)
    yt = torch_fn(xt)
    yt.backward(T(g, False))
    y = layer.forward(x)
    gx = layer.backward(g.copy())
    np.testing.assert_array_equal(x, x0, err_msg=f"{layer!r} modified its input")
    assert_parity(y, yt, f"{layer!r} forward")
    assert_parity(gx, xt.grad, f"{layer!r} input gradient")


SHAPES_ND = [(7,), (4, 5), (2, 3, 4), (2, 3, 4, 5)]


def randn(seed, shape, zeros=False):
    x = np.random.default_rng(seed).standard_normal(shape)
    if zeros:
        x.reshape(-1)[::4] = 0.0          # exercise the kink of ReLU / LeakyReLU (torch: x > 0 branch)
    return x


# ════════════════════════════════════════════════════════════════════════════
# Layer parity (float64, vs torch)
# ════════════════════════════════════════════════════════════════════════════

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (5, 3, 4), (16, 10, 7), (33, 64, 2)])
def test_parity_linear(n, fin, fout, bias):
    tn.manual_seed(n + fin)
    layer = tn.Linear(fin, fout, bias=bias).astype(np.float64)
    ref = torch.nn.Linear(fin, fout, bias=bias, dtype=torch.float64)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x, g = randn(n, (n, fin)), randn(n + 1, (n, fout))
    layer_parity(layer, ref, x, g)
    assert_parity(layer.weight.grad, ref.weight.grad, "weight.grad")
    if bias:
        assert_parity(layer.bias.grad, ref.bias.grad, "bias.grad")
    else:
        assert layer.bias is None and layer.parameters() == [layer.weight]


@pytest.mark.parametrize("shape", SHAPES_ND)
@pytest.mark.parametrize("name", ["ReLU", "Sigmoid", "Tanh"])
def test_parity_activation(name, shape):
    ref = {"ReLU": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh}[name]
    seed = len(shape)
    layer_parity(getattr(tn, name)(), ref, 3 * randn(seed, shape, zeros=True), randn(seed + 1, shape))


@pytest.mark.parametrize("shape", SHAPES_ND)
@pytest.mark.parametrize("slope", [0.01, 0.2, 1.5, -0.3])
def test_parity_leaky_relu(slope, shape):
    x, g = randn(len(shape), shape, zeros=True), randn(9, shape)
    layer_parity(tn.LeakyReLU(slope), lambda t: F.leaky_relu(t, slope), x, g)


def test_leaky_relu_default_slope_is_torchs():
    assert tn.LeakyReLU().negative_slope == torch.nn.LeakyReLU().negative_slope == 0.01


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parity_sigmoid_extreme_inputs_no_overflow(dtype):
    x = np.array([[-1e4, -800.0, -50.0, -1e-8, 0.0, 1e-8, 50.0, 800.0, 1e4]], dtype=dtype)
    g = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    layer = tn.Sigmoid()
    # underflow (exp(-1e4) == 0) is benign and happens in torch too; overflow, 0/0 and inf/inf are bugs
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        y, gx = layer.forward(x), layer.backward(g)
    assert y.dtype == gx.dtype == dtype
    assert np.isfinite(y).all() and np.isfinite(gx).all()
    assert y[0, 0] == 0 and y[0, -1] == 1 and y[0, 4] == 0.5
    if dtype == np.float64:
        layer_parity(tn.Sigmoid(), torch.sigmoid, x, g)


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("shape,dim", [((1, 4), 1), ((6, 5), 1), ((6, 5), 0), ((3, 4, 5), -1), ((3, 4, 5), 1),
                                       ((2, 3, 4, 2), 2)])
@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax"])
def test_parity_softmax(name, shape, dim, scale):
    ref = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax}[name]
    x, g = scale * randn(len(shape) + dim, shape), randn(7, shape)    # arbitrary upstream grad: the full JVP
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        layer_parity(getattr(tn, name)(dim=dim), lambda t: ref(t, dim), x, g)


def test_softmax_default_dim_is_1():
    assert tn.Softmax().dim == 1 and tn.LogSoftmax().dim == 1


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 4), (5, 1, 2, 2), (3, 2, 1, 4, 2)])
def test_parity_flatten(shape):
    layer_parity(tn.Flatten(), torch.nn.Flatten(), randn(1, shape), randn(2, (shape[0], int(np.prod(shape[1:])))))


@pytest.mark.parametrize("shape", SHAPES_ND)
def test_parity_dropout_eval_is_identity(shape):
    layer = tn.Dropout(0.5).eval()
    layer_parity(layer, torch.nn.Dropout(0.5).eval(), randn(3, shape), randn(4, shape))


# ════════════════════════════════════════════════════════════════════════════
# Dropout in training
# ════════════════════════════════════════════════════════════════════════════

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_training_mask_and_scaling(p):
    tn.manual_seed(0)
    layer = tn.Dropout(p)
    assert layer.training
    x = np.ones((200, 500))
    y = layer.forward(x)
    kept = y != 0
    n = x.size
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)          # Bernoulli(p) zeros
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)            # inverted-dropout scale
    assert abs(y.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)                  # unbiased
    g = randn(1, x.shape)
    np.testing.assert_array_equal(layer.backward(g), g * y)                  # the same mask and scale
    assert not np.array_equal(layer.forward(x), y)                           # a fresh mask each call


def test_dropout_mask_is_elementwise_and_keeps_dtype():
    tn.manual_seed(1)
    x = randn(0, (4, 3, 8, 8)).astype(np.float32)
    y = tn.Dropout(0.5).forward(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept], rtol=1e-7)
    assert 0 < kept[:, 0].mean() < 1 and 0 < kept[0].mean() < 1


def test_dropout_p0_is_identity_in_training():
    x, g = randn(0, (8, 9)).astype(np.float32), randn(1, (8, 9)).astype(np.float32)
    layer = tn.Dropout(0.0)
    y, gx = layer.forward(x), layer.backward(g)
    assert y.dtype == gx.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(gx, g)


def test_dropout_eval_keeps_no_mask_and_backward_is_identity():
    layer = tn.Dropout(0.5)
    layer.forward(np.ones((4, 4)))
    layer.eval()
    x, g = randn(0, (4, 4)), randn(1, (4, 4))
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(g), g)


def test_dropout_deterministic_under_manual_seed():
    x = np.ones((50, 50))
    tn.manual_seed(7)
    a = tn.Dropout(0.5).forward(x)
    tn.manual_seed(7)
    b = tn.Dropout(0.5).forward(x)
    tn.manual_seed(8)
    c = tn.Dropout(0.5).forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ════════════════════════════════════════════════════════════════════════════
# Loss parity
# ════════════════════════════════════════════════════════════════════════════

@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("n,c", [(1, 2), (8, 3), (32, 10), (5, 100)])
@pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss"])
def test_parity_classification_loss(name, n, c, scale):
    pred = scale * randn(n * c, (n, c))
    if name == "NLLLoss":
        pred = pred - np.log(np.exp(pred - pred.max(1, keepdims=True)).sum(1, keepdims=True)) - pred.max(1, keepdims=True)
    target = np.random.default_rng(c).integers(0, c, n)
    loss = getattr(tn, name)()
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        value = loss.forward(pred, target)
        grad = loss.backward()
    pt = T(pred)
    ref = getattr(torch.nn, name)()(pt, torch.from_numpy(target))
    ref.backward()
    assert isinstance(value, float)
    assert_parity(value, ref, f"{name} value")
    assert_parity(grad, pt.grad, f"{name} gradient")


@pytest.mark.parametrize("shape", [(1,), (6,), (8, 3), (4, 10), (2, 3, 4)])
def test_parity_mse_loss(shape):
    pred, target = randn(1, shape), randn(2, shape)
    loss = tn.MSELoss()
    value, grad = loss.forward(pred, target), loss.backward()
    pt = T(pred)
    ref = torch.nn.MSELoss()(pt, T(target, False))
    ref.backward()
    assert isinstance(value, float)
    assert_parity(value, ref, "MSELoss value")
    assert_parity(grad, pt.grad, "MSELoss gradient")


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_losses_accept_any_integer_label_dtype(label_dtype):
    pred, y = randn(0, (6, 4)), np.array([0, 1, 2, 3, 3, 0])
    assert tn.CrossEntropyLoss()(pred, y.astype(label_dtype)) == tn.CrossEntropyLoss()(pred, y)
    assert tn.NLLLoss()(pred, y.astype(label_dtype)) == tn.NLLLoss()(pred, y)


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss", "MSELoss"])
def test_loss_gradient_keeps_float32(name):
    pred = randn(0, (5, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    target = tn.one_hot(labels, 3).astype(np.float64) if name == "MSELoss" else labels    # float64 target too
    loss = getattr(tn, name)()
    loss.forward(pred, target)
    assert loss.backward().dtype == np.float32


# ════════════════════════════════════════════════════════════════════════════
# Initialisation, parameters, dtype
# ════════════════════════════════════════════════════════════════════════════

@pytest.mark.parametrize("fin,fout", [(1, 3), (20, 50), (784, 100)])
def test_linear_init_matches_pytorch(fin, fout):
    tn.manual_seed(0)
    layer = tn.Linear(fin, fout)
    ref = torch.nn.Linear(fin, fout)
    bound = 1 / np.sqrt(fin)
    assert layer.weight.data.dtype == layer.bias.data.dtype == np.float32
    assert layer.weight.grad.dtype == np.float32 and not layer.weight.grad.any()
    for ours, theirs in [(layer.weight.data, ref.weight.detach().numpy()), (layer.bias.data, ref.bias.detach().numpy())]:
        assert ours.shape == theirs.shape
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
    if fin * fout > 10_000:   # U(-b, b): std b / sqrt(3), fills the interval; torch's does the same
        for w in (layer.weight.data, ref.weight.detach().numpy()):
            assert abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
            assert abs(w.mean()) < 0.01 * bound and np.abs(w).max() > 0.99 * bound


def test_manual_seed_makes_init_repeatable():
    tn.manual_seed(3)
    a = tn.Linear(5, 4)
    tn.manual_seed(3)
    b = tn.Linear(5, 4)
    c = tn.Linear(5, 4)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(b.weight.data, c.weight.data)


def test_parameters_order_and_accumulation():
    layer = tn.Linear(3, 2).astype(np.float64)
    assert layer.parameters() == [layer.weight, layer.bias]
    x, g = randn(0, (4, 3)), randn(1, (4, 2))
    layer(x)
    layer.backward(g)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(g)                                         # backward adds into .grad, as torch
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0])
    np.testing.assert_allclose(layer.bias.grad, 2 * once[1])
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


@pytest.mark.parametrize("make", [lambda: tn.Linear(6, 4), tn.ReLU, tn.LeakyReLU, tn.Sigmoid, tn.Tanh,
                                  tn.Softmax, tn.LogSoftmax, tn.Flatten, lambda: tn.Dropout(0.3)],
                         ids=["Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
                              "Flatten", "Dropout"])
def test_float32_in_float32_out(make):
    layer = make()
    x = randn(0, (5, 6)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())


def test_astype_converts_params_and_grads():
    model = tn.Sequential(tn.Linear(3, 4), tn.ReLU(), tn.Linear(4, 2))
    model.astype(np.float64)
    assert all(p.data.dtype == p.grad.dtype == np.float64 for p in model.parameters())
    assert model.predict(np.ones((2, 3), np.float32)).dtype == np.float64


def test_train_eval_flags_and_call():
    model = tn.Sequential(tn.Linear(3, 4), tn.Dropout(0.5))
    assert model.eval() is model and not model.training and not any(l.training for l in model.layers)
    model.train()
    assert model.training and all(l.training for l in model.layers)
    layer, x = tn.Tanh(), randn(0, (2, 3))
    np.testing.assert_array_equal(layer(x), layer.forward(x))


# ════════════════════════════════════════════════════════════════════════════
# Numerical gradient checks
# ════════════════════════════════════════════════════════════════════════════

def away_from_kinks(seed, shape):
    x = randn(seed, shape)
    return np.sign(x) * (0.1 + np.abs(x))


@pytest.mark.parametrize("make,shape", [
    (lambda: tn.Linear(4, 3), (5, 4)),
    (lambda: tn.Linear(4, 3, bias=False), (5, 4)),
    (tn.ReLU, (3, 4)),
    (lambda: tn.LeakyReLU(0.2), (3, 2, 2)),
    (tn.Sigmoid, (3, 4)),
    (tn.Tanh, (3, 4)),
    (tn.Softmax, (3, 5)),
    (lambda: tn.Softmax(dim=-1), (2, 3, 4)),
    (tn.LogSoftmax, (3, 5)),
    (lambda: tn.LogSoftmax(dim=0), (2, 3, 4)),
    (tn.Flatten, (2, 3, 2)),
    (lambda: tn.Dropout(0.5).eval(), (3, 4)),
    (lambda: tn.Dropout(0.0), (3, 4)),
    (lambda: tn.Sequential(tn.Linear(4, 5), tn.Tanh(), tn.Linear(5, 3), tn.LogSoftmax()), (6, 4)),
], ids=["Linear", "Linear-nobias", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Softmax-3d",
        "LogSoftmax", "LogSoftmax-3d", "Flatten", "Dropout-eval", "Dropout-p0", "Sequential"])
def test_gradcheck_layer(make, shape):
    tn.manual_seed(0)
    layer = make().astype(np.float64)
    before = layer.state_dict()
    assert tn.gradcheck(layer, away_from_kinks(1, shape)) < 1e-6
    for k, v in layer.state_dict().items():       # parameters restored
        np.testing.assert_array_equal(v, before[k])


def test_numerical_gradient_dropout_training_with_fixed_mask():
    layer, x, r = tn.Dropout(0.4), randn(0, (4, 5)), randn(1, (4, 5))

    def f(x):
        tn.manual_seed(11)                 # the same mask every call
        return float(np.sum(layer.forward(x) * r))
    f(x)
    analytic = layer.backward(r)
    np.testing.assert_allclose(analytic, tn.numerical_gradient(f, x.copy()), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss", "MSELoss"])
def test_numerical_gradient_loss(name):
    pred = randn(0, (6, 4))
    target = randn(1, (6, 4)) if name == "MSELoss" else np.array([0, 3, 1, 1, 2, 0])
    loss = getattr(tn, name)()
    loss.forward(pred, target)
    analytic = loss.backward()
    numeric = tn.numerical_gradient(lambda p: loss.forward(p, target), pred.copy())
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_numerical_gradient_known_function_and_restores_x():
    x = randn(0, (3, 4))
    x0 = x.copy()
    grad = tn.numerical_gradient(lambda v: float(np.sum(v ** 3)), x)
    np.testing.assert_allclose(grad, 3 * x0 ** 2, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(x, x0)
    with pytest.raises(TypeError, match="numerical_gradient.*float64.*float32"):
        tn.numerical_gradient(lambda v: 0.0, x.astype(np.float32))


class _WrongTanh(tn.Tanh):
    def backward(self, grad):
        return grad * (1 - self._cache)           # should be 1 - y**2


class _WrongLinear(tn.Linear):
    def backward(self, grad):
        gx = super().backward(grad)
        self.bias.grad *= 0.5                     # a wrong parameter gradient
        return gx


@pytest.mark.parametrize("make", [_WrongTanh, lambda: _WrongLinear(3, 2)], ids=["input-grad", "param-grad"])
def test_gradcheck_catches_wrong_backward(make):
    assert tn.gradcheck(make().astype(np.float64), away_from_kinks(0, (4, 3))) > 1e-2


def test_gradcheck_rejects_float32_layer():
    with pytest.raises(TypeError, match=r"gradcheck.*Linear\(3, 2\).*float64"):
        tn.gradcheck(tn.Linear(3, 2), randn(0, (4, 3)))


# ════════════════════════════════════════════════════════════════════════════
# End-to-end Sequential MLP vs torch.nn.Sequential
# ════════════════════════════════════════════════════════════════════════════

def mlp_pair(n_in, h1, h2, c, head=None, seed=0):
    """tinynet and torch Linear-ReLU-Linear-Tanh-Linear[-head] in float64 with the same weights."""
    tn.manual_seed(seed)
    layers = [tn.Linear(n_in, h1), tn.ReLU(), tn.Linear(h1, h2), tn.Tanh(), tn.Linear(h2, c)]
    mods = [torch.nn.Linear(n_in, h1), torch.nn.ReLU(), torch.nn.Linear(h1, h2), torch.nn.Tanh(), torch.nn.Linear(h2, c)]
    if head:
        layers.append(getattr(tn, head)(dim=1))
        mods.append(getattr(torch.nn, head)(dim=1))
    model = tn.Sequential(layers).astype(np.float64)
    ref = torch.nn.Sequential(*mods).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return model, ref


@pytest.mark.parametrize("variant", ["nll", "cross_entropy", "softmax_mse"])
@pytest.mark.parametrize("n,n_in,h1,h2,c,seed", [(1, 3, 4, 5, 2, 0), (8, 4, 16, 8, 3, 1), (64, 20, 32, 16, 10, 2)])
def test_parity_sequential_mlp(variant, n, n_in, h1, h2, c, seed):
    head, loss, ref_loss = {"nll": ("LogSoftmax", tn.NLLLoss(), torch.nn.NLLLoss()),
                            "cross_entropy": (None, tn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()),
                            "softmax_mse": ("Softmax", tn.MSELoss(), torch.nn.MSELoss())}[variant]
    model, ref = mlp_pair(n_in, h1, h2, c, head, seed)
    x = randn(seed, (n, n_in))
    y = np.random.default_rng(seed).integers(0, c, n)
    target, ref_target = ((tn.one_hot(y, c).astype(np.float64), T(tn.one_hot(y, c), False)) if variant == "softmax_mse"
                          else (y, torch.from_numpy(y)))
    xt = T(x)
    ref_value = ref_loss(ref(xt), ref_target)
    ref_value.backward()
    value = loss.forward(model.forward(x), target)
    gx = model.backward(loss.backward())
    assert_parity(value, ref_value, "loss")
    assert_parity(gx, xt.grad, "input gradient")
    ours, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
    assert list(ours) == list(theirs)
    for k in ours:
        assert_parity(ours[k].grad, theirs[k].grad, k)


def test_sequential_backward_without_input_grad():
    model, _ = mlp_pair(4, 6, 5, 3)
    x = randn(0, (7, 4))
    model.forward(x)
    full = model.backward(np.ones((7, 3)))
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    assert full.shape == x.shape and model.backward(np.ones((7, 3)), input_grad=False) is None
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


def test_sequential_constructors_and_add():
    a = tn.Sequential([tn.Linear(2, 3), tn.ReLU()])
    b = tn.Sequential(tn.Linear(2, 3), tn.ReLU())
    c = tn.Sequential().add(tn.Linear(2, 3)).add(tn.ReLU())
    assert [repr(l) for l in a] == [repr(l) for l in b] == [repr(l) for l in c] == ["Linear(2, 3)", "ReLU()"]
    assert len(a) == 2 and isinstance(a[1], tn.ReLU)


# ════════════════════════════════════════════════════════════════════════════
# State dicts: torch interop, errors, save/load
# ════════════════════════════════════════════════════════════════════════════

def test_state_dict_keys_are_torchs():
    model = tn.Sequential(tn.Linear(4, 8), tn.ReLU(), tn.Dropout(0.1), tn.Linear(8, 3, bias=False))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(8, 3, bias=False))
    assert list(model.state_dict()) == list(ref.state_dict()) == ["0.weight", "0.bias", "3.weight"]
    sd = model.state_dict()
    sd["0.weight"][...] = 0                           # a copy, not a view
    assert model[0].weight.data.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_state_dict_torch_to_tinynet(seed, dtype):
    torch.manual_seed(seed)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 3), torch.nn.Softmax(dim=1))
    model, _ = mlp_pair(5, 12, 6, 3, "Softmax", seed=seed + 10)
    model.astype(dtype)
    if dtype == np.float64:
        ref.double()
    assert model.load_state_dict(ref.state_dict()) is model
    assert all(p.data.dtype == dtype for p in model.parameters())
    x = randn(seed, (9, 5)).astype(dtype)
    out = model.predict(x)
    expected = ref(torch.from_numpy(x)).detach()
    if dtype == np.float64:
        assert_parity(out, expected, "outputs after loading torch weights")
    else:
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_state_dict_tinynet_to_torch(seed):
    model, _ = mlp_pair(5, 12, 6, 3, "LogSoftmax", seed=seed)
    model.astype(np.float32)
    torch.manual_seed(seed + 100)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 3), torch.nn.LogSoftmax(dim=1))
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})   # strict: same keys
    x = randn(seed, (9, 5)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def _small_model():
    tn.manual_seed(0)
    return tn.Sequential(tn.Linear(4, 8), tn.ReLU(), tn.Linear(8, 3))


@pytest.mark.parametrize("edit,pattern", [
    (lambda sd: sd.pop("2.bias"), r"Sequential\.load_state_dict: missing keys \['2\.bias'\]"),
    (lambda sd: sd.update({"5.weight": np.zeros((3, 8))}), r"Sequential\.load_state_dict:.*unexpected keys \['5\.weight'\]"),
    (lambda sd: sd.update({"2.weight": np.zeros((8, 3))}), r"Sequential\.load_state_dict: '2\.weight' has shape \(8, 3\), expected \(3, 8\)"),
    (lambda sd: sd.update({"0.bias": torch.zeros(7)}), r"'0\.bias' has shape \(7,\), expected \(8,\)"),
], ids=["missing", "unexpected", "mis-shaped", "mis-shaped-tensor"])
def test_load_state_dict_errors_name_the_key(edit, pattern):
    model, other = _small_model(), _small_model()
    for p in other.parameters():
        p.data += 1
    sd = other.state_dict()
    edit(sd)
    before = model.state_dict()
    with pytest.raises(ValueError, match=pattern):
        model.load_state_dict(sd)
    for k, v in model.state_dict().items():              # a failed load changes nothing
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_state_dict_ignores_num_batches_tracked():
    model = _small_model()
    sd = dict(model.state_dict(), **{"1.num_batches_tracked": torch.tensor(5)})
    model.load_state_dict(sd)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    tn.manual_seed(0)
    model = tn.Sequential(tn.Flatten(), tn.Linear(12, 8), tn.LeakyReLU(0.2), tn.Dropout(p=0.25),
                          tn.Linear(8, 6, bias=False), tn.Sigmoid(), tn.Linear(6, 5), tn.Tanh(),
                          tn.Linear(5, 3), tn.Softmax(dim=1)).astype(dtype)
    path = tmp_path / "model.npz"
    model.save(str(path))
    assert os.listdir(tmp_path) == ["model.npz"]                         # no .tmp left behind
    loaded = tn.Sequential.load(str(path))
    assert isinstance(loaded, tn.Sequential) and loaded is not model
    assert [repr(l) for l in loaded] == [repr(l) for l in model]
    assert loaded[3].p == 0.25 and loaded[2].negative_slope == 0.2 and loaded[4].bias is None
    assert all(p.data.dtype == dtype for p in loaded.parameters())
    x = randn(0, (7, 3, 4)).astype(dtype)
    out = loaded.predict(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, model.predict(x))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "m.npz")
    old = _small_model()
    old.save(path)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    new = _small_model()
    for p in new.parameters():
        p.data += 1
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"]
    x = randn(0, (3, 4)).astype(np.float32)
    np.testing.assert_array_equal(tn.Sequential.load(path).predict(x), old.predict(x))   # the old file intact


@pytest.mark.parametrize("content", [b"this is not a model", b"PK\x03\x04truncated zip", None, b""],
                         ids=["garbage", "truncated-zip", "npz-without-architecture", "empty"])
def test_load_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "broken.npz"
    if content is None:
        np.savez(path, w=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"Sequential\.load: .*broken\.npz"):
        tn.Sequential.load(str(path))


def test_load_truncated_saved_model(tmp_path):
    path = tmp_path / "cut.npz"
    _small_model().save(str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        tn.Sequential.load(str(path))


# ════════════════════════════════════════════════════════════════════════════
# Error messages (issue 2, item 8)
# ════════════════════════════════════════════════════════════════════════════

@pytest.mark.parametrize("shape", [(2, 5), (2, 3), (4,), (2, 4, 1), (2, 1, 4)])
def test_linear_wrong_input_width_or_rank(shape):
    with pytest.raises(ValueError, match=rf"Linear\(4, 3\): expected 2-D input with 4 features.*"
                                         rf"got shape {re.escape(str(shape))}"):
        tn.Linear(4, 3)(np.zeros(shape))


def test_sequential_wrong_width_names_the_inner_layer():
    model = tn.Sequential(tn.Linear(4, 8), tn.ReLU(), tn.Linear(7, 2))
    with pytest.raises(ValueError, match=r"Linear\(7, 2\).*7 features.*\(3, 8\)"):
        model.predict(np.zeros((3, 4)))


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss"])
@pytest.mark.parametrize("labels,exc,pattern", [
    ([0, 1, 3], ValueError, r"labels must be in \[0, 3\), got min 0 max 3"),
    ([0, 7, 2], ValueError, r"labels must be in \[0, 3\), got min 0 max 7"),
    ([0, -1, 2], ValueError, r"labels must be in \[0, 3\), got min -1 max 2"),
    ([0.0, 1.0, 2.0], TypeError, r"expected integer class labels, got dtype float64"),
    ([0.5, 1.0, 2.0], TypeError, r"expected integer class labels, got dtype float64"),
    ([True, False, True], TypeError, r"expected integer class labels, got dtype bool"),
], ids=["too-large", "much-too-large", "negative", "integral-floats", "floats", "bools"])
def test_classification_loss_bad_labels(name, labels, exc, pattern):
    with pytest.raises(exc, match=f"{name}: {pattern}"):
        getattr(tn, name)()(np.zeros((3, 3)), np.array(labels))


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "NLLLoss"])
@pytest.mark.parametrize("pred_shape,target_shape,pattern", [
    ((4, 3), (5,), r"expected target of shape \(4,\) for pred \(4, 3\), got \(5,\)"),
    ((4, 3), (4, 3), r"expected target of shape \(4,\) for pred \(4, 3\), got \(4, 3\)"),
    ((4,), (4,), r"expected pred of shape \(N, C\), got \(4,\)"),
    ((2, 3, 4), (2,), r"expected pred of shape \(N, C\), got \(2, 3, 4\)"),
], ids=["target-longer", "target-2d", "pred-1d", "pred-3d"])
def test_classification_loss_shape_mismatch(name, pred_shape, target_shape, pattern):
    with pytest.raises(ValueError, match=f"{name}: {pattern}"):
        getattr(tn, name)()(np.zeros(pred_shape), np.zeros(target_shape, np.int64))


@pytest.mark.parametrize("pred_shape,target_shape", [((4, 3), (4,)), ((4,), (4, 1)), ((4, 3), (3, 4))])
def test_mse_shape_mismatch(pred_shape, target_shape):
    with pytest.raises(ValueError, match=rf"MSELoss: .*same shape, got {re.escape(str(pred_shape))} "
                                         rf"and {re.escape(str(target_shape))}"):
        tn.MSELoss()(np.zeros(pred_shape), np.zeros(target_shape))


def _compiled(lr=0.1, loss=None, **kw):
    model = _small_model()
    return model.compile(tn.SGD(model.parameters(), lr=lr, **kw), loss or tn.CrossEntropyLoss())


def test_fit_xy_length_mismatch():
    with pytest.raises(ValueError, match=r"Sequential\.fit: X has 10 samples but y has 9"):
        _compiled().fit(np.zeros((10, 4)), np.zeros(9, np.int64), verbose=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["X", "y"])
def test_fit_rejects_non_finite_inputs(where, bad):
    X, y = randn(0, (10, 4)), tn.one_hot(np.arange(10) % 3, 3)
    (X if where == "X" else y)[3, 1] = bad
    model = _compiled(loss=tn.MSELoss())
    with pytest.raises(ValueError, match=rf"Sequential\.fit: {where} contains NaN or Inf"):
        model.fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=rf"Sequential\.fit \(validation_data\): {where} contains NaN or Inf"):
        model.fit(np.zeros((4, 4)), tn.one_hot(np.arange(4) % 3, 3), validation_data=(X, y), verbose=0)


def test_fit_non_finite_loss_names_epoch_and_batch():
    X, y = randn(0, (64, 4)), np.arange(64) % 3
    model = _compiled(lr=1e30)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"Sequential\.fit: the loss became (nan|inf) "
                                                                     r"at epoch 1, batch 2 \(lr 1e\+30\)"):
        model.fit(X, y, epochs=3, batch_size=16, verbose=0)


def test_fit_non_finite_loss_in_a_later_epoch():
    X, y = randn(0, (32, 4)), np.arange(32) % 3
    model = _compiled()
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    model.optimizer.lr = 1e30
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"at epoch 2, batch 1"):
        model.fit(X, y, epochs=2, batch_size=32, verbose=0)


@pytest.mark.parametrize("p", [-0.1, 1, 1.0, 1.5, float("nan")])
def test_dropout_p_out_of_range(p):
    with pytest.raises(ValueError, match=rf"Dropout: p must be in \[0, 1\), got {re.escape(str(p))}"):
        tn.Dropout(p)


@pytest.mark.parametrize("lr", [-0.1, -1e-5])
def test_negative_learning_rate(lr):
    with pytest.raises(ValueError, match=rf"SGD: .*lr.*{re.escape(str(lr))}"):
        tn.SGD(tn.Linear(2, 2).parameters(), lr=lr)


def test_fit_and_evaluate_need_compile():
    with pytest.raises(RuntimeError, match=r"Sequential\.fit: call compile"):
        _small_model().fit(np.zeros((4, 4)), np.zeros(4, np.int64), verbose=0)
    with pytest.raises(RuntimeError, match=r"Sequential\.evaluate: call compile"):
        _small_model().evaluate(np.zeros((4, 4)), np.zeros(4, np.int64))


def test_compile_and_add_type_errors():
    model = _small_model()
    with pytest.raises(TypeError, match=r"Sequential\.compile: loss must be a Loss instance.*'mse'"):
        model.compile(tn.SGD(model.parameters(), lr=0.1), "mse")
    with pytest.raises(TypeError, match=r"Sequential\.compile: loss must be a Loss instance"):
        model.compile(tn.SGD(model.parameters(), lr=0.1), tn.MSELoss)
    with pytest.raises(ValueError, match=r"Sequential\.compile: unknown metrics \['f1'\]"):
        model.compile(tn.SGD(model.parameters(), lr=0.1), tn.MSELoss(), metrics=("accuracy", "f1"))
    with pytest.raises(TypeError, match=r"Sequential\.add: expected a Layer, got function"):
        tn.Sequential(tn.Linear(2, 2), lambda x: x)


def test_fit_validation_split_out_of_range():
    with pytest.raises(ValueError, match=r"Sequential\.fit: validation_split must be in \(0, 1\), got 1\.5"):
        _compiled().fit(np.zeros((8, 4)), np.zeros(8, np.int64), validation_split=1.5, verbose=0)


def test_one_hot_and_minibatches_errors():
    np.testing.assert_array_equal(tn.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert tn.one_hot(np.array([1]), 2).dtype == np.float32
    with pytest.raises(ValueError, match=r"one_hot: labels must be in \[0, 3\), got min 0 max 3"):
        tn.one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"one_hot: labels must be in \[0, 3\), got min -2 max 1"):
        tn.one_hot(np.array([-2, 1]), 3)
    with pytest.raises(TypeError, match=r"one_hot: expected 1-D integer labels, got dtype float64"):
        tn.one_hot(np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match=r"minibatches: X has 5 samples but y has 4"):
        next(tn.minibatches(np.zeros((5, 2)), np.zeros(4), 2))
    with pytest.raises(ValueError, match=r"minibatches: batch_size must be >= 1, got 0"):
        next(tn.minibatches(np.zeros((5, 2)), np.zeros(5), 0))


def test_minibatches_partial_last_batch_and_pairing():
    X, y = np.arange(23)[:, None] * np.ones((1, 2)), np.arange(23)
    tn.manual_seed(0)
    batches = list(tn.minibatches(X, y, 5))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(23)) and not np.array_equal(seen, np.arange(23))
    assert all(np.array_equal(xb[:, 0], yb) for xb, yb in batches)       # X and y rows stay paired
    tn.manual_seed(0)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in tn.minibatches(X, y, 5)]), seen)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in tn.minibatches(X, y, 5, shuffle=False)]), y)


# ════════════════════════════════════════════════════════════════════════════
# fit / evaluate / predict / summary / activations
# ════════════════════════════════════════════════════════════════════════════

class Spy(tn.Layer):
    """Identity layer that records, per forward, (training flag, first column of x)."""

    def __init__(self):
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, x[:, 0].copy()))
        self._cache = True
        return x

    def backward(self, grad):
        return grad


def _spied(n_in=4, c=3, lr=0.05, dropout=0.0):
    tn.manual_seed(0)
    spy = Spy()
    model = tn.Sequential(spy, tn.Linear(n_in, 8), tn.ReLU(), tn.Dropout(dropout), tn.Linear(8, c))
    model.compile(tn.SGD(model.parameters(), lr=lr), tn.CrossEntropyLoss())
    return model, spy


def _id_data(n, n_in=4, c=3):
    """Column 0 is the sample index (to see which samples fit used), the rest noise."""
    X = randn(n, (n, n_in)).astype(np.float32)
    X[:, 0] = np.arange(n)
    return X, np.arange(n) % c


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_keeps_last_partial_batch(shuffle):
    model, spy = _spied()
    X, y = _id_data(50)
    model.fit(X, y, epochs=2, batch_size=16, shuffle=shuffle, verbose=0)
    assert [len(ids) for _, ids in spy.calls] == [16, 16, 16, 2] * 2
    assert all(training for training, _ in spy.calls)
    for epoch in (spy.calls[:4], spy.calls[4:]):
        ids = np.concatenate([c[1] for c in epoch])
        assert sorted(ids) == list(range(50))
        assert np.array_equal(ids, np.arange(50)) != shuffle


def test_fit_validation_split_takes_the_tail():
    model, spy = _spied()
    X, y = _id_data(40)
    hist = model.fit(X, y, epochs=2, batch_size=8, validation_split=0.25, verbose=0)
    train_ids = np.concatenate([ids for training, ids in spy.calls if training])
    val_ids = np.concatenate([ids for training, ids in spy.calls if not training])
    assert sorted(train_ids) == sorted(list(range(30)) * 2)                # 30 training samples, each epoch
    np.testing.assert_array_equal(val_ids, np.tile(np.arange(30, 40), 2))
    assert hist.history["val_loss"][-1] == model.evaluate(X[30:], y[30:])["loss"]


def test_fit_validation_data_wins_over_validation_split():
    model, spy = _spied()
    X, y = _id_data(40)
    model.fit(X, y, epochs=1, batch_size=8, validation_data=(X[:5], y[:5]), validation_split=0.25, verbose=0)
    assert sorted(np.concatenate([ids for training, ids in spy.calls if training])) == list(range(40))
    np.testing.assert_array_equal(np.concatenate([ids for training, ids in spy.calls if not training]), range(5))


def test_fit_history_keys_and_lengths():
    model, _ = _spied(lr=0.1)
    X, y = _id_data(30)
    X[:, 0] = 0
    hist = model.fit(X, y, epochs=3, batch_size=8, validation_data=(X[:10], y[:10]), verbose=0)
    assert isinstance(hist, tn.History) and hist.epoch == [0, 1, 2]
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 3 for v in hist.history.values())
    assert hist.history["lr"] == [0.1, 0.1, 0.1]
    assert all(0 <= a <= 1 for a in hist.history["accuracy"] + hist.history["val_accuracy"])
    hist = model.fit(X, y, epochs=2, verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "lr"}


def test_history_to_csv(tmp_path):
    model, _ = _spied()
    X, y = _id_data(20)
    hist = model.fit(X, y, epochs=2, verbose=0)
    path = tmp_path / "history.csv"
    hist.to_csv(str(path))
    assert os.listdir(tmp_path) == ["history.csv"]
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,loss,accuracy,lr" and len(rows) == 3
    assert [float(v) for v in rows[2].split(",")] == [1, hist.history["loss"][1], hist.history["accuracy"][1], 0.05]


def test_fit_loss_is_sample_weighted_epoch_mean():
    model, _ = _spied(lr=0.0)                     # lr 0: the weights never move
    X, y = _id_data(50)
    X[:, 0] = 0
    hist = model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    res = model.evaluate(X, y)
    assert hist.history["loss"][0] == pytest.approx(res["loss"], rel=1e-6)
    assert hist.history["accuracy"][0] == res["accuracy"]


def test_fit_verbose_0_silent_and_2_one_line_per_epoch(capsys):
    model, _ = _spied()
    X, y = _id_data(20)
    model.fit(X, y, epochs=3, verbose=0)
    assert capsys.readouterr() == ("", "")
    model.fit(X, y, epochs=3, validation_split=0.2, verbose=2)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and err == ""
    for i, line in enumerate(lines):
        assert line.startswith(f"epoch {i + 1}/3") and "loss" in line and "val_accuracy" in line


def test_fit_verbose_1_progress_bar(capsys):
    model, _ = _spied()
    X, y = _id_data(20)
    model.fit(X, y, epochs=2, batch_size=8, verbose=1)
    out, err = capsys.readouterr()
    assert "epoch 1/2" in err and "epoch 2/2" in err and "loss" in err


def test_fit_steps_scheduler_per_epoch_or_per_batch():
    class Counting:
        steps = 0

        def step(self):
            self.steps += 1

    class OneCycle(tn.OneCycleLR):
        def __init__(self):
            self.steps = 0

        def step(self):
            self.steps += 1

    class Plateau(tn.ReduceLROnPlateau):
        def __init__(self):
            self.metrics = []

        def step(self, metric):
            self.metrics.append(metric)

    X, y = _id_data(20)
    for scheduler, expected in [(Counting(), 3), (OneCycle(), 3 * 3)]:
        model, _ = _spied()
        model.compile(model.optimizer, model.loss, scheduler=scheduler)
        model.fit(X, y, epochs=3, batch_size=8, verbose=0)
        assert scheduler.steps == expected
    for split, key in [(0.25, "val_loss"), (0.0, "loss")]:
        model, _ = _spied()
        scheduler = Plateau()
        model.compile(model.optimizer, model.loss, scheduler=scheduler)
        hist = model.fit(X, y, epochs=3, batch_size=8, validation_split=split, verbose=0)
        assert scheduler.metrics == hist.history[key]


def _no_caches(model):
    return all(layer._cache is None for layer in model.layers)


def test_predict_evaluate_activations_batched_eval_mode_no_caches():
    model, spy = _spied(dropout=0.5)
    X, y = _id_data(10)
    model.forward(X)                             # leaves training caches behind
    spy.calls.clear()
    out = model.predict(X, batch_size=4)
    assert [len(ids) for _, ids in spy.calls] == [4, 4, 2] and not any(t for t, _ in spy.calls)
    assert model.training and all(l.training for l in model.layers)     # mode restored
    assert _no_caches(model)
    model.eval()
    np.testing.assert_allclose(out, model.forward(X), rtol=1e-6, atol=1e-6)     # dropout off in predict
    model.train()
    np.testing.assert_allclose(model.predict(X, batch_size=3), out, rtol=1e-6, atol=1e-6)
    res = model.evaluate(X, y, batch_size=3)
    assert _no_caches(model) and model.loss._cache is None
    assert set(res) == {"loss", "accuracy"}
    assert res["loss"] == pytest.approx(tn.CrossEntropyLoss()(out, y), rel=1e-6)
    assert res["accuracy"] == np.mean(out.argmax(1) == y)
    acts = model.activations(X, batch_size=4)
    assert _no_caches(model)
    assert [a.shape for a in acts] == [(10, 4), (10, 8), (10, 8), (10, 8), (10, 3)]
    np.testing.assert_array_equal(acts[-1], out)
    np.testing.assert_array_equal(acts[2], np.maximum(acts[1], 0))


def test_evaluate_accuracy_with_one_hot_targets():
    model, _ = _spied()
    model.compile(model.optimizer, tn.MSELoss())
    X, y = _id_data(12)
    res = model.evaluate(X, tn.one_hot(y, 3))
    assert res["accuracy"] == np.mean(model.predict(X).argmax(1) == y)


def test_summary():
    model = tn.Sequential(tn.Linear(4, 16), tn.ReLU(), tn.Dropout(0.2), tn.Linear(16, 3), tn.Softmax())
    text = model.summary()
    for piece in ["Linear(4, 16)", "(None, 16)", "80", "ReLU()", "Dropout(0.2)", "Linear(16, 3)", "(None, 3)", "51",
                  "Softmax()", "Total params: 131"]:
        assert piece in text, piece
    assert len(text.splitlines()) == 5 + 4 and _no_caches(model)
    conv_like = tn.Sequential(tn.Flatten(), tn.Linear(12, 50), tn.Tanh(), tn.Linear(50, 20))
    with pytest.raises(ValueError, match=r"Sequential\.summary: give input_shape"):
        conv_like.summary()
    text = conv_like.summary(input_shape=(3, 4))
    assert "(None, 12)" in text and "650" in text and "Total params: 1,670" in text
    conv_like.predict(np.zeros((2, 3, 4)))
    assert conv_like.summary() == text                                  # the last input shape is remembered


def test_fit_is_deterministic_under_manual_seed():
    def run(seed):
        tn.manual_seed(seed)
        model = tn.Sequential(tn.Linear(4, 16), tn.ReLU(), tn.Dropout(0.3), tn.Linear(16, 3))
        model.compile(tn.SGD(model.parameters(), lr=0.1, momentum=0.9), tn.CrossEntropyLoss())
        X, y = _id_data(40)
        hist = model.fit(X / 40, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0)
        return hist.history, model.state_dict()
    (h1, w1), (h2, w2), (h3, w3) = run(0), run(0), run(1)
    assert h1 == h2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert h1 != h3


def test_fit_casts_float64_inputs_to_model_dtype():
    model, spy = _spied()
    X, y = _id_data(10)
    model.fit(X.astype(np.float64), y, epochs=1, verbose=0)
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert model.predict(X.astype(np.float64)).dtype == np.float32


# ════════════════════════════════════════════════════════════════════════════
# Iris, end to end
# ════════════════════════════════════════════════════════════════════════════

def test_fit_iris_reaches_093_test_accuracy():
    start = time.perf_counter()
    X, y = tn.load_iris()
    assert X.shape == (150, 4) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50, 50, 50]
    tn.manual_seed(0)
    X_train, y_train, X_test, y_test = tn.train_val_split(X, y, 0.3)
    assert len(X_train) == 105 and len(X_test) == 45
    mean, std = X_train.mean(0), X_train.std(0)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    model = tn.Sequential(tn.Linear(4, 16), tn.ReLU(), tn.Linear(16, 3))
    model.compile(tn.SGD(model.parameters(), lr=0.05, momentum=0.9), tn.CrossEntropyLoss())
    hist = model.fit(X_train, y_train, epochs=60, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0] / 3
    assert model.evaluate(X_test, y_test)["accuracy"] >= 0.93
    assert time.perf_counter() - start < 10


# ════════════════════════════════════════════════════════════════════════════
# Dependencies
# ════════════════════════════════════════════════════════════════════════════

def test_import_loads_only_numpy_and_stdlib():
    code = ("import json, sys; before = set(sys.modules); import tinynet; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(tn.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    loaded = json.loads(out)
    assert "tinynet" in loaded and "numpy" in loaded
    foreign = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names | {"numpy", "tinynet"}
               and not re.fullmatch(r"_?cython_\w+", m)]     # registered by numpy's Cython extensions
    assert foreign == []


# ════════════════════════════════════════════════════════════════════════════
# Convolution, pooling and batch normalization
# ════════════════════════════════════════════════════════════════════════════

# ── conv, pooling, batch norm: parity with torch.nn in float64 ────────────────

def _copy_params(ours, theirs):
    """ours <- theirs (float64): parameters and buffers."""
    ours.astype(np.float64).load_state_dict(theirs.state_dict())


def _assert_same_step(ours, theirs, x, rtol=1e-8):
    """One forward and backward on both; compare output, input grad and every param grad."""
    rng = np.random.default_rng(1)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    ours.zero_grad()
    y = ours.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=rtol, atol=1e-12)
    for (name, p), tp in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=rtol, atol=1e-12, err_msg=name)
        tp.grad = None


CONV_CONFIGS = [  # in, out, kernel, stride, padding, bias, input (H, W)
    (3, 5, 3, 1, 0, True, (9, 9)),
    (2, 4, 3, 2, 1, True, (11, 10)),
    (4, 3, 5, 3, 2, True, (13, 9)),
    (3, 6, 1, 1, 0, False, (7, 5)),
    (1, 8, 5, 1, 0, True, (12, 12)),
    (3, 2, (3, 2), (2, 1), (1, 0), True, (8, 7)),
    (2, 3, [2, 4], [1, 3], [2, 1], True, (6, 11)),   # lists, as a JSON config gives them back
    (5, 4, 3, 1, 1, True, (3, 3)),
    (2, 3, 2, 2, 0, True, (7, 9)),                   # stride == kernel: the reshape path, odd sizes
]


@pytest.mark.parametrize("cin, cout, k, s, p, bias, hw", CONV_CONFIGS)
def test_conv2d_matches_torch(cin, cout, k, s, p, bias, hw):
    to_torch = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    theirs = torch.nn.Conv2d(cin, cout, to_torch(k), to_torch(s), to_torch(p), bias=bias).double()
    ours = tn.Conv2d(cin, cout, k, stride=s, padding=p, bias=bias)
    _copy_params(ours, theirs)
    x = np.random.default_rng(0).standard_normal((3, cin) + hw)
    _assert_same_step(ours, theirs, x)
    _assert_same_step(ours, theirs, 2 * x)           # again: caches are refreshed, grads accumulate from zero


POOL_CONFIGS = [  # kernel, stride, padding, input (H, W)
    (2, None, 0, (8, 8)),
    (2, None, 0, (9, 7)),                            # odd sizes are floored
    (3, 2, 1, (9, 9)),                               # overlapping windows, padding
    (3, 1, 0, (6, 7)),
    (3, 3, 1, (10, 8)),
    ((2, 3), (1, 2), (1, 1), (7, 9)),
    (5, 2, 2, (11, 6)),
    ([3, 2], [2, 2], [1, 0], (7, 6)),
    ((2, 3), None, 0, (7, 10)),                      # non-square, stride == kernel
    ((2, 3), (2, 1), 0, (8, 9)),
]


@pytest.mark.parametrize("cls", ["MaxPool2d", "AvgPool2d"])
@pytest.mark.parametrize("k, s, p, hw", POOL_CONFIGS)
def test_pool2d_matches_torch(cls, k, s, p, hw):
    to_torch = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    theirs = getattr(torch.nn, cls)(to_torch(k), to_torch(s), to_torch(p))
    ours = getattr(tn, cls)(k, stride=s, padding=p)
    x = np.random.default_rng(0).standard_normal((2, 3) + hw)
    _assert_same_step(ours, theirs, x)


@pytest.mark.parametrize("k, s, p", [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), 1, 0)])
def test_maxpool2d_ties_route_to_one_element_as_torch(k, s, p):
    rng = np.random.default_rng(0)
    for x in (np.ones((2, 2, 7, 8)), rng.integers(0, 3, (2, 2, 7, 8)).astype(np.float64)):
        _assert_same_step(tn.MaxPool2d(k, stride=s, padding=p), torch.nn.MaxPool2d(k, s, p), x)
    # each window sends its gradient to exactly one element: the total is preserved
    ours = tn.MaxPool2d(2)
    ours.forward(np.zeros((1, 1, 4, 4)))
    np.testing.assert_array_equal(ours.backward(np.ones((1, 1, 2, 2)))[0, 0],
                                  [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_maxpool2d_propagates_nan_as_torch():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    _assert_same_step(tn.MaxPool2d(2), torch.nn.MaxPool2d(2), x)


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (8, 5)), ("BatchNorm1d", (3, 4)),
                                        ("BatchNorm2d", (4, 3, 5, 6)), ("BatchNorm2d", (2, 4, 3, 3)),
                                        ("BatchNorm2d", (5, 2, 1, 7)), ("BatchNorm2d", (2, 1, 4, 4))])
@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3)])
def test_batchnorm_matches_torch_in_training_then_eval(cls, shape, momentum, eps):
    rng = np.random.default_rng(0)
    theirs = getattr(torch.nn, cls)(shape[1], eps=eps, momentum=momentum).double()
    with torch.no_grad():                            # non-trivial affine parameters
        theirs.weight.copy_(torch.tensor(rng.uniform(0.5, 2, shape[1])))
        theirs.bias.copy_(torch.tensor(rng.standard_normal(shape[1])))
    ours = getattr(tn, cls)(shape[1], eps=eps, momentum=momentum)
    _copy_params(ours, theirs)
    for step in range(4):                            # batch statistics and running statistics
        x = rng.standard_normal(shape) * (step + 1) + step
        _assert_same_step(ours, theirs, x)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-8, atol=1e-12)
    ours.eval(), theirs.eval()                       # normalised by the running statistics
    _assert_same_step(ours, theirs, rng.standard_normal(shape) + 1)


# ── initialisation, dtype, configuration ─────────────────────────────────────

def test_conv2d_init_like_torch():
    tn.manual_seed(0)
    layer = tn.Conv2d(3, 16, (5, 3))
    bound = 1 / np.sqrt(3 * 5 * 3)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.data.shape == (16, 3, 5, 3) and layer.bias.data.shape == (16,)
    for p in layer.parameters():
        assert p.data.dtype == np.float32
        assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.8 * bound
    assert tn.Conv2d(3, 16, 3, bias=False).bias is None and len(tn.Conv2d(3, 16, 3, bias=False).parameters()) == 1
    tn.manual_seed(0)
    np.testing.assert_array_equal(tn.Conv2d(3, 16, [5, 3]).weight.data, layer.weight.data)


def test_batchnorm_init_like_torch():
    bn = tn.BatchNorm2d(4)
    assert bn.buffers == ("running_mean", "running_var")
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    for a, value in ((bn.weight.data, 1), (bn.bias.data, 0), (bn.running_mean, 0), (bn.running_var, 1)):
        assert a.dtype == np.float32 and a.shape == (4,) and np.all(a == value)
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)


@pytest.mark.parametrize("layer, shape", [(lambda: tn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 8)),
                                          (lambda: tn.MaxPool2d(3, 2, 1), (2, 3, 9, 8)),
                                          (lambda: tn.AvgPool2d(2), (2, 3, 9, 8)),
                                          (lambda: tn.BatchNorm2d(3), (2, 3, 9, 8)),
                                          (lambda: tn.BatchNorm1d(3), (4, 3))])
def test_float32_stays_float32(layer, shape):
    layer = layer()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32 and dx.shape == x.shape
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    assert all(b.dtype == np.float32 for _, b in layer.named_buffers())
    # Conv2d keeps the batch innermost: its output is an NCHW view of (C, H, W, N) memory
    assert (y.transpose(1, 2, 3, 0) if isinstance(layer, tn.Conv2d) else y).flags.c_contiguous


def test_conv2d_float32_close_to_torch():
    rng = np.random.default_rng(0)
    theirs = torch.nn.Conv2d(8, 16, 3, padding=1)
    ours = tn.Conv2d(8, 16, 3, padding=1).load_state_dict(theirs.state_dict())
    x = rng.standard_normal((4, 8, 12, 12), dtype=np.float32)
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_conv2d_first_layer_can_skip_the_input_gradient():
    layer = tn.Conv2d(2, 3, 3).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    layer.backward(np.ones_like(layer.forward(x)))
    expected = layer.weight.grad.copy()
    layer.zero_grad()
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(np.ones((2, 3, 4, 4))) is None
    np.testing.assert_allclose(layer.weight.grad, expected)


@pytest.mark.parametrize("layer", [lambda: tn.Conv2d(2, 3, 3, padding=1), lambda: tn.BatchNorm2d(2)])
def test_backward_adds_into_grads(layer):
    layer = layer().astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    g = np.random.default_rng(1).standard_normal((2, layer.weight.shape[0], 5, 5))
    layer.forward(x), layer.backward(g)
    once = [p.grad.copy() for p in layer.parameters()]
    layer.forward(x), layer.backward(g)
    for p, p1 in zip(layer.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * p1)


def test_repr_and_config_round_trip():
    layer = tn.Conv2d(3, 8, (3, 5), stride=2, padding=[1, 2])
    assert repr(layer) == "Conv2d(3, 8, (3, 5), stride=2, padding=[1, 2])"
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 5), (2, 2), (1, 2))
    assert tn.MaxPool2d(2).stride == (2, 2) and tn.AvgPool2d(3, 1).stride == (1, 1)


def test_sequential_save_load_round_trip(tmp_path):
    model = tn.Sequential(tn.Conv2d(1, 2, (3, 2), padding=(1, 0)), tn.BatchNorm2d(2), tn.MaxPool2d(2),
                          tn.AvgPool2d(2, 1))
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 9)).astype(np.float32)
    model.forward(x)                                 # running statistics move away from 0 / 1
    model.eval()
    model.save(tmp_path / "m.npz")
    loaded = tn.Sequential.load(tmp_path / "m.npz").eval()
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


# ── numerical gradient checks ────────────────────────────────────────────────

@pytest.mark.parametrize("layer, shape", [
    (lambda: tn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 6)),
    (lambda: tn.Conv2d(2, 2, (2, 3), padding=(0, 2)), (2, 2, 4, 3)),
    (lambda: tn.MaxPool2d(3, 2, 1), (2, 2, 5, 6)),
    (lambda: tn.MaxPool2d(2), (2, 2, 4, 5)),
    (lambda: tn.AvgPool2d(3, 2, 1), (2, 2, 5, 6)),
    (lambda: tn.BatchNorm1d(3), (5, 3)),
    (lambda: tn.BatchNorm2d(2), (3, 2, 3, 2)),
    (lambda: tn.BatchNorm2d(2).eval(), (3, 2, 3, 2)),
])
def test_gradcheck(layer, shape):
    layer = layer().astype(np.float64)
    for p in layer.parameters():                     # away from the ones / zeros init
        p.data[...] = np.random.default_rng(2).uniform(0.5, 1.5, p.data.shape)
    x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape) / 10.0   # no ties
    assert tn.gradcheck(layer, x) < 1e-6


# ── bad input ────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("layer, shape, match", [
    (lambda: tn.Conv2d(3, 4, 3), (2, 4, 8, 8), r"Conv2d\(3, 4, 3\).*3 channels.*\(2, 4, 8, 8\)"),
    (lambda: tn.Conv2d(3, 4, 3), (3, 8, 8), r"Conv2d\(3, 4, 3\).*4-D.*\(3, 8, 8\)"),
    (lambda: tn.Conv2d(3, 4, 5, padding=1), (2, 3, 2, 9),
     r"Conv2d\(3, 4, 5, padding=1\).*kernel \(5, 5\).*larger.*\(4, 11\).*\(2, 3, 2, 9\)"),
    (lambda: tn.MaxPool2d(3), (2, 3, 2, 9), r"MaxPool2d\(3\).*kernel \(3, 3\).*larger.*\(2, 9\)"),
    (lambda: tn.AvgPool2d(2), (2, 8, 8), r"AvgPool2d\(2\).*4-D.*\(2, 8, 8\)"),
    (lambda: tn.BatchNorm2d(3), (2, 4, 5, 5), r"BatchNorm2d\(3\).*3 features.*\(2, 4, 5, 5\)"),
    (lambda: tn.BatchNorm2d(3), (2, 3, 5), r"BatchNorm2d\(3\).*4-D.*\(2, 3, 5\)"),
    (lambda: tn.BatchNorm1d(3), (2, 3, 5), r"BatchNorm1d\(3\).*2-D.*\(2, 3, 5\)"),
    (lambda: tn.BatchNorm1d(3), (1, 3), r"BatchNorm1d\(3\).*more than 1 value per channel.*\(1, 3\)"),
])
def test_bad_input_raises_naming_layer_and_shapes(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().forward(np.zeros(shape, np.float32))


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"Conv2d: kernel_size.*\(3, 3, 3\)"):
        tn.Conv2d(1, 1, (3, 3, 3))
    with pytest.raises(TypeError, match=r"MaxPool2d: stride.*1.5"):
        tn.MaxPool2d(2, 1.5)
    with pytest.raises(ValueError, match=r"MaxPool2d: padding \(2, 2\).*half.*\(3, 3\)"):
        tn.MaxPool2d(3, padding=2)
    with pytest.raises(ValueError, match=r"Conv2d: stride must be >= 1, got \(1, 0\)"):
        tn.Conv2d(1, 1, 3, stride=(1, 0))
    with pytest.raises(ValueError, match=r"AvgPool2d: padding must be >= 0, got -1"):
        tn.AvgPool2d(3, padding=-1)


# ── end to end: a CNN against torch.nn.Sequential ────────────────────────────

def test_cnn_sequential_matches_torch():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, (3, 2), stride=(1, 2)), torch.nn.Flatten(), torch.nn.Linear(6 * 3 * 2, 5)).double()
    ours = tn.Sequential(
        tn.Conv2d(1, 4, 3, padding=1), tn.BatchNorm2d(4), tn.ReLU(), tn.MaxPool2d(2),
        tn.Conv2d(4, 6, (3, 2), stride=(1, 2)), tn.Flatten(), tn.Linear(6 * 3 * 2, 5)).astype(np.float64)
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 1, 10, 9)), rng.integers(0, 5, 8)
    loss_t = torch.nn.CrossEntropyLoss()(theirs(torch.tensor(x)), torch.tensor(y))
    loss_t.backward()
    loss_fn = tn.CrossEntropyLoss()
    loss = loss_fn.forward(ours.forward(x), y)
    ours.backward(loss_fn.backward())
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-10)
    named_t = dict(theirs.named_parameters())
    assert [k for k, _ in ours.named_parameters()] == list(named_t)
    for k, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, named_t[k].grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=k)
    for k, b in ours.named_buffers():
        np.testing.assert_allclose(b, theirs.state_dict()[k].numpy(), rtol=1e-10, err_msg=k)


# ════════════════════════════════════════════════════════════════════════════
# Optimizers and schedulers
# ════════════════════════════════════════════════════════════════════════════

# ── optimizers and schedulers against torch.optim, side by side ──────────────

OPT_SHAPES = [(5, 3), (7,), (2, 3, 4, 4)]


def _drive(opt_name, opt_kw, steps=60, sched=None, sched_kw=None, metrics=None, shapes=OPT_SHAPES):
    """Run tinynet's and torch's optimizer (and scheduler) on the same random float64 gradients.

    Returns, for each side: the parameters at the end, and per step the lr, get_last_lr()[0]
    and momentum (SGD/RMSprop `momentum`, else `betas[0]`) in force for that step.
    """
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s) for s in shapes]
    ours = [tn.Parameter(a.copy()) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt, topt = getattr(tn, opt_name)(ours, **opt_kw), getattr(torch.optim, opt_name)(theirs, **opt_kw)
    if sched:
        s, ts = getattr(tn, sched)(opt, **sched_kw), getattr(torch.optim.lr_scheduler, sched)(topt, **sched_kw)
    mom = "betas" if opt_name.startswith("Adam") else "momentum"
    rec, trec = [], []
    for i in range(steps):
        group = topt.param_groups[0]
        rec.append((opt.lr, s.get_last_lr()[0] if sched else opt.lr, np.ravel(getattr(opt, mom, 0.0))[0]))
        trec.append((group["lr"], ts.get_last_lr()[0] if sched else group["lr"], np.ravel(group.get(mom, 0.0))[0]))
        grads = [rng.standard_normal(sh) for sh in shapes]
        opt.zero_grad()
        for p, g in zip(ours, grads):
            p.grad += g
        opt.step()
        for t, g in zip(theirs, grads):
            t.grad = torch.tensor(g)
        topt.step()
        if sched:
            args = () if metrics is None else (metrics[i],)
            s.step(*args)
            ts.step(*args)
    return ([p.data for p in ours], np.array(rec)), ([t.detach().numpy() for t in theirs], np.array(trec))


OPTIMIZER_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.005, alpha=0.9, eps=1e-4)),
    ("RMSprop", dict(weight_decay=0.1)),
    ("RMSprop", dict(momentum=0.9)),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(lr=0.003, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.05)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", dict(weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.5, eps=1e-3)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.05, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    ("AdamW", dict(lr=0.01, weight_decay=0.0, betas=(0.7, 0.95))),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("name, kw", OPTIMIZER_CONFIGS)
def test_optimizer_matches_torch(name, kw):
    (ours, _), (theirs, _) = _drive(name, kw, steps=60)
    for a, b, a0 in zip(ours, theirs, _drive(name, kw, steps=0)[0][0]):
        assert not np.allclose(a, a0)          # the parameters did move
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def _lion_reference(p, grads, lr, betas, weight_decay):
    """Chen et al. 2023, Algorithm 2 (Lion), written out step by step."""
    beta1, beta2 = betas
    m = np.zeros_like(p)
    for g in grads:
        c = beta1 * m + (1 - beta1) * g                  # interpolation
        p = p - lr * (np.sign(c) + weight_decay * p)     # sign update + decoupled weight decay
        m = beta2 * m + (1 - beta2) * g                  # momentum update
    return p


@pytest.mark.parametrize("kw", [dict(), dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1),
                                dict(lr=3e-3, betas=(0.0, 0.5), weight_decay=1.0)])
def test_lion_matches_paper(kw):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in OPT_SHAPES]
    params = [tn.Parameter(a.copy()) for a in init]
    opt = tn.Lion(params, **kw)
    grads = [[rng.standard_normal(s) for s in OPT_SHAPES] for _ in range(60)]
    for step in grads:
        opt.zero_grad()
        for p, g in zip(params, step):
            p.grad += g
        opt.step()
    full = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0) | kw
    for i, (p, a) in enumerate(zip(params, init)):
        np.testing.assert_allclose(p.data, _lion_reference(a, [s[i] for s in grads], **full), rtol=1e-10, atol=1e-13)


ALL_OPTIMIZERS = [(n, kw) for n, kw in OPTIMIZER_CONFIGS if n != "SGD" or kw.get("momentum")] + [
    ("Lion", dict(weight_decay=0.1))]


@pytest.mark.parametrize("name, kw", ALL_OPTIMIZERS)
def test_optimizer_keeps_float32_and_keys_state_by_parameter(name, kw):
    a, b = tn.Parameter(np.ones((3, 2), np.float32)), tn.Parameter(np.ones((3, 2), np.float32))
    opt = getattr(tn, name)([a, b], **kw)
    for _ in range(3):
        a.grad[...], b.grad[...] = 0.5, -0.25
        opt.step()
    assert set(opt.state) == {a, b}                      # one entry per Parameter object, same shapes
    assert a.data.dtype == b.data.dtype == np.float32
    assert all(v.dtype == np.float32 for st in opt.state.values() for v in st.values() if isinstance(v, np.ndarray))
    assert not np.allclose(a.data, b.data)               # their states did not mix


def test_optimizer_lr_is_writable_and_zero_grad():
    p = tn.Parameter(np.ones(3, np.float32))
    opt = tn.SGD([p], lr=0.1)
    opt.lr = np.float64(0.5)
    assert opt.lr == 0.5 and type(opt.lr) is float      # a NumPy scalar would promote float32 math
    p.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(p.data, 0.5)
    opt.zero_grad()
    np.testing.assert_array_equal(p.grad, 0.0)


OPTIMIZER_INVALID = [
    ("SGD", dict(lr=-0.1), "SGD: expected lr >= 0, got -0.1"),
    ("SGD", dict(lr=0.1, momentum=-0.5), "SGD: expected momentum >= 0, got -0.5"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "SGD: expected weight_decay >= 0, got -0.0001"),
    ("SGD", dict(lr=0.1, nesterov=True), r"SGD: nesterov=True expects momentum > 0 and dampening = 0, got momentum=0"),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"dampening = 0, got .*dampening=0.1"),
    ("RMSprop", dict(lr=-1.0), "RMSprop: expected lr >= 0, got -1.0"),
    ("RMSprop", dict(alpha=-0.5), "RMSprop: expected alpha >= 0, got -0.5"),
    ("RMSprop", dict(eps=-1e-8), "RMSprop: expected eps >= 0, got -1e-08"),
    ("RMSprop", dict(momentum=-0.9), "RMSprop: expected momentum >= 0, got -0.9"),
    ("RMSprop", dict(weight_decay=-0.1), "RMSprop: expected weight_decay >= 0, got -0.1"),
    ("Adagrad", dict(lr=-0.01), "Adagrad: expected lr >= 0, got -0.01"),
    ("Adagrad", dict(lr_decay=-0.1), "Adagrad: expected lr_decay >= 0, got -0.1"),
    ("Adagrad", dict(weight_decay=-0.1), "Adagrad: expected weight_decay >= 0, got -0.1"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), "Adagrad: expected initial_accumulator_value >= 0, got -1.0"),
    ("Adagrad", dict(eps=-1.0), "Adagrad: expected eps >= 0, got -1.0"),
    ("Adam", dict(lr=-1e-3), "Adam: expected lr >= 0, got -0.001"),
    ("Adam", dict(eps=-1e-8), "Adam: expected eps >= 0, got -1e-08"),
    ("Adam", dict(betas=(1.0, 0.999)), r"Adam: expected betas\[0\] in \[0, 1\), got 1.0"),
    ("Adam", dict(betas=(-0.1, 0.999)), r"Adam: expected betas\[0\] in \[0, 1\), got -0.1"),
    ("Adam", dict(betas=(0.9, 1.5)), r"Adam: expected betas\[1\] in \[0, 1\), got 1.5"),
    ("Adam", dict(weight_decay=-0.1), "Adam: expected weight_decay >= 0, got -0.1"),
    ("AdamW", dict(lr=-1e-3), "AdamW: expected lr >= 0, got -0.001"),
    ("AdamW", dict(eps=-1.0), "AdamW: expected eps >= 0, got -1.0"),
    ("AdamW", dict(betas=(0.9, 1.0)), r"AdamW: expected betas\[1\] in \[0, 1\), got 1.0"),
    ("AdamW", dict(weight_decay=-0.01), "AdamW: expected weight_decay >= 0, got -0.01"),
    ("Lion", dict(lr=-1e-4), "Lion: expected lr >= 0, got -0.0001"),
    ("Lion", dict(betas=(1.0, 0.99)), r"Lion: expected betas\[0\] in \[0, 1\), got 1.0"),
    ("Lion", dict(betas=(0.9, -0.99)), r"Lion: expected betas\[1\] in \[0, 1\), got -0.99"),
    ("Lion", dict(weight_decay=-1.0), "Lion: expected weight_decay >= 0, got -1.0"),
]


@pytest.mark.parametrize("name, kw, match", OPTIMIZER_INVALID)
def test_optimizer_validation(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(tn, name)([tn.Parameter(np.zeros(2))], **kw)
    if name != "Lion":                                   # torch rejects the same arguments
        with pytest.raises(ValueError):
            getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kw)


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adagrad", "Adam", "AdamW", "Lion"])
def test_optimizer_rejects_empty_or_non_parameters(name):
    with pytest.raises(ValueError, match=f"{name}: expected a non-empty iterable of Parameters, got an empty one"):
        getattr(tn, name)(iter([]), lr=0.1)
    with pytest.raises(TypeError, match=f"{name}: expected Parameters, got ndarray"):
        getattr(tn, name)([np.zeros(2)], lr=0.1)


# ── schedulers ────────────────────────────────────────────────────────────────

SCHEDULER_CONFIGS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=30)),
    ("MultiStepLR", dict(milestones=[10, 30, 30, 80], gamma=0.5)),
    ("MultiStepLR", dict(milestones=[0, 50, 100])),
    ("ExponentialLR", dict(gamma=0.97)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=0.05, total_iters=40)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=60)),
    ("CosineAnnealingLR", dict(T_max=30)),
    ("CosineAnnealingLR", dict(T_max=100, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", dict(T_0=10)),
    ("CosineAnnealingWarmRestarts", dict(T_0=5, T_mult=2, eta_min=0.01)),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=150)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=150, anneal_strategy="linear")),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=150, pct_start=0.25, three_phase=True)),
    ("OneCycleLR", dict(max_lr=0.3, epochs=10, steps_per_epoch=15, anneal_strategy="linear", three_phase=True,
                        div_factor=10.0, final_div_factor=100.0, cycle_momentum=False)),
]


@pytest.mark.parametrize("sched, kw", SCHEDULER_CONFIGS)
def test_scheduler_matches_torch(sched, kw):
    opt_kw = dict(lr=0.1, momentum=0.9)
    (ours, rec), (theirs, trec) = _drive("SGD", opt_kw, steps=150, sched=sched, sched_kw=kw)
    assert len(set(rec[:, 0])) > 2                       # the lr does change
    np.testing.assert_allclose(rec, trec, rtol=1e-13, atol=0)   # lr, get_last_lr and momentum at every step
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("opt_name, opt_kw", [("Adam", dict(lr=0.01)), ("AdamW", dict(betas=(0.9, 0.9))),
                                              ("SGD", dict(lr=0.1)), ("RMSprop", dict())])
@pytest.mark.parametrize("kw", [dict(max_lr=0.05, total_steps=100),
                                dict(max_lr=0.02, total_steps=120, base_momentum=0.7, max_momentum=0.9,
                                     three_phase=True, anneal_strategy="linear")])
def test_one_cycle_cycles_momentum_like_torch(opt_name, opt_kw, kw):
    (ours, rec), (theirs, trec) = _drive(opt_name, opt_kw, steps=kw["total_steps"], sched="OneCycleLR", sched_kw=kw)
    lo, hi = kw.get("base_momentum", 0.85), kw.get("max_momentum", 0.95)
    np.testing.assert_allclose(rec[:, 2].min(), lo), np.testing.assert_allclose(rec[:, 2].max(), hi)
    np.testing.assert_allclose(rec, trec, rtol=1e-13, atol=0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_one_cycle_lion_cycles_beta1():
    opt = tn.Lion([tn.Parameter(np.zeros(2))])
    sched = tn.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    assert opt.betas == (0.95, 0.99)
    for _ in range(3):
        sched.step()
    assert 0.85 <= opt.betas[0] < 0.95 and opt.betas[1] == 0.99


def _plateau_metrics():
    rng = np.random.default_rng(2)
    return np.concatenate([np.linspace(1.0, 0.5, 20), np.full(15, 0.5), 0.5 - 1e-6 * np.arange(12),
                           0.49 - 3e-4 * np.arange(12),   # steps above rel 1e-4, below abs 1e-3
                           np.linspace(0.48, 0.3, 10), 0.3 + 0.05 * rng.random(30), np.full(13, 0.2)])


@pytest.mark.parametrize("kw, sign, lr", [
    (dict(), 1, 0.1),
    (dict(mode="max", factor=0.5, patience=3, threshold=0.01, cooldown=2), -1, 0.1),
    (dict(threshold_mode="abs", threshold=0.001, patience=2, cooldown=1, factor=0.5, min_lr=1e-4), 1, 0.1),
    (dict(mode="max", threshold_mode="abs", threshold=0.0, patience=0, factor=0.5), 1, 1e-6),   # eps stops it
])
def test_reduce_lr_on_plateau_matches_torch(kw, sign, lr):
    metrics = sign * _plateau_metrics()
    (ours, rec), (theirs, trec) = _drive("SGD", dict(lr=lr, momentum=0.9), steps=len(metrics),
                                         sched="ReduceLROnPlateau", sched_kw=kw, metrics=metrics)
    assert len(metrics) >= 100 and len(set(rec[:, 0])) > 2
    np.testing.assert_allclose(rec, trec, rtol=1e-13, atol=0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


SCHEDULER_INVALID = [
    ("LinearLR", dict(start_factor=0.0), r"LinearLR: expected start_factor in \(0, 1\], got 0.0"),
    ("LinearLR", dict(end_factor=1.5), r"LinearLR: expected end_factor in \[0, 1\], got 1.5"),
    ("CosineAnnealingWarmRestarts", dict(T_0=0), "CosineAnnealingWarmRestarts: expected a positive integer T_0, got 0"),
    ("CosineAnnealingWarmRestarts", dict(T_0=10, T_mult=0), "expected an integer T_mult >= 1, got 0"),
    ("OneCycleLR", dict(max_lr=0.1), r"OneCycleLR: expected a positive integer total_steps \(or epochs and "
                                     r"steps_per_epoch\), got None"),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=0), "expected a positive integer total_steps .*got 0"),
    ("OneCycleLR", dict(max_lr=0.1, epochs=0, steps_per_epoch=10),
     "OneCycleLR: expected a positive integer epochs, got 0"),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=10, pct_start=1.5), r"expected a float pct_start in \[0, 1\], got 1.5"),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=10, anneal_strategy="exp"),
     "OneCycleLR: expected anneal_strategy 'cos' or 'linear', got 'exp'"),
    ("ReduceLROnPlateau", dict(factor=1.0), "ReduceLROnPlateau: expected factor < 1.0, got 1.0"),
    ("ReduceLROnPlateau", dict(mode="mean"), "ReduceLROnPlateau: expected mode 'min' or 'max', got 'mean'"),
    ("ReduceLROnPlateau", dict(threshold_mode="pct"), "expected threshold_mode 'rel' or 'abs', got 'pct'"),
]


@pytest.mark.parametrize("name, kw, match", SCHEDULER_INVALID)
def test_scheduler_validation(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(tn, name)(tn.SGD([tn.Parameter(np.zeros(2))], lr=0.1), **kw)
    with pytest.raises(ValueError):
        getattr(torch.optim.lr_scheduler, name)(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1), **kw)


def test_scheduler_errors_beyond_torch_validation():
    opt = tn.Adagrad([tn.Parameter(np.zeros(2))])
    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum=True expects an optimizer with momentum or "
                                         "betas, got Adagrad"):
        tn.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    sched = tn.OneCycleLR(opt, max_lr=0.1, total_steps=3, cycle_momentum=False)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="OneCycleLR: stepped 4 times, but total_steps is 3"):
        sched.step()
    with pytest.raises(TypeError, match="StepLR: expected an Optimizer, got list"):
        tn.StepLR([], step_size=2)
    with pytest.raises(TypeError, match="ReduceLROnPlateau: expected an Optimizer, got NoneType"):
        tn.ReduceLROnPlateau(None)


# ── schedulers with Sequential.fit ───────────────────────────────────────────

def _fit_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    return X, (X @ rng.standard_normal((4, 3))).argmax(1)


def _fit_model(opt_cls=None, **opt_kw):
    tn.manual_seed(0)
    model = tn.Sequential([tn.Linear(4, 8), tn.ReLU(), tn.Linear(8, 3)])
    return model, (opt_cls or tn.SGD)(model.parameters(), **opt_kw)


def _torch_lrs(sched, kw, steps, metrics=None, lr=0.1):
    """torch's lr before each of `steps` scheduler steps, and after the last (metrics: ReduceLROnPlateau's)."""
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    ts, lrs = getattr(torch.optim.lr_scheduler, sched)(topt, **kw), []
    for i in range(steps):
        lrs.append(topt.param_groups[0]["lr"])
        topt.step()
        ts.step(*(() if metrics is None else (metrics[i],)))
    return lrs + [topt.param_groups[0]["lr"]]


def test_fit_steps_epoch_scheduler_per_epoch():
    X, y = _fit_data()
    model, opt = _fit_model(lr=0.1, momentum=0.9)
    model.compile(opt, tn.CrossEntropyLoss(), scheduler=tn.CosineAnnealingLR(opt, T_max=4, eta_min=0.01))
    hist = model.fit(X, y, epochs=6, batch_size=16, verbose=0)
    expected = _torch_lrs("CosineAnnealingLR", dict(T_max=4, eta_min=0.01), 6)
    np.testing.assert_allclose(hist.history["lr"], expected[:6], rtol=1e-13)
    assert opt.lr == pytest.approx(expected[6], rel=1e-13)


def test_fit_steps_one_cycle_per_batch():
    X, y = _fit_data()                                         # 64 samples / 16 = 4 batches per epoch
    model, opt = _fit_model(tn.Adam)
    sched = tn.OneCycleLR(opt, max_lr=0.05, epochs=3, steps_per_epoch=4)
    model.compile(opt, tn.CrossEntropyLoss(), scheduler=sched)
    hist = model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    expected = _torch_lrs("OneCycleLR", dict(max_lr=0.05, total_steps=12), 12)
    np.testing.assert_allclose(hist.history["lr"], expected[:12:4], rtol=1e-13)
    assert sched.last_epoch == 12 and opt.lr == pytest.approx(expected[12], rel=1e-13)


def test_fit_feeds_val_loss_to_reduce_lr_on_plateau():
    X, y = _fit_data()
    Xv, yv = X[:32], (y[:32] + 1) % 3                     # wrong labels: val_loss rises while loss falls
    model, opt = _fit_model(lr=0.1, momentum=0.9)
    kw = dict(patience=0, factor=0.5)
    model.compile(opt, tn.CrossEntropyLoss(), scheduler=tn.ReduceLROnPlateau(opt, **kw))
    hist = model.fit(X, y, epochs=8, batch_size=16, validation_data=(Xv, yv), verbose=0).history
    expected = _torch_lrs("ReduceLROnPlateau", kw, 8, hist["val_loss"])
    assert expected != _torch_lrs("ReduceLROnPlateau", kw, 8, hist["loss"])   # the test tells them apart
    np.testing.assert_allclose(hist["lr"] + [opt.lr], expected, rtol=1e-13)


def test_fit_feeds_train_loss_to_reduce_lr_on_plateau_without_validation():
    X, y = _fit_data()
    model, opt = _fit_model(lr=0.1, momentum=0.9)
    kw = dict(mode="max", patience=1, factor=0.5)         # a falling loss is "no improvement" in max mode
    model.compile(opt, tn.CrossEntropyLoss(), scheduler=tn.ReduceLROnPlateau(opt, **kw))
    hist = model.fit(X, y, epochs=8, batch_size=16, verbose=0).history
    expected = _torch_lrs("ReduceLROnPlateau", kw, 8, hist["loss"])
    assert len(set(expected)) > 2
    np.testing.assert_allclose(hist["lr"] + [opt.lr], expected, rtol=1e-13)


# ════════════════════════════════════════════════════════════════════════════
# Data: IDX, MNIST, SVHN, Iris, downloads, splits and minibatches
# ════════════════════════════════════════════════════════════════════════════

# ── data: IDX ───────────────────────────────────────────────────────────────

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


def idx_bytes(a, code=None):
    """An IDX file's content for array a (type byte from its dtype unless given)."""
    code = code if code is not None else {np.dtype(t): c for c, t in IDX_TYPES.items()}[a.dtype]
    return (bytes([0, 0, code, a.ndim]) + np.array(a.shape, ">u4").tobytes()
            + a.astype(a.dtype.newbyteorder(">")).tobytes())


def write_idx(path, a, gz=True):
    content = idx_bytes(a) if isinstance(a, np.ndarray) else a
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


@pytest.mark.parametrize("code", sorted(IDX_TYPES))
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)])
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_round_trip(tmp_path, code, shape, gz):
    dtype = np.dtype(IDX_TYPES[code])
    rng = np.random.default_rng(code)
    if dtype.kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    # the name says the opposite of the content: gzip is detected by its magic bytes
    path = write_idx(tmp_path / ("a.idx" if gz else "a.idx.gz"), a, gz)
    out = tn.load_idx(str(path))
    assert out.dtype == dtype and out.dtype.isnative and out.shape == shape
    np.testing.assert_array_equal(out, a)
    out[...] = 0                                  # a normal, writable array
    assert tn.load_idx(path).shape == shape       # pathlib paths work too


GOOD = idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
IDX_CORRUPTIONS = {
    "bad magic": b"\x01\x00" + GOOD[2:],
    "bad magic (text file)": b"hello, world\n",
    "unknown type": GOOD[:2] + b"\x0a" + GOOD[3:],
    "empty file": b"",
    "truncated header": GOOD[:3],
    "truncated dimensions": GOOD[:10],
    "truncated payload": GOOD[:-1],
    "trailing bytes": GOOD + b"\0",
}


@pytest.mark.parametrize("case", IDX_CORRUPTIONS)
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_corrupt(tmp_path, case, gz):
    assert tn.load_idx(write_idx(tmp_path / "good-file.idx", GOOD, gz)).shape == (2, 3, 4)
    path = write_idx(tmp_path / "bad-file.idx", IDX_CORRUPTIONS[case], gz)
    with pytest.raises(ValueError, match=r"load_idx.*bad-file\.idx"):
        tn.load_idx(path)


@pytest.mark.parametrize("case", ["flipped byte", "truncated", "trailing garbage"])
def test_load_idx_corrupt_gzip(tmp_path, case):
    z = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    bad = {"flipped byte": z[:40] + bytes([z[40] ^ 0xFF]) + z[41:],
           "truncated": z[:len(z) // 2],
           "trailing garbage": z + b"garbage"}[case]
    path = tmp_path / "bad-stream.gz"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=r"load_idx.*bad-stream\.gz.*gzip"):
        tn.load_idx(path)


# ── data: real MNIST and Iris (from $TINYNET_DATA, ../shared/data in CI) ───

DATA = os.environ.get("TINYNET_DATA") or os.path.join(os.path.dirname(os.path.abspath(tn.__file__)),
                                                      "..", "shared", "data")


def need(path):
    if not os.path.exists(path):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{path} not found (set TINYNET_DATA)")


@pytest.fixture(scope="module")
def mnist():
    need(os.path.join(DATA, "mnist", "train-images-idx3-ubyte.gz"))
    return tn.load_mnist(DATA, download=False)


def test_mnist_shapes_and_dtypes(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert X_train.shape == (60000, 1, 28, 28) and X_test.shape == (10000, 1, 28, 28)
    assert X_train.dtype == X_test.dtype == np.float32 and X_train.flags.c_contiguous
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == y_test.dtype == np.int64
    assert X_train.min() == 0 and X_train.max() == 1 and set(np.unique(y_test)) == set(range(10))


def test_mnist_statistics(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert abs(X_train.mean(dtype=np.float64) - 0.1307) < 1e-4
    assert np.bincount(y_train)[:2].tolist() == [5923, 6742]
    assert np.bincount(y_test)[0] == 980


def test_load_iris():
    path = os.path.join(DATA, "iris.csv")
    need(path)
    X, y = tn.load_iris(path)
    assert X.shape == (150, 4) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50, 50, 50]
    np.testing.assert_allclose(X[0], [5.1, 3.5, 1.4, 0.2], rtol=1e-6)


@pytest.mark.parametrize("where", ["TINYNET_DATA", "data/ beside tinynet.py"])
def test_load_iris_default_path(tmp_path, monkeypatch, where):
    folder = DATA if where == "TINYNET_DATA" else tn._DATA_BESIDE
    need(os.path.join(folder, "iris.csv"))
    monkeypatch.setenv("TINYNET_DATA", DATA if where == "TINYNET_DATA" else str(tmp_path))  # no iris.csv there
    X, y = tn.load_iris()
    assert X.shape == (150, 4) and np.bincount(y).tolist() == [50, 50, 50]


@pytest.mark.parametrize("text", [
    "3,2,a,b\n1,2,0\n3,4,1\n",              # header says 3 rows, there are 2
    "2,3,a,b\n1,2,0\n3,4,1\n",              # header says 3 features
    "2,2,a,b\n1,2,0\n3,4,2\n",              # label 2 with two classes
    "2,2,a,b\n1,2,0\n3,x,1\n",              # not a number
    "sepal,petal\n1,2,0\n",                 # no counts in the header
])
def test_load_iris_bad_file(tmp_path, text):
    path = tmp_path / "bad-iris.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"load_iris.*bad-iris\.csv"):
        tn.load_iris(path)


def tiny_mnist(folder, n_train=5, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))


def test_load_mnist_validates_files(tmp_path):
    folder = tmp_path / "mnist"
    tiny_mnist(folder)
    assert [a.shape[0] for a in tn.load_mnist(tmp_path, download=False)] == [5, 5, 3, 3]
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))     # 3 images, 4 labels
    with pytest.raises(ValueError, match=r"load_mnist.*t10k-labels"):
        tn.load_mnist(tmp_path, download=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 27), np.uint8))
    with pytest.raises(ValueError, match=r"load_mnist.*train-images"):
        tn.load_mnist(tmp_path, download=False)


def test_data_dir_resolution(tmp_path, monkeypatch):
    tiny_mnist(tmp_path / "env" / "mnist", 4)
    tiny_mnist(tmp_path / "arg" / "mnist", 2)
    monkeypatch.setenv("TINYNET_DATA", str(tmp_path / "env"))
    assert len(tn.load_mnist(download=False)[0]) == 4                       # $TINYNET_DATA
    assert len(tn.load_mnist(tmp_path / "arg", download=False)[0]) == 2     # the argument wins
    monkeypatch.delenv("TINYNET_DATA")
    default = tn._data_dir()                                                # data/ beside tinynet.py
    assert os.path.isabs(default) and os.path.basename(default) == "data"


def test_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz"))):
        tn.load_mnist(tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "svhn" / "test_32x32.mat"))):
        tn.load_svhn("test", tmp_path, download=False)
    assert not (tmp_path / "mnist").exists()


# ── data: downloads from a local http.server ───────────────────────────────

MNIST_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class Handler(http.server.SimpleHTTPRequestHandler):
    """/good/<f> serves f, /missing/<f> answers 404, /drop/<f> promises all of f, sends half and hangs up."""

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        path = os.path.join(self.server.root, name)
        if kind == "good":
            self.path = "/" + name
            return super().do_GET()
        if kind == "drop" and os.path.exists(path):
            body = open(path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.send_error(404)

    def translate_path(self, path):
        return os.path.join(self.server.root, path.lstrip("/"))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, {file name: (bytes, md5)}) of a server on 127.0.0.1 holding small MNIST and SVHN files."""
    root = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(0)
    files = {}
    for name, n in zip(MNIST_NAMES, (6, 6, 4, 4)):
        shape = (n, 28, 28) if "images" in name else (n,)
        write_idx(root / name, rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8))
    svhn_file(root, "test", 5)
    for name in MNIST_NAMES + ["test_32x32.mat"]:
        files[name] = ((root / name).read_bytes(), hashlib.md5((root / name).read_bytes()).hexdigest())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.root = str(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def patch_mirrors(monkeypatch, server, *kinds, dataset="mnist"):
    base, files = server
    monkeypatch.setitem(tn.DATA_MIRRORS, dataset, [f"{base}/{kind}/" for kind in kinds])
    for name, (_, md5) in files.items():
        monkeypatch.setitem(tn.DATA_MD5, name, md5)
    return [f"{base}/{kind}/" for kind in kinds]


def assert_downloaded(folder, files):
    assert sorted(os.listdir(folder)) == sorted(files)            # no .part left
    for name, (content, _) in files.items():
        assert (folder / name).read_bytes() == content


@pytest.mark.parametrize("kinds", [("good",), ("missing", "good")])
def test_download_mnist(tmp_path, monkeypatch, server, kinds):
    patch_mirrors(monkeypatch, server, *kinds)
    X_train, y_train, X_test, y_test = tn.load_mnist(tmp_path)
    assert_downloaded(tmp_path / "mnist", {k: v for k, v in server[1].items() if k in MNIST_NAMES})
    expected = tn.load_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(X_train[:, 0] * 255, expected)
    assert X_test.shape == (4, 1, 28, 28) and y_train.shape == (6,)


def test_download_md5_mismatch(tmp_path, monkeypatch, server):
    urls = patch_mirrors(monkeypatch, server, "good")
    monkeypatch.setitem(tn.DATA_MD5, "train-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(OSError, match="MD5") as err:
        tn.load_mnist(tmp_path)
    assert urls[0] + "train-labels-idx1-ubyte.gz" in str(err.value)
    assert os.listdir(tmp_path / "mnist") == ["train-images-idx3-ubyte.gz"]   # fetched before; no .part


def test_download_connection_dropped(tmp_path, monkeypatch, server):
    patch_mirrors(monkeypatch, server, "drop")
    with pytest.raises(OSError, match=r"after \d+ of \d+ bytes"):
        tn.load_mnist(tmp_path)
    assert os.listdir(tmp_path / "mnist") == []


def test_download_error_lists_every_mirror(tmp_path, monkeypatch, server):
    urls = patch_mirrors(monkeypatch, server, "missing", "drop")
    monkeypatch.setitem(tn.DATA_MIRRORS, "mnist", urls + ["http://127.0.0.1:9/closed/"])
    with pytest.raises(OSError) as err:
        tn.load_mnist(tmp_path)
    message = str(err.value)
    for url in urls + ["http://127.0.0.1:9/closed/"]:
        assert url + "train-images-idx3-ubyte.gz" in message
    assert "404" in message and str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert os.listdir(tmp_path / "mnist") == []


def test_download_svhn(tmp_path, monkeypatch, server):
    patch_mirrors(monkeypatch, server, "missing", "good", dataset="svhn")
    X, y = tn.load_svhn("test", tmp_path)
    assert X.shape == (5, 3, 32, 32) and y[0] == 0
    assert_downloaded(tmp_path / "svhn", {"test_32x32.mat": server[1]["test_32x32.mat"]})


# ── data: SVHN on small .mat files in the official layout ───────────────────

def svhn_file(folder, split, n, seed=0, **override):
    """Write <folder>/<split>_32x32.mat: X (32, 32, 3, n) uint8, y (n, 1) in 1..10 (10 = digit 0)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0] = 10
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}_32x32.mat"
    savemat(path, {"X": X, "y": y, **override})
    return X, y, path


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_load_svhn(tmp_path, split):
    X, y, _ = svhn_file(tmp_path / "svhn", split, 7)
    X_out, y_out = tn.load_svhn(split, tmp_path, download=False)
    assert X_out.shape == (7, 3, 32, 32) and X_out.dtype == np.float32 and X_out.flags.c_contiguous
    assert y_out.shape == (7,) and y_out.dtype == np.int64
    assert y_out[0] == 0 and np.array_equal(y_out, y.ravel() % 10) and y_out.max() <= 9
    for i in range(7):
        np.testing.assert_allclose(X_out[i], X[:, :, :, i].transpose(2, 0, 1) / 255, rtol=1e-6)


def test_load_svhn_one_float32_copy(tmp_path):
    n = 1500
    svhn_file(tmp_path / "svhn", "train", n)
    float_bytes = n * 3 * 32 * 32 * 4
    tracemalloc.start()
    X, _ = tn.load_svhn("train", tmp_path, download=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert X.nbytes == float_bytes and peak < 1.5 * float_bytes, peak / float_bytes


@pytest.mark.parametrize("override, pattern", [
    ({"X": np.zeros((32, 32, 2), np.uint8)}, r"expected X uint8 \(32, 32, 3, N\)"),
    ({"X": np.zeros((28, 28, 3, 2), np.uint8)}, r"expected X uint8 \(32, 32, 3, N\)"),
    ({"X": np.zeros((32, 32, 3, 2), np.float64)}, r"expected X uint8"),
    ({"y": np.ones((3, 1), np.uint8)}, r"expected X .* and y \(N, 1\)"),
    ({"y": np.zeros((2, 1), np.uint8)}, r"labels must be 1..10"),
    ({"y": np.full((2, 1), 11, np.uint8)}, r"labels must be 1..10"),
])
def test_load_svhn_bad_file(tmp_path, override, pattern):
    from scipy.io import savemat
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "train_32x32.mat",
            {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8), **override})
    with pytest.raises(ValueError, match=r"load_svhn.*train_32x32\.mat.*" + pattern):
        tn.load_svhn("train", tmp_path, download=False)


def test_load_svhn_missing_arrays_and_bad_split(tmp_path):
    from scipy.io import savemat
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "train_32x32.mat", {"images": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"load_svhn.*train_32x32\.mat.*'X' and 'y'"):
        tn.load_svhn("train", tmp_path, download=False)
    with pytest.raises(ValueError, match="load_svhn.*valid"):
        tn.load_svhn("valid", tmp_path, download=False)


# ── data: helpers ───────────────────────────────────────────────────────────

def test_one_hot():
    y = np.array([2, 0, 1, 2])
    out = tn.one_hot(y, 4)
    np.testing.assert_array_equal(out, np.eye(4)[y])
    assert out.shape == (4, 4)
    with pytest.raises(ValueError, match="one_hot"):
        tn.one_hot(np.array([0, 4]), 4)


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 8), (1, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_minibatches_cover_every_sample_once(n, batch_size, shuffle):
    X = np.arange(n * 2).reshape(n, 2)
    y = np.arange(n) * 10
    batches = list(tn.minibatches(X, y, batch_size, shuffle=shuffle))
    sizes = [len(xb) for xb, _ in batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    seen = np.concatenate([xb[:, 0] // 2 for xb, _ in batches])
    assert sorted(seen) == list(range(n))                           # each sample exactly once
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0] // 2 * 10, yb)      # X and y stay paired
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(n))


def test_minibatches_deterministic_under_manual_seed():
    X, y = np.arange(100).reshape(50, 2), np.arange(50)
    def epoch():
        return np.concatenate([yb for _, yb in tn.minibatches(X, y, 7)])
    tn.manual_seed(3)
    first, second = epoch(), epoch()
    tn.manual_seed(3)
    np.testing.assert_array_equal(epoch(), first)
    np.testing.assert_array_equal(epoch(), second)
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(50))


def test_train_val_split_sizes_and_order():
    X, y = np.arange(40).reshape(20, 2), np.arange(20)
    for val_size, n_val in ((0.25, 5), (0.1, 2), (3, 3), (np.int64(7), 7)):
        X_tr, y_tr, X_val, y_val = tn.train_val_split(X, y, val_size)
        assert len(y_val) == n_val and len(y_tr) == 20 - n_val
        assert sorted(np.concatenate([y_tr, y_val])) == list(range(20))
        np.testing.assert_array_equal(X_tr[:, 0] // 2, y_tr)
        np.testing.assert_array_equal(X_val[:, 0] // 2, y_val)
    assert not (np.diff(y_tr) > 0).all() and not (np.diff(y_val) > 0).all()   # both parts shuffled
    X_tr, y_tr, X_val, y_val = tn.train_val_split(X, y, 0.25, shuffle=False)
    np.testing.assert_array_equal(y_tr, np.arange(15))      # the last samples validate, order kept
    np.testing.assert_array_equal(y_val, np.arange(15, 20))


@pytest.mark.parametrize("val_size, pattern", [
    (0.0, "fraction"), (1.0, "fraction"), (1.5, "fraction"), (-0.2, "fraction"), (True, "fraction"),
    ("0.2", "fraction"), (0, "0 of 20"), (20, "20 of 20"), (-1, "-1 of 20"), (0.01, "0 of 20"),
])
def test_train_val_split_bad_val_size(val_size, pattern):
    with pytest.raises(ValueError, match="train_val_split: val_size.*" + pattern):
        tn.train_val_split(np.zeros((20, 2)), np.zeros(20), val_size)


def test_train_val_split_length_mismatch():
    with pytest.raises(ValueError, match="train_val_split.*20 and 19"):
        tn.train_val_split(np.zeros((20, 2)), np.zeros(19), 0.2)


@pytest.mark.parametrize("counts, val_size, expected", [
    ([60, 30, 10], 0.2, [12, 6, 2]),
    ([7, 5, 3], 0.4, [3, 2, 1]),           # quotas 2.8, 2, 1.2: the largest remainder gets the extra one
    ([50, 50, 50], 30, [10, 10, 10]),
    ([10, 30], 0.05, [1, 1]),              # quotas 0.5, 1.5: a tie goes to the first class
])
@pytest.mark.parametrize("shuffle", [True, False])
def test_train_val_split_stratified(counts, val_size, expected, shuffle):
    y = np.repeat(np.arange(len(counts)), counts)
    y = np.random.default_rng(1).permutation(y)
    X = np.arange(len(y))
    X_tr, y_tr, X_val, y_val = tn.train_val_split(X, y, val_size, shuffle=shuffle, stratify=True)
    assert np.bincount(y_val, minlength=len(counts)).tolist() == expected
    assert np.bincount(y_tr, minlength=len(counts)).tolist() == [c - e for c, e in zip(counts, expected)]
    np.testing.assert_array_equal(y[X_tr], y_tr)
    assert sorted(np.concatenate([X_tr, X_val])) == list(range(len(y)))
    if not shuffle:   # order kept, and each class's last samples validate
        assert (np.diff(X_tr) > 0).all() and (np.diff(X_val) > 0).all()
        for c, (count, e) in enumerate(zip(counts, expected)):
            np.testing.assert_array_equal(X_val[y_val == c], np.flatnonzero(y == c)[count - e:])


def test_train_val_split_stratified_one_hot_labels():
    y = np.repeat([0, 1], [30, 10])
    _, y_tr, _, y_val = tn.train_val_split(np.zeros(40), tn.one_hot(y, 2), 0.2, stratify=True)
    assert y_val.sum(axis=0).tolist() == [6, 2] and y_tr.sum(axis=0).tolist() == [24, 8]


def test_train_val_split_deterministic_under_manual_seed():
    X, y = np.arange(60), np.repeat([0, 1, 2], 20)
    for stratify in (False, True):
        tn.manual_seed(7)
        a = tn.train_val_split(X, y, 0.3, stratify=stratify)
        tn.manual_seed(7)
        b = tn.train_val_split(X, y, 0.3, stratify=stratify)
        c = tn.train_val_split(X, y, 0.3, stratify=stratify)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(a[2], c[2])


# ════════════════════════════════════════════════════════════════════════════
# Training scripts and plots
# ════════════════════════════════════════════════════════════════════════════

# ── plot helpers ──────────────────────────────────────────────────────────────

def _png_ok(path, min_side=150):
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side, f"{path}: image of shape {img.shape}"
    assert img[..., :3].std() > 0.01, f"{path}: a blank image"
    assert not os.path.exists(f"{path}.tmp")


def test_confusion_matrix_counts_pairs():
    y_true, y_pred = np.array([0, 1, 2, 2, 1, 0, 2]), np.array([0, 2, 2, 1, 1, 0, 2])
    cm = tn.confusion_matrix(y_true, y_pred, 4)
    expected = np.zeros((4, 4), int)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert tn.confusion_matrix(y_true, y_pred).shape == (3, 3)
    with pytest.raises(ValueError, match="confusion_matrix"):
        tn.confusion_matrix(y_true, y_pred[:3])
    with pytest.raises(ValueError, match=r"confusion_matrix: labels must be integers in \[0, 2\)"):
        tn.confusion_matrix(y_true, y_pred, 2)


def test_pca_matches_torch():
    X = np.random.default_rng(0).standard_normal((200, 6)) * [5, 3, 1, 0.5, 0.2, 0.1]
    Z = tn.pca(X, 2)
    U, S, V = torch.pca_lowrank(torch.tensor(X), q=2, center=True, niter=10)
    theirs = (torch.tensor(X) - torch.tensor(X).mean(0)) @ V
    np.testing.assert_allclose(np.abs(Z), np.abs(theirs.numpy()), rtol=1e-6, atol=1e-8)   # up to sign
    assert Z[:, 0].var() > Z[:, 1].var()


def test_plot_helpers_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    h = tn.History()
    for e in range(4):
        h.append(e, {"loss": 1 / (e + 1), "accuracy": e / 4, "val_loss": 1.2 / (e + 1), "val_accuracy": e / 5})
    y = rng.integers(0, 10, 60)
    y_pred = np.where(rng.random(60) < 0.7, y, (y + 1) % 10)
    tn.plot_history(h, tmp_path / "h.png", keys=("loss", "accuracy"))
    tn.plot_curves({"a": h, "b": h.history}, tmp_path / "c.png")
    tn.plot_confusion_matrix(y, y_pred, tmp_path / "cm.png", [f"c{i}" for i in range(10)])
    tn.plot_predictions(rng.random((60, 3, 32, 32)), y, y_pred, tmp_path / "p.png", n=12)
    tn.plot_predictions(rng.random((60, 1, 28, 28)), y, y, tmp_path / "p1.png", n=10)
    tn.plot_embeddings({"a": rng.standard_normal((60, 2)), "b": rng.random((60, 2))}, y, tmp_path / "e.png")
    for name in ("h", "c", "cm", "p", "p1", "e"):
        _png_ok(tmp_path / f"{name}.png")


def test_make_optimizer_and_scheduler():
    params = tn.Linear(3, 2).parameters()
    opt = tn.make_optimizer("momentum", params, 0.1, weight_decay=1e-4)
    assert type(opt) is tn.SGD and opt.momentum == 0.9 and opt.weight_decay == 1e-4 and opt.lr == 0.1
    assert tn.make_optimizer("sgd", params, 0.1).momentum == 0
    for name, cls in (("rmsprop", tn.RMSprop), ("adam", tn.Adam), ("adamw", tn.AdamW), ("lion", tn.Lion)):
        assert type(tn.make_optimizer(name, params, 1e-3)) is cls
    with pytest.raises(ValueError, match="make_optimizer"):
        tn.make_optimizer("adamax", params, 1e-3)
    assert tn.make_scheduler("none", opt, 10, 5) is None
    for name, cls in (("step", tn.MultiStepLR), ("exponential", tn.ExponentialLR),
                      ("cosine", tn.CosineAnnealingLR), ("warm-restarts", tn.CosineAnnealingWarmRestarts),
                      ("onecycle", tn.OneCycleLR)):
        assert type(tn.make_scheduler(name, tn.make_optimizer("adam", params, 1e-3), 10, 5)) is cls
    sched = tn.make_scheduler("onecycle", tn.make_optimizer("adam", params, 3e-3), 10, 5)
    assert sched.total_steps == 50


def test_add_common_args_defaults_and_print_table(tmp_path, capsys):
    parser = tn.add_common_args(argparse.ArgumentParser(prog="train_x.py"), epochs=7, lr=0.5)
    args = parser.parse_args(["--optimizer", "lion", "--scheduler", "warm-restarts", "--quick"])
    assert (args.epochs, args.lr, args.optimizer, args.scheduler, args.quick, args.no_plots) == \
        (7, 0.5, "lion", "warm-restarts", True, False)
    assert args.out == os.path.join("runs", "train_x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "adamax"])
    tn.print_table([{"run": "a", "acc": 0.5}, {"run": "bb", "acc": 0.25}], tmp_path / "t.csv")
    assert capsys.readouterr().out.splitlines()[1].split() == ["a", "0.5"]
    assert (tmp_path / "t.csv").read_text() == "run,acc\na,0.5\nbb,0.25\n"


# ── the training scripts, as subprocesses ────────────────────────────────────

SCRIPTS = os.path.dirname(os.path.abspath(tn.__file__))   # the scripts sit beside tinynet.py
LAST_LINE = re.compile(r"^test accuracy: 0\.\d{4}$")


def _run(script, *args, env=None):
    # one BLAS thread: on a busy 2-core machine OpenBLAS threads wait on each other (2-5x slower)
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
    env.pop("DISPLAY", None)
    env.pop("MPLBACKEND", None)      # the scripts must pick Agg themselves
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def _check_run(r, out, pngs):
    assert r.returncode == 0, r.stderr[-3000:]
    assert LAST_LINE.match(r.stdout.splitlines()[-1]), r.stdout[-500:]
    assert re.search(r"^epoch 1/1 - loss: \d+\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d+\.\d{4} - val_accuracy: \d\.\d{4} - lr: ",
                     r.stdout, re.M)
    tn.Sequential.load(out / "model.npz")
    assert (out / "history.csv").read_text().splitlines()[0] == "epoch,loss,accuracy,val_loss,val_accuracy,lr"
    for name in pngs:
        _png_ok(out / name)


def _data_dir():
    need(os.path.join(DATA, "mnist"))
    return DATA


STANDARD_PNGS = ("loss.png", "accuracy.png", "confusion.png", "predictions.png")


@pytest.mark.parametrize("script", ["train_mnist.py", "train_svhn.py", "train_iris.py"])
def test_script_help(script):
    r = _run(script, "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--epochs", "--batch-size", "--lr", "--optimizer", "--scheduler", "--weight-decay", "--seed",
                 "--data-dir", "--out", "--quick", "--no-plots"):
        assert flag in r.stdout


def test_train_iris_quick(tmp_path):
    r = _run("train_iris.py", "--quick", "--out", tmp_path)     # data/iris.csv is in the repository
    _check_run(r, tmp_path, ("loss.png", "accuracy.png", "confusion.png"))


def test_train_mnist_quick_embeddings_and_optimizers(tmp_path):
    r = _run("train_mnist.py", "--quick", "--embeddings", "--compare-optimizers", "--out", tmp_path,
             "--data-dir", _data_dir())
    _check_run(r, tmp_path, STANDARD_PNGS + ("embeddings.png", "optimizers.png"))
    assert len(re.findall(r"even/odd linear probe on .*: test accuracy 0\.\d{4}", r.stdout)) == 2
    rows = (tmp_path / "optimizers.csv").read_text().splitlines()
    assert rows[0] == "run,val_accuracy,val_loss,s_per_epoch" and len(rows) == 8
    for name in ("sgd", "momentum", "rmsprop", "adam", "adamw", "lion", "onecycle"):
        assert name in r.stdout.split("run ")[-1]


def test_train_mnist_quick_cnn_mse(tmp_path):
    r = _run("train_mnist.py", "--quick", "--model", "cnn", "--loss", "mse", "--embeddings", "--no-plots",
             "--out", tmp_path, "--data-dir", _data_dir())
    _check_run(r, tmp_path, ())
    model = tn.Sequential.load(tmp_path / "model.npz")
    assert isinstance(model[0], tn.Conv2d) and isinstance(model[-1], tn.Softmax)
    assert not any(name.endswith(".png") for name in os.listdir(tmp_path))


@pytest.fixture
def svhn_dir(tmp_path):
    """Small synthetic SVHN files in the official layout: X (32, 32, 3, N) uint8, y (N, 1), 10 for digit 0."""
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    for split, n in (("train", 300), ("test", 100)):
        savemat(folder / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    return tmp_path / "data"


def test_train_svhn_quick_cnn_batchnorm(tmp_path, svhn_dir):
    out = tmp_path / "out"
    r = _run("train_svhn.py", "--quick", "--model", "cnn", "--batchnorm", "--data-dir", svhn_dir, "--out", out)
    _check_run(r, out, STANDARD_PNGS)
    assert "train 210, validation 90, test 100 images" in r.stdout
    assert any(isinstance(layer, tn.BatchNorm2d) for layer in tn.Sequential.load(out / "model.npz"))


def test_train_svhn_sweep(tmp_path, svhn_dir):
    out = tmp_path / "out"
    r = _run("train_svhn.py", "--quick", "--sweep", "--data-dir", svhn_dir, "--out", out)
    runs = [f"lr{lr}_{opt}_{bn}" for lr in ("0.001", "0.01") for opt in ("adam", "momentum")
            for bn in ("nobn", "bn")]
    _check_run(r, out, STANDARD_PNGS + ("sweep.png",) + tuple(f"loss_{name}.png" for name in runs))
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "lr,optimizer,batchnorm,train_loss,val_loss,val_accuracy,time_s" and len(rows) == 9
    assert re.search(r"^best configuration: lr0\.01?_(adam|momentum)_(no)?bn \(val accuracy 0\.\d{4}\)$",
                     r.stdout, re.M)


def test_train_svhn_without_data_fails_cleanly(tmp_path):
    with socket.socket() as s:        # a closed local port: every download attempt is refused at once
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: proxy for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    r = _run("train_svhn.py", "--quick", "--data-dir", tmp_path / "empty", "--out", tmp_path / "out",
             env={**env, "no_proxy": "", "NO_PROXY": ""})
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "http://ufldl.stanford.edu/housenumbers/" in r.stderr and "train_32x32.mat" in r.stderr
    assert not os.listdir(tmp_path / "empty" / "svhn")      # no partial download left behind


# ════════════════════════════════════════════════════════════════════════════
# Benchmark
# ════════════════════════════════════════════════════════════════════════════

def test_bench_quick_runs_and_writes_every_table(tmp_path):
    """bench_tinynet.py --quick works end to end; no timing is asserted (timings live in the benchmark)."""
    r = _run("bench_tinynet.py", "--quick", "--out", tmp_path / "bench.json", env={"TINYNET_DATA": _data_dir()})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert set(res["epochs"]) == set(res["memory"]) == {"mlp", "cnn-small", "cnn-32-64"}
    assert len(res["layers"]) == 7
    for row in list(res["epochs"].values()) + list(res["layers"].values()):
        assert all(v > 0 for v in row.values())
    for row in res["memory"].values():
        assert row["tinynet_peak_mb"] > 0 and row["torch_peak_mb"] > 0

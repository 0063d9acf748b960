"""tinynet: a NumPy-only neural-network library with hand-written backward passes.

Every layer, loss, optimizer and scheduler computes what its PyTorch namesake
computes (same names, arguments and defaults); `test_tinynet.py` proves it in
float64. Images are NCHW. Parameters are float32 by default; a layer computes
in the dtype of its input and parameters, and `model.astype(np.float64)`
converts everything in place.

Sections, in order: parameters and base layer · layers · losses · optimizers ·
schedulers · Sequential and History · gradient check · data · plots.
Only numpy is imported at module level; tqdm, matplotlib and scipy are
imported inside the functions that need them.
"""
from collections import Counter
import contextlib
import gzip
import hashlib
import http.client
import json
import math
import os
import sys
import time
import urllib.request
import zipfile
import zlib

import numpy as np

__version__ = "0.1.0"


# ════════════════════════════════════════════════════════════════════════════
# Parameters and base layer
# ════════════════════════════════════════════════════════════════════════════

_rng = np.random.Generator(np.random.PCG64())   # the one generator: init, dropout, shuffling


def manual_seed(seed):
    """Reseed the generator used for initialisation, dropout masks and shuffling (in place)."""
    _rng.bit_generator.state = np.random.PCG64(seed).state


@contextlib.contextmanager
def _atomic_open(path, mode="wb"):
    """Write to `<path>.tmp` and rename it to `path` only when the block completes."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Parameter:
    """A learnable array: `.data`, and `.grad` of the same shape that backward adds into."""

    def __init__(self, data):
        self.data = np.asarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _uniform(shape, bound, dtype=np.float32):
    """U(-bound, bound) from the tinynet generator: PyTorch's default Linear/Conv init."""
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


class Layer:
    """Base class. Subclasses define forward(x) -> y and backward(grad_y) -> grad_x.

    backward *adds* into the `.grad` of the layer's parameters. Parameters are
    the attributes of type Parameter, in the order they were assigned (weight,
    then bias, as in PyTorch); `buffers` names the non-learnable state arrays.
    The constructor arguments are remembered (for `repr` and `Sequential.save`).
    """
    buffers = ()
    training = True
    needs_input_grad = True   # False lets backward skip grad_x (the first layer in fit, as torch)
    _cache = None             # what forward saved for backward

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.init_args = (args, kwargs)
        return self

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def named_parameters(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Parameter)]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        return [(k, getattr(self, k)) for k in self.buffers]

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter (and its grad) and buffer to `dtype`, in place."""
        for p in self.parameters():
            p.data, p.grad = p.data.astype(dtype), p.grad.astype(dtype)
        for k, b in self.named_buffers():
            setattr(self, k, b.astype(dtype))
        return self

    def _check_input(self, x, ndim, size=None, name=None):
        """Raise a ValueError naming the layer unless x has `ndim` dims and x.shape[1] == size."""
        x = np.asarray(x)
        if x.ndim != ndim or (size is not None and x.shape[1] != size):
            want = f"{ndim}-D input" + (f" with {size} {name or 'features'} on axis 1" if size else "")
            raise ValueError(f"{self!r}: expected {want}, got shape {x.shape}")
        return x

    def __repr__(self):
        args, kwargs = self.init_args
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{type(self).__name__}({', '.join(parts)})"

    def config(self):
        """{"class", "args", "kwargs"}: enough to rebuild this layer (see Sequential.save)."""
        args, kwargs = self.init_args
        return {"class": type(self).__name__, "args": list(args), "kwargs": dict(kwargs)}

    def _named_state(self):
        """(name, Parameter or buffer ndarray) pairs, parameters first, as torch's state_dict."""
        return self.named_parameters() + self.named_buffers()

    def state_dict(self):
        """{name: copy of the array}, with torch's key names."""
        return {k: np.array(v.data if isinstance(v, Parameter) else v) for k, v in self._named_state()}

    def load_state_dict(self, state):
        """Copy arrays (NumPy or torch tensors) into the parameters and buffers, in place.

        Keys and shapes must match exactly (torch's `num_batches_tracked` is ignored);
        values are cast to the layer's dtype.
        """
        own = dict(self._named_state())
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        pairs = []                                   # check every shape before copying anything
        for k, v in state.items():
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            target = own[k].data if isinstance(own[k], Parameter) else own[k]
            if v.shape != target.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {k!r} has shape {v.shape}, "
                                 f"expected {target.shape}")
            pairs.append((target, v))
        for target, v in pairs:
            target[...] = v
        return self


# ════════════════════════════════════════════════════════════════════════════
# Layers
# ════════════════════════════════════════════════════════════════════════════

class Linear(Layer):
    """y = x @ weight.T + bias.  x: (N, in_features) -> y: (N, out_features).

    weight: (out_features, in_features); weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features, out_features, bias=True):
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x):
        self._cache = x = self._check_input(x, 2, self.in_features)
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad):                        # grad: (N, out_features)
        self.weight.grad += grad.T @ self._cache
        if self.bias is not None:
            self.bias.grad += grad.sum(axis=0)
        return grad @ self.weight.data if self.needs_input_grad else None


class ReLU(Layer):
    """y = max(x, 0); dy/dx = 1 where x > 0, else 0 (0 at x = 0, as torch)."""

    def forward(self, x):
        self._cache = x > 0
        return np.maximum(x, 0)

    def backward(self, grad):
        return grad * self._cache


class LeakyReLU(Layer):
    """y = x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope=0.01):
        self.negative_slope = negative_slope

    def forward(self, x):
        self._cache = x > 0
        return np.where(self._cache, x, x * self.negative_slope)

    def backward(self, grad):
        return np.where(self._cache, grad, grad * self.negative_slope)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), computed from exp(-|x|) so that no exp overflows; dy/dx = y (1 - y)."""

    def forward(self, x):
        e = np.exp(-np.abs(x))
        self._cache = y = np.where(x >= 0, 1, e) / (1 + e)
        return y

    def backward(self, grad):
        y = self._cache
        return grad * y * (1 - y)


class Tanh(Layer):
    """y = tanh(x); dy/dx = 1 - y^2."""

    def forward(self, x):
        self._cache = y = np.tanh(x)
        return y

    def backward(self, grad):
        return grad * (1 - self._cache ** 2)


def _log_softmax(x, dim):
    """log(softmax(x)) = x - max - log(sum(exp(x - max))): no overflow, no log(0)."""
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


class Softmax(Layer):
    """y = exp(x) / sum(exp(x)) along `dim`; backward is the true Jacobian-vector product
    grad_x = y * (grad - sum(grad * y, dim))."""

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x):
        self._cache = y = np.exp(_log_softmax(x, self.dim))
        return y

    def backward(self, grad):
        y = self._cache
        return y * (grad - (grad * y).sum(axis=self.dim, keepdims=True))


class LogSoftmax(Layer):
    """y = x - logsumexp(x, dim); grad_x = grad - softmax(x) * sum(grad, dim)."""

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x):
        y = _log_softmax(x, self.dim)
        self._cache = np.exp(y)
        return y

    def backward(self, grad):
        return grad - self._cache * grad.sum(axis=self.dim, keepdims=True)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), as torch.nn.Flatten()."""

    def forward(self, x):
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape(self._cache)


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); identity in eval."""

    def __init__(self, p=0.5):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            self._cache = None
            return x
        keep = _rng.random(x.shape, dtype=np.float32) >= self.p
        self._cache = keep.astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._cache

    def backward(self, grad):
        return grad if self._cache is None else grad * self._cache


def _pair(value, name, low=1):
    """An int or an (h, w) pair (tuple or list, as JSON gives it back) -> (h, w) of ints >= low."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return tuple(int(v) for v in pair)


_CHWN = (1, 2, 3, 0)     # Conv2d's memory order for (N, C, H, W) arrays: the batch innermost


def _layout(x):
    """The memory order of x's axes, outermost first: (0, 1, 2, 3) for C order, _CHWN for
    Conv2d's outputs. The pools keep their input's layout: mixed layouts make every op slow."""
    return tuple(int(a) for a in np.argsort([-s for s in x.strides], kind="stable"))


def _in_layout(x, order):
    """x itself if its axes are stored in memory order `order`, else a copy that is."""
    if _layout(x) == order:
        return x
    return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))


def _full(shape, value, dtype, order=(0, 1, 2, 3)):
    """np.full(shape, value) whose axes are stored in memory order `order` (e.g. _CHWN)."""
    return np.full([shape[a] for a in order], value, dtype).transpose(np.argsort(order))


def _pad(x, padding, value=0.0, order=None):
    """x (N, C, H, W) padded on H and W by padding = (pH, pW) with `value`, stored in
    memory order `order` (default: x's own); x itself when there is nothing to do."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    order = order or _layout(x)
    if padding == (0, 0) and order == _layout(x):
        return x
    out = _full((n, c, h + 2 * ph, w + 2 * pw), value, x.dtype, order)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _windows(x, kernel, stride):
    """Read-only view (N, C, OH, OW, kH, kW) of the kH x kW windows of x (N, C, H, W) at
    `stride`, without a copy (im2col before the copy). OH = (H - kH) // sH + 1 as torch.

    Non-overlapping windows (stride == kernel) are a plain reshape (N, C, OH, kH, OW, kW).
    """
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    if (kh, kw) == (sh, sw):
        return x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw).transpose(0, 1, 2, 4, 3, 5)
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _col2im(grad_at, out, kernel, stride):
    """The adjoint of _windows: add grad_at(i, j), the (N, C, OH, OW) gradient of window
    element (i, j), into out (N, C, Hp, Wp) for every kernel offset: kH * kW strided adds."""
    (kh, kw), (sh, sw) = kernel, stride
    for i in range(kh):
        for j in range(kw):
            g = grad_at(i, j)
            out[:, :, i:i + sh * g.shape[2]:sh, j:j + sw * g.shape[3]:sw] += g
    return out


def _check_window(layer, x, kernel, padding):
    """ValueError naming the layer if the kernel is larger than the padded input."""
    hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    if kernel[0] > hp or kernel[1] > wp:
        raise ValueError(f"{layer!r}: kernel {kernel} is larger than the padded input "
                         f"({hp}, {wp}) (input shape {x.shape}, padding {padding})")


class Conv2d(Layer):
    """2-D cross-correlation, as torch.nn.Conv2d (zero padding, no dilation or groups).

    y[n, o, i, j] = bias[o] + sum_{c, p, q} weight[o, c, p, q] * xpad[n, c, sH*i + p, sW*j + q]
    x: (N, C, H, W) -> y: (N, O, OH, OW), OH = (H + 2 pH - kH) // sH + 1.
    weight: (O, C, kH, kW); weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C kH kW.

    im2col: the windows are copied once into a (C kH kW, OH OW N) matrix and multiplied by
    the (O, C kH kW) weight. Columns are ordered with the batch innermost, so that the copy
    and the backward's kH * kW scatter-adds run over long contiguous rows. y and grad_x are
    returned as transposed views of that (C, H, W, N) memory, not copied back to C order:
    ReLU, the pools and BatchNorm keep their input's layout, so that the next Conv2d
    gets its input, and its gradient, already batch innermost.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "Conv2d: kernel_size")
        self.stride = _pair(stride, "Conv2d: stride")
        self.padding = _pair(padding, "Conv2d: padding", low=0)
        bound = 1 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        self.weight = Parameter(_uniform((out_channels, in_channels) + self.kernel_size, bound))
        self.bias = Parameter(_uniform((out_channels,), bound)) if bias else None

    def forward(self, x):
        x = self._check_input(x, 4, self.in_channels, "channels")
        _check_window(self, x, self.kernel_size, self.padding)
        xp = _pad(x, self.padding, order=_CHWN)    # (N, C, Hp, Wp), batch innermost
        win = _windows(xp, self.kernel_size, self.stride)             # (N, C, OH, OW, kH, kW)
        n, c, oh, ow, kh, kw = win.shape
        cols = np.ascontiguousarray(win.transpose(1, 4, 5, 2, 3, 0)).reshape(c * kh * kw, -1)
        self._cache = cols, x.shape, xp.shape
        y = self.weight.data.reshape(self.out_channels, -1) @ cols    # (O, OH OW N)
        if self.bias is not None:
            y += self.bias.data[:, None]
        return y.reshape(-1, oh, ow, n).transpose(3, 0, 1, 2)          # a view, memory order CHWN

    def backward(self, grad):                                        # grad: (N, O, OH, OW)
        n, o, oh, ow = grad.shape
        cols, (_, c, h, wd), padded = self._cache
        g = np.ascontiguousarray(grad.transpose(1, 2, 3, 0)).reshape(o, -1)   # (O, OH OW N)
        w = self.weight.data.reshape(o, -1)
        self.weight.grad += (cols @ g.T).T.reshape(self.weight.shape)   # faster in OpenBLAS than g @ cols.T
        if self.bias is not None:
            self.bias.grad += g.sum(axis=1)
        if not self.needs_input_grad:
            return None
        kh, kw = self.kernel_size
        dcols = (w.T @ g).reshape(c, kh, kw, oh, ow, n).transpose(5, 0, 3, 4, 1, 2)  # (N, C, OH, OW, kH, kW)
        dx = _col2im(lambda i, j: dcols[..., i, j], _full(padded, 0, g.dtype, _CHWN),
                     self.kernel_size, self.stride)
        ph, pw = self.padding
        return dx[:, :, ph:ph + h, pw:pw + wd]                       # a view, memory order CHWN


class _Pool2d(Layer):
    """Shared by MaxPool2d and AvgPool2d: x (N, C, H, W) -> (N, C, OH, OW), one value per
    kH x kW window; OH = (H + 2 pH - kH) // sH + 1, stride defaults to the kernel size.
    Both loop over the kH * kW window offsets with whole-batch array operations, and
    keep the memory layout of x (see _layout) in y and grad_x.
    Subclasses define _pool(windows) -> (y, state for backward) and
    _window_grad(grad, state) -> grad_at(i, j), the gradient of window element (i, j)."""
    pad_value = 0.0

    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, f"{name}: kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, f"{name}: stride")
        self.padding = _pair(padding, f"{name}: padding", low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size}")

    def forward(self, x):
        x = self._check_input(x, 4)
        _check_window(self, x, self.kernel_size, self.padding)
        xp = _pad(x, self.padding, self.pad_value)
        y, state = self._pool(_windows(xp, self.kernel_size, self.stride))   # windows: (N, C, OH, OW, kH, kW)
        self._cache = x.shape, xp.shape, _layout(xp), state
        return y

    def backward(self, grad):                                        # grad: (N, C, OH, OW)
        (_, _, h, w), padded, order, state = self._cache
        grad = _in_layout(grad, order)                # e.g. from Flatten, in C order
        dx = _col2im(self._window_grad(grad, state), _full(padded, 0, grad.dtype, order),
                     self.kernel_size, self.stride)
        ph, pw = self.padding
        return dx[:, :, ph:ph + h, pw:pw + w]


class MaxPool2d(_Pool2d):
    """y = max over each window (padding counts as -inf), as torch.nn.MaxPool2d.
    The gradient goes to one arg-max per window: the first in row-major window order
    (torch's choice on ties); a NaN counts as the maximum, as in torch."""
    pad_value = -np.inf

    def _pool(self, win):
        """-> (y, argmax): the max and its flat window offset i * kW + j, both (N, C, OH, OW)."""
        offsets = list(np.ndindex(*self.kernel_size))               # (i, j), row-major
        y = win[..., 0, 0].copy(order="K")                          # keeps the input's layout
        argmax = np.zeros_like(y, np.min_scalar_type(len(offsets) - 1))
        for k, (i, j) in enumerate(offsets[1:], 1):
            v = win[..., i, j]
            better = (v > y) | np.isnan(v)            # strictly greater: the first maximum keeps a tie
            np.maximum(argmax, better * argmax.dtype.type(k), out=argmax)   # k only grows
            np.maximum(y, v, out=y)                    # a NaN propagates
        return y, argmax

    def _window_grad(self, grad, argmax):
        kw = self.kernel_size[1]
        return lambda i, j: grad * (argmax == i * kw + j)


class AvgPool2d(_Pool2d):
    """y = mean over each window, padding zeros included (torch's count_include_pad=True)."""

    def _pool(self, win):
        y = sum(win[..., i, j] for i, j in np.ndindex(*self.kernel_size))
        return y / (self.kernel_size[0] * self.kernel_size[1]), None

    def _window_grad(self, grad, _):
        g = grad / (self.kernel_size[0] * self.kernel_size[1])
        return lambda i, j: g


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1, as torch.nn.BatchNorm1d/2d.

    training: y = (x - mean) / sqrt(var + eps) * weight + bias with the batch mean and
    biased variance; running_mean <- (1 - momentum) running_mean + momentum mean and
    running_var <- (1 - momentum) running_var + momentum var * n / (n - 1) (unbiased).
    eval: the same with running_mean and running_var. weight = 1, bias = 0 initially.
    backward (training), xhat = (x - mean) / sqrt(var + eps), n values per channel:
    dx = weight / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)).
    """
    buffers = ("running_mean", "running_var")
    ndim, dims = None, None          # subclasses: input rank and einsum letters (channel = "c")

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)

    def _sum(self, *arrays):
        """Per-channel sum of the product of `arrays` -> (C,)."""
        return np.einsum(",".join([self.dims] * len(arrays)) + "->c", *arrays)

    def _per_channel(self, v, x):
        """(C,) -> an array that broadcasts against x in long inner loops: a contiguous
        (C,) or (C, H, W) for C-order x (much faster than (C, 1, 1)), but (C, 1, 1) when
        the batch is innermost in memory (Conv2d's outputs)."""
        v = v.reshape((-1,) + (1,) * (x.ndim - 2))
        return v if _layout(x)[-1] == 0 else np.ascontiguousarray(np.broadcast_to(v, x.shape[1:]))

    def forward(self, x):
        x = self._check_input(x, self.ndim, self.num_features)
        if self.training:
            n = x.size // self.num_features
            if n < 2:
                raise ValueError(f"{self!r}: training needs more than 1 value per channel, "
                                 f"got input shape {x.shape}")
            mean = self._sum(x) / n
            xc = x - self._per_channel(mean, x)
            var = self._sum(xc, xc) / n
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean.astype(self.running_mean.dtype)
            self.running_var = (1 - m) * self.running_var + m * (var * (n / (n - 1))).astype(self.running_var.dtype)
        else:
            xc = x - self._per_channel(self.running_mean, x)
            var = self.running_var
        inv_std = 1 / np.sqrt(var + self.eps)
        self._cache = xc, inv_std                                    # xhat = xc * inv_std
        y = xc * self._per_channel(self.weight.data * inv_std, x)
        y += self._per_channel(self.bias.data, x)
        return y

    def backward(self, grad):
        xc, inv_std = self._cache
        sum_g, sum_gxhat = self._sum(grad), self._sum(grad, xc) * inv_std
        self.weight.grad += sum_gxhat
        self.bias.grad += sum_g
        scale = self.weight.data * inv_std
        if not self.training:
            return grad * self._per_channel(scale, grad)
        n = grad.size // self.num_features
        dx = xc * self._per_channel(-inv_std * sum_gxhat / n, grad)
        dx += grad
        dx -= self._per_channel(sum_g / n, grad)
        dx *= self._per_channel(scale, grad)
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of x (N, C) per feature; see _BatchNorm for the formulas."""
    ndim, dims = 2, "nc"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of x (N, C, H, W) per channel over N, H and W; see _BatchNorm."""
    ndim, dims = 4, "nchw"


# ════════════════════════════════════════════════════════════════════════════
# Losses: forward(pred, target) -> float (mean over the batch); backward() -> grad wrt pred
# ════════════════════════════════════════════════════════════════════════════

class Loss:
    """Base class: `loss(pred, target)` is `loss.forward(pred, target)`."""

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def _check_labels(self, pred, target):
        """pred (N, C) and integer labels (N,) in [0, C), else a ValueError/TypeError naming the loss."""
        name, pred, target = type(self).__name__, np.asarray(pred), np.asarray(target)
        if pred.ndim != 2:
            raise ValueError(f"{name}: expected pred of shape (N, C), got {pred.shape}")
        if target.shape != pred.shape[:1]:
            raise ValueError(f"{name}: expected target of shape ({pred.shape[0]},) for pred "
                             f"{pred.shape}, got {target.shape}")
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"{name}: expected integer class labels, got dtype {target.dtype}")
        if target.size and (target.min() < 0 or target.max() >= pred.shape[1]):
            raise ValueError(f"{name}: labels must be in [0, {pred.shape[1]}), "
                             f"got min {target.min()} max {target.max()}")
        return pred, target


class CrossEntropyLoss(Loss):
    """loss = mean_i [logsumexp(x_i) - x_i[t_i]]  (log-softmax fused with NLL).

    pred: logits (N, C); target: int labels (N,). grad = (softmax(x) - onehot(t)) / N.
    """

    def forward(self, pred, target):
        pred, target = self._check_labels(pred, target)
        logp = _log_softmax(pred, 1)
        self._cache = logp, target
        return float(-logp[np.arange(len(target)), target].mean())

    def backward(self):
        logp, target = self._cache
        grad = np.exp(logp)
        grad[np.arange(len(target)), target] -= 1
        return grad / logp.dtype.type(len(target))


class NLLLoss(Loss):
    """loss = -mean_i logp_i[t_i];  pred: log-probabilities (N, C), target: int labels (N,)."""

    def forward(self, pred, target):
        pred, target = self._check_labels(pred, target)
        self._cache = pred, target
        return float(-pred[np.arange(len(target)), target].mean())

    def backward(self):
        pred, target = self._cache
        grad = np.zeros_like(pred)
        grad[np.arange(len(target)), target] = -1 / len(target)
        return grad


class MSELoss(Loss):
    """loss = mean((pred - target)^2) over every element; grad = 2 (pred - target) / pred.size."""

    def forward(self, pred, target):
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"MSELoss: pred and target must have the same shape, got {pred.shape} "
                             f"and {target.shape} (use one_hot(y, C) for class labels)")
        self._cache = diff = pred - target.astype(pred.dtype, copy=False)
        return float(np.mean(diff * diff))

    def backward(self):
        diff = self._cache
        return diff * diff.dtype.type(2 / diff.size)


# ════════════════════════════════════════════════════════════════════════════
# Optimizers
# ════════════════════════════════════════════════════════════════════════════

class Optimizer:
    """Base class: `step()` updates every parameter in place from its `.grad`.

    Holds one parameter group: the hyperparameters are attributes (`lr`,
    `momentum`, `betas`, ...) that may be changed between steps (schedulers
    write `lr`, and OneCycleLR `momentum` or `betas[0]`). `state[p]` is the
    per-parameter state (a dict, keyed by the Parameter object itself),
    created at p's first step in the dtype of `p.data`. `initial_lr` is set
    by the first scheduler attached (PyTorch's `param_group["initial_lr"]`).
    Updates are in place and stay in the dtype of `p.data`.
    """

    def __init__(self, params, lr, **hyper):
        name = type(self).__name__
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{name}: expected a non-empty iterable of Parameters, got an empty one")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: expected Parameters, got {type(p).__name__}")
        for k, v in dict(lr=lr, **hyper).items():     # PyTorch's checks: every number >= 0
            if k == "betas":
                for i, b in enumerate(v):
                    if not 0.0 <= b < 1.0:
                        raise ValueError(f"{name}: expected betas[{i}] in [0, 1), got {b}")
            elif not isinstance(v, bool) and not v >= 0.0:
                raise ValueError(f"{name}: expected {k} >= 0, got {v}")
        self.lr, self.initial_lr, self.state = lr, None, {}
        for k, v in hyper.items():   # plain Python floats: a NumPy float64 scalar would promote float32 math
            setattr(self, k, v if isinstance(v, bool) else tuple(map(float, v)) if k == "betas" else float(v))

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = float(value)

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def _grad(self, p):
        """g = p.grad + weight_decay * p.data: PyTorch's (coupled) L2 weight decay."""
        if not self.weight_decay:
            return p.grad
        g = p.data * self.weight_decay
        g += p.grad
        return g

    def step(self):
        raise NotImplementedError

    def __repr__(self):
        hyper = {k.lstrip("_"): v for k, v in vars(self).items() if k not in ("params", "initial_lr", "state")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in hyper.items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (PyTorch's form).

        g = grad + weight_decay * p
        b = g                                   at the first step (no dampening)
        b = momentum * b + (1 - dampening) * g  afterwards
        g = g + momentum * b  if nesterov  else  b        (when momentum != 0)
        p = p - lr * g
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        super().__init__(params, lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True expects momentum > 0 and dampening = 0, "
                             f"got momentum={momentum}, dampening={dampening}")

    def step(self):
        lr, mu = self.lr, self.momentum
        for p in self.params:
            g = self._grad(p)
            if mu:
                st = self.state.setdefault(p, {})
                b = st.get("momentum_buffer")
                if b is None:
                    b = st["momentum_buffer"] = g.copy()
                else:
                    b *= mu
                    b += (1 - self.dampening) * g
                g = g + mu * b if self.nesterov else b
            p.data -= lr * g


class RMSprop(Optimizer):
    """RMSprop (Hinton), PyTorch's form, all buffers starting at zero:

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g²
        centered:  gbar = alpha * gbar + (1 - alpha) * g,  d = sqrt(v - gbar²) + eps
        else:      d = sqrt(v) + eps
        momentum > 0:  b = momentum * b + g / d,  p = p - lr * b
        else:          p = p - lr * g / d
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False):
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def step(self):
        lr, alpha, mu = self.lr, self.alpha, self.momentum
        for p in self.params:
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"step": 0, "square_avg": np.zeros_like(p.data)}
                if mu > 0:
                    st["momentum_buffer"] = np.zeros_like(p.data)
                if self.centered:
                    st["grad_avg"] = np.zeros_like(p.data)
            st["step"] += 1
            g, v = self._grad(p), st["square_avg"]
            v *= alpha
            v += (1 - alpha) * np.square(g)
            if self.centered:
                gbar = st["grad_avg"]
                gbar *= alpha
                gbar += (1 - alpha) * g
                d = v - np.square(gbar)
                np.sqrt(d, out=d)
            else:
                d = np.sqrt(v)
            d += self.eps
            np.divide(g, d, out=d)                                   # d = g / d
            if mu > 0:
                b = st["momentum_buffer"]
                b *= mu
                b += d
                d = lr * b
            else:
                d *= lr
            p.data -= d


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), PyTorch's form, at step t = 1, 2, ...:

        g = grad + weight_decay * p
        s = s + g²                       (s starts at initial_accumulator_value)
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10):
        super().__init__(params, lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def step(self):
        for p in self.params:
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"step": 0, "sum": np.full_like(p.data, self.initial_accumulator_value)}
            st["step"] += 1
            g, s = self._grad(p), st["sum"]
            s += np.square(g)
            d = np.sqrt(s)
            d += self.eps
            np.divide(g, d, out=d)
            d *= self.lr / (1 + (st["step"] - 1) * self.lr_decay)
            p.data -= d


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), PyTorch's form, at step t = 1, 2, ...:

        g = grad + weight_decay * p                 (AdamW: p = p * (1 - lr * weight_decay) instead)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g²
        amsgrad:  vmax = max(vmax, v), and vmax replaces v below
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """
    decoupled = False     # AdamW: weight decay shrinks p directly instead of entering g

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def step(self):
        lr, (beta1, beta2) = self.lr, self.betas
        for p in self.params:
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                      "exp_avg_sq": np.zeros_like(p.data)}
                if self.amsgrad:
                    st["max_exp_avg_sq"] = np.zeros_like(p.data)
            t = st["step"] = st["step"] + 1
            if self.decoupled:
                p.data *= 1 - lr * self.weight_decay
                g = p.grad
            else:
                g = self._grad(p)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * np.square(g)
            if self.amsgrad:
                v = np.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
            d = np.sqrt(v)
            d /= math.sqrt(1 - beta2 ** t)
            d += self.eps
            np.divide(m, d, out=d)
            d *= lr / (1 - beta1 ** t)
            p.data -= d


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.

        p = p * (1 - lr * weight_decay)        first, then Adam's update with g = grad
    """
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):

        p = p * (1 - lr * weight_decay)                       (decoupled, as AdamW)
        p = p - lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g                       (m starts at zero)
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0):
        super().__init__(params, lr, betas=betas, weight_decay=weight_decay)

    def step(self):
        lr, (beta1, beta2) = self.lr, self.betas
        for p in self.params:
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"exp_avg": np.zeros_like(p.data)}
            g, m = p.grad, st["exp_avg"]
            c = m * beta1
            c += (1 - beta1) * g
            d = np.sign(c)              # (not out=c: NumPy's in-place sign is ~10x slower)
            d *= lr
            if self.weight_decay:
                p.data *= 1 - lr * self.weight_decay
            p.data -= d
            m *= beta2
            m += (1 - beta2) * g


# ════════════════════════════════════════════════════════════════════════════
# Learning-rate schedulers
# ════════════════════════════════════════════════════════════════════════════

class LRScheduler:
    """Base class: `step()` sets `optimizer.lr = get_lr()` for the next epoch.

    Like PyTorch, the constructor records `optimizer.initial_lr` (the first
    scheduler's starting lr, `base_lr` here) and performs the initial step, so
    `optimizer.lr` and `get_last_lr()` equal PyTorch's from the start. Most
    schedules are PyTorch's recursive ("chainable") forms, which update the
    current lr, so the float results match PyTorch's exactly.
    `last_epoch` counts the steps taken (0 after the constructor).
    """

    def __init__(self, optimizer):
        self._attach(optimizer)
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lr = optimizer.initial_lr
        self.last_epoch = -1
        self.step()

    def _attach(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer

    def get_lr(self):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self):
        return self._last_lr


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def get_lr(self):
        e, lr = self.last_epoch, self.optimizer.lr
        return lr * self.gamma if e > 0 and e % self.step_size == 0 else lr


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch); a repeated milestone counts twice."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = Counter(milestones), gamma
        super().__init__(optimizer)

    def get_lr(self):
        return self.optimizer.lr * self.gamma ** self.milestones[self.last_epoch]


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        return self.optimizer.lr * self.gamma if self.last_epoch > 0 else self.optimizer.lr


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the lr factor from start_factor to end_factor over total_iters:

        lr = base_lr * (start + (end - start) * min(epoch, total_iters) / total_iters)
    computed recursively, as PyTorch does:
        lr = lr * (1 + (end - start) / (total_iters * start + (epoch - 1) * (end - start)))
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: expected start_factor in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: expected end_factor in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def get_lr(self):
        e, lr, s, f = self.last_epoch, self.optimizer.lr, self.start_factor, self.end_factor
        if e == 0:
            return lr * s
        if e > self.total_iters:
            return lr
        return lr * (1.0 + (f - s) / (self.total_iters * s + (e - 1) * (f - s)))


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, continued past T_max
    (it rises again). PyTorch's recursive form:

        lr = eta_min + (lr - eta_min) * (1 + cos(pi * e / T_max)) / (1 + cos(pi * (e - 1) / T_max))
        and lr += (base_lr - eta_min) * (1 - cos(pi / T_max)) / 2 at e = T_max + 1 (mod 2 T_max).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        e, lr, T, lo = self.last_epoch, self.optimizer.lr, self.T_max, self.eta_min
        if e == 0:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - lo) + lo


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter 2017): lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2.

    T_cur counts the steps since the last restart; at T_cur = T_i it restarts
    from 0 and the period becomes T_i * T_mult (T_i starts at T_0).
    """

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0):
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected a positive integer T_0, got {T_0!r}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected an integer T_mult >= 1, got {T_mult!r}")
        self.T_0, self.T_i, self.T_mult, self.eta_min, self.T_cur = T_0, T_0, T_mult, eta_min, -1
        super().__init__(optimizer)

    def step(self):
        self.T_cur += 1
        if self.T_cur >= self.T_i:
            self.T_cur, self.T_i = self.T_cur - self.T_i, self.T_i * self.T_mult
        super().step()

    def get_lr(self):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2


class OneCycleLR(LRScheduler):
    """1cycle policy (Smith & Topin 2019), stepped after every batch, PyTorch's phases.

    initial_lr = max_lr / div_factor, min_lr = initial_lr / final_div_factor, T = total_steps
    (or epochs * steps_per_epoch). Each phase anneals (cos or linear) from a start to an end
    value as pct = (step - phase start) / (phase end - phase start) goes from 0 to 1:
        two-phase:   initial_lr -> max_lr up to step pct_start*T - 1, then max_lr -> min_lr up to T - 1
        three_phase: initial_lr -> max_lr up to pct_start*T - 1, max_lr -> initial_lr up to
                     2*pct_start*T - 2, then initial_lr -> min_lr up to T - 1
        cos: end + (start - end) * (1 + cos(pi * pct)) / 2;   linear: start + (end - start) * pct
    cycle_momentum (default, as in PyTorch) anneals SGD/RMSprop `momentum`, or Adam/AdamW/Lion
    `betas[0]`, inversely: max_momentum -> base_momentum while the lr rises, and back
    (the third phase keeps max_momentum).
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        self._attach(optimizer)
        if total_steps is None and epochs is not None and steps_per_epoch is not None:
            for name, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
                if not isinstance(v, int) or v <= 0:
                    raise ValueError(f"OneCycleLR: expected a positive integer {name}, got {v!r}")
            total_steps = epochs * steps_per_epoch
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"OneCycleLR: expected a positive integer total_steps "
                             f"(or epochs and steps_per_epoch), got {total_steps!r}")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: expected a float pct_start in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: expected anneal_strategy 'cos' or 'linear', got {anneal_strategy!r}")
        self.use_beta1 = hasattr(optimizer, "betas")
        if cycle_momentum and not (self.use_beta1 or hasattr(optimizer, "momentum")):
            raise ValueError(f"OneCycleLR: cycle_momentum=True expects an optimizer with momentum or betas, "
                             f"got {type(optimizer).__name__} (pass cycle_momentum=False)")
        self.total_steps, self.anneal_strategy, self.cycle_momentum = total_steps, anneal_strategy, cycle_momentum
        lr0 = optimizer.initial_lr = max_lr / div_factor
        lr_min, T = lr0 / final_div_factor, total_steps
        m_lo, m_hi = float(base_momentum), float(max_momentum)
        # phases: (end step, start lr, end lr, start momentum, end momentum)
        if three_phase:
            self.phases = [(float(pct_start * T) - 1, lr0, max_lr, m_hi, m_lo),
                           (float(2 * pct_start * T) - 2, max_lr, lr0, m_lo, m_hi),
                           (T - 1, lr0, lr_min, m_hi, m_hi)]
        else:
            self.phases = [(float(pct_start * T) - 1, lr0, max_lr, m_hi, m_lo),
                           (T - 1, max_lr, lr_min, m_lo, m_hi)]
        super().__init__(optimizer)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {t} times, but total_steps is {self.total_steps}")
        start = 0.0
        for i, (end, lr_a, lr_b, m_a, m_b) in enumerate(self.phases):
            if t <= end or i == len(self.phases) - 1:
                pct = (t - start) / (end - start)
                break
            start = end
        if self.cycle_momentum:
            m, opt = self._anneal(m_a, m_b, pct), self.optimizer
            if self.use_beta1:
                opt.betas = (m, opt.betas[1])
            else:
                opt.momentum = m
        return self._anneal(lr_a, lr_b, pct)


class ReduceLROnPlateau(LRScheduler):
    """Multiply lr by `factor` when the metric passed to `step(metric)` stops improving.

    A metric improves on the best so far when (mode min / max, threshold_mode rel / abs)
    metric < best * (1 - threshold) / metric > best * (1 + threshold) (rel),
    metric < best - threshold / metric > best + threshold (abs).
    After more than `patience` epochs without improvement, lr = max(lr * factor, min_lr)
    (skipped if that changes lr by eps or less); then `cooldown` epochs are not counted.
    No initial step: the lr is left unchanged until the first reduction.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        self._attach(optimizer)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: expected factor < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: expected mode 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: expected threshold_mode 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.min_lr, self.eps = threshold_mode, cooldown, min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0
        self._last_lr = [optimizer.lr]

    def _is_better(self, a, best):
        if self.threshold_mode == "rel":
            return a < best * (1 - self.threshold) if self.mode == "min" else a > best * (self.threshold + 1)
        return a < best - self.threshold if self.mode == "min" else a > best + self.threshold

    def step(self, metrics):
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0                 # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [self.optimizer.lr]


# ════════════════════════════════════════════════════════════════════════════
# Sequential and History
# ════════════════════════════════════════════════════════════════════════════

class History:
    """What `fit` returns: `.history[key]` holds one value per epoch, as Keras's History."""

    def __init__(self):
        self.epoch, self.history = [], {}

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def to_csv(self, path):
        """Write epoch and every metric as CSV (atomically)."""
        keys = list(self.history)
        with _atomic_open(path, "w") as f:
            f.write(",".join(["epoch"] + keys) + "\n")
            for i, e in enumerate(self.epoch):
                f.write(",".join([str(e)] + [repr(self.history[k][i]) for k in keys]) + "\n")


class Sequential(Layer):
    """A stack of layers run in order, with Keras's compile/fit/evaluate/predict.

    `Sequential([l1, l2])`, `Sequential(l1, l2)` or `add(layer)`. State-dict keys are
    torch.nn.Sequential's ("0.weight", "1.running_mean", ...).
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = layers[0]
        self.layers = []
        for layer in layers:
            self.add(layer)
        self.optimizer = self.loss = self.scheduler = self._input_shape = None
        self.metrics = ()

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        self.layers.append(layer)
        return self

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}): {l!r}\n" for i, l in enumerate(self.layers)) + ")"

    # -- forward, backward, state ---------------------------------------------
    def forward(self, x):
        self._input_shape = np.shape(x)[1:]
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad, input_grad=True):
        """Run every layer's backward in reverse; returns grad wrt the input
        (None with input_grad=False, which lets the first layer skip that work)."""
        for layer in reversed(self.layers[1:]):
            grad = layer.backward(grad)
        first = self.layers[0]
        first.needs_input_grad = input_grad
        try:
            return first.backward(grad)
        finally:
            first.needs_input_grad = True

    def named_parameters(self):
        return [(f"{i}.{k}", p) for i, l in enumerate(self.layers) for k, p in l.named_parameters()]

    def named_buffers(self):
        return [(f"{i}.{k}", b) for i, l in enumerate(self.layers) for k, b in l.named_buffers()]

    def _named_state(self):
        return [(f"{i}.{k}", v) for i, l in enumerate(self.layers) for k, v in l._named_state()]

    def train(self, mode=True):
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def _dtype(self):
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    # -- Keras-style training ---------------------------------------------------
    def compile(self, optimizer, loss, metrics=("accuracy",), scheduler=None):
        """Set the optimizer, the loss (a Loss instance), the metrics and an optional LR scheduler."""
        if not isinstance(loss, Loss):
            raise TypeError(f"Sequential.compile: loss must be a Loss instance such as "
                            f"CrossEntropyLoss(), got {loss!r}")
        unknown = set(metrics) - {"accuracy"}
        if unknown:
            raise ValueError(f"Sequential.compile: unknown metrics {sorted(unknown)}; known: ['accuracy']")
        self.optimizer, self.loss, self.metrics, self.scheduler = optimizer, loss, tuple(metrics), scheduler
        return self

    def _check_data(self, where, X, y):
        """Cast X to the model's dtype; reject mismatched lengths and NaN/Inf."""
        X, y = np.asarray(X), np.asarray(y)
        if len(X) != len(y):
            raise ValueError(f"Sequential.{where}: X has {len(X)} samples but y has {len(y)}")
        for name, a in (("X", X), ("y", y)):
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
                raise ValueError(f"Sequential.{where}: {name} contains NaN or Inf")
        return X.astype(self._dtype(), copy=False), y

    def _correct(self, out, y):
        """Number of rows whose arg-max matches the label (or the one-hot target's arg-max)."""
        return int((out.argmax(axis=1) == (y.argmax(axis=1) if y.ndim == 2 else y)).sum())

    def fit(self, X, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, verbose=1):
        """Train on (X, y) for `epochs` passes of minibatches; returns a History.

        `validation_split` holds out the last fraction of X before shuffling (as Keras;
        ignored when validation_data is given).
        The scheduler steps after every batch for OneCycleLR, else after every epoch;
        ReduceLROnPlateau is given val_loss, or the training loss without validation data.
        history: loss, accuracy, val_loss, val_accuracy, and lr (the lr each epoch started with).
        verbose: 0 silent, 1 a tqdm bar per epoch then its line, 2 one line per epoch.
        """
        if self.optimizer is None:
            raise RuntimeError("Sequential.fit: call compile(optimizer, loss) first")
        X, y = self._check_data("fit", X, y)
        if validation_split and validation_data is None:     # validation_data wins, as in Keras
            if not 0 < validation_split < 1:
                raise ValueError(f"Sequential.fit: validation_split must be in (0, 1), got {validation_split}")
            cut = int(len(X) * (1 - validation_split))
            X, y, validation_data = X[:cut], y[:cut], (X[cut:], y[cut:])
        elif validation_data is not None:                      # checked once, not every epoch
            validation_data = self._check_data("fit (validation_data)", *validation_data)
        per_batch = isinstance(self.scheduler, OneCycleLR)
        history = History()
        for epoch in range(epochs):
            self.train()
            logs, lr = {}, self.optimizer.lr
            total, correct, seen = 0.0, 0, 0
            batches = minibatches(X, y, batch_size, shuffle)
            if verbose == 1:
                from tqdm.auto import tqdm
                batches = tqdm(batches, total=math.ceil(len(X) / batch_size), desc=f"epoch {epoch + 1}/{epochs}")
            for b, (xb, yb) in enumerate(batches):
                out = self.forward(xb)
                loss = self.loss.forward(out, yb)
                if not math.isfinite(loss):
                    raise ValueError(f"Sequential.fit: the loss became {loss} at epoch {epoch + 1}, "
                                     f"batch {b + 1} (lr {self.optimizer.lr:g}); try a smaller learning rate")
                self.optimizer.zero_grad()
                self.backward(self.loss.backward(), input_grad=False)
                self.optimizer.step()
                if per_batch:
                    self.scheduler.step()
                total, seen = total + loss * len(xb), seen + len(xb)
                if "accuracy" in self.metrics:
                    correct += self._correct(out, yb)
                if verbose == 1:
                    live = {"loss": f"{total / seen:.4f}"}
                    if "accuracy" in self.metrics:
                        live["accuracy"] = f"{correct / seen:.4f}"
                    batches.set_postfix(live, refresh=False)
            logs["loss"] = total / seen
            if "accuracy" in self.metrics:
                logs["accuracy"] = correct / seen
            if validation_data is not None:
                logs.update({"val_" + k: v for k, v in self._evaluate(*validation_data).items()})
            logs["lr"] = lr
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(logs.get("val_loss", logs["loss"]))
            elif self.scheduler is not None and not per_batch:
                self.scheduler.step()
            history.append(epoch, logs)
            if verbose == 1:
                batches.close()
            if verbose:
                print(f"epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:{'.3g' if k == 'lr' else '.4f'}}" for k, v in logs.items()),
                      flush=True)
        return history

    def _run(self, X, batch_size):
        """Yield, batch by batch in eval mode, the list of every layer's output; drop caches after."""
        was_training = self.training
        self.eval()
        X = np.asarray(X).astype(self._dtype(), copy=False)
        self._input_shape = X.shape[1:]               # for summary()
        try:
            for i in range(0, len(X), batch_size):
                outs, x = [], X[i:i + batch_size]
                for layer in self.layers:
                    x = layer.forward(x)
                    outs.append(x)
                yield outs
        finally:
            for layer in self.layers:
                layer._cache = None
            self.train(was_training)

    def predict(self, X, batch_size=256):
        """The model's outputs for X, computed in batches in eval mode."""
        return np.concatenate([outs[-1] for outs in self._run(X, batch_size)])

    def activations(self, X, batch_size=256):
        """[output of every layer] for X, in eval mode: the hidden representations."""
        return [np.concatenate(col) for col in zip(*self._run(X, batch_size))]

    def evaluate(self, X, y, batch_size=256):
        """{"loss": mean loss, "accuracy": fraction correct} on (X, y), in eval mode."""
        if self.loss is None:
            raise RuntimeError("Sequential.evaluate: call compile(optimizer, loss) first")
        return self._evaluate(*self._check_data("evaluate", X, y), batch_size)

    def _evaluate(self, X, y, batch_size=256):
        """evaluate, on data already checked and cast by _check_data."""
        out = self.predict(X, batch_size)
        result = {"loss": self.loss.forward(out, y)}
        self.loss._cache = None
        if "accuracy" in self.metrics:
            result["accuracy"] = self._correct(out, y) / len(y)
        return result

    def summary(self, input_shape=None):
        """A table of layer, output shape and parameter count, with the total.

        input_shape (without the batch axis) defaults to the last input seen, or
        (in_features,) when the first layer is Linear.
        """
        shape = input_shape or self._input_shape
        if shape is None and isinstance(self.layers[0], Linear):
            shape = (self.layers[0].in_features,)
        if shape is None:
            raise ValueError("Sequential.summary: give input_shape without the batch axis, e.g. (1, 28, 28)")
        [outs] = list(self._run(np.zeros((1, *shape)), 1))
        rows = [(f"{i}: {l!r}", str((None, *o.shape[1:])), sum(p.data.size for p in l.parameters()))
                for i, (l, o) in enumerate(zip(self.layers, outs))]
        w = max(len(r[0]) for r in rows) + 2
        lines = [f"{'Layer':<{w}}{'Output shape':<20}{'Param #':>12}", "=" * (w + 32)]
        lines += [f"{name:<{w}}{out:<20}{n:>12,}" for name, out, n in rows]
        lines += ["=" * (w + 32), f"Total params: {sum(r[2] for r in rows):,}"]
        return "\n".join(lines)

    # -- saving -----------------------------------------------------------------
    def config(self):
        return {"class": "Sequential", "layers": [l.config() for l in self.layers]}

    def save(self, path):
        """One .npz with every weight and buffer plus the architecture (JSON), written atomically."""
        arrays = dict(self.state_dict(), __architecture__=np.array(json.dumps(self.config())))
        with _atomic_open(path) as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(path):
        """Rebuild a model written by `save`: architecture, dtype, weights and buffers."""
        with open(path, "rb") as fh:          # a missing file raises FileNotFoundError
            try:
                with np.load(fh, allow_pickle=False) as f:
                    arrays = dict(f)
                config = json.loads(str(arrays.pop("__architecture__")))
                model = _from_config(config)
            except (OSError, EOFError, TypeError, ValueError, KeyError, AttributeError,
                    zipfile.BadZipFile) as e:   # empty file, .npy, not an architecture
                raise ValueError(f"Sequential.load: {path} is not a tinynet model file ({e})") from None
        if arrays:
            model.astype(next(iter(arrays.values())).dtype)
        return model.load_state_dict(arrays)


def _from_config(config):
    """Build a layer (or Sequential) from {"class", "args", "kwargs"} / {"class", "layers"}."""
    cls = globals().get(config.get("class"))
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"Sequential.load: unknown layer class {config.get('class')!r}")
    if cls is Sequential:
        return Sequential([_from_config(c) for c in config["layers"]])
    return cls(*config.get("args", ()), **config.get("kwargs", {}))


# ════════════════════════════════════════════════════════════════════════════
# Gradient checking
# ════════════════════════════════════════════════════════════════════════════

def numerical_gradient(f, x, eps=1e-6):
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) of the scalar f(x).

    x (float64) is perturbed in place, one element at a time, and restored.
    """
    if x.dtype != np.float64:
        raise TypeError(f"numerical_gradient: x must be float64, got {x.dtype}")
    grad, flat = np.zeros(x.size), x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient: x must be a contiguous array")
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f(x)
        flat[i] = old - eps
        minus = f(x)
        flat[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad.reshape(x.shape)


def gradcheck(layer, x, eps=1e-6):
    """Largest relative error between backward and central differences, over the
    input gradient and every parameter gradient, for f = sum(layer(x) * r), r fixed.

    The layer must be float64 (`layer.astype(np.float64)`) and deterministic
    (Dropout in eval mode). Buffers (BatchNorm's running statistics) are restored after.
    Relative error of an array: max|analytic - numeric| / max(|analytic|, |numeric|).
    """
    if any(p.data.dtype != np.float64 for p in layer.parameters()):
        raise TypeError(f"gradcheck: {layer!r} must be float64; call .astype(np.float64) first")
    x = np.array(x, dtype=np.float64)
    state = layer.state_dict()
    r = np.random.default_rng(0).standard_normal(np.shape(layer.forward(x)))
    layer.zero_grad()
    pairs = [(layer.backward(r), x)] + [(p.grad.copy(), p.data) for p in layer.parameters()]
    f = lambda _: float(np.sum(layer.forward(x) * r))  # noqa: E731
    errors = []
    for analytic, at in pairs:
        numeric = numerical_gradient(f, at, eps)
        scale = max(np.abs(analytic).max(initial=0), np.abs(numeric).max(initial=0), 1e-12)
        errors.append(np.abs(analytic - numeric).max(initial=0) / scale)
    layer.load_state_dict(state)
    return max(errors)


# ════════════════════════════════════════════════════════════════════════════
# Data
# ════════════════════════════════════════════════════════════════════════════

def one_hot(y, num_classes):
    """Integer labels (N,) -> float32 (N, num_classes) with a single 1 per row."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise TypeError(f"one_hot: expected 1-D integer labels, got dtype {y.dtype} shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got min {y.min()} max {y.max()}")
    out = np.zeros((len(y), num_classes), np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def minibatches(X, y, batch_size, shuffle=True):
    """Yield (X[idx], y[idx]) covering every sample exactly once; the last batch may be
    smaller. The order is shuffled by the tinynet generator (see manual_seed)."""
    if len(X) != len(y):
        raise ValueError(f"minibatches: X has {len(X)} samples but y has {len(y)}")
    if int(batch_size) < 1:
        raise ValueError(f"minibatches: batch_size must be >= 1, got {batch_size}")
    order = _rng.permutation(len(X)) if shuffle else np.arange(len(X))
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        yield X[idx], y[idx]


# Where downloads come from (tried in order) and the published MD5 of every file.
# Plain dicts, so a test can point them at a local server with monkeypatch.setitem.
DATA_MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "svhn": ["http://ufldl.stanford.edu/housenumbers/"],
}
DATA_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}

# IDX type byte -> big-endian dtype of the data
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path):
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into an array.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a dimension-count byte, one
    big-endian uint32 per dimension, then the data, big-endian, C order.
    gzip is recognised by its magic bytes 1f 8b, not by the file name. Returns
    an array of the file's type (in native byte order) and shape; a corrupt or
    truncated file raises a ValueError naming it.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"load_idx: {path}: corrupt or truncated gzip stream ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"load_idx: {path}: truncated header ({len(raw)} bytes)")
    if raw[:2] != b"\0\0":
        raise ValueError(f"load_idx: {path}: bad magic number {raw[:4].hex()}, expected 0000 then type and rank")
    if raw[2] not in _IDX_DTYPES:
        raise ValueError(f"load_idx: {path}: unknown type byte 0x{raw[2]:02x}, "
                         f"expected one of {', '.join(f'0x{t:02x}' for t in _IDX_DTYPES)}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"load_idx: {path}: truncated header ({ndim} dimensions need {start} bytes, "
                         f"got {len(raw)})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, 4))
    size = math.prod(shape) * dtype.itemsize
    if len(raw) - start != size:
        problem = "truncated payload" if len(raw) - start < size else "trailing bytes"
        raise ValueError(f"load_idx: {path}: {problem}: shape {shape} of {dtype.name} needs "
                         f"{size} data bytes, got {len(raw) - start}")
    return np.frombuffer(raw, dtype, math.prod(shape), start).reshape(shape).astype(dtype.newbyteorder("="))


_DATA_BESIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")   # data/ beside tinynet.py


def _data_dir(data_dir=None):
    """`data_dir` if given, else $TINYNET_DATA, else data/ beside tinynet.py."""
    return os.fspath(data_dir or os.environ.get("TINYNET_DATA") or _DATA_BESIDE)


def _download(name, urls, md5, dest):
    """Fetch `name` from each of `urls` in turn into `dest`, checking its MD5.

    The bytes go to `dest + ".part"`, renamed to `dest` only when complete and
    verified; the .part file is removed on any failure. Raises OSError listing
    every URL tried with its failure when none works.
    """
    from tqdm import tqdm
    part, failures = dest + ".part", []
    for url in urls:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "tinynet"})
            with urllib.request.urlopen(request, timeout=60) as r, open(part, "wb") as f:
                total, got, h = int(r.headers.get("Content-Length") or 0), 0, hashlib.md5()
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
                        got += len(chunk)
            if total and got != total:   # urllib returns a short body without an error
                failures.append(f"{url}: connection closed after {got} of {total} bytes")
            elif h.hexdigest() != md5:
                failures.append(f"{url}: MD5 {h.hexdigest()}, expected {md5}")
            else:
                os.replace(part, dest)
                return dest
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"{url}: {e}")
        finally:
            if os.path.exists(part):
                os.remove(part)
    raise OSError(f"could not download {name}; tried:\n  " + "\n  ".join(failures)
                  + f"\nDownload it by hand (MD5 {md5}) and save it as {dest}")


def _find(dataset, name, folder, download, caller):
    """Path of file `name` in `folder`, downloaded from DATA_MIRRORS[dataset] if missing."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        urls = [mirror + name for mirror in DATA_MIRRORS[dataset]]
        if not download:
            raise FileNotFoundError(f"{caller}: {path} not found; download it (e.g. from {urls[0]}, "
                                    f"MD5 {DATA_MD5[name]}) and put it there, or pass download=True")
        os.makedirs(folder, exist_ok=True)
        _download(name, urls, DATA_MD5[name], path)
    return path


def load_mnist(data_dir=None, download=True):
    """MNIST from the four official IDX .gz files in <data_dir>/mnist/ (downloaded if missing).

    Returns (X_train, y_train, X_test, y_test): X float32 (N, 1, 28, 28) in
    [0, 1], y int64; N = 60000 for train, 10000 for test.
    """
    folder = os.path.join(_data_dir(data_dir), "mnist")
    out = []
    for split in ("train", "t10k"):
        paths = [_find("mnist", f"{split}-{kind}-idx{d}-ubyte.gz", folder, download, "load_mnist")
                 for kind, d in (("images", 3), ("labels", 1))]
        X, y = load_idx(paths[0]), load_idx(paths[1])
        if X.dtype != np.uint8 or X.shape[1:] != (28, 28) or y.dtype != np.uint8 or y.shape != X.shape[:1]:
            raise ValueError(f"load_mnist: expected uint8 images (N, 28, 28) and labels (N,), got "
                             f"{X.dtype} {X.shape} in {paths[0]} and {y.dtype} {y.shape} in {paths[1]}")
        out += [(X / np.float32(255)).reshape(-1, 1, 28, 28), y.astype(np.int64)]
    return tuple(out)


def load_svhn(split="train", data_dir=None, download=True):
    """SVHN cropped digits from <data_dir>/svhn/<split>_32x32.mat (downloaded if missing).

    split: "train" (73,257 images), "test" (26,032) or "extra" (531,131).
    The file holds X (32, 32, 3, N) uint8 and y (N, 1) with 10 for digit 0.
    Returns X float32 (N, 3, 32, 32) in [0, 1] and y int64 0..9. Only one
    float32 copy of the images is made (the uint8 array is transposed first).
    """
    from scipy.io import loadmat
    if split not in ("train", "test", "extra"):
        raise ValueError(f"load_svhn: split must be 'train', 'test' or 'extra', got {split!r}")
    path = _find("svhn", f"{split}_32x32.mat", os.path.join(_data_dir(data_dir), "svhn"), download, "load_svhn")
    mat = loadmat(path, variable_names=("X", "y"))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"load_svhn: {path} must hold arrays 'X' and 'y'")
    X, y = mat.pop("X"), mat.pop("y")     # popped: the file's uint8 X is freed once transposed
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3) or y.size != X.shape[-1]:
        raise ValueError(f"load_svhn: {path}: expected X uint8 (32, 32, 3, N) and y (N, 1), "
                         f"got X {X.dtype} {X.shape} and y {y.shape}")
    y = y.ravel()
    if y.size and (y.min() < 1 or y.max() > 10):
        raise ValueError(f"load_svhn: {path}: labels must be 1..10 (10 = digit 0), got {y.min()}..{y.max()}")
    X = np.ascontiguousarray(X.transpose(3, 2, 0, 1))   # (32, 32, 3, N) -> (N, 3, 32, 32), still uint8
    return X / np.float32(255), (y % 10).astype(np.int64)


def load_iris(path=None):
    """Fisher's Iris: X float32 (150, 4) (sepal/petal length/width, cm), y int64 0..2.

    Reads a CSV in scikit-learn's layout: a header `n_samples,n_features,
    class names...`, then one row of features and an integer label per sample.
    path=None: $TINYNET_DATA/iris.csv if it exists, else data/iris.csv beside tinynet.py.
    """
    if path is None:
        path = os.path.join(_data_dir(), "iris.csv")
        if not os.path.exists(path):
            path = os.path.join(_DATA_BESIDE, "iris.csv")
    with open(path) as f:
        header = f.readline().strip().split(",")
        try:
            n, d = int(header[0]), int(header[1])
            data = np.loadtxt(f, delimiter=",", ndmin=2)
        except (ValueError, IndexError) as e:
            raise ValueError(f"load_iris: {path}: expected a header 'n_samples,n_features,names...' "
                             f"and numeric rows ({e})") from None
    classes = len(header) - 2
    if data.shape != (n, d + 1):
        raise ValueError(f"load_iris: {path}: header says {n} rows of {d} features and a label, got {data.shape}")
    y = data[:, d].astype(np.int64)
    if (y != data[:, d]).any() or y.min() < 0 or y.max() >= classes:
        raise ValueError(f"load_iris: {path}: labels must be integers 0..{classes - 1}")
    return data[:, :d].astype(np.float32), y


def train_val_split(X, y, val_size, shuffle=True, stratify=False):
    """Split into (X_train, y_train, X_val, y_val).

    val_size: a fraction in (0, 1) (rounded to the nearest count) or a number
    of samples. shuffle draws the order from the tinynet generator (repeatable
    under manual_seed); with shuffle=False the last samples are the validation
    set, as in Keras' validation_split, and both parts keep their order.
    stratify=True gives every class (value of y) the same share in both parts,
    up to rounding (largest remainder).
    """
    X, y = np.asarray(X), np.asarray(y)
    n = len(y)
    if len(X) != n:
        raise ValueError(f"train_val_split: X and y must have the same length, got {len(X)} and {n}")
    if isinstance(val_size, (int, np.integer)) and not isinstance(val_size, bool):
        n_val = int(val_size)
    elif isinstance(val_size, (float, np.floating)) and 0 < val_size < 1:
        n_val = round(val_size * n)
    else:
        raise ValueError(f"train_val_split: val_size must be a fraction in (0, 1) or a count, got {val_size!r}")
    if not 0 < n_val < n:
        raise ValueError(f"train_val_split: val_size={val_size!r} gives {n_val} of {n} samples for "
                         "validation; both parts need at least one")
    order = _rng.permutation(n) if shuffle else np.arange(n)
    group, counts = (np.unique(y, axis=0, return_inverse=True, return_counts=True)[1:] if stratify
                     else (np.zeros(n, np.int64), np.array([n])))
    quota = counts * (n_val / n)
    k = np.floor(quota).astype(np.int64)                  # validation samples per class
    k[np.argsort(k - quota, kind="stable")[:n_val - k.sum()]] += 1
    by_class = order[np.argsort(group.ravel()[order], kind="stable")]   # each class in `order`
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    in_val = np.zeros(n, bool)
    in_val[by_class[rank >= np.repeat(counts - k, counts)]] = True      # the last k of each class
    train, val = order[~in_val[order]], order[in_val[order]]
    return X[train], y[train], X[val], y[val]


# ════════════════════════════════════════════════════════════════════════════
# Plots
# ════════════════════════════════════════════════════════════════════════════

def _pyplot():
    """matplotlib.pyplot, on the Agg backend when there is no display and no backend was chosen."""
    import matplotlib
    if not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Write `fig` to `path` as a PNG (atomically) and close it."""
    plt = _pyplot()
    try:
        fig.tight_layout()
        with _atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def _as_dict(history):
    return history.history if isinstance(history, History) else history


def _epoch_panel(ax, key, title):
    """Label a per-epoch panel: integer epochs on x, `key` on y, a light grid."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=key, title=f"{title} - {key}" if title else key)
    ax.grid(alpha=0.3)


def confusion_matrix(y_true, y_pred, num_classes=None):
    """counts[i, j] = number of samples of class i predicted as j (rows: true, columns: predicted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"confusion_matrix: expected two 1-D label arrays of the same length, "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    both = np.concatenate([y_true, y_pred])
    n = num_classes or int(both.max(initial=-1) + 1)
    if both.size and (both.min() < 0 or both.max() >= n):
        raise ValueError(f"confusion_matrix: labels must be integers in [0, {n}), got {both.min()}..{both.max()}")
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def pca(X, n_components=2):
    """Project the rows of X (N, ...) on their first principal components -> (N, n_components)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    X = X - X.mean(axis=0)
    _, _, Vt = np.linalg.svd(X, full_matrices=False)
    return X @ Vt[:n_components].T


def plot_history(history, path, keys=("loss", "accuracy"), title=None):
    """One panel per key: the training curve and, when recorded, the validation curve (val_<key>)."""
    plt, h = _pyplot(), _as_dict(history)
    keys = [k for k in keys if k in h]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for k, label in ((key, "train"), ("val_" + key, "validation")):
            if k in h:
                ax.plot(np.arange(1, len(h[k]) + 1), h[k], marker="o", ms=3, label=label)
        _epoch_panel(ax, key, title)
        ax.legend()
    _save(fig, path)


def plot_curves(histories, path, keys=("val_accuracy", "val_loss"), title=None):
    """Compare runs: one panel per key, one line per run. histories: {label: History or dict}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys) + 2, 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, history in histories.items():
            values = _as_dict(history).get(key, [])
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=label)
        _epoch_panel(ax, key, title)
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path)


def plot_confusion_matrix(y_true, y_pred, path, class_names=None):
    """Confusion matrix (rows: true class, columns: predicted), counts written in each cell."""
    plt = _pyplot()
    names = list(class_names) if class_names is not None else None
    cm = confusion_matrix(y_true, y_pred, len(names) if names else None)
    n = len(cm)
    names = names or [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * n, 1 + 0.5 * n))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    for (i, j), c in np.ndenumerate(cm):
        ax.text(j, i, str(c), ha="center", va="center", fontsize=8,
                color="white" if c > cm.max() / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true",
           title=f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})")
    _save(fig, path)


def plot_predictions(X, y_true, y_pred, path, class_names=None, n=32):
    """A grid of n images (NCHW, values in [0, 1]) titled "pred (true)": up to n/2 misclassified
    ones first, framed and titled in red, then correctly classified ones."""
    plt = _pyplot()
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    wrong, right = np.flatnonzero(y_true != y_pred), np.flatnonzero(y_true == y_pred)
    idx = np.concatenate([wrong[:n // 2], right])[:n]
    names = class_names if class_names is not None else range(max(y_true.max(), y_pred.max()) + 1)
    cols = min(8, len(idx))
    rows = -(-len(idx) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        img = np.asarray(X[i]).transpose(1, 2, 0)      # (C, H, W) -> (H, W, C)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
        bad = y_true[i] != y_pred[i]
        ax.set_title(f"{names[y_pred[i]]} ({names[y_true[i]]})", fontsize=8, color="red" if bad else "black")
        if bad:
            ax.axis("on")
            ax.set(xticks=[], yticks=[])
            for s in ax.spines.values():
                s.set(color="red", linewidth=2)
    fig.suptitle(f"predicted (true); {len(wrong)} of {len(y_true)} misclassified, in red")
    _save(fig, path)


def plot_embeddings(embeddings, y, path, class_names=None):
    """Side-by-side 2-D scatter plots coloured by class. embeddings: {title: (N, 2) array}."""
    plt = _pyplot()
    y = np.asarray(y)
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5.5 * len(embeddings), 5), squeeze=False)
    for ax, (title, Z) in zip(axes[0], embeddings.items()):
        sc = ax.scatter(Z[:, 0], Z[:, 1], c=y, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        ax.set(title=title, xticks=[], yticks=[])
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(y.max()) + 1)]
    fig.legend(sc.legend_elements()[0], [names[c] for c in np.unique(y)], loc="center right", title="class")
    fig.subplots_adjust(right=0.9)
    _save(fig, path)


# -- Training-script helpers (shared by train_mnist.py, train_svhn.py, train_iris.py) --------

OPTIMIZER_CHOICES = ("sgd", "momentum", "rmsprop", "adam", "adamw", "lion")
SCHEDULER_CHOICES = ("none", "step", "exponential", "cosine", "warm-restarts", "onecycle")


def add_common_args(parser, epochs=10, batch_size=128, lr=1e-3, optimizer="adam", scheduler="none",
                    weight_decay=0.0):
    """Add the flags every training script takes, with the script's defaults; returns the parser."""
    name = os.path.splitext(os.path.basename(parser.prog))[0]
    parser.add_argument("--epochs", type=int, default=epochs, help="passes over the training set (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="minibatch size (%(default)s)")
    parser.add_argument("--lr", type=float, default=lr, help="learning rate; max_lr for onecycle (%(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default=optimizer,
                        help="momentum is SGD with momentum 0.9 (%(default)s)")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, default=scheduler,
                        help="learning-rate schedule (%(default)s)")
    parser.add_argument("--weight-decay", type=float, default=weight_decay,
                        help="L2 penalty; decoupled for adamw and lion (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="tinynet.manual_seed (%(default)s)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $TINYNET_DATA, else data/)")
    parser.add_argument("--out", default=os.path.join("runs", name), help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small subset and 1 epoch (smoke test)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG figures")
    return parser


def parse_args(parser):
    """Parse a script's flags and start the run: --quick means 1 epoch; seed the tinynet
    generator with --seed; print the configuration; create the --out folder."""
    args = parser.parse_args()
    if args.quick:
        args.epochs = 1
    manual_seed(args.seed)
    print("config:", vars(args))
    os.makedirs(args.out, exist_ok=True)
    return args


def make_optimizer(name, params, lr, weight_decay=0.0):
    """An optimizer from its OPTIMIZER_CHOICES name ("momentum": SGD with momentum 0.9)."""
    if name not in OPTIMIZER_CHOICES:
        raise ValueError(f"make_optimizer: expected one of {OPTIMIZER_CHOICES}, got {name!r}")
    if name in ("sgd", "momentum"):
        return SGD(params, lr, momentum=0.9 if name == "momentum" else 0, weight_decay=weight_decay)
    cls = {"rmsprop": RMSprop, "adam": Adam, "adamw": AdamW, "lion": Lion}[name]
    return cls(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(name, optimizer, epochs, steps_per_epoch):
    """A scheduler from its SCHEDULER_CHOICES name (None for "none"), for a run of `epochs` epochs:
    step: x0.1 at 1/2 and 3/4 of the run; exponential: gamma 0.8; cosine: T_max = epochs;
    warm-restarts: T_0 = epochs // 3; onecycle: max_lr = optimizer.lr, stepped per batch."""
    if name not in SCHEDULER_CHOICES:
        raise ValueError(f"make_scheduler: expected one of {SCHEDULER_CHOICES}, got {name!r}")
    if name == "none":
        return None
    if name == "step":
        return MultiStepLR(optimizer, [max(1, epochs // 2), max(1, epochs * 3 // 4)], gamma=0.1)
    if name == "exponential":
        return ExponentialLR(optimizer, gamma=0.8)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "warm-restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=max(1, epochs // 3))
    return OneCycleLR(optimizer, max_lr=optimizer.lr, total_steps=epochs * steps_per_epoch)


def fit_with_args(model, args, X, y, validation_data, loss=None):
    """Compile `model` with args.optimizer/lr/weight_decay/scheduler and `loss` (default
    CrossEntropyLoss), fit it with a tqdm bar and a line per epoch; -> History."""
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
    steps = -(-len(X) // args.batch_size)
    model.compile(optimizer, loss or CrossEntropyLoss(),
                  scheduler=make_scheduler(args.scheduler, optimizer, args.epochs, steps))
    return model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=validation_data, verbose=1)


def save_run(model, history, X_test, y_test, out, plots=True, class_names=None, images=True):
    """Save model.npz and history.csv under `out` and, with `plots`, loss.png, accuracy.png,
    confusion.png and (for images) predictions.png of the test set; -> test accuracy."""
    os.makedirs(out, exist_ok=True)
    y_pred = model.predict(X_test).argmax(axis=1)
    model.save(os.path.join(out, "model.npz"))
    history.to_csv(os.path.join(out, "history.csv"))
    if plots:
        plot_history(history, os.path.join(out, "loss.png"), keys=("loss",))
        plot_history(history, os.path.join(out, "accuracy.png"), keys=("accuracy",))
        plot_confusion_matrix(y_test, y_pred, os.path.join(out, "confusion.png"), class_names)
        if images:
            plot_predictions(X_test, y_test, y_pred, os.path.join(out, "predictions.png"), class_names)
    return float(np.mean(y_pred == y_test))


def print_table(rows, path=None):
    """Print rows (a list of dicts with the same keys) as an aligned table; with `path`, also
    write them as CSV (atomically)."""
    keys = list(rows[0])
    cells = [keys] + [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    for c in cells:
        print("  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
    if path:
        with _atomic_open(path, "w") as f:
            f.write("\n".join(",".join(c) for c in [keys] + [[repr(r[k]) if isinstance(r[k], float)
                                                              else str(r[k]) for k in keys] for r in rows]) + "\n")

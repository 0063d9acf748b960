"""tinynet: a NumPy-only neural-network library with hand-written backward passes.

Every layer, loss, optimizer and scheduler computes what its PyTorch namesake
computes (same names, arguments and defaults); `test_tinynet.py` proves it in
float64. Images are NCHW. Parameters are float32 by default; a layer computes
in the dtype of its input and parameters, and `model.astype(np.float64)`
converts everything in place.

Sections, in order: parameters and base layer · layers (ending with sequences: embedding
and recurrent layers) · attention and transformers · losses · optimizers · schedulers ·
Model, Sequential, History and callbacks · saving, loading and PyTorch interop · gradient check ·
data · plots.
A layer copies out alone with `Layer` (the core: 44 lines), `Parameter`, `_rng`
and the few helpers it names; saving, loading, astype and repr are LayerState's,
Layer's base class defined just before it, which a copy leaves out (`class Layer:`).
Only numpy (and the standard library) is imported at module level; tqdm, matplotlib,
scipy, scikit-learn, threadpoolctl and torch are imported inside the functions that need them.
"""
import contextlib
import copy
import gzip
import hashlib
import http.client
import inspect
import json
import math
import os
import sys
import time
import urllib.request
import zipfile
import zlib
from bisect import bisect_right

import numpy as np

__version__ = "0.3.0"


# ════════════════════════════════════════════════════════════════════════════
# Parameters and base layer
# ════════════════════════════════════════════════════════════════════════════

_rng = np.random.Generator(np.random.PCG64())   # the one generator: init, dropout, shuffling


def manual_seed(seed):
    """Reseed the generator used for initialisation, dropout masks and shuffling (in place)."""
    _rng.bit_generator.state = np.random.PCG64(seed).state


class Parameter:
    """A learnable array `.data` and its gradient `.grad` (same shape; backward adds into it).
    Integer and boolean data become float32; float data keeps its dtype."""

    def __init__(self, data):
        data = np.asarray(data)
        self.data = data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float32)
        self.grad = np.zeros_like(self.data)

    def zero_grad(self):
        self.grad[...] = 0


def _is_parameter(v):                 # the one definition: anything with .data and .grad
    return hasattr(v, "data") and hasattr(v, "grad")


class LayerState:
    """Layer's saving part, its base class: named_parameters, named_buffers, state_dict,
    load_state_dict, astype, config and repr. It uses Layer's parameters() and _sublayers().

    A layer's state is its parameters, then its `buffers` (names of non-learnable arrays, e.g.
    BatchNorm's running statistics), with torch's key names. Its config is its class and
    constructor arguments, read back from the attributes of the same names (as torch's layers
    keep them; a Parameter or None stands for the `bias` flag); a layer of your own that keeps
    them otherwise defines config().
    """
    buffers = ()

    def named_parameters(self):
        """[(name, parameter)] in torch's order: own Parameters in attribute order, then each
        sublayer's under "sublayer.name" ("blocks.0.weight"); a Parameter reached twice (a tied
        weight) is listed once, under its first name (torch's remove_duplicate)."""
        own = [(k, v) for k, v in vars(self).items() if _is_parameter(v)]
        return _once(own + [(f"{name}.{k}", p) for name, layer in self._sublayers()
                            for k, p in layer.named_parameters()])

    def named_buffers(self):
        """[(name, array)]: own buffers, then each sublayer's, as named_parameters."""
        own = [(k, getattr(self, k)) for k in self.buffers]
        return _once(own + [(f"{name}.{k}", b) for name, layer in self._sublayers()
                            for k, b in layer.named_buffers()])

    def _state_arrays(self):
        """{name: the live array} in torch's state_dict order: own parameters' data, own buffers,
        then each sublayer's under "sublayer.name". A tied Parameter keeps each of its names
        (torch's state_dict too): load_state_dict fills it from each."""
        sublayers = list(self._sublayers())
        inside = tuple(f"{name}." for name, _ in sublayers)      # keys of a sublayer's parameters
        arrays = {k: p.data for k, p in self.named_parameters() if not k.startswith(inside)}
        arrays |= {k: getattr(self, k) for k in self.buffers}
        for name, layer in sublayers:
            arrays |= {f"{name}.{k}": v for k, v in layer._state_arrays().items()}
        return arrays

    def state_dict(self):
        """{name: copy of the array}, parameters then buffers, with torch's key names."""
        return {k: np.array(v) for k, v in self._state_arrays().items()}

    def load_state_dict(self, state):
        """Copy arrays (NumPy or torch tensors) into the parameters and buffers, in place.

        Keys and shapes must match exactly (torch's `num_batches_tracked` is ignored);
        values are cast to the layer's dtype. Nothing is copied unless everything matches.
        """
        name, own = type(self).__name__, self._state_arrays()
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(f"{name}.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        pairs = []                                   # check every shape before copying anything
        for k, v in state.items():
            v = np.asarray(_plain(v))                   # torch tensors become arrays
            if v.shape != own[k].shape:
                raise ValueError(f"{name}.load_state_dict: {k!r} has shape {v.shape}, "
                                 f"expected {own[k].shape}")
            pairs.append((own[k], v))
        for target, v in pairs:
            target[...] = v
        return self

    def astype(self, dtype):
        """Convert every parameter (and its grad) and buffer to `dtype`, in place, sublayers too
        (an array already of that dtype is kept: a tied Parameter reached again is left alone)."""
        for p in self.parameters():
            p.data, p.grad = p.data.astype(dtype, copy=False), p.grad.astype(dtype, copy=False)
        for k in self.buffers:
            setattr(self, k, getattr(self, k).astype(dtype, copy=False))
        for _, layer in self._sublayers():
            layer.astype(dtype)
        return self

    def config(self):
        """{"class": name, "kwargs": constructor arguments}: enough to rebuild the layer."""
        kwargs = {}
        for arg, spec in _init_args(type(self)):
            v = getattr(self, arg, spec.default)
            if v is spec.empty:
                raise ValueError(f"{type(self).__name__}: keep the constructor argument {arg!r} "
                                 f"as self.{arg} "
                                 "(or define config()) so that the layer can be saved")
            if _is_parameter(v) or (v is None and isinstance(spec.default, bool)):
                v = v is not None                                     # the bias flag
            kwargs[arg] = (v.tolist() if isinstance(v, np.ndarray)
                           else list(v) if isinstance(v, tuple) else v)
        return {"class": type(self).__name__, "kwargs": kwargs}

    def __repr__(self):
        kwargs = self.config()["kwargs"]
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


class Layer(LayerState):
    """Base class: forward(x) -> y; backward(grad_y) -> grad_x, adding into parameters' .grad.
    Saving, loading, astype, repr: LayerState's (above); a copy may write `class Layer:` alone."""
    training = True
    needs_input_grad = True   # False lets backward skip grad_x (the first layer of a model)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _saved(self):                  # forward's self._cache; a clear error if it has not run
        if getattr(self, "_cache", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    def _sublayers(self):
        """(name, layer) pairs, torch's child modules: the public attributes that are Layers, and
        the Layers in public lists or tuples ("blocks.0", as torch's ModuleList); never "_name"."""
        for name, v in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(v, Layer):
                yield name, v
            elif isinstance(v, (list, tuple)):
                for i, item in enumerate(v):
                    if isinstance(item, Layer):
                        yield f"{name}.{i}", item

    def parameters(self):              # own (weight, bias), then each sublayer's; a tied one once
        every = [v for v in vars(self).values() if _is_parameter(v)]
        every += [p for _, layer in self._sublayers() for p in layer.parameters()]
        return list({id(p): p for p in every}.values())

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode=True):
        self.training = mode
        for _, layer in self._sublayers():
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)


# ════════════════════════════════════════════════════════════════════════════
# Layers
# ════════════════════════════════════════════════════════════════════════════

def _check_input(layer, x, ndim, size=None, what="features"):
    """x as an array; a ValueError naming the layer unless x.ndim == ndim and x.shape[1] == size."""
    x = np.asarray(x)
    if x.ndim != ndim or (size is not None and x.shape[1] != size):
        want = f"{ndim}-D input" + (f" with {size} {what} on axis 1" if size is not None else "")
        raise ValueError(f"{type(layer).__name__}: expected {want}, got shape {x.shape}")
    return x


class Linear(Layer):
    """y = x W^T + b.   x: (*, in_features) -> y: (*, out_features); W: (out, in), b: (out,).
    backward, summed over the leading axes (*): dW = dy^T x,  db = sum dy,  dx = dy W.
    W and b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)), as torch."""

    def __init__(self, in_features, out_features, bias=True):
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_rng.uniform(-bound, bound,
                                             (out_features, in_features)).astype(np.float32))
        self.bias = (Parameter(_rng.uniform(-bound, bound, out_features).astype(np.float32))
                     if bias else None)

    def forward(self, x):
        self._cache = x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input (*, {self.in_features}) with "
                             f"{self.in_features} features on the last axis, got shape {x.shape}")
        y = x.reshape(-1, self.in_features) @ self.weight.data.T       # (n, out), n = prod(*)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad):                         # grad: (*, out_features)
        x, grad = self._saved(), grad.reshape(-1, self.out_features)
        self.weight.grad += grad.T @ x.reshape(-1, self.in_features)
        if self.bias is not None:
            self.bias.grad += grad.sum(axis=0)
        return (grad @ self.weight.data).reshape(x.shape) if self.needs_input_grad else None


class ReLU(Layer):
    """y = max(x, 0);  dx = dy where x > 0, else 0 (0 at x = 0, as torch)."""

    def forward(self, x):
        self._cache = x > 0
        y = np.zeros_like(x)  # max with a zeros array: NumPy 2 runs it 2x faster than max(x, 0)
        return np.maximum(x, y, out=y)

    def backward(self, grad):
        return grad * self._saved()


class LeakyReLU(Layer):
    """y = x if x > 0 else negative_slope * x;  dx = dy or negative_slope * dy likewise."""

    def __init__(self, negative_slope=0.01):
        self.negative_slope = negative_slope

    def forward(self, x):
        self._cache = x > 0
        return np.where(self._cache, x, x * self.negative_slope)

    def backward(self, grad):
        return np.where(self._saved(), grad, grad * self.negative_slope)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)), from exp(-|x|) so that no exp overflows;  dx = dy * y * (1 - y)."""

    def forward(self, x):
        e = np.exp(-np.abs(x))
        self._cache = y = np.where(x >= 0, 1, e) / (1 + e)
        return y

    def backward(self, grad):
        y = self._saved()
        return grad * y * (1 - y)


class Tanh(Layer):
    """y = tanh(x);  dx = dy * (1 - y^2)."""

    def forward(self, x):
        self._cache = y = np.tanh(x)
        return y

    def backward(self, grad):
        return grad * (1 - self._saved() ** 2)


def _log_softmax(x, dim):
    """log(softmax(x)) = z - log(sum(exp(z))) with z = x - max(x): no overflow, no log(0)."""
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


class Softmax(Layer):
    """y = exp(x) / sum(exp(x)) along `dim`;  dx = y * (dy - sum(dy * y, dim))."""

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x):
        self._cache = y = np.exp(_log_softmax(x, self.dim))
        return y

    def backward(self, grad):
        y = self._saved()
        return y * (grad - (grad * y).sum(axis=self.dim, keepdims=True))


class LogSoftmax(Layer):
    """y = x - logsumexp(x, dim);  dx = dy - softmax(x) * sum(dy, dim)."""

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x):
        y = _log_softmax(x, self.dim)
        self._cache = np.exp(y)
        return y

    def backward(self, grad):
        return grad - self._saved() * grad.sum(axis=self.dim, keepdims=True)


class Flatten(Layer):
    """Axes start_dim..end_dim merged into one, as torch.nn.Flatten: by default (N, d1, d2, ...)
    -> (N, d1 * d2 * ...); Flatten(1, 2) makes MNIST's (N, 1, 28, 28) a sequence (N, 28, 28).
    backward reshapes back. The gradient is stored like x (np.empty_like keeps x's memory order),
    so that the layers before get it in their own order (a Conv2d's outputs are batch-innermost)."""

    def __init__(self, start_dim=1, end_dim=-1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        self._cache, n = x, x.ndim
        if not (-n <= self.start_dim < n and -n <= self.end_dim < n
                and self.start_dim % n <= self.end_dim % n):
            raise ValueError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not "
                             f"fit an input of shape {x.shape} (or start_dim comes after end_dim)")
        start, end = self.start_dim % n, self.end_dim % n
        return x.reshape(x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])

    def backward(self, grad):
        dx = np.empty_like(self._saved())
        dx[...] = grad.reshape(dx.shape)
        return dx


class Permute(Layer):
    """y = x.transpose(dims): the axes of x reordered, batch included, as torch's
    x.permute(*dims): Permute(0, 2, 1) turns a language model's logits (N, T, V) into
    (N, V, T), the classes on axis 1 as CrossEntropyLoss takes them. Negative dims count
    from the end. backward: dx = dy.transpose(argsort(dims)), the inverse reordering."""

    def __init__(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])                          # Permute((0, 2, 1)), as x.permute
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
            raise TypeError(f"Permute: expected integer dims, got {dims}")
        self.dims = tuple(int(d) for d in dims)            # NumPy integers too: saved as JSON

    def forward(self, x):
        x = np.asarray(x)
        n = x.ndim
        if sorted(d % n if -n <= d < n else d for d in self.dims) != list(range(n)):
            raise ValueError(f"Permute: dims {self.dims} are not a permutation of the {n} axes "
                             f"of an input of shape {x.shape}")
        self._cache = dims = tuple(d % n for d in self.dims)
        return x.transpose(dims)

    def backward(self, grad):
        return grad.transpose(np.argsort(self._saved()))

    def config(self):                          # the dims are positional: Permute(0, 2, 1)
        return {"class": "Permute", "args": list(self.dims), "kwargs": {}}

    def __repr__(self):
        return f"Permute({', '.join(map(str, self.dims))})"


class Dropout(Layer):
    """Inverted dropout. Training: y = x * m / (1 - p) with m ~ Bernoulli(1 - p) per element;
    dx = dy * m / (1 - p). Eval (or p = 0): y = x, dx = dy."""

    def __init__(self, p=0.5):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            self._cache = np.ones((), x.dtype)   # no mask: dx = dy
            return x
        keep = _rng.random(x.shape, dtype=np.float32) >= self.p
        self._cache = keep.astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._cache

    def backward(self, grad):
        return grad * self._saved()


def _per_channel(v, x):
    """(C,) -> (C, 1, ...) that broadcasts against x (N, C, ...) along its channel axis 1."""
    return v.reshape((-1,) + (1,) * (x.ndim - 2))


class Normalize(Layer):
    """y = (x - mean) / std per channel (axis 1), as torchvision's transforms.Normalize;
    dx = dy / std.

    A fixed standardisation kept with the model: mean and std (C,) are buffers, saved and
    loaded with the weights, so evaluation uses the training set's statistics.
    """
    buffers = ("mean", "std")

    def __init__(self, mean, std):
        self.mean, self.std = np.array(mean, np.float32).ravel(), np.array(std, np.float32).ravel()
        if self.mean.shape != self.std.shape or not (self.std > 0).all():
            raise ValueError(f"Normalize: expected mean and std of the same length, std > 0, "
                             f"got {self.mean.shape} and {self.std.shape} "
                             f"(min std {self.std.min(initial=0)})")

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize: expected input (N, {len(self.mean)}, ...), "
                             f"got shape {x.shape}")
        self._cache = x.ndim
        return (x - _per_channel(self.mean, x)) / _per_channel(self.std, x)

    def backward(self, grad):
        self._saved()
        return grad / _per_channel(self.std, grad)


def _pair(value, name, low=1):
    """An int or an (h, w) pair (tuple or list, as JSON gives it back) -> (h, w) of ints >= low."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(type(v) is bool or not isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return tuple(int(v) for v in pair)


def _out_size(layer, x, kernel, stride, padding, channels=None):
    """(OH, OW) = ((H + 2 pH - kH) // sH + 1, ...) as torch, for x (N, C, H, W); a ValueError naming
    the layer unless x is 4-D (with `channels` channels) and the kernel fits in the padded input."""
    if x.ndim != 4 or channels not in (None, x.shape[1]):
        with_c = f" with {channels} channels on axis 1" if channels else ""
        raise ValueError(f"{type(layer).__name__}: expected 4-D input{with_c}, got shape {x.shape}")
    hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    if kernel[0] > hp or kernel[1] > wp:
        raise ValueError(f"{type(layer).__name__}: kernel {kernel} is larger than the padded input "
                         f"({hp}, {wp}) (input shape {x.shape}, padding {padding})")
    return (hp - kernel[0]) // stride[0] + 1, (wp - kernel[1]) // stride[1] + 1


# ── Convolution ─────────────────────────────────────────────────────────────

def _inside(offset, pad, stride, size, out):
    """The output positions p in [p0, p1) whose input position p * stride + offset - pad lies in
    0..size-1, at kernel offset `offset`; the windows at the other p read zero padding there."""
    p0 = max(0, -((offset - pad) // stride))               # ceil((pad - offset) / stride)
    p1 = min(out, (size - 1 - offset + pad) // stride + 1)
    return p0, max(p0, p1)


def _col2im(dcols, shape, kernel, stride, padding, out_size):
    """im2col's adjoint: dx[c, p sH + i - pH, q sW + j - pW, n] = sum of dcols[c, i, j, p, q, n]
    over the kernel offsets (i, j) and windows (p, q) that reach that pixel: dcols (C kH kW,
    OH OW N) -> dx (C, H, W, N) = shape, kH kW slice adds. What fell on the padding is dropped,
    so dx needs no padded copy (each add is clipped to the rows and columns inside x)."""
    (c, h, w, n), (kh, kw), (sh, sw), (ph, pw) = shape, kernel, stride, padding
    oh, ow = out_size
    dcols = dcols.reshape(c, kh, kw, oh, ow, n)
    dx = np.zeros(shape, dcols.dtype)
    for i, j in np.ndindex(kh, kw):
        (p0, p1), (q0, q1) = _inside(i, ph, sh, h, oh), _inside(j, pw, sw, w, ow)
        dx[:, p0 * sh + i - ph:p1 * sh + i - ph:sh,
           q0 * sw + j - pw:q1 * sw + j - pw:sw] += dcols[:, i, j, p0:p1, q0:q1]
    return dx


class Conv2d(Layer):
    """2-D cross-correlation, as torch.nn.Conv2d (zero padding, no dilation or groups).

    x (N, C, H, W) -> y (N, O, OH, OW), OH = (H + 2 pH - kH) // sH + 1; weight W (O, C, kH, kW).
    With cols (C kH kW, OH OW N) the windows of the padded x, one window per column:
      forward   y  = W · cols + b               (O, C kH kW) · (C kH kW, OH OW N)
      backward  dW = dY · colsᵀ,  db = Σ dY,  dX = col2im(Wᵀ · dY)
    col2im adds each row (c, i, j) of Wᵀ · dY back at kernel offset (i, j): kH kW slice adds.
    weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C kH kW.

    Speed trick, batch innermost: inside the layer images are stored (C, H, W, N), so that
    each row of cols is a few long contiguous runs of OW N values: the im2col copy and the
    col2im adds stream through memory, and each product is one large GEMM. y and dX are
    returned as (N, C, H, W) views of that memory, not copied back: NumPy's element-wise
    operations keep the memory order of their input, so the ReLU, pooling and BatchNorm
    after a Conv2d work on the same long runs, and hand the next Conv2d its layout.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "Conv2d: kernel_size")
        self.stride = _pair(stride, "Conv2d: stride")
        self.padding = _pair(padding, "Conv2d: padding", low=0)
        bound = 1 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        shape = (out_channels, in_channels) + self.kernel_size
        self.weight = Parameter(_rng.uniform(-bound, bound, shape).astype(np.float32))
        self.bias = (Parameter(_rng.uniform(-bound, bound, out_channels).astype(np.float32))
                     if bias else None)

    def forward(self, x):
        x = np.asarray(x)
        oh, ow = _out_size(self, x, self.kernel_size, self.stride, self.padding, self.in_channels)
        (n, c, _, _), (kh, kw), (sh, sw), (ph, pw) = (x.shape, self.kernel_size, self.stride,
                                                      self.padding)
        xp = x.transpose(1, 2, 3, 0)             # (C, H, W, N), padded, C-ordered: batch innermost
        xp = (np.pad(xp, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw
              else np.ascontiguousarray(xp))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
        cols = np.ascontiguousarray(win.transpose(0, 4, 5, 1, 2, 3)).reshape(c * kh * kw, -1)
        self._cache = cols, x.shape
        y = (self.weight.data.reshape(self.out_channels, -1) @ cols).reshape(-1, oh, ow, n)
        if self.bias is not None:
            y += self.bias.data[:, None, None, None]
        return y.transpose(3, 0, 1, 2)                                # (N, O, OH, OW), a view

    def backward(self, grad):                                        # grad: (N, O, OH, OW)
        cols, (n, c, h, w) = self._saved()
        _, o, oh, ow = grad.shape
        g = np.ascontiguousarray(grad.transpose(1, 2, 3, 0)).reshape(o, -1)   # (O, OH OW N)
        self.weight.grad += (cols @ g.T).T.reshape(self.weight.data.shape)  # faster than g @ cols.T
        if self.bias is not None:
            self.bias.grad += g.sum(axis=1)
        if not self.needs_input_grad:
            return None
        dcols = self.weight.data.reshape(o, -1).T @ g                 # (C kH kW, OH OW N)
        dx = _col2im(dcols, (c, h, w, n), self.kernel_size, self.stride, self.padding, (oh, ow))
        return dx.transpose(3, 0, 1, 2)                              # (N, C, H, W), a view


# ── Pooling ─────────────────────────────────────────────────────────────────

class _Pool2d(Layer):
    """x (N, C, H, W) -> y (N, C, OH, OW), one value per kH x kW window (MaxPool2d, AvgPool2d);
    OH = (H + 2 pH - kH) // sH + 1, stride = kernel_size by default. The subclass reduces the
    kH kW window offsets with _pool(views) -> (y, state); backward adds back, at each offset k,
    _window_grad(grad, state, k): array operations per offset, none per window or pixel.
    When stride = kernel_size (the default) the windows do not overlap, and backward writes each
    offset's gradient straight into its place (out=) instead of adding a temporary."""
    pad_value = 0.0

    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = kernel = _pair(kernel_size, f"{name}: kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, f"{name}: stride")
        self.padding = pad = _pair(padding, f"{name}: padding", low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {pad} must be at most half the kernel size {kernel}")

    def _offsets(self, x, oh, ow):     # [x at offset (i, j) of every window: a view (N, C, OH, OW)]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return [x[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] for i, j in np.ndindex(kh, kw)]

    def forward(self, x):
        x = np.asarray(x)
        oh, ow = _out_size(self, x, self.kernel_size, self.stride, self.padding)
        (n, c, h, w), (ph, pw) = x.shape, self.padding
        xp = x
        if ph or pw:                                   # full_like keeps x's memory order
            xp = np.full_like(x, self.pad_value, shape=(n, c, h + 2 * ph, w + 2 * pw))
            xp[:, :, ph:ph + h, pw:pw + w] = x
        y, state = self._pool(self._offsets(xp, oh, ow))
        self._cache = xp, state
        return y

    def backward(self, grad):                                        # grad: (N, C, OH, OW)
        xp, state = self._saved()
        (ph, pw), (hp, wp), (oh, ow) = self.padding, xp.shape[2:], grad.shape[2:]
        dxp = np.zeros_like(xp)
        for k, view in enumerate(self._offsets(dxp, oh, ow)):
            if self.stride == self.kernel_size:        # windows tile xp: write, no temporary
                self._window_grad(grad, state, k, out=view)
            else:                                      # overlapping windows add up
                view += self._window_grad(grad, state, k)
        return dxp[:, :, ph:hp - ph, pw:wp - pw]


class MaxPool2d(_Pool2d):
    """y = max over each window (padding counts as -inf), as torch.nn.MaxPool2d; the gradient goes
    to torch's element of each window: the first maximum in row-major order, a NaN as maximum."""
    pad_value = -np.inf

    def _pool(self, views):              # -> y and argmax, the offset k of each window's maximum
        y = np.copy(views[0])                                       # np.copy keeps the memory order
        argmax = np.zeros_like(y, np.min_scalar_type(len(views) - 1))
        for k, v in enumerate(views[1:], 1):
            better = (v > y) | np.isnan(v)  # strictly greater: the first of tied maxima keeps it
            np.maximum(argmax, better * argmax.dtype.type(k), out=argmax)   # k only grows
            np.maximum(y, v, out=y)                    # a NaN propagates
        return y, argmax

    def _window_grad(self, grad, argmax, k, out=None):
        return np.multiply(grad, argmax == k, out=out)


class AvgPool2d(_Pool2d):
    """y = mean over each window, padding zeros included (torch's count_include_pad=True)."""

    def _pool(self, views):
        return sum(views) / len(views), len(views)

    def _window_grad(self, grad, count, k, out=None):
        return np.divide(grad, count, out=out)


# ── Batch normalisation ─────────────────────────────────────────────────────

class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1, as torch.nn.BatchNorm1d/2d.
    training: y = (x - mean) / sqrt(var + eps) * weight + bias with the batch mean and
    biased variance; running_mean <- (1 - momentum) running_mean + momentum mean and
    running_var <- (1 - momentum) running_var + momentum var * n / (n - 1) (unbiased).
    eval: the same with running_mean and running_var. weight = 1, bias = 0 initially.
    backward (training), xhat = (x - mean) / sqrt(var + eps), n values per channel:
    dx = weight / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)).
    """
    buffers = ("running_mean", "running_var")   # subclasses set ndim and axes (einsum letters, "c")

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)

    def _sum(self, a, b=None):
        """Σ a (or Σ a b) over every axis but the channel axis 1 -> (C,), in one pass (einsum).
        Σ a b of two arrays stored alike as channel rows (_rows) is one BLAS dot per row,
        (..., 1, M) @ (..., M, 1): up to 2x einsum's speed on a Conv2d's output."""
        if b is None:
            return np.einsum(f"{self.axes}->c", a)
        rows_a, rows_b = self._rows(a), self._rows(b)
        if rows_a is None or rows_b is None or rows_a.shape != rows_b.shape:
            return np.einsum(f"{self.axes},{self.axes}->c", a, b)
        dots = np.matmul(rows_a[..., None, :], rows_b[..., :, None])          # (..., C, 1, 1)
        return dots.reshape(-1, a.shape[1]).sum(axis=0)

    @staticmethod
    def _rows(x):
        """x (N, C, H, W) as rows of one channel's values each, without a copy: (C, H W N) when
        stored batch innermost (a Conv2d's output), (N, C, H W) when C-ordered; else None."""
        if x.ndim == 4 and x.transpose(1, 2, 3, 0).flags.c_contiguous:
            return x.transpose(1, 2, 3, 0).reshape(x.shape[1], -1)
        if x.ndim == 4 and x.flags.c_contiguous:
            return x.reshape(x.shape[0], x.shape[1], -1)
        return None

    def forward(self, x):
        x = _check_input(self, x, self.ndim, self.num_features)
        if self.training:
            n = x.size // self.num_features
            if n < 2:
                raise ValueError(f"{type(self).__name__}: training needs more than 1 value per "
                                 f"channel, got input shape {x.shape}")
            mean = self._sum(x) / n
            xc = x - _per_channel(mean.astype(x.dtype), x)
            var = self._sum(xc, xc) / n
            m, rm, rv = self.momentum, self.running_mean, self.running_var
            self.running_mean = (1 - m) * rm + m * mean.astype(rm.dtype)
            self.running_var = (1 - m) * rv + m * (var * (n / (n - 1))).astype(rv.dtype)
        else:
            xc, var = x - _per_channel(self.running_mean, x), self.running_var
        inv_std = 1 / np.sqrt(var + self.eps)
        self._cache = xc, inv_std                                    # xhat = xc * inv_std
        y = xc * _per_channel(self.weight.data * inv_std, x)
        y += _per_channel(self.bias.data, x)
        return y

    def backward(self, grad):
        xc, inv_std = self._saved()
        sum_g, sum_gxhat = self._sum(grad), self._sum(grad, xc) * inv_std
        self.weight.grad += sum_gxhat
        self.bias.grad += sum_g
        scale = self.weight.data * inv_std
        if not self.training:
            return grad * _per_channel(scale, grad)
        n = grad.size // self.num_features
        dx = xc * _per_channel(-inv_std * sum_gxhat / n, grad)
        dx += grad
        dx -= _per_channel(sum_g / n, grad)
        dx *= _per_channel(scale, grad)
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of x (N, C) per feature; see _BatchNorm for the formulas."""
    ndim, axes = 2, "nc"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of x (N, C, H, W) per channel over N, H and W; see _BatchNorm."""
    ndim, axes = 4, "nchw"


# ── Sequences: embedding, recurrent layers and cells ────────────────────────
# A recurrent layer loops over the time steps (the algorithm is sequential), never over samples
# or features: x W_ih^T for all steps is one matrix product before the loop, the loop does only
# h_{t-1} W_hh^T and the gates, and each weight gradient is one product after the loop.

class Embedding(Layer):
    """y = weight[x]: int indices x (...) -> (..., embedding_dim); weight ~ N(0, 1), as torch.
    backward: dweight[k] += dy summed where x == k, but the padding_idx row (zeros) gets none."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(_rng.standard_normal((num_embeddings, embedding_dim), np.float32))
        self.weight.data[[] if padding_idx is None else padding_idx] = 0    # the padding row: zeros
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings  # -1: last

    def forward(self, x):
        self._cache = x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer) or ((x < 0) | (x >= self.num_embeddings)).any():
            raise ValueError(f"Embedding: expected integer indices in [0, {self.num_embeddings}), "
                             f"got {x.dtype} {np.unique(x)}")        # (the values, summarised)
        return self.weight.data[x]

    def backward(self, grad):                       # indices have no gradient: returns None
        x = self._saved()
        np.add.at(self.weight.grad, x, grad * (x != self.padding_idx)[..., None])   # repeats add up


def _sigmoid(a):
    """1 / (1 + exp(-a)), computed as 0.5 + 0.5 tanh(a / 2): the same number, never overflowing."""
    return 0.5 + 0.5 * np.tanh(0.5 * a)


def _state(layer, what, value, shape, dtype):
    """A state array (h_0, c_0, ...) of `shape` and `dtype`: zeros if value is None, else value
    (cast), or a ValueError naming the layer unless value has that shape."""
    if value is None:
        return np.zeros(shape, dtype)
    if np.shape(value) != shape:
        raise ValueError(f"{type(layer).__name__}: expected {what} of shape {shape}, "
                         f"got {np.shape(value)}")
    return np.asarray(value, dtype)


# ── One time step: the formulas of RNN/RNNCell, LSTM/LSTMCell, GRU/GRUCell ──
# Each step class holds one step's forward and backward, as CS231n's rnn_step_forward/backward;
# the layers (_RNNBase: the loops over time, layers and directions) and the cells (_CellBase: one
# step per call) both use them. A step receives xw = x_t W_ih^T + b_ih already computed (the
# layer computes it for all t in one product) and returns h_t, c_t (None but in an LSTM) and a
# cache; its backward returns dxw = dL/dxw, dhw = dL/d(h_{t-1} W_hh^T + b_hh), dh_{t-1}, dc_{t-1}.

class _RNNStep:
    """Elman RNN step: h_t = tanh(xw + h_{t-1} W_hh^T + b_hh)   (N, H)   (relu if asked)
    backward, given dh = dL/dh_t:   da = dh (1 - h_t^2)   (relu: dh [h_t > 0])
        dxw = dhw = da;   dh_{t-1} = da W_hh.   An RNN has no c: None comes in and goes out."""
    gates = 1              # W_ih: (gates * H, F), W_hh: (gates * H, H); LSTM 4, GRU 3
    cell_state = False     # only an LSTM carries a c_t beside h_t

    def _check_nonlinearity(self, nonlinearity):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{type(self).__name__}: nonlinearity must be 'tanh' or 'relu', "
                             f"got {nonlinearity!r}")

    def _step_forward(self, xw, h_prev, c_prev, W_hh, b_hh):
        a = xw + h_prev @ W_hh.T + b_hh                                    # (N, H)
        h = np.tanh(a) if self.nonlinearity == "tanh" else np.maximum(a, 0)
        return h, None, h                                      # the cache: h_t

    def _step_backward(self, dh, dc, h, W_hh):
        da = dh * (1 - h * h) if self.nonlinearity == "tanh" else dh * (h > 0)   # (N, H)
        return da, da, da @ W_hh, None


class _LSTMStep:
    """LSTM step, in blocks of H columns in torch's order i, f, g, o:
        a = xw + h_{t-1} W_hh^T + b_hh                          (N, 4H)
        i = sigmoid(a_i);  f = sigmoid(a_f);  g = tanh(a_g);  o = sigmoid(a_o)     (N, H) each
        c_t = f c_{t-1} + i g;   h_t = o tanh(c_t)
    backward, given dh = dL/dh_t and dc = dL/dc_t (from the steps after t):
        dc_t = dc + dh o (1 - tanh(c_t)^2)        (h_t depends on c_t too)
        da = [dc_t g i (1 - i),  dc_t c_{t-1} f (1 - f),  dc_t i (1 - g^2),  dh tanh(c_t) o (1 - o)]
        dxw = dhw = da;   dh_{t-1} = da W_hh;   dc_{t-1} = dc_t f"""
    gates = 4
    cell_state = True

    def _step_forward(self, xw, h_prev, c_prev, W_hh, b_hh):
        H = self.hidden_size
        a = xw + h_prev @ W_hh.T + b_hh                                    # (N, 4H)
        i = _sigmoid(a[:, :H])                                             # (N, H)
        f = _sigmoid(a[:, H:2 * H])
        g = np.tanh(a[:, 2 * H:3 * H])
        o = _sigmoid(a[:, 3 * H:])
        c = f * c_prev + i * g
        tanh_c = np.tanh(c)
        h = o * tanh_c
        return h, c, ((i, f, g, o), c_prev, tanh_c)

    def _step_backward(self, dh, dc, cache, W_hh):
        gates, c_prev, tanh_c = cache
        i, f, g, o = gates
        dc = dc + dh * o * (1 - tanh_c * tanh_c)                           # (N, H)
        da_i = dc * g * i * (1 - i)
        da_f = dc * c_prev * f * (1 - f)
        da_g = dc * i * (1 - g * g)
        da_o = dh * tanh_c * o * (1 - o)
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)             # (N, 4H)
        return da, da, da @ W_hh, dc * f


class _GRUStep:
    """GRU step (torch's: r multiplies hw_n), in blocks r, z, n of H columns, with
    hw = h_{t-1} W_hh^T + b_hh (N, 3H):
        r = sigmoid(xw_r + hw_r);  z = sigmoid(xw_z + hw_z);  n = tanh(xw_n + r hw_n)   (N, H)
        h_t = (1 - z) n + z h_{t-1}
    backward, given dh = dL/dh_t:
        dn = dh (1 - z) (1 - n^2);   dz = dh (h_{t-1} - n) z (1 - z);   dr = dn hw_n r (1 - r)
        dxw = [dr, dz, dn];   dhw = [dr, dz, dn r];   dh_{t-1} = dh z + dhw W_hh"""
    gates = 3
    cell_state = False

    def _step_forward(self, xw, h_prev, c_prev, W_hh, b_hh):
        H = self.hidden_size
        hw = h_prev @ W_hh.T + b_hh                                        # (N, 3H)
        rz = _sigmoid(xw[:, :2 * H] + hw[:, :2 * H])                       # (N, 2H): r and z
        r = rz[:, :H]
        z = rz[:, H:]
        hw_n = hw[:, 2 * H:]                                               # (N, H)
        n = np.tanh(xw[:, 2 * H:] + r * hw_n)
        h = (1 - z) * n + z * h_prev
        return h, None, ((r, z, n), hw_n, h_prev)

    def _step_backward(self, dh, dc, cache, W_hh):
        gates, hw_n, h_prev = cache
        r, z, n = gates
        dn = dh * (1 - z) * (1 - n * n)                                    # (N, H)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * hw_n * r * (1 - r)
        dxw = np.concatenate([dr, dz, dn], axis=1)                         # (N, 3H)
        dhw = np.concatenate([dr, dz, dn * r], axis=1)
        return dxw, dhw, dh * z + dhw @ W_hh, None


# ── Recurrent layers: the loops over time steps, layers and directions ──────

class _RNNBase(Layer):
    """RNN, LSTM, GRU: the loops over layers, directions and time steps around one step's
    formulas (_RNNStep, _LSTMStep, _GRUStep, which the cells use too).
        x (T, N, F) (batch_first: (N, T, F)), hx = h_0 (an LSTM: (h_0, c_0)) (L * D, N, H) or None
        (zeros) -> y (T, N, D * H), the last layer's h_t;  .h_n (.c_n): the final states
    L = num_layers; D = 2 if bidirectional: the reverse direction reads t = T..1. Row l * D + d
    of the states is layer l's direction d. Layer l > 0 reads layer l - 1's output, dropped out
    in training. backward(dy, grad_h_n=None, grad_c_n=None) -> dx, and .grad_h0 (.grad_c0):
    dL/dh_0 (dL/dc_0), also when hx was None (the gradient at the zero state)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False):
        if not 0 <= dropout < 1:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        D = 1 + bidirectional
        G = self.gates * hidden_size
        bound = 1 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            shapes = {"weight_ih": (G, D * hidden_size if layer else input_size),
                      "weight_hh": (G, hidden_size), "bias_ih": (G,), "bias_hh": (G,)}
            for direction in range(D):                         # torch's order of keys
                for kind in list(shapes)[:4 if bias else 2]:
                    w = _rng.uniform(-bound, bound, shapes[kind]).astype(np.float32)
                    setattr(self, f"{kind}_l{layer}" + "_reverse" * direction, Parameter(w))

    def _params(self, layer, direction):
        """weight_ih, weight_hh, bias_ih, bias_hh (None without bias) of one layer, direction."""
        suffix = f"_l{layer}" + "_reverse" * direction
        return [getattr(self, kind + suffix, None)
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def forward(self, x, hx=None):
        if np.ndim(x) != 3 or np.shape(x)[2] != self.input_size or 0 in np.shape(x):
            axes = "N, T" if self.batch_first else "T, N"
            raise ValueError(f"{type(self).__name__}: expected shape ({axes}, {self.input_size}) "
                             f"with N, T > 0, got {np.shape(x)}")
        x = np.swapaxes(x, 0, 1) if self.batch_first else np.asarray(x)     # (T, N, F)
        D = 1 + self.bidirectional
        shape = (self.num_layers * D, x.shape[1], self.hidden_size)         # (L * D, N, H)
        if self.cell_state:                                                 # an LSTM
            hx = (None, None) if hx is None else hx
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError(f"{type(self).__name__}: expected hx = (h_0, c_0), each of shape "
                                 f"{shape}, got {type(hx).__name__} of shape {np.shape(hx)}")
            h_0, c_0 = hx
            c_0 = _state(self, "c_0", c_0, shape, x.dtype)
            self.c_n = np.empty_like(c_0)
        else:
            h_0, c_0 = hx, [None] * shape[0]
        h_0 = _state(self, "h_0", h_0, shape, x.dtype)
        self.h_n = np.empty_like(h_0)
        self._cache = []                                # per layer: its dropout mask, its runs
        for layer in range(self.num_layers):
            p = self.dropout if layer > 0 and self.training else 0
            mask = (_rng.random(x.shape) >= p) / x.dtype.type(1 - p) if p else 1
            x = x * mask
            outputs = []
            runs = []
            for direction in range(D):
                k = layer * D + direction
                x_run = x[::-1] if direction else x     # the reverse direction reads t = T..1
                hs, c_T, steps = self._run(x_run, h_0[k], c_0[k], self._params(layer, direction))
                self.h_n[k] = hs[-1]
                if self.cell_state:
                    self.c_n[k] = c_T
                outputs.append(hs[:0:-1] if direction else hs[1:])   # h_t in x's order (T, N, H)
                runs.append((x_run, hs, steps))
            self._cache.append((mask, runs))
            x = np.concatenate(outputs, axis=2)                            # (T, N, D * H)
        return x.swapaxes(0, 1) if self.batch_first else x

    def _run(self, x, h, c, params):
        """One layer in one direction: x (T, N, F), h_0, c_0 (N, H) -> h_0..h_T (T + 1, N, H), c_T,
        the steps' caches. x W_ih^T + b_ih for every t is one product before the loop."""
        weight_ih, weight_hh, bias_ih, bias_hh = params
        b_ih = 0 if bias_ih is None else bias_ih.data                      # (G,)
        b_hh = 0 if bias_hh is None else bias_hh.data
        T, N, F = x.shape
        xw = (x.reshape(T * N, F) @ weight_ih.data.T + b_ih).reshape(T, N, -1)   # (T, N, G)
        hs = np.empty((T + 1, N, self.hidden_size), xw.dtype)
        hs[0] = h
        steps = []
        for t in range(T):
            h, c, cache = self._step_forward(xw[t], h, c, weight_hh.data, b_hh)
            hs[t + 1] = h
            steps.append(cache)
        return hs, c, steps

    def backward(self, grad_out, grad_h_n=None, grad_c_n=None):
        """dL/dy, dL/dh_n, dL/dc_n (None: 0) -> dL/dx; sets .grad_h0 (.grad_c0)."""
        cache = self._saved()
        dy = grad_out.swapaxes(0, 1) if self.batch_first else grad_out     # (T, N, D * H)
        D = 1 + self.bidirectional
        H = self.hidden_size
        dh_n = _state(self, "grad_h_n", grad_h_n, self.h_n.shape, dy.dtype)   # (L * D, N, H)
        dc_n = [None] * len(dh_n)                            # an RNN or a GRU has no c
        if self.cell_state:
            dc_n = _state(self, "grad_c_n", grad_c_n, self.c_n.shape, dy.dtype)
            self.grad_c0 = np.empty_like(dc_n)
        elif grad_c_n is not None:
            raise ValueError(f"{type(self).__name__}: there is no c_n, so no grad_c_n")
        self.grad_h0 = np.empty_like(dh_n)
        for layer in reversed(range(self.num_layers)):
            mask, runs = cache[layer]
            need_dx = layer > 0 or self.needs_input_grad    # not for the first layer of a model
            dx = 0                                          # the directions' dx add up
            for direction in range(D):
                k = layer * D + direction
                dhs = dy[:, :, direction * H:(direction + 1) * H]          # (T, N, H)
                dhs = dhs[::-1] if direction else dhs       # in the order the run read x
                params = self._params(layer, direction)
                dx_run, self.grad_h0[k], dc_0 = self._run_backward(dhs, dh_n[k], dc_n[k],
                                                                   runs[direction], params, need_dx)
                if self.cell_state:
                    self.grad_c0[k] = dc_0
                if need_dx:
                    dx = dx + (dx_run[::-1] if direction else dx_run)      # (T, N, F)
            dy = dx * mask
        if not self.needs_input_grad:
            return None
        return dy.swapaxes(0, 1) if self.batch_first else dy

    def _run_backward(self, dhs, dh, dc, run, params, need_dx):
        """Backpropagation through time, t = T..1, in one layer and direction: dhs (T, N, H) =
        dL/dh_t from the output, dh, dc = dL/dh_T, dL/dc_T -> dx (T, N, F), dL/dh_0, dL/dc_0;
        each weight's gradient is one product after the loop."""
        x, hs, steps = run
        weight_ih, weight_hh, bias_ih, bias_hh = params
        T, N, F = x.shape
        dxw = np.empty((T, N, weight_hh.data.shape[0]), hs.dtype)         # (T, N, G)
        dhw = np.empty_like(dxw)
        for t in reversed(range(T)):
            dh = dh + dhs[t]                            # h_t goes to the output and to step t + 1
            dxw[t], dhw[t], dh, dc = self._step_backward(dh, dc, steps[t], weight_hh.data)
        weight_ih.grad += dxw.reshape(T * N, -1).T @ x.reshape(T * N, F)
        weight_hh.grad += dhw.reshape(T * N, -1).T @ hs[:-1].reshape(T * N, -1)
        if bias_ih is not None:
            bias_ih.grad += dxw.sum(axis=(0, 1))
            bias_hh.grad += dhw.sum(axis=(0, 1))
        dx = dxw @ weight_ih.data if need_dx else None
        return dx, dh, dc


class RNN(_RNNStep, _RNNBase):
    """Elman RNN, as torch.nn.RNN: the loops of _RNNBase around _RNNStep's formulas."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False):
        self._check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)


class LSTM(_LSTMStep, _RNNBase):
    """Long short-term memory, as torch.nn.LSTM: the loops of _RNNBase around _LSTMStep's
    formulas. hx = (h_0, c_0); after forward .h_n and .c_n, after backward .grad_h0, .grad_c0."""


class GRU(_GRUStep, _RNNBase):
    """Gated recurrent unit, as torch.nn.GRU: the loops of _RNNBase around _GRUStep's formulas."""


# ── Cells: one time step per call, backpropagation through time by hand ─────

class _CellBase(Layer):
    """RNNCell, LSTMCell, GRUCell: one step per call, by the same step formulas as their layers,
    with torch's weight_ih (G, F), weight_hh (G, H), bias_ih, bias_hh (G,) (G = gates * H),
    all ~ U(-1/sqrt(H), 1/sqrt(H)).
    Calls stack up: each call in training mode is kept, and backward undoes the latest call not
    yet undone (so calling backward in reverse order is backpropagation through time), returning
    dL/dx and dL/dh_{t-1} (dL/dc_{t-1}) and adding into the weights' grads. In eval mode calls
    are not kept (a sampling loop may call the cell thousands of times), and predict or evaluate
    of a model empties the stack."""

    def __init__(self, input_size, hidden_size, bias=True):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        G = self.gates * hidden_size
        bound = 1 / math.sqrt(hidden_size)
        shapes = {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size), "bias_ih": (G,),
                  "bias_hh": (G,)}
        for kind in list(shapes)[:4 if bias else 2]:
            w = _rng.uniform(-bound, bound, shapes[kind]).astype(np.float32)
            setattr(self, kind, Parameter(w))
        self._cache = None                       # the stack of calls not yet undone

    def _call(self, x, h_prev, c_prev):
        """One step: x (N, F), h_{t-1}, c_{t-1} (N, H) or None (zeros) -> h_t, c_t."""
        x = _check_input(self, x, 2, self.input_size)
        shape = (x.shape[0], self.hidden_size)
        h_prev = _state(self, "h", h_prev, shape, x.dtype)                 # (N, H)
        if self.cell_state:
            c_prev = _state(self, "c", c_prev, shape, x.dtype)
        b_ih = self.bias_ih.data if self.bias else 0
        b_hh = self.bias_hh.data if self.bias else 0
        xw = x @ self.weight_ih.data.T + b_ih                              # (N, G)
        h, c, cache = self._step_forward(xw, h_prev, c_prev, self.weight_hh.data, b_hh)
        if self.training:
            self._cache = self._cache or []
            self._cache.append((x, h_prev, cache))
        return h, c

    def _undo(self, dh, dc):
        """Backward of the latest call not yet undone: dL/dh_t, dL/dc_t -> dL/dx, dL/dh_{t-1},
        dL/dc_{t-1}."""
        if not self._cache:
            raise RuntimeError(f"{type(self).__name__}.backward: no call left to undo (each "
                               "backward undoes one call made in training mode, latest first)")
        x, h_prev, cache = self._cache.pop()
        dh = _state(self, "dh", dh, h_prev.shape, h_prev.dtype)           # (N, H)
        if self.cell_state:
            dc = _state(self, "dc", dc, h_prev.shape, h_prev.dtype)
        dxw, dhw, dh_prev, dc_prev = self._step_backward(dh, dc, cache, self.weight_hh.data)
        self.weight_ih.grad += dxw.T @ x                                   # (G, F)
        self.weight_hh.grad += dhw.T @ h_prev                              # (G, H)
        if self.bias:
            self.bias_ih.grad += dxw.sum(axis=0)
            self.bias_hh.grad += dhw.sum(axis=0)
        return dxw @ self.weight_ih.data, dh_prev, dc_prev

    def forward(self, x, hx=None):
        """h_t = cell(x, h_{t-1}): x (N, F), hx (N, H) or None (zeros) -> (N, H)."""
        h, _ = self._call(x, hx, None)
        return h

    def backward(self, dh):
        """dL/dh_t -> (dL/dx, dL/dh_{t-1}) of the latest call not yet undone."""
        dx, dh_prev, _ = self._undo(dh, None)
        return dx, dh_prev


class RNNCell(_RNNStep, _CellBase):
    """One step of an Elman RNN, as torch.nn.RNNCell: h = cell(x, h); dx, dh = cell.backward(dh).
    Formulas: _RNNStep; the stack of calls: _CellBase."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh"):
        self._check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)


class LSTMCell(_LSTMStep, _CellBase):
    """One step of an LSTM, as torch.nn.LSTMCell: h, c = cell(x, (h, c));
    dx, dh, dc = cell.backward(dh, dc). Formulas: _LSTMStep; the stack of calls: _CellBase."""

    def forward(self, x, hx=None):
        """x (N, F), hx = (h_{t-1}, c_{t-1}) (N, H) each, or None (zeros) -> h_t, c_t."""
        if hx is None:
            hx = (None, None)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(f"LSTMCell: expected hx = (h, c) or None, got {type(hx).__name__}")
        return self._call(x, hx[0], hx[1])

    def backward(self, dh, dc=None):
        """dL/dh_t, dL/dc_t (None: 0) -> (dL/dx, dL/dh_{t-1}, dL/dc_{t-1}) of the latest call."""
        return self._undo(dh, dc)


class GRUCell(_GRUStep, _CellBase):
    """One step of a GRU, as torch.nn.GRUCell: h = cell(x, h); dx, dh = cell.backward(dh).
    Formulas: _GRUStep; the stack of calls: _CellBase."""


class LastStep(Layer):
    """y = x[:, -1], the last step of a sequence (along dim): how a Sequential classifies a
    sequence from a recurrent layer's output, as Keras's return_sequences=False does:
        Sequential(LSTM(F, H, batch_first=True), LastStep(), Linear(H, C))
    x: (N, T, F) -> y: (N, F) (dim=1; dim=0 after a recurrent layer without batch_first).
    backward: dx = dy at the last step, 0 at the others.
    Bidirectional (F = 2H): y[:, :H] is the forward direction's final h, but y[:, H:] is the
    reverse direction's h after one step only (it starts at the end), as torch users get from
    output[:, -1] too; the reverse direction's summary of the whole sequence is output[:, 0, H:].
    """

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x):
        x = np.asarray(x)
        if not -x.ndim <= self.dim < x.ndim or x.ndim < 2 or x.shape[self.dim] == 0:
            raise ValueError(f"LastStep: expected an input of 2 or more axes with steps on axis "
                             f"{self.dim}, got shape {x.shape}")
        self._cache = x.shape
        return np.moveaxis(x, self.dim, 0)[-1]

    def backward(self, grad):
        dx = np.zeros(self._saved(), grad.dtype)
        np.moveaxis(dx, self.dim, 0)[-1] = grad
        return dx


# ════════════════════════════════════════════════════════════════════════════
# Attention and transformers
# ════════════════════════════════════════════════════════════════════════════
# Sequences are (N, T, E) when batch_first, else torch's default (T, N, E): N sequences of
# T tokens (steps) of E features.

class LayerNorm(Layer):
    """y = xhat * weight + bias,  xhat = (x - mean) / sqrt(var + eps), as torch.nn.LayerNorm:
    mean and biased var over the last len(normalized_shape) axes (the n values of one token).
    backward, g = dy * weight:  dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps);
    dweight = sum of dy * xhat, dbias = sum of dy over the leading axes. weight = 1, bias = 0."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True):
        shape = tuple(normalized_shape) if np.ndim(normalized_shape) else (normalized_shape,)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(shape, np.float32))
            self.bias = Parameter(np.zeros(shape, np.float32))

    def forward(self, x):
        x, axes = np.asarray(x), tuple(range(-len(self.normalized_shape), 0))   # one token's n
        if x.shape[-len(axes):] != self.normalized_shape:
            dims = ", ".join(map(str, self.normalized_shape))
            raise ValueError(f"LayerNorm: expected input (*, {dims}), got shape {x.shape}")
        inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + self.eps)   # (*, 1, ...)
        xhat = (x - x.mean(axis=axes, keepdims=True)) * inv_std
        self._cache = xhat, inv_std, axes
        return xhat * self.weight.data + self.bias.data if self.elementwise_affine else xhat

    def backward(self, grad):
        xhat, inv_std, axes = self._saved()
        if self.elementwise_affine:                                # sums over the leading axes
            self.weight.grad += (grad * xhat).reshape(-1, *self.normalized_shape).sum(axis=0)
            self.bias.grad += grad.reshape(-1, *self.normalized_shape).sum(axis=0)
            grad = grad * self.weight.data
        gx_mean = (grad * xhat).mean(axis=axes, keepdims=True)
        return (grad - grad.mean(axis=axes, keepdims=True) - xhat * gx_mean) * inv_std


# erfcx(z) = exp(z^2) erfc(z), 0 <= z <= 6: a degree-18 Chebyshev series in u = (z - 2) / (z + 2),
# interpolated once at math.erfc's values, then in powers of u: erf = 1 - exp(-z^2) erfcx is within
# 3e-15 of math.erf (1 - erf(z) < 3e-17 beyond z = 6); float32's first 9 terms: within 2.4e-7.
_ERFCX = np.polynomial.Chebyshev.interpolate(
    lambda u: [math.exp(z * z) * math.erfc(z) for z in 2 * (1 + u) / (1 - u)], 18, domain=[-1, 0.5])
_ERFCX_POWERS = {np.float64: _ERFCX.convert(kind=np.polynomial.Polynomial).coef,      # p_0..p_18
                 np.float32: _ERFCX.truncate(9).convert(kind=np.polynomial.Polynomial).coef}


def _erf(x):
    """erf(x) = sign(x) (1 - exp(-z^2) erfcx(z)), z = min(|x|, 6), erfcx(z) = sum_k p_k u^k by
    Horner's rule, u = 1 - 4 / (z + 2); float32 for a float32 x, else float64 (NumPy has no erf)."""
    dtype = np.float32 if np.result_type(x) == np.float32 else np.float64
    z = np.abs(x, dtype=dtype)
    np.minimum(z, 6.0, out=z)
    u = 1 - 4 / (z + 2)
    erfcx = np.zeros_like(u)
    for p_k in _ERFCX_POWERS[dtype][::-1].astype(dtype):               # p_n, ..., p_0
        erfcx *= u
        erfcx += p_k
    np.square(z, out=z)
    erfcx *= np.exp(np.negative(z, out=z), out=z)                      # exp(-z^2) erfcx(z)
    erf_z = np.subtract(1, erfcx, out=erfcx)
    return np.copysign(erf_z, x, out=erf_z)


class GELU(Layer):
    """y = x Phi(x), as torch.nn.GELU;  backward: dx = dy (Phi(x) + x Phi'(x)).
    approximate="none": Phi(x) = (1 + erf(x / sqrt(2))) / 2, the normal CDF, and
    Phi'(x) = exp(-x^2 / 2) / sqrt(2 pi).  approximate="tanh": Phi(x) = (1 + tanh(u)) / 2,
    u = sqrt(2 / pi) (x + 0.044715 x^3), and Phi'(x) = (1 - tanh(u)^2) du/dx / 2."""

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        x = np.asarray(x)
        if self.approximate == "tanh":
            c = math.sqrt(2 / math.pi)
            t = np.tanh(c * (x + 0.044715 * x ** 3))
            cdf, pdf = (1 + t) / 2, (1 - t * t) * c * (1 + 3 * 0.044715 * x * x) / 2
        else:                                  # in x's dtype (float32 stays float32)
            cdf, pdf = (1 + _erf(x / math.sqrt(2))) / 2, np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        self._cache = (cdf + x * pdf).astype(x.dtype, copy=False)                 # dy/dx
        return (x * cdf).astype(x.dtype, copy=False)

    def backward(self, grad):
        return grad * self._saved()


def _check_tokens(layer, x, features, batch_first, name="input", like=None):
    """x as an array, if (N, T, E = features) ((T, N, E) if not batch_first) with T >= 1 tokens
    and, given like = (its name, an array of the same layout), like's N; else a ValueError."""
    x, layout = np.asarray(x), "(N, T, E)" if batch_first else "(T, N, E)"
    axis = 1 if batch_first else 0                                    # T's; N's is 1 - axis
    n = like and np.shape(like[1])[1 - axis]                          # like's N, or None
    if (x.ndim != 3 or x.shape[2] != features or x.shape[axis] == 0
            or n not in (None, x.shape[1 - axis])):
        same_n = f", N = {n} as {like[0]} {np.shape(like[1])}" if like else ""
        raise ValueError(f"{type(layer).__name__}: expected a 3-D {name} {layout} with "
                         f"E = {features}{same_n} and T >= 1 tokens, got shape {x.shape}")
    return x


def _masks(layer, n, t_q, t_k, heads, **masks):
    """The masks given, checked (bool or float; (N, S) if a key_padding_mask, else (L, S) or
    (N * heads, L, S); a ValueError naming it otherwise), as what they add to the scores
    (N, heads, L, S) (broadcast): -inf where a bool mask is True (not allowed), a float as it is."""
    added = []
    for name, mask in masks.items():
        if mask is None:
            continue
        mask, padding = np.asarray(mask), name.endswith("key_padding_mask")
        shapes = [(n, t_k)] if padding else [(t_q, t_k), (n * heads, t_q, t_k)]
        if mask.shape not in shapes or mask.dtype.kind not in "bf":
            raise ValueError(f"{type(layer).__name__}: {name} must be a bool or float array of "
                             f"shape {' or '.join(map(str, shapes))}, got {mask.dtype} of shape "
                             f"{mask.shape}")
        mask = np.where(mask, -np.inf, 0) if mask.dtype == bool else mask
        shape = (n, 1, 1, t_k) if padding else (-1, heads if mask.ndim == 3 else 1, t_q, t_k)
        added.append(mask.reshape(shape))
    return added


class MultiheadAttention(Layer):
    """As torch.nn.MultiheadAttention: y = mha(query, key, value): (N, L, E), (N, S, E), (N, S, E)
    if batch_first else (L, N, E), (S, N, E), (S, N, E); key and value None: self-attention.
    q = query W_q^T + b_q, k = key W_k^T + b_k, v = value W_v^T + b_v ([W_q; W_k; W_v] = W_in
    (3E, E); self-attention: one product x W_in^T), split into h = num_heads heads of hs = E / h;
    A = softmax(q k^T / sqrt(hs) + M) over keys (N, h, L, S), M the masks' sum: attn_mask (L, S)
    or (N * h, L, S), key_padding_mask (N, S) (bool: -inf where True; float: as it is), the causal
    mask (-inf above the diagonal) if is_causal or causal;  D = dropout(A);  o = D v, heads
    concatenated;  y = o W_out^T + b_out.   backward: do = dy W_out;  dD = do v^T,  dv = D^T do,
    dA = dropout'(dD),  dS = A * (dA - sum_keys dA * A),  dq = dS k / sqrt(hs),
    dk = dS^T q / sqrt(hs);  dW_q = dq^T query,  dquery = dq W_q (k, v alike): returns dquery,
    leaves .grad_key, .grad_value (self-attention: dx = their sum, in one product; they are None).
    b_in, W_out, b_out: as a Linear's. Init as torch: W_in Xavier-uniform, W_out U(+-1/sqrt(E)),
    biases 0. .attn_weights: A's mean over heads (N, L, S), or A (N, h, L, S). A query with all its
    keys masked: ValueError (torch returns NaN)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=False,
                 causal=False):
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.bias, self.batch_first, self.causal, e = bias, batch_first, causal, embed_dim
        w_in = _rng.uniform(-1, 1, (3 * e, e)) * math.sqrt(6 / (e + 3 * e))          # (3E, E)
        self.in_proj_weight = Parameter(w_in.astype(np.float32))
        self.in_proj_bias = Parameter(np.zeros(3 * e, np.float32)) if bias else None
        w_out = _rng.uniform(-1, 1, (e, e)) / math.sqrt(e)                            # (E, E)
        self.out_proj_weight = Parameter(w_out.astype(np.float32))
        self.out_proj_bias = Parameter(np.zeros(e, np.float32)) if bias else None

    def named_parameters(self):       # torch's names, in torch's order
        return [(k.replace("out_proj_", "out_proj."), p) for k, p in vars(self).items()
                if hasattr(p, "grad")]

    def forward(self, query, key=None, value=None, key_padding_mask=None, attn_mask=None,
                is_causal=False, average_attn_weights=True):
        e, h, hs = self.embed_dim, self.num_heads, self.embed_dim // self.num_heads
        cross = key is not None or value is not None
        x = _check_tokens(self, query, e, self.batch_first, "query" if cross else "input")
        inputs = [x]                # what the in-projection multiplies: x by all of W_in, or
        if cross:                   # query, key, value by W_q, W_k, W_v
            key = _check_tokens(self, key, e, self.batch_first, "key", ("query", x))
            value = _check_tokens(self, value, e, self.batch_first, "value", ("query", x))
            if key.shape != value.shape:
                raise ValueError(f"MultiheadAttention: key and value must have the same shape, "
                                 f"got key {key.shape} and value {value.shape}")
            inputs += [key, value]
        inputs = [u if self.batch_first else u.transpose(1, 0, 2) for u in inputs]  # (N, T, E)
        (n, t_q, _), t_k = inputs[0].shape, inputs[-1].shape[1]                # L, S
        causal = np.triu(np.ones((t_q, t_k), bool), 1) if is_causal or self.causal else None
        masks = _masks(self, n, t_q, t_k, h, attn_mask=attn_mask,
                       key_padding_mask=key_padding_mask, causal=causal)
        heads, rows = [], 3 * e // len(inputs)              # q, k, v: (N, h, T, hs) each
        for i, u in enumerate(inputs):                      # W_in's rows i * rows, ...
            r = slice(i * rows, (i + 1) * rows)
            proj = u.reshape(-1, e) @ self.in_proj_weight.data[r].T          # (N T, 3E or E)
            proj += 0 if self.in_proj_bias is None else self.in_proj_bias.data[r]
            heads += list(proj.reshape(n, u.shape[1], -1, h, hs).transpose(2, 0, 3, 1, 4))
        q, k, v = heads
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)                      # (N, h, L, S)
        for mask in masks:
            s += mask
        s_max = s.max(axis=-1, keepdims=True)
        if masks and np.isneginf(s_max).any():
            raise ValueError("MultiheadAttention: a query has all its keys masked (its softmax "
                             "is 0/0; torch returns NaN): leave each query at least one key")
        a = np.exp(s - s_max)
        a /= a.sum(axis=-1, keepdims=True)
        self.attn_weights = a.mean(axis=1) if average_attn_weights else a    # (N, [h,] L, S)
        p = self.dropout if self.training else 0                             # dropout(A) = A keep
        keep = (_rng.random(a.shape, dtype=np.float32) >= p) / a.dtype.type(1 - p) if p else 1
        o = (a * keep @ v).transpose(0, 2, 1, 3).reshape(n * t_q, e)         # (N L, E)
        self._cache = inputs, o, q, k, v, a, keep
        y = o @ self.out_proj_weight.data.T
        y = (y + (0 if self.out_proj_bias is None else self.out_proj_bias.data)).reshape(n, t_q, e)
        return y if self.batch_first else y.transpose(1, 0, 2)

    def backward(self, grad):
        inputs, o, q, k, v, a, keep = self._saved()
        (n, t_q, e), h = inputs[0].shape, self.num_heads
        grad = (grad if self.batch_first else grad.transpose(1, 0, 2)).reshape(n * t_q, e)
        self.out_proj_weight.grad += grad.T @ o
        do = (grad @ self.out_proj_weight.data).reshape(n, t_q, h, e // h).transpose(0, 2, 1, 3)
        dd = do @ v.transpose(0, 1, 3, 2)                                    # (N, h, L, S)
        dv = (a * keep).transpose(0, 1, 3, 2) @ do                           # (N, h, S, hs)
        ds = a * (dd * keep - (dd * keep * a).sum(axis=-1, keepdims=True)) / math.sqrt(e // h)
        dqkv = [ds @ k, ds.transpose(0, 1, 3, 2) @ q, dv]                    # (N, h, T, hs) each
        dqkv = [np.stack(dqkv, axis=2)] if len(inputs) == 1 else [d[:, :, None] for d in dqkv]
        grads, rows = [], 3 * e // len(inputs)
        for i, (u, d) in enumerate(zip(inputs, dqkv)):
            r = slice(i * rows, (i + 1) * rows)
            d = d.transpose(0, 3, 2, 1, 4).reshape(-1, rows)                 # (N T, 3E or E)
            self.in_proj_weight.grad[r] += d.T @ u.reshape(-1, e)
            if self.in_proj_bias is not None:
                self.in_proj_bias.grad[r] += d.sum(axis=0)
            du = (d @ self.in_proj_weight.data[r]).reshape(u.shape)          # (N, T, E)
            grads.append(du if self.batch_first else du.transpose(1, 0, 2))
        if self.out_proj_bias is not None:
            self.out_proj_bias.grad += grad.sum(axis=0)
        self.grad_key, self.grad_value = grads[1:] or (None, None)
        return grads[0]


class TransformerEncoderLayer(Layer):
    """As torch.nn.TransformerEncoderLayer (same sublayers and keys); x, y: (N, T, E) or (T, N, E).
    sa(x) = dropout1(self_attn(x)),  ff(x) = dropout2(linear2(dropout(activation(linear1(x))))).
    post-norm (norm_first=False):  h = norm1(x + sa(x)),  y = norm2(h + ff(h)).
    pre-norm (norm_first=True):    h = x + sa(norm1(x)),  y = h + ff(norm2(h)).  backward: the
    sublayers' backward in reverse order; a residual x + f(x) gives dx = dy + f'(dy).
    forward(src, src_mask, src_key_padding_mask, is_causal): self_attn's attn_mask (T, T) or
    (N * nhead, T, T), key_padding_mask (N, T), is_causal; causal=True: always causal (GPT)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, causal=False):
        if activation not in ("relu", "gelu"):
            raise ValueError(f"TransformerEncoderLayer: activation must be 'relu' or 'gelu', "
                             f"got {activation!r}")
        self.d_model, self.nhead, self.dim_feedforward = d_model, nhead, dim_feedforward
        self.dropout, self.activation, self.layer_norm_eps = dropout, activation, layer_norm_eps
        self.batch_first, self.norm_first, d, f = batch_first, norm_first, d_model, dim_feedforward
        self.causal = causal
        self.self_attn = MultiheadAttention(d, nhead, dropout, batch_first=batch_first)
        self.linear1, self.linear2 = Linear(d, f), Linear(f, d)
        self.norm1, self.norm2 = LayerNorm(d, layer_norm_eps), LayerNorm(d, layer_norm_eps)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)
        act = ReLU() if activation == "relu" else GELU()
        self._sa = [self.self_attn, self.dropout1]                           # the two branches
        self._ff = [self.linear1, act, Dropout(dropout), self.linear2, self.dropout2]

    def train(self, mode=True):       # the sublayers, and those only in _ff: activation, dropout
        for layer in [v for v in vars(self).values() if isinstance(v, Layer)] + self._ff:
            layer.train(mode)
        return Layer.train(self, mode)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = _check_tokens(self, src, self.d_model, self.batch_first, "src")
        n, t = x.shape[:2] if self.batch_first else x.shape[1::-1]
        _masks(self, n, t, t, self.nhead, src_mask=src_mask,
               src_key_padding_mask=src_key_padding_mask)
        h = self._block(self.norm1, self._sa, x, attn_mask=src_mask,
                        key_padding_mask=src_key_padding_mask, is_causal=is_causal or self.causal)
        return self._block(self.norm2, self._ff, h)

    def backward(self, grad):
        dh = self._block_back(self.norm2, self._ff, grad)
        return self._block_back(self.norm1, self._sa, dh)

    def _block(self, norm, layers, x, *args, **kwargs):
        """norm(x + f(x)), or x + f(norm(x)) if norm_first; f: the layers in order, args and
        kwargs going to the first (the attention: memory, masks)."""
        def f(x):
            return self._chain(layers[1:], layers[0].forward(x, *args, **kwargs))
        return x + f(norm.forward(x)) if self.norm_first else norm.forward(x + f(x))

    def _block_back(self, norm, layers, grad):    # the residual's dy goes to x and through f
        if self.norm_first:
            return grad + norm.backward(self._chain(layers, grad, back=True))
        dz = norm.backward(grad)
        return dz + self._chain(layers, dz, back=True)

    def _chain(self, layers, x, back=False):  # the layers' forward in order, or backward reversed
        for layer in reversed(layers) if back else layers:
            x = layer.backward(x) if back else layer.forward(x)
        return x


class TransformerDecoderLayer(Layer):
    """As torch.nn.TransformerDecoderLayer (same sublayers and keys): tgt x, y: (N, L, E) or
    (L, N, E); memory m (the encoder's output): (N, S, E) or (S, N, E).
    sa(x) = dropout1(self_attn(x, tgt masks)),  ca(x) = dropout2(multihead_attn(x, m, m, memory
    masks)),  ff(x) = dropout3(linear2(dropout(activation(linear1(x))))).
    post-norm (norm_first=False):  h = norm1(x + sa(x)),  g = norm2(h + ca(h)),
                                   y = norm3(g + ff(g)).
    pre-norm (norm_first=True):    h = x + sa(norm1(x)),  g = h + ca(norm2(h)),
                                   y = g + ff(norm3(g)).
    backward(dy) returns dtgt and leaves .grad_memory = dkey + dvalue of multihead_attn.
    Masks: tgt_mask (L, L) or (N * nhead, L, L), memory_mask (L, S) or (N * nhead, L, S),
    tgt_key_padding_mask (N, L), memory_key_padding_mask (N, S): bool (True = not allowed) or
    float (added to the scores); tgt_is_causal, memory_is_causal: the flag alone applies the
    causal mask."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False):
        if activation not in ("relu", "gelu"):
            raise ValueError(f"TransformerDecoderLayer: activation must be 'relu' or 'gelu', "
                             f"got {activation!r}")
        self.d_model, self.nhead, self.dim_feedforward = d_model, nhead, dim_feedforward
        self.dropout, self.activation, self.layer_norm_eps = dropout, activation, layer_norm_eps
        self.batch_first, self.norm_first, d, f = batch_first, norm_first, d_model, dim_feedforward
        self.self_attn = MultiheadAttention(d, nhead, dropout, batch_first=batch_first)
        self.multihead_attn = MultiheadAttention(d, nhead, dropout, batch_first=batch_first)
        self.linear1, self.linear2 = Linear(d, f), Linear(f, d)
        self.norm1, self.norm2, self.norm3 = [LayerNorm(d, layer_norm_eps) for _ in range(3)]
        self.dropout1, self.dropout2, self.dropout3 = [Dropout(dropout) for _ in range(3)]
        act = ReLU() if activation == "relu" else GELU()
        self._sa = [self.self_attn, self.dropout1]                          # the three branches
        self._ca = [self.multihead_attn, self.dropout2]
        self._ff = [self.linear1, act, Dropout(dropout), self.linear2, self.dropout3]

    train = TransformerEncoderLayer.train
    _block, _block_back = TransformerEncoderLayer._block, TransformerEncoderLayer._block_back
    _chain = TransformerEncoderLayer._chain           # the encoder's blocks, as they are

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = _check_tokens(self, tgt, self.d_model, self.batch_first, "tgt")
        m = _check_tokens(self, memory, self.d_model, self.batch_first, "memory", ("tgt", x))
        n, t = x.shape[:2] if self.batch_first else x.shape[1::-1]
        s = m.shape[1 if self.batch_first else 0]
        _masks(self, n, t, t, self.nhead, tgt_mask=tgt_mask,
               tgt_key_padding_mask=tgt_key_padding_mask)
        _masks(self, n, t, s, self.nhead, memory_mask=memory_mask,
               memory_key_padding_mask=memory_key_padding_mask)
        h = self._block(self.norm1, self._sa, x, attn_mask=tgt_mask,
                        key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal)
        g = self._block(self.norm2, self._ca, h, m, m, attn_mask=memory_mask,
                        key_padding_mask=memory_key_padding_mask, is_causal=memory_is_causal)
        return self._block(self.norm3, self._ff, g)

    def backward(self, grad):
        dg = self._block_back(self.norm3, self._ff, grad)
        dh = self._block_back(self.norm2, self._ca, dg)
        self.grad_memory = self.multihead_attn.grad_key + self.multihead_attn.grad_value
        return self._block_back(self.norm1, self._sa, dh)


class PositionalEmbedding(Layer):
    """y[:, t] = x[:, t] + weight[t]: a learned position embedding (BERT, GPT-2, ViT), as torch's
    x + pos[:T] with pos = nn.Parameter(0.02 * torch.randn(max_len, E)) (torch.nn has no layer).
    x: (N, T, E), T <= max_len.  backward: dx = dy,  dweight[t] = sum_n dy[n, t]."""

    def __init__(self, max_len, embedding_dim):
        self.max_len, self.embedding_dim = max_len, embedding_dim
        self.weight = Parameter(0.02 * _rng.standard_normal((max_len, embedding_dim), np.float32))

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 3 or not 1 <= x.shape[1] <= self.max_len or x.shape[2] != self.embedding_dim:
            raise ValueError(f"PositionalEmbedding: expected input (N, T, {self.embedding_dim}) "
                             f"with 1 <= T <= max_len={self.max_len}, got shape {x.shape}")
        self._cache = x.shape[1]
        return x + self.weight.data[:x.shape[1]]

    def backward(self, grad):
        self.weight.grad[:self._saved()] += grad.sum(axis=0)
        return grad


class MeanOverSteps(Layer):
    """The mean over the steps (tokens) axis, as Keras's GlobalAveragePooling1D: y = x.mean(dim);
    backward: dx = dy / T, repeated over the T steps. (N, T, E) -> (N, E) with dim=1.
    With a mask of the real steps (bool, True = a real step, False = padding, as Keras's mask),
    the mean is over the real steps only, so a padded sequence gives what it gives unpadded:
        y = sum_t m_t x_t / sum_t m_t,   backward: dx_t = m_t dy / sum_t m_t.
    mask has x's shape through the steps axis: (N, T) for x (N, T, E) (dim=1), (T, N) for
    (T, N, E) (dim=0). It is the negation of attention's key_padding_mask (True = padding).
    torch.nn has no such layer: in torch one writes `x.mean(dim=1)`, or with a mask
    `(x * m[..., None]).sum(1) / m.sum(1, keepdim=True)`."""

    def __init__(self, dim=1):
        self.dim = dim

    def forward(self, x, mask=None):
        x = np.asarray(x)
        if x.ndim < 2 or not -x.ndim <= self.dim < x.ndim or x.shape[self.dim] == 0:
            raise ValueError(f"MeanOverSteps: expected an input with at least 1 step on axis "
                             f"{self.dim}, got shape {x.shape}")
        if mask is None:
            self._cache = x.shape, None
            return x.mean(axis=self.dim)
        weights = self._step_weights(x, np.asarray(mask))           # m_t / sum_t m_t, (N, T, 1)
        self._cache = x.shape, weights
        return (x * weights).sum(axis=self.dim)

    def backward(self, grad):
        shape, weights = self._saved()
        if weights is None:
            weights = 1 / shape[self.dim]
        grad = np.expand_dims(grad, self.dim) * weights               # (N, 1, E) * (N, T, 1)
        return np.broadcast_to(grad, shape).copy()

    def _step_weights(self, x, mask):
        """m_t / sum_t m_t in x's dtype, with x's trailing axes as 1: (N, T) -> (N, T, 1)."""
        dim = self.dim % x.ndim
        steps_shape = x.shape[:max(dim + 1, 2)]                        # (N, T) for (N, T, E)
        if mask.dtype != bool or mask.shape != steps_shape:
            raise ValueError(f"MeanOverSteps: expected mask, a bool array of shape {steps_shape} "
                             f"(True = a real step) for x of shape {x.shape}, got {mask.dtype} "
                             f"of shape {mask.shape}")
        count = mask.sum(axis=dim, keepdims=True)                      # real steps per sequence
        if not count.all():
            raise ValueError(f"MeanOverSteps: every sequence needs at least 1 real step, but mask "
                             f"(shape {mask.shape}) has {int((count == 0).sum())} with none")
        weights = (mask / count).astype(np.result_type(x.dtype, np.float32), copy=False)
        return weights.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


# ════════════════════════════════════════════════════════════════════════════
# Losses: forward(pred, target) -> float (reduced as `reduction` says); backward() -> grad wrt pred
# ════════════════════════════════════════════════════════════════════════════

class Loss:
    """Base class: `loss(pred, target)` is `loss.forward(pred, target)`; backward() -> dloss/dpred.

    Each loss is made of terms, one per position (CrossEntropyLoss, NLLLoss: one per sample, or
    per sample and step) or per element (MSELoss, BCEWithLogitsLoss). reduction, as torch:
        "mean" (the default): sum(terms) / denominator, the number of terms unless the loss says
               otherwise (CrossEntropyLoss with class weights or ignored targets);
        "sum":  sum(terms) (forward returns a float);
        "none": the array of terms.
    backward(grad) chains the rule: grad is dL/d(what forward returned), 1 by default; with
    "none" an array of the terms' shape (ones by default: the gradient of their sum).
    A subclass's forward computes the terms and returns `self._reduce(terms)` (or
    `self._reduce(terms, denominator)`); `_grad()` gives d term / d pred (pred's shape).
    `hint`: the usual causes of a loss that becomes NaN or infinite (fit's error message)."""
    hint = "a learning rate too large (try one 10x smaller) or inputs that are not standardised"
    _cache = None             # what forward keeps for backward

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"{type(self).__name__}: expected reduction 'mean', 'sum' or 'none', "
                             f"got {reduction!r}")
        self.reduction = reduction

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def config(self):
        """{"class": name, "kwargs": constructor arguments} read back from the attributes of the
        same names (arrays as lists): what Sequential.save writes to rebuild the loss."""
        kwargs = {}
        for arg, _ in _init_args(type(self)):
            if hasattr(self, arg):                         # a subclass may skip our __init__
                value = getattr(self, arg)
                kwargs[arg] = value.tolist() if isinstance(value, np.ndarray) else value
        return {"class": type(self).__name__, "kwargs": kwargs}

    def __repr__(self):
        defaults = {arg: spec.default for arg, spec in _init_args(type(self))}
        args = [f"{k}={v!r}" for k, v in self.config()["kwargs"].items() if v != defaults[k]]
        return f"{type(self).__name__}({', '.join(args)})"

    def _saved(self):                  # what forward cached; a clear error if it has not run
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    def _reduce(self, terms, denominator=None):
        """The terms -> sum / denominator ("mean"; the number of terms by default), their sum
        ("sum") or themselves ("none"). Notes the terms' shape and the denominator for backward.
        A zero denominator gives 0 / 0 = NaN, as torch (e.g. every target ignored)."""
        self._terms_shape = terms.shape
        self._denominator = terms.size if denominator is None else denominator
        if self.reduction == "none":
            return terms
        total = terms.sum()
        if self.reduction == "sum":
            return float(total)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(total / total.dtype.type(self._denominator))

    def backward(self, grad=None):
        """dloss/dpred = d term / d pred (divided by the denominator for "mean"), times grad.
        With "none", grad has the terms' shape: pred's, or pred's without its class axis 1
        (one term per position), then it is spread over the classes."""
        d, shape = self._grad(), self._terms_shape
        if self.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                d /= d.dtype.type(self._denominator)
        if grad is None:
            return d
        grad, want = np.asarray(grad, d.dtype), shape if self.reduction == "none" else ()
        if grad.shape != want:
            raise ValueError(f"{type(self).__name__}.backward: expected grad of the shape forward "
                             f"returned, {want}, got {grad.shape}")
        if 0 < grad.ndim < d.ndim:
            grad = np.expand_dims(grad, 1)                 # (N, d1, ...) -> (N, 1, d1, ...)
        return d * grad


def _class_weight(loss, weight):
    """A class weight (a list, NumPy array or torch tensor of C numbers) as a float64 array, or
    None; a ValueError naming the loss unless it is 1-D."""
    if weight is None:
        return None
    weight = np.array(_plain(weight), dtype=np.float64)
    if weight.ndim != 1:
        raise ValueError(f"{type(loss).__name__}: expected a 1-D class weight (one number per "
                         f"class), got shape {weight.shape}")
    return weight


class _WeightedLoss(Loss):
    """What CrossEntropyLoss and NLLLoss share (torch's _WeightedLoss): pred (N, C) or
    (N, C, d1, ...) with the classes on axis 1, integer labels t of shape (N,) or (N, d1, ...);
    one term per position i (a sample, and its d1, ... indices), 0 where t_i == ignore_index.

        w[c]: the class weight (1 without `weight`);  counted_i = (t_i != ignore_index)
        "mean": sum_i term_i / sum_i counted_i w[t_i]   (the number of counted positions when
                unweighted; 0 / 0 = NaN when every target is ignored, as torch)
    The gradient is exactly 0 at ignored positions.

    The common batch (no class weight, no target equal to ignore_index: see _is_common) has
    w = 1 and every position counted, so its "mean" divides by the number of positions: the
    losses take a short path there that builds no per-position weights. forward caches
    (pred or logp, labels, weighting): weighting is None on the short path, else
    (label_weight, counted, w) from _weighting."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        self.weight = _class_weight(self, weight)
        self.ignore_index = ignore_index

    def _checked(self, pred, target):
        """pred (as a float array) and target, checked: classes on axis 1 of pred, target of
        pred's shape without that axis, integer labels."""
        name, pred, target = type(self).__name__, np.asarray(pred), np.asarray(target)
        if pred.ndim < 2:
            raise ValueError(f"{name}: expected pred of shape (N, C) or (N, C, d1, ...), "
                             f"got {pred.shape}")
        if not np.issubdtype(pred.dtype, np.floating):
            pred = pred.astype(np.float64)                 # Python lists of ints: compute in float
        positions = pred.shape[:1] + pred.shape[2:]        # pred's shape without the class axis
        if target.shape != positions:
            raise ValueError(f"{name}: expected target of shape {positions} for pred "
                             f"{pred.shape}, got {target.shape}")
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"{name}: expected integer class labels, got dtype {target.dtype}")
        return pred, target

    def _is_common(self, target, classes):
        """True for the common batch: no class weight, at least one target, every target a
        class in [0, C) and none equal to ignore_index, known from min t and max t alone
        (an ignore_index between them, even if absent, takes the general path, which checks
        each target)."""
        if self.weight is not None or target.size == 0:
            return False
        low, high = target.min(), target.max()
        return 0 <= low and high < classes and not low <= self.ignore_index <= high

    def _weighting(self, pred, target):
        """The general path, per position: the label (0 where ignored: any class will do, its
        weight is 0), its weight w[t] (0 where ignored), the counted mask, and the class weights
        w (C,) in pred's dtype. A counted label outside [0, C) raises."""
        name, classes = type(self).__name__, pred.shape[1]
        counted = target != self.ignore_index                               # (N, d1, ...)
        labels = target[counted]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"{name}: labels must be in [0, {classes}), got min {labels.min()} "
                             f"max {labels.max()} (among the targets not equal to ignore_index="
                             f"{self.ignore_index})")
        if self.weight is not None and self.weight.shape != (classes,):
            raise ValueError(f"{name}: expected a class weight of shape ({classes},), one per "
                             f"class of pred {pred.shape}, got {self.weight.shape}")
        w = np.ones(classes, pred.dtype) if self.weight is None else self.weight.astype(pred.dtype)
        label = np.where(counted, target, 0)                                 # (N, d1, ...)
        label_weight = np.where(counted, w[label], 0)                        # (N, d1, ...)
        return label, label_weight, counted, w

    def _denominator_of(self, label_weight, counted):
        """sum of w[t_i] over counted positions; their number when there is no class weight."""
        return counted.sum() if self.weight is None else label_weight.sum()

    def backward(self, grad=None):
        d = super().backward(grad)
        # exactly 0 at ignored positions, as torch: also where the mean is 0 / 0 or grad is NaN
        weighting = self._saved()[2]                       # None: the common batch, none ignored
        if weighting is not None:
            _, counted, _ = weighting
            if not counted.all():
                np.copyto(d, 0, where=~np.expand_dims(counted, 1))
        return d


def _label_index(label):
    """The index of each position's label in an array (N, C, d1, ...) with the classes on axis 1:
    a[_label_index(t)] is a[n, t[n, j, ...], j, ...] at every position (n, j, ...): (N, d1, ...)."""
    n, *rest = np.indices(label.shape, sparse=True)       # aranges, broadcastable to t's shape
    return (n, label, *rest)


def _pick(logp, label):
    """logp[n, label[n, ...], ...]: the log-probability of each position's label (class axis 1)."""
    return logp[_label_index(label)]


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy on logits, log-softmax fused in (stable), torch's weights and smoothing.

    logits x (N, C) or (N, C, d1, ...); labels t (N,) or (N, d1, ...); at each position i:
        logp_i = log_softmax(x_i) over the C classes (axis 1)
        q_i[c] = (1 - eps) w[t_i] [c == t_i] + eps / C w[c]       the smoothed, weighted target
        term_i = -sum_c q_i[c] logp_i[c]
               = (1 - eps) w[t_i] (-logp_i[t_i]) + eps / C sum_c w[c] (-logp_i[c])
        term_i = 0 where t_i == ignore_index
        "mean": sum_i term_i / sum_i counted_i w[t_i]   (both parts over the same denominator;
                the number of counted positions without weight)
        d term_i / d x_i = (sum_c q_i[c]) softmax(x_i) - q_i
    eps = label_smoothing, w = weight (1 without). The common batch (no weight, no smoothing,
    no ignored target) takes the short path: term_i = -logp_i[t_i], "mean" divides by the
    number of positions, and d term_i / d x_i = softmax(x_i) - onehot(t_i).
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: expected label_smoothing in [0, 1], "
                             f"got {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def forward(self, pred, target):
        pred, target = self._checked(pred, target)
        logp = _log_softmax(pred, 1)                                         # (N, C, d1, ...)
        eps, classes = self.label_smoothing, pred.shape[1]
        if not eps and self._is_common(target, classes):
            self._cache = logp, target, None
            return self._reduce(-_pick(logp, target))                        # term_i = -logp_i[t_i]
        label, label_weight, counted, w = self._weighting(pred, target)
        terms = (1 - eps) * label_weight * -_pick(logp, label)               # (N, d1, ...)
        if eps:
            class_weight = w.reshape((1, classes) + (1,) * (logp.ndim - 2))  # (1, C, 1, ...)
            smooth = -(class_weight * logp).sum(axis=1)                      # (N, d1, ...)
            terms += eps / classes * np.where(counted, smooth, 0)
        self._cache = logp, label, (label_weight, counted, w)
        return self._reduce(terms, self._denominator_of(label_weight, counted))

    def _grad(self):
        logp, label, weighting = self._saved()
        grad = np.exp(logp)                                  # softmax(x_i)   (N, C, d1, ...)
        if weighting is None:
            grad[_label_index(label)] -= 1                   # softmax(x_i) - onehot(t_i)
            return grad
        label_weight, counted, w = weighting
        eps, classes = self.label_smoothing, logp.shape[1]
        # (sum_c q_i[c]) softmax(x_i) - q_i, q_i the smoothed, weighted target (0 if ignored):
        # sum_c q_i[c] = (1 - eps) w[t_i] + eps / C sum(w)
        q_total = (1 - eps) * label_weight + eps / classes * w.sum() * counted  # (N, d1, ...)
        grad *= np.expand_dims(q_total, 1)
        if eps:
            class_weight = w.reshape((1, classes) + (1,) * (logp.ndim - 2))  # (1, C, 1, ...)
            grad -= eps / classes * class_weight * np.expand_dims(counted, 1)
        # and q_i's (1 - eps) w[t_i] at the label
        grad[_label_index(label)] -= (1 - eps) * label_weight
        return grad


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of log-probabilities, with torch's class weights:

    logp (N, C) or (N, C, d1, ...) (LogSoftmax on axis 1); labels t (N,) or (N, d1, ...):
        term_i = -w[t_i] logp_i[t_i];  0 where t_i == ignore_index
        "mean": sum_i term_i / sum_i counted_i w[t_i]   (the number of counted positions
                without weight)
        d term_i / d logp_i = -w[t_i] onehot(t_i)
    The common batch (no weight, no ignored target) takes the short path: term_i = -logp_i[t_i],
    "mean" divides by the number of positions. Input that is not log-probabilities (a value > 0,
    or a position whose exp over axis 1 does not sum to 1 within 1e-3, ignored positions
    included) raises a ValueError: add LogSoftmax before it."""
    hint = ("inputs that are not log-probabilities (add LogSoftmax, or use CrossEntropyLoss on "
            "logits), or a learning rate too large")

    def forward(self, pred, target):
        pred, target = self._checked(pred, target)
        common = self._is_common(target, pred.shape[1])
        weighting = None if common else self._weighting(pred, target)       # checks the labels
        total = np.exp(pred).sum(axis=1)                                     # (N, d1, ...)
        bad = (pred > 0).any(axis=1) | (np.abs(total - 1) > 1e-3)            # (N, d1, ...)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"row {first[0]}" if pred.ndim == 2 else f"position {first}"
            values = np.moveaxis(pred, 1, -1)[first]                          # (C,)
            raise ValueError(f"NLLLoss: expected log-probabilities (every value <= 0, each "
                             f"position's exp summing to 1 over axis 1), got {where} with max "
                             f"{values.max():.4g} and exp-sum {total[first]:.4g}; add "
                             "LogSoftmax() as the model's last layer, or use CrossEntropyLoss "
                             "on logits")
        if common:
            self._cache = pred, target, None
            return self._reduce(-_pick(pred, target))                        # term_i = -logp_i[t_i]
        label, label_weight, counted, w = weighting
        # 0 where ignored, not times 0: an ignored position's pick may be log(0) = -inf
        logp_label = np.where(counted, _pick(pred, label), 0)                # (N, d1, ...)
        terms = label_weight * -logp_label
        self._cache = pred, label, (label_weight, counted, w)
        return self._reduce(terms, self._denominator_of(label_weight, counted))

    def _grad(self):
        pred, label, weighting = self._saved()
        grad = np.zeros_like(pred)                                           # (N, C, d1, ...)
        label_weight = 1 if weighting is None else weighting[0]   # w[t_i]; 1: the common batch
        grad[_label_index(label)] = -label_weight                            # grad[i, t_i]
        return grad


class MSELoss(Loss):
    """term = (pred - target)^2 for every element;  d term / d pred = 2 (pred - target);
    "mean" divides by pred.size. pred and target: the same shape (one-hot for classification)."""

    def forward(self, pred, target):
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"MSELoss: pred and target must have the same shape, got {pred.shape} "
                             f"and {target.shape} (use one_hot(y, C) for class labels)")
        if not np.issubdtype(pred.dtype, np.floating):
            pred = pred.astype(np.float64)            # Python lists of ints: compute in float
        self._cache = diff = pred - target.astype(pred.dtype, copy=False)
        return self._reduce(diff * diff)

    def _grad(self):
        return 2 * self._saved()


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, sigmoid fused in (stable for any x), one term per element:

        term = max(x, 0) - x t + log(1 + exp(-|x|))  =  -t log s(x) - (1 - t) log(1 - s(x))
        d term / d x = sigmoid(x) - t;  "mean" divides by x.size
    pred: logits (N,) or (N, 1); target: the same shape, values in [0, 1] (labels 0/1).
    """

    def forward(self, pred, target):
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.ndim == 0 or pred.shape[1:] not in ((), (1,)):
            raise ValueError(f"BCEWithLogitsLoss: expected logits (N,) or (N, 1) and targets of "
                             f"the same shape, got {pred.shape} and {target.shape}")
        t = target.astype(pred.dtype, copy=False)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"BCEWithLogitsLoss: targets must be in [0, 1], "
                             f"got {t.min()}..{t.max()}")
        e = np.exp(-np.abs(pred))
        self._cache = np.where(pred >= 0, 1, e) / (1 + e) - t            # sigmoid(x) - t
        return self._reduce(np.maximum(pred, 0) - pred * t + np.log1p(e))

    def _grad(self):
        return self._saved().copy()


# ════════════════════════════════════════════════════════════════════════════
# Optimizers
# ════════════════════════════════════════════════════════════════════════════

class Optimizer:
    """Base class, as torch.optim.Optimizer: `step()` updates every parameter in place from its
    `.grad`.

    params: parameters (any objects with `.data` and `.grad` arrays), or torch-style groups
    [{"params": [...], "lr": 0.1, ...}, ...]; a hyper-parameter a group does not give takes the
    constructor's value. `param_groups` is that list of dicts (schedulers write their "lr");
    `state[p]` is parameter p's state (arrays in p's dtype, created at its first step).
    Subclasses define `update(p, state, group)`, the rule for one parameter.
    """

    def __init__(self, params, defaults):
        self.defaults, self.state, self.param_groups = defaults, {}, []
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: expected a non-empty iterable of parameters, "
                             "got an empty one")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add {"params": [...], hyper-parameter: value, ...}; missing values come from the
        defaults."""
        name, params = type(self).__name__, group["params"]
        params = [params] if _is_parameter(params) else list(params)
        group = {**self.defaults, **group, "params": params}
        for p in group["params"]:
            if not (_is_parameter(p) and isinstance(p.data, np.ndarray)
                    and isinstance(p.grad, np.ndarray)):
                raise TypeError(f"{name}: expected parameters with .data and .grad arrays, "
                                f"got {type(p).__name__}")
        if ({id(p) for p in group["params"]}
                & {id(p) for g in self.param_groups for p in g["params"]}):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        for k, v in group.items():  # torch's checks: every number >= 0, betas in [0, 1)
            if k == "betas":
                for i, b in enumerate(v):
                    if not 0.0 <= b < 1.0:
                        raise ValueError(f"{name}: expected betas[{i}] in [0, 1), got {b}")
                group[k] = tuple(map(float, v))  # plain floats: NumPy scalars promote float32 math
            elif k != "params" and not isinstance(v, bool):
                if not v >= 0.0:
                    raise ValueError(f"{name}: expected {k} >= 0, got {v}")
                group[k] = float(v)
        self.param_groups.append(group)

    @property
    def lr(self):
        """The learning rate, when there is a single parameter group."""
        return self._single_group("lr")["lr"]

    @lr.setter
    def lr(self, value):
        self._single_group("lr")["lr"] = float(value)

    def _single_group(self, what):
        if len(self.param_groups) != 1:
            raise AttributeError(f"{type(self).__name__} has {len(self.param_groups)} parameter "
                                 f"groups: use param_groups[i][{what!r}]")
        return self.param_groups[0]

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad[...] = 0

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                self.update(p, self.state.setdefault(p, {}), group)

    @staticmethod
    def _l2(p, weight_decay):
        """g = grad + weight_decay * p: torch's (coupled) L2 weight decay."""
        return p.grad + weight_decay * p.data if weight_decay else p.grad

    def __repr__(self):
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return f"{type(self).__name__}({groups[0] if len(groups) == 1 else groups})"

    def state_dict(self):
        """{"state": {index: {name: array or int}}, "param_groups": [{..., "params": [indices]}]}:
        torch's structure, parameters numbered in order across groups (copies of the arrays)."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**g, "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: {k: np.array(v) if isinstance(v, np.ndarray) else v
                                for k, v in s.items()}
                 for p, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore a state_dict() of this optimizer, or a torch.optim optimizer's (tensors are
        converted; torch-only options must be off). Group sizes must match."""
        name, groups = type(self).__name__, state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{name}.load_state_dict: parameter groups of sizes "
                             f"{[len(g['params']) for g in groups]}, expected "
                             f"{[len(g['params']) for g in self.param_groups]}")
        params = {}
        for own, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k == "params":
                    params.update(zip(v, own["params"]))
                elif k in own or k in _SCHEDULER_GROUP_KEYS:
                    own[k] = tuple(map(float, v)) if k == "betas" else _plain(v)
                elif v and not (k == "decoupled_weight_decay"
                                and getattr(self, "decoupled", False)):
                    raise ValueError(f"{name}.load_state_dict: torch option {k}={v} "
                                     "is not supported")
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: int(_plain(v)) if k == "step" else _plain(v).astype(p.data.dtype)
                             for k, v in s.items()}


_SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def _plain(v):
    """A torch tensor as a NumPy array (a 0-d one as a Python float), a NumPy scalar as a Python
    number (NumPy 2 computes float32 * np.float64 in float64); anything else unchanged."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
        return float(v) if v.ndim == 0 else v
    return v.item() if isinstance(v, np.generic) else v


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (PyTorch's form):

        g = grad + weight_decay * p
        b = g                                   at the first step (no dampening)
        b = momentum * b + (1 - dampening) * g  afterwards
        g = g + momentum * b  if nesterov  else  b        (when momentum != 0)
        p = p - lr * g
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True expects momentum > 0 and dampening = 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def update(self, p, state, group):
        g, mu = self._l2(p, group["weight_decay"]), group["momentum"]
        if mu:
            b = state.get("momentum_buffer")
            if b is None:
                b = state["momentum_buffer"] = g.copy()
            else:
                b *= mu
                b += (1 - group["dampening"]) * g
            g = g + mu * b if group["nesterov"] else b
        p.data -= group["lr"] * g


class RMSprop(Optimizer):
    """RMSprop (Hinton), PyTorch's form, every buffer starting at zero:

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g²
        centered:  m = alpha * m + (1 - alpha) * g,  denom = sqrt(v - m²) + eps
        else:      denom = sqrt(v) + eps
        momentum > 0:  b = momentum * b + g / denom,  p = p - lr * b
        else:          p = p - lr * g / denom
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def update(self, p, state, group):
        alpha, mu = group["alpha"], group["momentum"]
        if not state:
            state.update(step=0, square_avg=np.zeros_like(p.data))
            if mu > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        g, v = self._l2(p, group["weight_decay"]), state["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if group["centered"]:
            m = state["grad_avg"]
            m *= alpha
            m += (1 - alpha) * g
            denom = np.sqrt(v - m * m) + group["eps"]
        else:
            denom = np.sqrt(v) + group["eps"]
        if mu > 0:
            b = state["momentum_buffer"]
            b *= mu
            b += g / denom
            p.data -= group["lr"] * b
        else:
            p.data -= group["lr"] * g / denom


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), PyTorch's form, at step t = 1, 2, ...:

        g = grad + weight_decay * p
        s = s + g²                       (s starts at initial_accumulator_value)
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def update(self, p, state, group):
        if not state:
            state.update(step=0, sum=np.full_like(p.data, group["initial_accumulator_value"]))
        state["step"] += 1
        g, s, t = self._l2(p, group["weight_decay"]), state["sum"], state["step"]
        s += g * g
        p.data -= group["lr"] / (1 + (t - 1) * group["lr_decay"]) * g / (np.sqrt(s) + group["eps"])


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), PyTorch's form, at step t = 1, 2, ...:

        g = grad + weight_decay * p                 (AdamW: p = p * (1 - lr * weight_decay) instead)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g²
        amsgrad:  vmax = max(vmax, v), and vmax replaces v below
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """
    decoupled = False     # AdamW: weight decay shrinks p directly instead of entering g

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def update(self, p, state, group):
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        t = state["step"] = state["step"] + 1
        if self.decoupled:
            p.data *= 1 - lr * wd
        g = p.grad if self.decoupled else self._l2(p, wd)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + group["eps"]
        p.data -= lr / (1 - beta1 ** t) * m / denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.

        p = p * (1 - lr * weight_decay)        first, then Adam's update with g = grad
    """
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):

        p = p * (1 - lr * weight_decay)                       (decoupled, as AdamW)
        p = p - lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g                       (m starts at zero)
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def update(self, p, state, group):
        lr, (beta1, beta2) = group["lr"], group["betas"]
        if not state:
            state["exp_avg"] = np.zeros_like(p.data)
        g, m = p.grad, state["exp_avg"]
        if group["weight_decay"]:
            p.data *= 1 - lr * group["weight_decay"]
        p.data -= lr * np.sign(beta1 * m + (1 - beta1) * g)
        m *= beta2
        m += (1 - beta2) * g


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale every gradient in place so that their joint norm is at most max_norm, as torch:

        total = (sum_p ||grad_p||^norm_type)^(1/norm_type)   (max |grad| for norm_type inf)
        grad_p *= min(1, max_norm / (total + 1e-6))
    Returns total, the norm before clipping (a float)."""
    grads = [p.grad for p in parameters]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    norms = [np.linalg.norm(g.ravel(), norm_type) for g in grads]
    total = float(max(norms) if norm_type == math.inf else np.linalg.norm(norms, norm_type))
    coef = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g *= coef
    return total


# ════════════════════════════════════════════════════════════════════════════
# Learning-rate schedulers
# ════════════════════════════════════════════════════════════════════════════

class LRScheduler:
    """Base class, as torch's: `step()` sets every parameter group's "lr" to `get_lr()`.

    The constructor records each group's starting lr as its "initial_lr" (`base_lrs`) and takes
    the first step (`last_epoch` becomes 0), so the lr equals torch's from the start. Most
    schedules below are torch's recursive ("chainable") forms, `_lr(lr, base_lr)` per group, so
    the floats match torch's exactly. `step_every` tells `Sequential.fit` when to step:
    "epoch" (the default) or "batch"; `needs_metric` that step takes a metric (val_loss).

    A schedule of your own: subclass, set your attributes BEFORE `super().__init__` (which
    already calls get_lr), and return one lr per group from get_lr() (one number will do for a
    single group), e.g. warm-up then cosine, stepped after every batch:

        class WarmupCosine(tn.LRScheduler):
            step_every = "batch"

            def __init__(self, optimizer, warmup, total):
                self.warmup, self.total = warmup, total
                super().__init__(optimizer)

            def get_lr(self):
                t = self.last_epoch
                f = (t + 1) / self.warmup if t < self.warmup else \\
                    0.5 * (1 + math.cos(math.pi * (t - self.warmup) / (self.total - self.warmup)))
                return [base * f for base in self.base_lrs]
    """
    step_every, needs_metric = "epoch", False

    def __init__(self, optimizer):
        self._attach(optimizer)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        try:
            self.step()
        except AttributeError as e:
            if e.obj is not self:
                raise
            raise AttributeError(f"{type(self).__name__}: get_lr reads self.{e.name}, which is "
                                 "not set yet: set your attributes BEFORE "
                                 "super().__init__(optimizer), which already calls get_lr") from e

    def _attach(self, optimizer):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer

    def get_lr(self):
        """The lr of every group at step `last_epoch`: by default `_lr(current lr, base lr)` per
        group."""
        return [self._lr(group["lr"], base)
                for group, base in zip(self.optimizer.param_groups, self.base_lrs)]

    def step(self):
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _set_lrs(self, lrs):
        groups, name = self.optimizer.param_groups, type(self).__name__
        if np.ndim(lrs) == 0:                       # one number: fine for a single group
            if len(groups) != 1:
                raise ValueError(f"{name}: get_lr returned one number for {len(groups)} parameter "
                                 "groups: return one lr per parameter group (a list)")
            lrs = [lrs]
        if len(lrs) != len(groups):
            raise ValueError(f"{name}: get_lr returned {len(lrs)} lrs for {len(groups)} parameter "
                             "groups: return one lr per parameter group")
        for group, lr in zip(groups, lrs):
            group["lr"] = float(lr)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _restart(self):
        """Go back to step 0 (SequentialLR at a milestone), with the closed form where torch has
        one."""
        self.last_epoch = 0
        closed = getattr(self, "_closed_form", None)
        self._set_lrs([closed(base) for base in self.base_lrs] if closed else self.get_lr())

    def get_last_lr(self):
        """The lr of every parameter group after the last step."""
        return self._last_lr

    def state_dict(self):
        """Every attribute but the optimizer (and functions), as torch's."""
        return {k: v for k, v in vars(self).items()
                if k not in ("optimizer", "lr_lambdas", "schedulers")}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch); lr_lambda: a function of the step, or one per group."""

    def __init__(self, optimizer, lr_lambda):
        n = len(optimizer.param_groups)
        self.lr_lambdas = (list(lr_lambda) if isinstance(lr_lambda, (list, tuple))
                           else [lr_lambda] * n)
        if len(self.lr_lambdas) != n:
            raise ValueError(f"{type(self).__name__}: expected {n} lr_lambdas, "
                             f"got {len(self.lr_lambdas)}")
        super().__init__(optimizer)

    def get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(LambdaLR):
    """lr = lr * lr_lambda(epoch) for epoch >= 1 (unchanged at the first step)."""

    def get_lr(self):
        e, groups = self.last_epoch, self.optimizer.param_groups
        return [g["lr"] * f(e) if e > 0 else g["lr"] for f, g in zip(self.lr_lambdas, groups)]

    def _restart(self):                     # at a SequentialLR milestone torch multiplies by f(0)
        self.last_epoch = 0
        self._set_lrs([g["lr"] * f(0)
                       for f, g in zip(self.lr_lambdas, self.optimizer.param_groups)])


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def _lr(self, lr, base):
        e = self.last_epoch
        return lr * self.gamma if e > 0 and e % self.step_size == 0 else lr

    def _closed_form(self, base):
        return base * self.gamma ** (self.last_epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch); a repeated milestone counts
    twice."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer)

    def _lr(self, lr, base):
        return lr * self.gamma ** self.milestones.count(self.last_epoch)

    def _closed_form(self, base):
        return base * self.gamma ** bisect_right(self.milestones, self.last_epoch)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def _lr(self, lr, base):
        return lr * self.gamma if self.last_epoch > 0 else lr

    def _closed_form(self, base):
        return base * self.gamma ** self.last_epoch


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

    def _lr(self, lr, base):
        e, s, f = self.last_epoch, self.start_factor, self.end_factor
        if e == 0:
            return lr * s
        if e > self.total_iters:
            return lr
        return lr * (1.0 + (f - s) / (self.total_iters * s + (e - 1) * (f - s)))

    def _closed_form(self, base):
        s, f = self.start_factor, self.end_factor
        return base * (s + (f - s) * min(self.total_iters, self.last_epoch) / self.total_iters)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, continued past T_max
    (it rises again). PyTorch's recursive form:

        lr = eta_min + (lr - eta_min) * (1 + cos(pi * e / T_max)) / (1 + cos(pi * (e - 1) / T_max))
        and lr += (base_lr - eta_min) * (1 - cos(pi / T_max)) / 2 at e = T_max + 1 (mod 2 T_max).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def _lr(self, lr, base):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if e == 0:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2
        return ((1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (lr - lo) + lo)

    def _closed_form(self, base):
        return (self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter 2017):
    lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2.

    T_cur counts the steps since the last restart; at T_cur = T_i it restarts
    from 0 and the period becomes T_i * T_mult (T_i starts at T_0).
    """

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0):
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected a positive integer T_0, "
                             f"got {T_0!r}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"CosineAnnealingWarmRestarts: expected an integer T_mult >= 1, "
                             f"got {T_mult!r}")
        self.T_0, self.T_i, self.T_mult, self.eta_min, self.T_cur = T_0, T_0, T_mult, eta_min, -1
        super().__init__(optimizer)

    def step(self):
        self.T_cur += 1
        if self.T_cur >= self.T_i:
            self.T_cur, self.T_i = self.T_cur - self.T_i, self.T_i * self.T_mult
        super().step()

    def _lr(self, lr, base):
        return (self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2)


class OneCycleLR(LRScheduler):
    """1cycle policy (Smith & Topin 2019), stepped after every batch, PyTorch's phases.

    Per group: initial_lr = max_lr / div_factor, min_lr = initial_lr / final_div_factor,
    T = total_steps (or epochs * steps_per_epoch). Each phase anneals (cos or linear) from
    a start to an end value as pct = (step - phase start) / (phase end - phase start) goes
    from 0 to 1:
        two-phase:   initial_lr -> max_lr up to step pct_start*T - 1, then max_lr -> min_lr
                     up to T - 1
        three_phase: initial_lr -> max_lr up to pct_start*T - 1, max_lr -> initial_lr up to
                     2*pct_start*T - 2, then initial_lr -> min_lr up to T - 1
        cos: end + (start - end) * (1 + cos(pi * pct)) / 2;   linear: start + (end - start) * pct
    cycle_momentum (default, as in PyTorch) anneals SGD/RMSprop "momentum", or Adam/AdamW/Lion
    "betas"[0], inversely: max_momentum -> base_momentum while the lr rises, and back
    (the third phase keeps max_momentum). max_lr may be one value per group.
    """
    step_every = "batch"

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False):
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
            raise ValueError(f"OneCycleLR: expected anneal_strategy 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        groups = optimizer.param_groups
        self.use_beta1 = "betas" in groups[0]
        if cycle_momentum and not (self.use_beta1 or "momentum" in groups[0]):
            raise ValueError(f"OneCycleLR: cycle_momentum=True expects an optimizer with momentum "
                             f"or betas, got {type(optimizer).__name__} "
                             f"(pass cycle_momentum=False)")
        self.total_steps, self.anneal_strategy, self.cycle_momentum = (total_steps, anneal_strategy,
                                                                       cycle_momentum)
        max_lrs = max_lr if isinstance(max_lr, (list, tuple)) else [max_lr] * len(groups)
        for group, top in zip(groups, max_lrs):
            group.update(initial_lr=float(top / div_factor), max_lr=float(top),
                         min_lr=float(top / div_factor / final_div_factor),
                         max_momentum=float(max_momentum), base_momentum=float(base_momentum))
        # phases: (end step, start lr, end lr, start momentum, end momentum): group keys
        T = total_steps
        self.phases = [(float(pct_start * T) - 1, "initial_lr", "max_lr", "max_momentum",
                        "base_momentum")]
        if three_phase:
            self.phases += [(float(2 * pct_start * T) - 2, "max_lr", "initial_lr", "base_momentum",
                             "max_momentum"),
                            (T - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self.phases += [(T - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        super().__init__(optimizer)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {t} times, but total_steps is "
                             f"{self.total_steps}")
        start = 0.0
        for i, (end, lr_a, lr_b, m_a, m_b) in enumerate(self.phases):
            if t <= end or i == len(self.phases) - 1:
                pct = (t - start) / (end - start)
                break
            start = end
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._anneal(group[lr_a], group[lr_b], pct))
            if self.cycle_momentum:
                m = self._anneal(group[m_a], group[m_b], pct)
                if self.use_beta1:
                    group["betas"] = (m, group["betas"][1])
                else:
                    group["momentum"] = m
        return lrs


class SequentialLR(LRScheduler):
    """Run `schedulers` one after another: schedulers[i] from step milestones[i - 1] on, restarted
    at its step 0 there (e.g. LinearLR warm-up for 5 steps, then CosineAnnealingLR: milestones=[5]).
    The schedulers must share the optimizer; their own first steps are undone, as in torch."""

    def __init__(self, optimizer, schedulers, milestones):
        self._attach(optimizer)
        if not schedulers or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected one more scheduler than milestones, "
                             f"got {len(schedulers)} schedulers and {len(milestones)} milestones")
        for i, s in enumerate(schedulers):
            if s.optimizer is not optimizer or s.needs_metric:
                raise ValueError(f"SequentialLR: scheduler {i} ({type(s).__name__}) must share "
                                 "the optimizer and take no metric")
        self.schedulers, self.milestones, self.last_epoch = list(schedulers), list(milestones), 0
        self.step_every = schedulers[0].step_every
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for s in schedulers:
            s.last_epoch -= 1
        first = self.schedulers[bisect_right(self.milestones, 0)]
        first.step()
        self._last_lr = first.get_last_lr()

    def step(self):
        self.last_epoch += 1
        i = bisect_right(self.milestones, self.last_epoch)
        if i > 0 and self.milestones[i - 1] == self.last_epoch:
            self.schedulers[i]._restart()
        else:
            self.schedulers[i].step()
        self._last_lr = self.schedulers[i].get_last_lr()

    def state_dict(self):
        return {**super().state_dict(), "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        for s, d in zip(self.schedulers, state_dict.pop("schedulers")):
            s.load_state_dict(d)
        super().load_state_dict(state_dict)


class ReduceLROnPlateau(LRScheduler):
    """Multiply lr by `factor` when the metric passed to `step(metric)` stops improving.

    A metric improves on the best so far when (mode min / max, threshold_mode rel / abs)
    metric < best * (1 - threshold) / metric > best * (1 + threshold) (rel),
    metric < best - threshold / metric > best + threshold (abs).
    After more than `patience` epochs without improvement, every group's lr = max(lr * factor,
    min_lr) (skipped if that changes lr by eps or less); then `cooldown` epochs are not counted.
    No initial step: the lr is left unchanged until the first reduction.
    """
    needs_metric = True

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        self._attach(optimizer)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: expected factor < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: expected mode 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: expected threshold_mode 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        n = len(optimizer.param_groups)
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * n
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.eps = threshold_mode, cooldown, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _is_better(self, a, best):
        if self.threshold_mode == "rel":
            return (a < best * (1 - self.threshold) if self.mode == "min"
                    else a > best * (self.threshold + 1))
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
            for group, low in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, low)
                if group["lr"] - new > self.eps:
                    group["lr"] = float(new)
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


# ════════════════════════════════════════════════════════════════════════════
# Model, Sequential, History and callbacks
# ════════════════════════════════════════════════════════════════════════════

class Callback:
    """Base class of fit's callbacks, as Keras's: override any method; `self.model` is the model,
    `self.params` {"verbose", "epochs", "steps"}.

    Called in this order: on_train_begin; per epoch on_epoch_begin, per batch
    on_train_batch_begin/end (which call on_batch_begin/end, as in Keras), then, with
    validation data, on_test_begin, on_test_batch_begin/end, on_test_end, and on_epoch_end with
    the epoch's logs (loss, accuracy, val_loss, val_accuracy, lr: keys a callback adds reach the
    callbacks after it and History); on_train_end gets the last epoch's logs. Train batch logs:
    {"loss": that batch's loss, "size": its samples, "accuracy": that batch's}.
    Setting `self.model.stop_training = True` ends fit after the current batch (the epoch then
    ends as usual: validation, on_epoch_end).
    """
    model = params = None

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass

    def on_train_end(self, logs=None): pass

    def on_epoch_begin(self, epoch, logs=None): pass

    def on_epoch_end(self, epoch, logs=None): pass

    def on_batch_begin(self, batch, logs=None): pass

    def on_batch_end(self, batch, logs=None): pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs=None): pass

    def on_test_end(self, logs=None): pass

    def on_test_batch_begin(self, batch, logs=None): pass

    def on_test_batch_end(self, batch, logs=None): pass


class History(Callback):
    """What fit returns (also `model.history`): `history[key]` has one value per epoch (as Keras's
    History), `epoch` the epoch numbers, `params` {"verbose", "epochs", "steps"}, and
    `batch_loss` the training loss of every optimizer step, in order."""

    def __init__(self):
        self.epoch, self.history, self.batch_loss = [], {}, []

    def on_batch_end(self, batch, logs=None):
        self.batch_loss.append(logs["loss"])

    def on_epoch_end(self, epoch, logs=None):
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


def _monitor_is_better(mode, monitor):
    """Keras's mode "auto": a metric is better when larger if it is an accuracy, else smaller."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"expected mode 'auto', 'min' or 'max', got {mode!r}")
    return mode == "max" or (mode == "auto" and "acc" in monitor)


def _monitored(callback, logs):
    """logs[callback.monitor], or a KeyError naming the callback and the keys it could use."""
    value = logs.get(callback.monitor)
    if value is None:
        raise KeyError(f"{type(callback).__name__}: no {callback.monitor!r} in the logs; "
                       f"available: {sorted(logs)}")
    return value


class EarlyStopping(Callback):
    """Stop training when `monitor` has not improved for `patience` epochs, as Keras 3's.

    Improved: better than the best so far by more than min_delta (min: value < best - min_delta;
    max: value > best + min_delta; a tie is no improvement; the first epoch always improves).
    Each epoch without improvement adds 1 to `wait`; an improvement resets it to 0 only if the
    value also beats `baseline` (when given). When wait >= patience (and not at the first
    epoch) it sets model.stop_training. Epochs before `start_from_epoch` are not watched.
    restore_best_weights=True: at the end of training (stopped or not) the weights of the best
    epoch are loaded back. `best_epoch` and `stopped_epoch` are 0-based, as Keras's;
    verbose=1 prints when it stopped and restored.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.verbose, self.baseline, self.start_from_epoch = verbose, baseline, start_from_epoch
        self.restore_best_weights, self.larger = (restore_best_weights,
                                                  _monitor_is_better(mode, monitor))

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best = self.best_weights = None

    def _improved(self, value, reference):
        if reference is None:
            return True
        if self.larger:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(self, logs)
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(value, self.baseline):
                self.wait = 0
        elif self.wait >= self.patience and epoch > 0:
            self.stopped_epoch, self.model.stop_training = epoch, True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (Sequential.save) after every epoch, as Keras's ModelCheckpoint.

    filepath may hold fields of the epoch (1-based) and its logs, e.g. "model-{epoch:02d}-
    {val_loss:.3f}.npz". save_best_only: save only when `monitor` beats the best so far.
    save_weights_only: write only the state_dict() arrays (load them back with
    `model.load_weights(path)`); a tn.Model of your own has no save() and needs it.
    verbose=1 prints Keras's line for each epoch.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto"):
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.larger, self.best = _monitor_is_better(mode, monitor), None

    def on_train_begin(self, logs=None):
        if not self.save_weights_only and not hasattr(self.model, "save"):
            name = type(self.model).__name__
            raise TypeError(f"ModelCheckpoint: {name} has no save() (a tn.Model of your own "
                            f"keeps no architecture); pass save_weights_only=True and load "
                            f"the file back with {name}(...).load_weights(path)")

    def on_epoch_end(self, epoch, logs=None):
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = _monitored(self, logs)
            best = "None" if self.best is None else f"{self.best:.5f}"
            better = self.best is None or (value > self.best if self.larger else value < self.best)
            if not better:
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {best}")
                return
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}, "
                      f"saving model to {path}")
            self.best = value
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            with _atomic_open(path) as f:
                np.savez(f, **self.model.state_dict())
        else:
            self.model.save(path)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: finished saving model to {path}")


class BlasThreads(Callback):
    """Train with whichever BLAS thread count (of `counts`) is fastest here and now.

    OpenBLAS's idle threads spin: on a quiet 2-core machine 2 threads train ~1.3x faster than
    1, but with a core busy with another program they are 2-3x slower, and unevenly: most
    batches are fast, but a batch stalls (up to ~50 ms) whenever the scheduler parks a BLAS
    thread on the busy core. So the first batches of training take turns with each count
    (1, 2, 2, 1, 1, 2), `turns` turns each (fewer once a count's mean is `clear` times another's),
    a turn lasting `seconds` of timed batches (its first batch wakes the threads and is not
    timed), and the count with the least mean time per batch is kept, through threadpoolctl,
    for the rest of the process (`chosen`). The mean, as an epoch's time is: a median would
    hide the stalls. Without threadpoolctl installed it does nothing. `clock` (seconds) is
    time.perf_counter; a test passes its own to feed the timings.
    """

    def __init__(self, counts=(1, 2), turns=3, seconds=0.02, clear=1.5, clock=time.perf_counter):
        self.counts, self.turns, self.seconds, self.clear = tuple(counts), turns, seconds, clear
        self.clock = clock
        self.chosen, self.queue, self.count = None, [], None

    def on_train_begin(self, logs=None):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        self.limit = lambda n: threadpool_limits(n, user_api="blas")
        # 1, 2, 2, 1, 1, 2, ...: alternating order, so training's early speed-up favours neither
        self.queue = [n for i in range(self.turns)
                      for n in (self.counts if i % 2 == 0 else self.counts[::-1])]
        self.total, self.timed = dict.fromkeys(self.counts, 0.0), dict.fromkeys(self.counts, 0)
        self._next_turn()

    def _next_turn(self):
        mean = self._means()
        if not self.queue or (len(mean) > 1
                              and max(mean.values()) > self.clear * min(mean.values())):
            return self._choose()  # all turns done, or one count already clearly slower
        self.count, self.turn_time, self.warm = self.queue.pop(0), 0.0, False
        self.limit(self.count)

    def on_batch_begin(self, batch, logs=None):
        self.start = self.clock()

    def on_batch_end(self, batch, logs=None):
        if self.count is None:
            return
        seconds = self.clock() - self.start
        if not self.warm:                   # the turn's first batch wakes the threads: not timed
            self.warm = True
            return
        self.total[self.count] += seconds
        self.timed[self.count] += 1
        self.turn_time += seconds
        if self.turn_time >= self.seconds:
            self._next_turn()

    def on_train_end(self, logs=None):
        if self.count is not None:  # training ended during the turns: choose from what was timed
            self._choose()

    def _means(self):                         # {count: mean seconds per timed batch}
        return {n: self.total[n] / self.timed[n] for n in self.counts if self.timed[n]}

    def _choose(self):
        mean = self._means()
        self.chosen = min(mean, key=mean.get) if mean else self.counts[-1]
        self.queue, self.count = [], None
        self.limit(self.chosen)


def _in_notebook():
    """True inside a Jupyter kernel (a notebook, Colab): IPython runs, and its shell has a kernel
    (not the terminal's IPython; not a process that merely imported ipykernel)."""
    ipython = sys.modules.get("IPython")
    return getattr(ipython and ipython.get_ipython(), "kernel", None) is not None


class ProgressLog(Callback):
    """fit's output. verbose=2: one line per epoch on stdout ("epoch 3/10 - loss: ... - lr: ...");
    0: nothing. verbose=1: the lines and, while an epoch runs, a progress bar with the running
    loss and accuracy: on a terminal tqdm's bar (stderr, erased at the epoch's end); in a Jupyter
    notebook one display for the whole fit, updated in place (the lines so far, then an HTML
    <progress> bar with a text fallback; no widget, so a saved notebook keeps one output: the
    lines); elsewhere (a log) the lines only."""

    def __init__(self, verbose, epochs, steps):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.bar = self.display = None

    def on_train_begin(self, logs=None):
        if self.verbose == 1 and _in_notebook():
            from IPython.display import display
            self.lines, self.shown, self.batches = [], 0.0, None
            self.display = display(self._bundle(), raw=True, display_id=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.seen, self.sums, self.batches = epoch, 0, {}, 0
        if self.verbose == 1 and self.display is None and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False)

    def on_batch_end(self, batch, logs=None):
        if self.bar is None and self.display is None:
            return
        self.seen, self.batches = self.seen + logs["size"], self.batches + 1
        for k in ("loss", "accuracy"):
            if k in logs:
                self.sums[k] = self.sums.get(k, 0.0) + logs[k] * logs["size"]
        if self.bar is not None:
            self.bar.set_postfix(self._running(), refresh=False)
            self.bar.update()
        elif time.monotonic() - self.shown > 0.2:      # at most 5 updates a second
            self._update()

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        line = (f"epoch {epoch + 1}/{self.epochs} - "
                + " - ".join(f"{k}: {v:{'.3g' if k == 'lr' else '.4f'}}" for k, v in logs.items()))
        if self.display is not None:
            self.lines.append(line)
            self.batches = None                        # the lines only, until the next batch
            self._update()
        elif self.verbose:
            print(line, flush=True)

    def _running(self):                  # {"loss": "0.1234", ...}: the epoch's running means
        return {k: f"{v / self.seen:.4f}" for k, v in self.sums.items()}

    def _update(self):
        self.display.update(self._bundle(), raw=True)
        self.shown = time.monotonic()

    def _bundle(self):
        """The notebook display: the epoch lines, then "epoch 3/10 [=====>    ] 120/469 - loss:
        0.1234" while an epoch runs; as text and as HTML (with a <progress> bar)."""
        text, html = list(self.lines), list(self.lines)
        if self.batches is not None:
            done = round(20 * self.batches / max(self.steps, 1))
            bar = "[" + "=" * done + (">" if done < 20 else "") + " " * (19 - done) + "]"
            progress = f'<progress value="{self.batches}" max="{self.steps}"></progress>'
            counts = f"epoch {self.epoch + 1}/{self.epochs} {{}} {self.batches}/{self.steps}"
            values = "".join(f" - {k}: {v}" for k, v in self._running().items())
            text.append(counts.format(bar) + values)
            html.append(counts.format(progress) + values)
        return {"text/plain": "\n".join(text),
                "text/html": '<pre style="margin: 0">' + "\n".join(html) + "</pre>"}


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite (raised by train_step; fit adds the epoch and
    batch)."""


def _rows(x, index):
    """x[index], or each input's rows for several inputs (a tuple of arrays with one first axis)."""
    return tuple(a[index] for a in x) if isinstance(x, tuple) else x[index]


def _length(x):
    """The number of samples in x (the first input's, for several inputs)."""
    return len(x[0]) if isinstance(x, tuple) else len(x)


def _spread(weights, shape):
    """Weights per sample (N,) or per position (N, d1, ...) broadcast to `shape`: (N, ...) by
    trailing axes of 1, or (N, C, d1, ...) by a class axis 1 inserted."""
    if weights.shape == tuple(shape[:1]) + tuple(shape[2:]) and len(shape) > weights.ndim:
        weights = np.expand_dims(weights, 1)                               # (N, 1, d1, ...)
    weights = weights.reshape(weights.shape + (1,) * (len(shape) - weights.ndim))
    return np.broadcast_to(weights, shape)


def _drop_caches(layer):
    """Forget what forward saved for backward, in the layer and every sublayer (frees memory)."""
    layer._cache = None
    for _, sublayer in layer._sublayers():
        _drop_caches(sublayer)


class Model(Layer):
    """A Layer with Keras's training surface: compile / fit / evaluate / predict / train_step,
    callbacks, get_weights / set_weights / count_params, save_weights / load_weights.

    Sequential is one. For a model of your own, subclass it: hold the sublayers as attributes
    in __init__ (a Layer, or a list of Layers), write forward(x) and backward(grad) by hand
    (backward calls the sublayers' backward in reverse order), and fit it. Several inputs come
    as a tuple of arrays with one first axis, `fit((X_img, X_tokens), y)`: they are batched
    and shuffled together and forward gets the tuple (evaluate and predict too).
    """
    optimizer = loss = scheduler = history = None
    metrics, weighted_metrics, stop_training = (), (), False

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}: a Model subclass defines forward(x) "
                                  "(and backward(grad)) itself")

    def backward(self, grad):
        raise NotImplementedError(f"{type(self).__name__}: a Model subclass defines backward(grad)"
                                  " itself (the sublayers' backward, in reverse order)")

    def _dtype(self):
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    # -- Keras's names for the weights ----------------------------------------------
    @property
    def weights(self):
        """Every parameter's array, then every buffer, in state_dict() order, each array once (a
        tied weight once): the live arrays (Keras's model.weights, BatchNorm's moving statistics
        included)."""
        return [w for _, w in _once(self._state_arrays().items())]

    def get_weights(self):
        """Copies of `weights`, as Keras's get_weights()."""
        return [np.array(w) for w in self.weights]

    def set_weights(self, weights):
        """Copy a list like get_weights()'s into the model (shapes checked before any copy)."""
        name, own = type(self).__name__, _once(self._state_arrays().items())
        if len(weights) != len(own):
            raise ValueError(f"{name}.set_weights: expected {len(own)} arrays (as get_weights "
                             f"returns), got {len(weights)}")
        for (key, w), new in zip(own, weights):
            if np.shape(new) != w.shape:
                raise ValueError(f"{name}.set_weights: {key!r} has shape {np.shape(new)}, "
                                 f"expected {w.shape}")
        for (_, w), new in zip(own, weights):
            w[...] = _plain(new)

    def count_params(self):
        """Number of values in `weights`, as Keras's: a tied weight counts once, and buffers such
        as BatchNorm's running statistics count too (sum(p.data.size for p in
        model.parameters()) counts the learnable)."""
        return sum(w.size for w in self.weights)

    def save_weights(self, path):
        """The state_dict() in one .npz (torch's keys), written atomically."""
        with _atomic_open(path) as f:
            np.savez(f, **self.state_dict())

    def load_weights(self, path):
        """Load an .npz of save_weights (or of save, save_checkpoint) into the model, in place;
        keys and shapes must match (see load_state_dict)."""
        where = f"{type(self).__name__}.load_weights: {path}"
        with open(path, "rb") as fh:              # a missing file raises FileNotFoundError
            try:
                with np.load(fh, allow_pickle=False) as f:
                    arrays = dict(f)
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
                raise ValueError(f"{where} is not an .npz of weights ({e})") from None
        # a model file's architecture, a checkpoint's optimizer: not weights
        state = {k: v for k, v in arrays.items() if not k.startswith("__") and "/" not in k}
        try:
            return self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    # -- training ---------------------------------------------------------------
    def compile(self, optimizer, loss, metrics=("accuracy",), scheduler=None,
                weighted_metrics=()):
        """Set the optimizer, the loss (a Loss instance), the metrics and an optional LR scheduler.

        metrics: "accuracy", or "acc" (Keras's alias: the logs then say "acc", "val_acc").
        weighted_metrics: the same names, weighted by fit's sample_weight or class_weight, as
        Keras's (`metrics` are not weighted); one also in `metrics` is logged "weighted_accuracy".
        The scheduler is a tn.LRScheduler, or any object with step() and its two attributes
        `step_every` ("epoch" or "batch") and `needs_metric` (True: step(val_loss)).
        """
        name = type(self).__name__
        if not isinstance(loss, Loss):
            raise TypeError(f"{name}.compile: loss must be a Loss instance such as "
                            f"CrossEntropyLoss(), got {loss!r}")
        if getattr(loss, "reduction", "mean") == "none":
            raise ValueError(f"{name}.compile: {loss!r} gives one loss per sample; fit "
                             "needs one number per batch: use reduction='mean' (the default) "
                             "or 'sum'")
        unknown = (set(metrics) | set(weighted_metrics)) - {"accuracy", "acc"}
        if unknown:
            raise ValueError(f"{name}.compile: unknown metrics {sorted(unknown)}; "
                             f"known: ['accuracy'] (or its alias 'acc')")
        if scheduler is not None:
            missing = [a for a in ("step_every", "needs_metric") if not hasattr(scheduler, a)]
            if missing:
                raise TypeError(f"{name}.compile: the scheduler {type(scheduler).__name__} has "
                                f"no {' and no '.join(missing)}; subclass tn.LRScheduler, or set "
                                f"step_every = 'epoch' or 'batch' and needs_metric = False")
            if scheduler.step_every not in ("epoch", "batch"):
                raise ValueError(f"{name}.compile: the scheduler's step_every must be 'epoch' "
                                 f"or 'batch', got {scheduler.step_every!r}")
        self.optimizer, self.loss, self.metrics = optimizer, loss, tuple(metrics)
        self.weighted_metrics, self.scheduler = tuple(weighted_metrics), scheduler
        return self

    def train_step(self, x, y, sample_weight=None):
        """One update on the batch (x, y) -> (loss, output). fit calls it for every batch;
        override it to change a step. The steps:
        1. forward: out = model(x)
        2. loss = loss(out, y), or with sample weights Keras's weighted mean (see _weighted_loss)
           (a NaN or infinite loss stops training with the usual causes)
        3. zero every parameter's .grad
        4. backward: every layer adds into its parameters' .grad
        5. optimizer step
        6. the scheduler's step, if it steps after every batch."""
        out = self.forward(x)
        if sample_weight is None:
            loss, grad_out = self.loss.forward(out, y), None
        else:
            loss, grad_out = self._weighted_loss(out, y, sample_weight)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} "
                                f"(lr {self.optimizer.param_groups[0]['lr']:g}); "
                                f"usual causes for {type(self.loss).__name__}: {self.loss.hint}")
        self.optimizer.zero_grad()
        self.backward(self.loss.backward() if grad_out is None else grad_out)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler.step_every == "batch":
            self.scheduler.step()
        return loss, out

    def _weighted_loss(self, out, y, weights, need_grad=True):
        """Keras's loss with sample weights (reduction "sum_over_batch_size"): the loss's terms
        (its reduction="none": one per sample, per position or per element), each times the
        weight w of its sample (or position), summed, and divided by their number n, not by
        the sum of the weights:
            loss = sum_i w_i term_i / n        (the loss's reduction "mean"; n counts the terms
                                                whose target is not its ignore_index, as Keras's
                                                mask; 0 when n = 0)
            loss = sum_i w_i term_i            ("sum")
            dloss/dout = the loss's backward(grad) with grad_i = w_i / n   (w_i for "sum")
        -> (loss, dloss/dout or None)."""
        terms_loss = copy.copy(self.loss)              # the same loss, giving its terms
        terms_loss.reduction = "none"
        terms = terms_loss.forward(out, y)                          # (N, ...)
        if np.ndim(terms) == 0:
            raise TypeError(f"{type(self).__name__}.fit: sample_weight and class_weight need the "
                            f"loss's terms (reduction='none'); {self.loss!r} returned one number")
        w = _spread(weights, terms.shape).astype(terms.dtype)      # (N, ...) terms' shape
        ignore_index = getattr(self.loss, "ignore_index", None)
        n = terms.size if ignore_index is None else int((y != ignore_index).sum())
        divisor = max(n, 1) if self.loss.reduction == "mean" else 1
        loss = float((w * terms).sum() / divisor)
        return loss, terms_loss.backward(w / divisor) if need_grad else None

    def fit(self, x, y, batch_size=None, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None,
            initial_epoch=0):
        """Train on (x, y) in minibatches of batch_size (None: 32), one `train_step` each, from
        epoch `initial_epoch` up to `epochs` (Keras's arguments, in Keras's order); -> History.

        x is an array, or a tuple of arrays (several inputs: batched and shuffled together).
        The scheduler steps after every batch or every epoch, as its `step_every` says; one that
        `needs_metric` (ReduceLROnPlateau) gets val_loss, or the training loss without validation
        data. `validation_split` holds out the last fraction of x before shuffling (as Keras;
        ignored when validation_data is given). history: loss, accuracy, val_loss, val_accuracy,
        and lr (the lr each epoch started with). verbose: see ProgressLog. initial_epoch resumes
        a run (e.g. after load_checkpoint): epochs are numbered from it, and a scheduler that
        counts epochs (or batches) and is behind is first stepped up to it. Validation runs in
        batches of batch_size, as Keras's (on_test_batch_* once per batch).

        Weights, as Keras's (training only; give one or the other):
        sample_weight: one weight >= 0 per sample (N,), or per target position for class-index
            targets (N, d1, ...) (Keras's temporal weights); validation_split keeps the held-out
            samples' weights for val_loss, and validation_data may be (x, y, sample_weight).
        class_weight: {class: weight}; each sample (or position) gets its target's class weight,
            1 for a class not named (the class: the label; the arg-max over axis 1 of a one-hot
            target; a 0/1 target rounded).
        The batch loss is then sum_i w_i term_i / n (see _weighted_loss) and its gradient is
        what backward gets; logged loss = those batch losses averaged by batch size, as
        Keras's. The accuracy of `metrics` is not weighted; `weighted_metrics` is:
        sum_i w_i right_i / sum_i w_i.
        """
        name = type(self).__name__
        if self.optimizer is None:
            raise RuntimeError(f"{name}.fit: call compile(optimizer, loss) first")
        batch_size = 32 if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"{name}.fit: batch_size must be >= 1 (or None: 32), "
                             f"got {batch_size}")
        x, y, weights, validation_data = self._fit_data(x, y, validation_data, validation_split,
                                                        class_weight, sample_weight)
        steps = math.ceil(_length(x) / batch_size)
        callbacks = self._callbacks(callbacks, verbose, epochs, steps)
        self._continue_schedule(initial_epoch, steps)
        self.stop_training, logs = False, {}
        _notify(callbacks, "on_train_begin", {})
        for epoch in range(initial_epoch, epochs):
            self.train()
            lr, seen, total = self.optimizer.param_groups[0]["lr"], 0, 0.0
            counts = np.zeros(4)            # accuracy: right, counted; weighted right, counted
            _notify(callbacks, "on_epoch_begin", epoch, {})
            # the rows of each batch, drawn as minibatches draws them
            for batch, (rows, yb) in enumerate(minibatches(np.arange(len(y)), y, batch_size,
                                                           shuffle)):
                xb = _rows(x, rows)
                wb = None if weights is None else weights[rows]
                _notify(callbacks, "on_train_batch_begin", batch, {})
                try:
                    if wb is None:
                        loss, out = self.train_step(xb, yb)
                    else:
                        loss, out = self.train_step(xb, yb, wb)
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f"{name}.fit: at epoch {epoch + 1}, batch {batch + 1}, "
                                        f"{e}") from None
                batch_counts = self._accuracy_counts(out, yb, wb, "fit")
                batch_logs = {"loss": loss, "size": len(yb), **self._metric_logs(batch_counts)}
                counts += batch_counts
                seen, total = seen + len(yb), total + loss * len(yb)
                _notify(callbacks, "on_train_batch_end", batch, batch_logs)
                if self.stop_training:
                    break
            logs = {"loss": total / seen, **self._metric_logs(counts)}
            if validation_data is not None:
                val_x, val_y, val_weights = validation_data
                val = self._evaluate(val_x, val_y, val_weights, batch_size, callbacks, "fit")
                logs.update({"val_" + k: v for k, v in val.items()})
            logs["lr"] = lr
            if self.scheduler is not None and self.scheduler.step_every == "epoch":
                if self.scheduler.needs_metric:
                    self.scheduler.step(logs.get("val_loss", logs["loss"]))
                else:
                    self.scheduler.step()
            _notify(callbacks, "on_epoch_end", epoch, dict(logs))   # callbacks may add keys
            if self.stop_training:
                break
        _notify(callbacks, "on_train_end", logs)
        return self.history

    def _callbacks(self, callbacks, verbose, epochs, steps):
        """fit's callbacks as Keras's CallbackList orders them: the user's, then History (so that
        it records what they add to the logs), then ProgressLog; each given the model and params."""
        callbacks = list(callbacks or [])
        for c in callbacks:
            if isinstance(c, LRScheduler):
                raise TypeError(f"{type(self).__name__}.fit: {type(c).__name__} is a scheduler, "
                                f"not a callback: pass it to compile(optimizer, loss, "
                                f"scheduler=...), which steps it")
            if not isinstance(c, Callback):
                raise TypeError(f"{type(self).__name__}.fit: callbacks must be tn.Callback "
                                f"instances, got {type(c).__name__}")
        self.history = History()
        callbacks += [self.history, ProgressLog(verbose, epochs, steps)]
        for c in callbacks:
            c.set_model(self)
            c.set_params({"verbose": verbose, "epochs": epochs, "steps": steps})
        return callbacks

    def _continue_schedule(self, initial_epoch, steps):
        """Step the scheduler up to epoch initial_epoch (batch initial_epoch * steps if it steps
        per batch), as Keras's schedules read the epoch number; one restored by load_checkpoint
        or already used by the previous fit is there already and is left alone."""
        sched = self.scheduler
        if sched is None or sched.needs_metric or initial_epoch == 0:
            return
        if not hasattr(sched, "last_epoch"):
            raise TypeError(f"{type(self).__name__}.fit: initial_epoch={initial_epoch} needs the "
                            f"scheduler's step count last_epoch; {type(sched).__name__} has none")
        while sched.last_epoch < initial_epoch * (steps if sched.step_every == "batch" else 1):
            sched.step()

    def _fit_data(self, x, y, validation_data, validation_split, class_weight, sample_weight):
        """(x, y, weights, (val_x, val_y, val_weights) or None) checked and cast; weights: one
        per sample or position, or None; validation_split takes the tail of x (and of
        sample_weight; class weights are for training only, as Keras's)."""
        name = type(self).__name__
        x, y = self._check_data("fit", x, y)
        if class_weight is not None and sample_weight is not None:
            raise ValueError(f"{name}.fit: give class_weight or sample_weight, not both (as "
                             "Keras); to combine them, multiply them into sample_weight")
        if class_weight is not None:
            weights = self._class_weights(y, class_weight)
        else:
            weights = self._sample_weights("fit", y, sample_weight)
        if validation_data is not None:                      # validation_data wins, as in Keras
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError(f"{name}.fit: validation_data must be (x, y) or (x, y, "
                                 f"sample_weight), got {type(validation_data).__name__} "
                                 f"of length {len(validation_data)}")
            val_x, val_y = self._check_data("fit (validation_data)", *validation_data[:2])
            val_weights = validation_data[2] if len(validation_data) == 3 else None
            val_weights = self._sample_weights("fit (validation_data)", val_y, val_weights)
            return x, y, weights, (val_x, val_y, val_weights)
        if validation_split:
            if not 0 < validation_split < 1:
                raise ValueError(f"{name}.fit: validation_split must be in (0, 1), "
                                 f"got {validation_split}")
            cut = int(len(y) * (1 - validation_split))
            val_weights = None if sample_weight is None else weights[cut:]
            return (_rows(x, slice(None, cut)), y[:cut], None if weights is None else weights[:cut],
                    (_rows(x, slice(cut, None)), y[cut:], val_weights))
        return x, y, weights, None

    def _sample_weights(self, where, y, sample_weight):
        """sample_weight as a float64 array of shape (N,), or y's shape for class-index targets
        (N, d1, ...) (a weight per position); each finite and >= 0. None stays None."""
        if sample_weight is None:
            return None
        name = type(self).__name__
        try:
            weights = np.array(_plain(sample_weight), dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}.{where}: sample_weight must be numbers, one per sample, "
                            f"got {type(sample_weight).__name__}") from None
        shapes = [(len(y),)]
        if y.ndim > 1 and np.issubdtype(y.dtype, np.integer):
            shapes.append(y.shape)                           # a weight per target position
        if weights.shape not in shapes:
            raise ValueError(f"{name}.{where}: sample_weight must have shape "
                             f"{' or '.join(map(str, shapes))} (one weight per sample"
                             f"{', or per target position' if len(shapes) > 1 else ''}), "
                             f"got shape {weights.shape}")
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"{name}.{where}: sample weights must be finite and >= 0, got "
                             f"min {weights.min():g}, max {weights.max():g}")
        return weights

    def _class_weights(self, y, class_weight):
        """Keras's class_weight_to_sample_weights: each target's class weight, 1 for a class not
        in class_weight; the target's class: its label for integer labels (N,) or (N, d1, ...)
        (one weight per position), the arg-max over axis 1 for a one-hot target (N, C, ...),
        the rounded value of a 0/1 target (N,) or (N, 1). A class named that the targets do
        not have, a key that is not an integer or a weight < 0 is an error."""
        name = type(self).__name__
        if not isinstance(class_weight, dict):
            raise TypeError(f"{name}.fit: class_weight must be a dict {{class index: weight}}, "
                            f"got {type(class_weight).__name__}")
        one_hot = y.ndim > 1 and y.shape[1] > 1 and not np.issubdtype(y.dtype, np.integer)
        if one_hot:
            labels = y.argmax(axis=1)                                      # (N, d1, ...)
        elif y.ndim > 1 and y.shape[1] == 1:
            labels = np.round(y[:, 0]).astype(np.int64)                    # (N,)
        else:                                    # integer labels (N, d1, ...), 0/1 targets (N,)
            labels = np.round(y).astype(np.int64)
        ignore_index = getattr(self.loss, "ignore_index", None)
        counted = labels if ignore_index is None else labels[labels != ignore_index]
        classes = list(range(y.shape[1])) if one_hot else np.unique(counted).tolist()
        for c, w in class_weight.items():
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise TypeError(f"{name}.fit: class_weight's keys must be class indices "
                                f"(integers), got {c!r}")
            if c not in classes:
                raise ValueError(f"{name}.fit: class_weight names class {c}, which the targets "
                                 f"do not have (their classes: {classes})")
            if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) \
                    or not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name}.fit: class weights must be finite numbers >= 0, got "
                                 f"{w!r} for class {c}")
        weights = np.ones(labels.shape)                                    # (N, d1, ...)
        for c, w in class_weight.items():                                  # a loop over classes
            weights[labels == c] = w
        return weights

    def _check_data(self, where, X, y):
        """Cast X (an array, or a tuple of arrays) to the model's dtype; reject inputs whose
        first axes differ, a y of another length, and NaN/Inf."""
        name = type(self).__name__
        inputs, y = [np.asarray(a) for a in (X if isinstance(X, tuple) else (X,))], np.asarray(y)
        if len({len(a) for a in inputs}) > 1:
            raise ValueError(f"{name}.{where}: the inputs must share their first axis (one row "
                             f"per sample), got shapes {', '.join(str(a.shape) for a in inputs)}")
        if len(inputs[0]) != len(y):
            raise ValueError(f"{name}.{where}: X has {len(inputs[0])} samples but y has {len(y)}")
        for what, a in [("X", a) for a in inputs] + [("y", y)]:
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
                raise ValueError(f"{name}.{where}: {what} contains NaN or Inf")
        return self._as_input(X), y

    def _as_input(self, X):
        """X (or each input of a tuple) as the model computes: float arrays in the model's dtype;
        integer ones (token indices) as they are."""
        if isinstance(X, tuple):
            return tuple(self._as_input(a) for a in X)
        X = np.asarray(X)
        if np.issubdtype(X.dtype, np.integer):
            return X
        return X.astype(self._dtype(), copy=False)

    def _accuracy_counts(self, out, y, weights, where):
        """[right, counted, weighted right, weighted counted] for the metrics and weighted_metrics
        (see _correct; without weights the weighted counts are the plain ones)."""
        if not (self.metrics or self.weighted_metrics):
            return np.zeros(4)
        plain = self._correct(out, y, where)
        weighted = plain if weights is None else self._correct(out, y, where, weights)
        return np.array(plain + weighted, dtype=np.float64)

    def _metric_logs(self, counts):
        """{metric: value} from _accuracy_counts's sums: the accuracy of `metrics`, right /
        counted, then `weighted_metrics`' (Keras's weighted mean, 0 when the weights sum to 0),
        named "weighted_accuracy" when "accuracy" is also in `metrics`, as Keras names them."""
        right, counted, weighted_right, weighted_counted = counts
        logs = dict.fromkeys(self.metrics, float(right / max(counted, 1)))
        for metric in self.weighted_metrics:
            value = float(weighted_right / weighted_counted) if weighted_counted else 0.0
            logs["weighted_" + metric if metric in self.metrics else metric] = value
        return logs

    def _correct(self, out, y, where="fit", weights=None):
        """(positions right, positions counted) for accuracy; with weights (one per sample, or
        per position), each position counts its weight: (sum w right, sum w counted).

        Class-index targets y (N, d1, ...) against outputs (N, C, d1, ...), as the losses take
        them: a position is right when the arg-max over the C classes (axis 1) is its target;
        positions whose target is the loss's ignore_index (if it has one) are not counted.
        A target shaped as the output (one-hot, probabilities): arg-max against arg-max. One
        output column (N, 1): the logit's sign against a 0/1 target."""
        positions = out.shape[:1] + out.shape[2:]
        counted = np.ones(positions, bool)                                 # (N, d1, ...)
        if out.ndim == 2 and out.shape[1] == 1:
            right = (out[:, 0] > 0) == (np.reshape(y, len(y)) > 0.5)       # (N,)
        elif y.shape == out.shape:
            right = out.argmax(axis=1) == y.argmax(axis=1)                 # (N, d1, ...)
        elif y.shape != positions:
            raise ValueError(f"{type(self).__name__}.{where}: accuracy needs one class index per "
                             f"position of the output {out.shape}, targets of shape {positions}"
                             f" (or {out.shape}: one-hot), got targets of shape {y.shape}")
        else:
            ignore_index = getattr(self.loss, "ignore_index", None)
            counted = counted if ignore_index is None else y != ignore_index
            right = (out.argmax(axis=1) == y) & counted
        if weights is None:
            return int(np.count_nonzero(right)), int(np.count_nonzero(counted))
        w = _spread(weights, right.shape) * counted                        # (N, d1, ...)
        return float((w * right).sum()), float(w.sum())

    # -- inference ----------------------------------------------------------------
    def _predictions(self, X, batch_size, callbacks=()):
        """Yield forward's output batch by batch, in eval mode; drop the caches after.
        callbacks: told on_test_batch_begin/end around each batch."""
        was_training = self.training
        self.eval()
        X = self._as_input(X)
        try:
            for batch, start in enumerate(range(0, _length(X), batch_size)):
                _notify(callbacks, "on_test_batch_begin", batch, {})
                out = self.forward(_rows(X, slice(start, start + batch_size)))
                _notify(callbacks, "on_test_batch_end", batch, {"size": len(out)})
                yield out
        finally:
            _drop_caches(self)
            self.train(was_training)

    def predict(self, x, batch_size=256, verbose=0):
        """The model's outputs for x (an array, or a tuple of arrays), computed in batches in eval
        mode (verbose: accepted for Keras's calls; predict prints nothing)."""
        return np.concatenate(list(self._predictions(x, batch_size)))

    def evaluate(self, x, y, batch_size=256, verbose=0, return_dict=True, sample_weight=None):
        """{"loss": mean loss, "accuracy": fraction correct} on (x, y), in eval mode. Unlike
        Keras, a dict by default; return_dict=False gives Keras's [loss, accuracy] (the loss
        alone without metrics). verbose: accepted for Keras's calls; evaluate prints nothing.
        sample_weight: as fit's (the loss and weighted_metrics weighted, as Keras's)."""
        if self.loss is None:
            raise RuntimeError(f"{type(self).__name__}.evaluate: call compile(optimizer, loss) "
                               "first")
        x, y = self._check_data("evaluate", x, y)
        weights = self._sample_weights("evaluate", y, sample_weight)
        result = self._evaluate(x, y, weights, batch_size, where="evaluate")
        if return_dict:
            return result
        return list(result.values()) if len(result) > 1 else result["loss"]

    def _evaluate(self, x, y, weights=None, batch_size=256, callbacks=(), where="evaluate"):
        """evaluate, on data already checked and cast by _check_data (weights: _sample_weights's);
        callbacks (fit's, in validation) are told on_test_begin, on_test_batch_begin/end (once
        per batch of batch_size) and on_test_end."""
        _notify(callbacks, "on_test_begin", {})
        out = np.concatenate(list(self._predictions(x, batch_size, callbacks)))
        if weights is None:
            result = {"loss": self.loss.forward(out, y)}
            self.loss._cache = None
        else:
            result = {"loss": self._weighted_loss(out, y, weights, need_grad=False)[0]}
        result |= self._metric_logs(self._accuracy_counts(out, y, weights, where))
        _notify(callbacks, "on_test_end", dict(result))
        return result

    def summary(self, print_fn=None):
        """Print a table of the sublayers (name, layer, parameters) and the total; -> None. No
        output shapes, as Keras's summary of a subclassed model: forward is yours (Sequential's
        summary runs its layers and shows them). print_fn: as Sequential.summary's."""
        own = sum(p.data.size for p in vars(self).values() if _is_parameter(p))
        rows = [("(own parameters)", own)] if own else []
        rows += [(f"{name}: {_describe(layer)}", sum(p.data.size for p in layer.parameters()))
                 for name, layer in self._sublayers()]
        w = max([len(label) for label, _ in rows] + [10]) + 4
        lines = [f"{'Layer':<{w}}{'Param #':>12}", "=" * (w + 12)]
        lines += [f"{label:<{w}}{n:>12,}" for label, n in rows]
        total = sum(p.data.size for p in self.parameters())
        tied = " (a tied weight counted once)" if total < sum(n for _, n in rows) else ""
        lines += ["=" * (w + 12), f"Total params: {total:,}{tied}"]
        (print_fn or print)("\n".join(lines))


class Sequential(Model):
    """A stack of layers run in order: a Model (compile / fit / evaluate / predict).

    `Sequential([l1, l2])`, `Sequential(l1, l2)` or `add(layer)`. State-dict keys are
    torch.nn.Sequential's ("0.weight", "1.running_mean", ...).
    """
    _input_shape = None              # of the last input seen, for summary()

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = layers[0]
        self.layers = []
        for layer in layers:
            self.add(layer)

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
        return "Sequential(\n" + "".join(f"  ({i}): {layer!r}\n"
                                          for i, layer in enumerate(self.layers)) + ")"

    def _sublayers(self):                 # named "0", "1", ... as torch.nn.Sequential's
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    # -- the model: forward, backward ------------------------------------------------
    def forward(self, x):
        self._input_shape = np.shape(x)[1:]
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad):
        """Every layer's backward, last to first; returns grad wrt the input, or None once a layer
        returns None: after `compile`, the first layer with parameters skips its input gradient
        (see compile), and the layers before it have nothing to learn."""
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
            if grad is None:
                break
        return grad

    def compile(self, optimizer, loss, metrics=("accuracy",), scheduler=None,
                weighted_metrics=()):
        """Model.compile, and: training needs no gradient wrt the data (as torch's autograd when
        x.requires_grad is False), so compile sets `needs_input_grad = False` on the first layer
        with parameters: its backward skips dx (an MLP's first dx = dy W) and `backward` stops
        there. Set it back to True on that layer to get input gradients (saliency maps) from a
        compiled model."""
        super().compile(optimizer, loss, metrics, scheduler, weighted_metrics)
        first = next((layer for layer in self.layers if layer.parameters()), None)
        if first is not None:
            first.needs_input_grad = False
        return self

    def _as_input(self, X):
        """X in the model's dtype, except the integer indices of a first Embedding layer."""
        if isinstance(X, tuple):
            raise TypeError("Sequential: takes one input array, got a tuple; several inputs need "
                            "a tn.Model subclass whose forward takes the tuple")
        X = np.asarray(X)
        first = self.layers[0] if self.layers else None
        if isinstance(first, Embedding) and np.issubdtype(X.dtype, np.integer):
            return X
        return X.astype(self._dtype(), copy=False)

    # -- every layer's output -----------------------------------------------------------
    def _outputs(self, X, batch_size):
        """Yield, batch by batch in eval mode, the list of every layer's output (activations,
        summary); drop the caches after."""
        was_training = self.training
        self.eval()
        X = self._as_input(X)
        self._input_shape = X.shape[1:]               # for summary()
        try:
            for i in range(0, len(X), batch_size):
                outs, x = [], X[i:i + batch_size]
                for layer in self.layers:
                    x = layer.forward(x)
                    outs.append(x)
                yield outs
        finally:
            _drop_caches(self)
            self.train(was_training)

    def activations(self, X, batch_size=256):
        """[output of every layer] for X, in eval mode: the hidden representations."""
        return [np.concatenate(col) for col in zip(*self._outputs(X, batch_size))]

    def summary(self, input_shape=None, print_fn=None):
        """Print a table of layer, output shape and parameter count, with the total; -> None.

        input_shape (without the batch axis) defaults to that of the last input the model saw
        (forward, model(x), fit, predict), else to what the layers imply: (in_features,) of the
        first Linear when only Flatten, Normalize and element-wise layers come before it. A
        model that starts with Conv2d needs it, e.g. summary(input_shape=(1, 28, 28)).
        print_fn(text) receives the whole table instead of print, as in Keras 3 (e.g.
        `lines = []; model.summary(print_fn=lines.append)` keeps it as a string).
        """
        shape = input_shape or self._input_shape or self._implied_input_shape()
        if shape is None:
            first = _describe(self.layers[0]) if self.layers else "nothing"
            raise ValueError(f"Sequential.summary: the layers do not tell the input's shape (the "
                             f"model starts with {first}); run it on data once or give input_shape "
                             f"without the batch axis, e.g. summary(input_shape=(1, 28, 28))")
        zeros = np.zeros((1, *shape), np.int64)     # _as_input: indices for an Embedding, else cast
        [outs] = list(self._outputs(zeros, 1))
        rows = [(f"{i}: {_describe(layer)}", str((None, *out.shape[1:])),
                 sum(p.data.size for p in layer.parameters()))
                for i, (layer, out) in enumerate(zip(self.layers, outs))]
        w = max(len(r[0]) for r in rows) + 2
        lines = [f"{'Layer':<{w}}{'Output shape':<20}{'Param #':>12}", "=" * (w + 32)]
        lines += [f"{name:<{w}}{out:<20}{n:>12,}" for name, out, n in rows]
        lines += ["=" * (w + 32), f"Total params: {sum(r[2] for r in rows):,}"]
        (print_fn or print)("\n".join(lines))

    def _implied_input_shape(self):
        """(in_features,) of the first Linear when only element-wise layers, per-feature ones
        (Normalize, BatchNorm1d: then of in_features features) and, before those, a Flatten of
        every axis after the batch's come before it; else None (Conv2d's image size is unknown)."""
        per_feature = False
        for layer in self.layers:
            if isinstance(layer, Linear):
                return (layer.in_features,)
            if isinstance(layer, (Normalize, BatchNorm1d)):
                per_feature = True
            elif isinstance(layer, Flatten):
                dims = getattr(layer, "start_dim", 1), getattr(layer, "end_dim", -1)
                if per_feature or dims != (1, -1):
                    return None
            elif not isinstance(layer, (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax,
                                        Dropout)):
                return None
        return None

    # -- saving and converting (see the next section) -----------------------------
    def config(self):
        """The layers' configs, and "tied": [[first key, other key], ...] for a Parameter that
        two layers share (a head tied to its embedding), so that load ties it again."""
        config = {"class": "Sequential", "layers": [layer.config() for layer in self.layers]}
        tied = _tied_keys(_every_parameter(self))
        return config | {"tied": tied} if tied else config

    def save(self, path):
        """One .npz with every weight and buffer plus the architecture (JSON) and, once compiled,
        the loss and metrics; written atomically."""
        with _atomic_open(path) as f:
            np.savez(f, **_model_arrays(self))

    @staticmethod
    def load(path, custom_objects=None):
        """Rebuild a model written by `save` (or `save_checkpoint`): architecture, dtype, weights
        and buffers, and the loss and metrics it was compiled with (so evaluate works; fit needs
        compile). custom_objects: {"ClassName": class} for layers and losses not tinynet's, as
        Keras."""
        arrays, config, _ = _read_model_file(path, "Sequential.load")
        model = _from_config(config, custom_objects, f"Sequential.load: {path}")
        if arrays:
            model.astype(next(iter(arrays.values())).dtype)
        if "loss" in config:             # saved after compile: evaluate works without compile
            name = config["loss"]["class"]
            cls = (custom_objects or {}).get(name) or globals().get(name)
            if not (isinstance(cls, type) and issubclass(cls, Loss)):
                raise ValueError(f"Sequential.load: {path}: unknown loss class {name!r}; if it is "
                                 f"your own, pass it as Sequential.load(path, "
                                 f"custom_objects={{{name!r}: {name}}})")
            model.loss, model.metrics = cls(**config["loss"]["kwargs"]), tuple(config["metrics"])
            model.weighted_metrics = tuple(config.get("weighted_metrics", ()))
        return model.load_state_dict(arrays)

    def to_torch(self):
        """The same model as a torch.nn.Sequential, with the same weights, buffers, dtype and
        mode."""
        return _to_torch(self)

    @staticmethod
    def from_torch(module):
        """A tinynet model from a torch.nn.Sequential of layers tinynet has (weights copied)."""
        return _from_torch(module)


def _describe(layer, width=44):
    """A layer in a few words for summary(): its class, the arguments without a default by value,
    the others only when not at their default; lists of more than 2 numbers as their length."""
    def show(v):
        if isinstance(v, list) and len(v) == 2 and v[0] == v[1]:
            v = v[0]                                      # kernel_size=[3, 3] -> 3
        if isinstance(v, list):
            return f"[{len(v)} values]" if len(v) > 2 else f"[{', '.join(map(show, v))}]"
        return f"{v:.4g}" if isinstance(v, float) else repr(v)
    try:
        config = layer.config()
    except (ValueError, KeyError, TypeError):      # a layer that does not keep its arguments
        return type(layer).__name__
    kwargs = config.get("kwargs", {})
    specs = dict(_init_args(type(layer)))
    args = [show(v) for v in config.get("args", ())]          # *args, e.g. Permute's dims
    for k, v in kwargs.items():
        default = specs[k].default if k in specs else None
        if default is inspect.Parameter.empty:
            args.append(show(v))
        elif show(v) != show(list(default) if isinstance(default, tuple) else default):
            args.append(f"{k}={show(v)}")
    text = f"{type(layer).__name__}({', '.join(args)})"
    return text if len(text) <= width else text[:width - 2] + "…)"


def _notify(callbacks, event, *args):
    for callback in callbacks:
        getattr(callback, event)(*args)


# ════════════════════════════════════════════════════════════════════════════
# Saving, loading and PyTorch interop
# ════════════════════════════════════════════════════════════════════════════
# What Sequential.save/load, checkpoints and torch interop need; LayerState (Layer's saving,
# loading and astype, defined just before Layer) calls the helpers _once and _init_args below.

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


def _once(named):
    """[(name, value)] without the values listed before under another name (a tied Parameter)."""
    first = {}
    for name, value in named:
        first.setdefault(id(value), (name, value))
    return list(first.values())


def _init_args(cls):
    """[(name, inspect.Parameter)] of the named arguments of cls's constructor."""
    return [(name, spec)
            for name, spec in list(inspect.signature(cls.__init__).parameters.items())[1:]
            if spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)]


def _model_arrays(model):
    """model.state_dict() plus its architecture as JSON, under "__architecture__"; for a compiled
    model the JSON also holds its loss ({"class", "kwargs"}) and metrics."""
    config = model.config()
    if getattr(model, "loss", None) is not None:
        config["loss"] = model.loss.config()              # a class weight as a list
        config["metrics"] = list(model.metrics)
        config["weighted_metrics"] = list(model.weighted_metrics)
    return dict(model.state_dict(), __architecture__=np.array(json.dumps(config)))


def _read_model_file(path, caller):
    """(weights and buffers, architecture, the other arrays: a checkpoint's) from a file written
    by save or save_checkpoint."""
    with open(path, "rb") as fh:              # a missing file raises FileNotFoundError
        try:
            with np.load(fh, allow_pickle=False) as f:
                arrays = dict(f)
            config = json.loads(str(arrays.pop("__architecture__")))
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            # empty, .npy, not ours
            raise ValueError(f"{caller}: {path} is not a tinynet model file ({e})") from None
    other = {k: v for k, v in arrays.items() if k.startswith("__") or "/" in k}
    return {k: v for k, v in arrays.items() if k not in other}, config, other


def _tied_keys(named):
    """[[first key, other key], ...] of (key, parameter) pairs in which a parameter comes again:
    the state_dict keys of each Parameter a model reaches twice."""
    first, tied = {}, []
    for key, p in named:
        if id(p) in first:
            tied.append([first[id(p)], key])
        first.setdefault(id(p), key)
    return tied


def _every_parameter(model):
    """(key, Parameter) of every layer of a Sequential, a tied one under each of its keys
    (named_parameters lists it once)."""
    return [(f"{i}.{name}", p) for i, layer in enumerate(model.layers)
            for name, p in layer.named_parameters()]


def _tie(model, tied, get=getattr, put=setattr):
    """Make each [first key, other key] of `tied` one Parameter again in model (a tinynet or a
    torch Sequential: get and put read and set an attribute, model[i] is layer i)."""
    def owner(key):                                 # "5.weight" -> (model[5], "weight")
        index, *path, attr = key.split(".")
        obj = model[int(index)]
        for part in path:
            obj = get(obj, part)
        return obj, attr
    for first, other in tied:
        obj, attr = owner(other)
        put(obj, attr, get(*owner(first)))
    return model


def _from_config(config, custom_objects=None, where="Sequential.load"):
    """Build a layer (or Sequential) from {"class", "kwargs"} (or {"class", "layers"})."""
    name = config.get("class")
    cls = (custom_objects or {}).get(name) or globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"{where}: unknown layer class {name!r}; if it is your own, pass it as "
                         f"Sequential.load(path, custom_objects={{{name!r}: {name}}})")
    if cls is Sequential:
        model = Sequential([_from_config(c, custom_objects, where) for c in config["layers"]])
        return _tie(model, config.get("tied", []))
    return cls(*config.get("args", ()), **config.get("kwargs", {}))


def save_checkpoint(path, model, optimizer=None, scheduler=None, **info):
    """Save what resuming training needs, in one .npz written atomically: the model (as `save`),
    the optimizer's and the scheduler's state_dict(), tinynet's random generator (shuffling,
    dropout) and `info` (e.g. epoch=2). Resume with load_checkpoint: bit for bit the same run."""
    arrays, meta = _model_arrays(model), {"generator": _rng.bit_generator.state, "info": info}
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {"param_groups": state["param_groups"], "state": {}}
        for i, s in state["state"].items():
            meta["optimizer"]["state"][i] = {k: v for k, v in s.items()
                                             if not isinstance(v, np.ndarray)}
            arrays.update({f"optimizer/{i}/{k}": v for k, v in s.items()
                           if isinstance(v, np.ndarray)})
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    arrays["__checkpoint__"] = np.array(json.dumps(meta))
    with _atomic_open(path) as f:
        np.savez(f, **arrays)


def load_checkpoint(path, model, optimizer=None, scheduler=None):
    """Load a save_checkpoint file into model (and optimizer and scheduler, built as before:
    `Sequential.load(path)` rebuilds the model) and restore the random generator; -> info."""
    weights, _, other = _read_model_file(path, "load_checkpoint")
    if "__checkpoint__" not in other:
        raise ValueError(f"load_checkpoint: {path} is a model file, not a checkpoint "
                         "(see save_checkpoint)")
    meta = json.loads(str(other["__checkpoint__"]))
    arrays = {k: v for k, v in other.items() if k.startswith("optimizer/")}
    model.load_state_dict(weights)
    if optimizer is not None:
        state = {int(i): dict(s) for i, s in meta["optimizer"]["state"].items()}
        for key, v in arrays.items():
            _, i, k = key.split("/")
            state.setdefault(int(i), {})[k] = v
        optimizer.load_state_dict({"state": state,
                                   "param_groups": meta["optimizer"]["param_groups"]})
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    _rng.bit_generator.state = meta["generator"]
    return meta["info"]


# tinynet's layers that torch.nn has under the same name and arguments; torch options they must keep
_TORCH_LAYERS = ("Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
                 "Dropout", "Flatten", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
                 "Softmax", "LogSoftmax")
_TORCH_LAYERS += ("Embedding", "RNN", "LSTM", "GRU", "LastStep", "MeanOverSteps",
                  "PositionalEmbedding", "Permute")               # see _torch_sequence_modules
_TORCH_LAYERS += ("LayerNorm", "GELU", "TransformerEncoderLayer")
# why some tinynet layers have no twin in torch.nn.Sequential
_NOT_IN_TORCH = {
    "MultiheadAttention": "torch's takes (query, key, value) and returns a tuple, so it cannot "
                          "sit in torch.nn.Sequential; TransformerEncoderLayer can",
    "TransformerDecoderLayer": "it takes two inputs (tgt, memory), so it cannot sit in "
                               "torch.nn.Sequential"}


def _torch_encoder_args(m):
    """TransformerEncoderLayer's constructor arguments read from a torch one (it keeps no copy)."""
    if m.activation_relu_or_gelu not in (1, 2) or m.linear1.bias is None or m.norm1.bias is None:
        raise ValueError(f"Sequential.from_torch: {type(m).__name__} with a custom activation or "
                         "bias=False is not supported")
    return dict(d_model=m.self_attn.embed_dim, nhead=m.self_attn.num_heads,
                dim_feedforward=m.linear1.out_features, dropout=m.dropout.p,
                activation=("relu", "gelu")[m.activation_relu_or_gelu - 1],
                layer_norm_eps=m.norm1.eps, batch_first=m.self_attn.batch_first,
                norm_first=m.norm_first, causal=getattr(m, "causal", False))
_TORCH_DEFAULTS = {"dilation": (1, (1, 1)), "groups": (1,), "padding_mode": ("zeros",),
                   "ceil_mode": (False,), "return_indices": (False,), "count_include_pad": (True,),
                   "divisor_override": (None,), "affine": (True,), "track_running_stats": (True,)}
_TORCH_DEFAULTS |= {"max_norm": (None,), "scale_grad_by_freq": (False,), "sparse": (False,),
                    "proj_size": (0,)}


def _torch_sequence_modules():
    """{name: torch module class} for the layers of a torch.nn.Sequential that torch.nn lacks:
    RNN, LSTM and GRU returning only their output (torch's return (output, h_n)), with torch's
    names, arguments and state-dict keys; LastStep, MeanOverSteps, PositionalEmbedding and
    Permute as a torch user writes them (x[:, -1], x.mean(dim=1), x + table[:T],
    x.permute(0, 2, 1)), with tinynet's arguments; TransformerEncoderLayer: torch's, with
    tinynet's causal flag (the square subsequent mask)."""
    import torch

    def output_only(cls):
        return type(cls.__name__, (cls,), {"forward": lambda self, x: cls.forward(self, x)[0]})

    class LastStep(torch.nn.Module):
        def __init__(self, dim=1):
            super().__init__()
            self.dim = dim

        def forward(self, x):
            return x.select(self.dim, -1)

    class MeanOverSteps(LastStep):
        def forward(self, x):
            return x.mean(dim=self.dim)

    class PositionalEmbedding(torch.nn.Module):
        def __init__(self, max_len, embedding_dim):
            super().__init__()
            self.max_len, self.embedding_dim = max_len, embedding_dim
            self.weight = torch.nn.Parameter(0.02 * torch.randn(max_len, embedding_dim))

        def forward(self, x):
            return x + self.weight[:x.shape[1]]

    class Permute(torch.nn.Module):
        def __init__(self, *dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return x.permute(*self.dims)

    class TransformerEncoderLayer(torch.nn.TransformerEncoderLayer):
        def __init__(self, *args, causal=False, **kwargs):
            super().__init__(*args, **kwargs)
            self.causal = causal

        def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
            if self.causal:    # torch applies the causal mask it is given (with src_mask's)
                t = src.shape[1 if self.self_attn.batch_first else 0]
                causal = torch.nn.Transformer.generate_square_subsequent_mask(
                    t, device=src.device, dtype=src.dtype)
                if src_mask is not None and src_mask.dtype == torch.bool:
                    src_mask = torch.zeros_like(causal).masked_fill(src_mask, -math.inf)
                src_mask = causal if src_mask is None else causal + src_mask
            return super().forward(src, src_mask, src_key_padding_mask,
                                   is_causal=is_causal or self.causal)

    recurrent = {name: output_only(getattr(torch.nn, name)) for name in ("RNN", "LSTM", "GRU")}
    return recurrent | {"LastStep": LastStep, "MeanOverSteps": MeanOverSteps,
                        "PositionalEmbedding": PositionalEmbedding, "Permute": Permute,
                        "TransformerEncoderLayer": TransformerEncoderLayer}


def _to_torch(model):
    """Sequential.to_torch: torch.nn.Sequential of the same layers, weights, buffers, dtype,
    mode."""
    import torch
    layers, modules = [], _torch_sequence_modules()
    for i, layer in enumerate(model.layers):
        config = layer.config()
        if config["class"] not in _TORCH_LAYERS:
            why = f" ({_NOT_IN_TORCH[config['class']]})" if config["class"] in _NOT_IN_TORCH else ""
            raise ValueError(f"Sequential.to_torch: layer {i} ({layer!r}) has no torch.nn "
                             f"equivalent{why}; convertible: {', '.join(_TORCH_LAYERS)}")
        cls = modules.get(config["class"]) or getattr(torch.nn, config["class"])
        layers.append(cls(*config.get("args", ()), **config["kwargs"]))     # args: Permute's dims
    net = torch.nn.Sequential(*layers).to(getattr(torch, model._dtype().name)).train(model.training)
    missing, unexpected = net.load_state_dict({k: torch.from_numpy(v)
                                               for k, v in model.state_dict().items()},
                                              strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), \
        (missing, unexpected)
    return _tie(net, _tied_keys(_every_parameter(model)))   # a tied weight stays one Parameter


def _from_torch(module):
    """Sequential.from_torch: a tinynet model from a torch.nn.Sequential (weights copied)."""
    layers = []
    for i, m in enumerate(module):
        name = type(m).__name__
        if name not in _TORCH_LAYERS:
            raise ValueError(f"Sequential.from_torch: module {i} ({m}) is not supported; "
                             f"tinynet has {', '.join(_TORCH_LAYERS)}")
        for option, allowed in _TORCH_DEFAULTS.items():
            if hasattr(m, option) and getattr(m, option) not in allowed:
                raise ValueError(f"Sequential.from_torch: module {i} ({m}): {option}="
                                 f"{getattr(m, option)!r} is not supported")
        cls = globals()[name]
        if name == "TransformerEncoderLayer":
            layers.append(cls(**_torch_encoder_args(m)))
            continue
        if name == "Permute":
            layers.append(cls(*m.dims))
            continue
        bias = getattr(m, "bias", None)        # a Parameter or None (Linear), or a flag (LSTM)
        layers.append(cls(**{a: bias is not None and bias is not False if a == "bias"
                             else getattr(m, a) for a, _ in _init_args(cls)}))
    model = Sequential(layers)
    tensors = list(module.parameters())
    if tensors:
        model.astype(np.dtype(str(tensors[0].dtype).removeprefix("torch.")))
    model.load_state_dict(module.state_dict())
    tied = _tied_keys(module.named_parameters(remove_duplicate=False))  # shared: stays one
    return _tie(model, tied).train(module.training)


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
    """Largest relative error of backward against central differences, each array judged on
    its own scale, for f(x) = sum(layer(x) * r) with a fixed projection r.

    For each array a (the input gradient, then every parameter's gradient) with analytic
    gradient g and central differences d:

        error = max(max_i |g_i - d_i| - noise, 0) / max(max_i |g_i|, max_i |d_i|)   (0 if 0 / 0)
        noise = 8 * macheps * sum(|layer(x) * r|) / eps

    noise bounds the rounding error of d: f is a sum whose terms are up to |layer(x) * r|, so
    each of f(x + eps e_i) and f(x - eps e_i) is off by a few macheps (2.2e-16) times their
    total, and their difference is divided by 2 eps. Differences below it cannot be told from
    rounding, so a gradient that is truly zero (a Linear bias before a BatchNorm) reports 0,
    while a gradient off by half reports 0.5 however small the inputs. gradcheck returns the
    largest error over the arrays; below 1e-7 is correct.

    r is a deterministic, equidistributed sequence in [-1, 1) (golden-ratio steps), not drawn
    from any random generator, so it cannot coincide with the caller's input (with r = x, the
    gradient of a BatchNorm nearly cancels and a correct layer would look wrong).
    The layer must be float64 (`layer.astype(np.float64)`) and deterministic (Dropout in eval
    mode). Buffers (BatchNorm's running statistics) are restored after. When backward returns
    None for the input (a compiled model's first layer with parameters skips it, see
    Sequential.compile), only the parameters are checked,
    as for integer x (Embedding's indices), which has no gradient. Several inputs: x is a tuple
    of arrays (forward gets the tuple) and backward returns a tuple of their gradients.
    """
    if any(p.data.dtype != np.float64 for p in layer.parameters()):
        raise TypeError(f"gradcheck: {layer!r} must be float64; call .astype(np.float64) first")
    several = isinstance(x, tuple)          # several inputs: forward gets the tuple
    inputs = [np.array(a, dtype=None if np.issubdtype(np.asarray(a).dtype, np.integer)
                       else np.float64) for a in (x if several else (x,))]
    x = tuple(inputs) if several else inputs[0]
    state = layer.state_dict()
    y = layer.forward(x)
    r = (np.arange(y.size) * 0.6180339887498949 + 0.5) % 1.0 * 2 - 1
    r = r.reshape(y.shape)
    noise = 8 * np.finfo(np.float64).eps * float(np.abs(y * r).sum()) / eps
    layer.zero_grad()
    grad_x = layer.backward(r)
    # one gradient per input (a tuple of them for several inputs; None: not computed)
    grads = grad_x if several and grad_x is not None else [grad_x] * len(inputs)
    pairs = [(g, a) for g, a in zip(grads, inputs)
             if g is not None and not np.issubdtype(a.dtype, np.integer)]   # indices: no gradient
    pairs += [(p.grad.copy(), p.data) for p in layer.parameters()]
    f = lambda _: float(np.sum(layer.forward(x) * r))  # noqa: E731
    worst = 0.0
    for analytic, at in pairs:
        numeric = numerical_gradient(f, at, eps)
        error = np.abs(analytic - numeric).max(initial=0) - noise
        scale = max(np.abs(analytic).max(initial=0), np.abs(numeric).max(initial=0))
        if error > 0:
            worst = max(worst, error / scale)
    layer.load_state_dict(state)
    return float(worst)


# ════════════════════════════════════════════════════════════════════════════
# Data
# ════════════════════════════════════════════════════════════════════════════

def one_hot(y, num_classes):
    """Integer labels (N,) -> float32 (N, num_classes) with a single 1 per row."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise TypeError(f"one_hot: expected 1-D integer labels, got dtype {y.dtype} "
                        f"shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), "
                         f"got min {y.min()} max {y.max()}")
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
    # scikit-learn's iris.csv, the same bytes as data/iris.csv (load_iris reads an installed
    # scikit-learn's copy first; these are for an installed tinynet without it)
    "iris": ["https://raw.githubusercontent.com/scikit-learn/scikit-learn/1.9.1/sklearn/datasets/"
             "data/",
             "https://raw.githubusercontent.com/scikit-learn/scikit-learn/main/sklearn/datasets/"
             "data/"],
    "shakespeare": [
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"],
}
DATA_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    "iris.csv": "d69a16ea6136ccb02a7c37c66375ebba",
    "input.txt": "6fb458f1232090904fb40fe944165e91",       # Tiny Shakespeare
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
        raise ValueError(f"load_idx: {path}: bad magic number {raw[:4].hex()}, "
                         "expected 0000 then type and rank")
    if raw[2] not in _IDX_DTYPES:
        raise ValueError(f"load_idx: {path}: unknown type byte 0x{raw[2]:02x}, "
                         f"expected one of {', '.join(f'0x{t:02x}' for t in _IDX_DTYPES)}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"load_idx: {path}: truncated header ({ndim} dimensions need "
                         f"{start} bytes, got {len(raw)})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, 4))
    size = math.prod(shape) * dtype.itemsize
    if len(raw) - start != size:
        problem = "truncated payload" if len(raw) - start < size else "trailing bytes"
        raise ValueError(f"load_idx: {path}: {problem}: shape {shape} of {dtype.name} needs "
                         f"{size} data bytes, got {len(raw) - start}")
    return (np.frombuffer(raw, dtype, math.prod(shape), start).reshape(shape)
            .astype(dtype.newbyteorder("=")))


# data/ beside tinynet.py: a clone's data folder (iris.csv ships there)
_DATA_BESIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _data_dir(data_dir=None):
    """The folder the loaders read and download into: `data_dir` if given, else
    $TINYNET_DATA, else data/ beside tinynet.py in a clone, else (an installed tinynet) a
    per-user cache, $XDG_CACHE_HOME/tinynet or ~/.cache/tinynet, as Keras and scikit-learn
    keep theirs.

    A clone, or tinynet.py copied into a folder of one's own, keeps its data beside it. The
    cache is used instead when tinynet.py is installed: pip put it there (a
    tinynet-*.dist-info folder beside it, as `pip install .` and `pip install --target` leave),
    or its folder is a site-packages or dist-packages, or the folder that would hold the data
    (data/ if it exists, else tinynet.py's own) may not be written.
    """
    chosen = data_dir or os.environ.get("TINYNET_DATA")
    if chosen:
        return os.fspath(chosen)
    return _user_cache() if _installed() else _DATA_BESIDE


def _installed():
    """True when tinynet.py is an installed copy rather than a clone's (see _data_dir)."""
    here = os.path.dirname(_DATA_BESIDE)
    by_pip = any(name.startswith("tinynet-") and name.endswith(".dist-info")
                 for name in (os.listdir(here) if os.path.isdir(here) else ()))
    in_site = os.path.basename(here) in ("site-packages", "dist-packages")
    folder = _DATA_BESIDE if os.path.isdir(_DATA_BESIDE) else here
    return by_pip or in_site or not os.access(folder, os.W_OK)


def _user_cache():
    """$XDG_CACHE_HOME/tinynet, else ~/.cache/tinynet."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tinynet")


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
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=name,
                          disable=None) as bar:
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
            raise FileNotFoundError(f"{caller}: {path} not found; download it "
                                    f"(e.g. from {urls[0]}, MD5 {DATA_MD5[name]}) and put it "
                                    "there, or pass download=True")
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
        if (X.dtype != np.uint8 or X.shape[1:] != (28, 28)
                or y.dtype != np.uint8 or y.shape != X.shape[:1]):
            raise ValueError(f"load_mnist: expected uint8 images (N, 28, 28) and labels (N,), got "
                             f"{X.dtype} {X.shape} in {paths[0]} and {y.dtype} {y.shape} "
                             f"in {paths[1]}")
        out += [(X / np.float32(255)).reshape(-1, 1, 28, 28), y.astype(np.int64)]
    return tuple(out)


def load_svhn(split="train", data_dir=None, download=True):
    """SVHN cropped digits from <data_dir>/svhn/<split>_32x32.mat (downloaded if missing).

    split: "train" (73,257 images), "test" (26,032) or "extra" (531,131).
    The file holds X (32, 32, 3, N) uint8 and y (N, 1) with 10 for digit 0.
    Returns X float32 (N, 3, 32, 32) in [0, 1] and y int64 0..9. Only one
    float32 copy of the images is made (the uint8 array is transposed first).
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("load_svhn: reading SVHN's .mat files needs scipy: "
                          "pip install scipy") from None
    if split not in ("train", "test", "extra"):
        raise ValueError(f"load_svhn: split must be 'train', 'test' or 'extra', got {split!r}")
    path = _find("svhn", f"{split}_32x32.mat", os.path.join(_data_dir(data_dir), "svhn"), download,
                 "load_svhn")
    mat = loadmat(path, variable_names=("X", "y"))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"load_svhn: {path} must hold arrays 'X' and 'y'")
    X, y = mat.pop("X"), mat.pop("y")     # popped: the file's uint8 X is freed once transposed
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3) or y.size != X.shape[-1]:
        raise ValueError(f"load_svhn: {path}: expected X uint8 (32, 32, 3, N) and y (N, 1), "
                         f"got X {X.dtype} {X.shape} and y {y.shape}")
    y = y.ravel()
    if y.size and (y.min() < 1 or y.max() > 10):
        raise ValueError(f"load_svhn: {path}: labels must be 1..10 (10 = digit 0), "
                         f"got {y.min()}..{y.max()}")
    # (32, 32, 3, N) -> (N, 3, 32, 32), still uint8
    X = np.ascontiguousarray(X.transpose(3, 2, 0, 1))
    return X / np.float32(255), (y % 10).astype(np.int64)


def _sklearn_iris():
    """Path of an installed scikit-learn's iris.csv when its MD5 is DATA_MD5["iris.csv"], else
    None. The file is found without importing scikit-learn (which takes seconds)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "iris.csv")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        same = hashlib.md5(f.read()).hexdigest() == DATA_MD5["iris.csv"]
    return path if same else None


def load_iris(path=None, download=True):
    """Fisher's Iris: X float32 (150, 4) (sepal/petal length/width, cm), y int64 0..2.

    Reads a CSV in scikit-learn's layout: a header `n_samples,n_features,
    class names...`, then one row of features and an integer label per sample.
    path=None: the first that exists of iris.csv in the data folder (see _data_dir), data/iris.csv
    beside tinynet.py, scikit-learn's copy (sklearn/datasets/data/iris.csv, the same file, used
    when its MD5 matches); else, with download=True, iris.csv downloaded into the data folder
    (an installed tinynet without scikit-learn). A missing file raises a FileNotFoundError that
    says where it looked and how to get it.
    """
    if path is None:
        folder = _data_dir()
        tried = [os.path.join(folder, "iris.csv"), os.path.join(_DATA_BESIDE, "iris.csv")]
        path = next((p for p in tried if os.path.exists(p)), None) or _sklearn_iris()
        if path is None and download:
            path = _find("iris", "iris.csv", folder, True, "load_iris")
        if path is None:
            raise FileNotFoundError(
                f"load_iris: iris.csv not found; looked in {' and '.join(dict.fromkeys(tried))} "
                "and in scikit-learn. It comes with tinynet (data/iris.csv in its repository) "
                "and with scikit-learn (sklearn/datasets/data/iris.csv, MD5 "
                f"{DATA_MD5['iris.csv']}): put it in one of those places, set TINYNET_DATA to its "
                "folder, pass load_iris(path), or download=True")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_iris: {path} not found")
    with open(path) as f:
        header = f.readline().strip().split(",")
        try:
            n, d = int(header[0]), int(header[1])
            data = np.loadtxt(f, delimiter=",", ndmin=2)
        except (ValueError, IndexError) as e:
            raise ValueError(f"load_iris: {path}: expected a header "
                             f"'n_samples,n_features,names...' and numeric rows ({e})") from None
    classes = len(header) - 2
    if data.shape != (n, d + 1):
        raise ValueError(f"load_iris: {path}: header says {n} rows of {d} features and a label, "
                         f"got {data.shape}")
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
        raise ValueError(f"train_val_split: X and y must have the same length, "
                         f"got {len(X)} and {n}")
    if isinstance(val_size, (int, np.integer)) and not isinstance(val_size, bool):
        n_val = int(val_size)
    elif isinstance(val_size, (float, np.floating)) and 0 < val_size < 1:
        n_val = round(val_size * n)
    else:
        raise ValueError(f"train_val_split: val_size must be a fraction in (0, 1) or a count, "
                         f"got {val_size!r}")
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


def load_shakespeare(data_dir=None, download=True):
    """Tiny Shakespeare, the char-rnn corpus, as one string: <data_dir>/shakespeare/input.txt
    (1,115,394 characters of plays, 65 distinct), downloaded if missing.

    A character-level language model reads it as a sequence of integer codes:
        chars = sorted(set(text))                          # the vocabulary, V = 65
        index = {ch: i for i, ch in enumerate(chars)}
        codes = np.array([index[ch] for ch in text])       # (1115394,) int64
    A missing file with download=False raises FileNotFoundError saying where to put it.
    """
    folder = os.path.join(_data_dir(data_dir), "shakespeare")
    path = _find("shakespeare", "input.txt", folder, download, "load_shakespeare")
    with open(path, encoding="utf-8") as f:
        return f.read()


# ════════════════════════════════════════════════════════════════════════════
# Plots
# ════════════════════════════════════════════════════════════════════════════
# Every plot helper returns its matplotlib Figure. path is optional: without it a notebook shows
# the figure below the cell and a script keeps it open for plt.show(); with it the figure is
# written in the format its extension names (.png, .pdf, .svg), folders created (see _save).

def _pyplot():
    """matplotlib.pyplot, on the Agg backend when there is no display and no backend was chosen."""
    import matplotlib
    if (not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ
            and "matplotlib.pyplot" not in sys.modules):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure(width, height, ncols=1, **kw):
    """(fig, axes (1, ncols)) with constrained layout: matplotlib makes room for every title,
    tick label, colour bar and "outside" legend, so no text is cut or overlaps the data."""
    return _pyplot().subplots(1, ncols, figsize=(width, height), layout="constrained",
                              squeeze=False, **kw)


def _save(fig, path, caller):
    """Show or write `fig` (what every plot helper does last; the helper returns `fig`).

    path None: in a Jupyter notebook the figure appears once below the cell (see
    _notebook_display); in a script it stays open in pyplot, for plt.show() on an interactive
    backend or fig.savefig(...) later (on the Agg backend nothing is shown). path given: the
    format follows the extension (.png, .pdf, .svg, ...), missing folders are created, the file
    is written atomically (through `<path>.tmp`) and, outside a notebook, the figure is closed.
    """
    plt = _pyplot()
    notebook = _in_notebook()
    if notebook:
        import functools
        fig._ipython_display_ = functools.partial(_notebook_display, fig)
    if path is not None:
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower().lstrip(".")
        formats = fig.canvas.get_supported_filetypes()
        if ext not in formats:
            raise ValueError(f"{caller}: cannot tell the format of {path!r} from its extension; "
                             f"expected one of {', '.join('.' + f for f in sorted(formats))}")
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with _atomic_open(path) as f:
                fig.savefig(f, format=ext, dpi=100)
        except OSError as e:
            raise type(e)(f"{caller}: cannot write {path!r}: {e.strerror or e}") from None
        if not notebook:
            plt.close(fig)


def _notebook_display(fig):
    """How a notebook shows `fig` (its _ipython_display_): pyplot forgets it first, so it shows
    once, whether the cell ends with it (its value) or not (the end-of-cell display of the figures
    pyplot holds); then its PNG."""
    import io

    from IPython.display import Image, display
    _pyplot().close(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    display(Image(buffer.getvalue(), format="png"))


def _suptitle(fig, text, fontsize=12):
    """Title the figure with `text`, wrapped to the figure's width (about 0.6 em per character)."""
    if text:
        import textwrap
        fig.suptitle(textwrap.fill(text, max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))),
                     fontsize=fontsize)


def _legend_outside(fig, axes, **kw):
    """One legend for the whole figure, each label once, right of the last panel and level
    with its top: outside the data, below the figure's title (constrained layout makes room)."""
    entries = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        np.ravel(axes)[-1].legend(entries.values(), entries.keys(), loc="upper left",
                                  bbox_to_anchor=(1.03, 1), borderaxespad=0, **kw)


def _styles(n):
    """n line styles {color, linestyle, marker}, every one a different colour and, up to 20,
    a different (line style, marker) pair too, so a grey-scale print still tells them apart:
    tab20's ten dark hues (tab10's colours), then its ten light ones; line styles cycle every
    4 and markers every 5. Beyond 20, colours are spread over the turbo colour map."""
    plt = _pyplot()
    if n <= 20:
        tab20 = plt.get_cmap("tab20").colors
        colors = tab20[0::2] + tab20[1::2]
    else:
        colors = plt.get_cmap("turbo")(np.linspace(0, 1, n))
    return [dict(color=colors[i], linestyle=("-", "--", "-.", ":")[i % 4], marker="osD^v"[i % 5])
            for i in range(n)]


def _as_dict(history):
    return history.history if isinstance(history, History) else history


def _epoch_panel(ax, key):
    """Label a per-epoch panel: integer epochs on x, `key` on y and as the title, a light grid."""
    from matplotlib.ticker import MaxNLocator
    epochs = max((len(line.get_xdata()) for line in ax.get_lines()), default=0)
    if epochs < 3:                  # one or two points: whole epochs only, not 0.975, 1.0, 1.025
        ax.set_xticks(range(1, epochs + 1))
        ax.set_xlim(0.5, epochs + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=key, title=key)
    ax.grid(alpha=0.3)


def confusion_matrix(y_true, y_pred, num_classes=None):
    """counts[i, j] = number of samples of class i predicted as j (rows: true, columns:
    predicted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"confusion_matrix: expected two 1-D label arrays of the same length, "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    both = np.concatenate([y_true, y_pred])
    n = num_classes or int(both.max(initial=-1) + 1)
    if both.size and (both.min() < 0 or both.max() >= n):
        raise ValueError(f"confusion_matrix: labels must be integers in [0, {n}), "
                         f"got {both.min()}..{both.max()}")
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def pca(X, n_components=2):
    """Project the rows of X (N, ...) on their first principal components -> (N, n_components)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    X = X - X.mean(axis=0)
    _, _, Vt = np.linalg.svd(X, full_matrices=False)
    return X @ Vt[:n_components].T


def plot_history(history, path=None, keys=("loss", "accuracy"), title=None):
    """One panel per key: the training curve and, when recorded, the validation curve
    (val_<key>), per epoch. title names the run, e.g. "MNIST mlp, adam lr 0.003"."""
    h = _as_dict(history)
    found = [k for k in keys if k in h]
    if not found:
        raise ValueError(f"plot_history: none of the keys {list(keys)} is in the history "
                         f"(it has {sorted(h)})")
    fig, axes = _figure(4.2 * len(found) + 1.6, 3.6, len(found))
    for ax, key in zip(axes[0], found):
        for k, label, style in zip((key, "val_" + key), ("training", "validation"), _styles(2)):
            if k in h:
                ax.plot(np.arange(1, len(h[k]) + 1), h[k], label=label, ms=4,
                        markevery=max(1, len(h[k]) // 15), **style)
        _epoch_panel(ax, key)
    _legend_outside(fig, axes)
    _suptitle(fig, title and f"{title}: {' and '.join(found)} per epoch")
    _save(fig, path, "plot_history")
    return fig


def plot_curves(histories, path=None, keys=("val_accuracy", "val_loss"), title=None):
    """Compare runs: one panel per key, one line per run (each in its own colour, line style
    and marker), one legend right of the panels. histories: {label: History or dict}."""
    if not histories:
        raise ValueError("plot_curves: expected at least one history, got none")
    styles = _styles(len(histories))
    longest = max(len(str(label)) for label in histories)
    fig, axes = _figure(4.5 * len(keys) + 0.8 + 0.075 * longest,
                        max(3.8, 0.24 * len(histories) + 1.3), len(keys))
    for ax, key in zip(axes[0], keys):
        for (label, history), style in zip(histories.items(), styles):
            values = _as_dict(history).get(key, [])
            ax.plot(np.arange(1, len(values) + 1), values, label=label, ms=4,
                    markevery=max(1, len(values) // 15), **style)
        _epoch_panel(ax, key)
    _legend_outside(fig, axes, fontsize="small")
    _suptitle(fig, title and f"{title}: {' and '.join(keys)} per epoch")
    _save(fig, path, "plot_curves")
    return fig


def plot_confusion_matrix(y_true, y_pred, path=None, class_names=None, title=None):
    """Confusion matrix (rows: true class, columns: predicted), the count written in each cell.

    The figure grows with the number of classes and the longest class name; column names
    are slanted when they are wider than a cell. title names the data set and model.
    """
    names = [str(c) for c in class_names] if class_names is not None else None
    cm = confusion_matrix(y_true, y_pred, len(names) if names else None)
    n = len(cm)
    names = names or [str(i) for i in range(n)]
    cell = 0.75 if n <= 5 else 0.45 if n <= 12 else 0.38         # inches per cell
    fontsize = 9 if n <= 12 else 7
    name_in = 0.085 * max(map(len, names)) * fontsize / 9       # inches of the longest name
    # column names: level when they fit in a cell, else slanted 45 degrees when their boxes
    # still clear the next one, else vertical
    rotation = 0 if name_in < 0.8 * cell else 45 if 0.71 * name_in + 0.1 < cell else 90
    fig, axes = _figure(n * cell + name_in + 2.2,
                        n * cell + name_in * (0, 0.75, 1)[rotation // 45] + 2.1)
    ax = axes[0, 0]
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, label="samples", shrink=0.9)
    for (i, j), c in np.ndenumerate(cm):
        ax.text(j, i, str(c), ha="center", va="center", fontsize=fontsize - (1 if c >= 1000 else 0),
                color="white" if c > cm.max() / 2 else "black")
    ax.set_xticks(range(n), names, fontsize=fontsize, rotation=rotation,
                  ha="right" if rotation else "center", rotation_mode="anchor")
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(f"accuracy {np.trace(cm) / max(cm.sum(), 1):.4f} ({np.trace(cm)}/{cm.sum()})",
                 fontsize=10)
    _suptitle(fig, f"{title}: confusion matrix" if title else "confusion matrix", fontsize=11)
    _save(fig, path, "plot_confusion_matrix")
    return fig


def plot_predictions(X, y_true, y_pred, path=None, class_names=None, n=32, title=None):
    """A grid of n images (NCHW, values in [0, 1]) titled "predicted (true)": up to n/2
    misclassified ones first, framed and titled in red, then correctly classified ones.
    title names the data set and model."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    wrong, right = np.flatnonzero(y_true != y_pred), np.flatnonzero(y_true == y_pred)
    idx = np.concatenate([wrong[:n // 2], right])[:n]
    names = [str(c) for c in (class_names if class_names is not None
                              else range(max(y_true.max(), y_pred.max()) + 1))]
    captions = [f"{names[y_pred[i]]} ({names[y_true[i]]})" for i in idx]
    cols = min(8, len(idx))
    rows = -(-len(idx) // cols)
    # inches per image, room for its caption
    width = max(1.3, 0.065 * max(map(len, captions)) + 0.25)
    fig = _pyplot().figure(figsize=(max(width * cols, 5), 1.5 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, caption in zip(axes.flat, idx, captions):
        img = np.asarray(X[i]).transpose(1, 2, 0)      # (C, H, W) -> (H, W, C)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
        bad = y_true[i] != y_pred[i]
        ax.set_title(caption, fontsize=8, color="red" if bad else "black")
        if bad:
            ax.axis("on")
            ax.set(xticks=[], yticks=[])
            for s in ax.spines.values():
                s.set(color="red", linewidth=2)
    _suptitle(fig, f"{title + ': ' if title else ''}predicted (true) test images; {len(wrong):,} "
              f"of {len(y_true):,} misclassified, shown first in red", fontsize=11)
    _save(fig, path, "plot_predictions")
    return fig


def plot_embeddings(embeddings, y, path=None, class_names=None, title=None):
    """Side-by-side 2-D scatter plots, one colour and marker per class, the legend right of
    the panels. embeddings: {panel title: (N, 2) array}; title names the data set and model."""
    import textwrap
    y = np.asarray(y)
    classes = np.unique(y)
    names = ([str(c) for c in class_names] if class_names is not None
             else [str(c) for c in range(int(y.max()) + 1)])
    columns = 1 if len(classes) <= 12 else 2
    fig, axes = _figure(4.6 * len(embeddings) + 0.5 + 0.08 * max(map(len, names)) * columns, 5.0,
                        len(embeddings))
    for ax, (panel, Z) in zip(axes[0], embeddings.items()):
        Z = np.asarray(Z)
        for c, style in zip(classes, _styles(len(classes))):
            ax.scatter(*Z[y == c].T, s=10, color=style["color"], marker=style["marker"],
                       label=names[c], linewidths=0)
        ax.set(xticks=[], yticks=[])
        ax.set_title(textwrap.fill(panel, 48), fontsize=10)
    _legend_outside(fig, axes, title="class", markerscale=1.8, ncols=columns)
    _suptitle(fig, title)
    _save(fig, path, "plot_embeddings")
    return fig


def plot_batch_loss(history, path=None, title=None):
    """The training loss of every optimizer step (history.batch_loss, or a list of floats)
    against the update number, with its running mean and the ends of epochs; a log scale
    when the loss spans more than two decades. title names the data set and model."""
    losses = np.asarray(history.batch_loss if isinstance(history, History) else history,
                        dtype=np.float64)
    if losses.ndim != 1 or not losses.size:
        raise ValueError(f"plot_batch_loss: expected history.batch_loss, a non-empty list of "
                         f"floats, got shape {losses.shape}")
    steps = np.arange(1, len(losses) + 1)
    (first, second), window = _styles(2), max(1, len(losses) // 50)
    fig, axes = _figure(8, 3.8)
    ax = axes[0, 0]
    ax.plot(steps, losses, color=first["color"], lw=0.8, alpha=0.6, label="loss of each update")
    if window > 1:
        mean = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], mean, color=second["color"], linestyle="--", lw=2,
                label=f"mean of the last {window}")
    epochs = len(history.epoch) if isinstance(history, History) else 0
    # an epoch axis on top; dotted lines up to 20 epochs
    if epochs > 1 and len(losses) % epochs == 0:
        per = len(losses) // epochs
        ax.secondary_xaxis("top", functions=(lambda s: s / per,
                                             lambda e: e * per)).set_xlabel("epoch")
        for e in range(1, epochs if epochs <= 20 else 0):
            ax.axvline(e * per + 0.5, color="0.5", lw=0.7, linestyle=":",
                       label="end of an epoch" if e == 1 else None)
    if losses.min() > 0 and losses.max() > 100 * losses.min():
        ax.set_yscale("log")
    ax.set(xlabel="update (optimizer step)", ylabel="training loss of the batch")
    ax.grid(alpha=0.3)
    _legend_outside(fig, axes, fontsize="small")
    _suptitle(fig, f"{title + ': ' if title else ''}training loss after every update")
    _save(fig, path, "plot_batch_loss")
    return fig


def optimizer_path(build_optimizer, grad_fn, start, steps):
    """Run an optimizer on a function of two variables; -> its path, (steps + 1, 2) float64.

    build_optimizer([p]) returns the optimizer for one Parameter p (e.g.
    `lambda params: Adam(params, lr=0.1)`); grad_fn(x, y) returns the gradient
    (df/dx, df/dy) at (x, y). Row 0 is `start`; row t the point after t steps.
    """
    p = Parameter(np.array(start, dtype=np.float64))
    if p.data.shape != (2,):
        raise ValueError(f"optimizer_path: expected a start point (x, y), got shape {p.data.shape}")
    optimizer = build_optimizer([p])
    path = np.empty((steps + 1, 2))
    path[0] = p.data
    for t in range(steps):
        optimizer.zero_grad()
        p.grad += np.asarray(grad_fn(*p.data), dtype=np.float64)
        optimizer.step()
        path[t + 1] = p.data
    return path


def plot_optimizer_paths(panels, path=None, title=None):
    """Optimizer paths drawn over the contour lines of the function they minimise.

    panels: {panel title: (f, paths) or (f, paths, minimum)}, one panel each, side by side;
    f(x, y) evaluates on arrays, paths is {label: (steps + 1, 2) array} as optimizer_path
    returns, minimum the (x, y) marked with a star. The i-th path of every panel has the i-th
    colour, line style and marker, a black dot at its start and a large marker at its end;
    each panel's legend sits below it. The view covers every path and the minimum. Contour
    levels are quantiles of f over the view, so narrow valleys (Rosenbrock's) show too.
    """
    import textwrap
    most = max(len(paths) for _, paths, *_ in panels.values())
    fig, axes = _figure(5.2 * len(panels), 4.6 + 0.22 * (most + 2) // 2, len(panels))
    for ax, (panel, (f, paths, *minimum)) in zip(axes[0], panels.items()):
        points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2)
                                 for p in paths.values()] + [np.reshape(minimum, (-1, 2))])
        lo, hi = points.min(axis=0), points.max(axis=0)
        lo, hi = lo - 0.1 * (hi - lo) - 0.1, hi + 0.1 * (hi - lo) + 0.1
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        z = f(gx, gy)
        ax.contour(gx, gy, z, levels=np.unique(np.quantile(z, np.linspace(0.03, 1, 16) ** 2)),
                   colors="0.65", linewidths=0.7)
        for (label, p), style in zip(paths.items(), _styles(len(paths))):
            p = np.asarray(p)
            ax.plot(*p.T, label=label, lw=1.4, ms=4, markevery=max(1, (len(p) - 1) // 12), **style)
            ax.plot(*p[0], "o", color="black", ms=5)
            ax.plot(*p[-1], marker=style["marker"], color=style["color"], mec="black", ms=9,
                    zorder=4)
        if minimum:
            ax.plot(*minimum[0], "*", color="gold", mec="black", ms=14, label="minimum", zorder=5)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="x", ylabel="y")
        ax.set_title(textwrap.fill(panel, 52), fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize="small")
    _suptitle(fig, title)
    _save(fig, path, "plot_optimizer_paths")
    return fig

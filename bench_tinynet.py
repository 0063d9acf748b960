"""tinynet against PyTorch (CPU) on the same work: epoch and layer time, memory, where time goes.

    python bench_tinynet.py            # full run: several minutes, writes bench.json
    python bench_tinynet.py --quick    # subsets and fewer repeats, about a minute
    python bench_tinynet.py --busy     # also: MLP epoch with one core kept busy, by BLAS threads
    python bench_tinynet.py --smoke    # every code path on tiny random data, a few seconds
    python bench_tinynet.py --text     # train_text.py's LSTM and GPT alone, in both libraries
    python bench_tinynet.py --profile  # the per-phase profile of one training step alone

Every figure is a ratio taken in the same run (same machine, float32, data), alternating
the libraries, so that it holds on a noisy machine. PyTorch runs at 1 and at 2 threads
(torch.set_num_threads) and the faster is the reference; the tables say which won.
tinynet runs with NumPy's default BLAS threads (OpenBLAS: one per core), the way a user
runs it, and trains through `Sequential.fit(verbose=0)`.

The GEMM-bound limit: the same work's matrix products alone, done with np.matmul on float32
arrays of the same shapes, so that what tinynet spends outside BLAS is visible. Layer rows
give it for one forward + backward; epoch rows give it for one epoch ("limit": the products
of one training step, from `step_products`, times the steps; the last partial batch timed at
its own size). The profile (--profile, and part of every run) times one training step of
each workload phase by phase: each layer's forward and backward (with its products alone),
the loss, the optimizer (zero_grad included), and fit's own per-batch work, which is fit's
time per step less the sum of the phases.
"""
import argparse
import collections
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import tinynet as tn
import train_text

# The training workloads: layer names and arguments are the same in tinynet and torch.nn.
WORKLOADS = {
    "mlp": [("Flatten", ()), ("Linear", (784, 256)), ("ReLU", ()), ("Linear", (256, 10))],
    "cnn-small": [("Conv2d", (1, 8, 5)), ("MaxPool2d", (2,)), ("ReLU", ()),
                  ("Conv2d", (8, 16, 3)), ("MaxPool2d", (2,)), ("ReLU", ()),
                  ("Flatten", ()), ("Linear", (400, 10))],
    "cnn-32-64": [("Conv2d", (1, 32, 3, 1, 1)), ("ReLU", ()), ("MaxPool2d", (2,)),
                  ("Conv2d", (32, 64, 3, 1, 1)), ("ReLU", ()), ("MaxPool2d", (2,)),
                  ("Flatten", ()), ("Linear", (3136, 128)), ("ReLU", ()), ("Linear", (128, 10))],
    # train_mnist.py --model lstm: 28 rows of 28 pixels as steps, batch_first, the last step's h
    "lstm": [("Flatten", (1, 2)), ("LSTM", (28, 128, 1, True, True)), ("LastStep", ()),
             ("Linear", (128, 10))],
}
# train_mnist.py --model transformer: rows as tokens; torch twins of the two layers torch.nn lacks
WORKLOADS["transformer"] = [
    ("Flatten", (1, 2)), ("Linear", (28, 64)), ("PositionalEmbedding", (28, 64)),
    *[("TransformerEncoderLayer", (64, 4, 128, 0.1, "relu", 1e-5, True))] * 2,
    ("MeanOverSteps", ()), ("Linear", (64, 10))]
BATCH, LR = 64, 1e-3
TORCH_THREADS = (1, 2)
BUSY_WORKLOAD, BUSY_BATCH = "mlp", 128          # train_mnist.py's default model and batch


def blas_threads(n=None):
    """A context that sets NumPy's BLAS threads to n (None: leave them) with threadpoolctl."""
    import contextlib
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(n, user_api="blas")


def blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [{k: d.get(k) for k in ("internal_api", "num_threads", "architecture")}
                for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        return "threadpoolctl not installed"


def tinynet_model(spec):
    """The workload `spec` as a tinynet Sequential, compiled with Adam(lr=LR), CrossEntropyLoss."""
    model = tn.Sequential([getattr(tn, name)(*args) for name, args in spec])
    return model.compile(tn.Adam(model.parameters(), lr=LR), tn.CrossEntropyLoss())


def build(spec, batch=BATCH):
    """The same architecture in both libraries: tinynet's, and its torch twin with the same
    weights from Sequential.to_torch (torch.nn's layers; for those torch.nn lacks, the module a
    torch user writes: PositionalEmbedding a learned table added to x, MeanOverSteps a mean,
    LastStep, LSTM returning only its output)."""
    import torch
    model = tinynet_model(spec)
    tmodel = model.to_torch()
    return model, tmodel, torch.optim.Adam(tmodel.parameters(), lr=LR)


def torch_epoch(tmodel, topt, X, y, batch=BATCH):
    """One epoch of PyTorch training, shuffled minibatches, as fit does."""
    import torch
    perm = torch.randperm(len(X))
    for i in range(0, len(X), batch):
        idx = perm[i:i + batch]
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(X[idx]), y[idx]).backward()
        topt.step()


def timed(fn, pause=0.0):
    time.sleep(pause)               # let the other library's idle threads stop spinning
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_torch(times):
    """{threads: [seconds]} -> (median seconds of the fastest thread count, that count)."""
    n = min(times, key=lambda k: statistics.median(times[k]))
    return statistics.median(times[n]), n


def bench_epochs(X, y, epochs, pause, limit_repeats):
    """Median epoch time of each workload: tinynet, torch at 1 thread, torch at 2, alternating;
    and in each round the epoch's matrix products alone (epoch_limit, `limit_repeats` runs of a
    step's products), the median of the rounds."""
    import torch
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    rows = {}
    for name, spec in WORKLOADS.items():
        model, tmodel, topt = build(spec)
        limit_epoch = epoch_limit(model, len(X), X.shape[1:], rng)
        tn_times, torch_times, limit_times = [], {n: [] for n in TORCH_THREADS}, []
        for _ in range(epochs):
            tn_times.append(timed(lambda: model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0),
                                  pause))
            for n in TORCH_THREADS:
                torch.set_num_threads(n)
                torch_times[n].append(timed(lambda: torch_epoch(tmodel, topt, Xt, yt), pause))
            limit_times.append(limit_epoch(limit_repeats))
        tn_s = statistics.median(tn_times)
        torch_s, threads = best_torch(torch_times)
        limit_s = statistics.median(limit_times)
        rows[name] = {"tinynet_s": tn_s, "torch_s": torch_s, "torch_threads": threads,
                      "ratio": tn_s / torch_s,
                      "torch_s_by_threads": {str(n): statistics.median(t)
                                             for n, t in torch_times.items()},
                      "limit_s": limit_s, "tinynet_over_limit": tn_s / limit_s,
                      "torch_over_limit": torch_s / limit_s,
                      "limit_step_gflop": flops(step_products(model, BATCH, X.shape[1:])) / 1e9,
                      "limit_full_batches": len(X) // BATCH, "limit_last_batch": len(X) % BATCH}
        print(f"  {name:<11} epoch  tinynet {tn_s:7.2f} s   torch {torch_s:7.2f} s "
              f"({threads} thr)   ratio {tn_s / torch_s:5.2f}   limit {limit_s:7.2f} s   "
              f"tinynet/limit {tn_s / limit_s:5.2f}", flush=True)
    return rows


def epoch_limit(model, samples, input_shape, rng, batch=BATCH):
    """A function(repeats) -> seconds of one epoch's matrix products alone: the median of
    `repeats` runs of one step's products (step_products at `batch`, after a warm-up run) times
    the full batches, plus the same for the last partial batch at its own size."""
    full, rest = divmod(samples, batch)
    parts = [(full, gemm_limit(step_products(model, batch, input_shape), rng))]
    if rest:
        parts.append((1, gemm_limit(step_products(model, rest, input_shape), rng)))
    return lambda repeats: sum(count * median_s(fn, repeats) for count, fn in parts)


def call_times(fn, repeats):
    """Seconds of each of `repeats` calls of fn, after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_s(fn, repeats):
    """Median of `repeats` calls after a warm-up, in seconds."""
    return statistics.median(call_times(fn, repeats))


def min_ms(fn, repeats):
    """Fastest of `repeats` calls after a warm-up, in ms (min: the least disturbed by load)."""
    return 1e3 * min(call_times(fn, repeats))


# ── the GEMM-bound limit: a step's matrix products, derived from the layers' shapes ──
# A product is (what, b, m, k, n): b products (m, k)·(k, n), one batched np.matmul if b > 1,
# 2 b m k n FLOPs. Product adds the index of the layer that does it.
Product = collections.namedtuple("Product", "layer what b m k n")


def flops(products):
    """2 b m k n summed: the multiplies and adds of the products."""
    return sum(2 * p[-4] * p[-3] * p[-2] * p[-1] for p in products)


def gemm_limit(products, rng):
    """A function doing the products [(..., b, m, k, n), ...] (each tuple's last four; see
    Product) with np.matmul on float32 arrays. Products of one shape share one pair of arrays,
    as every step of a recurrent layer multiplies by the same W_hh."""
    arrays = {}
    for p in products:
        b, m, k, n = shape = tuple(p[-4:])
        batched = (b,) if b > 1 else ()
        if shape not in arrays:
            arrays[shape] = (rng.standard_normal(batched + (m, k), dtype=np.float32),
                             rng.standard_normal(batched + (k, n), dtype=np.float32))
    pairs = [arrays[tuple(p[-4:])] for p in products]

    def run():
        for a, b in pairs:
            a @ b
    return run


def linear_products(rows, in_features, out_features, input_grad=True):
    """Linear(F -> O) on x (M, F), M = rows (N, or N T for tokens):
    y = x·Wᵀ (M, F)·(F, O);  dW = dyᵀ·x (O, M)·(M, F);  dx = dy·W (M, O)·(O, F) if input_grad."""
    m, f, o = rows, in_features, out_features
    products = [("y = x·Wᵀ", 1, m, f, o), ("dW = dyᵀ·x", 1, o, m, f)]
    return products + [("dx = dy·W", 1, m, o, f)] * input_grad


def conv_gemms(n, c, h, w, o, k, p, s=1, input_grad=True):
    """Conv2d(C -> O, kernel k, padding p, stride s; each an int or a pair) on x (N, C, H, W),
    as tinynet's Conv2d does it, with K = C kH kW and P = N OH OW windows (cols: (K, P)):
    y = W·cols (O, K)·(K, P);  dW = (cols·dYᵀ)ᵀ (K, P)·(P, O);  dcols = Wᵀ·dY (K, O)·(O, P)
    if input_grad (col2im then adds dcols back: no product)."""
    (kh, kw), (ph, pw), (sh, sw) = (np.broadcast_to(v, 2).tolist() for v in (k, p, s))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    K, P = c * kh * kw, n * oh * ow
    products = [("y = W·cols", 1, o, K, P), ("dW = (cols·dYᵀ)ᵀ", 1, K, P, o)]
    return products + [("dcols = Wᵀ·dY", 1, K, o, P)] * input_grad


def recurrent_products(rnn, shape, input_grad=True):
    """RNN, LSTM, GRU (G = gates H: 4H for an LSTM, 3H a GRU, H an RNN) on x (N, T, F)
    (batch_first; else (T, N, F)); per layer and direction (F = D H above the first layer):
    xw = x·W_ihᵀ over all T at once (T N, F)·(F, G);  per step h·W_hhᵀ (N, H)·(H, G), T times;
    backward per step da·W_hh (N, G)·(G, H), T times (the gate gradients da: dhw for a GRU);
    dW_ih = daᵀ·x (G, T N)·(T N, F);  dW_hh = daᵀ·h (G, T N)·(T N, H);
    dx = da·W_ih (T N, G)·(G, F) except in the first layer when not input_grad."""
    n, t = shape[:2] if rnn.batch_first else shape[1::-1]
    hidden, directions = rnn.hidden_size, 1 + rnn.bidirectional
    g = rnn.gates * hidden
    products = []
    for layer in range(rnn.num_layers):
        f = directions * hidden if layer else rnn.input_size
        for _ in range(directions):
            products += [("xw = x·W_ihᵀ, all steps", 1, t * n, f, g)]
            products += [("h·W_hhᵀ, a step", 1, n, hidden, g)] * t
            products += [("da·W_hh, a step", 1, n, g, hidden)] * t
            products += [("dW_ih = daᵀ·x", 1, g, t * n, f), ("dW_hh = daᵀ·h", 1, g, t * n, hidden)]
            products += [("dx = da·W_ih", 1, t * n, g, f)] * (layer > 0 or input_grad)
    return products


def attention_products(mha, shape):
    """MultiheadAttention, self-attention (the in-projection one product), h heads of d = E / h
    features, on x (N, L, E) (batch_first; else (L, N, E)):
    forward   qkv = x·W_inᵀ (N L, E)·(E, 3E);  scores S = Q·Kᵀ, N h products (L, d)·(d, L);
              o = A·V, N h (L, L)·(L, d)  (A = softmax(S));  y = o·W_outᵀ (N L, E)·(E, E)
    backward  dW_out = dyᵀ·o (E, N L)·(N L, E);  do = dy·W_out (N L, E)·(E, E);
              dA = do·Vᵀ N h (L, d)·(d, L);  dV = Aᵀ·do N h (L, L)·(L, d);
              dQ = dS·K N h (L, L)·(L, d);  dK = dSᵀ·Q N h (L, L)·(L, d);
              dW_in = dqkvᵀ·x (3E, N L)·(N L, E);  dx = dqkv·W_in (N L, 3E)·(3E, E)
    (tinynet's attention computes dx also as a model's first layer)."""
    e, h = mha.embed_dim, mha.num_heads
    d = e // h
    n, t = shape[:2] if mha.batch_first else shape[1::-1]
    rows, pairs = n * t, n * h
    return [("qkv = x·W_inᵀ", 1, rows, e, 3 * e), ("S = Q·Kᵀ", pairs, t, d, t),
            ("o = A·V", pairs, t, t, d), ("y = o·W_outᵀ", 1, rows, e, e),
            ("dW_out = dyᵀ·o", 1, e, rows, e), ("do = dy·W_out", 1, rows, e, e),
            ("dA = do·Vᵀ", pairs, t, d, t), ("dV = Aᵀ·do", pairs, t, t, d),
            ("dQ = dS·K", pairs, t, t, d), ("dK = dSᵀ·Q", pairs, t, t, d),
            ("dW_in = dqkvᵀ·x", 1, 3 * e, rows, e), ("dx = dqkv·W_in", 1, rows, 3 * e, e)]


def layer_products(layer, shape, input_grad=True):
    """The products (what, b, m, k, n) of one layer's forward and backward on an input of
    `shape`; input_grad False: without the input gradient's, where the layer skips it."""
    if isinstance(layer, tn.Linear):
        return linear_products(math.prod(shape[:-1]), layer.in_features, layer.out_features,
                               input_grad)
    if isinstance(layer, tn.Conv2d):
        return conv_gemms(*shape, layer.out_channels, layer.kernel_size, layer.padding,
                          layer.stride, input_grad)
    if isinstance(layer, (tn.RNN, tn.LSTM, tn.GRU)):
        return recurrent_products(layer, shape, input_grad)
    if isinstance(layer, tn.MultiheadAttention):
        return attention_products(layer, shape)
    if isinstance(layer, tn.TransformerEncoderLayer):
        rows, e, f = math.prod(shape[:-1]), layer.d_model, layer.dim_feedforward
        return (attention_products(layer.self_attn, shape)
                + [(f"linear1 {what}", *p) for what, *p in linear_products(rows, e, f)]
                + [(f"linear2 {what}", *p) for what, *p in linear_products(rows, f, e)])
    if isinstance(layer, (tn.TransformerDecoderLayer, tn.RNNCell, tn.LSTMCell, tn.GRUCell,
                          tn.Model)):
        raise ValueError(f"step_products: no count of {type(layer).__name__}'s products")
    return []            # activations, pooling, Flatten, normalisation, embeddings, dropout, ...


def input_shapes(model, batch, input_shape):
    """The shape of each layer's input in `model`, from one forward pass of a zero batch in
    eval mode (the model's mode restored after)."""
    training = model.training
    model.eval()
    x, shapes = np.zeros((batch, *input_shape), np.float32), []
    for layer in model:
        shapes.append(x.shape)
        x = layer.forward(x)
    model.train(training)
    return shapes


def step_products(model_or_spec, batch, input_shape):
    """The matrix products of one training step (forward and backward) of a tn.Sequential, or
    of a spec as in WORKLOADS, on a batch of `batch` inputs of shape input_shape: a list of
    Product(layer, what, b, m, k, n), b products (m, k)·(k, n) (b > 1: one batched matmul) done
    by layer number `layer`; 2 b m k n FLOPs each. The shape each layer gets comes from one
    forward pass of zeros (input_shapes). As in fit (after compile), the first layer with
    parameters skips its input gradient (Linear, Conv2d and the recurrent layers do).
    With N = batch, per layer:
      Linear(F -> O), x (M, F), M = N (N T for tokens):
          y = x·Wᵀ (M, F)·(F, O);  dW = dyᵀ·x (O, M)·(M, F);  dx = dy·W (M, O)·(O, F)
      Conv2d(C -> O), K = C kH kW, P = N OH OW (see conv_gemms):
          y = W·cols (O, K)·(K, P);  dW (K, P)·(P, O);  dcols = Wᵀ·dY (K, O)·(O, P)
      LSTM (G = 4H; GRU 3H, RNN H), x (N, T, F) (see recurrent_products):
          x·W_ihᵀ (T N, F)·(F, G);  T times h·W_hhᵀ (N, H)·(H, G) and da·W_hh (N, G)·(G, H);
          dW_ih (G, T N)·(T N, F);  dW_hh (G, T N)·(T N, H);  dx = da·W_ih (T N, G)·(G, F)
      MultiheadAttention, x (N, L, E), h heads of d (see attention_products):
          in-projection (N L, E)·(E, 3E), N h of Q·Kᵀ (L, d)·(d, L) and A·V (L, L)·(L, d),
          out-projection (N L, E)·(E, E); backward: dW_out, do, and N h of dA, dV, dQ, dK,
          then dW_in (3E, N L)·(N L, E), dx (N L, 3E)·(3E, E)
      TransformerEncoderLayer(E, F): its self_attn, then linear1 (E -> F), linear2 (F -> E)
    Other layers (activations, pooling, Flatten, normalisation, PositionalEmbedding, dropout,
    LastStep, MeanOverSteps) do no matrix product."""
    model = (model_or_spec if isinstance(model_or_spec, tn.Sequential)
             else tn.Sequential([getattr(tn, name)(*args) for name, args in model_or_spec]))
    layers = list(model)
    first = next((layer for layer in layers if layer.parameters()), None)
    products = []
    for i, (layer, shape) in enumerate(zip(layers, input_shapes(model, batch, input_shape))):
        products += [Product(i, *p) for p in layer_products(layer, shape, layer is not first)]
    return products


def layer_cases(n=BATCH):
    """label, (name, args), input shape, matrix products of forward + backward, and the memory
    order of tinynet's input: "C", or "conv" for a Conv2d's output (batch innermost, see Conv2d),
    which is what a layer after a Conv2d gets in a network; batch n."""
    return [
        ("Conv2d 32->64 k3 p1 @14", ("Conv2d", (32, 64, 3, 1, 1)), (n, 32, 14, 14),
         conv_gemms(n, 32, 14, 14, 64, 3, 1), "C"),
        ("Conv2d 1->32 k3 p1 @28", ("Conv2d", (1, 32, 3, 1, 1)), (n, 1, 28, 28),
         conv_gemms(n, 1, 28, 28, 32, 3, 1), "C"),
        ("Conv2d 1->8 k5 @28", ("Conv2d", (1, 8, 5)), (n, 1, 28, 28),
         conv_gemms(n, 1, 28, 28, 8, 5, 0), "C"),
        ("Conv2d 8->16 k3 @12", ("Conv2d", (8, 16, 3)), (n, 8, 12, 12),
         conv_gemms(n, 8, 12, 12, 16, 3, 0), "C"),
        ("Linear 784->256", ("Linear", (784, 256)), (n, 784),
         linear_products(n, 784, 256), "C"),
        ("MaxPool2d(2) @28", ("MaxPool2d", (2,)), (n, 32, 28, 28), [], "C"),
        ("BatchNorm2d(32) @28", ("BatchNorm2d", (32,)), (n, 32, 28, 28), [], "C"),
        ("BatchNorm2d(32) @28 conv out", ("BatchNorm2d", (32,)), (n, 32, 28, 28), [], "conv"),
    ]


def laid_out_like(a, values):
    """`values` copied into a new array with a's memory order (np.empty_like keeps it)."""
    out = np.empty_like(a)
    out[...] = values
    return out


def bench_layers(repeats, batch=BATCH):
    """Forward + backward of single layers in float32: tinynet, torch (best threads), GEMM limit.
    The libraries alternate in rounds; each figure is the fastest call over all rounds."""
    import torch
    rng = np.random.default_rng(0)
    rows = {}
    for label, (name, args), shape, products, order in layer_cases(batch):
        xt = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).requires_grad_()
        x = xt.detach().numpy()
        # tinynet's Conv2d output: (C, H, W, N) memory, an (N, C, H, W) view
        if order == "conv":
            x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        layer, tlayer = getattr(tn, name)(*args), getattr(torch.nn, name)(*args)
        gt = torch.from_numpy(rng.standard_normal(tlayer(xt).shape, dtype=np.float32))
        # Each library gets the upstream gradient in its own output's memory order, as the
        # layer after it hands it back in a network (torch's outputs are C-ordered).
        g = laid_out_like(layer.forward(x), gt.numpy())
        fns = {"tinynet": lambda: (layer.forward(x), layer.backward(g)),
               "gemm": gemm_limit(products, rng) if products else None}
        for n in TORCH_THREADS:
            fns[n] = (lambda n=n: (torch.set_num_threads(n), tlayer(xt).backward(gt)))
        rows[label] = timing_row(fns, repeats)
    logits = rng.standard_normal((batch, 10), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    loss, tlogits, tlabels = (tn.CrossEntropyLoss(), torch.from_numpy(logits).requires_grad_(),
                              torch.from_numpy(labels))
    fns = {"tinynet": lambda: (loss.forward(logits, labels), loss.backward()), "gemm": None}
    for n in TORCH_THREADS:
        fns[n] = (lambda n=n: (torch.set_num_threads(n),
                               torch.nn.functional.cross_entropy(tlogits, tlabels).backward()))
    rows[f"CrossEntropyLoss ({batch}, 10)"] = timing_row(fns, repeats)
    for label, r in rows.items():
        gemm = "      -" if r["gemm_ms"] is None else f"{r['gemm_ms']:7.3f}"
        print(f"  {label:<30} fwd+bwd  tinynet {r['tinynet_ms']:7.3f} ms   "
              f"torch {r['torch_ms']:7.3f} ms ({r['torch_threads']} thr)   "
              f"ratio {r['ratio']:5.2f}   GEMM limit {gemm} ms", flush=True)
    return rows


def timing_row(fns, repeats, rounds=3):
    """Alternate the functions over `rounds`; keep each one's fastest call."""
    best = {k: float("inf") for k, f in fns.items() if f is not None}
    for _ in range(rounds):
        for k in best:
            best[k] = min(best[k], min_ms(fns[k], max(1, repeats // rounds)))
    threads = min(TORCH_THREADS, key=best.get)
    return {"tinynet_ms": best["tinynet"], "torch_ms": best[threads], "torch_threads": threads,
            "torch_ms_by_threads": {str(n): best[n] for n in TORCH_THREADS},
            "gemm_ms": best.get("gemm"), "ratio": best["tinynet"] / best[threads]}


def profile_step(model, xb, yb, clock=time.perf_counter):
    """One training step on (xb, yb) as train_step does it, phase by phase, each timed in
    seconds: every layer's forward; the loss's forward and backward; the optimizer's zero_grad;
    every layer's backward, last to first, stopping where one returns None (as
    Sequential.backward: 0 for the layers it does not reach); the optimizer's step."""
    layers = list(model)
    forward, backward = [0.0] * len(layers), [0.0] * len(layers)
    out = xb
    for i, layer in enumerate(layers):
        start = clock()
        out = layer.forward(out)
        forward[i] = clock() - start
    start = clock()
    model.loss.forward(out, yb)
    grad = model.loss.backward()
    loss = clock() - start
    start = clock()
    model.optimizer.zero_grad()
    zero_grad = clock() - start
    for i in reversed(range(len(layers))):
        start = clock()
        grad = layers[i].backward(grad)
        backward[i] = clock() - start
        if grad is None:
            break
    start = clock()
    model.optimizer.step()
    step = clock() - start
    return {"forward": forward, "backward": backward, "loss": loss, "zero_grad": zero_grad,
            "optimizer_step": step}


class BatchStarts(tn.Callback):
    """Notes the clock at the start of every training batch: from one start to the next is
    fit's whole time for a step (the gather, train_step, accuracy, logs, callbacks)."""

    def __init__(self):
        self.starts = []

    def on_train_batch_begin(self, batch, logs=None):
        self.starts.append(time.perf_counter())


def bench_profile(X, y, steps, warmup, rounds, batch=BATCH):
    """Where one training step's time goes, for each workload (tinynet alone, float32, Adam):
    `rounds` rounds of `steps` steps on the first steps * batch samples, after `warmup` steps;
    each round: the steps phase by phase (profile_step), each layer's products alone `steps`
    times (step_products), and one epoch of fit on those samples, with BatchStarts: fit's time
    per step, from one batch's start to the next. Every figure is a median over the steps
    (fit's: over its rounds * (steps - 1) intervals), in ms, so that a step disturbed by the
    machine's load counts no more in fit's time than in the phases'. fit's own per-batch work
    = fit's time per step - the sum of the phases. A layer's share: (forward + backward) /
    fit's step. Also kept: fit's epoch time / steps (a mean), median of the rounds."""
    rng = np.random.default_rng(1)
    samples = steps * batch
    X, y = X[:samples], y[:samples]
    rows = {}
    for name, spec in WORKLOADS.items():
        model = tinynet_model(spec)
        layers = list(model)
        products = step_products(model, batch, X.shape[1:])
        limits = [gemm_limit([p for p in products if p.layer == i], rng)
                  if any(p.layer == i for p in products) else None for i in range(len(layers))]
        model.train()
        for _ in range(warmup):
            rows_of_batch = rng.choice(samples, batch, replace=False)
            profile_step(model, X[rows_of_batch], y[rows_of_batch])
        phases, products_s, fit_step_s, fit_epoch_s = [], [[] for _ in layers], [], []
        for _ in range(rounds):
            order = rng.permutation(samples)
            for b in range(steps):
                rows_of_batch = order[b * batch:(b + 1) * batch]     # gathered as fit gathers
                phases.append(profile_step(model, X[rows_of_batch], y[rows_of_batch]))
            for i, limit in enumerate(limits):
                if limit is not None:
                    products_s[i].append(median_s(limit, steps))
            clock = BatchStarts()
            fit_epoch_s.append(timed(lambda: model.fit(X, y, epochs=1, batch_size=batch,
                                                       verbose=0, callbacks=[clock])))
            fit_step_s += np.diff(clock.starts).tolist()
        rows[name] = profile_row(layers, model, phases, products_s, fit_step_s)
        rows[name].update(batch=batch, steps=steps, rounds=rounds, warmup=warmup,
                          fit_epoch_step_ms=1e3 * statistics.median(fit_epoch_s) / steps)
        print_profile(name, rows[name])
    return rows


def profile_row(layers, model, phases, products_s, fit_step_s):
    """The medians of bench_profile's measurements, in ms, and the shares of fit's step."""
    def ms(values):
        return 1e3 * statistics.median(values)
    step = ms(fit_step_s)
    row = {"fit_step_ms": step, "layers": []}
    for i, layer in enumerate(layers):
        forward = ms([p["forward"][i] for p in phases])
        backward = ms([p["backward"][i] for p in phases])
        row["layers"].append({"layer": f"{i} {type(layer).__name__}", "forward_ms": forward,
                              "backward_ms": backward,
                              "products_ms": ms(products_s[i]) if products_s[i] else None,
                              "share": (forward + backward) / step})
    row["loss"], row["optimizer"] = type(model.loss).__name__, type(model.optimizer).__name__
    for phase in ("loss", "zero_grad", "optimizer_step"):
        row[f"{phase}_ms"] = ms([p[phase] for p in phases])
    row["optimizer_ms"] = row["zero_grad_ms"] + row["optimizer_step_ms"]
    row["phases_ms"] = (sum(r["forward_ms"] + r["backward_ms"] for r in row["layers"])
                        + row["loss_ms"] + row["optimizer_ms"])
    row["fit_own_ms"] = step - row["phases_ms"]
    row["products_ms"] = sum(r["products_ms"] or 0 for r in row["layers"])
    for key in ("loss", "optimizer", "fit_own", "products"):
        row[f"{key}_share"] = row[f"{key}_ms"] / step
    return row


def print_profile(name, row):
    """The profile of one workload as a compact table (ms, and shares of fit's step)."""
    print(f"  {name}: fit's step {row['fit_step_ms']:.3f} ms (batch {row['batch']}; an epoch's "
          f"mean {row['fit_epoch_step_ms']:.3f}); medians of {row['rounds']} rounds of "
          f"{row['steps']} steps after {row['warmup']} warm-up, ms\n"
          f"    {'layer':<27}{'forward':>9}{'backward':>10}{'products':>10}{'share':>8}",
          flush=True)
    for r in row["layers"]:
        products = "-" if r["products_ms"] is None else f"{r['products_ms']:.3f}"
        print(f"    {r['layer']:<27}{r['forward_ms']:9.3f}{r['backward_ms']:10.3f}{products:>10}"
              f"{r['share']:8.1%}")
    optimizer = (f"optimizer {row['optimizer']}: step {row['optimizer_step_ms']:.3f}"
                 f" + zero_grad {row['zero_grad_ms']:.3f}")
    for label, key in [(f"loss {row['loss']}, forward + backward", "loss"),
                       (optimizer, "optimizer"),
                       ("fit's own per-batch work (step - phases)", "fit_own"),
                       ("the step's products alone (layers' summed)", "products")]:
        print(f"    {label:<46}{row[key + '_ms']:10.3f}{row[key + '_share']:8.1%}")


def bench_busy(X, y, repeats, pause):
    """MLP epoch (train_mnist's default: 784-256-10, batch 128, Adam) as train_mnist.py runs it
    (--threads auto: tn.BlasThreads picks 1 or 2 BLAS threads on the first batches), with 1 and
    2 threads forced, and with NumPy's default (2), on a quiet machine and with one core busy.
    Each is a fresh one-epoch fit (the worst case for auto: its trial turns are not spread over
    several epochs), `repeats` times, alternating, the order rotated each round; medians, with
    auto's choices counted."""
    rows = {}
    for state in ("quiet", "busy"):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if state == "busy"
                else None)
        try:
            times, chosen = {"auto": [], "default": [], "1": [], "2": []}, []
            for i in range(repeats):
                keys = list(times)
                for key in keys[i % len(keys):] + keys[:i % len(keys)]:  # each goes first in turn
                    model, _, _ = build(WORKLOADS[BUSY_WORKLOAD])
                    callbacks = [tn.BlasThreads()] if key == "auto" else []
                    with blas_threads(int(key) if key.isdigit() else 2):  # restored after each run
                        times[key].append(timed(lambda: model.fit(X, y, epochs=1,
                                                                  batch_size=BUSY_BATCH, verbose=0,
                                                                  callbacks=callbacks), pause))
                    if callbacks:
                        chosen.append(callbacks[0].chosen)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        row = {f"{k}_s": statistics.median(v) for k, v in times.items()}
        row["runs_s"], row["auto_chose"] = times, {str(n): chosen.count(n)
                                                   for n in sorted(set(chosen))}
        row["auto_over_best"] = row["auto_s"] / min(row["1_s"], row["2_s"])
        row["default_over_best"] = row["default_s"] / min(row["1_s"], row["2_s"])
        rows[state] = row
        spread = "   ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in times.items())
        print(f"  {state:<5} mlp epoch  auto {row['auto_s']:6.2f} s   1 thread {row['1_s']:6.2f} s "
              f"  2 threads {row['2_s']:6.2f} s   auto / best {row['auto_over_best']:5.2f}   "
              f"(NumPy's default, 2 threads: {row['default_over_best']:5.2f})\n"
              f"        auto chose {row['auto_chose']} threads; range over {repeats} runs: "
              f"{spread}", flush=True)
    return rows


def status_mb(field):
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), in MB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def memory_child(library, workload, n, epochs, synthetic):
    """Run in a fresh process: train `epochs` epochs of one workload; print JSON with the
    RSS before training, the peak RSS during the first epoch, and the RSS after each epoch."""
    X, y = load(n, synthetic)
    if library == "tinynet":
        model = tn.Sequential([getattr(tn, name)(*args) for name, args in WORKLOADS[workload]])
        model.compile(tn.Adam(model.parameters(), lr=LR), tn.CrossEntropyLoss())
        epoch = lambda: model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)  # noqa: E731
    else:
        import torch
        tmodel = tn.Sequential([getattr(tn, name)(*args)
                                for name, args in WORKLOADS[workload]]).to_torch()
        topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        epoch = lambda: torch_epoch(tmodel, topt, Xt, yt)  # noqa: E731
    before = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM) to the current RSS
        f.write("5")
    epoch()
    peak, after = status_mb("VmHWM"), [status_mb("VmRSS")]     # the first epoch's peak
    for _ in range(epochs - 1):
        epoch()
        after.append(status_mb("VmRSS"))
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "rss_after_epoch_mb": after}))


def bench_memory(n, epochs, workloads, synthetic):
    """Peak RSS of a training epoch, each library and workload in a fresh subprocess (the two
    libraries' processes of a workload run side by side: RSS is per process). --smoke runs
    tinynet's only: a torch child spends seconds importing torch, and its code path is the
    epoch benchmark's."""
    rows, libraries = {}, ("tinynet",) if synthetic else ("tinynet", "torch")
    for workload in workloads:
        children = {library: subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--memory-child", library, workload,
             "--n", str(n), "--epochs", str(epochs)] + ["--smoke"] * synthetic,
            stdout=subprocess.PIPE, text=True)
            for library in libraries}
        row = {}
        for library, child in children.items():
            out, _ = child.communicate()
            if child.returncode:
                raise RuntimeError(f"memory child {library} {workload} failed with code "
                                   f"{child.returncode}")
            r = json.loads(out.strip().splitlines()[-1])
            row[f"{library}_peak_mb"] = r["peak_rss_mb"]
            row[f"{library}_epoch_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
            row[f"{library}_growth_mb"] = r["rss_after_epoch_mb"][-1] - r["rss_after_epoch_mb"][0]
        rows[workload] = row
        if synthetic:
            print(f"  {workload:<10} peak RSS in epoch 1  tinynet {row['tinynet_peak_mb']:5.0f} MB",
                  flush=True)
            continue
        print(f"  {workload:<10} peak RSS in epoch 1  tinynet {row['tinynet_peak_mb']:5.0f} MB "
              f"(+{row['tinynet_epoch_mb']:.0f} over the start)   "
              f"torch {row['torch_peak_mb']:5.0f} MB (+{row['torch_epoch_mb']:.0f})   "
              f"growth over {epochs} epochs: tinynet {row['tinynet_growth_mb']:+.1f} MB, "
              f"torch {row['torch_growth_mb']:+.1f} MB", flush=True)
    return rows


def load(n, synthetic=False):
    """The first n MNIST training images, or n random images of the same shape (--smoke)."""
    if synthetic:
        rng = np.random.default_rng(0)
        return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)
    X, y, _, _ = tn.load_mnist()
    return np.ascontiguousarray(X[:n]), y[:n]


# ── train_text.py's language model in both libraries (--text) ──────────────────
# The same recipe run twice: the same initial weights (tinynet's, through to_torch), the same
# windows in the same batches in the same order, Adam with the same settings, float32.
# Each epoch is timed in both libraries, alternating (the ratio: of the median epochs, which
# holds on a busy machine); then both validation losses.

def text_pair(kind, vocab_size, embed, hidden, seq_len, lr, dtype=np.float32, seed=0,
              **gpt_options):
    """(tinynet model compiled with Adam(lr) and CrossEntropyLoss, its torch twin with the same
    weights from Sequential.to_torch, torch's Adam(lr)): train_text.build_model under
    manual_seed(seed), in dtype. gpt_options: the GPT's layers, heads, dropout and tie."""
    import torch
    tn.manual_seed(seed)
    model = train_text.build_model(kind, vocab_size, embed=embed, hidden=hidden,
                                   seq_len=seq_len, **gpt_options).astype(dtype)
    model.compile(tn.Adam(model.parameters(), lr=lr), tn.CrossEntropyLoss())
    tmodel = model.to_torch()                       # a tied head stays tied (--tie)
    return model, tmodel, torch.optim.Adam(tmodel.parameters(), lr=lr)


def tinynet_text_epoch(model, X, Y, order, batch):
    """One epoch of model.fit on the windows in `order`, in batches of `batch` as they come
    (shuffle=False) -> (loss of every batch, seconds)."""
    start = time.perf_counter()
    history = model.fit(X[order], Y[order], batch_size=batch, epochs=1, shuffle=False,
                        verbose=0)
    return history.batch_loss, time.perf_counter() - start


def torch_text_epoch(tmodel, topt, X, Y, order, batch):
    """The same epoch in torch: the same batches, cross_entropy over (N, V, T) and (N, T)."""
    import torch
    F = torch.nn.functional
    Xt, Yt = torch.from_numpy(X[order]), torch.from_numpy(Y[order])
    losses = []
    tmodel.train()
    start = time.perf_counter()
    for i in range(0, len(Xt), batch):
        topt.zero_grad()
        loss = F.cross_entropy(tmodel(Xt[i:i + batch]), Yt[i:i + batch])
        loss.backward()
        topt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def torch_text_loss(tmodel, X, Y, batch=256):
    """torch's mean cross-entropy over every position of the windows X, Y."""
    import torch
    tmodel.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            logits = tmodel(torch.from_numpy(X[i:i + batch]))
            y = torch.from_numpy(Y[i:i + batch])
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return total / Y.size


def faster_torch_threads(tmodel, topt, X, Y, batch, steps=4):
    """Set torch to the faster of TORCH_THREADS on `steps` batches of a throwaway copy of the
    model and optimizer (the median step after one warm-up); returns that count."""
    import copy

    import torch
    medians = {}
    for n in TORCH_THREADS:
        torch.set_num_threads(n)
        net = copy.deepcopy(tmodel)
        opt = type(topt)(net.parameters(), **topt.defaults)
        times = [torch_text_epoch(net, opt, X, Y, np.arange(min(batch, len(X))), batch)[1]
                 for _ in range(steps + 1)]
        medians[n] = statistics.median(times[1:])
    threads = min(medians, key=medians.get)
    torch.set_num_threads(threads)
    return threads


# --smoke: a tiny recipe on 2,000 random characters (every code path, no meaning)
SMOKE_TEXT_RECIPE = argparse.Namespace(model="lstm", epochs=1, batch_size=16, seq_len=16, embed=8,
                                       hidden=16, lr=2e-3, seed=0)
SMOKE_GPT_RECIPE = argparse.Namespace(**{**vars(SMOKE_TEXT_RECIPE), "model": "gpt", "layers": 1,
                                         "heads": 2, "dropout": 0.0, "tie": True})
GPT_OPTIONS = ("layers", "heads", "dropout", "tie")     # the recipe's flags only the GPT takes


def text_data(seq_len, synthetic=False):
    """train_text.py's windows (X_train, Y_train, X_val, Y_val) and V: Tiny Shakespeare cut as
    the script cuts it, or (--smoke) 2,000 random characters."""
    if synthetic:
        text = "".join(np.random.default_rng(0).choice(list("abcdefgh \n"), 2000))
    else:
        text = tn.load_shakespeare()
    codes, chars = train_text.encode(text)
    split = int(0.9 * len(codes))
    X, Y = train_text.windows(codes[:split], seq_len)
    X_val, Y_val = train_text.windows(codes[split:], seq_len)
    return X, Y, X_val, Y_val, len(chars)


def bench_text(recipe, synthetic=False, windows=None):
    """Train train_text.py's model with `recipe` (its parsed default flags) in both libraries,
    epoch by epoch alternating; the orders of the windows come from one generator seeded with
    recipe.seed. windows: use the first that many training windows (--quick)."""
    X, Y, X_val, Y_val, V = text_data(recipe.seq_len, synthetic)
    X, Y = X[:windows], Y[:windows]
    gpt_options = {k: getattr(recipe, k) for k in GPT_OPTIONS} if recipe.model == "gpt" else {}
    model, tmodel, topt = text_pair(recipe.model, V, recipe.embed, recipe.hidden, recipe.seq_len,
                                    recipe.lr, seed=recipe.seed, **gpt_options)
    threads = faster_torch_threads(tmodel, topt, X, Y, recipe.batch_size)
    rng = np.random.default_rng(recipe.seed)
    times = {"tinynet": [], "torch": []}                    # seconds of each epoch
    losses = {"tinynet": [], "torch": []}
    for epoch in range(recipe.epochs):
        order = rng.permutation(len(X))
        for library in ("tinynet", "torch"):
            time.sleep(0 if synthetic else 1.0)      # let the other library's threads settle
            if library == "tinynet":
                batch_losses, seconds = tinynet_text_epoch(model, X, Y, order, recipe.batch_size)
            else:
                batch_losses, seconds = torch_text_epoch(tmodel, topt, X, Y, order,
                                                         recipe.batch_size)
            times[library].append(seconds)
            losses[library] += batch_losses
        if not synthetic:
            print(f"  epoch {epoch + 1}/{recipe.epochs}: tinynet {times['tinynet'][-1]:.1f} s, "
                  f"torch {times['torch'][-1]:.1f} s; last batch's loss tinynet "
                  f"{losses['tinynet'][-1]:.4f}, torch {losses['torch'][-1]:.4f}", flush=True)
    row = {"recipe": {k: getattr(recipe, k) for k in ("model", "epochs", "batch_size", "seq_len",
                                                      "embed", "hidden", "lr", "seed")}
           | gpt_options,
           "train_windows": len(X), "val_windows": len(X_val), "vocab_size": V,
           "torch_threads": threads,
           "tinynet_s": sum(times["tinynet"]), "torch_s": sum(times["torch"]),
           "tinynet_epoch_s": statistics.median(times["tinynet"]),
           "torch_epoch_s": statistics.median(times["torch"]),
           "epochs_s": times,
           "tinynet_val_loss": model.evaluate(X_val, Y_val)["loss"],
           "torch_val_loss": torch_text_loss(tmodel, X_val, Y_val),
           "tinynet_last_loss": losses["tinynet"][-1], "torch_last_loss": losses["torch"][-1]}
    row["ratio"] = row["tinynet_epoch_s"] / row["torch_epoch_s"]
    row["val_loss_difference"] = row["tinynet_val_loss"] - row["torch_val_loss"]
    blocks = "".join(f" {k} {v}" for k, v in gpt_options.items())     # " layers 2 heads 4 ..."
    print(f"  text {recipe.model} E {recipe.embed} H {recipe.hidden}{blocks} T {recipe.seq_len}, "
          f"batch {recipe.batch_size}, {recipe.epochs} epochs of {len(X)} windows: training "
          f"tinynet {row['tinynet_s']:.1f} s   torch {row['torch_s']:.1f} s "
          f"({row['torch_threads']} thr); median epoch tinynet {row['tinynet_epoch_s']:.1f} s   "
          f"torch {row['torch_epoch_s']:.1f} s   ratio {row['ratio']:.2f}\n"
          f"  validation loss (nats per character): tinynet {row['tinynet_val_loss']:.4f}   "
          f"torch {row['torch_val_loss']:.4f}   difference {row['val_loss_difference']:+.4f}",
          flush=True)
    return row


def write_json(results, path):
    """Write results to `path` via a temporary file, renamed only when complete."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def main_text(args, info):
    """--text: train_text.py's default recipe, then the same with --model gpt (--quick: 1 epoch
    on 1,000 windows; --smoke: the tiny recipes on random text) in both libraries; writes
    {"info", "text", "text_gpt"} to args.out."""
    recipe = (SMOKE_TEXT_RECIPE if args.smoke
              else train_text.parse_args(["--epochs", "1"] if args.quick else [])[1])
    del info["train_samples"]
    print("train_text.py's language model in tinynet and PyTorch CPU, float32: the same initial "
          "weights, batches and Adam; torch at its faster of 1 and 2 threads, tinynet at NumPy's "
          "default BLAS threads:", json.dumps(info), flush=True)
    results = {"info": info, "text": bench_text(recipe, args.smoke, 1000 if args.quick else None)}
    gpt = (SMOKE_GPT_RECIPE if args.smoke
           else train_text.parse_args(["--model", "gpt"] + ["--epochs", "1"] * args.quick)[1])
    results["text_gpt"] = bench_text(gpt, args.smoke, 1000 if args.quick else None)
    write_json(results, args.out)
    print(f"wrote {args.out}")


PROFILE_TITLE = ("one training step by phase, tinynet (Adam lr 1e-3, CrossEntropyLoss); optimizer: "
                 "its step and zero_grad; products: the layer's matrix products alone (NumPy); "
                 "share: of fit's step:")


def main_profile(args, info, profile):
    """--profile: bench_profile alone (tinynet only), on MNIST's first steps * batch images
    (--smoke: random ones); writes {"info", "profile"} to args.out."""
    print("where tinynet's training step goes, float32, NumPy's default BLAS threads:",
          json.dumps(info), flush=True)
    tn.manual_seed(0)
    X, y = load(info["train_samples"], args.smoke)
    print(PROFILE_TITLE, flush=True)
    results = {"info": info, "profile": bench_profile(X, y, **profile)}
    write_json(results, args.out)
    print(f"wrote {args.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsets and fewer repeats: about a minute")
    p.add_argument("--smoke", action="store_true",
                   help="every code path on tiny random data (no timing value)")
    p.add_argument("--busy", action="store_true",
                   help="also time the MLP epoch with one core kept busy")
    alone = p.add_mutually_exclusive_group()
    alone.add_argument("--text", action="store_true",
                       help="only train_text.py's language models, its default recipe and the "
                            "same with --model gpt, in both libraries: minutes (with --quick: 1 "
                            "epoch on 1,000 windows)")
    alone.add_argument("--profile", action="store_true",
                       help="only the profile of one training step of each workload in tinynet, "
                            "phase by phase (every run has it): layers' forward and backward "
                            "with their products alone, loss, optimizer, fit's own work; "
                            "medians of 3 rounds of 50 steps (--quick: of 20), in ms")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per workload and library (median taken)")
    p.add_argument("--out", default="bench.json", help="where to write the results as JSON")
    p.add_argument("--memory-child", nargs=2, metavar=("LIBRARY", "WORKLOAD"),
                   help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.n, args.epochs, args.smoke)

    import torch
    # --smoke: 160 samples, 2 full batches and a partial one (the limit's last-batch path)
    if args.smoke:
        n, epochs, repeats, pause, mem_n, mem_workloads = 160, 1, 1, 0.0, 128, ["mlp"]
        limit_repeats, profile = 1, dict(steps=2, warmup=1, rounds=1, batch=8)
    elif args.quick:
        n, epochs, repeats, pause, mem_n, mem_workloads = 2000, 3, 6, 0.2, 2000, list(WORKLOADS)
        limit_repeats, profile = 10, dict(steps=20, warmup=5, rounds=3, batch=BATCH)
    else:
        n, epochs, repeats, pause, mem_n, mem_workloads = (60000, max(3, args.epochs), 30, 1.0,
                                                           20000, list(WORKLOADS))
        limit_repeats, profile = 20, dict(steps=50, warmup=10, rounds=3, batch=BATCH)
    if args.profile:
        n = profile["steps"] * profile["batch"]
    info = {"date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "torch_threads_tried": list(TORCH_THREADS),
            "tinynet_blas": blas_info(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "train_samples": n, "quick": args.quick, "smoke": args.smoke}
    if args.text:
        return main_text(args, info)
    if args.profile:
        return main_profile(args, info, profile)
    print("tinynet vs PyTorch CPU, float32, batch 64, Adam lr 1e-3; torch at its faster of 1 and 2 "
          "threads, tinynet at NumPy's default BLAS threads:", json.dumps(info), flush=True)
    tn.manual_seed(0)
    torch.manual_seed(0)
    X, y = load(n, args.smoke)
    print(f"epoch time (median of {epochs} epochs, alternating, {pause} s pause between runs):",
          flush=True)
    results = {"info": info, "epochs": bench_epochs(X, y, epochs, pause, limit_repeats)}
    print(f"layer time, forward + backward (fastest of {repeats} calls, libraries alternating):",
          flush=True)
    results["layers"] = bench_layers(repeats, 2 if args.smoke else BATCH)
    print(PROFILE_TITLE, flush=True)
    results["profile"] = bench_profile(X, y, **profile)
    if args.busy or args.smoke:
        print("BLAS threads, MLP epoch (batch 128), quiet and with one core busy:", flush=True)
        results["busy"] = bench_busy(X, y, 1 if args.smoke else 3 if args.quick else 7, pause)
    print("memory (fresh process per run):", flush=True)
    results["memory"] = bench_memory(mem_n, 2 if args.smoke else 3, mem_workloads, args.smoke)
    if args.smoke:
        print("train_text.py's language model, tiny, on random text:", flush=True)
        results["text"] = bench_text(SMOKE_TEXT_RECIPE, synthetic=True)
        results["text_gpt"] = bench_text(SMOKE_GPT_RECIPE, synthetic=True)
    write_json(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""tinynet against PyTorch (CPU) on the same work, in one run: epoch time, layer time, memory.

    python bench_tinynet.py            # full run: a few minutes, writes bench.json
    python bench_tinynet.py --quick    # subsets, under a minute

Every figure is a ratio taken in the same run (same machine, threads, float32,
data), alternating tinynet and PyTorch, so that it holds on a noisy machine.
tinynet trains through `Sequential.fit(verbose=0)`, the path users take.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import tinynet as tn

# The three training workloads: layer names and arguments are the same in tinynet and torch.nn.
WORKLOADS = {
    "mlp": [("Flatten", ()), ("Linear", (784, 256)), ("ReLU", ()), ("Linear", (256, 10))],
    "cnn-small": [("Conv2d", (1, 8, 5)), ("MaxPool2d", (2,)), ("ReLU", ()),
                  ("Conv2d", (8, 16, 3)), ("MaxPool2d", (2,)), ("ReLU", ()),
                  ("Flatten", ()), ("Linear", (400, 10))],
    "cnn-32-64": [("Conv2d", (1, 32, 3, 1, 1)), ("ReLU", ()), ("MaxPool2d", (2,)),
                  ("Conv2d", (32, 64, 3, 1, 1)), ("ReLU", ()), ("MaxPool2d", (2,)),
                  ("Flatten", ()), ("Linear", (3136, 128)), ("ReLU", ()), ("Linear", (128, 10))],
}
BATCH, LR = 64, 1e-3


def build(spec):
    """The same architecture in both libraries, torch's weights copied into tinynet's."""
    import torch
    tmodel = torch.nn.Sequential(*[getattr(torch.nn, name)(*args) for name, args in spec])
    model = tn.Sequential([getattr(tn, name)(*args) for name, args in spec])
    model.load_state_dict(tmodel.state_dict())
    model.compile(tn.Adam(model.parameters(), lr=LR), tn.CrossEntropyLoss())
    return model, tmodel, torch.optim.Adam(tmodel.parameters(), lr=LR)


def torch_epoch(tmodel, topt, X, y):
    """One epoch of PyTorch training, shuffled minibatches of BATCH, as fit does."""
    import torch
    perm = torch.randperm(len(X))
    for i in range(0, len(X), BATCH):
        idx = perm[i:i + BATCH]
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(X[idx]), y[idx]).backward()
        topt.step()


def bench_epochs(X, y, epochs):
    """Median epoch time of each workload, tinynet and torch alternating."""
    import torch
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rows = {}
    for name, spec in WORKLOADS.items():
        model, tmodel, topt = build(spec)
        times = {"tinynet": [], "torch": []}
        for _ in range(epochs):
            t = time.perf_counter()
            model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)
            times["tinynet"].append(time.perf_counter() - t)
            t = time.perf_counter()
            torch_epoch(tmodel, topt, Xt, yt)
            times["torch"].append(time.perf_counter() - t)
        tn_s, torch_s = statistics.median(times["tinynet"]), statistics.median(times["torch"])
        rows[name] = {"tinynet_s": tn_s, "torch_s": torch_s, "ratio": tn_s / torch_s}
        print(f"  {name:<10} epoch  tinynet {tn_s:7.2f} s   torch {torch_s:7.2f} s   ratio {tn_s / torch_s:5.2f}",
              flush=True)
    return rows


def median_ms(fn, repeats):
    fn()                                                    # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_layers(repeats):
    """Forward, and forward + backward, of single layers in float32, tinynet against torch."""
    import torch
    rng = np.random.default_rng(0)
    cases = [
        ("Linear(784->256)", ("Linear", (784, 256)), (64, 784)),
        ("Conv2d 1->8 k5 @28", ("Conv2d", (1, 8, 5)), (64, 1, 28, 28)),
        ("Conv2d 8->16 k3 @12", ("Conv2d", (8, 16, 3)), (64, 8, 12, 12)),
        ("Conv2d 32->64 k3 p1 @14", ("Conv2d", (32, 64, 3, 1, 1)), (64, 32, 14, 14)),
        ("MaxPool2d(2) @28", ("MaxPool2d", (2,)), (64, 32, 28, 28)),
        ("BatchNorm2d(32) @28", ("BatchNorm2d", (32,)), (64, 32, 28, 28)),
    ]
    rows = {}
    for label, (name, args), shape in cases:
        x = rng.standard_normal(shape, dtype=np.float32)
        layer, tlayer = getattr(tn, name)(*args), getattr(torch.nn, name)(*args)
        xt = torch.from_numpy(x).requires_grad_()
        g = rng.standard_normal(layer.forward(x).shape, dtype=np.float32)
        gt = torch.from_numpy(g)
        rows[label] = {
            "tinynet_fwd_ms": median_ms(lambda: layer.forward(x), repeats),
            "torch_fwd_ms": median_ms(lambda: tlayer(xt), repeats),
            "tinynet_fwdbwd_ms": median_ms(lambda: (layer.forward(x), layer.backward(g)), repeats),
            "torch_fwdbwd_ms": median_ms(lambda: tlayer(xt).backward(gt), repeats),
        }
    logits = rng.standard_normal((64, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 64)
    loss, tlogits, tlabels = tn.CrossEntropyLoss(), torch.from_numpy(logits).requires_grad_(), torch.from_numpy(labels)
    rows["CrossEntropyLoss (64, 10)"] = {
        "tinynet_fwd_ms": median_ms(lambda: loss.forward(logits, labels), repeats),
        "torch_fwd_ms": median_ms(lambda: torch.nn.functional.cross_entropy(tlogits, tlabels), repeats),
        "tinynet_fwdbwd_ms": median_ms(lambda: (loss.forward(logits, labels), loss.backward()), repeats),
        "torch_fwdbwd_ms": median_ms(lambda: torch.nn.functional.cross_entropy(tlogits, tlabels).backward(),
                                     repeats),
    }
    for label, r in rows.items():
        r["fwd_ratio"] = r["tinynet_fwd_ms"] / r["torch_fwd_ms"]
        r["fwdbwd_ratio"] = r["tinynet_fwdbwd_ms"] / r["torch_fwdbwd_ms"]
        print(f"  {label:<26} fwd {r['tinynet_fwd_ms']:7.3f} / {r['torch_fwd_ms']:7.3f} ms ({r['fwd_ratio']:4.2f}x)"
              f"   fwd+bwd {r['tinynet_fwdbwd_ms']:7.3f} / {r['torch_fwdbwd_ms']:7.3f} ms "
              f"({r['fwdbwd_ratio']:4.2f}x)", flush=True)
    return rows


def status_mb(field):
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), in MB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def memory_child(library, workload, n, epochs):
    """Run in a fresh process: train `epochs` epochs of one workload; print JSON with the
    RSS before training, the peak RSS during the first epoch, and the RSS after each epoch."""
    X, y = load(n)
    if library == "tinynet":
        model = tn.Sequential([getattr(tn, name)(*args) for name, args in WORKLOADS[workload]])
        model.compile(tn.Adam(model.parameters(), lr=LR), tn.CrossEntropyLoss())
        epoch = lambda: model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)  # noqa: E731
    else:
        import torch
        tmodel = torch.nn.Sequential(*[getattr(torch.nn, name)(*args) for name, args in WORKLOADS[workload]])
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


def bench_memory(n, epochs):
    """Peak RSS of a training epoch, each library and workload in a fresh subprocess."""
    rows = {}
    for workload in WORKLOADS:
        row = {}
        for library in ("tinynet", "torch"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", library, workload,
                                  "--n", str(n), "--epochs", str(epochs)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            row[f"{library}_peak_mb"] = r["peak_rss_mb"]
            row[f"{library}_epoch_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
            row[f"{library}_growth_mb"] = r["rss_after_epoch_mb"][-1] - r["rss_after_epoch_mb"][0]
        rows[workload] = row
        print(f"  {workload:<10} peak RSS in epoch 1  tinynet {row['tinynet_peak_mb']:5.0f} MB "
              f"(+{row['tinynet_epoch_mb']:.0f} over the start)   torch {row['torch_peak_mb']:5.0f} MB "
              f"(+{row['torch_epoch_mb']:.0f})   growth over {epochs} epochs: tinynet "
              f"{row['tinynet_growth_mb']:+.1f} MB, torch {row['torch_growth_mb']:+.1f} MB", flush=True)
    return rows


def load(n):
    X, y, _, _ = tn.load_mnist()
    return np.ascontiguousarray(X[:n]), y[:n]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsets and fewer repeats: under a minute")
    p.add_argument("--epochs", type=int, default=3, help="epochs per workload and library (median taken)")
    p.add_argument("--out", default="bench.json", help="where to write the results as JSON")
    p.add_argument("--memory-child", nargs=2, metavar=("LIBRARY", "WORKLOAD"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.n, args.epochs)

    import torch
    n = 2000 if args.quick else 60000
    epochs = 3 if args.quick or args.epochs < 3 else args.epochs
    repeats = 5 if args.quick else 30
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "train_samples": n, "quick": args.quick}
    print("tinynet vs PyTorch CPU, float32, batch 64, Adam lr 1e-3:", json.dumps(info), flush=True)
    tn.manual_seed(0)
    torch.manual_seed(0)
    X, y = load(n)
    print("epoch time (median of", epochs, "epochs, alternating):", flush=True)
    results = {"info": info, "epochs": bench_epochs(X, y, epochs)}
    print(f"layer time (median of {repeats}):", flush=True)
    results["layers"] = bench_layers(repeats)
    print("memory (fresh process per run):", flush=True)
    results["memory"] = bench_memory(n if args.quick else 20000, 3)
    with tn._atomic_open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

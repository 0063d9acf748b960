"""The tinynet test suite: every layer, loss, optimizer and scheduler against PyTorch in float64,
gradient checks, data loaders, training scripts and the benchmark. Run: pytest test_tinynet.py"""
import gzip
import hashlib
import http.server
import os
import re
import threading
import tracemalloc

import numpy as np
import pytest
import torch

import tinynet as tn
# HEADER-END


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

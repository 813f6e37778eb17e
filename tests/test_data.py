import gzip

import numpy as np
import pytest

from hpo import data
from hpo.data import DataError, load_search, load_test, load_training
from hpo.errors import RuntimeFailure


def test_mnist5k_search_split_shapes_and_dtypes():
    s = load_search("mnist5k", train_size=500, validation_rate=0.2, seed=0)
    assert s.x_train.shape == (400, 784) and s.x_val.shape == (100, 784)
    assert s.x_train.dtype == np.float32 and s.t_train.dtype == np.int64
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0 and s.x_train.max() > 0.9
    assert s.n_classes == 10 and s.n_features == 784


def test_shuffle_balances_labels():
    # the file is sorted by label: without the shuffle the first 500 would all be zeros
    s = load_search("mnist5k", train_size=500, seed=0)
    counts = np.bincount(np.concatenate([s.t_train, s.t_val]), minlength=10)
    assert counts.min() >= 30 and counts.max() <= 75


def test_splits_are_disjoint_and_test_is_separate():
    s = load_search("mnist5k", train_size=4000, seed=3)
    te = load_test("mnist5k", seed=3)
    rows = {r.tobytes() for r in s.x_train} | {r.tobytes() for r in s.x_val}
    val = {r.tobytes() for r in s.x_val}
    train = {r.tobytes() for r in s.x_train}
    assert not (val & train)
    # a handful of MNIST digits are byte-identical duplicates of one another; allow none here
    assert not ({r.tobytes() for r in te.x_test} & rows)
    assert te.x_test.shape == (1000, 784)


def test_seed_determines_split():
    a, b = load_search(seed=0), load_search(seed=0)
    c = load_search(seed=1)
    assert np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_book_validation_count():
    s = load_search("digits", train_size=333, validation_rate=0.2)
    assert len(s.t_val) == int(333 * 0.2) and len(s.t_train) == 333 - int(333 * 0.2)


def test_digits():
    s = load_search("digits", train_size=300, seed=0)
    assert s.x_train.shape == (240, 64) and s.x_train.dtype == np.float32
    assert s.x_train.max() <= 1.0


def test_training_pool_excludes_test():
    x, _ = load_training("mnist5k", n=300, seed=0)
    te = load_test("mnist5k", seed=0)
    assert not ({r.tobytes() for r in x} & {r.tobytes() for r in te.x_test})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "cifar"}, "unknown dataset 'cifar'"),
        ({"train_size": 999999}, "larger than"),
        ({"validation_rate": 0.0}, r"validation_rate must be in \(0, 1\)"),
        ({"validation_rate": 1.5}, r"validation_rate must be in \(0, 1\)"),
        ({"train_size": 1}, "at least 2"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_search(**kwargs)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_search("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="lacks train-images"):
        load_search("mnist", data_dir=tmp_path)


def _write_idx(path, arr, ndim):
    header = (0x0800 + ndim).to_bytes(4, "big") + b"".join(
        int(n).to_bytes(4, "big") for n in arr.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(d, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)), 3)
    _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train), 1)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)), 3)
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test), 1)


def test_mnist_idx_reader(tmp_path):
    data._mnist.cache_clear()
    data._search_pool.cache_clear()
    _fake_mnist(tmp_path)
    s = load_search("mnist", train_size=50, data_dir=tmp_path)
    assert s.x_train.shape == (40, 784) and s.x_train.dtype == np.float32
    te = load_test("mnist", data_dir=tmp_path)
    assert te.x_test.shape == (20, 784)


def test_corrupted_idx(tmp_path):
    data._mnist.cache_clear()
    data._search_pool.cache_clear()
    _fake_mnist(tmp_path)
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[: len(raw) // 2])  # truncated body
    with pytest.raises(DataError, match="truncated"):
        load_search("mnist", train_size=50, data_dir=tmp_path)
    data._mnist.cache_clear()
    _fake_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip IDX"):
        load_search("mnist", train_size=50, data_dir=tmp_path)


def test_offline_download_error_says_how(tmp_path, monkeypatch):
    data._mnist.cache_clear()
    data._search_pool.cache_clear()
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(data, "MNIST_URL", "http://127.0.0.1:9/")  # nothing listens: refused
    with pytest.raises(RuntimeFailure, match="--data-dir"):  # the network: exit 1, not 2
        load_search("mnist", train_size=50)
    assert not list((tmp_path / "mnist").glob("*.gz"))


def test_download_checks_sha256(tmp_path, monkeypatch):
    """A served file whose hash differs is rejected and not kept in the cache."""
    import http.server
    import threading

    data._mnist.cache_clear()
    data._search_pool.cache_clear()
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    _fake_mnist(srv_dir)

    class H(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(srv_dir), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(data, "MNIST_URL", f"http://127.0.0.1:{server.server_port}/")
        with pytest.raises(RuntimeFailure, match="SHA-256"):
            load_search("mnist", train_size=50)
        assert not list((tmp_path / "cache" / "mnist").glob("*.gz"))
    finally:
        server.shutdown()

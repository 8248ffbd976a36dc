"""Datasets: tensors, a seeded train/validation split, and the hash of the source they came from.

Every loader returns a :class:`Dataset` whose split is fixed by the seed alone (the first
``n_val`` indices of a seeded permutation are validation, the next ``n_train`` training), so two
runs with the same seed see identical tensors, and whose ``sha256`` names the source bytes, so a
store records exactly which data it was trained on. Scaling statistics come from the training
split only: the validation set must not leak into the inputs the network learns from.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib.util
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch

from .config import GENERATED_N_TRAIN, DataConfig, describe_path
from .memory import too_large
from .registry import DATASETS

SCALINGS = ("zscore", "unit", "none")

#: where the Debian package dataset-fashion-mnist installs its IDX files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: the checksum published with the tarball; tests replace it to parse a tiny fake tarball
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCHES = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
DOWNLOAD_TIMEOUT_S = 20.0

SYNTHETIC_HIDDEN = 32
SYNTHETIC_DEFAULT_N_TRAIN = GENERATED_N_TRAIN["synthetic"]
PATCHES_DEFAULT_N_TRAIN = GENERATED_N_TRAIN["patches"]
#: bytes read from a text corpus to check that it is text before reading it whole
TEXT_HEAD_BYTES = 1 << 16
#: bytes held per corpus byte while encoding it (raw, str, UTF-32 codes, int64 indices, windows)
TEXT_BYTES_PER_BYTE = 32
#: ITU-R BT.601 luma weights: the usual RGB -> grey conversion
LUMA = np.array([0.299, 0.587, 0.114])

_CHUNK = 4096  # rows per chunk when scaling, so large sets never need a float64 copy


class DataError(ValueError):
    """Data that cannot be found, read or split as asked; the message says how to fix it."""


@dataclass
class Dataset:
    """A train/validation split ready for the trainer, plus what the store records about it."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    task: str  # classification | next_token | reconstruction
    sha256: str
    meta: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        """JSON-serialisable description for the store's ``dataset`` attribute."""
        return {
            "name": self.name,
            "n_train": int(self.x_train.shape[0]),
            "n_val": int(self.x_val.shape[0]),
            "sha256": self.sha256,
            **self.meta,
        }


def load(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset ``cfg.name``, split (and scaled) as ``cfg`` asks, fixed by ``seed``."""
    if cfg.name not in DATASETS:
        raise DataError(
            f"unknown dataset {cfg.name!r}; set data.name to one of {', '.join(DATASETS.names())}"
        )
    if cfg.scaling not in SCALINGS:
        raise DataError(
            f"data.scaling={cfg.scaling!r} is unknown; use one of {', '.join(SCALINGS)}"
        )
    if cfg.n_val < 0:
        raise DataError(f"data.n_val={cfg.n_val} is negative; give 0 or more validation samples")
    if cfg.n_train is not None and cfg.n_train < 1:
        raise DataError(f"data.n_train={cfg.n_train} must be at least 1 (or unset to use the rest)")
    return DATASETS.load(cfg.name)(cfg, seed)


# ---------------------------------------------------------------------------- split and scaling


def split_indices(
    n_total: int, n_val: int, n_train: int | None, seed: int, what: str, unit: str = "samples"
) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices: the first n_val, then n_train, of a seeded permutation.

    ``n_train`` None takes all the rest. ``what`` and ``unit`` name the source in the error.
    """
    wanted = n_val + (n_train if n_train is not None else 1)
    if wanted > n_total:
        asked = f"data.n_val={n_val}" + (
            f" + data.n_train={n_train}" if n_train is not None else " and at least 1 for training"
        )
        raise DataError(
            f"{what} has {n_total} {unit} but {asked} were asked for; "
            f"lower data.n_train or data.n_val so they fit in {n_total}"
        )
    n_train = n_total - n_val if n_train is None else n_train
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_total, generator=generator).numpy()
    return order[:n_val], order[n_val : n_val + n_train]


def _feature_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std (float64, two passes, chunked)."""
    n = train.shape[0]
    total = np.zeros(train.shape[1:])
    for start in range(0, n, _CHUNK):
        total += train[start : start + _CHUNK].sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(train.shape[1:])
    for start in range(0, n, _CHUNK):
        centred = train[start : start + _CHUNK].astype(np.float64) - mean
        squares += (centred * centred).sum(axis=0)
    return mean, np.sqrt(squares / n)


def _affine(x: np.ndarray, shift: np.ndarray | float, scale: np.ndarray | float) -> torch.Tensor:
    """float32 tensor of ``(x - shift) / scale``, computed in float64 chunk by chunk."""
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK):
        out[start : start + _CHUNK] = (x[start : start + _CHUNK] - shift) / scale
    return torch.from_numpy(out)


def scale_inputs(
    train: np.ndarray, val: np.ndarray, scaling: str, max_value: float | None, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (train, val) scaled as ``scaling`` says, with statistics from ``train`` only.

    zscore: per feature; a feature that is constant on the training split (std zero up to
    rounding) is only centred, so it stays at zero instead of dividing by zero.
    unit: divide by the format's maximum value ``max_value`` (16 for digits, 255 for 8-bit images).
    """
    if scaling == "zscore":
        mean, std = _feature_stats(train)
        constant = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
        scale = np.where(constant, 1.0, std)
        return _affine(train, mean, scale), _affine(val, mean, scale)
    if scaling == "unit":
        if max_value is None:
            raise DataError(
                f"data.scaling=unit needs a format maximum, which {name} data has not; "
                "use data.scaling=zscore or none"
            )
        return _affine(train, 0.0, max_value), _affine(val, 0.0, max_value)
    return _affine(train, 0.0, 1.0), _affine(val, 0.0, 1.0)


def _labelled(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    cfg: DataConfig,
    seed: int,
    *,
    n_classes: int,
    max_value: float | None,
    sha256: str,
    source: str,
    default_n_train: int | None = None,
) -> Dataset:
    """Split, scale and wrap a labelled classification set (images or synthetic vectors)."""
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(
            f"{name} labels from {source} fall outside 0..{n_classes - 1}; the files are not "
            f"{name} label files, check the data directory"
        )
    n_train = cfg.n_train if cfg.n_train is not None else default_n_train
    val_idx, train_idx = split_indices(len(x), cfg.n_val, n_train, seed, name)
    x_train, x_val = scale_inputs(x[train_idx], x[val_idx], cfg.scaling, max_value, name)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(y[train_idx].astype(np.int64)),
        x_val=x_val,
        y_val=torch.from_numpy(y[val_idx].astype(np.int64)),
        n_classes=n_classes,
        input_shape=tuple(x_train.shape[1:]),
        task="classification",
        sha256=sha256,
        meta={"source": source, "scaling": cfg.scaling},
    )


def _sha256(*chunks: bytes | np.ndarray) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk if isinstance(chunk, bytes) else np.ascontiguousarray(chunk).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- digits


def _load_digits(cfg: DataConfig, seed: int) -> Dataset:
    images, target = digits_arrays()
    return _labelled(
        "digits",
        images[:, None, :, :],  # (1797, 1, 8, 8), values 0..16
        target,
        cfg,
        seed,
        n_classes=10,
        max_value=16.0,
        sha256=_sha256(images, target),
        source="sklearn.datasets.load_digits",
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: images (1797, 8, 8) float64 and labels int64, the arrays
    ``load_digits()`` returns.

    Read from the CSV scikit-learn ships, found without importing scikit-learn: that import
    takes about a second, more than training a small net on these digits for 30 epochs.
    Where the file is not where it is expected, ``load_digits`` reads it.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


# ---------------------------------------------------------------------------- IDX: (fashion-)mnist


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, source: str, magic: int | None = None) -> np.ndarray:
    """The array in IDX bytes: magic (0, 0, type, ndim), big-endian uint32 dims, then the data.

    ``magic`` (e.g. 0x803 for 3-d unsigned bytes) is checked when given.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        found = raw[:4].hex() or "nothing"
        raise DataError(
            f"{source} is not an IDX file (magic bytes {found}); point to the IDX files"
        )
    found = struct.unpack(">I", raw[:4])[0]
    if magic is not None and found != magic:
        raise DataError(
            f"{source} has IDX magic number {found:#010x}, expected {magic:#010x}; "
            "check that images and labels files are not swapped or damaged"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{source} ends inside its IDX header; the file is truncated, fetch it again"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{source} holds {len(raw) - header} data bytes but its header {list(dims)} needs "
            f"{expected}; the file is truncated or damaged, fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_file(path: Path, magic: int | None = None) -> tuple[np.ndarray, bytes]:
    """(array, raw file bytes) of a plain or gzip-compressed IDX file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataError(
            f"cannot read {path}: {err.strerror or err}; check its permissions"
        ) from None
    content = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is a damaged gzip file ({err}); fetch it again") from None
    return parse_idx(content, str(path), magic), raw


def _idx_folder(cfg: DataConfig) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    if cfg.name == "fashion-mnist":
        return FASHION_MNIST_DIR
    return default_data_dir() / cfg.name


def _idx_help(name: str) -> str:
    files = f"{IDX_TRAIN_IMAGES}[.gz] and {IDX_TRAIN_LABELS}[.gz]"
    if name == "fashion-mnist":
        return (
            "install the Debian package dataset-fashion-mnist (apt-get install "
            f"dataset-fashion-mnist) or pass --data-dir DIR (data.data_dir) holding {files}"
        )
    return f"pass --data-dir DIR (data.data_dir) holding {files}"


def _load_idx_set(cfg: DataConfig, seed: int) -> Dataset:
    folder = _idx_folder(cfg)
    if not folder.is_dir():
        raise DataError(
            f"{cfg.name} directory {folder} {describe_path(folder, 'directory')}; "
            f"{_idx_help(cfg.name)}"
        )
    paths = [_find_idx(folder, stem) for stem in (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS)]
    if None in paths:
        missing = IDX_TRAIN_IMAGES if paths[0] is None else IDX_TRAIN_LABELS
        raise DataError(f"{cfg.name}: {folder / missing}[.gz] not found; {_idx_help(cfg.name)}")
    images, image_bytes = read_idx_file(paths[0], IDX_IMAGES_MAGIC)
    labels, label_bytes = read_idx_file(paths[1], IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels; "
            "use an images and labels file of the same set"
        )
    return _labelled(
        cfg.name,
        images[:, None, :, :],
        labels,
        cfg,
        seed,
        n_classes=10,
        max_value=255.0,
        sha256=_sha256(image_bytes, label_bytes),
        source=str(folder),
    )


# ---------------------------------------------------------------------------- cifar10


def default_data_dir() -> Path:
    """Where downloads live: ``$DYNALIGN_DATA``, else ``~/.cache/dynalign``."""
    env = os.environ.get("DYNALIGN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynalign"


def _file_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file in one streaming pass."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` to ``dest`` via a temporary file, renamed only once its md5 matches.

    A failed or interrupted download therefore never leaves a partial file at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = _file_digests(Path(tmp))[0]
        if got != md5:
            raise DataError(f"download of {url} has md5 {got}, expected {md5}; try again later")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cifar_tarball(cfg: DataConfig) -> Path:
    """The tarball's path, downloaded into the folder when missing.

    A folder the user named (--data-dir, $DYNALIGN_DATA) must exist: a typo must not leave a
    new directory behind; only the default cache folder is created.
    """
    folder = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    named = cfg.data_dir or os.environ.get("DYNALIGN_DATA")
    if named and not folder.is_dir():
        where = "--data-dir" if cfg.data_dir else "$DYNALIGN_DATA"
        raise DataError(
            f"cifar10 data directory {folder} ({where}) {describe_path(folder, 'directory')}; "
            "create it "
            f"or pass --data-dir DIR holding {CIFAR10_FILE}"
        )
    path = folder / CIFAR10_FILE
    if path.exists() and not path.is_file():
        raise DataError(
            f"{path} {describe_path(path)}; put the {CIFAR10_FILE} file from {CIFAR10_URL} there"
        )
    if not path.is_file():
        try:
            download(CIFAR10_URL, path, CIFAR10_MD5)
        except (OSError, ValueError, HTTPException) as err:
            raise DataError(
                f"cifar10 needs {path} and downloading it failed ({err}); fetch {CIFAR10_URL} "
                f"(md5 {CIFAR10_MD5}) elsewhere and put it at {path}, or pass --data-dir DIR "
                "holding it"
            ) from None
    return path


def _read_cifar_batches(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels) from the training batches of the tarball.

    Unpickling is safe here because the caller has checked the tarball's published checksum.
    """
    batches = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one pass in stream order: seeking back in a .gz re-inflates it
                if member.name in CIFAR10_BATCHES:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        batches[member.name] = pickle.load(fh, encoding="bytes")
        missing = [name for name in CIFAR10_BATCHES if name not in batches]
        if missing:
            raise KeyError(", ".join(missing))
        images = [np.asarray(batches[m][b"data"], dtype=np.uint8) for m in CIFAR10_BATCHES]
        labels = [np.asarray(batches[m][b"labels"], dtype=np.int64) for m in CIFAR10_BATCHES]
        images, labels = np.concatenate(images), np.concatenate(labels)
        if images.shape != (len(labels), 3072):
            raise ValueError(f"{images.shape} pixel rows for {len(labels)} labels")
        return images.reshape(-1, 3, 32, 32), labels
    except (KeyError, ValueError, tarfile.TarError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(
            f"{path} is not the CIFAR-10 python tarball ({type(err).__name__}: {err}); "
            f"replace it with {CIFAR10_URL}"
        ) from None


def _load_cifar10(cfg: DataConfig, seed: int) -> Dataset:
    path = _cifar_tarball(cfg)
    md5, sha256 = _file_digests(path)
    if md5 != CIFAR10_MD5:
        raise DataError(
            f"{path} has md5 {md5} but the published CIFAR-10 tarball has {CIFAR10_MD5}; "
            f"delete it and fetch {CIFAR10_URL} again"
        )
    images, labels = _read_cifar_batches(path)
    return _labelled(
        "cifar10",
        images,
        labels,
        cfg,
        seed,
        n_classes=10,
        max_value=255.0,
        sha256=sha256,
        source=str(path),
    )


# ---------------------------------------------------------------------------- synthetic


def _draw_teacher(
    n_inputs: int, n_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    w1 = torch.randn(SYNTHETIC_HIDDEN, n_inputs, generator=generator, dtype=torch.float64)
    w2 = torch.randn(n_classes, SYNTHETIC_HIDDEN, generator=generator, dtype=torch.float64)
    return w1 / n_inputs**0.5, w2


def synthetic_teacher(
    n_inputs: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's weights (W1 (32, n_inputs), W2 (n_classes, 32)), float64, fixed by ``seed``.

    The label of x is argmax(W2 tanh(W1 x)). W1 is scaled by 1/sqrt(n_inputs) so the tanh units
    work in their non-linear range instead of saturating; no biases, so no class is favoured.
    """
    return _draw_teacher(n_inputs, n_classes, torch.Generator().manual_seed(seed))


def _check_generated_size(what: str, n_values: int, bytes_per_value: int, fix: str) -> None:
    """DataError before generating a data set that cannot fit in memory."""
    problem = too_large(n_values * bytes_per_value)
    if problem:
        raise DataError(f"{what} {problem}; {fix}")


def _load_synthetic(cfg: DataConfig, seed: int) -> Dataset:
    n_train = cfg.n_train if cfg.n_train is not None else SYNTHETIC_DEFAULT_N_TRAIN
    n_total = cfg.n_val + n_train
    _check_generated_size(
        f"synthetic data of {n_total} samples x {cfg.n_inputs} inputs",
        n_total * (cfg.n_inputs + SYNTHETIC_HIDDEN),
        8 * 4,  # float32 draw, float64 copies for the teacher, scaled float32 tensors
        "lower data.n_train, data.n_val or data.n_inputs",
    )
    generator = torch.Generator().manual_seed(seed)
    w1, w2 = _draw_teacher(cfg.n_inputs, cfg.n_classes, generator)  # first, as synthetic_teacher
    x = torch.randn(n_total, cfg.n_inputs, generator=generator).numpy()
    y = (torch.tanh(torch.from_numpy(x).double() @ w1.T) @ w2.T).argmax(dim=1).numpy()
    return _labelled(
        "synthetic",
        x,
        y,
        cfg,
        seed,
        n_classes=cfg.n_classes,
        max_value=None,
        sha256=_sha256(x, y),
        source=f"tanh teacher {cfg.n_inputs}-{SYNTHETIC_HIDDEN}-{cfg.n_classes}",
        default_n_train=n_train,
    )


# ---------------------------------------------------------------------------- patches


def _grey_sample_images() -> tuple[list[np.ndarray], str]:
    """The photographs scikit-learn ships, in grey (float64), and the sha256 of their pixels."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    return [img.astype(np.float64) @ LUMA for img in images], _sha256(*images)


def _cut_patches(images: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` size x size patches at seeded uniform positions (image chosen uniformly too)."""
    smallest = min(min(img.shape) for img in images)
    if size > smallest:
        raise DataError(
            f"data.patch_size={size} exceeds the sample images' smaller side ({smallest} pixels); "
            "choose a smaller data.patch_size"
        )
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (n,), generator=generator).numpy()
    where = torch.rand(n, 2, generator=generator, dtype=torch.float64).numpy()
    offsets = np.arange(size)
    patches = np.empty((n, size, size))
    for k, img in enumerate(images):
        chosen = np.flatnonzero(which == k)
        rows = (where[chosen, 0] * (img.shape[0] - size + 1)).astype(np.int64)
        cols = (where[chosen, 1] * (img.shape[1] - size + 1)).astype(np.int64)
        patches[chosen] = img[
            rows[:, None, None] + offsets[None, :, None],
            cols[:, None, None] + offsets[None, None, :],
        ]
    return patches


def normalise_patches(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sparse-autoencoder exercise's normalisation, into [0.1, 0.9] for sigmoid outputs.

    Each patch loses its own mean (brightness carries no structure), values are truncated to
    +-3 standard deviations of all training pixels and mapped linearly onto [0.1, 0.9].
    """
    axes = tuple(range(1, train.ndim))
    train = train - train.mean(axis=axes, keepdims=True)
    val = val - val.mean(axis=axes, keepdims=True)
    bound = 3.0 * train.std()
    if bound == 0:
        raise DataError("every training patch is flat; choose a larger data.patch_size")
    return tuple(np.clip(v, -bound, bound) / bound * 0.4 + 0.5 for v in (train, val))  # type: ignore[return-value]


def _load_patches(cfg: DataConfig, seed: int) -> Dataset:
    n_train = cfg.n_train if cfg.n_train is not None else PATCHES_DEFAULT_N_TRAIN
    _check_generated_size(
        f"{cfg.n_val + n_train} patches of {cfg.patch_size}x{cfg.patch_size} pixels",
        (cfg.n_val + n_train) * cfg.patch_size**2,
        8 * 4,  # float64 patches, normalised copies, float32 tensors
        "lower data.n_train, data.n_val or data.patch_size",
    )
    images, sha256 = _grey_sample_images()
    patches = _cut_patches(images, cfg.n_val + n_train, cfg.patch_size, seed)
    val_idx, train_idx = split_indices(len(patches), cfg.n_val, n_train, seed, "patches")
    train, val = normalise_patches(patches[train_idx], patches[val_idx])
    p = cfg.patch_size
    return Dataset(
        name="patches",
        x_train=torch.from_numpy(train[:, None].astype(np.float32)),
        y_train=torch.zeros(len(train), dtype=torch.int64),
        x_val=torch.from_numpy(val[:, None].astype(np.float32)),
        y_val=torch.zeros(len(val), dtype=torch.int64),
        n_classes=0,
        input_shape=(1, p, p),
        task="reconstruction",
        sha256=sha256,
        meta={
            "source": "sklearn.datasets.load_sample_images",
            "scaling": "patch mean removed, +-3 std mapped to [0.1, 0.9]",
            "image_shape": [p, p],
        },
    )


# ---------------------------------------------------------------------------- text


def _read_corpus(text_path: str | None) -> tuple[str, bytes, str]:
    """(corpus, its raw source bytes, source name); CPython's pydoc topics when no path is given."""
    if text_path is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise DataError(
                "this Python lacks pydoc_data.topics, the default corpus; set data.text_path "
                "to a UTF-8 text file"
            ) from None
        corpus = "".join(topics[key] for key in sorted(topics))
        return corpus, corpus.encode("utf-8"), "pydoc_data.topics"
    path = Path(text_path).expanduser()
    if not path.is_file():
        raise DataError(
            f"text corpus {path} {describe_path(path)}; set data.text_path to a UTF-8 text file"
        )
    try:
        size = path.stat().st_size
        problem = too_large(size * TEXT_BYTES_PER_BYTE)
        if problem:
            raise DataError(
                f"text corpus {path} ({size} bytes) {problem} to encode; set data.text_path "
                "to a smaller file"
            )
        with path.open("rb") as fh:
            _check_text_head(path, fh.read(TEXT_HEAD_BYTES))
            fh.seek(0)
            raw = fh.read()
    except OSError as err:
        raise DataError(
            f"cannot read text corpus {path}: {err.strerror or err}; check its permissions"
        ) from None
    try:
        corpus = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"text corpus {path} is not UTF-8 ({err}); convert it to UTF-8") from None
    if not corpus:
        raise DataError(f"text corpus {path} is empty; set data.text_path to a file with text")
    return corpus, raw, str(path)


def _check_text_head(path: Path, head: bytes) -> None:
    """DataError when the start of a corpus is not UTF-8 text (a binary file read by mistake),
    before the whole file is read."""
    if b"\0" in head:
        raise DataError(
            f"text corpus {path} holds NUL bytes, so it is binary, not text; set data.text_path "
            "to a UTF-8 text file"
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as err:
        raise DataError(f"text corpus {path} is not UTF-8 ({err}); convert it to UTF-8") from None


def encode_text(corpus: str) -> tuple[np.ndarray, str]:
    """(index of each character in the vocabulary, vocabulary = sorted distinct characters)."""
    codes = np.frombuffer(corpus.encode("utf-32-le"), dtype="<u4")
    alphabet = np.unique(codes)
    return np.searchsorted(alphabet, codes).astype(np.int64), "".join(map(chr, alphabet))


def _load_text(cfg: DataConfig, seed: int) -> Dataset:
    corpus, raw, source = _read_corpus(cfg.text_path)
    indices, vocab = encode_text(corpus)
    width = cfg.seq_len + 1
    n_windows = len(indices) // width
    windows = indices[: n_windows * width].reshape(n_windows, width)
    what = f"text corpus {source} ({len(corpus)} characters)"
    unit = f"windows of data.seq_len+1={width} characters"
    val_idx, train_idx = split_indices(n_windows, cfg.n_val, cfg.n_train, seed, what, unit)
    x_train = torch.from_numpy(windows[train_idx, :-1].copy())
    return Dataset(
        name="text",
        x_train=x_train,
        y_train=torch.from_numpy(windows[train_idx, 1:].copy()),
        x_val=torch.from_numpy(windows[val_idx, :-1].copy()),
        y_val=torch.from_numpy(windows[val_idx, 1:].copy()),
        n_classes=len(vocab),
        input_shape=tuple(x_train.shape[1:]),
        task="next_token",
        sha256=_sha256(raw),
        meta={"source": source, "scaling": "none", "vocab": vocab, "seq_len": cfg.seq_len},
    )

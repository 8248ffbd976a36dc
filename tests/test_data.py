"""Dataset loading: splits, scaling, formats and errors, checked against direct computations."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dynalign import data
from dynalign.config import DataConfig
from dynalign.data import DataError

REAL_DOWNLOAD = data.download
FASHION_FILES = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may reach the network or the user's cache: downloads are recorded and fail."""
    attempts: list[tuple[str, Path]] = []

    def refuse(url, dest, md5, timeout=None):
        attempts.append((url, Path(dest)))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data, "download", refuse)
    monkeypatch.setenv("DYNALIGN_DATA", str(tmp_path / "cache"))
    return attempts


def permutation(n: int, seed: int) -> np.ndarray:
    """The documented split rule, recomputed here: a randperm from a generator seeded with seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


# ---------------------------------------------------------------------------- splits


def test_digits_defaults(digits):
    ds = data.load(DataConfig(), seed=0)
    assert ds.x_train.shape == (1297, 1, 8, 8) and ds.x_val.shape == (500, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.shape == (1297,) and ds.y_val.shape == (500,)
    assert (ds.n_classes, ds.input_shape, ds.task) == (10, (1, 8, 8), "classification")
    attrs = json.loads(json.dumps(ds.attrs()))
    assert attrs["n_train"] == 1297 and attrs["n_val"] == 500 and attrs["name"] == "digits"


def test_split_follows_seeded_permutation(digits):
    ds = data.load(DataConfig(n_train=300, n_val=100, scaling="none"), seed=7)
    order = permutation(1797, 7)
    np.testing.assert_array_equal(ds.x_val[:, 0].numpy(), digits.images[order[:100]])
    np.testing.assert_array_equal(ds.x_train[:, 0].numpy(), digits.images[order[100:400]])
    np.testing.assert_array_equal(ds.y_train.numpy(), digits.target[order[100:400]])


def test_digits_read_without_sklearn_equal_its_loader(digits):
    images, target = data.digits_arrays()
    assert images.dtype == digits.images.dtype and target.dtype == digits.target.dtype
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)
    # the store's data hash is the one of scikit-learn's own arrays
    expected = hashlib.sha256(
        np.ascontiguousarray(digits.images).tobytes()
        + np.ascontiguousarray(digits.target).tobytes()
    ).hexdigest()
    assert data.load(DataConfig(), seed=0).sha256 == expected
    code = "import sys, dynalign.data as d; d.digits_arrays(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_fall_back_to_sklearn_where_its_file_is_elsewhere(digits, monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    images, target = data.digits_arrays()
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(name="digits", n_train=200, n_val=50),
        DataConfig(name="synthetic", n_train=200, n_val=50),
        DataConfig(name="patches", n_train=200, n_val=50),
        DataConfig(name="text", n_train=200, n_val=50, seq_len=16),
    ],
    ids=lambda c: c.name,
)
def test_same_seed_same_tensors(cfg):
    a, b, other = data.load(cfg, 3), data.load(cfg, 3), data.load(cfg, 4)
    for key in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.x_train, other.x_train)
    assert a.sha256 == b.sha256
    json.dumps(a.attrs())  # the store writes these as JSON attributes


def test_too_many_samples_names_the_count():
    assert len(data.load(DataConfig(n_train=1297), 0).x_train) == 1297  # exactly all fits
    with pytest.raises(DataError, match=r"digits has 1797 samples.*n_train=1298"):
        data.load(DataConfig(n_train=1298), 0)
    with pytest.raises(DataError, match=r"has 2 samples.*at least 1 for training"):
        data.split_indices(2, 2, None, 0, "tiny")


def test_bad_config_values():
    with pytest.raises(DataError, match="set data.name"):
        data.load(DataConfig(name="imagenet"), 0)
    with pytest.raises(DataError, match="data.scaling"):
        data.load(DataConfig(scaling="minmax"), 0)
    with pytest.raises(DataError, match="n_train=0"):
        data.load(DataConfig(n_train=0), 0)


# ---------------------------------------------------------------------------- scaling


def test_zscore_uses_training_statistics_only(digits):
    raw = data.load(DataConfig(n_train=400, n_val=200, scaling="none"), 1)
    ds = data.load(DataConfig(n_train=400, n_val=200, scaling="zscore"), 1)
    train = raw.x_train.numpy().astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    assert (std == 0).any()  # digits has blank border pixels: they must only be centred
    safe = np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(ds.x_train.numpy(), (train - mean) / safe, rtol=1e-5, atol=1e-5)
    val = raw.x_val.numpy().astype(np.float64)
    np.testing.assert_allclose(ds.x_val.numpy(), (val - mean) / safe, rtol=1e-5, atol=1e-5)


def test_zscore_does_not_use_validation_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(2.0, 3.0, size=(500, 4))
    val = rng.normal(11.0, 3.0, size=(300, 4))  # shifted by 3 training standard deviations
    x_train, x_val = data.scale_inputs(train, val, "zscore", None, "test")
    assert abs(float(x_train.mean())) < 1e-6 and abs(float(x_train.std()) - 1) < 1e-2
    assert 2.5 < float(x_val.mean()) < 3.5


def test_unit_scaling(digits):
    ds = data.load(DataConfig(n_train=500, n_val=100, scaling="unit"), 0)
    order = permutation(1797, 0)
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), digits.images[order[100:600]] / 16)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


# ---------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray, type_code: int = 0x08, dtype: str = "u1") -> bytes:
    """An IDX file written from the format description: 0, 0, type, ndim, big-endian dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx_set(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in ((data.IDX_TRAIN_IMAGES, images), (data.IDX_TRAIN_LABELS, labels)):
        raw = idx_bytes(array)
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return paths


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_set_is_parsed(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 5, 3), dtype=np.uint8)  # rows != cols
    labels = rng.integers(0, 10, size=12, dtype=np.uint8)
    paths = write_idx_set(tmp_path / "mnist", images, labels, gz)
    cfg = DataConfig(name="mnist", data_dir=str(tmp_path / "mnist"), n_val=4, scaling="none")
    ds = data.load(cfg, 5)
    order = permutation(12, 5)
    assert ds.x_train.shape == (8, 1, 5, 3) and ds.input_shape == (1, 5, 3)
    np.testing.assert_array_equal(ds.x_val[:, 0].numpy(), images[order[:4]])
    np.testing.assert_array_equal(ds.x_train[:, 0].numpy(), images[order[4:]])
    np.testing.assert_array_equal(ds.y_train.numpy(), labels[order[4:]])
    files = b"".join(p.read_bytes() for p in paths)
    assert ds.sha256 == hashlib.sha256(files).hexdigest()
    unit = data.load(DataConfig(name="mnist", data_dir=cfg.data_dir, n_val=4, scaling="unit"), 5)
    np.testing.assert_allclose(unit.x_train.numpy(), ds.x_train.numpy() / 255, rtol=1e-6)


def test_idx_big_endian_multibyte():
    values = np.array([[1, -2, 300], [-32768, 32767, 0]])
    parsed = data.parse_idx(idx_bytes(values, 0x0B, ">i2"), "int16.idx")
    np.testing.assert_array_equal(parsed, values)


def test_idx_bad_magic_and_damage(tmp_path):
    with pytest.raises(DataError, match="not an IDX file"):
        data.parse_idx(b"\x89PNG\r\n\x1a\n", "picture.png")
    labels_as_images = idx_bytes(np.zeros(5))
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        data.parse_idx(labels_as_images, "x", data.IDX_IMAGES_MAGIC)
    with pytest.raises(DataError, match="truncated"):
        data.parse_idx(idx_bytes(np.zeros((3, 4, 4)))[:-1], "x")
    folder = tmp_path / "swapped"
    write_idx_set(folder, np.zeros(4), np.zeros((4, 2, 2)), gz=False)  # labels as images
    with pytest.raises(DataError, match="magic number"):
        data.load(DataConfig(name="mnist", data_dir=str(folder), n_val=1), 0)
    (folder / data.IDX_TRAIN_IMAGES).unlink()
    (folder / (data.IDX_TRAIN_IMAGES + ".gz")).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="damaged gzip"):
        data.load(DataConfig(name="mnist", data_dir=str(folder), n_val=1), 0)


def test_idx_counts_must_agree(tmp_path):
    write_idx_set(tmp_path, np.zeros((5, 2, 2)), np.zeros(4), gz=True)
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        data.load(DataConfig(name="mnist", data_dir=str(tmp_path), n_val=1), 0)


def test_missing_directory_and_file_errors(tmp_path, monkeypatch):
    gone = tmp_path / "nowhere"
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", gone)
    with pytest.raises(DataError) as err:
        data.load(DataConfig(name="fashion-mnist"), 0)
    message = str(err.value)
    assert str(gone) in message and "dataset-fashion-mnist" in message and "--data-dir" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="nowhere does not exist.*--data-dir"):
        data.load(DataConfig(name="mnist", data_dir=str(gone)), 0)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / data.IDX_TRAIN_IMAGES).write_bytes(idx_bytes(np.zeros((2, 2, 2))))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*not found"):
        data.load(DataConfig(name="mnist", data_dir=str(tmp_path / "half")), 0)


@pytest.mark.skipif(
    not (FASHION_FILES / "train-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_subset():
    ds = data.load(DataConfig(name="fashion-mnist", n_train=200, n_val=100, scaling="unit"), 0)
    assert ds.x_train.shape == (200, 1, 28, 28) and ds.x_val.shape == (100, 1, 28, 28)
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    assert set(ds.y_train.tolist()) <= set(range(10)) and len(set(ds.y_train.tolist())) > 5
    files = b"".join(
        (FASHION_FILES / f).read_bytes()
        for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    )
    assert ds.sha256 == hashlib.sha256(files).hexdigest()


# ---------------------------------------------------------------------------- cifar10


def fake_cifar(folder: Path, per_batch: int = 4) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tarball laid out like the CIFAR-10 python version; pixel 0 of image i holds i."""
    rng = np.random.default_rng(0)
    n = 5 * per_batch
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    pixels[:, 0] = np.arange(n)
    labels = rng.integers(0, 10, size=n)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / data.CIFAR10_FILE
    batches = {}
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        batches[f"data_batch_{b + 1}"] = (pixels[rows], labels[rows])
    batches["test_batch"] = (np.full((3, 3072), 255, dtype=np.uint8), np.zeros(3, dtype=int))
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in batches.items():
            blob = pickle.dumps({b"data": x, b"labels": [int(v) for v in y]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, pixels, labels


def test_cifar_fake_tarball_is_parsed(tmp_path, monkeypatch, offline):
    path, pixels, labels = fake_cifar(tmp_path / "c")
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    cfg = DataConfig(name="cifar10", data_dir=str(path.parent), n_val=6, scaling="none")
    ds = data.load(cfg, 2)
    assert ds.x_train.shape == (14, 3, 32, 32) and ds.x_val.shape == (6, 3, 32, 32)
    rng = np.random.default_rng(1)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        for k in range(len(x)):
            i = int(x[k, 0, 0, 0])  # which source image this is
            assert int(y[k]) == labels[i]
            for c, r, col in rng.integers(0, [3, 32, 32], size=(5, 3)):
                assert x[k, c, r, col] == pixels[i, c * 1024 + r * 32 + col]
    ids = torch.cat([ds.x_train[:, 0, 0, 0], ds.x_val[:, 0, 0, 0]]).sort().values
    assert ids.tolist() == list(range(20))  # training batches only, each image once
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert offline == []


def test_cifar_found_through_environment(tmp_path, monkeypatch, offline):
    path, _, _ = fake_cifar(tmp_path / "cache")  # DYNALIGN_DATA points here (fixture)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    assert data.load(DataConfig(name="cifar10", n_val=5), 0).x_train.shape == (15, 3, 32, 32)
    assert offline == []


def test_cifar_wrong_checksum(tmp_path, offline):
    fake_cifar(tmp_path)
    with pytest.raises(DataError, match=f"md5 .* published .*{data.CIFAR10_MD5}.*delete"):
        data.load(DataConfig(name="cifar10", data_dir=str(tmp_path)), 0)
    assert offline == []  # an existing file is never replaced behind the user's back


def test_cifar_incomplete_tarball(tmp_path, monkeypatch):
    path = tmp_path / data.CIFAR10_FILE
    with tarfile.open(path, "w:gz") as tar:
        blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
        info = tarfile.TarInfo(data.CIFAR10_BATCHES[0])
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="not the CIFAR-10 python tarball.*data_batch_2"):
        data.load(DataConfig(name="cifar10", data_dir=str(tmp_path), n_val=1), 0)


def test_cifar_missing_tries_download_then_explains(tmp_path, offline):
    folder = tmp_path / "empty"
    with pytest.raises(DataError, match="does not exist; create it"):  # a typo makes no folder
        data.load(DataConfig(name="cifar10", data_dir=str(folder)), 0)
    assert not folder.exists() and offline == []
    folder.mkdir()
    with pytest.raises(DataError) as err:
        data.load(DataConfig(name="cifar10", data_dir=str(folder)), 0)
    target = folder / data.CIFAR10_FILE
    assert offline == [(data.CIFAR10_URL, target)]
    assert str(target) in str(err.value) and data.CIFAR10_URL in str(err.value)


def test_download_verifies_before_renaming(tmp_path):
    source = tmp_path / "remote.bin"  # a file:// URL: the real downloader, without a network
    source.write_bytes(b"payload" * 100)
    good = hashlib.md5(source.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="md5"):
        REAL_DOWNLOAD(source.as_uri(), dest, "0" * 32)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left
    REAL_DOWNLOAD(source.as_uri(), dest, good)
    assert dest.read_bytes() == source.read_bytes() and list(dest.parent.iterdir()) == [dest]


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_labels_are_teacher_argmax():
    cfg = DataConfig(name="synthetic", n_inputs=7, n_classes=4, n_val=50, scaling="none")
    ds = data.load(cfg, 11)
    assert ds.x_train.shape == (1000, 7) and ds.input_shape == (7,) and ds.n_classes == 4
    w1, w2 = (w.numpy() for w in data.synthetic_teacher(7, 4, 11))
    assert w1.shape == (32, 7) and w2.shape == (4, 32)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        logits = np.tanh(x.numpy().astype(np.float64) @ w1.T) @ w2.T
        np.testing.assert_array_equal(y.numpy(), logits.argmax(axis=1))
    assert len(np.unique(ds.y_train.numpy())) > 1


def test_synthetic_unit_scaling_is_refused():
    with pytest.raises(DataError, match="zscore or none"):
        data.load(DataConfig(name="synthetic", scaling="unit"), 0)


# ---------------------------------------------------------------------------- patches


def test_patches_shape_and_range():
    ds = data.load(DataConfig(name="patches", n_train=400, n_val=100, patch_size=6), 0)
    assert ds.x_train.shape == (400, 1, 6, 6) and ds.x_val.shape == (100, 1, 6, 6)
    assert (ds.task, ds.n_classes, ds.meta["image_shape"]) == ("reconstruction", 0, [6, 6])
    assert torch.equal(ds.y_train, torch.zeros(400, dtype=torch.int64))
    for x in (ds.x_train, ds.x_val):
        assert float(x.min()) >= 0.1 - 1e-6 and float(x.max()) <= 0.9 + 1e-6
    x = ds.x_train.reshape(400, 36).numpy().astype(np.float64)
    unclipped = ((x > 0.1 + 1e-6) & (x < 0.9 - 1e-6)).all(axis=1)
    assert unclipped.mean() > 0.5  # +-3 std truncates only a few patches
    np.testing.assert_allclose(x[unclipped].mean(axis=1), 0.5, atol=1e-5)  # own mean removed
    img = ds.x_train[:, 0].numpy()  # photographs, not noise: neighbours are correlated
    assert np.corrcoef(img[:, :, :-1].ravel(), img[:, :, 1:].ravel())[0, 1] > 0.3


def test_patch_too_large():
    with pytest.raises(DataError, match="patch_size=500"):
        data.load(DataConfig(name="patches", n_train=10, n_val=2, patch_size=500), 0)


# ---------------------------------------------------------------------------- text


def decode(row: torch.Tensor, vocab: str) -> str:
    return "".join(vocab[i] for i in row.tolist())


def test_text_windows_from_file(tmp_path):
    corpus = "Feedback alignment: B ≠ Wᵀ, und trotzdem lernt es! 🙂\n" * 20
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    ds = data.load(DataConfig(name="text", text_path=str(path), seq_len=9, n_val=10), 0)
    n_windows = len(corpus) // 10
    assert len(ds.x_train) + len(ds.x_val) == n_windows and len(ds.x_val) == 10
    vocab = ds.meta["vocab"]
    assert vocab == "".join(sorted(set(corpus))) and ds.n_classes == len(set(corpus))
    assert ds.task == "next_token" and ds.x_train.dtype == torch.int64 and ds.input_shape == (9,)
    assert torch.equal(ds.y_train[:, :-1], ds.x_train[:, 1:])
    assert decode(ds.x_train[0], vocab) in corpus
    decoded = [
        decode(x, vocab) + vocab[int(y[-1])]
        for xs, ys in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val))
        for x, y in zip(xs, ys, strict=True)
    ]
    windows = [corpus[k * 10 : (k + 1) * 10] for k in range(n_windows)]
    assert sorted(decoded) == sorted(windows)  # non-overlapping windows, each used once
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_text_default_corpus_is_pydoc_topics():
    from pydoc_data.topics import topics

    corpus = "".join(topics[k] for k in sorted(topics))
    ds = data.load(DataConfig(name="text", seq_len=32, n_val=20, n_train=50), 1)
    vocab = ds.meta["vocab"]
    assert vocab == "".join(sorted(set(corpus))) and ds.n_classes == len(vocab)
    first = permutation(len(corpus) // 33, 1)[0]
    assert decode(ds.x_val[0], vocab) == corpus[first * 33 : first * 33 + 32]
    assert decode(ds.y_val[0], vocab) == corpus[first * 33 + 1 : first * 33 + 33]


def test_text_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load(DataConfig(name="text", text_path=str(tmp_path / "none.txt")), 0)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        data.load(DataConfig(name="text", text_path=str(tmp_path / "empty.txt")), 0)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        data.load(DataConfig(name="text", text_path=str(tmp_path / "latin1.txt")), 0)
    (tmp_path / "short.txt").write_text("abc" * 11)
    with pytest.raises(DataError, match=r"has 1 windows of data.seq_len\+1=33.*n_val=5"):
        data.load(DataConfig(name="text", text_path=str(tmp_path / "short.txt"), n_val=5), 0)

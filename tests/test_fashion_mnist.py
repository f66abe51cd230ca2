"""MNIST-style idx files: the reader on hand-made files, both folder layouts, and the real
Fashion-MNIST of Debian's dataset-fashion-mnist (installed by .ci/run)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import IDX_FILES, SYSTEM_FOLDERS, UserError, load_data, read_idx

FASHION = SYSTEM_FOLDERS["fashionmnist"]


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> Path:
    raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape) + a.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(folder: Path, gz: bool, n_train: int = 100, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(folder / name, a, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(1).integers(0, 256, (5, 4, 3))
    assert np.array_equal(read_idx(write_idx(tmp_path / "x-idx3-ubyte", a, gz)), a)


def test_truncated_or_foreign_file_names_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{path}.*truncated"):
        read_idx(path)
    foreign = tmp_path / "t10k-labels-idx1-ubyte.gz"
    foreign.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=f"{foreign} could not be read"):
        read_idx(foreign)
    plain = tmp_path / "other-idx1-ubyte"
    plain.write_bytes(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(plain)


def test_idx_header_boundaries(tmp_path):
    """Each magic byte is checked on its own (0, 0, 8 for unsigned bytes, then 1 to 4 dimensions);
    dimensions are big-endian 32-bit counts (one above 255 reads right); the data size must match,
    and the error gives how many bytes there are."""
    four = np.arange(2 * 1 * 1 * 300).reshape(2, 1, 1, 300) % 256
    assert read_idx(write_idx(tmp_path / "four", four)).shape == (2, 1, 1, 300)
    assert read_idx(write_idx(tmp_path / "one", np.arange(3))).tolist() == [0, 1, 2]
    good = (tmp_path / "one").read_bytes()
    for i, byte in ((0, 1), (1, 1), (2, 9), (3, 0), (3, 5)):
        bad = tmp_path / f"bad{i}_{byte}"
        bad.write_bytes(good[:i] + bytes([byte]) + good[i + 1:])
        with pytest.raises(UserError, match="bad magic number"):
            read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8]))
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(short)
    empty = tmp_path / "empty"
    empty.write_bytes(bytes([0, 0, 8, 1]) + (0).to_bytes(4, "big"))  # a valid file of zero items
    assert read_idx(empty).shape == (0,)
    long = tmp_path / "long"
    long.write_bytes(good + b"xy")
    with pytest.raises(UserError, match=r"holds 5 bytes of data where its header announces 3 \(shape \(3,\)\)"):
        read_idx(long)


@pytest.mark.parametrize("layout, gz", [("MNIST/raw", True), ("MNIST/raw", False), ("", False), ("", True)])
def test_mnist_loads_from_torchvision_layout_or_a_flat_folder(tmp_path, layout, gz):
    arrays = fake_mnist(tmp_path / layout, gz)
    data = load_data("mnist", tmp_path, seed=0)
    assert data.x_train.shape == (100, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert np.array_equal(data.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert (len(data.train_idx), len(data.val_idx)) == (90, 10)


def test_mismatched_images_and_labels_are_refused(tmp_path):
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(99))
    with pytest.raises(UserError, match="do not match"):
        load_data("mnist", tmp_path, seed=0)


def test_missing_files_error_says_what_to_place(tmp_path):
    from dataset import DATASETS
    assert all(name in DATASETS["fashionmnist"].files for name in IDX_FILES)
    assert "dataset-fashion-mnist" in DATASETS["fashionmnist"].files


# ------------------------------------------------------------------ the real data
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir(),
    reason=f"Fashion-MNIST is not installed in {FASHION}: `apt-get install dataset-fashion-mnist` (.ci/run does)")


@pytest.fixture(scope="module")
def fashion():
    return load_data("fashionmnist", "./no-data-here", seed=1)  # found in Debian's folder


@needs_fashion
def test_real_fashion_mnist_shapes_classes_and_split(fashion):
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(fashion.y_train).tolist() == [6000] * 10
    assert torch.bincount(fashion.y_test).tolist() == [1000] * 10
    assert (len(fashion.train_idx), len(fashion.val_idx)) == (54000, 6000)
    assert torch.bincount(fashion.y_train[fashion.val_idx]).tolist() == [600] * 10
    assert 0.2 < fashion.mean.item() < 0.4  # Fashion-MNIST's pixel mean is 0.286


@pytest.mark.slow
@needs_fashion
def test_convnet_beats_80_percent_after_one_epoch(fashion):
    from evaluation.accuracy import accuracy, logits_of
    from models import create_model
    from unlearn.impl import Recipe, run
    from unlearn.methods.ft import FT

    torch.manual_seed(0)
    model = create_model("convnet", 10, 1)
    run(model, fashion, torch.empty(0, dtype=torch.long), fashion.train_idx, FT(), None,
        Recipe(lr=0.1, epochs=1), seed=1, progress=False)
    assert accuracy(logits_of(model, fashion, fashion.x_test), fashion.y_test) > 80

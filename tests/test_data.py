"""Splits and forget sets: sizes, disjointness, determinism, and the bad-input errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dataset import UserError, augment, forget_indices, forget_split, load_data, validation_split


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "./data", seed=1)


def test_digits_split_sizes_and_disjointness(digits):
    n_train_full = len(digits.y_train)
    assert n_train_full + len(digits.y_test) == 1797  # the whole embedded data set
    tr, va = digits.train_idx.numpy(), digits.val_idx.numpy()
    assert len(np.intersect1d(tr, va)) == 0
    assert len(tr) + len(va) == n_train_full
    y = digits.y_train.numpy()
    for c in range(10):  # 10% of every class, rounded down
        assert (y[va] == c).sum() == int(0.1 * (y == c).sum())


def test_digits_test_set_does_not_depend_on_seed():
    a, b = load_data("digits", "./data", seed=1), load_data("digits", "./data", seed=7)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.val_idx, b.val_idx)  # the validation hold-out is seeded


def test_validation_split_matches_cifar10_sizes():
    y = np.repeat(np.arange(10), 5000)
    tr, va = validation_split(y, seed=0)
    assert (len(tr), len(va)) == (45000, 5000)


def test_forget_split_is_deterministic_and_disjoint(digits):
    a = forget_split(digits, seed=1, class_to_replace=-1, num_indexes=50)
    b = forget_split(digits, seed=1, class_to_replace=-1, num_indexes=50)
    assert torch.equal(a.forget, b.forget) and a.info == b.info
    assert len(a.forget) == 50 and len(np.intersect1d(a.forget, a.retain)) == 0
    assert len(a.forget) + len(a.retain) == len(digits.train_idx)
    assert len(np.intersect1d(a.forget, digits.val_idx)) == 0


def test_different_seed_gives_different_random_forget_set(digits):
    a = forget_split(digits, seed=1, class_to_replace=-1, num_indexes=50)
    b = forget_split(digits, seed=2, class_to_replace=-1, num_indexes=50)
    assert not torch.equal(a.forget, b.forget)


def test_class_forgetting_takes_exactly_the_class(digits):
    s = forget_split(digits, seed=1, class_to_replace=3, num_indexes=None)
    y = digits.y_train
    in_class = digits.train_idx[y[digits.train_idx] == 3]
    assert torch.equal(torch.sort(s.forget).values, torch.sort(in_class).values)
    assert s.info["mode"] == "class" and s.is_class_forgetting
    assert (y[s.retain] != 3).all()
    part = forget_split(digits, seed=1, class_to_replace=3, num_indexes=10)
    assert part.info["mode"] == "subset" and (y[part.forget] == 3).all() and len(part.forget) == 10


@pytest.mark.parametrize("c, n, message", [
    (10, 5, "outside [-1, 10)"),
    (-2, 5, "outside [-1, 10)"),
    (0, 10_000, "larger than class 0 allows: it has"),
    (-1, 10_000, "larger than the training set"),
    (0, 0, "at least 1"),
    (-1, None, "needs --num_indexes_to_replace"),
])
def test_bad_forget_arguments(c, n, message):
    y = np.repeat(np.arange(10), 20)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        forget_indices(y, np.arange(len(y)), 0, c, n, 10)


def test_forget_set_size_boundaries():
    """Random forgetting keeps at least one retain sample; a whole class may go; one more is refused
    with the limit the error names, and that limit works."""
    y = np.repeat(np.arange(10), 20)
    train = np.arange(len(y))
    assert len(forget_indices(y, train, 0, -1, 199, 10)[0]) == 199
    for n in (200, 201):
        with pytest.raises(UserError, match="one must stay in the retain set; use at most 199$"):
            forget_indices(y, train, 0, -1, n, 10)
    assert len(forget_indices(y, train, 0, 4, 20, 10)[0]) == 20
    with pytest.raises(UserError, match="class 4 allows: it has 20 training samples .*; use at most 20$"):
        forget_indices(y, train, 0, 4, 21, 10)


def test_missing_dataset_names_folder_and_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_data("cifar100", tmp_path, seed=0)
    assert str(tmp_path) in str(e.value) and "cifar-100-python.tar.gz" in str(e.value)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="choices: .*digits"):
        load_data("imagenet21k", "./data", seed=0)


def test_augment_crops_and_flips_per_sample():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32).to(torch.uint8)
    out = augment(x.repeat(16, 1, 1, 1), flip=True)
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.uint8
    assert len({o.sum().item() for o in out}) > 1  # samples got different crops
    torch.manual_seed(0)
    assert torch.equal(out, augment(x.repeat(16, 1, 1, 1), flip=True))  # seeded


def test_augment_is_a_padded_crop_then_mirror_with_the_same_draws_as_per_sample_indexing():
    """Every output is the zero-padded image cropped at the (dy, dx) drawn for it, mirrored when its
    flip was drawn; the draws (dy, then dx, then the flips) are those of the earlier indexing form,
    so results made before the gather version are reproduced."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    out = augment(x, flip=True, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    dy, dx = (torch.randint(0, 9, (64,), generator=draws) for _ in range(2))
    mirror = torch.rand(64, generator=draws) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        crop = padded[i, :, dy[i]:dy[i] + 12, dx[i]:dx[i] + 10]
        assert torch.equal(out[i], crop.flip(2) if mirror[i] else crop), i
    assert 0 < mirror.sum() < 64 and len(set(dy.tolist())) > 3
    plain = augment(x, flip=False, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(plain[i], padded[i, :, dy[i]:dy[i] + 12, dx[i]:dx[i] + 10]) for i in range(64))


def test_tinyimagenet_folder_layout_is_read_and_cached(tmp_path):
    """A miniature tiny-imagenet-200 folder: 2 classes, 10 train and 2 val images each."""
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ann = []
    for c, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (64, 64), (40 * c, 10 * i, 0)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        for i in range(2):
            name = f"val_{c}_{i}.JPEG"
            Image.new("RGB", (64, 64), (40 * c, 0, 0)).save(root / "val" / "images" / name)
            ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    data = load_data("tinyimagenet", tmp_path, seed=0, num_classes=2)
    assert data.x_train.shape == (20, 3, 64, 64) and data.x_test.shape == (4, 3, 64, 64)
    assert sorted(data.y_test.tolist()) == [0, 0, 1, 1] and len(data.val_idx) == 2  # 10% of each class
    assert (root / "uint8_tensors.npz").is_file()
    again = load_data("tinyimagenet", tmp_path, seed=0, num_classes=2)
    assert torch.equal(again.x_train, data.x_train)


def test_subsample_boundaries(tmp_path):
    whole = len(load_data("digits", tmp_path, seed=0).y_train)
    assert len(load_data("digits", tmp_path, seed=0, subsample=1.0).y_train) == whole
    assert len(load_data("digits", tmp_path, seed=0, subsample=0.05).y_train) == pytest.approx(0.05 * whole, abs=10)
    for share in (0.0, -0.5, 1.0 + 1e-9):
        with pytest.raises(UserError, match=r"--subsample .*: give a share in \(0, 1\]"):
            load_data("digits", tmp_path, seed=0, subsample=share)


def test_class_and_size_boundaries_name_the_flag():
    """--class_to_replace in [-1, num_classes), N in [1, pool] (random forgetting: pool - 1);
    the sizes at the pool's edge are in test_data.test_forget_set_size_boundaries."""
    from dataset import forget_indices

    y = np.repeat(np.arange(10), 20)
    train = np.arange(len(y))
    for c in (-1, 9):
        assert len(forget_indices(y, train, 0, c, 1, 10)[0]) == 1
    for c in (-2, 10):
        with pytest.raises(UserError, match=f"--class_to_replace {c} is outside"):
            forget_indices(y, train, 0, c, 1, 10)
    with pytest.raises(UserError, match="--num_indexes_to_replace 0: the forget set needs at least 1"):
        forget_indices(y, train, 0, -1, 0, 10)


def test_num_classes_boundary(tmp_path):
    """digits' labels run to 9: --num_classes 10 is accepted, 9 refused with its own message."""
    assert load_data("digits", tmp_path, seed=0, num_classes=10).num_classes == 10
    with pytest.raises(UserError, match="--num_classes 9 is too small: digits has labels up to 9"):
        load_data("digits", tmp_path, seed=0, num_classes=9)


def test_the_forget_set_record_says_how_the_set_was_drawn(tmp_path):
    data = load_data("digits", tmp_path, seed=2)
    split = forget_split(data, 2, 5, 30)
    forget = split.forget.numpy()
    assert split.info == {
        "dataset": "digits", "seed": 2, "class_to_replace": 5, "num_indexes_to_replace": 30, "mode": "subset",
        "num_train": len(data.train_idx), "num_val": len(data.val_idx), "num_test": len(data.y_test),
        "num_forget": 30, "num_retain": len(data.train_idx) - 30,
        "forget_sha1": hashlib.sha1(forget.astype(np.int64).tobytes()).hexdigest()}
    assert (data.y_train[split.forget] == 5).all()
    assert forget_split(data, 2, -1, 30).info["mode"] == "random"

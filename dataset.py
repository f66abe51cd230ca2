"""Data sets as tensors in memory, the validation split and the forget sets.

Every data set is loaded once into uint8 tensors (N, C, H, W) that live on the
compute device; a batch is an index tensor into them, augmented and normalised
on the device (no DataLoader, no worker processes, as in airbench). The forget
set D_F, the retain set D_R and the validation set D_V are index tensors into
the training tensor, and all three are pure functions of
(data set, seed, class_to_replace, num_indexes_to_replace).

    data = load_data("digits", "./data", seed=2)
    split = forget_split(data, seed=2, class_to_replace=-1, num_indexes=100)
    x, y = data.batch(split.forget, train=True)
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VAL_SHARE = 0.1  # per class, held out of the training set (Unlearn-Sparse: CIFAR-10 45,000 / 5,000)


class UserError(Exception):
    """Bad input a user can fix (a data set not on disk, a forget set larger than its class, an
    unknown name...): the entry scripts print it as one line, without a traceback, and exit 2. It is
    defined here, in the lowest library module that raises it, so that the library never imports the
    application layer for it; `utils` re-exports it to the scripts."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    num_classes: int
    augment: str  # "crop_flip", "crop" (digits must not be mirrored) or "none"
    files: str  # what a user must place under --data when there is no network
    arch: str = "resnet18"  # the default --arch: one that trains in minutes on a CPU for the small sets


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, num_classes: int, augment: str, files: str, arch: str = "resnet18"):
    def wrap(fn):
        DATASETS[name] = DatasetSpec(name, fn, num_classes, augment, files, arch)
        return fn
    return wrap


# -------------------------------------------------------------------- loaders
# Each returns uint8 arrays x (N, C, H, W) and int64 labels y, train then test.

@register_dataset("digits", 10, "none", "nothing: it ships with scikit-learn", arch="smallcnn")
def _digits(root: Path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 grey levels -> 0..255
    # Fixed split, independent of --seed: the test set is the same for every run.
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


class MissingData(Exception):
    pass


def _torchvision(cls_name: str, root: Path):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    out = []
    for split in (("train", "test") if cls_name == "SVHN" else (True, False)):
        key = {"split": split} if cls_name == "SVHN" else {"train": split}
        try:
            ds = cls(str(root), download=False, **key)
        except RuntimeError:  # not on disk: try the network once, briefly
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(20)
            try:
                ds = cls(str(root), download=True, **key)
            except Exception as e:
                raise MissingData(str(e)) from None
            finally:
                socket.setdefaulttimeout(old)
        x = ds.data if not isinstance(ds.data, torch.Tensor) else ds.data.numpy()
        y = np.asarray(ds.labels if cls_name == "SVHN" else ds.targets, dtype=np.int64)
        if x.ndim == 3:  # MNIST-like (N, H, W)
            x = x[:, None]
        elif x.shape[-1] == 3:  # CIFAR stores (N, H, W, C)
            x = x.transpose(0, 3, 1, 2)
        out += [np.ascontiguousarray(x, dtype=np.uint8), y]
    return out[0], out[1], out[2], out[3]


for _name, _cls, _classes, _aug, _files in (
    ("cifar10", "CIFAR10", 10, "crop_flip", "cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/)"),
    ("cifar100", "CIFAR100", 100, "crop_flip", "cifar-100-python.tar.gz (or the extracted cifar-100-python/)"),
    ("svhn", "SVHN", 10, "crop", "train_32x32.mat and test_32x32.mat"),
):
    register_dataset(_name, _classes, _aug, _files)(lambda root, _cls=_cls: _torchvision(_cls, root))


# ---------------------------------------------------------- MNIST-style idx files
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SYSTEM_FOLDERS = {"fashionmnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's dataset-fashion-mnist


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format), gzipped or not, whatever its checksum; a wrong or
    truncated file is a UserError that names it."""
    import gzip

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path} could not be read ({e}); replace it with the original file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise UserError(f"{path} is not an idx file of unsigned bytes (bad magic number); "
                        "replace it with the original file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start, need = 4 + 4 * ndim, int(np.prod(shape))
    if len(raw) != start + need:
        raise UserError(f"{path} holds {len(raw) - start} bytes of data where its header announces {need} "
                        f"(shape {shape}): the file is truncated or damaged; replace it with the original file")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def _idx_folder(name: str, cls_name: str, root: Path) -> Path | None:
    """The first folder that holds the four idx files (each plain or .gz)."""
    for folder in (root / cls_name / "raw", root, SYSTEM_FOLDERS.get(name)):
        if folder is not None and all(_idx_path(folder, f) for f in IDX_FILES):
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_like(name: str, cls_name: str, root: Path):
    """MNIST or Fashion-MNIST from the four idx files: under `root/<Class>/raw/` (torchvision's
    layout), directly in `root`, or (Fashion-MNIST) in Debian's /usr/share/datasets/fashion-mnist;
    a network download through torchvision only when none holds them."""
    folder = _idx_folder(name, cls_name, root)
    if folder is None:
        _torchvision(cls_name, root)  # downloads where a network exists, else MissingData
        folder = _idx_folder(name, cls_name, root)
        if folder is None:
            raise MissingData(f"the download left no idx files in {root / cls_name / 'raw'}")
    xtr, ytr, xte, yte = (read_idx(_idx_path(folder, f)) for f in IDX_FILES)
    for x, y, which in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{folder}: {which} images {x.shape} and labels {y.shape} do not match; "
                            "replace them with the original files")
    return xtr[:, None].copy(), ytr.astype(np.int64), xte[:, None].copy(), yte.astype(np.int64)


for _name, _cls in (("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")):
    register_dataset(_name, 10, "none",
                     f"the four idx files ({', '.join(IDX_FILES)}, each plain or .gz) in {_cls}/raw/ "
                     f"or directly in that folder" + ("; or install Debian's dataset-fashion-mnist"
                                                      if _name == "fashionmnist" else ""), arch="convnet")(
        lambda root, _name=_name, _cls=_cls: _mnist_like(_name, _cls, root))


@register_dataset("tinyimagenet", 200, "crop_flip",
                  "tiny-imagenet-200/ (unzipped tiny-imagenet-200.zip: wnids.txt, train/, val/)")
def _tinyimagenet(root: Path):
    """The tiny-imagenet-200 layout; its labelled val/ split serves as the test set.

    Decoding 110,000 JPEGs takes minutes, so the tensors are cached next to the folder.
    """
    folder = root / "tiny-imagenet-200"
    if not (folder / "wnids.txt").is_file():
        raise MissingData(f"{folder} not found")
    cache = folder / "uint8_tensors.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["xtr"], z["ytr"], z["xte"], z["yte"]
    from PIL import Image

    wnids = folder.joinpath("wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}

    def read(paths):
        return np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])

    train = sorted((p, label[p.parent.parent.name]) for p in folder.glob("train/*/images/*.JPEG"))
    ann = [line.split("\t")[:2] for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()]
    test = sorted((folder / "val" / "images" / f, label[w]) for f, w in ann)
    xtr, ytr = read([p for p, _ in train]), np.array([c for _, c in train], dtype=np.int64)
    xte, yte = read([p for p, _ in test]), np.array([c for _, c in test], dtype=np.int64)
    np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return xtr, ytr, xte, yte


# ------------------------------------------------------------------ in memory
@dataclass
class TensorData:
    """A data set held as tensors; `train_idx` / `val_idx` split the training tensor."""

    name: str
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_idx: torch.Tensor  # the training set proper (validation held out)
    val_idx: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # (C,) in [0, 1] units, from the training tensor
    std: torch.Tensor
    augment: str = "none"

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    def to(self, device: torch.device) -> TensorData:
        for f in ("x_train", "y_train", "x_test", "y_test", "train_idx", "val_idx", "mean", "std"):
            setattr(self, f, getattr(self, f).to(device))
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def batch(self, idx: torch.Tensor, train: bool = False,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of training samples `idx`; `train=True` augments, drawing from `generator`."""
        x = self.x_train[idx]
        if train and self.augment != "none":
            x = augment(x, flip=self.augment == "crop_flip", generator=generator)
        return self.normalise(x), self.y_train[idx]


def augment(x: torch.Tensor, flip: bool, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding `pad` (and horizontal flip), per sample, on x's device: two
    gathers, rows then columns, the flip folded into the column indices (no per-sample loop)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:  # a mirrored sample reads its crop's columns right to left
        mirror = torch.rand(b, device=x.device, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, (dx[:, None] + cols)[:, None, None, :].expand(b, c, h, w))


def validation_split(y: np.ndarray, seed: int, share: float = VAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `share` of every class (rounded down), seeded; returns (train_idx, val_idx), sorted."""
    rng = np.random.default_rng([seed, 1])  # its own stream: independent of the forget-set draw
    val = [rng.choice(np.flatnonzero(y == c), int(share * (y == c).sum()), replace=False)
           for c in np.unique(y)]
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val), val


def stratified_subset(y: np.ndarray, share: float) -> np.ndarray:
    """Sorted indices of round(share * n_c) samples of every class c, drawn with a fixed seed
    (the same subset for every --seed, like digits' fixed test split)."""
    rng = np.random.default_rng([0, 4])
    keep = [rng.choice(np.flatnonzero(y == c), max(1, round(share * (y == c).sum())), replace=False)
            for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def _remove_empty_tree(root: Path) -> None:
    """Remove `root` and the folders under it, if none holds a file."""
    import shutil

    if root.is_dir() and not any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        shutil.rmtree(root, ignore_errors=True)


def load_data(name: str, root: str | Path, seed: int, num_classes: int | None = None,
              no_aug: bool = False, subsample: float = 1.0) -> TensorData:
    """Load data set `name` from `root` into CPU tensors and hold out the validation set;
    `subsample` < 1 keeps that stratified share of the training and the test set."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choices: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    root = Path(root)
    fresh = root.absolute()  # the outermost folder a download attempt would create, if any
    while not fresh.parent.exists():
        fresh = fresh.parent
    fresh = None if fresh.exists() else fresh
    try:
        xtr, ytr, xte, yte = spec.load(root)
    except MissingData as e:
        if fresh is not None:  # a failed download leaves no empty folders behind
            _remove_empty_tree(fresh)
        raise UserError(f"data set {name} is not in {root.resolve()} and could not be downloaded ({e}); "
                        f"place {spec.files} in that folder") from None
    if not 0 < subsample <= 1:
        raise UserError(f"--subsample {subsample}: give a share in (0, 1]")
    if subsample < 1:
        tr, te = stratified_subset(ytr, subsample), stratified_subset(yte, subsample)
        xtr, ytr, xte, yte = xtr[tr], ytr[tr], xte[te], yte[te]
    n_cls = num_classes or spec.num_classes
    if ytr.max() >= n_cls:
        raise UserError(f"--num_classes {n_cls} is too small: {name} has labels up to {ytr.max()}")
    train_idx, val_idx = validation_split(ytr, seed)
    x = torch.from_numpy(xtr[train_idx]).float().div(255)
    return TensorData(
        name=name,
        x_train=torch.from_numpy(xtr), y_train=torch.from_numpy(ytr),
        x_test=torch.from_numpy(xte), y_test=torch.from_numpy(yte),
        train_idx=torch.from_numpy(train_idx), val_idx=torch.from_numpy(val_idx),
        num_classes=n_cls,
        mean=x.mean(dim=(0, 2, 3)), std=x.std(dim=(0, 2, 3)).clamp_min(1e-3),
        augment="none" if no_aug else spec.augment,
    )


# ---------------------------------------------------------------- forget sets
@dataclass
class ForgetSplit:
    """D_F and D_R as index tensors into the training tensor, and how they were drawn."""

    forget: torch.Tensor
    retain: torch.Tensor
    info: dict

    @property
    def is_class_forgetting(self) -> bool:
        return self.info["mode"] == "class"

    def to(self, device: torch.device) -> ForgetSplit:
        self.forget, self.retain = self.forget.to(device), self.retain.to(device)
        return self


def forget_indices(y: np.ndarray, train_idx: np.ndarray, seed: int, class_to_replace: int,
                   num_indexes: int | None, num_classes: int) -> tuple[np.ndarray, str]:
    """Choose N training indices: from class C, or uniformly from all classes when C = -1.

    A pure function of its arguments; returns (sorted indices, mode) with mode
    "class" when the whole class goes, "random" for C = -1, else "subset".
    """
    c, n = class_to_replace, num_indexes
    if not -1 <= c < num_classes:
        raise UserError(f"--class_to_replace {c} is outside [-1, {num_classes}): use -1 for random "
                        f"forgetting or a class index below {num_classes}")
    pool = train_idx if c == -1 else train_idx[y[train_idx] == c]
    where = "the training set" if c == -1 else f"class {c}"
    if n is None:
        if c == -1:
            raise UserError("--class_to_replace -1 needs --num_indexes_to_replace N (the forget set size)")
        n = len(pool)
    if n < 1:
        raise UserError(f"--num_indexes_to_replace {n}: the forget set needs at least 1 sample")
    # random forgetting must leave a retain set (the ideal model trains on it); a whole class may go
    most = len(pool) - 1 if c == -1 else len(pool)
    if n > most:
        keep = "; one must stay in the retain set" if c == -1 else ""
        raise UserError(f"--num_indexes_to_replace {n} is larger than {where} allows: it has {len(pool)} "
                        f"training samples (after the 10% validation hold-out){keep}; use at most {most}")
    rng = np.random.default_rng([seed, 2, c + 1, n])
    chosen = np.sort(rng.choice(pool, n, replace=False))
    mode = "random" if c == -1 else ("class" if n == len(pool) else "subset")
    return chosen, mode


def forget_split(data: TensorData, seed: int, class_to_replace: int, num_indexes: int | None) -> ForgetSplit:
    """The forget and retain sets of the arguments, with a record to save beside checkpoints."""
    y, train_idx = data.y_train.cpu().numpy(), data.train_idx.cpu().numpy()
    forget, mode = forget_indices(y, train_idx, seed, class_to_replace, num_indexes, data.num_classes)
    return split_of(data, forget, seed, class_to_replace, mode)


def split_of(data: TensorData, forget: np.ndarray, seed: int, class_to_replace: int, mode: str,
             salt: bytes = b"", **record) -> ForgetSplit:
    """D_F = `forget` and D_R = the rest of the training set, with the record of how D_F was drawn;
    `forget_sha1` covers the indices and `salt` (what else makes the set, as a backdoor's trigger),
    `record` adds entries."""
    train_idx = data.train_idx.cpu().numpy()
    retain = np.setdiff1d(train_idx, forget)
    info = {
        "dataset": data.name, "seed": seed, "class_to_replace": class_to_replace,
        "num_indexes_to_replace": len(forget), "mode": mode, **record,
        "num_train": len(train_idx), "num_val": len(data.val_idx), "num_test": len(data.y_test),
        "num_forget": len(forget), "num_retain": len(retain),
        "forget_sha1": hashlib.sha1(forget.astype(np.int64).tobytes() + salt).hexdigest(),
    }
    return ForgetSplit(torch.from_numpy(forget), torch.from_numpy(retain), info)

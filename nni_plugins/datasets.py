"""Image-classification data for NAS search: one entry point, :func:`build_datasets`.

Supported sources (``name``):

``"digits"`` (default)
    scikit-learn's bundled 8x8 hand-written digits (1,797 images, 10 classes, no download).
    Pixels are scaled from 0..16 to [0, 1]. A fixed 20 % of the images (permutation seed 0,
    independent of ``seed``) is held out as the test part, so every search seed sees the same test set.
``"cifar10"`` / ``"cifar100"``
    CIFAR through ``torchvision.datasets`` under ``root`` (default ``~/.cache/nni_plugins/data``).
    Nothing is downloaded unless ``download=True``; missing files give one ``ValueError`` that says how
    to proceed. The test part is the official test set. Normalised with the data sets' standard
    per-channel mean/std.
``"imagefolder"``
    A ``torchvision.datasets.ImageFolder`` tree at ``path`` (``<class>/<image>``). When ``path`` has a
    ``train/`` sub-directory and a ``test/`` or ``val/`` one (``test/`` preferred), ``train/`` is the
    training data and the other the test part; otherwise the whole tree is training data and there is no
    test part. Images are read as RGB; the first training image fixes the input size and any image of
    another size is resized to it. Mean/std are estimated on at most
    :data:`IMAGEFOLDER_STATS_SAMPLES` evenly spaced training images.
``"npz"``
    A NumPy ``.npz`` file at ``path`` with ``x_train``/``y_train`` and optionally ``x_test``/``y_test``.
    Images may be ``N x C x H x W`` or ``N x H x W x C`` (the axis of size <= 4 is the channel axis;
    ``N x H x W`` is read as one channel); ``uint8`` is scaled by 1/255, float data is used as is.
    Labels are non-negative integers; the number of classes is the optional scalar ``num_classes`` in
    the file, else the largest training label plus one.

Checks at load. Bad data is refused when it is loaded, with one ``ValueError`` that names the file and
the array or image: ``.npz`` files that are truncated, corrupt or not ``.npz`` archives (also a text
file, or a directory, named ``.npz``); float images
with NaN or infinite values (with their count and the first bad image); labels at or above
``num_classes`` (given in the file, or for ``y_test`` implied by ``y_train``: test classes that never
occur in training); labels that leave more than half of the classes they imply without a training image
(e.g. labels 0 and 10**9, which would build a model with 10**9 outputs; give ``num_classes`` to keep
them); fewer than 2 classes (also an ImageFolder tree with one class sub-directory). In an ImageFolder
tree every file's image header is read up front (cheap: the pixels are not decoded), so files that are
not images are refused at load; a file whose pixels fail to decode later (e.g. truncated) raises a
``ValueError`` naming it when it is read (the images used for the mean/std are decoded at load).

Splits. ``train`` and ``val`` are a deterministic split (by ``seed``) of the training data:
one-shot strategies update weights on ``train`` and architecture parameters on ``val`` (the DARTS
protocol, which halves CIFAR-10's training set, hence ``val_fraction=0.5``); multi-trial strategies
train each sample on ``train`` and score it on ``val``. ``limit`` first draws that many training images
(with the same seeded permutation) for quick runs. The test part is never used by the search.

Preprocessing. Every part is normalised with one per-channel mean/std: the data set's standard
statistics for CIFAR, otherwise the statistics of the training images in use (``train`` and ``val``
together, after ``limit``); a channel with zero spread keeps std 1. With ``augment=True`` the ``train``
part of 32x32 RGB data gets the standard CIFAR augmentation (``RandomCrop(32, padding=4)`` on
[0, 1] pixels, then ``RandomHorizontalFlip``, then normalisation), as in DARTS; other shapes, and
``val``/``test``, are never augmented.

Serialisation. :class:`SplitDataset` is ``nni.trace``-d and holds only plain arguments (source name,
path, seed, fractions, statistics). ``nni.dump`` of an evaluator that uses it is a few hundred bytes, and
a multi-trial trial process rebuilds the images from the source (cached per process) instead of
receiving pickled tensors, which NNI 3.0's command channel can corrupt.
"""
from __future__ import annotations

import functools
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nni
import numpy as np
import torch
from PIL import Image  # torchvision depends on Pillow
from torch.utils.data import Dataset

__all__ = [
    "DATASET_NAMES", "DataSplits", "SplitDataset", "build_datasets", "split_indices",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "DEFAULT_DATA_ROOT",
]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "npz")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEFAULT_DATA_ROOT = os.path.join("~", ".cache", "nni_plugins", "data")
DIGITS_TEST_FRACTION = 0.2
IMAGEFOLDER_STATS_SAMPLES = 1000
_DIGITS_TEST_SEED = 0
_PARTS = ("train", "val", "test")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on bad files


@dataclass
class DataSplits:
    """Result of :func:`build_datasets`.

    Attributes
    ----------
    train, val
        Disjoint, seed-determined parts of the training data (weights / architecture or trial score).
    test
        Held-out test data, or ``None`` when the source has none.
    num_classes
        Number of classes.
    input_shape
        ``(channels, height, width)`` of one image.
    name
        The source name (one of :data:`DATASET_NAMES`).
    """
    train: "SplitDataset"
    val: "SplitDataset"
    test: "SplitDataset | None"
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


# ---------------------------------------------------------------------------------------------
# splitting

def split_indices(n: int, seed: int = 0, val_fraction: float = 0.5,
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split of ``n`` training images.

    A permutation drawn with ``numpy.random.default_rng(seed)`` orders the images; the first ``limit``
    of it (all when ``None``) are used, of which ``round(val_fraction * used)`` go to val and the rest
    to train. Both index arrays are returned sorted.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 2):
        raise ValueError(f"limit must be None or an integer >= 2 (train and val both need images), got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    order = np.random.default_rng(int(seed)).permutation(int(n))
    if limit is not None:
        order = order[:int(limit)]
    n_val = int(round(float(val_fraction) * len(order)))
    if n_val == 0 or n_val == len(order):
        raise ValueError(f"val_fraction={val_fraction} of {len(order)} training images leaves the train or val "
                         "part empty; use more images (limit) or a different val_fraction")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ---------------------------------------------------------------------------------------------
# sources: the raw images of a data set, loaded once per process

class _ArraySource:
    """In-memory images ``N x C x H x W`` (uint8 scaled by 1/255 on access, or float32 as is)."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray | None, y_test: np.ndarray | None, num_classes: int):
        self.x = {"train": x_train, "test": x_test}
        self.y = {"train": y_train, "test": y_test}
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in x_train.shape[1:])
        self.scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0

    def size(self, part: str) -> int:
        return 0 if self.x[part] is None else len(self.x[part])

    def item(self, part: str, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.asarray(self.x[part][index], dtype=np.float32) * self.scale)
        return image, int(self.y[part][index])

    def stats(self, indices: np.ndarray) -> tuple[list[float], list[float]]:
        x = self.x["train"]
        total = np.zeros(x.shape[1])
        total_sq = np.zeros(x.shape[1])
        for start in range(0, len(indices), 1024):
            chunk = x[indices[start:start + 1024]].astype(np.float64) * self.scale
            total += chunk.sum(axis=(0, 2, 3))
            total_sq += (chunk ** 2).sum(axis=(0, 2, 3))
        count = len(indices) * x.shape[2] * x.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
        return mean.tolist(), std.tolist()


class _FolderSource:
    """Images read lazily from ``torchvision.datasets.ImageFolder`` trees, as RGB, resized to the first
    training image's size when they differ."""

    def __init__(self, train_folder, test_folder):
        self.folders = {"train": train_folder, "test": test_folder}
        self.num_classes = len(train_folder.classes)
        width, height = self._read(train_folder, 0)[0].size
        self.size_wh = (width, height)
        self.input_shape = (3, height, width)
        self._resample = Image.BILINEAR

    def size(self, part: str) -> int:
        return 0 if self.folders[part] is None else len(self.folders[part])

    @staticmethod
    def _read(folder, index: int):
        """The RGB image ``index`` of ``folder`` and its label; a ``ValueError`` naming the file if it fails."""
        file, label = folder.samples[index]
        try:
            image = folder.loader(file)
        except _IMAGE_ERRORS as err:
            raise ValueError(f"cannot decode image '{file}': {err}; remove or replace the file") from err
        return image, int(label)

    def item(self, part: str, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.functional import to_tensor
        image, label = self._read(self.folders[part], index)
        if image.size != self.size_wh:
            image = image.resize(self.size_wh, self._resample)
        return to_tensor(image), label

    def stats(self, indices: np.ndarray) -> tuple[list[float], list[float]]:
        picked = indices[np.linspace(0, len(indices) - 1, min(len(indices), IMAGEFOLDER_STATS_SAMPLES)).astype(int)]
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        for index in picked:
            image = self.item("train", int(index))[0].double()
            total += image.sum(dim=(1, 2))
            total_sq += (image ** 2).sum(dim=(1, 2))
        count = len(picked) * self.input_shape[1] * self.input_shape[2]
        mean = total / count
        std = torch.sqrt(torch.clamp(total_sq / count - mean ** 2, min=0.0))
        return mean.tolist(), std.tolist()


def _check_finite(x: np.ndarray, key: str, path: str) -> None:
    """Refuse float images with NaN or infinite values (checked in chunks of images to bound memory)."""
    if x.dtype == np.uint8:
        return
    bad_values, bad_images, first = 0, 0, None
    for start in range(0, len(x), 1024):
        per_image = (~np.isfinite(x[start:start + 1024])).reshape(min(1024, len(x) - start), -1).sum(axis=1)
        bad_values += int(per_image.sum())
        bad_images += int(np.count_nonzero(per_image))
        if first is None and bad_images:
            first = start + int(np.flatnonzero(per_image)[0])
    if bad_values:
        raise ValueError(f"{path}: '{key}' has {bad_values} NaN or infinite value(s) in {bad_images} image(s) "
                         f"(first: image {first}); replace or drop those images")


def _images_to_nchw(x: np.ndarray, key: str, path: str) -> np.ndarray:
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32)
    else:
        raise ValueError(f"{path}: '{key}' must hold uint8 or float images, got dtype {x.dtype}")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{path}: '{key}' must have shape N x C x H x W, N x H x W x C or N x H x W, "
                         f"got {x.shape}")
    if x.shape[1] <= 4:
        return x
    if x.shape[3] <= 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(f"{path}: cannot tell the channel axis of '{key}' with shape {x.shape}: "
                     "expected 1 to 4 channels on axis 1 (NCHW) or axis 3 (NHWC)")


def _labels(y: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"{path}: '{key}' must be one label per image (1-D), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}: '{key}' has {len(y)} labels but the images have {n}")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: '{key}' must hold integer class labels, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{path}: '{key}' has negative labels; classes must be numbered 0..K-1")
    return y.astype(np.int64)


_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


_ZIP_MAGIC = b"PK"                 # .npz files are zip archives
_NPY_MAGIC = b"\x93NUMPY"          # a single array written by numpy.save


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as file:
        head = file.read(len(_NPY_MAGIC))
    if not head.startswith(_ZIP_MAGIC) and head != _NPY_MAGIC:  # NumPy would take it for a pickle
        what = "is empty" if not head else f"starts with {head!r}"
        raise ValueError(f"'{path}' is not a NumPy .npz archive (it {what}; an .npz file is a zip archive written "
                         "by numpy.savez(path, x_train=..., y_train=...))")
    try:
        data = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as err:
        raise ValueError(f"cannot read '{path}' as a NumPy .npz file: {err}") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"'{path}' holds a single .npy array, not an .npz archive of named arrays; "
                         "write it with numpy.savez(path, x_train=..., y_train=...)")
    arrays = {}
    with data:
        for key in data.files:
            try:
                arrays[key] = data[key]
            except _NPZ_READ_ERRORS as err:
                raise ValueError(f"{path}: cannot read array '{key}' ({err}); the file is truncated, corrupt "
                                 "or holds Python objects: write it again with numeric arrays") from err
    return arrays


def _class_count(arrays: dict[str, np.ndarray], y_train: np.ndarray, y_test: np.ndarray | None,
                 path: str) -> int:
    """The number of classes: the file's ``num_classes``, else the largest training label plus one; every
    label must lie below it."""
    if "num_classes" in arrays:
        declared = arrays["num_classes"]
        if declared.shape != () or not np.issubdtype(declared.dtype, np.integer):
            raise ValueError(f"{path}: 'num_classes' must be one integer, got {declared!r}")
        num_classes = int(declared)
        source, fix = f"num_classes={num_classes} in the file", "fix the labels or 'num_classes'"
    else:
        num_classes = int(y_train.max()) + 1
        source = f"'y_train' (largest label {num_classes - 1})"
        fix = "fix the labels, or store the number of classes as 'num_classes' in the file"
        present = len(np.unique(y_train))
        if num_classes - present > present:  # e.g. labels 0 and 10**9: a model with 10**9 outputs
            raise ValueError(f"{path}: {source} implies {num_classes} classes, but only {present} of them occur in "
                             "'y_train'; number the classes 0..K-1, or store 'num_classes' in the file if that "
                             "many is right")
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        bad = 0 if y is None else int(np.count_nonzero(y >= num_classes))
        if bad:
            raise ValueError(f"{path}: '{key}' has {bad} label(s) >= {num_classes} (largest {int(y.max())}), outside "
                             f"the classes 0..{num_classes - 1} set by {source}; {fix}")
    if num_classes < 2:
        raise ValueError(f"{path}: {source} gives {num_classes} class; classification needs at least 2")
    return num_classes


def _load_npz(path: str) -> _ArraySource:
    arrays = _read_npz(path)
    missing = [key for key in ("x_train", "y_train") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: the .npz file needs arrays 'x_train' and 'y_train' "
                         f"(and optionally 'x_test', 'y_test'); missing {missing}, found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: 'x_test' and 'y_test' must be given together")
    x_train = _images_to_nchw(arrays["x_train"], "x_train", path)
    _check_finite(x_train, "x_train", path)
    y_train = _labels(arrays["y_train"], "y_train", path, len(x_train))
    if len(x_train) < 2:
        raise ValueError(f"{path}: 'x_train' needs at least 2 images, got {len(x_train)}")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _images_to_nchw(arrays["x_test"], "x_test", path)
        _check_finite(x_test, "x_test", path)
        y_test = _labels(arrays["y_test"], "y_test", path, len(x_test))
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(f"{path}: test images have shape {x_test.shape[1:]} (C, H, W) but training "
                             f"images {x_train.shape[1:]}")
        if x_test.dtype != x_train.dtype:
            raise ValueError(f"{path}: 'x_train' ({x_train.dtype}) and 'x_test' ({x_test.dtype}) must share "
                             "one dtype so that both get the same scaling")
    return _ArraySource(x_train, y_train, x_test, y_test, _class_count(arrays, y_train, y_test, path))


def _load_digits() -> _ArraySource:
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(_DIGITS_TEST_SEED).permutation(len(x))
    n_test = int(round(DIGITS_TEST_FRACTION * len(x)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return _ArraySource(x[train], y[train], x[test], y[test], 10)


def _load_cifar(name: str, root: str, download: bool) -> _ArraySource:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    parts = {}
    for train in (True, False):
        try:
            parts[train] = cls(root=root, train=train, download=download)
        except RuntimeError as err:
            raise ValueError(
                f"{name} was not found under '{root}' ({err}). Pass download=True (CLI: --download) to fetch it "
                "from the internet, or point root at an existing copy, or use the 'npz' or 'imagefolder' "
                "data sets with local files") from err
        except OSError as err:
            raise ValueError(f"downloading {name} into '{root}' failed ({err}); without internet access use "
                             "the 'npz' or 'imagefolder' data sets with local files") from err
    x_train = np.ascontiguousarray(parts[True].data.transpose(0, 3, 1, 2))
    x_test = np.ascontiguousarray(parts[False].data.transpose(0, 3, 1, 2))
    return _ArraySource(x_train, np.asarray(parts[True].targets, dtype=np.int64),
                        x_test, np.asarray(parts[False].targets, dtype=np.int64), len(parts[True].classes))


def _check_image_headers(folders, path: str) -> None:
    """Open every file of the ImageFolder trees (header only, no pixel decoding) and refuse non-images."""
    bad = []
    for folder in folders:
        for file, _ in folder.samples:
            try:
                with Image.open(file):
                    pass
            except _IMAGE_ERRORS as err:
                bad.append((file, err))
    if bad:
        raise ValueError(f"image folder '{path}': {len(bad)} file(s) are not readable images, the first "
                         f"'{bad[0][0]}' ({bad[0][1]}); remove or replace them")


def _load_imagefolder(path: str) -> _FolderSource:
    from torchvision.datasets import ImageFolder
    root = Path(path)
    test_dir = next((root / sub for sub in ("test", "val") if (root / sub).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir is not None else root
    try:
        train = ImageFolder(str(train_dir))
        test = ImageFolder(str(test_dir)) if train_dir != root else None
    except (FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"'{path}' is not an ImageFolder tree (<class>/<image> files): {err}") from err
    _check_image_headers([train] if test is None else [train, test], path)
    if test is not None and test.classes != train.classes:
        raise ValueError(f"'{path}': the classes of '{test_dir.name}/' {test.classes} differ from those of "
                         f"'train/' {train.classes}")
    if len(train.classes) < 2:
        raise ValueError(f"image folder '{train_dir}' has {len(train.classes)} class sub-directory {train.classes}; "
                         "classification needs at least 2 (one sub-directory of images per class)")
    if len(train) < 2:
        raise ValueError(f"'{train_dir}' needs at least 2 training images, found {len(train)}")
    return _FolderSource(train, test)


@functools.lru_cache(maxsize=4)
def _load_source(name: str, path: str | None, root: str | None, download: bool):
    if name == "digits":
        return _load_digits()
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, download)
    if name == "npz":
        return _load_npz(path)
    return _load_imagefolder(path)


def _check_arguments(name, path, root, download) -> tuple[str, str | None, str | None]:
    if not isinstance(name, str) or name.lower() not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    name = name.lower()
    if name in ("npz", "imagefolder"):
        if path is None:
            what = "an .npz file" if name == "npz" else "a directory"
            raise ValueError(f"data set '{name}' needs path to {what} (path= in Python, --data-path on the "
                             "command line, data_path in a YAML config)")
        path = str(Path(path).expanduser().resolve())
        if name == "npz" and Path(path).is_dir():
            raise ValueError(f"npz path '{path}' is a directory; give the .npz file (or use the 'imagefolder' "
                             "data set for a directory of images)")
        if name == "npz" and not Path(path).is_file():
            raise ValueError(f"npz file '{path}' does not exist")
        if name == "imagefolder" and not Path(path).is_dir():
            raise ValueError(f"image folder '{path}' does not exist or is not a directory")
    elif path is not None:
        raise ValueError(f"path is only used by the 'npz' and 'imagefolder' data sets, not by '{name}'")
    if name in ("cifar10", "cifar100"):
        root = str(Path(root or DEFAULT_DATA_ROOT).expanduser().resolve())
    elif root is not None:
        raise ValueError(f"root is only used by the 'cifar10' and 'cifar100' data sets, not by '{name}'")
    elif download:
        raise ValueError(f"download is only possible for 'cifar10' and 'cifar100', not for '{name}'")
    return name, path, root


# ---------------------------------------------------------------------------------------------
# the dataset class handed to DataLoaders

@nni.trace
class SplitDataset(Dataset):
    """One part (``"train"``, ``"val"`` or ``"test"``) of a data set, normalised, optionally augmented.

    Built by :func:`build_datasets`; the arguments are plain values so that ``nni.dump`` stores them
    instead of the images, and the part is rebuilt (same indices, same statistics) wherever it is loaded.

    Parameters
    ----------
    name
        Source name, one of :data:`DATASET_NAMES`.
    part
        ``"train"`` or ``"val"`` (the seeded split of the training data) or ``"test"``.
    path, root, download
        Location of the source (see :func:`build_datasets`); ``path``/``root`` must be absolute.
    seed, val_fraction, limit
        Split parameters (see :func:`split_indices`); ignored for ``"test"``.
    augment
        Apply the CIFAR augmentation; only honoured for ``part="train"`` and 32x32 RGB images.
    mean, std
        Per-channel normalisation statistics.

    Attributes
    ----------
    indices
        Indices into the source's training (or test) images that this part uses.
    """

    def __init__(self, name: str, part: str, *, path: str | None = None, root: str | None = None,
                 download: bool = False, seed: int = 0, val_fraction: float = 0.5, limit: int | None = None,
                 augment: bool = False, mean: Sequence[float], std: Sequence[float]):
        if part not in _PARTS:
            raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
        name, path, root = _check_arguments(name, path, root, download)
        self.name, self.part = name, part
        self.source = _load_source(name, path, root, bool(download))
        if part == "test":
            if self.source.size("test") == 0:
                raise ValueError(f"data set '{name}' has no test part")
            self.indices = np.arange(self.source.size("test"))
        else:
            train, val = split_indices(self.source.size("train"), seed, val_fraction, limit)
            self.indices = train if part == "train" else val
        channels = self.source.input_shape[0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per channel), got {list(mean)}, {list(std)}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) if s > 0 else 1.0 for s in std]
        self.augment = bool(augment) and part == "train" and tuple(self.source.input_shape) == (3, 32, 32)
        self.transform = self._make_transform()

    def _make_transform(self):
        from torchvision import transforms
        steps = []
        if self.augment:
            steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        steps.append(transforms.Normalize(self.mean, self.std))
        return transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source.item("test" if self.part == "test" else "train", int(self.indices[index]))
        return self.transform(image), label


# ---------------------------------------------------------------------------------------------
# entry point

def build_datasets(name: str = "digits", *, path: str | None = None, root: str | None = None,
                   download: bool = False, seed: int = 0, val_fraction: float = 0.5, augment: bool = True,
                   limit: int | None = None) -> DataSplits:
    """Build the train/val(/test) parts of an image-classification data set for NAS search.

    Parameters
    ----------
    name
        ``"digits"`` (default), ``"cifar10"``, ``"cifar100"``, ``"imagefolder"`` or ``"npz"``.
    path
        The ``.npz`` file or the ImageFolder directory (only for ``"npz"``/``"imagefolder"``).
    root
        Directory of the torchvision CIFAR files (only for CIFAR; default ``~/.cache/nni_plugins/data``).
    download
        Allow torchvision to download CIFAR into ``root`` (only for CIFAR). Off by default: nothing is
        fetched unless asked.
    seed
        Seed of the train/val split (and of the ``limit`` subset).
    val_fraction
        Fraction of the (limited) training images that forms ``val``; strictly between 0 and 1.
    augment
        Standard CIFAR augmentation on ``train`` for 32x32 RGB images.
    limit
        Use this many training images (drawn before the split), for quick runs; at most the number of
        training images the data set has.

    Returns
    -------
    DataSplits

    Raises
    ------
    ValueError
        On an unknown name, a missing or unreadable path, CIFAR files missing without ``download``,
        an ``.npz`` without ``x_train``/``y_train`` or with mismatched lengths, bad data (see "Checks at
        load" in the module docstring), a bad ``val_fraction`` or ``limit`` (also one above the number of
        training images), or an argument that the chosen source does not use.
    """
    name, path, root = _check_arguments(name, path, root, download)
    source = _load_source(name, path, root, bool(download))
    size = source.size("train")
    if isinstance(limit, (int, np.integer)) and not isinstance(limit, bool) and limit > size:
        raise ValueError(f"limit is {limit}, but data set '{name}'{'' if path is None else f' ({path})'} has "
                         f"{size} training images; use at most {size}, or leave limit out to use them all")
    train_idx, val_idx = split_indices(size, seed, val_fraction, limit)
    if name == "cifar10":
        mean, std = list(CIFAR10_MEAN), list(CIFAR10_STD)
    elif name == "cifar100":
        mean, std = list(CIFAR100_MEAN), list(CIFAR100_STD)
    else:
        mean, std = source.stats(np.concatenate([train_idx, val_idx]))
    common = dict(path=path, root=root, download=bool(download), seed=int(seed), val_fraction=float(val_fraction),
                  limit=None if limit is None else int(limit), mean=mean, std=std)
    train = SplitDataset(name, "train", augment=augment, **common)
    val = SplitDataset(name, "val", augment=False, **common)
    test = SplitDataset(name, "test", augment=False, **common) if source.size("test") else None
    return DataSplits(train=train, val=val, test=test, num_classes=source.num_classes,
                      input_shape=tuple(source.input_shape), name=name)

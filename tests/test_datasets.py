"""Tests of nni_plugins.datasets: every source, the seeded split, normalisation, augmentation, errors."""
from __future__ import annotations

from pathlib import Path

import nni
import numpy as np
import pytest
import torch

from nni_plugins.datasets import (CIFAR10_MEAN, CIFAR10_STD, DataSplits, SplitDataset, build_datasets,
                                  split_indices)

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


def _stack(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


# --------------------------------------------------------------------------------------- digits

def test_digits_default_parts_shapes_and_normalisation():
    from sklearn.datasets import load_digits
    splits = build_datasets(augment=False)
    assert isinstance(splits, DataSplits) and splits.name == "digits"
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8)
    n = len(load_digits().target)
    assert len(splits.test) == round(0.2 * n)
    assert len(splits.train) + len(splits.val) + len(splits.test) == n
    assert abs(len(splits.train) - len(splits.val)) <= 1  # val_fraction 0.5
    x, y = splits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    # normalised with the training pool's own statistics: mean 0, std 1 over train + val
    pool = torch.cat([_stack(splits.train), _stack(splits.val)])
    assert abs(pool.mean().item()) < 1e-5
    assert abs(pool.std(unbiased=False).item() - 1) < 1e-5
    # the statistics are those of the raw [0, 1] pixels
    raw = pool * splits.train.std[0] + splits.train.mean[0]
    assert raw.min().item() >= -1e-6 and raw.max().item() <= 1 + 1e-6
    # the held-out test part is the same for every seed
    other = build_datasets(seed=3)
    assert np.array_equal(other.test.indices, splits.test.indices)


def test_split_is_deterministic_disjoint_and_seeded():
    a, b = build_datasets(seed=1), build_datasets(seed=1)
    assert np.array_equal(a.train.indices, b.train.indices) and np.array_equal(a.val.indices, b.val.indices)
    c = build_datasets(seed=2)
    assert not np.array_equal(a.train.indices, c.train.indices)
    assert set(a.train.indices).isdisjoint(a.val.indices)
    n = len(a.train) + len(a.val)
    assert sorted(np.concatenate([a.train.indices, a.val.indices])) == list(range(n))

    train, val = split_indices(100, seed=0, val_fraction=0.3)
    assert len(val) == 30 and len(train) == 70 and set(train).isdisjoint(val)
    train, val = split_indices(1000, seed=5, val_fraction=0.5, limit=200)
    assert len(train) + len(val) == 200 and len(val) == 100
    limited = build_datasets(limit=100, seed=4)
    assert len(limited.train) == 50 and len(limited.val) == 50
    assert len(limited.test) == len(a.test)  # limit caps training images only


def test_dataset_dump_is_small_and_round_trips():
    splits = build_datasets(limit=300, seed=7)
    dumped = nni.dump(splits.val)
    assert len(dumped) < 1000 and "SplitDataset" in dumped
    loaded = nni.load(dumped)
    assert isinstance(loaded, SplitDataset)
    assert np.array_equal(loaded.indices, splits.val.indices)
    assert torch.equal(loaded[3][0], splits.val[3][0]) and loaded[3][1] == splits.val[3][1]


# --------------------------------------------------------------------------------------- npz

@pytest.mark.skipif(not SUBSET.is_file(), reason="shared CIFAR-10 subset not available")
def test_npz_cifar_subset_augments_train_only():
    splits = build_datasets("npz", path=str(SUBSET), limit=400, seed=0)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert len(splits.train) == 200 and len(splits.val) == 200 and len(splits.test) == 1017
    # per-channel statistics of the 400 training images in use, close to CIFAR-10's standard ones
    with np.load(SUBSET) as data:
        pool = data["x_train"][np.concatenate([splits.train.indices, splits.val.indices])] / 255.0
    assert np.allclose(splits.train.mean, pool.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(splits.train.std, pool.std(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(splits.train.mean, CIFAR10_MEAN, atol=0.03)
    assert np.allclose(splits.train.std, CIFAR10_STD, atol=0.03)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    torch.manual_seed(0)
    draws = [splits.train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random crop / flip
    assert torch.equal(splits.val[0][0], splits.val[0][0])
    assert torch.equal(splits.test[5][0], splits.test[5][0])
    no_aug = build_datasets("npz", path=str(SUBSET), limit=400, seed=0, augment=False)
    assert not no_aug.train.augment
    assert torch.equal(no_aug.train[0][0], no_aug.train[0][0])


def test_npz_layouts_nhwc_nchw_float_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 3, 6, 5), dtype=np.uint8)
    y = np.arange(20) % 4
    nchw = build_datasets("npz", path=_write_npz(tmp_path / "nchw.npz", x_train=x, y_train=y), augment=False)
    nhwc = build_datasets("npz", path=_write_npz(tmp_path / "nhwc.npz", x_train=x.transpose(0, 2, 3, 1),
                                                 y_train=y), augment=False)
    assert nchw.input_shape == nhwc.input_shape == (3, 6, 5)
    assert nchw.num_classes == 4 and nchw.test is None
    assert torch.equal(_stack(nchw.train), _stack(nhwc.train))
    # float input is used unscaled, so float x/255 gives the same normalised images as uint8 x
    as_float = build_datasets("npz", path=_write_npz(tmp_path / "f.npz", x_train=x.astype(np.float32) / 255,
                                                     y_train=y.astype(np.float64)), augment=False)
    assert torch.allclose(_stack(as_float.train), _stack(nchw.train), atol=1e-4)
    # a class that only the test part has needs the number of classes declared in the file
    gray = build_datasets("npz", path=_write_npz(tmp_path / "g.npz", x_train=x[:, 0], y_train=y,
                                                x_test=x[:4, 0], y_test=np.array([0, 1, 2, 5]), num_classes=6))
    assert gray.input_shape == (1, 6, 5) and len(gray.test) == 4 and gray.num_classes == 6


# --------------------------------------------------------------------------------------- imagefolder

def _png_tree(root: Path, classes=("cat", "dog"), per_class=6, size=(32, 32), odd_size=None):
    from PIL import Image
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = odd_size if (odd_size and i == per_class - 1) else size
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_imagefolder_with_train_and_val_dirs(tmp_path):
    _png_tree(tmp_path / "train", per_class=6)
    _png_tree(tmp_path / "val", per_class=2)
    splits = build_datasets("imagefolder", path=str(tmp_path))
    assert splits.num_classes == 2 and splits.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.val) == 12 and len(splits.test) == 4
    assert splits.train.augment and not splits.val.augment
    x, y = splits.test[3]
    assert x.shape == (3, 32, 32) and y == 1


def test_imagefolder_flat_tree_resizes_and_has_no_test(tmp_path):
    _png_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=3, size=(10, 12), odd_size=(7, 7))
    splits = build_datasets("imagefolder", path=str(tmp_path / "imgs"), val_fraction=1 / 3, augment=False)
    assert splits.test is None and splits.num_classes == 3
    assert splits.input_shape == (3, 12, 10)  # from the first image; the 7x7 ones are resized
    images = torch.cat([_stack(splits.train), _stack(splits.val)])
    assert images.shape[1:] == splits.input_shape and len(images) == 9
    assert abs(images.mean().item()) < 0.05  # normalised with the folder's own statistics


def test_imagefolder_mismatched_classes(tmp_path):
    _png_tree(tmp_path / "train", classes=("a", "b"), per_class=2)
    _png_tree(tmp_path / "test", classes=("a", "z"), per_class=1)
    with pytest.raises(ValueError, match="classes"):
        build_datasets("imagefolder", path=str(tmp_path))


# --------------------------------------------------------------------------------------- cifar

def test_cifar10_offline_without_download_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="download") as info:
        build_datasets("cifar10", root=str(tmp_path / "cifar"))
    assert "npz" in str(info.value) and "imagefolder" in str(info.value)
    assert not (tmp_path / "cifar").exists() or not any((tmp_path / "cifar").iterdir())


# --------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(name="mnist"), "unknown data set"),
    (dict(name="npz"), "needs path"),
    (dict(name="imagefolder"), "needs path"),
    (dict(name="npz", path="/nonexistent/file.npz"), "does not exist"),
    (dict(name="imagefolder", path="/nonexistent/dir"), "does not exist"),
    (dict(name="digits", path="x.npz"), "path is only used"),
    (dict(name="digits", root="/tmp"), "root is only used"),
    (dict(name="digits", download=True), "download is only possible"),
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.2), "val_fraction"),
    (dict(val_fraction="half"), "val_fraction"),
    (dict(limit=1), "limit"),
    (dict(limit=2.5), "limit"),
    (dict(seed=-1), "seed"),
    (dict(limit=3, val_fraction=0.1), "empty"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_datasets(**kwargs)


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8)), "x_train' and 'y_train"),
    (dict(images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.zeros(4, int)), "x_train' and 'y_train"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.zeros(5, int)), "5 labels but the images have 4"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.array([0, 1, -1, 0])), "negative"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.array([0.5, 1, 1, 0])), "integer"),
    (dict(x_train=np.zeros((4, 8, 8, 8), np.uint8), y_train=np.zeros(4, int)), "channel axis"),
    (dict(x_train=np.zeros((4, 8), np.uint8), y_train=np.zeros(4, int)), "shape"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.zeros(4, int),
          x_test=np.zeros((2, 3, 8, 8), np.uint8)), "together"),
    (dict(x_train=np.zeros((4, 3, 8, 8), np.uint8), y_train=np.zeros(4, int),
          x_test=np.zeros((2, 3, 4, 4), np.uint8), y_test=np.zeros(2, int)), "shape"),
])
def test_bad_npz_raises_value_error(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        build_datasets("npz", path=_write_npz(tmp_path / "bad.npz", **arrays))


def test_unreadable_npz_and_empty_folder(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="npz"):
        build_datasets("npz", path=str(tmp_path / "junk.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="ImageFolder"):
        build_datasets("imagefolder", path=str(tmp_path / "empty"))

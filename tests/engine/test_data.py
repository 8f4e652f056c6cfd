"""Datasets in the real layouts, their bad-input errors, and the segmentation transforms (mmseg semantics)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from engine.synthetic import make_ade, make_imagenet
from ssmzoo.engine.datasets import ADE20KDataset, ImageNetFolder, SegmentationFolder
from ssmzoo.engine.transforms import (
    LoadAnnotations,
    PhotoMetricDistortion,
    RandomCrop,
    RandomResize,
    rescale_size,
)

TRAIN = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
         dict(type="RandomResize", scale=(128, 32), ratio_range=(0.5, 2.0)),
         dict(type="RandomCrop", crop_size=(32, 32), cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
         dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")]
TEST = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(128, 32)), dict(type="LoadAnnotations"),
        dict(type="PackSegInputs")]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return make_imagenet(tmp_path_factory.mktemp("imagenet"), n_train=2, n_val=1, size=24)


@pytest.fixture()
def ade(tmp_path):
    return make_ade(tmp_path / "ADEChallengeData2016", n_train=3, n_val=2, size=(48, 32))


def test_imagenet_folder(imagenet):
    ds = ImageNetFolder(str(imagenet), "val", transform=dict(input_size=24, crop_pct=1.0))
    assert len(ds) == 4 and ds.metainfo["classes"] == tuple(f"n{k:08d}" for k in range(4))
    item = ds[3]
    assert item["inputs"].shape == (3, 24, 24) and item["data_samples"] == 3


def test_randaugment_posterize_to_zero_bits_gives_black(imagenet):
    """m9-mstd0.5 reaches magnitude 10 (0 bits kept), which Pillow 13 refuses; the dataset's transform copes."""
    ds = ImageNetFolder(str(imagenet), "val", transform=dict(input_size=24, is_training=True,
                                                             auto_augment="rand-m9-mstd0.5-inc1"))
    randaug = next(t for t in ds.transform.transforms if hasattr(t, "ops"))
    posterize = next(op for op in randaug.ops if op.name == "PosterizeIncreasing")
    posterize.magnitude, posterize.magnitude_std, posterize.prob = 10, 0, 1.0
    out = posterize(Image.new("RGB", (4, 4), (200, 100, 50)))
    assert np.asarray(out).max() == 0
    randaug.ops, randaug.num_layers = [posterize], 1
    assert ds[0]["inputs"].shape == (3, 24, 24)


def test_imagenet_folder_bad_layouts(imagenet, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none"))):
        ImageNetFolder(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="split 'valid'.*holds \\['train', 'val'\\]"):
        ImageNetFolder(str(imagenet), "valid")
    empty = tmp_path / "root"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "train" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(empty / "train" / "dog" / "a.JPEG")
    with pytest.raises(ValueError, match=re.escape(f"class folder {empty / 'train' / 'cat'} has no images")):
        ImageNetFolder(str(empty))
    (empty / "val" / "bird").mkdir(parents=True)
    with pytest.raises(ValueError, match="\\['bird'\\] are not among the 2 classes"):
        ImageNetFolder(str(empty), "val")


def test_ade20k_dataset_reduces_zero_label(ade):
    ds = ADE20KDataset(str(ade), TEST, split="validation")
    assert len(ds.metainfo["classes"]) == 150
    item = ds[0]
    raw = np.array(Image.open(ds.samples[0][1]))
    label = item["data_samples"]["gt_sem_seg"].numpy()
    assert label.shape == raw.shape == item["data_samples"]["ori_shape"]  # labels stay at the original size
    np.testing.assert_array_equal(label[raw == 0], 255)
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
    assert item["inputs"].shape == (3, 32, 48) and item["inputs"].dtype == torch.uint8  # (128, 32) bound


def test_ade20k_train_pipeline(ade):
    np.random.seed(0)
    ds = ADE20KDataset(str(ade), TRAIN)
    for i in range(len(ds)):
        item = ds[i]
        h, w = item["inputs"].shape[-2:]
        assert h <= 32 and w <= 32 and item["data_samples"]["gt_sem_seg"].shape == (h, w)
        assert set(item["data_samples"]["gt_sem_seg"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_segmentation_bad_layouts(ade, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(ade / "annotations" / "testing"))):
        SegmentationFolder(str(ade), "images/training", "annotations/testing", TEST, classes=("a",))
    stray = ade / "images" / "training" / "ADE_extra.jpg"
    Image.new("RGB", (48, 32)).save(stray)
    with pytest.raises(FileNotFoundError, match=re.escape(f"image {stray} has no annotation")):
        ADE20KDataset(str(ade), TEST)
    Image.new("L", (40, 32)).save(ade / "annotations" / "training" / "ADE_extra.png")
    with pytest.raises(ValueError, match=re.escape("ADE_extra.png is 40x32 (WxH) but its image")):
        ADE20KDataset(str(ade), TEST)
    # without the up-front check, LoadAnnotations still refuses the pair, naming both files
    ds = ADE20KDataset(str(ade), TEST, check_sizes=False)
    with pytest.raises(ValueError, match="ADE_extra.png is 40x32"):
        ds[[p for p, _ in ds.samples].index(str(stray))]


def test_rescale_size_is_mmcv_imrescale():
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # ADE's typical 4:3 image
    assert rescale_size(256, 1280, (2048, 512)) == (410, 2048)  # long side bound wins
    np.random.seed(1)
    results = RandomResize((2048, 512), (0.5, 2.0))({"img": np.zeros((375, 500, 3), np.uint8)})
    np.random.seed(1)
    ratio = np.random.random_sample() * 1.5 + 0.5
    assert results["img_shape"] == rescale_size(375, 500, (int(2048 * ratio), int(512 * ratio)))


def test_reduce_zero_label(tmp_path):
    Image.fromarray(np.array([[0, 1, 150]], np.uint8)).save(tmp_path / "a.png")
    out = LoadAnnotations(reduce_zero_label=True)({"seg_map_path": tmp_path / "a.png"})
    np.testing.assert_array_equal(out["gt_seg_map"], [[255, 0, 149]])


def test_random_crop_cat_max_ratio():
    label = np.zeros((64, 64), np.uint8)
    label[:, 32:] = 1  # a 32-column crop passes (no class >= 75 %) when it starts in columns 9..23
    np.random.seed(0)
    for _ in range(20):
        out = RandomCrop((32, 32), cat_max_ratio=0.75)({"img": np.zeros((64, 64, 3), np.uint8),
                                                        "gt_seg_map": label.copy()})
        counts = np.bincount(out["gt_seg_map"].ravel(), minlength=2)
        assert counts.max() / counts.sum() < 0.75


def test_photometric_distortion_keeps_shape_and_range():
    np.random.seed(0)
    img = np.random.randint(0, 256, (16, 16, 3), np.uint8)
    outs = [PhotoMetricDistortion()({"img": img.copy()})["img"] for _ in range(8)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)

"""Segmentation data transforms (mmseg 1.x / mmcv 2.x semantics), registered in mmengine's ``TRANSFORMS``.

Each transform maps a results dict to a results dict. Keys: ``img`` (H, W, 3) uint8 **RGB** numpy array,
``gt_seg_map`` (H, W) uint8, ``img_path``, ``seg_map_path``, ``ori_shape`` / ``img_shape`` (h, w), ``flip``,
``reduce_zero_label``. mmcv reads images as BGR and mmseg's data preprocessor flips them to RGB; here they are RGB
from the start, and the photometric distortion converts RGB<->HSV instead of BGR<->HSV, which yields the same
hue / saturation values. Randomness comes from numpy's global generator, as in mmcv: dataloader workers are seeded
by mmengine, the main process by :class:`ssmzoo.engine.loops.SeededIterBasedTrainLoop`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.registry import TRANSFORMS
from PIL import Image

__all__ = [
    "LoadAnnotations",
    "LoadImageFromFile",
    "PackSegInputs",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "read_label_map",
    "rescale_size",
]


def read_label_map(path: str | Path) -> np.ndarray:
    """A label PNG as (H, W) uint8 (mmseg reads them with Pillow, 'unchanged'): palette indices stay indices."""
    with Image.open(path) as im:
        label = np.array(im)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must have one channel, got an image of shape {label.shape}")
    return label.astype(np.uint8, copy=False)


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``img_path`` with OpenCV as RGB uint8; set ``ori_shape`` and ``img_shape``."""

    def __call__(self, results: dict) -> dict:
        path = results["img_path"]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {path} (missing or not an image OpenCV decodes)")
        results["img"] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        results["ori_shape"] = results["img_shape"] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class LoadAnnotations:
    """Read ``seg_map_path`` into ``gt_seg_map``; with ``reduce_zero_label`` map 0 -> 255 and k -> k - 1.

    ADE20K's label 0 ("other") becomes the ignore index 255 and classes 1..150 become 0..149 (mmseg's
    ``LoadAnnotations``). The map must have the size the image had when read (``ori_shape``).
    """

    def __init__(self, reduce_zero_label: bool | None = None) -> None:
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: dict) -> dict:
        label = read_label_map(results["seg_map_path"])
        ori = tuple(results.get("ori_shape", label.shape))
        if label.shape != ori:
            raise ValueError(f"annotation {results['seg_map_path']} is {label.shape[1]}x{label.shape[0]} (WxH) but "
                             f"its image {results.get('img_path')} is {ori[1]}x{ori[0]}")
        reduce = self.reduce_zero_label if self.reduce_zero_label is not None else results.get("reduce_zero_label")
        if reduce:
            label = label.copy()
            label[label == 0] = 255
            label = label - 1  # uint8: 255 -> 254
            label[label == 254] = 255
        results["gt_seg_map"] = label
        return results


def rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` for a (long, short) bound: the largest (h', w') of the same aspect ratio whose long
    side is <= max(scale) and short side <= min(scale), rounded half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _resize(results: dict, size_hw: tuple[int, int]) -> dict:
    h, w = size_hw
    results["img"] = cv2.resize(results["img"], (w, h), interpolation=cv2.INTER_LINEAR)
    if "gt_seg_map" in results:
        results["gt_seg_map"] = cv2.resize(results["gt_seg_map"], (w, h), interpolation=cv2.INTER_NEAREST)
    results["img_shape"] = (h, w)
    return results


@TRANSFORMS.register_module()
class Resize:
    """Resize image (bilinear) and label (nearest) to ``scale`` = (w, h); with ``keep_ratio`` to the largest size
    of the same aspect ratio within the (long, short) bound ``scale`` (mmcv ``imrescale``)."""

    def __init__(self, scale: Sequence[int], keep_ratio: bool = True) -> None:
        self.scale = tuple(scale)
        self.keep_ratio = keep_ratio

    def __call__(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        size = rescale_size(h, w, self.scale) if self.keep_ratio else (self.scale[1], self.scale[0])
        return _resize(results, size)


@TRANSFORMS.register_module()
class RandomResize:
    """Resize to ``scale`` times a ratio drawn uniformly from ``ratio_range`` (mmcv ``RandomResize``): the bound
    becomes (int(scale[0] * r), int(scale[1] * r)), then :class:`Resize` with ``keep_ratio``."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0),
                 keep_ratio: bool = True) -> None:
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.keep_ratio = keep_ratio

    def __call__(self, results: dict) -> dict:
        lo, hi = self.ratio_range
        ratio = np.random.random_sample() * (hi - lo) + lo
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return Resize(scale, self.keep_ratio)(results)


@TRANSFORMS.register_module()
class RandomCrop:
    """Crop a random ``crop_size`` = (h, w) window (smaller images stay whole; the data preprocessor pads them).

    With ``cat_max_ratio`` < 1 the window is redrawn up to 10 times until no single class (``ignore_index``
    excluded) covers ``cat_max_ratio`` or more of it and at least two classes are present (mmseg's rule).
    """

    def __init__(self, crop_size: Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255) -> None:
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _bbox(self, h: int, w: int) -> tuple[int, int, int, int]:
        off_h = np.random.randint(0, max(h - self.crop_size[0], 0) + 1)
        off_w = np.random.randint(0, max(w - self.crop_size[1], 0) + 1)
        return off_h, off_h + self.crop_size[0], off_w, off_w + self.crop_size[1]

    def __call__(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        y1, y2, x1, x2 = self._bbox(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                labels, counts = np.unique(results["gt_seg_map"][y1:y2, x1:x2], return_counts=True)
                counts = counts[labels != self.ignore_index]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y1, y2, x1, x2 = self._bbox(h, w)
        results["img"] = results["img"][y1:y2, x1:x2]
        if "gt_seg_map" in results:
            results["gt_seg_map"] = results["gt_seg_map"][y1:y2, x1:x2]
        results["img_shape"] = results["img"].shape[:2]
        return results


@TRANSFORMS.register_module()
class RandomFlip:
    """Horizontal flip of image and label with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        results["flip"] = bool(np.random.rand() < self.prob)
        if results["flip"]:
            results["img"] = np.ascontiguousarray(results["img"][:, ::-1])
            if "gt_seg_map" in results:
                results["gt_seg_map"] = np.ascontiguousarray(results["gt_seg_map"][:, ::-1])
        return results


@TRANSFORMS.register_module()
class PhotoMetricDistortion:
    """mmseg's photometric distortion, each step applied with probability 1/2, in this order: brightness
    (+U(-32, 32)), contrast (x U(0.5, 1.5)) either here or last, saturation (x U(0.5, 1.5) on HSV's S), hue
    (+randint(-18, 18) on OpenCV's 0..179 hue), [contrast]. Values are clipped to 0..255 after each step."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return self._convert(img, alpha=np.random.uniform(*self.contrast_range))
        return img

    def __call__(self, results: dict) -> dict:
        img = results["img"]
        if np.random.randint(2):
            img = self._convert(img, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = np.random.randint(2) == 1
        if contrast_first:
            img = self._contrast(img)
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=np.random.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + np.random.randint(-self.hue_delta, self.hue_delta)) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first:
            img = self._contrast(img)
        results["img"] = img
        return results


@TRANSFORMS.register_module()
class PackSegInputs:
    """Results dict -> ``{"inputs": (3, H, W) uint8 tensor, "data_samples": dict}``; the sample dict holds
    ``gt_sem_seg`` (H, W) uint8 tensor (when loaded) and the ``meta_keys`` present."""

    def __init__(self, meta_keys: Sequence[str] = ("img_path", "seg_map_path", "ori_shape", "img_shape", "flip")):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        img = torch.from_numpy(np.ascontiguousarray(results["img"].transpose(2, 0, 1)))
        sample = {k: results[k] for k in self.meta_keys if k in results}
        if "gt_seg_map" in results:
            sample["gt_sem_seg"] = torch.from_numpy(np.ascontiguousarray(results["gt_seg_map"]))
        return {"inputs": img, "data_samples": sample}

"""Datasets over the real layouts, registered in mmengine's ``DATASETS``; the layout is checked when built.

- :class:`ImageNetFolder`: ``<data_root>/<split>/<class>/<image>`` (ImageNet ``train`` / ``val`` after the usual
  val re-foldering), timm's transforms; items ``{"inputs": (3, H, W) float, "data_samples": label}``.
- :class:`SegmentationFolder` / :class:`ADE20KDataset`: ``<data_root>/images/<split>/<name>.jpg`` with
  ``<data_root>/annotations/<split>/<name>.png`` (``ADEChallengeData2016``), a transform pipeline from
  :mod:`ssmzoo.engine.transforms`.

A missing folder, a class folder without images, an image without annotation or of another size than it: the
error names the path, before any training step.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmengine.dataset import Compose
from mmengine.registry import DATASETS
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torch.utils.data import Dataset

__all__ = ["ADE20K_CLASSES", "ADE20KDataset", "IMG_EXTENSIONS", "ImageNetFolder", "SegmentationFolder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# ADE20K's 150 scene-parsing classes in label order 1..150 (0..149 after reduce-zero-label), as in mmseg.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        parent = path.parent
        seen = sorted(p.name for p in parent.iterdir() if p.is_dir())[:10] if parent.is_dir() else None
        hint = f"; {parent} holds {seen}" if seen is not None else f"; {parent} does not exist either"
        raise FileNotFoundError(f"{what}: folder {path} not found{hint}")
    return path


def _images_in(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``folder`` (recursively, following links), sorted."""
    found = []
    for root, _, files in os.walk(folder, followlinks=True):
        found.extend(Path(root) / f for f in files if f.lower().endswith(tuple(extensions)))
    return sorted(found)


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's ``posterize`` with 0 bits giving the black image older Pillow returned: Pillow 13 refuses 0 bits, which
    RandAugment's increasing posterize asks for at magnitude 10 (``m9-mstd0.5`` draws it for ~2 % of the images)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(transform) -> None:
    """Point the posterize ops of timm's Rand/AutoAugment inside ``transform`` at :func:`_posterize`."""
    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", []))
        for sub_policy in getattr(t, "policy", []):
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


@DATASETS.register_module()
class ImageNetFolder(Dataset):
    """``<data_root>/<split>/<class>/<image>`` with timm's transforms.

    Class indices follow the sorted class folders of ``<data_root>/train`` when it exists (so a validation split
    is labelled like the training split), else of the split itself; ``classes`` overrides both.

    Args:
        data_root: dataset root (holding ``train`` / ``val``).
        split: sub-folder to read.
        transform: kwargs of ``timm.data.create_transform`` (input_size, is_training, auto_augment, re_prob,
            interpolation, crop_pct, mean, std ...).
        classes: class folder names in label order.
        extensions: image file extensions (case-insensitive).

    Raises:
        FileNotFoundError: ``data_root`` or the split folder is missing.
        ValueError: the split has no class folder, a class folder has no image, or a class is unknown.
    """

    def __init__(self, data_root: str, split: str = "train", transform: dict[str, Any] | None = None,
                 classes: Sequence[str] | None = None, extensions: Sequence[str] = IMG_EXTENSIONS) -> None:
        root = _require_dir(Path(data_root), "ImageNetFolder data_root")
        split_dir = _require_dir(root / split, f"ImageNetFolder split {split!r}")
        present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not present:
            raise ValueError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
        if classes is None:
            train_dir = root / "train"
            classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else present
        index = {name: i for i, name in enumerate(classes)}
        unknown = [c for c in present if c not in index]
        if unknown:
            raise ValueError(f"{split_dir}: class folders {unknown[:5]} are not among the {len(classes)} classes "
                             f"(taken from {root / 'train'} when it exists)")
        self.samples: list[tuple[str, int]] = []
        for name in present:
            files = _images_in(split_dir / name, extensions)
            if not files:
                raise ValueError(f"class folder {split_dir / name} has no images (extensions {tuple(extensions)})")
            self.samples.extend((str(f), index[name]) for f in files)
        self.metainfo = {"classes": tuple(classes)}
        self.transform = create_transform(**(transform or {}))
        _fix_posterize(self.transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        path, label = self.samples[idx]
        with Image.open(path) as im:
            img = im.convert("RGB")
        return {"inputs": self.transform(img), "data_samples": label}


@DATASETS.register_module()
class SegmentationFolder(Dataset):
    """Images and label maps in parallel folders: ``<data_root>/<img_dir>/<name><img_suffix>`` and
    ``<data_root>/<ann_dir>/<name><seg_map_suffix>``, read through ``pipeline``.

    Args:
        data_root: dataset root.
        img_dir, ann_dir: image / annotation folders relative to ``data_root``.
        pipeline: transform configs (see :mod:`ssmzoo.engine.transforms`).
        classes: class names in label order (after ``reduce_zero_label``).
        reduce_zero_label: label 0 is "unlabelled" (read by ``LoadAnnotations``).
        img_suffix, seg_map_suffix: file endings.
        check_sizes: compare every annotation's size with its image's when built (reads the file headers only).

    Raises:
        FileNotFoundError: a folder is missing, or an image has no annotation.
        ValueError: no image found, or an annotation's size differs from its image's.
    """

    def __init__(self, data_root: str, img_dir: str, ann_dir: str, pipeline: Sequence[dict | Any],
                 classes: Sequence[str], reduce_zero_label: bool = False, img_suffix: str = ".jpg",
                 seg_map_suffix: str = ".png", check_sizes: bool = True) -> None:
        name = type(self).__name__
        root = _require_dir(Path(data_root), f"{name} data_root")
        images = _require_dir(root / img_dir, f"{name} images")
        annotations = _require_dir(root / ann_dir, f"{name} annotations")
        img_files = sorted(images.rglob(f"*{img_suffix}"))
        if not img_files:
            raise ValueError(f"{images} has no '*{img_suffix}' images")
        self.samples = []
        for img in img_files:
            ann = annotations / img.relative_to(images).with_suffix(seg_map_suffix)
            if not ann.is_file():
                raise FileNotFoundError(f"image {img} has no annotation {ann}")
            if check_sizes:
                with Image.open(img) as a, Image.open(ann) as b:
                    if a.size != b.size:
                        raise ValueError(f"annotation {ann} is {b.size[0]}x{b.size[1]} (WxH) but its image {img} "
                                         f"is {a.size[0]}x{a.size[1]}")
            self.samples.append((str(img), str(ann)))
        self.reduce_zero_label = reduce_zero_label
        self.metainfo = {"classes": tuple(classes)}
        self.pipeline = Compose(list(pipeline))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        img, ann = self.samples[idx]
        return self.pipeline({"img_path": img, "seg_map_path": ann, "reduce_zero_label": self.reduce_zero_label})


@DATASETS.register_module()
class ADE20KDataset(SegmentationFolder):
    """ADE20K scene parsing (``ADEChallengeData2016``): 150 classes, label 0 ignored (reduce-zero-label).

    ``split`` is ``"training"`` (20,210 images) or ``"validation"`` (2,000).
    """

    def __init__(self, data_root: str, pipeline: Sequence[dict | Any], split: str = "training",
                 check_sizes: bool = True) -> None:
        super().__init__(data_root, f"images/{split}", f"annotations/{split}", pipeline, ADE20K_CLASSES,
                         reduce_zero_label=True, img_suffix=".jpg", seg_map_suffix=".png", check_sizes=check_sizes)

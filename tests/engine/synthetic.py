"""Tiny synthetic datasets written in the real layouts, learnable in a few hundred CPU iterations.

- ImageNet layout ``<root>/{train,val}/<class>/*.JPEG``: class k is a noisy image whose blobs have colour k.
- ADE20K layout ``<root>/{images,annotations}/{training,validation}``: JPEG images of noisy grey background
  (label 0, "unlabelled", ignored after reduce-zero-label) with rectangles of 4 classes (labels 1..4), each class
  its own colour; PNG label maps.
- wsj0-2mix layout ``<root>/{tr,cv,tt}/{mix,s1,s2}/*.wav`` (8 kHz): each source a harmonic tone of its own
  pitch with a random envelope, the mixture their sum.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 220], [230, 210, 40]], dtype=np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float = 25.0) -> np.ndarray:
    return rng.normal(0.0, sigma, size=(h, w, 3))


def make_imagenet(root: Path, n_train: int = 12, n_val: int = 6, size: int = 40, num_classes: int = 4,
                  seed: int = 0) -> Path:
    """Write the classification folder; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(num_classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.full((size, size, 3), 120.0) + _noise(rng, size, size)
                for _ in range(3):
                    r = int(rng.integers(5, 12))
                    y, x = (int(v) for v in rng.integers(r, size - r, 2))
                    img[y - r:y + r, x - r:x + r] = COLOURS[k] + _noise(rng, 2 * r, 2 * r, 15.0)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.JPEG",
                                                                            quality=95)
    return root


def make_ade(root: Path, n_train: int = 12, n_val: int = 4, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """Write the segmentation folder (images W x H = ``size``); returns ``root``."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((h, w, 3), 128.0) + _noise(rng, h, w)
            label = np.zeros((h, w), dtype=np.uint8)
            for k in rng.permutation(4):
                rh, rw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 5, w // 2))
                y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
                img[y:y + rh, x:x + rw] = COLOURS[k] + _noise(rng, rh, rw, 15.0)
                label[y:y + rh, x:x + rw] = k + 1
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / split / f"{name}.jpg",
                                                                        quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    return root


def make_wsj0mix(root: Path, counts: dict[str, int] | None = None, seconds: float = 1.0, sample_rate: int = 8000,
                 seed: int = 0) -> Path:
    """Write the separation folder; returns ``root``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for split, n in (counts or {"tr": 4, "cv": 2, "tt": 2}).items():
        for folder in ("mix", "s1", "s2"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sources = []
            for _ in range(2):
                f0 = rng.uniform(100, 400)
                wave = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 5))
                envelope = np.interp(t, np.linspace(0, seconds, 6), rng.uniform(0.2, 1.0, 6))
                sources.append(0.2 * wave * envelope)
            name = f"mix_{i:03d}.wav"
            for folder, wav in (("s1", sources[0]), ("s2", sources[1]), ("mix", sources[0] + sources[1])):
                sf.write(root / split / folder / name, wav.astype(np.float32), sample_rate, subtype="PCM_16")
    return root

"""Write a synthetic segmentation dataset in ADE20K's layout, for smoke runs of the UperNet configs without ADE20K.

    python tools/make_synthetic_ade.py data/synth_ade/ADEChallengeData2016 --train 2000 --val 200

Layout (what ``ADE20KDataset`` reads, reduce-zero-label)::

    <root>/images/{training,validation}/ADE_<split>_<i:08d>.jpg        RGB, W x H = --size
    <root>/annotations/{training,validation}/ADE_<split>_<i:08d>.png   uint8 labels: 0 background (ignored), 1..K
    <root>/chance.json                                                 validation class frequencies, chance scores

Each image is a noisy background of random grey level (label 0, ignored after reduce-zero-label) with 3 to 7
overlapping rectangles and ellipses of random size and position, each of a random class among ``--classes``
(K <= 8, ADE20K's first K classes after reduce-zero-label: wall, building, sky, ...). A class is a colour and a
texture: classes k and k + 4 share colour k % 4, the first solid, the second striped (period 6-12 px, random
angle), so half of the decisions need spatial context, not just the pixel's colour. Shapes are painted in random
order, so objects occlude each other.

chance.json gives, on the validation split, each class's share of the labelled pixels and two baselines computed
from them, in the metric's terms (%): a uniformly random prediction among the K present classes (aAcc 100 / K;
class IoU p / (1 + (K - 1) p) with p the class's share) and the best constant prediction (the most frequent class
everywhere). A model predicting any of the 150 ADE20K classes can only do worse than these by chance.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 220], [230, 210, 40]], dtype=np.float32)
MAX_CLASSES = 2 * len(COLOURS)


def _scene(seed: int, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), label uint8 (H, W)) pair, determined by ``seed``."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(70, 190) + rng.normal(0.0, 25.0, size=(height, width, 3))
    label = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(3, 8))):
        k = int(rng.integers(num_classes))
        h, w = (int(rng.integers(lo // 6, lo // 2)) for lo in (height, width))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if rng.random() < 0.5:
            mask = (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
        else:
            mask = ((yy - y - h / 2) / (h / 2)) ** 2 + ((xx - x - w / 2) / (w / 2)) ** 2 <= 1.0
        colour = COLOURS[k % len(COLOURS)] + rng.normal(0.0, 15.0, size=(int(mask.sum()), 3))
        if k >= len(COLOURS):  # striped: dark bands across the colour
            angle, period = rng.uniform(0, np.pi), rng.uniform(6, 12)
            phase = (xx[mask] * np.cos(angle) + yy[mask] * np.sin(angle)) / period
            colour *= np.where(phase % 1.0 < 0.5, 1.0, 0.35)[:, None]
        img[mask] = colour
        label[mask] = k + 1
    return np.clip(img, 0, 255).astype(np.uint8), label


def _write(job: tuple[Path, str, int, int, int, int, int]) -> np.ndarray:
    """Write one pair; returns its label histogram (bins 0..K)."""
    root, split, index, seed, width, height, num_classes = job
    img, label = _scene(seed, width, height, num_classes)
    name = f"ADE_{split}_{index:08d}"
    Image.fromarray(img).save(root / "images" / split / f"{name}.jpg", quality=95)
    Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    return np.bincount(label.reshape(-1), minlength=num_classes + 1)


def chance_scores(label_pixels: np.ndarray) -> dict:
    """Baselines (%) from the labelled-pixel counts of classes 1..K (index 0, the ignored background, dropped)."""
    p = label_pixels[1:] / label_pixels[1:].sum()
    k = len(p)
    return {
        "class_share": [round(float(v), 4) for v in p],
        "uniform_random": {"aAcc": round(100.0 / k, 2), "mIoU": round(float(np.mean(p / (1 + (k - 1) * p))) * 100, 2)},
        "best_constant": {"aAcc": round(float(p.max()) * 100, 2), "mIoU": round(float(p.max()) * 100 / k, 2)},
    }


def make_synthetic_ade(root: Path, n_train: int, n_val: int, size: tuple[int, int] = (683, 512),
                       num_classes: int = MAX_CLASSES, seed: int = 0, workers: int | None = None) -> dict:
    """Write the dataset under ``root``; returns (and writes to ``root/chance.json``) the validation baselines."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    width, height = size
    seeds = np.random.default_rng(seed).integers(2**63, size=n_train + n_val)
    jobs = {"training": [], "validation": []}
    for split, n, offset in (("training", n_train, 0), ("validation", n_val, n_train)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        jobs[split] = [(root, split, i, int(seeds[offset + i]), width, height, num_classes) for i in range(n)]
    if workers == 1:
        list(map(_write, jobs["training"]))
        val_pixels = sum(map(_write, jobs["validation"]))
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs["training"], chunksize=8))
            val_pixels = sum(pool.map(_write, jobs["validation"], chunksize=8))
    scores = chance_scores(val_pixels)
    (root / "chance.json").write_text(json.dumps(scores, indent=1))
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="dataset root (the ADEChallengeData2016 folder)")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--size", type=int, nargs=2, default=(683, 512), metavar=("W", "H"), help="image size")
    parser.add_argument("--classes", type=int, default=MAX_CLASSES, help=f"classes (1..{MAX_CLASSES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU; 1: no pool)")
    args = parser.parse_args(argv)
    scores = make_synthetic_ade(args.root, args.train, args.val, tuple(args.size), args.classes, args.seed,
                                args.workers)
    print(f"wrote {args.train} training and {args.val} validation images to {args.root}; validation baselines "
          f"(%): {json.dumps({k: v for k, v in scores.items() if k != 'class_share'})}")


if __name__ == "__main__":
    main()

"""tools/make_synthetic_ade.py: an ADE20K-layout folder that ADE20KDataset reads, and its chance baselines."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssmzoo.engine.datasets import ADE20KDataset

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("make_synthetic_ade", REPO / "tools" / "make_synthetic_ade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_the_ade20k_layout_with_chance_baselines(tmp_path):
    tool = _tool()
    root = tmp_path / "ADEChallengeData2016"
    tool.main([str(root), "--train", "5", "--val", "3", "--size", "96", "64", "--workers", "1"])
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    train, val = (ADE20KDataset(str(root), pipeline, split=s) for s in ("training", "validation"))
    assert (len(train), len(val)) == (5, 3)
    sample = val[0]
    assert sample["img"].shape == (64, 96, 3)
    labels = np.unique(np.array(Image.open(root / "annotations" / "validation" / "ADE_validation_00000000.png")))
    assert set(labels) <= set(range(9)) and len(labels) > 1
    scores = json.loads((root / "chance.json").read_text())
    assert scores["uniform_random"]["aAcc"] == 12.5 and sum(scores["class_share"]) == pytest.approx(1.0, abs=1e-3)
    # same seed, same dataset
    again = tmp_path / "again"
    tool.main([str(again), "--train", "5", "--val", "3", "--size", "96", "64", "--workers", "1"])
    for name in ("images/training/ADE_training_00000004.jpg", "annotations/validation/ADE_validation_00000002.png"):
        assert (root / name).read_bytes() == (again / name).read_bytes()


def test_chance_scores():
    scores = _tool().chance_scores(np.array([999, 50, 50]))  # background dropped; two equal classes
    assert scores["uniform_random"] == {"aAcc": 50.0, "mIoU": 33.33}  # IoU p / (1 + (K - 1) p) = 1/3
    assert scores["best_constant"] == {"aAcc": 50.0, "mIoU": 25.0}


def test_rejects_too_many_classes(tmp_path):
    with pytest.raises(ValueError, match="--classes"):
        _tool().make_synthetic_ade(tmp_path, 1, 1, num_classes=9)

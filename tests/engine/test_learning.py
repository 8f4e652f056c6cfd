"""Learning, not just running: the tiny CPU configs on synthetic datasets in the real layouts end far above chance.

Slow (a few CPU minutes): ``python -m pytest -m slow tests/engine/test_learning.py``.

Classification: 4 classes (chance 25 % top-1). Segmentation: 4 classes plus ignored background (a constant
prediction scores at most ~10 % mIoU here, random ones less).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import ssmzoo.engine  # noqa: F401
from engine.synthetic import make_ade, make_imagenet
from ssmzoo.engine.runner import set_data_root

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def _train(config: str, data_root: Path, work_dir: Path, iters: int, **options) -> dict:
    cfg = Config.fromfile(CONFIGS / config)
    cfg.merge_from_dict({"train_cfg.max_iters": iters, "train_cfg.val_interval": iters,
                         "default_hooks.checkpoint.interval": iters, "default_hooks.logger.interval": 10,
                         **options})
    cfg.param_scheduler[-1].end = iters
    cfg.param_scheduler[-1].pop("T_max", None)
    cfg.work_dir = str(work_dir)
    set_data_root(cfg, str(data_root))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return {k[len("val/"):]: v.current() for k, v in runner.message_hub.log_scalars.items() if k.startswith("val/")}


@pytest.mark.slow
def test_classification_learns(tmp_path):
    data = make_imagenet(tmp_path / "imagenet")
    metrics = _train("cls_test_vim_cpu.py", data, tmp_path / "work", iters=60)
    print("tiny classification after 60 iterations:", metrics)
    assert metrics["accuracy/top1"] >= 75.0  # chance: 25


@pytest.mark.slow
def test_segmentation_learns(tmp_path):
    data = make_ade(tmp_path / "ADEChallengeData2016")
    metrics = _train("upernet_test_vmamba_cpu.py", data, tmp_path / "work", iters=40)
    print("tiny segmentation after 40 iterations:", metrics)
    assert metrics["mIoU"] >= 50.0
    assert metrics["aAcc"] >= 70.0

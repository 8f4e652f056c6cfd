"""Speech separation through mmengine: the tiny DPMamba config trains, resumes its data and reports SI-SNRi / SDRi."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DATASETS
from mmengine.runner import Runner

import ssmzoo.engine  # noqa: F401
from engine.synthetic import make_wsj0mix
from ssmzoo.engine.runner import set_data_root
from ssmzoo.engine.separation import DatasetEpochHook, SeparationMetric, separation_collate
from ssmzoo.tasks.separation import separation_metrics

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sep_test_dpmamba_cpu.py"


@pytest.fixture(scope="module")
def wsj0mix(tmp_path_factory) -> Path:
    return make_wsj0mix(tmp_path_factory.mktemp("wsj0mix"), seconds=0.6)


def test_tiny_separation_config_trains_and_tests(wsj0mix, tmp_path):
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2})
    cfg.work_dir = str(tmp_path)
    set_data_root(cfg, str(wsj0mix))
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert {"val/si_snr", "val/si_snri"} <= set(runner.message_hub.log_scalars)
    metrics = runner.test()
    assert set(metrics) == {"si_snr", "si_snri", "sdr", "sdri"}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_metric_is_the_mean_of_per_mixture_scores():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 800, generator=gen)
    est = ref.flip(1) + 0.3 * torch.randn(3, 2, 800, generator=gen)  # swapped speakers: PIT reorders them
    mix = ref.sum(1)
    metric = SeparationMetric(sdr=False)
    metric.process({}, [{"est": e, "ref": r, "mix": m} for e, r, m in zip(est, ref, mix, strict=True)])
    expected = separation_metrics(est, ref, mix, sdr=False)
    got = metric.compute_metrics(metric.results)
    assert got == pytest.approx({k: float(v.mean()) for k, v in expected.items()}, rel=1e-9)
    assert got["si_snri"] > 5


def test_collate_and_epoch_hook(wsj0mix):
    dataset = DATASETS.build(dict(type="Wsj0MixFolder", data_root=str(wsj0mix), split="tr", segment=0.25))
    batch = separation_collate([dataset[0], dataset[1]])
    assert batch["inputs"].shape == (2, 2000) and batch["data_samples"]["sources"].shape == (2, 2, 2000)
    first = dataset[0]["mix"]

    class _Runner:
        epoch = 3
        train_dataloader = type("Loader", (), {"dataset": dataset})

    DatasetEpochHook().before_train_epoch(_Runner)
    assert dataset.epoch == 3 and not torch.equal(dataset[0]["mix"], first)  # another crop in another epoch


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="tr/mix"):
        DATASETS.build(dict(type="Wsj0MixFolder", data_root=str(tmp_path), split="tr"))

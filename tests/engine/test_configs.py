"""The shipped configs parse, carry the official recipes, and build their models."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS

import ssmzoo.engine  # noqa: F401
from ssmzoo.engine.runner import disable_pretrained, set_data_root

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_config_parses_with_registered_types(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ["ssmzoo.engine"]
    assert MODELS.get(cfg.model.type) is not None
    set_data_root(cfg, "/data/somewhere")
    assert cfg.train_dataloader.dataset.data_root == cfg.val_dataloader.dataset.data_root == "/data/somewhere"


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_vmamba_upernet_is_the_official_160k_recipe(size):
    cfg = Config.fromfile(CONFIGS / "vmamba" / f"upernet_vmamba_{size}_ade20k_512x512_160k.py")
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.betas, opt.weight_decay) == ("AdamW", 6e-5, (0.9, 0.999), 0.01)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {"norm": {"decay_mult": 0.0}}
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.begin, poly.end, poly.power) == (
        "LinearLR", 1500, "PolyLR", 1500, 160000, 1.0)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.default_hooks.checkpoint.interval) == (
        160000, 16000, 16000)
    assert cfg.train_dataloader.batch_size * 8 == 16
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (head.channels, head.pool_scales) == (512, (1, 2, 3, 6))
    assert (aux.in_index, aux.channels, aux.loss_weight) == (2, 256, 0.4)
    assert cfg.model.test_cfg == {"mode": "whole"} and cfg.model.backbone.name == f"vmamba_{size}"
    pipeline = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    assert pipeline == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop", "RandomFlip",
                        "PhotoMetricDistortion", "PackSegInputs"]
    assert cfg.train_dataloader.dataset.pipeline[3].cat_max_ratio == 0.75


def test_vim_upernet_is_vims_own_recipe():
    cfg = Config.fromfile(CONFIGS / "vim" / "upernet_vim_tiny_ade20k_512x512_60k.py")
    assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) == (1e-4, 0.05)
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.92
    assert cfg.param_scheduler[1].end == cfg.train_cfg.max_iters == 60000
    assert cfg.model.test_cfg == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    assert cfg.train_dataloader.batch_size * 4 == 32


@pytest.mark.parametrize("name", ["vim/upernet_vim_tiny_ade20k_512x512_60k.py",
                                  "vmamba/upernet_vmamba_tiny_ade20k_512x512_160k.py",
                                  "vim/vim_tiny_in1k_finetune.py"])
def test_config_models_build(name):
    cfg = Config.fromfile(CONFIGS / name)
    disable_pretrained(cfg)
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 1e6


def test_dpmamba_wsj0mix_is_the_mamba_tasnet_recipe():
    cfg = Config.fromfile(CONFIGS / "dpmamba" / "dpmamba_s_wsj0-2mix.py")
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay, opt.clip_grad.max_norm) == (
        "Adam", 1.5e-4, 0.0, 5.0)
    warmup, cosine = cfg.param_scheduler
    assert (warmup.end, cosine.eta_min_ratio, cosine.end, cfg.train_cfg.max_epochs) == (20000, 0.01, 200, 200)
    train = cfg.train_dataloader
    assert (train.batch_size, train.dataset.type, train.dataset.speed_perturb) == (
        1, "DynamicMixFolder", (0.95, 1.0, 1.05))
    assert cfg.model.loss_threshold == -40.0 and cfg.test_evaluator.sdr

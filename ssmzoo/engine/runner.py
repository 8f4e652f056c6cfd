"""Config preparation shared by ``tools/train.py`` and ``tools/test.py``: data roots, AMP, CPU distributed runs."""
from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

__all__ = ["disable_pretrained", "enable_amp", "prepare_distributed", "resume_checkpoint", "set_data_root",
           "set_work_dir"]

AMP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def set_work_dir(cfg: Config, work_dir: str | None, config_path: str) -> None:
    """Work dir: the command line's, else the config's, else ``./work_dirs/<config file stem>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / Path(config_path).stem)


def resume_checkpoint(work_dir: str) -> str | None:
    """The checkpoint ``--resume`` (no path) goes on from: the one mmengine's ``last_checkpoint`` names, else, when
    that file is empty or names a missing file, the newest complete ``iter_N.pth`` / ``epoch_N.pth`` of work_dir.

    mmengine rewrites ``last_checkpoint`` in place after each save, so a run killed at that moment leaves it empty
    (its own lookup then tries to load the path ''). A checkpoint cut short by a kill is skipped: torch.save writes a
    zip archive whose directory comes last. None: no ``last_checkpoint`` (nothing saved; training starts over).
    FileNotFoundError: a ``last_checkpoint`` with nothing complete to resume from."""
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    named = marker.read_text().strip()
    if named and Path(named).is_file():
        return named
    saved = [(int(m.group(1)), path) for path in Path(work_dir).glob("*.pth")
             if (m := re.fullmatch(r"(?:iter|epoch)_(\d+)\.pth", path.name))]
    found = next((str(path) for _, path in sorted(saved, reverse=True) if zipfile.is_zipfile(path)), None)
    if found is None:
        raise FileNotFoundError(f"--resume: {marker} names {named or 'nothing'!r} and {work_dir} holds no complete "
                                "iter_N.pth / epoch_N.pth checkpoint; pass one with --resume PATH")
    return found


def _dataset_cfgs(cfg: Config):
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if loader is not None and loader.get("dataset") is not None:
            yield key, loader["dataset"]


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataset of the train / val / test dataloaders (and datasets they wrap) at ``data_root``.

    Raises:
        KeyError: no dataset of the config has a ``data_root`` to override.
    """
    found = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "data_root" in node:
                node["data_root"] = data_root
                found.append(where)
            for key, value in node.items():
                visit(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f"{where}[{i}]")

    for key, dataset in _dataset_cfgs(cfg):
        visit(dataset, f"{key}.dataset")
    if not found:
        raise KeyError("--data-root: no dataset in train/val/test_dataloader has a 'data_root' key")


def enable_amp(cfg: Config, dtype: str) -> None:
    """Train with mmengine's ``AmpOptimWrapper`` in ``dtype`` ("bf16" or "fp16"; fp16 with dynamic loss scaling).

    Raises:
        ValueError: unknown dtype.
        RuntimeError: no CUDA device (mmengine's AmpOptimWrapper runs on accelerators only).
    """
    if dtype not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {sorted(set(AMP_DTYPES))}, got {dtype!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("--amp needs a CUDA device (mmengine's AmpOptimWrapper); train in float32 on the CPU")
    wrapper = cfg.optim_wrapper
    if wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ValueError(f"--amp: optim_wrapper.type is {wrapper.type!r}, expected OptimWrapper")
    wrapper.type = "AmpOptimWrapper"
    wrapper.dtype = AMP_DTYPES[dtype]
    wrapper.setdefault("loss_scale", "dynamic")


def disable_pretrained(cfg: Config) -> None:
    """Set every ``pretrained`` flag of the model config to False (a checkpoint is about to replace the weights,
    so the backbone's ImageNet weights need not be fetched)."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "pretrained" in node:
                node["pretrained"] = False
            for value in node.values():
                visit(value)

    visit(cfg.model)


def prepare_distributed(cfg: Config, launcher: str) -> None:
    """Make ``launcher`` runs work without a GPU: gloo process group, DDP without device ids, no SyncBatchNorm.

    mmengine's own initialisation calls ``torch.cuda.set_device`` and wraps the model with ``device_ids=[rank]``,
    which both fail on CPU-only machines; on a GPU machine nothing changes (NCCL, one device per process).
    """
    cfg.launcher = launcher
    if launcher == "none" or torch.cuda.is_available():
        return
    if launcher != "pytorch":
        raise ValueError(f"without a GPU only --launcher pytorch (torchrun) is supported, got {launcher!r}")
    cfg.setdefault("env_cfg", ConfigDict()).setdefault("dist_cfg", ConfigDict())["backend"] = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
    wrapper = cfg.get("model_wrapper_cfg") or ConfigDict(type="MMDistributedDataParallel")
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper
    if cfg.get("sync_bn"):
        print_log("no GPU: SyncBatchNorm needs one, keeping per-process BatchNorm", logger="current",
                  level=logging.WARNING)
        cfg.sync_bn = None

"""Speech separation on mmengine: the separator wrapper, the SI-SNRi / SDRi metric, the speech datasets and hooks.

The data, loss and metrics are those of :mod:`ssmzoo.tasks.separation_data` and :mod:`ssmzoo.tasks.separation`
(the Mamba-TasNet / SpeechBrain recipe: negative SI-SNR under PIT with items above 40 dB left out, SI-SNRi and
SDRi against the mixture); this module only adapts them to mmengine's Runner:

- datasets with mmengine's ``data_root`` argument (so ``tools/train.py --data-root`` reaches them):
  :class:`Wsj0MixFolder` (``<data_root>/{tr,cv,tt}/{mix,s1,s2}``), :class:`LibriMixCSV` and
  :class:`DynamicMixFolder` (``<data_root>/<speakers_dir>/<speaker>/*.wav``, new mixtures every epoch);
- ``separation_collate``: items -> ``{"inputs": mix (B, T), "data_samples": {"sources", "lengths", "id"}}``;
- :class:`DatasetEpochHook`: tells the training dataset the epoch, since these datasets draw crops and mixtures
  per (seed, epoch, index);
- :class:`SpeechSeparator` (``MODELS``) and :class:`SeparationMetric` (``METRICS``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, FUNCTIONS, HOOKS, METRICS, MODELS

from ssmzoo import create_model
from ssmzoo.tasks.separation import pit_si_snr_loss, separation_metrics
from ssmzoo.tasks.separation_data import DynamicMixDataset, LibriMixDataset, Wsj0MixDataset, collate_separation

__all__ = ["DatasetEpochHook", "DynamicMixFolder", "LibriMixCSV", "SeparationMetric", "SpeechSeparator",
           "Wsj0MixFolder", "separation_collate"]


@DATASETS.register_module()
class Wsj0MixFolder(Wsj0MixDataset):
    """:class:`~ssmzoo.tasks.separation_data.Wsj0MixDataset` of ``<data_root>/<split>`` (``split`` tr / cv / tt)."""

    def __init__(self, data_root: str, split: str, **kwargs: Any) -> None:
        super().__init__(data_root, split, **kwargs)


@DATASETS.register_module()
class LibriMixCSV(LibriMixDataset):
    """:class:`~ssmzoo.tasks.separation_data.LibriMixDataset` of ``<data_root>/<csv>`` (paths relative to
    ``data_root``), e.g. ``csv="metadata/mixture_tt_mix_clean.csv"``."""

    def __init__(self, data_root: str, csv: str, **kwargs: Any) -> None:
        super().__init__(Path(data_root) / csv, root=data_root, **kwargs)


@DATASETS.register_module()
class DynamicMixFolder(DynamicMixDataset):
    """:class:`~ssmzoo.tasks.separation_data.DynamicMixDataset` over ``<data_root>/<speakers_dir>``."""

    def __init__(self, data_root: str, speakers_dir: str = "speakers/tr", **kwargs: Any) -> None:
        super().__init__(Path(data_root) / speakers_dir, **kwargs)


@FUNCTIONS.register_module()
def separation_collate(batch: Sequence[dict]) -> dict:
    """Speech items -> ``{"inputs": (B, T), "data_samples": {"sources": (B, S, T), "lengths": (B,), "id": [..]}}``
    (:func:`~ssmzoo.tasks.separation_data.collate_separation`, zero-padded to the longest item)."""
    out = collate_separation(batch)
    return {"inputs": out.pop("mix"), "data_samples": out}


@HOOKS.register_module()
class DatasetEpochHook(Hook):
    """Call ``set_epoch(epoch)`` on the training dataset before every epoch.

    The speech datasets draw random crops and dynamic mixtures from ``(seed, epoch, index)``: without this every
    epoch would repeat the first one's. Use non-persistent dataloader workers (``persistent_workers=False``), which
    receive the dataset, with its epoch, anew each epoch.
    """

    priority = "NORMAL"

    def before_train_epoch(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(runner.epoch)


@MODELS.register_module()
class SpeechSeparator(BaseModel):
    """An ssmzoo separator ((B, T) mixtures -> (B, S, T) estimates) trained with PIT SI-SNR.

    Args:
        model: ``dict(name=..., **ssmzoo.create_model kwargs)``, e.g. ``dict(name="dpmamba_s")``.
        loss_threshold: :func:`~ssmzoo.tasks.separation.pit_si_snr_loss`'s threshold (items whose loss is below it,
            i.e. above 40 dB SI-SNR, leave the mean; None keeps all).

    ``predict`` returns per mixture its estimates, references and mixture cut to the true length (``est``, ``ref``
    (S, T), ``mix`` (T,)) and ``id``; :class:`SeparationMetric` scores them.
    """

    def __init__(self, model: dict[str, Any], loss_threshold: float | None = -40.0,
                 data_preprocessor: dict | nn.Module | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        cfg = dict(model)
        if "name" not in cfg:
            raise KeyError(f"model config needs a 'name' (an ssmzoo separator name), got keys {sorted(cfg)}")
        self.backbone = create_model(cfg.pop("name"), **cfg)
        self.loss_threshold = loss_threshold

    def forward(self, inputs: torch.Tensor, data_samples: dict | None = None, mode: str = "tensor"):
        if mode == "tensor":
            return self.backbone(inputs)
        if data_samples is None:
            raise ValueError(f"mode={mode!r} needs the references (data_samples)")
        if mode == "loss":
            est = self.backbone(inputs).float()
            return {"loss": pit_si_snr_loss(est, data_samples["sources"].float(), self.loss_threshold)}
        if mode == "predict":
            est = self.backbone(inputs).detach().float()
            return [{"est": e[:, :n], "ref": r[:, :n], "mix": m[:n], "id": i}
                    for e, r, m, n, i in zip(est, data_samples["sources"], inputs, data_samples["lengths"].tolist(),
                                             data_samples["id"], strict=True)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


@METRICS.register_module()
class SeparationMetric(BaseMetric):
    """Mean SI-SNR and SI-SNRi, and with ``sdr`` BSS-eval SDR and SDRi (dB), over the dataset's mixtures.

    Per mixture, :func:`~ssmzoo.tasks.separation.separation_metrics` (speaker order by best SI-SNR, improvements
    over the mixture as the estimate of every source); then the plain mean over mixtures. SDR solves a 512-tap
    distortion filter per source: leave it to the test set (``sdr=False`` for per-epoch validation).
    """

    def __init__(self, sdr: bool = True, collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.sdr = sdr

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            scores = separation_metrics(sample["est"][None], sample["ref"][None].float(), sample["mix"][None].float(),
                                        sdr=self.sdr)
            self.results.append({k: float(v[0]) for k, v in scores.items()})

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {key: float(np.mean([r[key] for r in results])) for key in results[0]}

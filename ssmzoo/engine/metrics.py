"""Dataset-level metrics, registered in mmengine's ``METRICS``.

mmengine calls ``process`` per batch on every rank, gathers the per-sample results of all ranks and calls
``compute_metrics`` once on the whole dataset, so the numbers are dataset-accumulated, never averages of batch
or rank averages.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from mmengine.registry import METRICS
from torchmetrics.functional.classification import multiclass_confusion_matrix

__all__ = ["Accuracy", "IoUMetric", "iou_from_areas"]


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy (%) over the dataset from ``ImageClassifier``'s predictions (``pred_topk``, ``gt_label``).

    Keys: ``top1``, ``top5`` ... (one per ``topk``), under the prefix ``accuracy/``.
    """

    default_prefix = "accuracy"

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            top, label = sample["pred_topk"].cpu(), int(sample["gt_label"])
            # k beyond the number of classes counts as "all classes", i.e. always right
            self.results.append([bool((top[:k] == label).any()) for k in self.topk])

    def compute_metrics(self, results: list) -> dict[str, float]:
        hits = np.asarray(results, dtype=np.float64)
        return {f"top{k}": float(hits[:, i].mean() * 100) for i, k in enumerate(self.topk)}


def iou_from_areas(intersect: np.ndarray, area_pred: np.ndarray, area_label: np.ndarray) -> dict[str, np.ndarray]:
    """mmseg's per-class IoU and Acc from dataset-summed areas; classes with no label pixel give NaN
    (``union`` 0 for IoU, ``area_label`` 0 for Acc) and are skipped by the nan-means."""
    union = area_pred + area_label - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"IoU": intersect / union, "Acc": intersect / area_label}


@METRICS.register_module()
class IoUMetric(BaseMetric):
    """mIoU, mAcc and aAcc (%) exactly as mmseg's ``IoUMetric`` defines them.

    Per image, pixels whose label is ``ignore_index`` are dropped; the per-class intersection, predicted area and
    label area (from torchmetrics' confusion matrix) are summed over the whole dataset; then per class
    ``IoU = ΣI / (ΣP + ΣL - ΣI)`` and ``Acc = ΣI / ΣL``; ``mIoU`` / ``mAcc`` are their nan-means (classes absent
    from labels and predictions are NaN), ``aAcc = ΣI / ΣL`` over all classes; all x100, rounded to 2 decimals.
    The per-class table is logged.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255, collect_device: str = "cpu",
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if not self.dataset_meta or "classes" not in self.dataset_meta:
            raise ValueError("IoUMetric needs num_classes or a dataset with metainfo['classes']")
        return len(self.dataset_meta["classes"])

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        num_classes = self._classes()
        for sample in data_samples:
            pred = sample["pred_sem_seg"].reshape(-1)
            label = sample["gt_sem_seg"].to(pred.device).reshape(-1).long()
            if pred.shape != label.shape:
                raise ValueError(f"prediction and label sizes differ for {sample.get('img_path')}: "
                                 f"{tuple(sample['pred_sem_seg'].shape)} vs {tuple(sample['gt_sem_seg'].shape)}")
            # out-of-range labels other than ignore_index fall outside mmseg's histograms: drop them too
            keep = (label != self.ignore_index) & (label < num_classes)
            # rows: label, columns: prediction
            cm = multiclass_confusion_matrix(pred[keep], label[keep], num_classes, validate_args=False)
            cm = cm.cpu().to(torch.float64)
            self.results.append((cm.diagonal().numpy(), cm.sum(0).numpy(), cm.sum(1).numpy()))

    def compute_metrics(self, results: list) -> dict[str, float]:
        intersect, area_pred, area_label = (np.sum([r[i] for r in results], axis=0) for i in range(3))
        per_class = iou_from_areas(intersect, area_pred, area_label)
        self._log_table(per_class)
        return {
            "aAcc": float(np.round(intersect.sum() / area_label.sum() * 100, 2)),
            "mIoU": float(np.round(np.nanmean(per_class["IoU"]) * 100, 2)),
            "mAcc": float(np.round(np.nanmean(per_class["Acc"]) * 100, 2)),
        }

    def _log_table(self, per_class: dict[str, np.ndarray]) -> None:
        names = (self.dataset_meta or {}).get("classes") or [str(i) for i in range(len(per_class["IoU"]))]
        width = max(len(str(n)) for n in names)
        lines = [f"{'class':<{width}}   IoU    Acc"]
        for name, iou, acc in zip(names, per_class["IoU"], per_class["Acc"], strict=True):
            lines.append(f"{name:<{width}} {iou * 100:6.2f} {acc * 100:6.2f}")
        MMLogger.get_current_instance().info("per-class results:\n" + "\n".join(lines))

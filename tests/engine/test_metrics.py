"""Metrics against direct implementations of their definitions (mmseg's histc-based mIoU, top-k accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmzoo.engine.metrics import Accuracy, IoUMetric


def _mmseg_reference(preds, labels, num_classes, ignore_index=255):
    """mmseg 1.x IoUMetric: per-image histc areas over the non-ignored pixels, summed, then the ratios."""
    areas = np.zeros((3, num_classes))
    for pred, label in zip(preds, labels, strict=True):
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        for i, values in enumerate((intersect, pred, label)):
            areas[i] += torch.histc(values.float(), bins=num_classes, min=0, max=num_classes - 1).numpy()
    inter, area_pred, area_label = areas
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_pred + area_label - inter)
        acc = inter / area_label
    return {"aAcc": np.round(inter.sum() / area_label.sum() * 100, 2), "mIoU": np.round(np.nanmean(iou) * 100, 2),
            "mAcc": np.round(np.nanmean(acc) * 100, 2)}


def test_iou_metric_matches_mmseg_definition():
    gen = torch.Generator().manual_seed(0)
    num_classes = 6
    preds, labels = [], []
    for shape in ((17, 23), (31, 9), (12, 12)):
        label = torch.randint(0, num_classes - 1, shape, generator=gen)  # class 5 never labelled ...
        label[torch.rand(shape, generator=gen) < 0.2] = 255
        pred = torch.where(torch.rand(shape, generator=gen) < 0.6, label, torch.randint(0, num_classes, shape,
                                                                                         generator=gen))
        pred[pred == 255] = 0
        preds.append(pred)
        labels.append(label)
    metric = IoUMetric(num_classes=num_classes)
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    # two batches: accumulation over the dataset, not an average of batch scores
    metric.process({}, [{"pred_sem_seg": p, "gt_sem_seg": g} for p, g in zip(preds[:2], labels[:2], strict=True)])
    metric.process({}, [{"pred_sem_seg": preds[2], "gt_sem_seg": labels[2]}])
    got = metric.compute_metrics(metric.results)
    expected = _mmseg_reference(preds, labels, num_classes)
    assert got == pytest.approx(expected, abs=1e-9)


def test_iou_metric_absent_class_is_skipped_and_perfect_is_100():
    label = torch.tensor([[0, 0, 1], [1, 255, 255]])
    pred = torch.where(label == 255, 2, label)  # class 2 only where the label is ignored
    metric = IoUMetric(num_classes=3)  # class 2: neither labelled nor (counted as) predicted -> NaN, skipped
    metric.process({}, [{"pred_sem_seg": pred, "gt_sem_seg": label}])
    assert metric.compute_metrics(metric.results) == {"aAcc": 100.0, "mIoU": 100.0, "mAcc": 100.0}


def test_accuracy_topk():
    metric = Accuracy(topk=(1, 2))
    samples = [{"pred_topk": torch.tensor([3, 1]), "gt_label": torch.tensor(3)},
               {"pred_topk": torch.tensor([0, 2]), "gt_label": torch.tensor(2)},
               {"pred_topk": torch.tensor([1, 0]), "gt_label": torch.tensor(4)},
               {"pred_topk": torch.tensor([4, 0]), "gt_label": torch.tensor(4)}]
    metric.process({}, samples)
    assert metric.compute_metrics(metric.results) == {"top1": 50.0, "top2": 75.0}

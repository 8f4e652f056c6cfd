"""mmengine ``BaseModel`` wrappers: an ssmzoo model created by name becomes something mmengine's Runner trains.

Each wrapper implements ``forward(inputs, data_samples, mode)`` with mmengine's three modes: ``"loss"`` (dict of
losses and logged values; mmengine sums the entries whose name contains ``loss``), ``"predict"`` (one dict per
sample, what the metrics of :mod:`ssmzoo.engine.metrics` read) and ``"tensor"`` (raw outputs). ``backbone`` is the
timm model inside, which the optimizer constructor of :mod:`ssmzoo.engine.optim` asks for ``no_weight_decay`` and
``group_matcher``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.registry import MODELS
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ssmzoo import create_model
from ssmzoo.tasks.segmentation import UperNet

__all__ = ["ImageClassifier", "SegDataPreprocessor", "Segmentor"]


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """Image classification with timm's recipe pieces.

    Data: ``inputs`` (B, 3, H, W) float, normalised by the dataset's timm transform; ``data_samples`` (B,) int64
    labels.

    Args:
        model: ``dict(name=..., **ssmzoo.create_model kwargs)``, e.g. ``dict(name="vim_tiny", pretrained=True,
            num_classes=1000, drop_path_rate=0.1)``.
        label_smoothing: smoothing of the targets (0: plain cross entropy).
        mixup: timm ``Mixup`` kwargs (mixup_alpha, cutmix_alpha, prob, switch_prob, mode ...), applied to training
            batches; the loss is then soft-target cross entropy on the mixed, smoothed targets. None: off.
        topk: the k of the top-k indices returned per sample by ``predict``.
    """

    def __init__(self, model: dict[str, Any], label_smoothing: float = 0.0, mixup: dict[str, Any] | None = None,
                 topk: Sequence[int] = (1, 5), data_preprocessor: dict | nn.Module | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        cfg = dict(model)
        if "name" not in cfg:
            raise KeyError(f"model config needs a 'name' (an ssmzoo model name), got keys {sorted(cfg)}")
        self.backbone = create_model(cfg.pop("name"), **cfg)
        self.num_classes = self.backbone.num_classes
        self.mixup = None
        if mixup:
            self.mixup = Mixup(**dict(mixup, label_smoothing=label_smoothing, num_classes=self.num_classes))
            self.criterion = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.topk = max(topk)

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        if mode == "tensor":
            return self.backbone(inputs)
        if data_samples is None:
            raise ValueError(f"mode={mode!r} needs the labels (data_samples)")
        labels = torch.as_tensor(data_samples, device=inputs.device)
        if mode == "loss":
            targets = labels
            if self.mixup is not None:
                inputs, targets = self.mixup(inputs, labels)
            logits = self.backbone(inputs)
            return {"loss": self.criterion(logits.float(), targets)}
        if mode == "predict":
            scores = self.backbone(inputs).detach().float().softmax(-1)
            top = scores.topk(min(self.topk, scores.shape[-1]), dim=-1).indices
            return [{"pred_topk": t, "pred_score": s, "gt_label": g}
                    for t, s, g in zip(top, scores, labels, strict=True)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


@MODELS.register_module()
class SegDataPreprocessor(BaseDataPreprocessor):
    """mmseg's ``SegDataPreProcessor``: normalise uint8 RGB images, pad them (and their labels) to one size.

    Input: ``inputs`` list of (3, H_i, W_i) uint8 RGB tensors, ``data_samples`` list of dicts (``gt_sem_seg``
    (H_i, W_i) label maps for training). Output: ``inputs`` (B, 3, H, W) float, padded at the bottom / right with
    ``pad_val`` after normalisation; in training ``size`` (the crop) is the least padded size and each sample's
    ``gt_sem_seg`` is padded with ``seg_pad_val``; samples record ``img_shape`` (their unpadded size).
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), size: Sequence[int] | None = None,
                 pad_val: float = 0.0, seg_pad_val: int = 255, non_blocking: bool = False) -> None:
        super().__init__(non_blocking)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.size = tuple(size) if size is not None else None
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        images, samples = data["inputs"], data["data_samples"]
        H = max(img.shape[-2] for img in images)
        W = max(img.shape[-1] for img in images)
        if training and self.size is not None:
            H, W = max(H, self.size[0]), max(W, self.size[1])
        batch = []
        for img, sample in zip(images, samples, strict=True):
            h, w = img.shape[-2:]
            sample["img_shape"] = (h, w)
            img = (img.float() - self.mean) / self.std
            batch.append(F.pad(img, (0, W - w, 0, H - h), value=self.pad_val))
            if training:
                sample["gt_sem_seg"] = F.pad(sample["gt_sem_seg"], (0, W - w, 0, H - h), value=self.seg_pad_val)
        return {"inputs": torch.stack(batch), "data_samples": samples}


@MODELS.register_module()
class Segmentor(BaseModel):
    """Semantic segmentation with :class:`ssmzoo.tasks.segmentation.UperNet`.

    ``predict`` crops each sample's logits to its ``img_shape`` (dropping the padding), resizes them bilinearly to
    its ``ori_shape`` (the image as read, before the test resize) and returns ``pred_sem_seg`` (H, W) there, next
    to the sample's ``gt_sem_seg`` (mmseg's ``postprocess_result``).

    Args:
        backbone, num_classes, decode_head, auxiliary_head, neck, align_corners, ignore_index: of ``UperNet``.
        test_cfg: ``dict(mode="whole")`` or ``dict(mode="slide", crop_size=(h, w), stride=(h, w))``.
    """

    def __init__(self, backbone: dict[str, Any], num_classes: int, decode_head: dict | None = None,
                 auxiliary_head: dict | None = None, neck: dict | None = None, align_corners: bool = False,
                 ignore_index: int = 255, test_cfg: dict | None = None,
                 data_preprocessor: dict | nn.Module | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="SegDataPreprocessor"), init_cfg=init_cfg)
        self.segmentor = UperNet(backbone, num_classes, decode_head=decode_head, auxiliary_head=auxiliary_head,
                                 neck=neck, align_corners=align_corners, ignore_index=ignore_index)
        self.test_cfg = dict(test_cfg or {"mode": "whole"})
        mode = self.test_cfg.get("mode", "whole")
        if mode not in ("whole", "slide") or (mode == "slide" and not {"crop_size", "stride"} <= set(self.test_cfg)):
            raise ValueError(f"test_cfg must be dict(mode='whole') or dict(mode='slide', crop_size=..., stride=...), "
                             f"got {self.test_cfg}")

    @property
    def backbone(self) -> nn.Module:
        return self.segmentor.backbone

    def forward(self, inputs: torch.Tensor, data_samples: list[dict] | None = None, mode: str = "tensor"):
        if mode == "tensor":
            return self.segmentor(inputs)
        if data_samples is None:
            raise ValueError(f"mode={mode!r} needs data_samples")
        if mode == "loss":
            labels = torch.stack([s["gt_sem_seg"] for s in data_samples]).long()
            return self.segmentor.loss(inputs, labels)
        if mode == "predict":
            logits = self.segmentor.inference(inputs, **self.test_cfg)
            out = []
            for logit, sample in zip(logits, data_samples, strict=True):
                h, w = sample.get("img_shape", logit.shape[-2:])
                logit = logit[None, :, :h, :w]
                ori = tuple(sample.get("ori_shape", (h, w)))
                if ori != (h, w):
                    logit = F.interpolate(logit, size=ori, mode="bilinear", align_corners=self.segmentor.align_corners)
                out.append(dict(sample, pred_sem_seg=logit[0].argmax(0)))
            return out
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

"""Semantic segmentation: UperNet (PPM + FPN) with an auxiliary FCN head on any ssmzoo backbone.

mmseg's ``EncoderDecoder`` + ``UPerHead`` + ``FCNHead`` rebuilt in plain PyTorch, because mmseg and mmcv cannot be
installed next to torch 2.11 (no wheels). The modules, their initialisation, the loss and both test modes follow
mmsegmentation 1.2.2 (``mmseg/models/decode_heads/{uper_head,psp_head,fcn_head,decode_head}.py``,
``mmseg/models/segmentors/encoder_decoder.py``, ``mmseg/models/losses/cross_entropy_loss.py``):

- ``ConvModule`` = conv (no bias: a norm follows) -> BatchNorm -> ReLU, conv weights Kaiming-normal (fan_out,
  relu), norms 1 / 0; the classifiers ``conv_seg`` are N(0, 0.01) with zero bias, after ``Dropout2d``.
- UperNet: a PPM (pool scales 1/2/3/6) on the last map, lateral 1x1 convs on the others, a top-down path with
  bilinear upsampling, 3x3 FPN convs, everything upsampled to the first (stride-4) map, concatenated and fused.
- The auxiliary FCN head (one 3x3 conv, 256 channels) reads map ``in_index`` 2 and weighs 0.4 in the loss.
- Loss: per-pixel cross entropy on logits upsampled (bilinear) to the label size; pixels labelled
  ``ignore_index`` (255) contribute zero but still count in the mean (mmseg's ``avg_non_ignore=False``).
- Whole-image inference, or sliding windows (``crop_size``, ``stride``) averaged where they overlap.

Plain (single-scale) backbones such as Vim give four maps of one stride; :class:`MultiScaleNeck` turns them into the
strides 4/8/16/32 UperNet expects (the official Vim/BEiT segmentation backbones' ``fpn1..fpn4``). BatchNorm here
is ``nn.BatchNorm2d``; the training configs turn it into SyncBatchNorm (mmengine ``sync_bn='torch'``) as the
official ``SyncBN`` configs do.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmzoo import create_model

__all__ = ["ConvModule", "FCNHead", "MultiScaleNeck", "UPerHead", "UperNet", "seg_cross_entropy", "slide_inference"]


class ConvModule(nn.Sequential):
    """mmcv's ``ConvModule`` with BatchNorm and ReLU: (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


class _ClsSeg(nn.Module):
    """``Dropout2d`` then the 1x1 classifier, initialised N(0, 0.01) as mmseg's ``conv_seg``."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class UPerHead(nn.Module):
    """UperNet decode head: maps (B, C_i, H_i, W_i), finest first -> logits (B, num_classes, H_0, W_0).

    Args:
        in_channels: channels of each input map.
        num_classes: output classes.
        channels: width of the head (512 in the official configs).
        pool_scales: PPM output sizes on the last map.
        dropout_ratio: Dropout2d before the classifier.
        align_corners: of the bilinear resizes.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(top, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)
        self.cls_seg = _ClsSeg(channels, num_classes, dropout_ratio)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(m(x), x.shape[2:], self.align_corners) for m in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self._psp(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        outs = [outs[0]] + [_resize(o, outs[0].shape[2:], self.align_corners) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module):
    """FCN head (mmseg ``FCNHead``, ``concat_input=False``): map (B, C, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout_ratio: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(num_convs)]) if num_convs > 0 else nn.Identity()
        self.cls_seg = _ClsSeg(channels if num_convs > 0 else in_channels, num_classes, dropout_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class MultiScaleNeck(nn.Module):
    """Four maps of one stride s -> strides s/4, s/2, s, 2s (the official Vim / BEiT ``fpn1..fpn4``).

    For ``scales=(4, 2, 1, 0.5)`` (patch 16): ConvTranspose(2, 2) -> BN -> GELU -> ConvTranspose(2, 2); one
    ConvTranspose(2, 2); identity; MaxPool(2). For ``(2, 1, 0.5, 0.25)`` (patch 8): one ConvTranspose, identity,
    MaxPool(2), MaxPool(4). The channel count is kept.
    """

    def __init__(self, channels: int, scales: Sequence[float] = (4, 2, 1, 0.5)) -> None:
        super().__init__()
        self.ops = nn.ModuleList(self._op(channels, s) for s in scales)

    @staticmethod
    def _op(channels: int, scale: float) -> nn.Module:
        if scale == 4:
            return nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, 2), nn.BatchNorm2d(channels), nn.GELU(),
                                 nn.ConvTranspose2d(channels, channels, 2, 2))
        if scale == 2:
            return nn.ConvTranspose2d(channels, channels, 2, 2)
        if scale == 1:
            return nn.Identity()
        if scale in (0.5, 0.25):
            k = int(round(1 / scale))
            return nn.MaxPool2d(k, k)
        raise ValueError(f"MultiScaleNeck: unsupported scale {scale} (use 4, 2, 1, 0.5 or 0.25)")

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.ops):
            raise ValueError(f"MultiScaleNeck has {len(self.ops)} scales but got {len(feats)} maps")
        return [op(f) for op, f in zip(self.ops, feats, strict=True)]


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """mmseg's CrossEntropyLoss: logits (B, K, h, w) upsampled to labels (B, H, W); mean over *all* pixels.

    Ignored pixels add zero but count in the denominator (mmseg's default ``avg_non_ignore=False``). The loss is
    computed in float32 whatever the autocast dtype.
    """
    logits = _resize(logits.float(), labels.shape[-2:], align_corners=False)
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none").mean()


def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Top-1 accuracy (%) over the non-ignored pixels (mmseg's ``acc_seg`` log value)."""
    logits = _resize(logits.detach().float(), labels.shape[-2:], align_corners=False)
    valid = labels != ignore_index
    correct = (logits.argmax(1) == labels) & valid
    return correct.sum() * 100.0 / valid.sum().clamp(min=1)


def slide_inference(fn, inputs: torch.Tensor, num_classes: int, crop_size: Sequence[int],
                    stride: Sequence[int]) -> torch.Tensor:
    """Sliding-window logits (B, K, H, W) of ``fn`` (crop -> logits at crop size), averaged over overlaps.

    Windows start every ``stride`` pixels; the last row / column is shifted back so it ends at the border (mmseg's
    ``EncoderDecoder.slide_inference``). Images smaller than a crop are processed whole.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    B, _, H, W = inputs.shape
    h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = inputs.new_zeros((B, num_classes, H, W), dtype=torch.float32)
    count = inputs.new_zeros((B, 1, H, W), dtype=torch.float32)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, H), min(w_idx * w_stride + w_crop, W)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += fn(inputs[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


class UperNet(nn.Module):
    """Backbone (by ssmzoo name) -> optional neck -> UPerHead (+ auxiliary FCNHead).

    Args:
        backbone: ``dict(name=..., **create_model kwargs)`` (``features_only=True`` is added; ``out_indices``,
            ``pretrained``, ``drop_path_rate`` ... as the family accepts), or a built module returning a list
            of NCHW maps and carrying timm's ``feature_info``.
        num_classes: classes (150 for ADE20K).
        decode_head: :class:`UPerHead` kwargs besides in_channels / num_classes (channels, pool_scales,
            dropout_ratio).
        auxiliary_head: :class:`FCNHead` kwargs plus ``in_index`` (default 2) and ``loss_weight`` (default 0.4);
            None: no auxiliary head.
        neck: :class:`MultiScaleNeck` kwargs (``scales``) for single-stride backbones; None: no neck.
        align_corners: of the heads' resizes.
        ignore_index: label ignored by the loss.
    """

    def __init__(self, backbone: dict[str, Any] | nn.Module, num_classes: int,
                 decode_head: dict[str, Any] | None = None, auxiliary_head: dict[str, Any] | None = None,
                 neck: dict[str, Any] | None = None, align_corners: bool = False, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.ignore_index = ignore_index
        self.backbone = build_backbone(backbone) if isinstance(backbone, dict) else backbone
        channels = list(self.backbone.feature_info.channels())
        self.neck = None
        if neck is not None:
            if len(set(channels)) != 1:
                raise ValueError(f"MultiScaleNeck needs maps of equal channels, the backbone gives {channels}")
            self.neck = MultiScaleNeck(channels[0], **neck)
        self.decode_head = UPerHead(channels, num_classes, align_corners=align_corners, **(decode_head or {}))
        self.auxiliary_head = None
        if auxiliary_head is not None:
            aux = dict(auxiliary_head)
            self.aux_index = aux.pop("in_index", 2)
            self.aux_weight = aux.pop("loss_weight", 0.4)
            if not -len(channels) <= self.aux_index < len(channels):
                raise ValueError(f"auxiliary_head.in_index={self.aux_index} but the backbone gives "
                                 f"{len(channels)} maps")
            self.auxiliary_head = FCNHead(channels[self.aux_index], num_classes, **aux)

    def extract_feat(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the maps the heads read (after the neck)."""
        feats = list(self.backbone(x))
        return self.neck(feats) if self.neck is not None else feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes, H, W) (the decode head's, upsampled to the input)."""
        return _resize(self.decode_head(self.extract_feat(x)), x.shape[2:], self.align_corners)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of a batch: x (B, 3, H, W), labels (B, H, W) with ``ignore_index`` where unlabelled.

        Returns ``decode.loss_ce``, ``decode.acc_seg`` and, with the auxiliary head, ``aux.loss_ce`` (weighted)
        and ``aux.acc_seg``; mmengine sums the entries whose name contains ``loss``.
        """
        feats = self.extract_feat(x)
        logits = self.decode_head(feats)
        out = {"decode.loss_ce": seg_cross_entropy(logits, labels, self.ignore_index),
               "decode.acc_seg": pixel_accuracy(logits, labels, self.ignore_index)}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head(feats[self.aux_index])
            out["aux.loss_ce"] = self.aux_weight * seg_cross_entropy(aux, labels, self.ignore_index)
            out["aux.acc_seg"] = pixel_accuracy(aux, labels, self.ignore_index)
        return out

    def inference(self, x: torch.Tensor, mode: str = "whole", crop_size: Sequence[int] | None = None,
                  stride: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (B, num_classes, H, W) for x (B, 3, H, W): ``mode`` "whole" or "slide" (crop_size, stride)."""
        if mode == "whole":
            return self(x)
        if mode == "slide":
            if crop_size is None or stride is None:
                raise ValueError("slide inference needs crop_size and stride")
            return slide_inference(self, x, self.num_classes, crop_size, stride)
        raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")


def build_backbone(cfg: dict[str, Any]) -> nn.Module:
    """``dict(name=..., **kwargs)`` -> ``ssmzoo.create_model(name, features_only=True, **kwargs)``."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"backbone config needs a 'name' (an ssmzoo model name), got keys {sorted(cfg)}")
    return create_model(cfg.pop("name"), features_only=True, **cfg)

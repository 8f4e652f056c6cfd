"""A tiny registered family that lives in the tests, not in the package.

It proves the generic harness (``test_contract.py``) and the pretrained-weight path (``test_pretrained.py``)
on a model that implements timm's API the way every ssmzoo family must: a 3-stage conv pyramid with a
classifier, ``forward_intermediates``, ``feature_info``, grad checkpointing and ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from ssmzoo.models import build_model, generate_default_cfgs, register_model


class ToyStage(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, 3, stride, 1), nn.BatchNorm2d(out_chs), nn.GELU())


class ToyNet(nn.Module):
    """(B, in_chans, H, W) -> (B, num_classes); stage i has ``dims[i]`` channels at stride 2**(i+1)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, dims: tuple[int, ...] = (8, 16, 24),
                 global_pool: str = "avg") -> None:
        super().__init__()
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        chans = (in_chans, *dims)
        self.stages = nn.Sequential(*[ToyStage(chans[i], chans[i + 1], 2) for i in range(len(dims))])
        self.feature_info = [dict(num_chs=d, reduction=2 ** (i + 1), module=f"stages.{i}") for i, d in enumerate(dims)]
        self.scale = nn.Parameter(torch.ones(dims[-1]))  # a 1-d parameter excluded from weight decay
        self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"scale", "*.bias"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stages\.0", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        assert output_fmt == "NCHW", "only NCHW is supported"
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x * self.scale[:, None, None], intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x * self.scale[:, None, None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The "official" toy layout names the classifier ``fc``; ours calls it ``head``."""
    return {k.replace("fc.", "head.", 1) if k.startswith("fc.") else k: v for k, v in state_dict.items()}


default_cfgs = generate_default_cfgs({
    "test_toyzoo.untrained": dict(
        num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), first_conv="stages.0.0", classifier="head"
    ),
})


@register_model
def test_toyzoo(pretrained: bool = False, **kwargs) -> ToyNet:
    return build_model(ToyNet, "test_toyzoo", pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                       feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True), **kwargs)

"""Optimizer parameter groups: mmengine's paramwise rules plus the backbone's no-decay list and layer-wise lr decay.

:class:`ZooOptimWrapperConstructor` (``optim_wrapper.constructor``) first applies mmengine's
``DefaultOptimWrapperConstructor`` rules (``custom_keys``, ``norm_decay_mult``, ``bias_decay_mult``,
``flat_decay_mult`` ...), then two of its own ``paramwise_cfg`` keys:

- ``model_no_decay`` (default True): parameters named by the backbone's timm ``no_weight_decay()`` (position
  embeddings, class token, ``A_log``, ``D`` ..., fnmatch patterns) get weight decay 0.
- ``layer_decay_rate`` (default None: off): the backbone's timm ``group_matcher`` numbers its layers
  0 (stem: patch embedding, position embedding, class token) .. G - 1 (its last group: a classifier's head, or
  the last block of a pruned ``features_only`` backbone); parameters outside the backbone (heads, necks), if
  any, form layer G. With L the top layer, a parameter of layer i gets ``lr x rate ** (L - i)``. For a Vim
  segmentor (24 blocks) this is the BEiT ``LayerDecayOptimizerConstructor(num_layers=24)`` of the official
  config: embeddings ``rate ** 25``, block i ``rate ** (24 - i)``, heads and neck ``1``; for a classifier it is
  timm's ``param_groups_layer_decay``.

The backbone is the wrapped model's ``backbone`` attribute (see :mod:`ssmzoo.engine.models`); a timm
``features_only`` wrapper is looked through to the model it wraps.
"""
from __future__ import annotations

import fnmatch
from collections import Counter

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from timm.models import group_parameters

__all__ = ["ZooOptimWrapperConstructor", "layer_ids"]


def _timm_model(backbone: nn.Module) -> nn.Module:
    """The timm model behind a backbone (``FeatureGetterNet`` keeps it as ``.model``)."""
    if hasattr(backbone, "group_matcher") or not isinstance(getattr(backbone, "model", None), nn.Module):
        return backbone
    return backbone.model


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """``({param name: layer id}, number of layers)`` from the model's timm ``group_matcher(coarse=False)``."""
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs a timm group_matcher(); {type(model).__name__} has none")
    ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return ids, max(ids.values()) + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ZooOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus ``model_no_decay`` and ``layer_decay_rate`` (module docstring)."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.model_no_decay = paramwise_cfg.pop("model_no_decay", True)
        self.layer_decay_rate = paramwise_cfg.pop("layer_decay_rate", None)
        # a non-empty paramwise_cfg makes the parent call add_params, where the rules below are applied
        paramwise_cfg.setdefault("bypass_duplicate", False)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "", is_dcn_module=None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix:  # the parent recurses through here; post-process once, at the top
            return
        backbone = getattr(module, "backbone", None)
        if backbone is None:
            if self.layer_decay_rate is not None or self.model_no_decay:
                print_log(f"{type(module).__name__} has no `backbone`: model_no_decay / layer_decay_rate unused",
                          logger="current")
            return
        timm_model = _timm_model(backbone)
        base = next(name for name, m in module.named_modules() if m is timm_model)
        base = f"{base}." if base else ""
        names = {id(p): n for n, p in module.named_parameters()}

        no_decay = set()
        if self.model_no_decay and hasattr(timm_model, "no_weight_decay") and self.base_wd:
            patterns = timm_model.no_weight_decay()
            no_decay = {base + n for n, _ in timm_model.named_parameters()
                        if any(fnmatch.fnmatch(n, pat) for pat in patterns)}
        ids, num_layers = layer_ids(timm_model) if self.layer_decay_rate is not None else ({}, 1)

        # parameters outside the backbone (heads, necks) form one more layer on top, at the full lr
        top = num_layers - 1 + any(not names[id(g["params"][0])].startswith(base) for g in params)
        summary = Counter()
        for group in params:
            name = names[id(group["params"][0])]
            if name in no_decay:
                group["weight_decay"] = 0.0
            if self.layer_decay_rate is not None:
                layer = ids.get(name[len(base):], num_layers - 1) if name.startswith(base) else top
                scale = self.layer_decay_rate ** (top - layer)
                group["lr"] = group.get("lr", self.base_lr) * scale
                group["lr_scale"] = scale
            summary[(round(group.get("lr", self.base_lr), 12), group.get("weight_decay", self.base_wd))] += 1
        print_log("optimizer groups (lr, weight_decay): number of tensors: "
                  + ", ".join(f"({lr:.3g}, {wd}): {n}" for (lr, wd), n in sorted(summary.items())), logger="current")

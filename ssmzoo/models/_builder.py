"""Model construction through timm's ``build_model_with_cfg`` with weights fetched by :mod:`ssmzoo.hub`.

timm would download with ``torch.hub`` (no hash unless the file name carries one) and read official checkpoints
with a plain ``torch.load``. Here the weights are resolved and loaded by the hub first and handed to timm as an
in-memory ``state_dict`` source, so timm still does what it does well: the family's ``checkpoint_filter_fn``,
classifier reset for another ``num_classes``, ``in_chans`` adaptation and the ``features_only`` wrapper.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.models import build_model_with_cfg, get_arch_pretrained_cfgs, resolve_pretrained_cfg

from .. import hub

__all__ = ["build_model", "pretrained_tags"]


def pretrained_tags(arch: str) -> list[str]:
    """The pretrained tags registered for ``arch`` (with or without weights)."""
    # timm keys these cfgs by their full name ("vim_tiny.in1k"; "dpmamba_s" for an untagged cfg, tag "").
    return [name.partition(".")[2] for name in get_arch_pretrained_cfgs(arch)]


def _check_tag(arch: str, pretrained_cfg: Any) -> None:
    if isinstance(pretrained_cfg, str) and pretrained_cfg not in pretrained_tags(arch):
        raise ValueError(
            f"unknown pretrained tag {pretrained_cfg!r} for {arch}; known tags: {pretrained_tags(arch) or 'none'}"
        )


def build_model(
    model_cls: Callable[..., torch.nn.Module],
    variant: str,
    pretrained: bool = False,
    *,
    pretrained_filter_fn: Callable[[dict, torch.nn.Module], dict] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build ``model_cls(**kwargs)`` as the registered ``variant`` (see timm's ``build_model_with_cfg``).

    With ``pretrained=True`` the weights named by the resolved cfg (a ``file`` overlay, else the cache, else the
    ``url``) are loaded through :mod:`ssmzoo.hub` and mapped by ``pretrained_filter_fn``.
    """
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    _check_tag(variant, pretrained_cfg)
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
        if cfg.state_dict is None:
            if not (cfg.file or cfg.url):
                with_weights = [t for t, c in get_arch_pretrained_cfgs(variant).items() if c.has_weights]
                raise ValueError(
                    f"no pretrained weights for {variant}.{cfg.tag}"
                    + (f"; tags with weights: {with_weights}" if with_weights else "")
                )
            path = hub.resolve(cfg.to_dict())
            overlay["state_dict"] = hub.load_state_dict(
                path, key=getattr(cfg, "checkpoint_key", None), prefix=getattr(cfg, "checkpoint_prefix", None)
            )
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay or None,
        pretrained_filter_fn=pretrained_filter_fn,
        **kwargs,
    )
    # The in-memory weights served only the load; do not keep a second copy alive in the cfg.
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    return model

"""ssmzoo: state-space (Mamba-family) models for vision and audio, registered in timm.

``import ssmzoo`` registers every ssmzoo model in timm's registry, so ``timm.create_model("<ssmzoo name>")``
works afterwards; :func:`create_model` and :func:`list_models` are thin wrappers of timm's.
"""
from __future__ import annotations

import sys
from typing import Any

import timm
import torch

from . import hub, models
from .models import list_models, pretrained_tags, suggest_models

__version__ = "0.1.0"
__all__ = ["create_model", "hub", "list_models", "load_pretrained", "models"]


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model`` with errors that list close model names or the known pretrained tags.

    ``model_name`` may carry a tag (``"vmamba_tiny.in1k"``); kwargs are timm's (``num_classes``,
    ``features_only``, ``out_indices``, ``pretrained_cfg_overlay=dict(file=...)``, model arguments ...).
    """
    arch, _, tag = model_name.partition(".")
    if not timm.is_model(arch):
        close = suggest_models(arch)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {arch!r}{hint} (ssmzoo.list_models() lists all ssmzoo models)")
    if tag and tag not in pretrained_tags(arch):
        raise ValueError(f"unknown pretrained tag {tag!r} for {arch}; known tags: {pretrained_tags(arch) or 'none'}")
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


def load_pretrained(model: torch.nn.Module, source: str | None = None, *, strict: bool = True) -> torch.nn.Module:
    """Load weights into an existing model: ``source`` is a local path or URL, or None for the model's cfg.

    The checkpoint goes through :mod:`ssmzoo.hub` (safe loading, sha256 when known) and, when the model's family
    module defines one, its ``checkpoint_filter_fn`` (so official checkpoint files load as well as ours).
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if source is not None:
        is_url = "://" in source
        cfg.update(url=source if is_url else None, file=None if is_url else source, sha256=None)
    path = hub.resolve(cfg)
    state_dict = hub.load_state_dict(path, key=cfg.get("checkpoint_key"), prefix=cfg.get("checkpoint_prefix"))
    family = sys.modules.get(type(model).__module__)
    state_dict = hub.apply_checkpoint_filter(state_dict, model, getattr(family, "checkpoint_filter_fn", None))
    model.load_state_dict(state_dict, strict=strict)
    return model

"""Registration of ssmzoo models in timm's registry, and the list of which registered names are ours.

Families decorate their entry points with :func:`register_model` (timm's, which also records the name here) and
build their cfgs with :func:`generate_default_cfgs`, which accepts the extra cfg fields ssmzoo's hub needs.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
from timm.models import PretrainedCfg
from timm.models import generate_default_cfgs as _timm_generate_default_cfgs
from timm.models import register_model as _timm_register_model

__all__ = ["ZooPretrainedCfg", "generate_default_cfgs", "list_models", "register_model", "suggest_models"]

_ZOO_MODELS: set[str] = set()


@dataclass
class ZooPretrainedCfg(PretrainedCfg):
    """timm's PretrainedCfg plus what :mod:`ssmzoo.hub` needs to fetch and unpack official checkpoint files.

    sha256: expected hash of the file at ``url`` (None: unknown; the hub records it and warns once).
    checkpoint_key: entry of the checkpoint dict holding the weights (``"model"``, ``"state_dict"`` ...).
    checkpoint_prefix: prefix stripped from the keys (``"module."``, ``"model."``).
    """

    sha256: str | None = None
    checkpoint_key: str | None = None
    checkpoint_prefix: str | None = None


def generate_default_cfgs(cfgs: dict[str, dict[str, Any] | PretrainedCfg]):
    """timm's ``generate_default_cfgs`` with dict cfgs read as :class:`ZooPretrainedCfg`."""
    return _timm_generate_default_cfgs(
        {name: ZooPretrainedCfg(**cfg) if isinstance(cfg, dict) else cfg for name, cfg in cfgs.items()}
    )


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """timm's ``register_model``; the name is also recorded as an ssmzoo model."""
    fn = _timm_register_model(fn)
    _ZOO_MODELS.add(fn.__name__)
    return fn


def list_models(filter: str | list[str] = "", pretrained: bool = False, exclude_filters: str | list[str] = "",
                module: str = "") -> list[str]:
    """ssmzoo's models in timm's registry (``name`` or, with ``pretrained=True``, ``name.tag``), sorted."""
    names = timm.list_models(filter, module=module, pretrained=pretrained, exclude_filters=exclude_filters)
    return [name for name in names if name.split(".", 1)[0] in _ZOO_MODELS]


def suggest_models(name: str, n: int = 5) -> list[str]:
    """Registered names close to ``name`` (ssmzoo's first, then timm's), for error messages."""
    arch = name.split(".", 1)[0]
    ours = difflib.get_close_matches(arch, sorted(_ZOO_MODELS), n=n, cutoff=0.5)
    theirs = difflib.get_close_matches(arch, timm.list_models(), n=n, cutoff=0.6)
    return (ours + [t for t in theirs if t not in ours])[:n]

"""Collate functions registered in mmengine's ``FUNCTIONS`` (``collate_fn=dict(type=...)`` in a dataloader)."""
from __future__ import annotations

from collections.abc import Sequence

from mmengine.registry import FUNCTIONS

__all__ = ["list_collate"]


@FUNCTIONS.register_module()
def list_collate(batch: Sequence[dict]) -> dict[str, list]:
    """``[{"inputs": x_i, "data_samples": s_i}, ...]`` -> ``{"inputs": [x_i ...], "data_samples": [s_i ...]}``.

    Unlike mmengine's ``pseudo_collate``, per-sample dicts stay dicts (it would turn a list of dicts into a dict
    of lists); images of different sizes stay separate until the data preprocessor pads them.
    """
    return {key: [item[key] for item in batch] for key in batch[0]}

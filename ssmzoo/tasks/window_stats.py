"""Whole-input GroupNorm statistics for models run on windows of a long input.

A GroupNorm normalises each item with the mean and variance of the *whole* input (all time steps), so a model run
on one window of a file normalises with that window's statistics, not the file's. :class:`GroupNormStatistics`
fixes that in two passes: ``record()`` accumulates, over windows that tile the file, each GroupNorm's per-group sum
and sum of squares (float64); ``frozen()`` then makes every GroupNorm normalise with the pooled statistics, as if it
had seen the whole file. The pooled statistics of deeper layers are approximate (their inputs were computed with
per-window statistics in the first pass); figures for DPMamba-XS are in :mod:`ssmzoo.tasks.separation`.

Both passes assume batch size 1 (one file).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GroupNormStatistics"]


class GroupNormStatistics:
    """Pooled per-group statistics of every ``nn.GroupNorm`` in ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        self._sums: dict[int, torch.Tensor] = {}  # id(norm) -> (3, G): count, sum, sum of squares

    def __bool__(self) -> bool:
        return bool(self.norms)

    def reset(self) -> None:
        self._sums.clear()

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Inside: every GroupNorm works as usual and adds its input's per-group moments to the pool."""

        def recording(norm: nn.GroupNorm):
            def forward(x: torch.Tensor) -> torch.Tensor:
                if x.shape[0] != 1:
                    raise ValueError(f"GroupNormStatistics needs batch size 1, got input shape {tuple(x.shape)}")
                groups = x.detach().reshape(norm.num_groups, -1)
                moments = torch.stack([torch.full((norm.num_groups,), groups.shape[1], dtype=torch.float64),
                                       groups.sum(1, dtype=torch.float64),
                                       groups.square().sum(1, dtype=torch.float64)]).cpu()
                self._sums[id(norm)] = self._sums.get(id(norm), 0) + moments
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            return forward

        with self._forwards_replaced(recording):
            yield

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside: every GroupNorm normalises with the pooled statistics of :meth:`record`."""
        missing = [n for n in self.norms if id(n) not in self._sums]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(self.norms)} GroupNorms recorded nothing: run record() first")
        stats = {}
        for norm in self.norms:
            count, total, squares = self._sums[id(norm)]
            mean = total / count
            var = (squares / count - mean.square()).clamp_min(0)
            stats[id(norm)] = (mean.float(), (var + norm.eps).rsqrt().float())

        def normalising(norm: nn.GroupNorm):
            def forward(x: torch.Tensor) -> torch.Tensor:
                mean, inv_std = (s.to(x.device) for s in stats[id(norm)])
                groups = x.reshape(x.shape[0], norm.num_groups, -1)
                y = ((groups - mean[:, None]) * inv_std[:, None]).reshape(x.shape)
                if norm.affine:
                    shape = (1, -1) + (1,) * (x.dim() - 2)
                    y = y * norm.weight.view(shape) + norm.bias.view(shape)
                return y.to(x.dtype)
            return forward

        with self._forwards_replaced(normalising):
            yield

    @contextlib.contextmanager
    def _forwards_replaced(self, make_forward) -> Iterator[None]:
        # An instance attribute shadows nn.GroupNorm.forward for this module only; deleting it restores the class's.
        for norm in self.norms:
            norm.forward = make_forward(norm)
        try:
            yield
        finally:
            for norm in self.norms:
                del norm.forward

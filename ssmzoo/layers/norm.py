"""GroupNorm for few, large groups (a whole item's statistics, as SpeechBrain's "ln" / global layer norm).

PyTorch's CUDA GroupNorm takes each (item, group)'s mean and variance with one thread block
(``RowwiseMomentsCUDAKernel``), so a GroupNorm(1, C) over a (1, 256, 250, 34) activation runs one block over 2.2 M
elements: ~0.9 ms a call on an H100, a third of a DPMamba-M training step's GPU time at batch 1 (33 such norms).
:class:`LargeGroupNorm` takes the statistics with ``torch.var_mean`` (PyTorch's reduction kernel, spread over the
whole GPU) and normalises in one elementwise pass: at that input (bf16 autocast, H100) its kernels take 41 µs
instead of 948 for the forward, 177 instead of 974 with the backward, and a DPMamba-M training step's kernels 62.3
ms instead of 90.3 (`tools/benchmark.py model`; README). The price is host time: ~25 small ops instead of two (~0.2
ms more a forward and backward on a 2-core EPYC), which a host-bound eager step pays. Same parameters, state-dict
keys and results (to fp32 rounding); on the CPU it is ``nn.GroupNorm`` itself.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LargeGroupNorm", "group_norm_by_reduction"]


def group_norm_by_reduction(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
                            eps: float) -> Tensor:
    """``F.group_norm`` computed in fp32 with a reduction and elementwise ops; ``x`` is ``(B, C, *)`` in any
    layout (splitting C into groups is a view, so a permuted input is not copied) and the result keeps it. Returns
    fp32 (fp64 for fp64 input): the caller casts (autocast runs group_norm in fp32, eager keeps the input's dtype)."""
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"group_norm: input of shape {tuple(x.shape)} needs (B, C, ...) with C divisible by "
                         f"num_groups={num_groups}")
    grouped = x.unflatten(1, (num_groups, x.shape[1] // num_groups))  # (B, G, C/G, *)
    dims = tuple(range(2, grouped.dim()))
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    var, mean = torch.var_mean(grouped.to(stats_dtype), dim=dims, correction=0, keepdim=True)
    # y = x * scale + shift with a scale and shift per (item, channel), as PyTorch's own kernel computes it: one
    # elementwise pass over x (and one in the backward). Few ops: each costs host time in eager training.
    scale = torch.rsqrt(var + eps)
    channel_shape = (1, num_groups, x.shape[1] // num_groups) + (1,) * (x.dim() - 2)
    if weight is not None:
        scale = scale * weight.view(channel_shape)
    if bias is not None:
        shift = torch.addcmul(bias.view(channel_shape), mean, scale, value=-1)
    else:
        shift = mean * scale.neg()
    return torch.addcmul(shift, grouped, scale).flatten(1, 2)

class LargeGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same arguments, parameters and keys) whose CUDA forward uses
    :func:`group_norm_by_reduction`; see the module docstring for why."""

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_cuda:
            return super().forward(x)
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"{type(self).__name__}: input of shape {tuple(x.shape)} must be (B, {self.num_channels}, "
                             "...)")
        y = group_norm_by_reduction(x, self.num_groups, self.weight, self.bias, self.eps)
        # nn.GroupNorm's dtypes: fp32 under CUDA autocast (its fp32 op list), else the input's
        return y if torch.is_autocast_enabled("cuda") else y.to(x.dtype)


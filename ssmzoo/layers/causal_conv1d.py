"""Causal depthwise 1-D convolution, the short convolution in front of every Mamba-style selective scan.

Its parameters are those of the ``nn.Conv1d`` that mamba_ssm's ``Mamba`` keeps as ``conv1d`` (depthwise,
``weight`` (C, 1, K), ``bias`` (C,)), so official checkpoints load unchanged; only the padding differs: mamba_ssm pads
K - 1 zeros on both sides and crops the output to L (or calls the ``causal_conv1d`` CUDA kernel), here the input is
padded on one side only, which computes the same values without the discarded tail.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CausalConv1d"]


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over the last dim: (B, C, L) -> (B, C, L), same dtype.

    ``y[t] = bias + sum_j weight[:, 0, j] * x[t - (K - 1) + j]`` (zeros before the start), then the optional
    activation (``"silu"``, the fused option of the ``causal_conv1d`` kernel).

    ``reverse=True`` computes, in natural order, what the causal convolution gives on the *reversed* sequence:
    ``conv(x.flip(-1)).flip(-1)``, i.e. ``y[t] = bias + sum_j weight[:, 0, j] * x[t + (K - 1) - j]`` (zeros past the
    end). That is the backward direction of a bidirectional Mamba (bimamba ``conv1d_b``), obtained without flipping
    the activations, so the scan can read both directions from one natural-layout tensor.

    Args:
        channels: C (input and output channels; one filter per channel).
        kernel_size: K (``d_conv``; 4 in every Mamba model).
        bias: learnable per-channel bias.
        activation: None or ``"silu"``.
        reverse: anti-causal (backward-direction) convolution, see above.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True, activation: str | None = None,
                 reverse: bool = False, device=None, dtype=None) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias, device=device, dtype=dtype)
        if activation not in (None, "silu"):
            raise ValueError(f"CausalConv1d: activation must be None or 'silu', got {activation!r}")
        self.activation = activation
        self.reverse = reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = self.kernel_size[0]
        if self.reverse:
            # Causal on the reversed sequence == anti-causal with the taps in reverse order.
            y = F.conv1d(F.pad(x, (0, K - 1)), self.weight.flip(-1), self.bias, groups=self.groups)
        else:
            y = F.conv1d(F.pad(x, (K - 1, 0)), self.weight, self.bias, groups=self.groups)
        return F.silu(y) if self.activation == "silu" else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, reverse={self.reverse}"

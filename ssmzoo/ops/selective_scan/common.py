"""Pieces shared by the selective-scan backends: compute dtype, per-route selection, and the epilogue that is the
same in every backend (skip term D * u, gate silu(z), route merge, output layout and dtype)."""

from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F
from torch import Tensor

# True while the eager autograd Function runs a forward whose inputs it saves for the backward: a backend may then
# hand it re-laid-out copies of inputs to save instead (same values; ``saved_inputs`` of the Triton backend).
SAVING_FOR_BACKWARD: contextvars.ContextVar[bool] = contextvars.ContextVar("ssmzoo_scan_saving", default=False)
# Tensors a backend's forward computed for its own backward (the Triton backend's one-state checkpoints): while the
# eager autograd Function runs a forward, FORWARD_RESIDUALS holds a list the backend may append to; the Function
# saves them with its inputs and, while its backward runs, BACKWARD_RESIDUALS holds them (a tuple). A backend checks
# what it takes (shape, device) and recomputes whatever is missing.
FORWARD_RESIDUALS: contextvars.ContextVar[list | None] = contextvars.ContextVar("ssmzoo_scan_fwd_res", default=None)
BACKWARD_RESIDUALS: contextvars.ContextVar[tuple] = contextvars.ContextVar("ssmzoo_scan_bwd_res", default=())


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (tests, gradcheck), else float32: the recurrence never runs in half."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def route(x: Tensor | None, k: int, dim: int = 1) -> Tensor | None:
    """Route k's slice of a tensor whose ``dim`` has size 1 (shared by all routes) or K."""
    if x is None:
        return None
    return x.select(dim, 0 if x.shape[dim] == 1 else k)


def delta_of(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    """delta (B, K, D, L) + delta_bias (K, D), then softplus (mamba_ssm's: identity above 20), in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[None, :, :, None]
    return F.softplus(delta) if delta_softplus else delta


def epilogue(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, merge: str, channels_last: bool,
             out_dtype: torch.dtype | None) -> Tensor:
    """Finish the scan output y (B, K, D, L) in natural order (compute dtype).

    Returns sum/mean over routes of (y_k + D_k * u_k) * silu(z): (B, D, L), or (B, L, D) when channels_last; for
    merge "none", per route (B, K, D, L) or (B, L, K, D). Cast to ``out_dtype`` (default: y's dtype). The gate z
    is shared by the routes, so it multiplies after the merge (one product instead of K).
    """
    if D is not None:
        y = torch.addcmul(y, D.to(y.dtype)[None, :, :, None], u.to(y.dtype))
    if merge == "sum":
        y = y.sum(1)
    elif merge == "mean":
        y = y.mean(1)
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = y * (gate.unsqueeze(1) if merge == "none" else gate)
    if channels_last:
        y = y.movedim(-1, 1)
    return y.to(out_dtype or y.dtype)

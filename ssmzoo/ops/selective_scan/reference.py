"""The definition of the selective scan with routes: a sequential loop over routes and steps, plainly written.

For each route k, with h_{-1} = initial_state[:, k] (zeros by default) and p_t = order[k, t] the natural position
visited at step t (mamba_ssm's ``selective_scan_ref`` recurrence, per route):

    dt_t = softplus(delta[k, p_t] + delta_bias[k])                    (no softplus when delta_softplus=False)
    h_t  = exp(dt_t * A[k]) * h_{t-1} + dt_t * B[k, g(d), p_t] * u[k, p_t]     (per channel d and state n)
    y_k[p_t] = sum_n C[k, g(d), p_t] * h_t

then out_k = (y_k + D[k] * u_k) * silu(z) at natural positions, merged over k by sum or mean (or returned per
route). g(d) = d // (D / G) is the group of channel d. Everything runs in float32 (float64 when an input is
float64). Slow (a Python step per position and route); the other backends are tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmzoo.ops.selective_scan.common import compute_dtype, delta_of, epilogue, route


def _at(x: Tensor, pos: Tensor) -> Tensor:
    """x (B, ..., L) at the per-sample positions pos (Bi,) -> (B, ...)."""
    index = pos.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.take_along_dim(x, index, dim=-1).squeeze(-1)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                   delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool,
                   return_states: bool, out_dtype: torch.dtype | None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Selective scan on canonical views (``checks`` module docstring): u, delta (B, Ku, D, L); A (Ka, D, N);
    B, C (B, Kb, G, N, L); D, delta_bias (Kx, D); z (B, D, L); initial_state (B, K, D, N); order, inverse
    (Bi, K, L). ``merge`` is "sum", "mean" or "none".

    Returns (y, last_state, states): y as ``common.epilogue`` describes; last_state (B, K, D, N) and states
    (B, K, D, L, N) at natural positions in the compute dtype, or None when not requested.
    """
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, _, Dm, L = u.shape
    K, N, G = order.shape[-2], A.shape[-1], B.shape[2]
    dt_all = delta_of(delta, delta_bias, delta_softplus, dtype)
    ys, lasts, all_states = [], [], []
    for k in range(K):
        u_k, dt_k, A_k = route(u, k).to(dtype), route(dt_all, k), route(A, k, 0).to(dtype)
        B_k, C_k = route(B, k).to(dtype), route(C, k).to(dtype)
        h = u.new_zeros(batch, Dm, N, dtype=dtype) if initial_state is None else initial_state[:, k].to(dtype)
        y_steps, h_steps = [], []
        for t in range(L):
            pos = order[:, k, t]
            u_t, dt_t = _at(u_k, pos), _at(dt_k, pos)
            B_t = _at(B_k, pos).repeat_interleave(Dm // G, dim=1)
            C_t = _at(C_k, pos).repeat_interleave(Dm // G, dim=1)
            h = torch.exp(dt_t[..., None] * A_k) * h + (dt_t * u_t)[..., None] * B_t
            y_steps.append((h * C_t).sum(-1))
            h_steps.append(h)
        back = inverse[:, k]
        ys.append(torch.take_along_dim(torch.stack(y_steps, -1), back[:, None, :], dim=-1))
        lasts.append(h)
        if return_states:
            all_states.append(torch.take_along_dim(torch.stack(h_steps, -2), back[:, None, :, None], dim=-2))
    y = epilogue(torch.stack(ys, 1), u, D, z, merge, channels_last, out_dtype)
    return (y, torch.stack(lasts, 1) if return_last_state else None,
            torch.stack(all_states, 1) if return_states else None)

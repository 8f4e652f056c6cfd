"""Parallel pure-PyTorch selective scan: fast on the CPU and exportable to ONNX. Same contract as ``reference``,
plus an analytic backward (``selective_scan_backward``) that the ``torch.library`` op calls.

The routes are applied by gathering every input into route order once (``take_along_dim``; outputs and gradients
are gathered back with the inverse maps). The L steps are cut into nc chunks of T steps and scanned with a
reduce-then-scan scheme, each pass running its T steps for all chunks at once:

1. reduce: the state each chunk reaches from a zero state (nothing stored per step);
2. carries: the state entering chunk c + 1 is exp(A * sum of dt over chunk c) * (state entering c) + reduced_c,
   starting from initial_state (nc steps on (B, K, D, N) states);
3. scan: every chunk again from its carry, emitting y_t = C_t . h_t (or h_t).

The backward runs the same three passes in reverse time for the adjoint state. The only exponents are dt * A and
sums of them, all <= 0 (A <= 0, dt >= 0), so nothing overflows at any L or delta, and no decay is formed as a
difference of cumulative sums (no cancellation at large delta). The work is linear in L, the (B, K, D, L, N)
tensors are touched a handful of times, and the Python loops run 2T + nc ~ 2.8 sqrt(L) short steps. Those loops
unroll in traced graphs: an exported graph is specialised to its sequence length (export with static shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmzoo.ops.selective_scan.common import compute_dtype, epilogue


def chunk_length(L: int) -> int:
    """T minimising the 2T + ceil(L / T) sequential steps of one direction's three passes."""
    return max(1, round(math.sqrt(L / 2)))


def _routed(x: Tensor, order: Tensor) -> Tensor:
    """x (B, Kx, *f, L) in natural order -> (B, K, *f, L) in route order (Kx = 1 broadcasts to K).

    An explicit expand + gather rather than take_along_dim: its implicit broadcast would pin a symbolic batch
    size during export, and it wraps negative indices we never have."""
    shape = (x.shape[0], order.shape[1], *x.shape[2:-1], order.shape[-1])
    index = order.reshape(*order.shape[:2], *([1] * (x.dim() - 3)), order.shape[-1]).expand(shape)
    return torch.gather(x.expand(shape), -1, index)


def _natural(x: Tensor, inverse: Tensor, shared: bool) -> Tensor:
    """Route-order x (B, K, *f, L) back to natural order; summed over routes when the input was shared."""
    x = _routed(x, inverse)
    return x.sum(1, keepdim=True) if shared else x


@dataclass
class _Chunks:
    """One call's inputs in route order and chunk layout: full tensors are (B, K, G, Dg, nc, T, N)."""

    L: int
    T: int
    nc: int
    x: Tensor  # delta + delta_bias before softplus, (B, K, D, L)
    dt: Tensor  # (B, K, G, Dg, nc, T, 1)
    u: Tensor  # (B, K, G, Dg, nc, T, 1)
    B: Tensor  # (B, K, G, 1, nc, T, N)
    C: Tensor  # (B, K, G, 1, nc, T, N)
    A: Tensor  # (Ka, G, Dg, 1, 1, N)
    decay: Tensor  # exp(dt * A), full
    bu: Tensor  # dt * u * B, full
    chunk_decay: Tensor  # exp(A * sum of dt over each chunk), (B, K, G, Dg, nc, N)


def _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype) -> _Chunks:
    L, Dm, G = u.shape[-1], u.shape[2], B.shape[2]
    T = chunk_length(L)
    nc = -(-L // T)
    pad = (0, nc * T - L)  # padded steps have dt = 0, u = 0: decay 1 and input 0 leave the state unchanged
    x = _routed(delta, order).to(dtype)
    if delta_bias is not None:
        x = x + delta_bias.to(dtype)[None, :, :, None]
    dt = F.softplus(x) if delta_softplus else x
    per_channel = lambda t: F.pad(t, pad).unflatten(2, (G, Dm // G)).unflatten(-1, (nc, T)).unsqueeze(-1)  # noqa: E731
    per_group = lambda t: F.pad(_routed(t, order).to(dtype), pad).unflatten(-1, (nc, T)).movedim(3, -1).unsqueeze(3)  # noqa: E731,E501
    dt_c, u_c, B_c, C_c = per_channel(dt), per_channel(_routed(u, order).to(dtype)), per_group(B), per_group(C)
    A_c = A.to(dtype).unflatten(1, (G, Dm // G))[:, :, :, None, None, :]
    return _Chunks(L=L, T=T, nc=nc, x=x, dt=dt_c, u=u_c, B=B_c, C=C_c, A=A_c, decay=torch.exp(dt_c * A_c),
                   bu=dt_c * u_c * B_c, chunk_decay=torch.exp(dt_c.sum(-2) * A_c.squeeze(-2)))


def _scan(ch: _Chunks, h0: Tensor | None, outputs: bool, states: bool) -> tuple[list, list, Tensor]:
    """Forward passes. Returns per step t < T (each over all chunks) y_t = C_t . h_t if ``outputs`` and h_t if
    ``states`` (else empty lists), and the final state."""
    h = torch.zeros_like(ch.bu[..., 0, :])
    for t in range(ch.T):
        h = ch.decay[..., t, :] * h + ch.bu[..., t, :]
    carry = torch.zeros_like(h[..., 0, :]) if h0 is None else h0
    carries = []
    for c in range(ch.nc):
        carries.append(carry)
        carry = ch.chunk_decay[..., c, :] * carry + h[..., c, :]
    h = torch.stack(carries, -2)
    ys, hs = [], []
    for t in range(ch.T):
        h = ch.decay[..., t, :] * h + ch.bu[..., t, :]
        if outputs:
            ys.append((h * ch.C[..., t, :]).sum(-1))
        if states:
            hs.append(h)
    return ys, hs, carry


def _adjoint(ch: _Chunks, e: Tensor, dlast: Tensor | None) -> tuple[Tensor, Tensor]:
    """Reverse passes for g_t = dL/dh_t = e_t + decay_{t+1} g_{t+1} (g_last also gets dlast).

    e: (B, K, G, Dg, nc, T, N). Returns g (same shape) and dL/d(initial state) = decay_0 g_0.
    """
    p = torch.zeros_like(e[..., 0, :])
    for t in reversed(range(ch.T)):
        p = ch.decay[..., t, :] * (p + e[..., t, :])
    flow = torch.zeros_like(p[..., 0, :]) if dlast is None else dlast
    flows = [flow] * ch.nc
    for c in reversed(range(ch.nc)):
        flows[c] = flow
        flow = p[..., c, :] + ch.chunk_decay[..., c, :] * flow
    p = torch.stack(flows, -2)
    g = [p] * ch.T
    for t in reversed(range(ch.T)):
        g[t] = p + e[..., t, :]
        p = ch.decay[..., t, :] * g[t]
    return torch.stack(g, -2), flow


def _full(x: Tensor, L: int) -> Tensor:
    """(B, K, G, Dg, nc, T, *f) chunk layout -> (B, K, D, L, *f), padding cropped."""
    return x.flatten(2, 3).flatten(3, 4)[:, :, :, :L]


def _per_group(x: Tensor, L: int) -> Tensor:
    """(B, K, G, 1, nc, T, N) -> (B, K, G, N, L)."""
    return x.squeeze(3).flatten(3, 4)[..., :L, :].transpose(-1, -2)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                   delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool,
                   return_states: bool, out_dtype: torch.dtype | None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Same contract as ``reference.selective_scan``."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    ch = _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype)
    h0 = None if initial_state is None else initial_state.to(dtype).unflatten(2, (ch.B.shape[2], -1))
    ys, hs, last = _scan(ch, h0, outputs=True, states=return_states)
    y = _full(torch.stack(ys, -1), ch.L)
    states = None
    if return_states:
        states = _routed(_full(torch.stack(hs, -2), ch.L).transpose(-1, -2), inverse).transpose(-1, -2)
    y = epilogue(_routed(y, inverse), u, D, z, merge, channels_last, out_dtype)
    return y, last.flatten(2, 3) if return_last_state else None, states


def selective_scan_backward(dy: Tensor, dlast: Tensor | None, dstates: Tensor | None, u: Tensor, delta: Tensor,
                            A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                            delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                            delta_softplus: bool, merge: str, channels_last: bool,
                            out_dtype: torch.dtype | None) -> list[Tensor | None]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) in their canonical shapes (None where an
    input is None), for the output gradient ``dy`` (the layout of y), ``dlast`` (B, K, D, N) and ``dstates``
    (B, K, D, L, N), either may be None. The forward is recomputed (states are not kept between the passes).
    ``out_dtype`` is part of the common backend signature; gradients are returned in the inputs' dtypes."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    ch = _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype)
    batch, K, G, L = u.shape[0], order.shape[-2], B.shape[2], ch.L
    h0 = None if initial_state is None else initial_state.to(dtype).unflatten(2, (G, -1))
    ys, hs, _ = _scan(ch, h0, outputs=z is not None, states=True)
    h = torch.stack(hs, -2)  # (B, K, G, Dg, nc, T, N), route order

    # Epilogue backward, natural order: out_k = (y_k + D_k u_k) * silu(z), merged.
    dy = dy.to(dtype)
    dy = dy.movedim(1, -1) if channels_last else dy
    g = dy if merge == "none" else (dy / K if merge == "mean" else dy).unsqueeze(1)  # (B, K or 1, D, L)
    uu = u.to(dtype)
    grads: dict[str, Tensor | None] = {}
    if z is not None:
        zz = z.to(dtype)
        sig = torch.sigmoid(zz)
        pre = _routed(_full(torch.stack(ys, -1), L), inverse)
        if D is not None:
            pre = pre + D.to(dtype)[None, :, :, None] * uu
        grads["z"] = (pre * g).sum(1) * (sig * (1 + zz * (1 - sig)))
        g = g * (zz * sig).unsqueeze(1)
    g = g.expand(batch, K, *g.shape[2:])
    du = torch.zeros_like(uu.expand(batch, K, *uu.shape[2:])) if D is None else g * D.to(dtype)[None, :, :, None]
    if D is not None:
        dD = (g * uu).sum((0, 3))
        grads["D"] = dD.sum(0, keepdim=True) if D.shape[0] == 1 else dD

    # Scan backward, route order, chunk layout.
    pad = (0, ch.nc * ch.T - L)
    dy_c = F.pad(_routed(g, order), pad).unflatten(2, (G, -1)).unflatten(-1, (ch.nc, ch.T)).unsqueeze(-1)
    e = dy_c * ch.C
    if dstates is not None:
        ds = F.pad(_routed(dstates.to(dtype).transpose(-1, -2), order), pad)  # (B, K, D, N, L')
        e = e + ds.unflatten(-1, (ch.nc, ch.T)).movedim(3, -1).unflatten(2, (G, -1))
    adj, dh0 = _adjoint(ch, e, None if dlast is None else dlast.to(dtype).unflatten(2, (G, -1)))

    flat = h.flatten(4, 5)
    first = torch.zeros_like(flat[..., :1, :]) if h0 is None else h0.unsqueeze(-2)
    h_prev = torch.cat([first, flat[..., :-1, :]], -2).unflatten(4, (ch.nc, ch.T))
    w = adj * ch.decay * h_prev  # g_t * exp(dt A) * h_{t-1}: d/d(dt A) of the decayed state
    gb = adj * ch.B
    ddt = (ch.u * gb).sum(-1, keepdim=True) + (w * ch.A).sum(-1, keepdim=True)
    du_route = _full((ch.dt * gb).sum(-1), L)
    ddt = _full(ddt.squeeze(-1), L)
    grads["C"] = _natural(_per_group((dy_c * h).sum(3, keepdim=True), L), inverse, C.shape[1] == 1)
    grads["B"] = _natural(_per_group((adj * ch.dt * ch.u).sum(3, keepdim=True), L), inverse, B.shape[1] == 1)
    dA = (w * ch.dt).sum((0, 4, 5)).flatten(1, 2)  # (K, D, N)
    grads["A"] = dA.sum(0, keepdim=True) if A.shape[0] == 1 else dA
    if delta_softplus:
        ddt = ddt * torch.where(ch.x > 20, torch.ones_like(ch.x), torch.sigmoid(ch.x))
    if delta_bias is not None:
        db = ddt.sum((0, 3))
        grads["delta_bias"] = db.sum(0, keepdim=True) if delta_bias.shape[0] == 1 else db
    grads["delta"] = _natural(ddt, inverse, delta.shape[1] == 1)
    du = du + _routed(du_route, inverse)
    grads["u"] = du.sum(1, keepdim=True) if u.shape[1] == 1 else du
    if initial_state is not None:
        grads["initial_state"] = dh0.flatten(2, 3)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [None if x is None else grads[n].to(x.dtype) for n, x in zip(names, inputs, strict=True)]


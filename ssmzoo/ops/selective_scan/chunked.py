"""Parallel pure-PyTorch selective scan: fast on the CPU and exportable to ONNX. Same contract as ``reference``,
plus an analytic backward (``selective_scan_backward``) that the ``torch.library`` op calls.

The L steps of every route are cut into nc chunks of T steps and scanned with a reduce-then-scan scheme whose
passes run their T steps for all chunks (and batches, routes, channels, states) at once:

1. reduce: the state each chunk reaches from a zero state;
2. carries: the state entering chunk c + 1 is exp(A * sum of dt over chunk c) * (state entering c) + reduced_c,
   starting from initial_state (nc steps on (B, K, D, N) states);
3. scan: every chunk again from its carry, emitting y_t = C_t . h_t (and h_t when asked).

The backward keeps, from one forward pass, only the state entering every block of steps, then walks the blocks in
reverse: each block's states and decays are recomputed in cache-sized buffers, the adjoint recurrence runs in
reverse time (chunk carries as in the forward), and every gradient is formed with a few block-wide operations.

Why this shape: Mamba-1 has one decay per (channel, state), so the recurrence does not reduce to matrix
products; its cost is a few elementwise operations per (b, k, d, l, n), and on a CPU what counts is the number of
PyTorch calls and passes over memory. Steps are handled in blocks of Tb: one call forms exp(dt * A), one dt * u * B
for the whole block (step-major, channels innermost: long contiguous loops), then the recurrence is one fused
multiply-add per step written into the block in place, so the block ends up holding its states; contractions over
N or over a group's channels are batched matrix products. ``plan`` sizes nc and Tb from the state size per step.
Routes cost one gather per input and output: one index_select of runs of channels straight from the caller's
layout into the step-major one and back (``index`` = the route's order, padded to nc * T; padded steps are masked
to dt = 0 and u = 0, which leaves the state unchanged). Channels-last activations are read in place; channels-first
ones take one transposed copy first. Two scratch buffers alternate from block to block, so a block's final state
survives the next block without a copy, and large batches run in slices of samples (``SLICE_ELEMENTS``).

The only exponents are dt * A and sums of them, all <= 0 (A <= 0, dt >= 0): nothing overflows at any L or delta,
and no decay is formed as a difference of cumulative sums (no cancellation at large delta).

Temporaries are written in place into a few buffers reused from block to block, so neither function may run
under autograd: the op's backward is ``selective_scan_backward``, and the ONNX export traces the forward under
no_grad. The Python loops unroll in traced graphs: an exported graph is specialised to its sequence length
(export with static L / H x W; the batch may be dynamic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmzoo.ops.selective_scan.checks import is_tracing
from ssmzoo.ops.selective_scan.common import compute_dtype, epilogue

STEP_ELEMENTS = 1 << 14  # aim for one step's state over all chunks, B*K*D*N*nc, of at least this many entries
BLOCK_ELEMENTS = 1 << 18  # and for blocks of Tb steps of about this many (a few such operands stay in cache)
SLICE_ELEMENTS = 1 << 19  # the forward runs a batch in slices of samples whose state per step is at most this


def plan(L: int, elements: int) -> tuple[int, int, int]:
    """(T, nc, Tb) for L steps with ``elements`` = B * K * D * N state entries per step: nc chunks of T steps
    (nc <= sqrt(L); one chunk when a step's state is large enough alone), blocks of Tb steps."""
    nc = min(max(1, -(-STEP_ELEMENTS // elements)), max(1, math.isqrt(L)))
    T = -(-L // nc)
    nc = -(-L // T)
    return T, nc, min(T, max(1, BLOCK_ELEMENTS // (nc * elements)))


def _gather_rows(rows: Tensor, index: Tensor) -> Tensor:
    """rows (B, Kx, L, *f) -> (B, K, L', *f), row t of route k = rows[:, k or 0, index[:, k, t]].

    One index_select of whole rows (contiguous runs of *f) over the flattened (B, Kx, L): far faster on the CPU
    than an element-wise gather, and exportable with a dynamic batch."""
    batch, Kx, L = rows.shape[:3]
    K = index.shape[1]
    base = torch.arange(batch, device=rows.device)[:, None] * Kx
    if Kx > 1:
        base = base + torch.arange(K, device=rows.device)
    flat = (index + (base * L)[:, :, None]).flatten()
    picked = rows.reshape(batch * Kx * L, -1).index_select(0, flat)
    return picked.view(batch, K, index.shape[2], *rows.shape[3:])


def _rows(x: Tensor) -> Tensor:
    """Canonical (B, K, *f, L) -> the view (B, K, L, *f)."""
    return x.movedim(-1, 2)


def _natural(rows: Tensor, inverse: Tensor, shared: bool) -> Tensor:
    """Route-order rows (B, K, L', *f) -> canonical natural order (B, K or 1, *f, L), summed over the routes when
    the input was shared."""
    x = _gather_rows(rows, inverse)
    return (x.sum(1, keepdim=True) if shared else x).movedim(2, -1)


def _flat_runs(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """x (..., F) -> (a 2-D view whose rows are runs of F, the element stride of each leading dim).

    When the runs are contiguous and every leading stride is a multiple of F (a contiguous tensor, a channels-last
    activation, a slice of per-route stacks), the view reads x's memory in place; otherwise x is copied once. An
    exported graph always takes the copy (as_strided does not export)."""
    F_ = x.shape[-1]
    in_place = x.stride(-1) == 1 and all(s % F_ == 0 for s in x.stride()[:-1]) and not is_tracing()
    if not in_place:
        x = x.contiguous()
        return x.view(-1, F_), x.stride()[:-1]
    extent = sum((n - 1) * s for n, s in zip(x.shape[:-1], x.stride()[:-1], strict=True)) // F_ + 1
    return x.as_strided((extent, F_), (F_, 1)), x.stride()[:-1]


def _route_steps(rows: Tensor, index: Tensor, T: int, nc: int, G: int) -> Tensor:
    """Rows (B, Kx, L, G * F) or (B, Kx, L, G, F) -> step-major (T, B, K, G, nc, F): entry (t, b, k, g, c) is row
    index[b, k, c * T + t] (index (B or 1, K, nc * T)) of route k (route 0 when Kx = 1), group g.

    One index_select of runs of F: a single pass from the caller's layout into the scan's (no transposed copy
    first when the runs are contiguous in memory)."""
    batch, Kx, L = rows.shape[:3]
    K = index.shape[1]
    x = rows.unflatten(3, (G, -1)) if rows.dim() == 4 else rows
    flat, (sb, sk, sl, sg) = _flat_runs(x)
    F_ = x.shape[-1]
    dev = rows.device
    offset = index.view(index.shape[0], K, nc, T).permute(3, 0, 1, 2).unsqueeze(3) * sl  # (T, Bi, K, 1, nc)
    offset = offset + (torch.arange(batch, device=dev) * sb).view(1, -1, 1, 1, 1)
    if Kx > 1:
        offset = offset + (torch.arange(K, device=dev) * sk).view(1, 1, -1, 1, 1)
    offset = offset + (torch.arange(G, device=dev) * sg).view(1, 1, 1, -1, 1)
    picked = flat.index_select(0, (offset // F_).flatten())
    return picked.view(T, batch, K, G, nc, F_)


def _natural_steps(steps: Tensor, inverse: Tensor, T: int) -> Tensor:
    """Step-major (T, B, K, G, nc, F) -> canonical natural order (B, K, G * F, L), through one index_select into
    contiguous rows (B, K, L, G * F): position l of route k is step inverse[b, k, l]."""
    _, batch, K, G, nc, F_ = steps.shape
    L = inverse.shape[-1]
    dev = steps.device
    c, t = inverse.div(T, rounding_mode="floor"), inverse.remainder(T)  # (Bi, K, L)
    row = ((t.unsqueeze(-1) * batch + torch.arange(batch, device=dev).view(-1, 1, 1, 1)) * K
           + torch.arange(K, device=dev).view(1, -1, 1, 1)) * G + torch.arange(G, device=dev).view(1, 1, 1, -1)
    row = row * nc + c.unsqueeze(-1)  # (B, K, L, G)
    picked = steps.reshape(-1, F_).index_select(0, row.flatten())
    return picked.view(batch, K, L, G * F_).movedim(2, -1)


@dataclass
class _Chunks:
    """One call's inputs in route order, step-major: ``x[t0:t1]`` is steps t0..t1-1 of every chunk.

    States are (B, K, G, nc, N, Dg), channels innermost. Per channel (T, B, K, G, nc, 1, Dg): dt, u, du = dt * u
    (dt and du are 0 on padded steps). Per group (T, B, K, G, nc, N, 1): B, C. A: (1, Ka, G, 1, N, Dg), and
    A2 = A log2(e): decays are exp2(dt * A2), about twice as fast as exp on CPUs. chunk_decay: exp(A * sum of dt
    over each chunk), (B, K, G, nc, N, Dg), when nc > 1. x: delta + delta_bias before the softplus, per channel.
    valid: 1 on real steps, 0 on padded ones, (nc * T,), None without padding. index: the routes' order padded to
    (Bi, K, nc * T).
    """

    L: int
    T: int
    nc: int
    Tb: int
    G: int
    index: Tensor
    valid: Tensor | None
    x: Tensor
    dt: Tensor
    u: Tensor | None
    du: Tensor
    B: Tensor
    C: Tensor
    A: Tensor
    A2: Tensor
    chunk_decay: Tensor | None
    scratch: dict[str, Tensor] = field(default_factory=dict)

    def buffer(self, name: str, steps: int, rows: int | None = None) -> Tensor:
        """A (steps, B, K, G, nc, N, Dg) scratch view of a buffer of ``rows`` (default Tb) steps, allocated once
        per call and reused by every block."""
        if name not in self.scratch:
            self.scratch[name] = self.dt.new_empty(rows or self.Tb, *self.B.shape[1:-1], self.dt.shape[-1])
        return self.scratch[name][:steps]

    def block_inputs(self, t0: int, t1: int) -> Tensor:
        """``input`` into one of two scratch buffers, alternating from block to block: the states a block ends
        with stay valid while the next block is computed (no copy of the last state per block)."""
        return self.input(t0, t1, out=self.buffer(("input", t0 // self.Tb % 2), t1 - t0))

    def blocks(self) -> list[tuple[int, int]]:
        return [(t0, min(t0 + self.Tb, self.T)) for t0 in range(0, self.T, self.Tb)]

    def decay(self, t0: int, t1: int, out: Tensor | None = None) -> Tensor:
        """exp(dt * A) of steps t0..t1-1, (t1 - t0, B, K, G, nc, N, Dg), in ``out`` (default: a scratch buffer)."""
        out = self.buffer("decay", t1 - t0) if out is None else out
        return torch.mul(self.dt[t0:t1], self.A2, out=out).exp2_()

    def input(self, t0: int, t1: int, out: Tensor | None = None) -> Tensor:
        """dt * u * B of steps t0..t1-1, (t1 - t0, B, K, G, nc, N, Dg), in ``out`` (default: a scratch buffer)."""
        out = self.buffer("input", t1 - t0) if out is None else out
        return torch.mul(self.du[t0:t1], self.B[t0:t1], out=out)

    def masked(self, x: Tensor) -> Tensor:
        """Per channel (T, B, K, G, nc, 1, Dg), zero on padded steps."""
        if self.valid is None:
            return x
        return x * self.valid.view(self.nc, self.T).t().reshape(self.T, 1, 1, 1, self.nc, 1, 1)

    def state_steps(self, rows: Tensor) -> Tensor:
        """Route-order rows (B, K, nc * T, D, N) -> (T, B, K, G, nc, N, Dg), zero on padded steps."""
        if self.valid is not None:
            rows = rows * self.valid[:, None, None]
        return rows.unflatten(2, (self.nc, self.T)).unflatten(4, (self.G, -1)).permute(3, 0, 1, 4, 2, 6, 5).contiguous()

    def state(self, x: Tensor) -> Tensor:
        """(B, K, D, N) -> (B, K, G, N, Dg)."""
        return x.unflatten(2, (self.G, -1)).transpose(-1, -2)

    def group_rows(self, x: Tensor) -> Tensor:
        """Per group (T, B, K, G, nc, N, 1) -> route-order rows (B, K, nc * T, G, N)."""
        return x.squeeze(-1).permute(1, 2, 4, 0, 3, 5).flatten(2, 3)

    def state_rows(self, x: Tensor) -> Tensor:
        """States (T, B, K, G, nc, N, Dg) -> route-order rows (B, K, nc * T, D, N)."""
        return x.permute(1, 2, 4, 0, 3, 6, 5).flatten(4, 5).flatten(2, 3)


def _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype, backward: bool = False) -> _Chunks:
    """The inputs in chunk layout; u itself (besides dt * u) only for the ``backward``."""
    batch, K, Dm, L = u.shape[0], order.shape[-2], u.shape[2], u.shape[-1]
    G, N = B.shape[2], A.shape[-1]
    # A symbolic batch (export with a dynamic batch) must not shape the unrolled loops: plan as for batch 1.
    T, nc, Tb = plan(L, (batch if isinstance(batch, int) else 1) * K * Dm * N)
    index = F.pad(order, (0, nc * T - L))  # padded steps read position 0, then are masked

    def channel_steps(x: Tensor) -> Tensor:  # canonical (B, Kx, D, L) -> (T, B, K, G, nc, 1, Dg)
        return _route_steps(_rows(x), index, T, nc, G).unsqueeze(-2).to(dtype)

    def group_steps(x: Tensor) -> Tensor:  # canonical (B, Kx, G, N, L) -> (T, B, K, G, nc, N, 1)
        return _route_steps(_rows(x), index, T, nc, G).unsqueeze(-1).to(dtype)

    valid = (torch.arange(nc * T, device=u.device) < L).to(dtype) if nc * T > L else None
    x = channel_steps(delta)
    if delta_bias is not None:
        x = x + delta_bias.to(dtype).view(1, 1, delta_bias.shape[0], G, 1, 1, -1)
    dt = F.softplus(x) if delta_softplus else x
    uu = channel_steps(u)
    A = A.to(dtype).unflatten(1, (G, Dm // G)).transpose(-1, -2)[None, :, :, None].contiguous()
    ch = _Chunks(L=L, T=T, nc=nc, Tb=Tb, G=G, index=index, valid=valid, x=x, dt=dt, u=uu if backward else None,
                 du=uu, B=group_steps(B), C=group_steps(C), A=A, A2=A * math.log2(math.e), chunk_decay=None)
    ch.dt = ch.masked(dt)
    ch.du = ch.dt * uu if backward else uu.mul_(ch.dt)
    if nc > 1:
        ch.chunk_decay = (ch.dt.sum(0) * ch.A2).exp2_()
    return ch


def _recur(decay: Tensor, states: Tensor, h: Tensor | None) -> Tensor:
    """h_t = decay_t h_{t-1} + input_t over a block, in place: ``states`` holds the inputs and ends up holding
    the states. Returns the last state."""
    for i in range(states.shape[0]):
        h = states[i] if h is None else states[i].addcmul_(decay[i], h)
    return h


def _contract_states(x: Tensor, h: Tensor, out: Tensor | None = None) -> Tensor:
    """sum_n x_n h_n: x (..., N, 1), h (..., N, Dg) -> (..., 1, Dg); a batched product unless N = 1."""
    if x.shape[-2] == 1:
        return torch.mul(h, x, out=out)
    return torch.matmul(x.transpose(-1, -2), h, out=out)


def _entry_states(ch: _Chunks, h0: Tensor | None) -> Tensor | None:
    """Reduce and carry passes: the state entering every chunk, (B, K, G, nc, N, Dg); None for zeros."""
    if ch.nc == 1:
        return None if h0 is None else h0.unsqueeze(3)
    h = None
    for t0, t1 in ch.blocks():
        h = _recur(ch.decay(t0, t1), ch.block_inputs(t0, t1), h)
    carry = torch.zeros_like(h[:, :, :, 0]) if h0 is None else h0
    carries = [carry]
    for c in range(ch.nc - 1):
        carry = torch.addcmul(h[:, :, :, c], ch.chunk_decay[:, :, :, c], carry)
        carries.append(carry)
    return torch.stack(carries, 3)


def _scan(ch: _Chunks, h: Tensor | None, states: Tensor | None = None, keep_entries: bool = False
          ) -> tuple[Tensor, list[Tensor | None], Tensor]:
    """Scan pass from the entry states h. Returns y = C . h, (T, B, K, G, nc, 1, Dg), the state entering every
    block (B, K, G, nc, N, Dg; None for zeros) when ``keep_entries`` (else an empty list) and the final state
    (B, K, G, N, Dg). ``states`` ((T, B, K, G, nc, N, Dg)), when given, receives every state."""
    if states is None and not keep_entries and ch.Tb == 1:
        return _scan_steps_in_place(ch, h)
    y, entries = ch.dt.new_empty(ch.dt.shape), []
    for t0, t1 in ch.blocks():
        if keep_entries:
            entries.append(h)
        block = ch.block_inputs(t0, t1) if states is None else ch.input(t0, t1, out=states[t0:t1])
        h = _recur(ch.decay(t0, t1), block, h)
        _contract_states(ch.C[t0:t1], block, out=y[t0:t1])
        if keep_entries and states is None:
            h = h.clone()  # the block after next overwrites this buffer
    return y, entries, h[:, :, :, -1]


def _scan_steps_in_place(ch: _Chunks, h: Tensor | None) -> tuple[Tensor, list[Tensor | None], Tensor]:
    """``_scan`` when blocks are single steps (a large state per step) and only y and the final state are wanted:
    h = decay * h + du * B updated in place, two passes over the state per step instead of three."""
    y, private = ch.dt.new_empty(ch.dt.shape), False
    for t in range(ch.T):
        if h is None:
            h, private = torch.mul(ch.du[t], ch.B[t]), True
        else:
            decay = ch.decay(t, t + 1)[0]
            h = h.mul_(decay) if private else h * decay  # never write into the caller's initial state
            h.addcmul_(ch.du[t], ch.B[t])
            private = True
        _contract_states(ch.C[t], h, out=y[t])
    return y, [], h[:, :, :, -1]


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                   delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool,
                   return_states: bool, out_dtype: torch.dtype | None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Same contract as ``reference.selective_scan``.

    A batch whose state per step exceeds SLICE_ELEMENTS runs as slices of samples, one after the other: every
    temporary then stays cache-sized (a step over the whole of a large batch streams through memory and runs
    about 1.5x slower per state entry), and the freshly allocated temporaries stay small."""
    batch, per_sample = u.shape[0], order.shape[-2] * u.shape[2] * A.shape[-1]
    step = max(1, SLICE_ELEMENTS // per_sample)
    if not isinstance(batch, int) or batch <= step:  # a symbolic batch (ONNX export) is never sliced
        return _selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse, delta_softplus,
                               merge, channels_last, return_last_state, return_states, out_dtype)
    def cut(x: Tensor | None, b0: int) -> Tensor | None:  # per-sample tensors; a batch of 1 is shared by all
        return x[b0:b0 + step] if x is not None and x.shape[0] == batch else x

    parts = [_selective_scan(cut(u, b0), cut(delta, b0), A, cut(B, b0), cut(C, b0), D, cut(z, b0), delta_bias,
                             cut(initial_state, b0), cut(order, b0), cut(inverse, b0), delta_softplus, merge,
                             channels_last, return_last_state, return_states, out_dtype)
             for b0 in range(0, batch, step)]
    return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True))


def _selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                    z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor,
                    inverse: Tensor, delta_softplus: bool, merge: str, channels_last: bool,
                    return_last_state: bool, return_states: bool, out_dtype: torch.dtype | None
                    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    ch = _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype)
    h0 = None if initial_state is None else ch.state(initial_state.to(dtype))
    hs = ch.dt.new_empty(ch.T, *ch.B.shape[1:-1], ch.dt.shape[-1]) if return_states else None
    ys, _, last = _scan(ch, _entry_states(ch, h0), states=hs)
    y = epilogue(_natural_steps(ys.squeeze(-2), inverse, ch.T), u, D, z, merge, channels_last, out_dtype)
    states = _natural(ch.state_rows(hs), inverse, False).movedim(-1, -2) if return_states else None
    return y, last.transpose(-1, -2).flatten(2, 3).clone() if return_last_state else None, states


def _adjoint(e: Tensor, decay: Tensor, p: Tensor | None) -> Tensor:
    """Reverse recurrence over a block, in place: adj_t = e_t + decay_{t+1} adj_{t+1}; ``p`` = decay_{t1} adj_{t1}
    enters from the right. ``e`` ends up holding adj. Returns decay_{t0} adj_{t0}, what passes to the left."""
    last = e.shape[0] - 1
    if p is not None:
        e[last].add_(p)
    for i in reversed(range(last)):
        e[i].addcmul_(decay[i + 1], e[i + 1])
    return decay[0] * e[0]


def _dy_view(dy: Tensor, merge: str, channels_last: bool) -> Tensor:
    """The output gradient in its layout -> canonical (B, K or 1, D, L) view."""
    if channels_last:
        dy = dy.movedim(1, -1)
    return dy if merge == "none" else dy.unsqueeze(1)


def selective_scan_backward(dy: Tensor, dlast: Tensor | None, dstates: Tensor | None, u: Tensor, delta: Tensor,
                            A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                            delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                            delta_softplus: bool, merge: str, channels_last: bool,
                            out_dtype: torch.dtype | None) -> list[Tensor | None]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) in their canonical shapes and dtypes (None
    where an input is None), for the output gradient ``dy`` (the layout of y), ``dlast`` (B, K, D, N) and
    ``dstates`` (B, K, D, L, N), either may be None. The forward is recomputed. ``out_dtype`` is part of the common
    backend signature; dy may have any floating dtype."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    ch = _chunks(u, delta, A, B, C, delta_bias, order, delta_softplus, dtype, backward=True)
    batch, K = u.shape[0], order.shape[-2]
    h0 = None if initial_state is None else ch.state(initial_state.to(dtype))
    # A forward pass keeps only the state entering every block; each block's states and decays are recomputed
    # from it in the reverse pass, so everything stays in cache-sized buffers.
    ys, entries, _ = _scan(ch, _entry_states(ch, h0), keep_entries=True)

    # Epilogue backward, natural order: out_k = (y_k + D_k u_k) * silu(z), merged.
    g = _dy_view(dy.to(dtype), merge, channels_last)
    if merge == "mean":
        g = g / K
    uu = u.to(dtype)
    grads: dict[str, Tensor | None] = {}
    if z is not None:
        zz = z.to(dtype)
        sig = torch.sigmoid(zz)
        pre = _natural_steps(ys.squeeze(-2), inverse, ch.T)
        if D is not None:
            pre = pre + D.to(dtype)[None, :, :, None] * uu
        grads["z"] = (pre * g).sum(1) * (sig * (1 + zz * (1 - sig)))
        g = g * (zz * sig).unsqueeze(1)
    g = g.expand(batch, K, *g.shape[2:])
    du = g * D.to(dtype)[None, :, :, None] if D is not None else None
    if D is not None:
        dD = (g * uu).sum((0, 3))
        grads["D"] = dD.sum(0, keepdim=True) if D.shape[0] == 1 else dD

    # Scan backward in reverse time: adj_t = dL/dh_t = e_t + decay_{t+1} adj_{t+1}, e_t = C_t dy_t + dstates_t.
    dy_c = ch.masked(_route_steps(_rows(g), ch.index, ch.T, ch.nc, ch.G).unsqueeze(-2))
    ds = None if dstates is None else ch.state_steps(_gather_rows(_rows(dstates.to(dtype).movedim(-1, -2)),
                                                                  ch.index))

    def e(t0: int, t1: int, out: Tensor | None = None) -> Tensor:
        x = torch.mul(ch.C[t0:t1], dy_c[t0:t1], out=out)
        return x if ds is None else x.add_(ds[t0:t1])

    p = None if dlast is None else ch.state(dlast.to(dtype)).unsqueeze(3)
    if ch.nc > 1:  # reverse reduce and carry: the adjoint entering every chunk from its right
        q = None
        for t0, t1 in reversed(ch.blocks()):
            q = _adjoint(e(t0, t1, out=ch.buffer("adjoint", t1 - t0)), ch.decay(t0, t1), q)
        flow = torch.zeros_like(q[:, :, :, 0]) if p is None else p[:, :, :, 0]
        flows = [flow]
        for c in reversed(range(1, ch.nc)):
            flow = torch.addcmul(q[:, :, :, c], ch.chunk_decay[:, :, :, c], flow)
            flows.append(flow)
        p = torch.stack(flows[::-1], 3)

    blocks = ch.blocks()
    d_dt, d_du, dB, dC = [None] * len(blocks), [None] * len(blocks), [None] * len(blocks), [None] * len(blocks)
    dA = 0
    for j in reversed(range(len(blocks))):
        t0, t1 = blocks[j]
        n = t1 - t0
        # the block's states, one step late: hs[i + 1] = h_{t0+i}, hs[0] = the state entering the block
        hs, decay = ch.buffer("states", n + 1, ch.Tb + 1), ch.decay(t0, t1)
        if entries[j] is None:
            hs[0].zero_()
        else:
            hs[0].copy_(entries[j])
        _recur(decay, ch.input(t0, t1, out=hs[1:]), entries[j])
        adj = e(t0, t1, out=ch.buffer("adjoint", n))
        p = _adjoint(adj, decay, p)
        dC[j] = torch.matmul(hs[1:], dy_c[t0:t1].transpose(-1, -2))  # summed over a group's channels
        dB[j] = torch.matmul(adj, ch.du[t0:t1].transpose(-1, -2))
        d_du[j] = _contract_states(ch.B[t0:t1], adj)  # dL/d(dt u)
        w = decay.mul_(adj).mul_(hs[:n])  # dL/d(dt A) = adj_t exp(dt_t A) h_{t-1}
        product = ch.buffer("product", n)
        d_dt[j] = torch.addcmul(torch.mul(w, ch.A, out=product).sum(-2, keepdim=True), d_du[j], ch.u[t0:t1])
        dA = dA + torch.mul(w, ch.dt[t0:t1], out=product).sum((0, 1, 4))
    du_route, ddt = ch.dt * torch.cat(d_du), torch.cat(d_dt)  # per channel, route order
    if delta_softplus:
        ddt = ddt * torch.where(ch.x > 20, torch.ones_like(ch.x), torch.sigmoid(ch.x))
    grads["C"] = _natural(ch.group_rows(torch.cat(dC)), inverse, C.shape[1] == 1)
    grads["B"] = _natural(ch.group_rows(torch.cat(dB)), inverse, B.shape[1] == 1)
    dA = dA.transpose(-1, -2).flatten(1, 2)
    grads["A"] = dA.sum(0, keepdim=True) if A.shape[0] == 1 else dA
    ddt = _natural_steps(ddt.squeeze(-2), inverse, ch.T)
    if delta_bias is not None:
        db = ddt.sum((0, 3))
        grads["delta_bias"] = db.sum(0, keepdim=True) if delta_bias.shape[0] == 1 else db
    grads["delta"] = ddt.sum(1, keepdim=True) if delta.shape[1] == 1 else ddt
    du_nat = _natural_steps(du_route.squeeze(-2), inverse, ch.T)
    du = du_nat if du is None else du + du_nat
    grads["u"] = du.sum(1, keepdim=True) if u.shape[1] == 1 else du
    if initial_state is not None:
        grads["initial_state"] = p[:, :, :, 0].transpose(-1, -2).flatten(2, 3)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [None if x is None else grads[n].to(x.dtype) for n, x in zip(names, inputs, strict=True)]

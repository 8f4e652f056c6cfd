"""Triton kernels for the selective scan with routes (CUDA): forward and backward on the canonical views.

Same contract as ``reference.selective_scan`` (the definition) and ``chunked.selective_scan_backward``: u, delta
(B, Ku, D, L); A (Ka, D, N); B, C (B, Kb, G, N, L); D, delta_bias (Kx, D); z (B, D, L); initial_state (B, K, D, N);
order (Bi, K, L), any strides, natural (spatial) positions. Nothing is copied into route order.

Two kernel families share the contract:

- Sequential kernels (every route 1-D storage order or its reverse: Vim, Mamba, dual-path; and grid routes in the
  channels-last layout, where a warp's loads are coalesced along channels whatever the route; ``sequential``;
  channels-first grid routes run them on channels-last copies, ``via_channels_last``): one program = one warp of
  channels, each thread walks its channel's route step by step with its share of the N states in registers (N split
  over four lane groups, 8 channels a warp, a thread's states contiguous; one state: a thread per channel in the
  backward, two channels a thread in the forward: ``_seq_lanes``). Tiles of 8 steps are loaded coalesced along time
  and split into steps in registers; the next block is prefetched into L1 (not by the backward with N > 1,
  ``SEQ_BWD_PREFETCH``). The backward runs a forward pass that writes the state entering every block of 4 steps ((B,
  K, L/4, D, N) fp32, never (B, D, L, N)), then walks the blocks in reverse, recomputing each block's states once
  (``SEQ_BWD_BLOCK``), summing dB/dC over the warp's channels and adding a block's sums with one atomic over an [N, 4]
  tile (``_block_add4``; with 16 or one state a reduce-scatter by lane shuffles, ``_scatter_add4``/``_scatter_add8``,
  and with 16 the sums over states likewise, ``_group_scatter4``). The forward exchanges lanes only when a channel's
  states are split (its output's sum over states). A program walks its K routes one after the other and merges them
  through a program-private fp32 workspace; for routes of 128 steps or more (VMamba, Vim, DPMamba intra) each route
  gets its own program, which stores its own plane of the output (and of shared inputs' gradients) in the result's
  dtype, and ``_merge_routes`` sums the planes (mean, gate, cast) in one kernel. A block's tiles are loaded into
  registers one block before their use.
- Tile kernels (TABLE routes: permutations, per-sample routes; channels-first grid routes when
  ``SEQ_GRID_VIA_CHANNELS_LAST`` is off), described below.

How the tile kernels split the work:

- One program per (batch, tile of BLOCK_D channels); it runs the K routes one after the other. Several channels per
  program keep short sequences (L = 34, 197) from wasting lanes, and let the backward sum dB and dC over the
  program's channels before its atomic adds.
- Routes are index arithmetic, recognised once per route tensor (``route_kinds``): FLAT (storage order: 1-D
  forward, grid row-major), COL (grid column-major, position (s % H) * W + s // H) or TABLE (any permutation or
  per-sample route, positions read from ``order``). A reversed route (reverse, row_rev, col_rev) is the same
  arithmetic on reversed steps. A route walks the sequence in tiles of T steps, carrying the state between tiles.
- A tile is a [P, BLOCK_D, M] tensor: P chunks of M consecutive route steps by BLOCK_D channels, in route order, so
  every scan in route order runs forward (Triton lowers a reversed scan with lane shuffles even along an axis held
  by one thread). The recurrence h_t = a_t h_{t-1} + b_t is a ``tl.associative_scan`` inside each thread's chunk,
  then over the chunk totals, per state n (loop over N); y accumulates C_n h over n in registers. ``Config`` gives
  the two register layouts used (time chunks on the lanes, or channels on the lanes with whole chunks in-thread).
- The K route outputs are merged in the kernel: a route adds its tile to the fp32 sum the previous routes left in a
  (B, D, L) workspace written by the same program, and the last route gates it with silu(z) and writes the output
  once.
- Backward: per route, tiles in reverse route order; the forward states of a tile are recomputed from the state at
  its entry (recomputed by a forward pass that writes only the (B, K, n_tiles + 1, D, N) entry states when L > T;
  never (B, D, L, N)), the adjoint is scanned on flipped chunks and carried between tiles, dB and dC are summed
  over the program's channels before atomic adds, and du / ddelta / dz of inputs shared by several routes are
  summed over routes through the same workspace scheme.
- B and C are staged once per call as zero-padded fp32 rows when N >= STAGE_MIN_N (they are N / D the size of u).

All arithmetic is fp32 (exp and log via exp2/log2; in compiled kernels softplus and sigmoid take the special-function
unit's log2 and reciprocal, ``FAST_MATH``); inputs may be fp32, fp16 or bf16; outputs are written in the requested
dtype. float64 calls (tests, gradcheck) go to the chunked path.

Speed (H100, issue #4 shapes, ``tools/benchmark.py ops``, bf16 fwd+bwd, 2026-11-24; README for the table,
PERFORMANCE.md beside this file for the measurements behind it):
VMamba-T s1 5.3x the floor channels-first (copies + sequential kernels), 4.0x channels-last; Vim-S 4.8x,
DPMamba-M intra and inter 16-17x eager (host-bound: replayed from a CUDA graph 5.6x and 5.0x; B and C are staged
by one kernel and reused by the backward, and every launch goes through ``ssmzoo.ops.launch`` to spare host
time). ncu's largest
stall on every sequential kernel was waiting for global loads: a block's tiles are loaded into registers one
block early (software pipelining, ``SEQ_*_PIPELINE``). The Vim-S backward (168 registers, 12 warps per SM) waits
most on its rows of B and C, which each warp reads through L2 (they cost too many registers to load a block
early); its first pass (recomputing the block-entry states) is 13 % of it. With one state the forward writes those
states when autograd saves its inputs (``SEQ_ONE_STATE_FWD_CK``), else that pass runs as its own kernel
(``_seq_checkpoints``). The knobs below record what was measured for each choice.
"""

from __future__ import annotations

import math
import os
import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmzoo.ops.launch import launch
from ssmzoo.ops.selective_scan.common import BACKWARD_RESIDUALS, FORWARD_RESIDUALS, SAVING_FOR_BACKWARD

__all__ = ["selective_scan", "selective_scan_backward", "route_kinds", "Config", "config_for"]

FLAT, COL, TABLE = 0, 1, 2
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # activations; parameters are fp32
# SSMZOO_POISON=1 fills every kernel-written buffer with NaN before the launch: an element a kernel forgot to
# write then fails the comparison against the reference (tests set it).
_POISON_ENV = "SSMZOO_POISON"


# ----------------------------------------------------------------------------------------------------------------
# Kernel helpers. A tile is a [P, BLOCK_D, M] tensor: step p * M + m of the tile, channel d. Triton gives each
# thread the M consecutive steps of one chunk p (one 16-byte vector when the time axis is contiguous and aligned),
# puts the P chunks on the lanes of a warp and the channels on the warps, so a scan runs sequentially inside a
# thread along M and only the P chunk totals cross lanes.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _lg2(x, FAST: tl.constexpr):
    """log2 of x >= 1. FAST: the special-function unit's approximation (one MUFU.LG2; absolute error about 2^-22,
    far inside the fp32 tolerance) instead of libdevice's ~25-instruction polynomial with range reduction, which
    was a tenth of the sequential backward's instructions. The interpreter runs no PTX: it takes tl.log2."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _rcp(x, FAST: tl.constexpr):
    """1 / x for x >= 1. FAST: one MUFU.RCP instead of the IEEE division (its Newton steps and slow-path branch)."""
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 / x


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    """mamba_ssm's softplus: log(1 + e^x), identity above 20."""
    return tl.where(x > 20.0, x, _lg2(1.0 + tl.exp2(x * 1.4426950408889634), FAST) * 0.6931471805599453)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    return _rcp(1.0 + tl.exp2(-x * 1.4426950408889634), FAST)


@triton.jit
def _state_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 (applied first) with h -> a2 h + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _exclusive_combine(ia1, ib1, xa1, xb1, ia2, ib2, xa2, xb2):
    """Affine maps scanned with their exclusive prefix: (inclusive map, map of all elements but the last)."""
    return ia1 * ia2, ia2 * ib1 + ib2, ia1 * xa2, xa2 * ib1 + xb2


@triton.jit
def _adjoint_combine(f1, p1, g1, f2, p2, g2):
    """Compose adjoint segments for g_t = c_t + a_{t+1} g_{t+1}; segment 1 is later in route order (scanned first).

    A segment [i..j] is (f, p, g): f = a_i, p = a_{i+1} ... a_j, g = g_i given a zero adjoint after step j, so
    that with an incoming adjoint kappa = a_{j+1} g_{j+1}: g_i = g + p * kappa.
    """
    t = p2 * f1
    return f2, t * p1, g2 + t * g1


@triton.jit
def _take_second(x, y):
    return y


@triton.jit
def _take_first(x, y):
    return x


@triton.jit
def _edge(x, HIGH: tl.constexpr):
    """x[:, :, M - 1:] (HIGH) or x[:, :, :1] of a [P, BD, M] tile, as [P, BD, 1] in the tile's layout. M is held
    by one thread, so this reduction is a register pick (the in-thread reduction runs in index order)."""
    return tl.reduce(x, 2, _take_second if HIGH else _take_first, keep_dims=True)


@triton.jit
def _chunk(x, which):
    """Chunk ``which`` of a [P, BD, 1] tensor of chunk values, as (BD,)."""
    rows = tl.arange(0, x.shape[0])
    return tl.sum(tl.sum(tl.where(rows[:, None, None] == which, x, 0.0), 2), 0)


@triton.jit
def _scan_states(a, b, h0):
    """h_t = a_t h_{t-1} + b_t over a [P, BD, M] tile in route order (chunk p, then step m), from h0 (BD,).

    Returns the states (P, BD, M) and the state after the tile's last step (BD,).
    """
    Am, Hm = tl.associative_scan((a, b), 2, _state_combine)
    At, Ht = _edge(Am, True), _edge(Hm, True)  # chunk totals (P, BD, 1)
    zero = At * 0.0  # (built from At so it shares At's layout)
    ia, ib, xa, xb = tl.associative_scan((At, Ht, zero + 1.0, zero), 0, _exclusive_combine)
    h = Hm + Am * (xa * h0[None, :, None] + xb)  # chunk-local states + decayed state entering the chunk
    return h, _chunk(ia * h0[None, :, None] + ib, At.shape[0] - 1)


@triton.jit
def _scan_adjoint(a_flip, c_flip, kappa):
    """Adjoint g_t = c_t + a_{t+1} g_{t+1} over a tile in route order, given kappa (BD,) = a g at the first step
    after the tile. a_flip and c_flip hold a and c with the steps of each chunk reversed (``tl.flip`` along M), so
    the in-thread scan runs forward: Triton lowers a reversed scan with lane shuffles even along an in-thread axis.

    Returns g (P, BD, M) in route order and a_first * g_first (BD,): the adjoint flowing into the state before
    the tile.
    """
    F, Pm, G = tl.associative_scan((a_flip, tl.full(a_flip.shape, 1.0, tl.float32), c_flip), 2, _adjoint_combine)
    f, p, g = _edge(F, True), _edge(Pm, True), _edge(G, True)  # chunk summaries at their first step (P, BD, 1)
    # a chunk maps the adjoint entering it (from later steps) to the one leaving it: kappa -> f p kappa + f g
    zero = f * 0.0
    ia, ib, xa, xb = tl.associative_scan((f * p, f * g, zero + 1.0, zero), 0, _exclusive_combine, reverse=True)
    g_flip = G + Pm * (xa * kappa[None, :, None] + xb)
    return tl.flip(g_flip, 2), _chunk(ia * kappa[None, :, None] + ib, 0)


@triton.jit
def _positions(s, L, H, W, order_row, KIND: tl.constexpr):
    """Natural positions (int32) of base-order steps s of a route of kind KIND."""
    if KIND == 1:
        # s // H by a float reciprocal (4 instructions, not an integer division's ~20): the quotient of s + 0.5 is at
        # least 0.5 / H from an integer, more than the product's rounding error while s < 2^22 (COL_MAX_L)
        q = ((s * 1.0 + 0.5) * (1.0 / (H * 1.0))).to(tl.int32)
        return (s - q * H) * W + q
    elif KIND == 2:
        return tl.load(order_row + s, mask=s < L, other=0).to(tl.int32)
    else:
        return s


@triton.jit
def _load_bc(ptrs, tmask, m3, SAME_GROUP: tl.constexpr, PADDED: tl.constexpr):
    """A row of B or C as fp32: unmasked from staged rows padded with zeros to whole tiles."""
    if PADDED:
        return tl.load(ptrs).to(tl.float32)
    return tl.load(ptrs, mask=tmask if SAME_GROUP else m3, other=0.0).to(tl.float32)


@triton.jit
def _route_sum(val, ws_ptr, ws_offs, out_ptr, out_offs, mask, k: tl.constexpr, K: tl.constexpr,
               PAR_ROUTES: tl.constexpr = False):
    """Sum a tile over the K routes of this program: routes 0..K-2 leave the running sum in the fp32 workspace,
    route K-1 adds it and writes the total in the output's dtype. With routes in parallel programs every route
    stores its own tile into its plane of the workspace (ws_offs include the route's offset; the result's dtype)
    and the host sums the planes (``_merge_routes``)."""
    if PAR_ROUTES and K > 1:
        tl.store(ws_ptr + ws_offs, val.to(ws_ptr.dtype.element_ty), mask=mask)
    else:
        if k > 0:
            val += tl.load(ws_ptr + ws_offs, mask=mask, other=0.0)
        if k < K - 1:
            tl.store(ws_ptr + ws_offs, val, mask=mask)
        if k == K - 1:
            tl.store(out_ptr + out_offs, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_index(i, n_tiles, L, H, W, order_row, P: tl.constexpr, M: tl.constexpr, KIND: tl.constexpr,
                REV: tl.constexpr, FLIP: tl.constexpr = False):
    """Positions (P, 1, M) and step mask of the tile a route visits i-th, in route order: element (p, m) is the
    route's step p * M + m of the tile (a reversed route walks its base order backwards), so every scan in route
    order runs forward. FLIP reverses the steps within each chunk (the adjoint's order)."""
    p = tl.arange(0, P)[:, None, None]
    m = tl.arange(0, M)[None, None, :]
    if FLIP:
        m = M - 1 - m
    if REV:
        s = (n_tiles - 1 - i) * (P * M) + (P - 1 - p) * M + (M - 1 - m)
    else:
        s = i * (P * M) + p * M + m
    return _positions(s, L, H, W, order_row, KIND), s < L


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["su_l", "sdl_l", "sB_l", "sC_l", "sz_l", "so_l", "sws_l"])
def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, order_ptr,
    out_ptr, ws_ptr, chunk_ptr, states_ptr,
    su_b, su_k, su_d, su_l, sdl_b, sdl_k, sdl_d, sdl_l, sA_k, sA_d, sA_n,
    sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l, sD_k, sbias_k,
    sz_b, sz_d, sz_l, so_b, so_k, so_d, so_l, sws_b, sws_d, sws_l, sord_b, sord_k,
    L, H, W, Dm, N, n_tiles, d_per_group, zero,
    K: tl.constexpr, KINDS: tl.constexpr, REVS: tl.constexpr,
    U_ROUTES: tl.constexpr, DL_ROUTES: tl.constexpr, A_ROUTES: tl.constexpr, BC_ROUTES: tl.constexpr,
    X_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, CARRY: tl.constexpr, SAVE_CHUNKS: tl.constexpr, RET_STATES: tl.constexpr,
    MERGE: tl.constexpr, OUTPUT: tl.constexpr, SAME_GROUP: tl.constexpr, BC_BCAST: tl.constexpr,
    BC_PADDED: tl.constexpr,
    BLOCK_D: tl.constexpr, P: tl.constexpr, M: tl.constexpr, FAST: tl.constexpr,
):
    """Forward scan of one (batch, channel tile) over the K routes.

    Writes out (merged, MERGE 1 = sum, 2 = mean; or per route, MERGE 0) when OUTPUT; the state entering every tile
    into chunk (B, K, n_tiles + 1, D, N) fp32 when SAVE_CHUNKS (slot n_tiles is the last state; slot 0 holds the
    initial state, read when CARRY); every state into states (B, K, D, L, N) fp32 when RET_STATES. BC_BCAST: B and
    C rows are loaded once per thread and broadcast over its channels (the tile layout keeps channels in-thread);
    BC_PADDED: they are staged rows padded with zeros to whole tiles (no mask).
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < Dm
    dd = d[None, :, None]
    # B, C rows: (P, 1, M) pointers broadcast in registers (BC_BCAST), or tile-shaped through a zero the compiler
    # cannot fold, when the tile's layout spreads channels over lanes
    d_zero = tl.zeros([1, 1, 1], tl.int32) if BC_BCAST else dd * zero
    if SAME_GROUP:
        grp = (pid_d * BLOCK_D) // d_per_group
    else:
        grp = dd // d_per_group
    for k in tl.static_range(K):
        u_row = u_ptr + b * su_b + (k if U_ROUTES else 0) * su_k + dd * su_d
        dl_row = dl_ptr + b * sdl_b + (k if DL_ROUTES else 0) * sdl_k + dd * sdl_d
        a_row = A_ptr + (k if A_ROUTES else 0) * sA_k + d * sA_d
        b_row = B_ptr + b * sB_b + (k if BC_ROUTES else 0) * sB_k + grp * sB_g
        c_row = C_ptr + b * sC_b + (k if BC_ROUTES else 0) * sC_k + grp * sC_g
        chunk_row = chunk_ptr + ((b * K + k) * (n_tiles + 1)) * Dm * N + d * N
        if HAS_BIAS:
            bias = tl.load(bias_ptr + (k if X_ROUTES else 0) * sbias_k + d, mask=dmask, other=0.0)
        if HAS_D:
            Dk = tl.load(D_ptr + (k if X_ROUTES else 0) * sD_k + d, mask=dmask, other=0.0)
        for i in range(n_tiles):
            pos, tmask = _tile_index(i, n_tiles, L, H, W, order_ptr + b * sord_b + k * sord_k, P, M, KINDS[k],
                                     REVS[k])
            m3 = dmask[None, :, None] & tmask
            u = tl.load(u_row + pos * su_l, mask=m3, other=0.0).to(tl.float32)
            dt = tl.load(dl_row + pos * sdl_l, mask=m3, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias[None, :, None]
            if SOFTPLUS:
                dt = _softplus(dt, FAST)
            dt = tl.where(m3, dt, 0.0)  # padding steps: a = 1, b = 0 leave the state alone
            dtu = dt * u
            y = tl.zeros([P, BLOCK_D, M], dtype=tl.float32)
            for n in range(N):
                A2 = tl.load(a_row + n * sA_n, mask=dmask, other=0.0) * 1.4426950408889634
                Bn = _load_bc(b_row + n * sB_n + pos * sB_l + d_zero, tmask, m3, SAME_GROUP, BC_PADDED)
                h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
                if CARRY:
                    h0 = tl.load(chunk_row + i * Dm * N + n, mask=dmask, other=0.0)
                h, h_end = _scan_states(tl.exp2(dt * A2[None, :, None]), dtu * Bn, h0)
                if SAVE_CHUNKS:
                    tl.store(chunk_row + (i + 1) * Dm * N + n, h_end, mask=dmask)
                if RET_STATES:
                    tl.store(states_ptr + (((b * K + k) * Dm + dd) * L + pos) * N + n, h, mask=m3)
                if OUTPUT:
                    Cn = _load_bc(c_row + n * sC_n + pos * sC_l + d_zero, tmask, m3, SAME_GROUP, BC_PADDED)
                    y += Cn * h
            if OUTPUT:
                if HAS_D:
                    y += Dk[None, :, None] * u
                ws = ws_ptr + b * sws_b + dd * sws_d + pos * sws_l
                if MERGE == 0 or k == K - 1:
                    if MERGE != 0 and K > 1:
                        y += tl.load(ws, mask=m3, other=0.0)
                    if MERGE == 2:
                        y = y / K
                    if HAS_Z:
                        zt = tl.load(z_ptr + b * sz_b + dd * sz_d + pos * sz_l,
                                     mask=m3, other=0.0).to(tl.float32)
                        y = y * zt * _sigmoid(zt, FAST)
                    o = (out_ptr + b * so_b + (k if MERGE == 0 else 0) * so_k + dd * so_d
                         + pos * so_l)
                    tl.store(o, y.to(out_ptr.dtype.element_ty), mask=m3)
                else:
                    if k > 0:
                        y += tl.load(ws, mask=m3, other=0.0)
                    tl.store(ws, y, mask=m3)
            # the next tile reads the carry other threads just stored; the next route rereads the workspace
            tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["su_l", "sdl_l", "sB_l", "sC_l", "sz_l", "sdo_l", "sdu_l", "sddl_l", "sdz_l",
                               "sws_l"])
def _bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, order_ptr, dout_ptr, chunk_ptr, gc_ptr, dst_ptr,
    du_ptr, ddl_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dz_ptr, wsu_ptr, wsdl_ptr, wsz_ptr,
    su_b, su_k, su_d, su_l, sdl_b, sdl_k, sdl_d, sdl_l, sA_k, sA_d, sA_n,
    sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l, sD_k, sbias_k,
    sz_b, sz_d, sz_l, sdo_b, sdo_k, sdo_d, sdo_l, sord_b, sord_k,
    sdu_b, sdu_k, sdu_d, sdu_l, sddl_b, sddl_k, sddl_d, sddl_l, sdz_b, sdz_d, sdz_l, sws_b, sws_d, sws_l,
    sdB_b, sdB_k, sdB_g, sdB_n,
    L, H, W, Dm, N, n_tiles, d_per_group, zero,
    K: tl.constexpr, KINDS: tl.constexpr, REVS: tl.constexpr,
    U_ROUTES: tl.constexpr, DL_ROUTES: tl.constexpr, A_ROUTES: tl.constexpr, BC_ROUTES: tl.constexpr,
    X_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, CARRY: tl.constexpr, HAS_DSTATES: tl.constexpr, MERGE: tl.constexpr,
    SAME_GROUP: tl.constexpr, BC_BCAST: tl.constexpr, BC_PADDED: tl.constexpr,
    BLOCK_D: tl.constexpr, P: tl.constexpr, M: tl.constexpr, FAST: tl.constexpr,
):
    """Backward of one (batch, channel tile) over the K routes, tiles in reverse route order.

    Reads the tile-entry states from chunk (when CARRY) and the adjoint carry from gc (B, K, 2, D, N) fp32, whose
    slot (n_tiles - 1) % 2 holds d last_state on entry; slot 1 holds d initial_state on exit. dB, dC (fp32
    (B, Kb, G, N, L)), dA, dD, ddelta_bias are accumulated with atomic adds (dB and dC summed over the channel
    tile first); du, ddelta, dz are written, summed over routes through fp32 workspaces when routes share them.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < Dm
    dd = d[None, :, None]
    # B, C rows: (P, 1, M) pointers broadcast in registers (BC_BCAST), or tile-shaped through a zero the compiler
    # cannot fold, when the tile's layout spreads channels over lanes
    d_zero = tl.zeros([1, 1, 1], tl.int32) if BC_BCAST else dd * zero
    if SAME_GROUP:
        grp = (pid_d * BLOCK_D) // d_per_group
    else:
        grp = dd // d_per_group
    for k in tl.static_range(K):
        kb = k if BC_ROUTES else 0
        kx = k if X_ROUTES else 0
        u_row = u_ptr + b * su_b + (k if U_ROUTES else 0) * su_k + dd * su_d
        dl_row = dl_ptr + b * sdl_b + (k if DL_ROUTES else 0) * sdl_k + dd * sdl_d
        a_row = A_ptr + (k if A_ROUTES else 0) * sA_k + d * sA_d
        dA_row = dA_ptr + ((k if A_ROUTES else 0) * Dm + d) * N
        b_row = B_ptr + b * sB_b + kb * sB_k + grp * sB_g
        c_row = C_ptr + b * sC_b + kb * sC_k + grp * sC_g
        dB_row = dB_ptr + b * sdB_b + kb * sdB_k + grp * sdB_g
        dC_row = dC_ptr + b * sdB_b + kb * sdB_k + grp * sdB_g
        chunk_row = chunk_ptr + ((b * K + k) * (n_tiles + 1)) * Dm * N + d * N
        gc_row = gc_ptr + ((b * K + k) * 2) * Dm * N + d * N
        if HAS_BIAS:
            bias = tl.load(bias_ptr + kx * sbias_k + d, mask=dmask, other=0.0)
        if HAS_D:
            Dk = tl.load(D_ptr + kx * sD_k + d, mask=dmask, other=0.0)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for r in range(n_tiles):
            i = n_tiles - 1 - r  # the route visits this tile i-th
            pos, tmask = _tile_index(i, n_tiles, L, H, W, order_ptr + b * sord_b + k * sord_k, P, M, KINDS[k],
                                     REVS[k])
            m3 = dmask[None, :, None] & tmask
            u = tl.load(u_row + pos * su_l, mask=m3, other=0.0).to(tl.float32)
            x = tl.load(dl_row + pos * sdl_l, mask=m3, other=0.0).to(tl.float32)
            if HAS_BIAS:
                x += bias[None, :, None]
            dt = _softplus(x, FAST) if SOFTPLUS else x
            dt = tl.where(m3, dt, 0.0)
            dtu = dt * u
            do = tl.load(dout_ptr + b * sdo_b + (k if MERGE == 0 else 0) * sdo_k + dd * sdo_d
                         + pos * sdo_l, mask=m3, other=0.0).to(tl.float32)
            if MERGE == 2:
                do = do / K
            if HAS_Z:
                zt = tl.load(z_ptr + b * sz_b + dd * sz_d + pos * sz_l,
                             mask=m3, other=0.0).to(tl.float32)
                zsig = _sigmoid(zt, FAST)
                dy = do * zt * zsig
            else:
                dy = do
            # the adjoint runs on the steps of each chunk reversed (see _scan_adjoint)
            pos_f, tmask_f = _tile_index(i, n_tiles, L, H, W, order_ptr + b * sord_b + k * sord_k, P, M, KINDS[k],
                                         REVS[k], True)
            dt_f, dy_f = tl.flip(dt, 2), tl.flip(dy, 2)
            ddt = tl.zeros([P, BLOCK_D, M], dtype=tl.float32)
            sdtu = tl.zeros([P, BLOCK_D, M], dtype=tl.float32)  # sum_n g * B: gradient of dt * u
            y = tl.zeros([P, BLOCK_D, M], dtype=tl.float32)
            for n in range(N):
                An = tl.load(a_row + n * sA_n, mask=dmask, other=0.0)
                Bn = _load_bc(b_row + n * sB_n + pos * sB_l + d_zero, tmask, m3, SAME_GROUP, BC_PADDED)
                A2 = (An * 1.4426950408889634)[None, :, None]
                a = tl.exp2(dt * A2)
                bn = dtu * Bn
                h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
                if CARRY:
                    h0 = tl.load(chunk_row + i * Dm * N + n, mask=dmask, other=0.0)
                h, _ = _scan_states(a, bn, h0)
                if HAS_Z:  # the scan output, for dz
                    y += _load_bc(c_row + n * sC_n + pos * sC_l + d_zero, tmask, m3, SAME_GROUP, BC_PADDED) * h
                m3_f = dmask[None, :, None] & tmask_f
                c_f = _load_bc(c_row + n * sC_n + pos_f * sC_l + d_zero, tmask_f, m3_f, SAME_GROUP, BC_PADDED) * dy_f
                if HAS_DSTATES:
                    c_f += tl.load(dst_ptr + (((b * K + k) * Dm + dd) * L + pos_f) * N + n, mask=m3_f, other=0.0)
                kappa = tl.load(gc_row + (i % 2) * Dm * N + n, mask=dmask, other=0.0)
                g, k_out = _scan_adjoint(tl.exp2(dt_f * A2), c_f, kappa)
                tl.store(gc_row + ((i + 1) % 2) * Dm * N + n, k_out, mask=dmask)
                w = g * (h - bn)  # g_t * a_t * h_{t-1}
                ddt += w * An[None, :, None]
                sdtu += g * Bn
                tl.atomic_add(dA_row + n, tl.sum(tl.sum(dt * w, 2), 0), mask=dmask, sem="relaxed")
                if SAME_GROUP:
                    tl.atomic_add(dB_row + n * sdB_n + pos, tl.sum(g * dtu, 1)[:, None, :], mask=tmask, sem="relaxed")
                    tl.atomic_add(dC_row + n * sdB_n + pos, tl.sum(dy * h, 1)[:, None, :], mask=tmask, sem="relaxed")
                else:
                    tl.atomic_add(dB_row + n * sdB_n + pos, g * dtu, mask=m3, sem="relaxed")
                    tl.atomic_add(dC_row + n * sdB_n + pos, dy * h, mask=m3, sem="relaxed")
            ddt += sdtu * u
            du = sdtu * dt
            if HAS_D:
                du += Dk[None, :, None] * dy
                dD_acc += tl.sum(tl.sum(dy * u, 2), 0)
            if SOFTPLUS:
                ddt = tl.where(x > 20.0, ddt, ddt * _sigmoid(x, FAST))
            ddt = tl.where(m3, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(tl.sum(ddt, 2), 0)
            ws_offs = b * sws_b + dd * sws_d + pos * sws_l
            du_offs = b * sdu_b + (k if U_ROUTES else 0) * sdu_k + dd * sdu_d + pos * sdu_l
            ddl_offs = (b * sddl_b + (k if DL_ROUTES else 0) * sddl_k + dd * sddl_d
                        + pos * sddl_l)
            if U_ROUTES:
                tl.store(du_ptr + du_offs, du.to(du_ptr.dtype.element_ty), mask=m3)
            else:
                _route_sum(du, wsu_ptr, ws_offs, du_ptr, du_offs, m3, k, K)
            if DL_ROUTES:
                tl.store(ddl_ptr + ddl_offs, ddt.to(ddl_ptr.dtype.element_ty), mask=m3)
            else:
                _route_sum(ddt, wsdl_ptr, ws_offs, ddl_ptr, ddl_offs, m3, k, K)
            if HAS_Z:
                if HAS_D:
                    y += Dk[None, :, None] * u
                dz = do * y * zsig * (1.0 + zt * (1.0 - zsig))
                dz_offs = b * sdz_b + dd * sdz_d + pos * sdz_l
                _route_sum(dz, wsz_ptr, ws_offs, dz_ptr, dz_offs, m3, k, K)
            # the next tile reads the adjoint carry other threads just stored; the next route rereads workspaces
            tl.debug_barrier()
        if HAS_D:
            tl.atomic_add(dD_ptr + kx * Dm + d, dD_acc, mask=dmask, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + kx * Dm + d, dbias_acc, mask=dmask, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------------
# Sequential kernels (1-D routes): a thread walks one channel's route step by step, its N states in registers
# ----------------------------------------------------------------------------------------------------------------
# Tiles of 8 steps by BLOCK_D channels are loaded coalesced along time, then split into their 8 steps (tl.split
# moves the time axis into registers: Triton transposes the tile through shared memory once); the (N, BLOCK_D)
# state tensors are kept in the layout "lanes = channels, states in registers" by loading and storing them flat
# with strides hidden from the compiler (`one`). B and C come from staged (B, K, G, L, N) fp32 rows, one 16-byte
# broadcast load per 4 states. With 32 channels a warp nothing crosses lanes in the forward; split states (fewer
# channels a warp) sum over the threads of a channel; the backward also sums dB and dC over the warp's channels before
# one atomic add per (step, state).


@triton.jit
def _split2(x):
    """[BD, 2 * S] -> (even steps, odd steps), each [BD, S]; the time axis is moved into registers."""
    return tl.split(tl.reshape(x, [x.shape[0], x.shape[1] // 2, 2]))


@triton.jit
def _split8(x):
    """The 8 steps of a [BD, 8] tile, as [BD] vectors in step order."""
    e, o = _split2(x)  # steps 0 2 4 6 / 1 3 5 7
    ee, eo = _split2(e)  # 0 4 / 2 6
    oe, oo = _split2(o)  # 1 5 / 3 7
    x0, x4 = tl.split(ee)
    x2, x6 = tl.split(eo)
    x1, x5 = tl.split(oe)
    x3, x7 = tl.split(oo)
    return x0, x1, x2, x3, x4, x5, x6, x7




@triton.jit
def _join2(a, b):
    """Interleave two [BD, S] tensors into [BD, 2 * S] (a at even steps)."""
    return tl.reshape(tl.join(a, b), [a.shape[0], 2 * a.shape[1]])


@triton.jit
def _join8(x0, x1, x2, x3, x4, x5, x6, x7):
    """Inverse of _split8: [BD, 8] from the 8 steps."""
    return _join2(_join2(tl.join(x0, x4), tl.join(x2, x6)), _join2(tl.join(x1, x5), tl.join(x3, x7)))




@triton.jit
def _tile(x, BD: tl.constexpr):
    """A flat (state-major, channel fastest) vector as an (NP, BD) tile: lanes = channels, states in registers.

    With BD < 32 channels per warp the states are split over the warp's G = 32 / BD lane groups: the flat order
    then holds each group's NP / G states together (``_state_of``), so that a thread's states are contiguous rows
    of the staged B and C (16-byte loads). With 8 channels a warp the groups held every other state before (loads
    of 4 bytes): 16-state backward's second-pass loop 822 -> 782 SASS instructions (40 -> 16 loads), kernel Vim-S
    2420 -> 2380 µs, DPMamba intra 619 -> 596, inter 624 -> 598; intra's forward (8 lanes) 135 -> 110. H100 bf16."""
    G: tl.constexpr = 32 // BD if BD < 32 else 1
    if G == 1 or x.shape[0] < G * BD:
        return tl.reshape(x, [x.shape[0] // BD, BD])
    else:
        R: tl.constexpr = x.shape[0] // BD // G
        return tl.reshape(tl.permute(tl.reshape(x, [R, G, BD]), [1, 0, 2]), [G * R, BD])


@triton.jit
def _flat(x):
    """Inverse of ``_tile``."""
    G: tl.constexpr = 32 // x.shape[1] if x.shape[1] < 32 else 1
    if G == 1 or x.shape[0] < G:
        return tl.reshape(x, [x.shape[0] * x.shape[1]])
    else:
        R: tl.constexpr = x.shape[0] // G
        return tl.reshape(tl.permute(tl.reshape(x, [G, R, x.shape[1]]), [1, 0, 2]), [x.shape[0] * x.shape[1]])


@triton.jit
def _state_of(q, NP: tl.constexpr, BD: tl.constexpr):
    """The state held at row q of the flat order (see ``_tile``)."""
    G: tl.constexpr = 32 // BD if BD < 32 else 1
    if G == 1 or NP < G:
        return q
    else:
        return (q % G) * (NP // G) + q // G


@triton.jit
def _prefetch(ptrs, ON: tl.constexpr):
    """Ask for the cache lines at ``ptrs`` in L1 ahead of their use (a hint: no effect on results). The sequential
    kernels hold few warps per SM, so the next block's rows are requested a block early. Off under the
    interpreter, which runs no inline PTX."""
    if ON:
        tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _next_block(j, n_sub, REV: tl.constexpr, AHEAD: tl.constexpr = 1):
    """The block a route walks AHEAD blocks after block j (the route's last block beyond its end)."""
    if REV:
        return tl.maximum(j - AHEAD, 0)
    else:
        return tl.minimum(j + AHEAD, n_sub - 1)


@triton.jit
def _ud_loads(j, t, BS: tl.constexpr, L, H, W, order_row, KIND: tl.constexpr, dmask, u_row, dl_row, su_l, sdl_l):
    """[BD, BS] tiles of u and delta (fp32) of block j of a route."""
    s = j * BS + t
    pos = _positions(s, L, H, W, order_row, KIND)
    m2 = dmask[:, None] & (s < L)[None, :]
    u = tl.load(u_row + pos[None, :] * su_l, mask=m2, other=0.0).to(tl.float32)
    return u, tl.load(dl_row + pos[None, :] * sdl_l, mask=m2, other=0.0).to(tl.float32)


@triton.jit
def _fstep(h, A2, u_i, dt_i, s, L, H, W, order_row, b_row, c_row, st_row, smask, N,
           KIND: tl.constexpr, NP: tl.constexpr, RET_STATES: tl.constexpr):
    """One step of a route: base-order step s (scalar); h (NP, BD) -> h, y (BD,)."""
    pos = _positions(s, L, H, W, order_row, KIND)
    pos = tl.where(s < L, pos, 0)
    nb = tl.arange(0, NP)[:, None]
    Bi = tl.load(b_row + pos * NP + nb)  # (NP, 1), or (NP, BD) when the tile spans groups
    Ci = tl.load(c_row + pos * NP + nb)
    h = tl.exp2(dt_i[None, :] * A2) * h + Bi * (dt_i * u_i)[None, :]
    if RET_STATES:
        tl.store(st_row + pos * N, _flat(h), mask=smask & (s < L))
    return h, tl.sum(Ci * h, 0)




@triton.jit
def _fblock8(h, A2, u, dt, s0, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND: tl.constexpr,
             REV: tl.constexpr, NP: tl.constexpr, RET_STATES: tl.constexpr):
    """Eight steps s0 .. s0 + 7 (base order; walked backwards when REV) from [BD, 8] tiles u, dt: h -> h, y [BD, 8],
    and the state after the block's first 4 steps in route order (the one entering its second half)."""
    u0, u1, u2, u3, u4, u5, u6, u7 = _split8(u)
    d0, d1, d2, d3, d4, d5, d6, d7 = _split8(dt)
    if REV:
        h, y7 = _fstep(h, A2, u7, d7, s0 + 7, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y6 = _fstep(h, A2, u6, d6, s0 + 6, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y5 = _fstep(h, A2, u5, d5, s0 + 5, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y4 = _fstep(h, A2, u4, d4, s0 + 4, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        mid = h
        h, y3 = _fstep(h, A2, u3, d3, s0 + 3, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y2 = _fstep(h, A2, u2, d2, s0 + 2, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y1 = _fstep(h, A2, u1, d1, s0 + 1, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y0 = _fstep(h, A2, u0, d0, s0 + 0, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
    else:
        h, y0 = _fstep(h, A2, u0, d0, s0 + 0, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y1 = _fstep(h, A2, u1, d1, s0 + 1, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y2 = _fstep(h, A2, u2, d2, s0 + 2, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y3 = _fstep(h, A2, u3, d3, s0 + 3, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        mid = h
        h, y4 = _fstep(h, A2, u4, d4, s0 + 4, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y5 = _fstep(h, A2, u5, d5, s0 + 5, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y6 = _fstep(h, A2, u6, d6, s0 + 6, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
        h, y7 = _fstep(h, A2, u7, d7, s0 + 7, L, H, W, order_row, b_row, c_row, st_row, smask, N, KIND, NP, RET_STATES)
    return h, _join8(y0, y1, y2, y3, y4, y5, y6, y7), mid




@triton.jit
def _channel_offsets(d, one, HIDE: tl.constexpr):
    """The channels d for addressing a channels-last tile. With HIDE their unit stride is hidden from the compiler
    (`one`) beyond pairs, so that it loads and stores [channels, steps] tiles in the one-state scan's layout: lanes
    along channels, a thread's one or two channels and its steps in registers. Knowing the rows contiguous, it
    loaded 8 channels a thread (16 bytes) and moved every tile through shared memory behind a barrier
    (SEQ_ONE_STATE_HIDE_D)."""
    if HIDE:
        if d.shape[0] == 64:
            return (d // 2) * 2 * one + d % 2
        return d * one
    return d


@triton.jit
def _program_ids(PAR_ROUTES: tl.constexpr, ROUTES_FIRST: tl.constexpr):
    """(channel tile, batch row, route or -1, channel tiles) of a sequential kernel's program. Grid (tiles, batch,
    routes), or with ROUTES_FIRST (routes, tiles, batch): the programs of one (tile, batch row)'s routes are
    launched together, and read the inputs the routes share (u) while they are in L2."""
    if ROUTES_FIRST:
        return tl.program_id(1), tl.program_id(2).to(tl.int64), tl.program_id(0), tl.num_programs(1)
    else:
        return (tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2) if PAR_ROUTES else -1,
                tl.num_programs(0))


@triton.jit(do_not_specialize=["sA_d", "sA_n", "one"])
def _seq_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, order_ptr, init_ptr,
    out_ptr, ws_ptr, last_ptr, states_ptr, ck_ptr, cnt_ptr,
    su_b, su_k, su_d, su_l, sdl_b, sdl_k, sdl_d, sdl_l, sA_k, sA_d, sA_n,
    sB_b, sB_k, sB_g, sD_k, sbias_k, sz_b, sz_d, sz_l, so_b, so_k, so_d, so_l, sws_b, sws_k, sws_d, sws_l,
    sord_b, sord_k,
    L, H, W, Dm, N, n_sub, d_per_group, one, D_PAD,
    K: tl.constexpr, KINDS: tl.constexpr, REVS: tl.constexpr,
    U_ROUTES: tl.constexpr, DL_ROUTES: tl.constexpr, A_ROUTES: tl.constexpr, BC_ROUTES: tl.constexpr,
    X_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr, RET_LAST: tl.constexpr, RET_STATES: tl.constexpr,
    MERGE: tl.constexpr, SAME_GROUP: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr,
    PREFETCH: tl.constexpr, AHEAD: tl.constexpr, PIPE: tl.constexpr, PAR_ROUTES: tl.constexpr, FAST: tl.constexpr,
    CK_ONLY: tl.constexpr, ROUTES_FIRST: tl.constexpr, TAIL_MERGE: tl.constexpr, MERGE_BL: tl.constexpr,
    HIDE_D: tl.constexpr, SAVE_CK: tl.constexpr,
):
    """The forward; with CK_ONLY the backward's first pass instead: the state entering every block of 4 steps of
    each route into ck ((B, K, L/4, D_PAD, NP) fp32, as _seq_bwd_kernel lays it out), nothing else. SAVE_CK: the
    forward writes ck as well."""
    # PAR_ROUTES: one route per program, the others walk no blocks; merged routes store their own plane of the
    # workspace, summed by the last of a tile's route programs (TAIL_MERGE) or by _merge_routes
    pid_d, b, route, n_d_programs = _program_ids(PAR_ROUTES, ROUTES_FIRST)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < Dm
    t = tl.arange(0, 8)
    # (state, channel) tiles travel to and from memory flat, state-major, with the strides hidden from the compiler
    # (`one`), so that they keep the layout of the scan: lanes = channels, states in registers
    e = tl.arange(0, NP * BLOCK_D) * one
    en = _state_of(e // BLOCK_D, NP, BLOCK_D)
    ed = pid_d * BLOCK_D + e % BLOCK_D
    e_mask = (en < N) & (ed < Dm)
    # prefetch: lane i asks for step i % 8 of the next block (its channel's u, delta, ...; that step's B, C row)
    lane_step = tl.arange(0, BLOCK_D) % 8
    dch = _channel_offsets(d, one, HIDE_D)
    for k in tl.static_range(K):
        u_row0 = u_ptr + b * su_b + (k if U_ROUTES else 0) * su_k + tl.minimum(dch, Dm - 1) * su_d
        dl_row0 = dl_ptr + b * sdl_b + (k if DL_ROUTES else 0) * sdl_k + tl.minimum(dch, Dm - 1) * sdl_d
        u_row = u_row0[:, None]
        dl_row = dl_row0[:, None]
        A2 = _tile(tl.load(A_ptr + (k if A_ROUTES else 0) * sA_k + ed * sA_d + en * sA_n, mask=e_mask, other=0.0),
                   BLOCK_D) * 1.4426950408889634
        if SAME_GROUP:
            grp = (pid_d * BLOCK_D) // d_per_group
        else:
            grp = (tl.minimum(d, Dm - 1) // d_per_group)[None, :]  # padding channels read a valid row
        b_row = B_ptr + b * sB_b + (k if BC_ROUTES else 0) * sB_k + grp * sB_g
        c_row = C_ptr + b * sB_b + (k if BC_ROUTES else 0) * sB_k + grp * sB_g
        order_row = order_ptr + b * sord_b + k * sord_k
        st_row = states_ptr + ((b * K + k) * Dm + ed) * L * N + en
        if HAS_BIAS:
            bias = tl.load(bias_ptr + (k if X_ROUTES else 0) * sbias_k + d, mask=dmask, other=0.0)
        if HAS_D:
            Dk = tl.load(D_ptr + (k if X_ROUTES else 0) * sD_k + d, mask=dmask, other=0.0)
        if HAS_INIT:
            h = _tile(tl.load(init_ptr + ((b * K + k) * Dm + ed) * N + en, mask=e_mask, other=0.0), BLOCK_D)
        else:
            h = tl.zeros([NP, BLOCK_D], tl.float32)
        live = (route == k) if PAR_ROUTES else (pid_d >= 0)
        if CK_ONLY:
            nb4 = n_sub * 2
            t4 = tl.arange(0, 4)
            ck_row = ck_ptr + ((b * K + k) * nb4 * D_PAD + ed) * NP + en
            for jj in range(tl.where(live, nb4, 0)):
                j = (nb4 - 1 - jj) if REVS[k] else jj
                if PREFETCH:
                    pn = _pos_of(_next_block(j, nb4, REVS[k]) * 4 + lane_step % 4, L, H, W, order_row, KINDS[k])
                    _prefetch(u_row0 + pn * su_l, True)
                    _prefetch(dl_row0 + pn * sdl_l, True)
                    _prefetch(b_row + pn * NP, SAME_GROUP)
                m2 = dmask[:, None] & (j * 4 + t4 < L)[None, :]
                u, dt = _ud_loads(j, t4, 4, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row, su_l, sdl_l)
                Bs = _bc_rows4(b_row, j * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
                # padding channels too (zeros): the backward reads whole tiles
                h = _ck_block(h, A2, u, dt, Bs, j, bias if HAS_BIAS else 0.0, m2, ck_row + j * NP * D_PAD, ed < D_PAD,
                              L, H, W, order_row, b_row, KINDS[k], REVS[k], NP, 4, HAS_BIAS, SOFTPLUS, FAST)
        if PIPE and not CK_ONLY:  # the first block's tiles; every block then reads the next one's before its own work
            nu, ndt = _ud_loads(n_sub - 1 if REVS[k] else 0, t, 8, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row,
                                su_l, sdl_l)
        for jj in range(0 if CK_ONLY else tl.where(live, n_sub, 0)):
            j = (n_sub - 1 - jj) if REVS[k] else jj
            if PREFETCH:
                pn = _pos_of(_next_block(j, n_sub, REVS[k], AHEAD) * 8 + lane_step, L, H, W, order_row, KINDS[k])
                _prefetch(u_row0 + pn * su_l, True)
                _prefetch(dl_row0 + pn * sdl_l, True)
                _prefetch(b_row + pn * NP, SAME_GROUP)
                _prefetch(c_row + pn * NP, SAME_GROUP)
            s = j * 8 + t
            tmask = s < L
            pos = _positions(s, L, H, W, order_row, KINDS[k])
            m2 = dmask[:, None] & tmask[None, :]
            if PIPE:
                u, dt = nu, ndt
                nu, ndt = _ud_loads(_next_block(j, n_sub, REVS[k]), t, 8, L, H, W, order_row, KINDS[k], dmask, u_row,
                                    dl_row, su_l, sdl_l)
            else:
                u, dt = _ud_loads(j, t, 8, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row, su_l, sdl_l)
            if HAS_BIAS:
                dt += bias[:, None]
            if SOFTPLUS:
                dt = _softplus(dt, FAST)
            dt = tl.where(m2, dt, 0.0)  # padding steps: a = 1, b = 0 leave the state alone
            s0 = j * 8
            h_in = h
            h, y, h_mid = _fblock8(h, A2, u, dt, s0, L, H, W, order_row, b_row, c_row, st_row, e_mask, N, KINDS[k],
                                   REVS[k], NP, RET_STATES)
            if SAVE_CK:  # the states entering the block's two halves of 4 steps, for the backward (as CK_ONLY);
                # addressed by dch, whose pairs of channels are the scan's (a flat index would shuffle h)
                tl.static_assert(NP == 1, "the forward writes checkpoints with one state")
                ck_blk = ck_ptr + ((b * K + k) * n_sub + j) * 2 * D_PAD + dch
                tl.store(ck_blk + (1 if REVS[k] else 0) * D_PAD, tl.reshape(h_in, [BLOCK_D]), mask=d < D_PAD)
                tl.store(ck_blk + (0 if REVS[k] else 1) * D_PAD, tl.reshape(h_mid, [BLOCK_D]), mask=d < D_PAD)
            if HAS_D:
                y += Dk[:, None] * u
            ws = ws_ptr + b * sws_b + k * sws_k + dch[:, None] * sws_d + pos[None, :] * sws_l
            if PAR_ROUTES and MERGE != 0 and K > 1:  # this route's plane (sws_k); the host sums the routes
                tl.store(ws, y.to(ws_ptr.dtype.element_ty), mask=m2)
            elif MERGE == 0 or k == K - 1:
                if MERGE != 0 and K > 1:
                    y += tl.load(ws, mask=m2, other=0.0)
                if MERGE == 2:
                    y = y / K
                if HAS_Z:
                    zt = tl.load(z_ptr + b * sz_b + dch[:, None] * sz_d + pos[None, :] * sz_l, mask=m2,
                                 other=0.0).to(tl.float32)
                    y = y * zt * _sigmoid(zt, FAST)
                o = out_ptr + b * so_b + (k if MERGE == 0 else 0) * so_k + dch[:, None] * so_d + pos[None, :] * so_l
                tl.store(o, y.to(out_ptr.dtype.element_ty), mask=m2)
            else:
                if k > 0:
                    y += tl.load(ws, mask=m2, other=0.0)
                tl.store(ws, y, mask=m2)
        if RET_LAST and not CK_ONLY:
            tl.store(last_ptr + ((b * K + k) * Dm + ed) * N + en, _flat(h), mask=e_mask & live)
        tl.debug_barrier()  # the next route rereads the workspace
    if TAIL_MERGE:  # the tile's last route program sums the planes into the output
        if _last_route(cnt_ptr + b * n_d_programs + pid_d, K):
            _merge_tail(ws_ptr, z_ptr, out_ptr, b, d, dmask, L, sws_b, sws_k, sws_d, sws_l, sz_b, sz_d, sz_l, so_b,
                        so_d, so_l, K, MERGE == 2, HAS_Z, FAST, MERGE_BL)


@triton.jit
def _pos_of(s, L, H, W, order_row, KIND: tl.constexpr):
    """Natural position of base-order step s (scalar); 0 for padding steps s >= L."""
    return tl.where(s < L, _positions(s, L, H, W, order_row, KIND), 0)


@triton.jit
def _bc_at(row, s, L, H, W, order_row, KIND: tl.constexpr, NP: tl.constexpr):
    """The staged row of B or C (fp32, (NP, 1); (NP, BD) when the tile spans groups) at base-order step s; padding
    steps read position 0's."""
    return tl.load(row + _pos_of(s, L, H, W, order_row, KIND) * NP + tl.arange(0, NP)[:, None])


@triton.jit
def _bc_rows4(row, s0, L, H, W, order_row, KIND: tl.constexpr, REV: tl.constexpr, NP: tl.constexpr):
    """The rows (``_bc_at``) of a block of 4 steps from base step s0, in route order."""
    return (_bc_at(row, _sidx(s0, 0, REV, 4), L, H, W, order_row, KIND, NP),
            _bc_at(row, _sidx(s0, 1, REV, 4), L, H, W, order_row, KIND, NP),
            _bc_at(row, _sidx(s0, 2, REV, 4), L, H, W, order_row, KIND, NP),
            _bc_at(row, _sidx(s0, 3, REV, 4), L, H, W, order_row, KIND, NP))


@triton.jit
def _rstep(h, A2, u_i, dt_i, Bi):
    """The state after a step, from the state h before it and the step's row of B (recomputation)."""
    return tl.exp2(dt_i[None, :] * A2) * h + Bi * (dt_i * u_i)[None, :]


@triton.jit
def _sidx(s0, r: tl.constexpr, REV: tl.constexpr, BS: tl.constexpr = 8):
    """Base-order step of the r-th route-order step of a block of BS steps starting at base step s0."""
    if REV:
        return s0 + (BS - 1 - r)
    else:
        return s0 + r


@triton.jit
def _hblock8(h, A2, u, dt, s0, L, H, W, order_row, b_row, KIND: tl.constexpr, REV: tl.constexpr,
             NP: tl.constexpr):
    """The state after a block of 8 steps (route order), from the state h before it."""
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(u)
    e0, e1, e2, e3, e4, e5, e6, e7 = _split8(dt)
    if REV:
        x0, x1, x2, x3, x4, x5, x6, x7 = x7, x6, x5, x4, x3, x2, x1, x0
        e0, e1, e2, e3, e4, e5, e6, e7 = e7, e6, e5, e4, e3, e2, e1, e0
    lo, hi = (s0 + 4, s0) if REV else (s0, s0 + 4)  # base steps of route steps 0-3, 4-7
    Bl = _bc_rows4(b_row, lo, L, H, W, order_row, KIND, REV, NP)
    Bh = _bc_rows4(b_row, hi, L, H, W, order_row, KIND, REV, NP)
    h = _rstep(h, A2, x0, e0, Bl[0])
    h = _rstep(h, A2, x1, e1, Bl[1])
    h = _rstep(h, A2, x2, e2, Bl[2])
    h = _rstep(h, A2, x3, e3, Bl[3])
    h = _rstep(h, A2, x4, e4, Bh[0])
    h = _rstep(h, A2, x5, e5, Bh[1])
    h = _rstep(h, A2, x6, e6, Bh[2])
    return _rstep(h, A2, x7, e7, Bh[3])


@triton.jit
def _astep(ga, hp, dA, A2, u_i, dt_i, dy_i, Bi, Ci, s, L, H, W, order_row, db_row, dc_row, dst_row, smask,
           ndmask, N, KIND: tl.constexpr, NP: tl.constexpr, HAS_DSTATES: tl.constexpr, SAME_GROUP: tl.constexpr,
           HAS_Z: tl.constexpr, BC_MODE: tl.constexpr):
    """Adjoint of base-order step s, whose rows of B and C are Bi, Ci (``_bc_at``). ga: a_next * g_next (the
    adjoint flowing back into the state after step s); hp: the state before step s. Returns the adjoint flowing
    into hp, dA, and per channel the gradient of dt (before softplus), of u (scan part) and the scan output y (for
    dz); then the step's (NP, BD) dB and dC
    partials, which it has already added to their rows unless BC_MODE is 3 (the caller adds a block's channel sums).
    BC_MODE 2 (16 states, 8 channels a warp, see ``_scatter_add4``): the caller sums the states too; in place of
    ddt, du and y it gets each lane group's part of the sums of w A, g B and C h (``_lane_groups``)."""
    pos = _pos_of(s, L, H, W, order_row, KIND)
    valid = s < L
    nb = tl.arange(0, NP)[:, None]
    a = tl.exp2(dt_i[None, :] * A2)
    dtu = dt_i * u_i
    h = a * hp + Bi * dtu[None, :]
    g = Ci * dy_i[None, :] + ga
    if HAS_DSTATES:
        g += _tile(tl.load(dst_row + pos * N, mask=smask & valid, other=0.0), A2.shape[1])
    w = g * a * hp  # d loss / d (dt A): the exponent's gradient
    dA += w * dt_i[None, :]
    pB = g * dtu[None, :]
    pC = h * dy_i[None, :]
    if BC_MODE == 2:  # sums over the states by the caller too, from each lane group's part (_lane_groups)
        ddt = _lane_groups(w * A2)
        gB = _lane_groups(g * Bi)
    else:
        gB = tl.sum(g * Bi, 0)
        ddt = tl.sum(w * A2, 0) * 0.6931471805599453 + u_i * gB
    if BC_MODE == 1:  # one row of B and C for the whole tile: its channels' sum, stored to the tile's own row
        tl.store(db_row + pos * NP + tl.arange(0, NP), tl.sum(pB, 1), mask=valid)
        tl.store(dc_row + pos * NP + tl.arange(0, NP), tl.sum(pC, 1), mask=valid)
    elif BC_MODE == 2 or BC_MODE == 4:  # the caller sums the block's steps together (_scatter_add4, _scatter_add8)
        pass
    elif BC_MODE == 3:  # the caller adds the block's channel sums with one atomic (_block_add4)
        pB = tl.sum(pB, 1)
        pC = tl.sum(pC, 1)
    elif SAME_GROUP:  # one row of B and C for the whole tile: sum over its channels, then one atomic per state
        tl.atomic_add(db_row + pos * NP + tl.arange(0, NP), tl.sum(pB, 1), mask=valid, sem="relaxed")
        tl.atomic_add(dc_row + pos * NP + tl.arange(0, NP), tl.sum(pC, 1), mask=valid, sem="relaxed")
    else:
        tl.atomic_add(db_row + pos * NP + nb, pB, mask=ndmask & valid, sem="relaxed")
        tl.atomic_add(dc_row + pos * NP + nb, pC, mask=ndmask & valid, sem="relaxed")
    if BC_MODE == 2:
        return a * g, dA, ddt, gB, _lane_groups(Ci * h), pB, pC
    else:
        if HAS_Z:
            y = tl.sum(Ci * h, 0)
        else:
            y = gB * 0.0
        return a * g, dA, ddt, dt_i * gB, y, pB, pC


@triton.jit
def _bblock8(ga, dA, ck, A2, u, dt, dy, s0, L, H, W, order_row, b_row, c_row, db_row, dc_row, dst_row, smask, ndmask,
             N,
             KIND: tl.constexpr, REV: tl.constexpr, NP: tl.constexpr, HAS_DSTATES: tl.constexpr,
             SAME_GROUP: tl.constexpr, HAS_Z: tl.constexpr, BC_MODE: tl.constexpr):
    """Backward through a block of 8 steps given the state entering it (at ``ck``) and the adjoint ga flowing back
    from after it. The states of the block are recomputed in two halves of 4 (register budget): the first half is
    run once to reach the second, whose states are kept for its adjoint, then again for its own.

    Returns ga entering the block, dA, and [BD, 8] tiles (base order) of ddt (before softplus), du (scan part), y."""
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(u)
    e0, e1, e2, e3, e4, e5, e6, e7 = _split8(dt)
    q0, q1, q2, q3, q4, q5, q6, q7 = _split8(dy)
    if REV:  # route order within the block
        x0, x1, x2, x3, x4, x5, x6, x7 = x7, x6, x5, x4, x3, x2, x1, x0
        e0, e1, e2, e3, e4, e5, e6, e7 = e7, e6, e5, e4, e3, e2, e1, e0
        q0, q1, q2, q3, q4, q5, q6, q7 = q7, q6, q5, q4, q3, q2, q1, q0
    lo, hi = (s0 + 4, s0) if REV else (s0, s0 + 4)  # base steps of route steps 0-3, 4-7
    Bl = _bc_rows4(b_row, lo, L, H, W, order_row, KIND, REV, NP)
    Bh = _bc_rows4(b_row, hi, L, H, W, order_row, KIND, REV, NP)
    Cl = _bc_rows4(c_row, lo, L, H, W, order_row, KIND, REV, NP)
    Ch = _bc_rows4(c_row, hi, L, H, W, order_row, KIND, REV, NP)
    h = _tile(ck, A2.shape[1])
    h = _rstep(h, A2, x0, e0, Bl[0])
    h = _rstep(h, A2, x1, e1, Bl[1])
    h = _rstep(h, A2, x2, e2, Bl[2])
    p4 = _rstep(h, A2, x3, e3, Bl[3])
    p5 = _rstep(p4, A2, x4, e4, Bh[0])
    p6 = _rstep(p5, A2, x5, e5, Bh[1])
    p7 = _rstep(p6, A2, x6, e6, Bh[2])
    ga, dA, t7, v7, y7, _, _ = _astep(ga, p7, dA, A2, x7, e7, q7, Bh[3], Ch[3], _sidx(s0, 7, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t6, v6, y6, _, _ = _astep(ga, p6, dA, A2, x6, e6, q6, Bh[2], Ch[2], _sidx(s0, 6, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t5, v5, y5, _, _ = _astep(ga, p5, dA, A2, x5, e5, q5, Bh[1], Ch[1], _sidx(s0, 5, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t4, v4, y4, _, _ = _astep(ga, p4, dA, A2, x4, e4, q4, Bh[0], Ch[0], _sidx(s0, 4, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    p0 = _tile(ck, A2.shape[1])
    p1 = _rstep(p0, A2, x0, e0, Bl[0])
    p2 = _rstep(p1, A2, x1, e1, Bl[1])
    p3 = _rstep(p2, A2, x2, e2, Bl[2])
    ga, dA, t3, v3, y3, _, _ = _astep(ga, p3, dA, A2, x3, e3, q3, Bl[3], Cl[3], _sidx(s0, 3, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t2, v2, y2, _, _ = _astep(ga, p2, dA, A2, x2, e2, q2, Bl[2], Cl[2], _sidx(s0, 2, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t1, v1, y1, _, _ = _astep(ga, p1, dA, A2, x1, e1, q1, Bl[1], Cl[1], _sidx(s0, 1, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t0, v0, y0, _, _ = _astep(ga, p0, dA, A2, x0, e0, q0, Bl[0], Cl[0], _sidx(s0, 0, REV), L,
                                      H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                      SAME_GROUP, HAS_Z, BC_MODE)
    if REV:
        return (ga, dA, _join8(t7, t6, t5, t4, t3, t2, t1, t0), _join8(v7, v6, v5, v4, v3, v2, v1, v0),
                _join8(y7, y6, y5, y4, y3, y2, y1, y0))
    else:
        return (ga, dA, _join8(t0, t1, t2, t3, t4, t5, t6, t7), _join8(v0, v1, v2, v3, v4, v5, v6, v7),
                _join8(y0, y1, y2, y3, y4, y5, y6, y7))


@triton.jit
def _split4(x):
    """The 4 steps of a [BD, 4] tile, as [BD] vectors in step order."""
    e, o = _split2(x)  # steps 0 2 / 1 3
    x0, x2 = tl.split(e)
    x1, x3 = tl.split(o)
    return x0, x1, x2, x3


@triton.jit
def _join4(x0, x1, x2, x3):
    """Inverse of _split4: [BD, 4] from the 4 steps."""
    return _join2(tl.join(x0, x2), tl.join(x1, x3))


@triton.jit
def _hblock4(h, A2, u, dt, Bs, REV: tl.constexpr):
    """The state after a block of 4 steps (route order), from the state h before it and the block's rows of B
    (``_bc_rows4``)."""
    x0, x1, x2, x3 = _split4(u)
    e0, e1, e2, e3 = _split4(dt)
    if REV:
        x0, x1, x2, x3 = x3, x2, x1, x0
        e0, e1, e2, e3 = e3, e2, e1, e0
    h = _rstep(h, A2, x0, e0, Bs[0])
    h = _rstep(h, A2, x1, e1, Bs[1])
    h = _rstep(h, A2, x2, e2, Bs[2])
    return _rstep(h, A2, x3, e3, Bs[3])


@triton.jit
def _shfl_xor(x, LANE: tl.constexpr):
    """Each thread's registers of x from the lane ``LANE`` (1, 2, 4, 8 or 16) apart by a butterfly shuffle (fp32).
    Not pure for the compiler, so that it does not move a layout conversion across the shuffle (which would change
    what the lanes hold). The distance is an immediate operand: a constant tensor the compiler folds."""
    tl.static_assert(LANE == 1 or LANE == 2 or LANE == 4 or LANE == 8 or LANE == 16)
    return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;", "=r,r,r",
                                     [x, tl.full(x.shape, LANE, tl.int32)], dtype=tl.float32, is_pure=False, pack=1)


@triton.jit
def _from_channel(x, d, M: tl.constexpr, AXIS: tl.constexpr, LANES: tl.constexpr):
    """x of channel d ^ M (d: the channel index along AXIS, broadcastable to x). LANES: the channels are a warp's
    lanes, channel d on lane bits of d (see ``_scatter_add4``): one butterfly shuffle a register, in place, where
    tl.gather first moves its operand to a layout of its own through shared memory. Else (and under the
    interpreter, which runs no PTX) tl.gather, the same values."""
    if LANES:
        return _shfl_xor(x, M)
    else:
        return tl.gather(x, tl.broadcast_to(d ^ M, x.shape), AXIS)


@triton.jit
def _scatter_add8(db_row, dc_row, B0, B1, B2, B3, C0, C1, C2, C3, s0, L, H, W, order_row, KIND: tl.constexpr,
                  REV: tl.constexpr, LANES: tl.constexpr):
    """One state, 32 channels a warp: add the channel sums of a block's four steps' dB and dC partials ((1, 32)
    each, B_r and C_r at route step r) to their rows. A reduce-scatter of the 8 values over the channels: the
    exchange with channel d ^ 4 splits dB from dC, d ^ 2 and d ^ 1 the steps; exchanges with d ^ 8 and d ^ 16 then
    finish the sums. Channel d < 8 holds one (quantity, step) sum and adds it: 9 shuffles a block where summing
    each step's two values over the warp took 40. LANES: the channels are the warp's lanes (the one-state tiles'
    compiled layout), the exchanges are shuffles in place; else tl.gather (see ``_from_channel``)."""
    tl.static_assert(B0.shape[0] == 1 and B0.shape[1] == 32)
    d = tl.arange(0, 32)[None, :]
    q = (d & 4) != 0  # dC (else dB)
    x0 = tl.where(q, C0, B0) + _from_channel(tl.where(q, B0, C0), d, 4, 1, LANES)
    x1 = tl.where(q, C1, B1) + _from_channel(tl.where(q, B1, C1), d, 4, 1, LANES)
    x2 = tl.where(q, C2, B2) + _from_channel(tl.where(q, B2, C2), d, 4, 1, LANES)
    x3 = tl.where(q, C3, B3) + _from_channel(tl.where(q, B3, C3), d, 4, 1, LANES)
    hi = (d & 2) != 0
    y0 = tl.where(hi, x2, x0) + _from_channel(tl.where(hi, x0, x2), d, 2, 1, LANES)
    y1 = tl.where(hi, x3, x1) + _from_channel(tl.where(hi, x1, x3), d, 2, 1, LANES)
    odd = (d & 1) != 0
    r = tl.where(odd, y1, y0) + _from_channel(tl.where(odd, y0, y1), d, 1, 1, LANES)
    r += _from_channel(r, d, 8, 1, LANES)
    r += _from_channel(r, d, 16, 1, LANES)
    r_step = d & 3
    step = s0 + (3 - r_step if REV else r_step)
    row = tl.where(q, dc_row, db_row)
    tl.atomic_add(row + _pos_of(step, L, H, W, order_row, KIND), r, mask=(d < 8) & (step < L), sem="relaxed")


@triton.jit
def _lane_groups(x):
    """A (16, 8) tile summed over each thread's 4 states: [4, 8], row g = the states of lane group g (states
    4 g .. 4 g + 3; in the compiled layout a thread's registers, so the sum moves no data)."""
    return tl.sum(tl.reshape(x, [4, 4, x.shape[1]]), 1)


@triton.jit
def _from_group(x, M: tl.constexpr, LANES: tl.constexpr):
    """x ([4, 8]) of lane group g ^ M (M = 1 or 2): a butterfly shuffle across lanes 8 M apart when the groups are
    lane bits 3-4 (see ``_from_channel``), else tl.gather."""
    if LANES:
        return _shfl_xor(x, 8 * M)
    else:
        return tl.gather(x, tl.broadcast_to(tl.arange(0, 4)[:, None] ^ M, x.shape), 0)


@triton.jit
def _group_scatter4(T0, T1, T2, T3, LANES: tl.constexpr):
    """Four steps' lane-group parts ([4, 8] each, ``_lane_groups``) of a sum over states, summed over the groups as
    a reduce-scatter: group g keeps step g's sum. Returns the [8, 4] tile of the four steps' sums (channel, step):
    one value a thread, where summing each step over the groups took two shuffles a step and quantity."""
    G = tl.arange(0, 4)[:, None]
    hi = (G & 2) != 0
    q0 = tl.where(hi, T2, T0) + _from_group(tl.where(hi, T0, T2), 2, LANES)
    q1 = tl.where(hi, T3, T1) + _from_group(tl.where(hi, T1, T3), 2, LANES)
    odd = (G & 1) != 0
    return tl.trans(tl.where(odd, q1, q0) + _from_group(tl.where(odd, q0, q1), 1, LANES))


@triton.jit
def _scatter_add4(row, P0, P1, P2, P3, s0, L, H, W, order_row, KIND: tl.constexpr, REV: tl.constexpr,
                  NP: tl.constexpr, LANES: tl.constexpr):
    """Add the channel sums of a block's four steps' (NP, 8) partials (P_r at route step r: a block's dB or dC over
    a tile of 8 channels) to their (step, state) rows: a reduce-scatter over the channels. At the exchanges with
    channel d ^ 4 and d ^ 2 each channel keeps the steps its bit says and passes on the others (half of what is
    left, instead of summing all four steps everywhere); at the last, with d ^ 1, it keeps one pair of each 4
    consecutive states (4 a + 2 b + e: b = bit0) the same way. Channel d ends with route step 2 bit2 + bit1 and its
    pairs of states, every (step, state) sum held once: one atomic each, no masks.

    LANES: the compiled sequential backward with 16 states, whose (state, channel) tiles have the 8 channels on
    lane bits 0-2 and a thread's 4 consecutive states in registers (checked in its TTGIR; other state counts get
    other layouts: SCATTER_NP): the exchanges are lane shuffles in place and the split of a thread's 4 states moves
    no data.
    """
    tl.static_assert(P0.shape[1] == 8)
    d = tl.arange(0, 8)[None, :]
    hi = (d & 4) != 0
    q0 = tl.where(hi, P2, P0) + _from_channel(tl.where(hi, P0, P2), d, 4, 1, LANES)
    q1 = tl.where(hi, P3, P1) + _from_channel(tl.where(hi, P1, P3), d, 4, 1, LANES)
    mid = (d & 2) != 0
    r = tl.where(mid, q1, q0) + _from_channel(tl.where(mid, q0, q1), d, 2, 1, LANES)
    # b moved last and split off: [NP / 4, 2 (e), 8] each
    lo, up = tl.split(tl.permute(tl.reshape(r, [NP // 4, 2, 2, 8]), [0, 2, 3, 1]))
    d3 = tl.arange(0, 8)[None, None, :]
    odd = (d3 & 1) != 0
    mine = tl.where(odd, up, lo) + _from_channel(tl.where(odd, lo, up), d3, 1, 2, LANES)
    r_step = (d3 >> 1) & 3
    step = s0 + (3 - r_step if REV else r_step)
    state = 4 * tl.arange(0, NP // 4)[:, None, None] + 2 * (d3 & 1) + tl.arange(0, 2)[None, :, None]
    tl.atomic_add(row + _pos_of(step, L, H, W, order_row, KIND) * NP + state, mine, mask=step < L, sem="relaxed")


@triton.jit
def _step_inputs(u, x, do, zt, bias, mask, K: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 MERGE: tl.constexpr, HAS_Z: tl.constexpr, FAST: tl.constexpr):
    """The backward's per-(channel, step) inputs, elementwise on [BD, BS] tiles: from u, delta (x), the output's
    gradient (do) and z, return x + bias, dt (0 on padding), do (over K for a mean), dy (through the gate) and the
    gate's sigmoid."""
    if HAS_BIAS:
        x = x + bias
    dt = _softplus(x, FAST) if SOFTPLUS else x
    dt = tl.where(mask, dt, 0.0)
    if MERGE == 2:
        do = do / K
    if HAS_Z:
        zsig = _sigmoid(zt, FAST)
        dy = do * zt * zsig
    else:
        zsig = do
        dy = do
    return x, dt, do, dy, zsig


@triton.jit
def _step_outputs(ddt, du, y, u, x, do, dy, zt, zsig, Dk, mask, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                  SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """The backward's per-(channel, step) gradients from the scan's (elementwise on tiles): ddelta (through
    the softplus; 0 on padding), du (with D's term), dz, and the dD term dy * u (0 on padding)."""
    if HAS_D:
        du += Dk * dy
        dd = tl.where(mask, dy * u, 0.0)
    else:
        dd = ddt * 0.0
    if SOFTPLUS:
        ddt = tl.where(x > 20.0, ddt, ddt * _sigmoid(x, FAST))
    ddt = tl.where(mask, ddt, 0.0)
    if HAS_Z:
        if HAS_D:
            y += Dk * u
        dz = do * y * zsig * (1.0 + zt * (1.0 - zsig))
    else:
        dz = ddt
    return ddt, du, dz, dd


@triton.jit
def _step_stores(du, ddt, dz, pos, mask, du_ptr, ddl_ptr, dz_ptr, wsu_ptr, wsdl_ptr, wsz_ptr, du0, ddl0, dz0, ws0,
                 sdu_l, sddl_l, sdz_l, sws_l, U_ROUTES: tl.constexpr, DL_ROUTES: tl.constexpr, HAS_Z: tl.constexpr,
                 k: tl.constexpr, K: tl.constexpr, PAR_ROUTES: tl.constexpr):
    """Write the backward's du, ddelta, dz at positions pos (offsets *0 of position 0): per route, or summed over
    the routes through the workspaces (``_route_sum``) for inputs the routes share."""
    ws_offs = ws0 + pos * sws_l
    if U_ROUTES:
        tl.store(du_ptr + du0 + pos * sdu_l, du.to(du_ptr.dtype.element_ty), mask=mask)
    else:
        _route_sum(du, wsu_ptr, ws_offs, du_ptr, du0 + pos * sdu_l, mask, k, K, PAR_ROUTES)
    if DL_ROUTES:
        tl.store(ddl_ptr + ddl0 + pos * sddl_l, ddt.to(ddl_ptr.dtype.element_ty), mask=mask)
    else:
        _route_sum(ddt, wsdl_ptr, ws_offs, ddl_ptr, ddl0 + pos * sddl_l, mask, k, K, PAR_ROUTES)
    if HAS_Z:
        _route_sum(dz, wsz_ptr, ws_offs, dz_ptr, dz0 + pos * sdz_l, mask, k, K, PAR_ROUTES)


@triton.jit
def _block_add4(row, S0, S1, S2, S3, s0, L, H, W, order_row, KIND: tl.constexpr, REV: tl.constexpr,
                NP: tl.constexpr):
    """Add a block's 4 steps of channel sums S_r ([NP], route order r) to their rows with one atomic over an
    [NP, 4] tile: the compiler moves the sums to the atomic's layout once a block (a shared-memory round trip and
    a barrier) instead of once a step and quantity."""
    r = tl.arange(0, 4)
    steps = s0 + (3 - r if REV else r)
    pos = _pos_of(steps, L, H, W, order_row, KIND)
    vals = _join4(S0, S1, S2, S3)  # [NP, 4], column r = route step r
    tl.atomic_add(row + pos[None, :] * NP + tl.arange(0, NP)[:, None], vals, mask=(steps < L)[None, :],
                  sem="relaxed")


@triton.jit
def _bblock4(ga, dA, ck, A2, u, dt, dy, Bs, Cs, s0, L, H, W, order_row, db_row, dc_row, dst_row, smask, ndmask, N,
             KIND: tl.constexpr, REV: tl.constexpr, NP: tl.constexpr, HAS_DSTATES: tl.constexpr,
             SAME_GROUP: tl.constexpr, HAS_Z: tl.constexpr, BC_MODE: tl.constexpr, LANES: tl.constexpr):
    """``_bblock8`` for a block of 4 steps, whose rows of B and C are Bs, Cs (``_bc_rows4``): its states are
    recomputed once from the block's checkpoint and all kept (fewer live values than a block of 8, twice the
    checkpoints)."""
    x0, x1, x2, x3 = _split4(u)
    e0, e1, e2, e3 = _split4(dt)
    q0, q1, q2, q3 = _split4(dy)
    if REV:  # route order within the block
        x0, x1, x2, x3 = x3, x2, x1, x0
        e0, e1, e2, e3 = e3, e2, e1, e0
        q0, q1, q2, q3 = q3, q2, q1, q0
    p0 = _tile(ck, A2.shape[1])
    p1 = _rstep(p0, A2, x0, e0, Bs[0])
    p2 = _rstep(p1, A2, x1, e1, Bs[1])
    p3 = _rstep(p2, A2, x2, e2, Bs[2])
    ga, dA, t3, v3, y3, b3, c3 = _astep(ga, p3, dA, A2, x3, e3, q3, Bs[3], Cs[3], _sidx(s0, 3, REV, 4), L, H, W,
                                        order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                        SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t2, v2, y2, b2, c2 = _astep(ga, p2, dA, A2, x2, e2, q2, Bs[2], Cs[2], _sidx(s0, 2, REV, 4), L, H, W,
                                        order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                        SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t1, v1, y1, b1, c1 = _astep(ga, p1, dA, A2, x1, e1, q1, Bs[1], Cs[1], _sidx(s0, 1, REV, 4), L, H, W,
                                        order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                        SAME_GROUP, HAS_Z, BC_MODE)
    ga, dA, t0, v0, y0, b0, c0 = _astep(ga, p0, dA, A2, x0, e0, q0, Bs[0], Cs[0], _sidx(s0, 0, REV, 4), L, H, W,
                                        order_row, db_row, dc_row, dst_row, smask, ndmask, N, KIND, NP, HAS_DSTATES,
                                        SAME_GROUP, HAS_Z, BC_MODE)
    if BC_MODE == 2:
        _scatter_add4(db_row, b0, b1, b2, b3, s0, L, H, W, order_row, KIND, REV, NP, LANES)
        _scatter_add4(dc_row, c0, c1, c2, c3, s0, L, H, W, order_row, KIND, REV, NP, LANES)
        # the sums over states, per (channel, base-order step): t_r, v_r, y_r hold route step r's groups' parts
        if REV:
            t0, t1, t2, t3 = t3, t2, t1, t0
            v0, v1, v2, v3 = v3, v2, v1, v0
            y0, y1, y2, y3 = y3, y2, y1, y0
        gB = _group_scatter4(v0, v1, v2, v3, LANES)
        ddt = _group_scatter4(t0, t1, t2, t3, LANES) * 0.6931471805599453 + u * gB
        y = _group_scatter4(y0, y1, y2, y3, LANES) if HAS_Z else gB * 0.0
        du = dt * gB
    else:
        if BC_MODE == 3:
            _block_add4(db_row, b0, b1, b2, b3, s0, L, H, W, order_row, KIND, REV, NP)
            _block_add4(dc_row, c0, c1, c2, c3, s0, L, H, W, order_row, KIND, REV, NP)
        elif BC_MODE == 4:
            _scatter_add8(db_row, dc_row, b0, b1, b2, b3, c0, c1, c2, c3, s0, L, H, W, order_row, KIND, REV, LANES)
        if REV:
            ddt, du, y = _join4(t3, t2, t1, t0), _join4(v3, v2, v1, v0), _join4(y3, y2, y1, y0)
        else:
            ddt, du, y = _join4(t0, t1, t2, t3), _join4(v0, v1, v2, v3), _join4(y0, y1, y2, y3)
    return ga, dA, ddt, du, y


@triton.jit
def _ck_store(ptrs, x, mask, VEC: tl.constexpr):
    """Store a flat state (``_flat``) at its checkpoint pointers. VEC (16 states, 8 channels a warp, compiled): a
    thread's 4 registers are 4 consecutive states of one channel, 16 contiguous bytes of the (channel, state)
    checkpoint rows: one 16-byte store (pack=4 hands the inline PTX a thread's 4 consecutive elements) where
    tl.store, not told the pointers' contiguity (the `one` trick keeps the scan's layout), issues four 4-byte ones;
    the whole checkpoint tile is always in bounds then (channels padded to tiles)."""
    if VEC:
        # (the pointers as integers: the elementwise asm cannot broadcast a pointer with a float)
        tl.inline_asm_elementwise("st.global.v4.f32 [$8], {$4, $5, $6, $7};\n\tmov.u32 $0, 0;\n\tmov.u32 $1, 0;"
                                  "\n\tmov.u32 $2, 0;\n\tmov.u32 $3, 0;", "=r,=r,=r,=r,r,r,r,r,l,l,l,l",
                                  [x, ptrs.to(tl.int64)], dtype=tl.int32, is_pure=False, pack=4)
    else:
        tl.store(ptrs, x, mask=mask)


@triton.jit
def _ck_load(ptrs, VEC: tl.constexpr):
    """Load a flat checkpoint state: with VEC one 16-byte load a thread (see ``_ck_store``)."""
    if VEC:
        return tl.inline_asm_elementwise("ld.global.v4.f32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l,l,l,l", [ptrs],
                                         dtype=tl.float32, is_pure=False, pack=4)
    else:
        return tl.load(ptrs)


@triton.jit
def _ck_block(h, A2, u, dt, Bs, j, bias, mask, ck_ptrs, ck_mask, L, H, W, order_row, b_row, KIND: tl.constexpr,
              REV: tl.constexpr, NP: tl.constexpr, BS: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              FAST: tl.constexpr, VEC: tl.constexpr = False):
    """One block j of the backward's first pass, from its [BD, BS] tiles u and delta (dt, as loaded) and with 4
    steps its rows of B (Bs, ``_bc_rows4``; with 8 they are read here): store the state h entering it (route order)
    at ck_ptrs and return the state after it."""
    if HAS_BIAS:
        dt += bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt, FAST)
    dt = tl.where(mask, dt, 0.0)
    _ck_store(ck_ptrs, _flat(h), ck_mask, VEC)
    if BS == 4:
        h = _hblock4(h, A2, u, dt, Bs, REV)
    else:
        h = _hblock8(h, A2, u, dt, j * 8, L, H, W, order_row, b_row, KIND, REV, NP)
    return h


@triton.jit
def _bwd_loads(j, t, BS: tl.constexpr, L, H, W, order_row, KIND: tl.constexpr, dmask, u_row, dl_row, do_row, z_row,
               su_l, sdl_l, sdo_l, sz_l, ck_row, ck_stride, HAS_Z: tl.constexpr, VEC: tl.constexpr = False):
    """What the backward's second pass reads for block j: [BD, BS] tiles of u, delta, the output's gradient and z
    (the gradient again without z), fp32, and the flat state entering the block."""
    u, x = _ud_loads(j, t, BS, L, H, W, order_row, KIND, dmask, u_row, dl_row, su_l, sdl_l)
    s = j * BS + t
    pos = _positions(s, L, H, W, order_row, KIND)
    m2 = dmask[:, None] & (s < L)[None, :]
    do = tl.load(do_row + pos[None, :] * sdo_l, mask=m2, other=0.0).to(tl.float32)
    if HAS_Z:
        zt = tl.load(z_row + pos[None, :] * sz_l, mask=m2, other=0.0).to(tl.float32)
    else:
        zt = do
    return u, x, do, zt, _ck_load(ck_row + j * ck_stride, VEC)


@triton.jit(do_not_specialize=["sA_d", "sA_n", "one"])
def _seq_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, order_ptr, init_ptr, dout_ptr, dlast_ptr, dst_ptr,
    ck_ptr, du_ptr, ddl_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dz_ptr, dinit_ptr, wsu_ptr, wsdl_ptr, wsz_ptr,
    cnt_ptr,
    su_b, su_k, su_d, su_l, sdl_b, sdl_k, sdl_d, sdl_l, sA_k, sA_d, sA_n,
    sB_b, sB_k, sB_g, sD_k, sbias_k, sz_b, sz_d, sz_l, sdo_b, sdo_k, sdo_d, sdo_l, sord_b, sord_k,
    sdu_b, sdu_k, sdu_d, sdu_l, sddl_b, sddl_k, sddl_d, sddl_l, sdz_b, sdz_d, sdz_l, sws_b, sws_k, sws_d, sws_l,
    L, H, W, Dm, N, n_sub, d_per_group, one, D_PAD,
    K: tl.constexpr, KINDS: tl.constexpr, REVS: tl.constexpr,
    U_ROUTES: tl.constexpr, DL_ROUTES: tl.constexpr, A_ROUTES: tl.constexpr, BC_ROUTES: tl.constexpr,
    X_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DLAST: tl.constexpr, HAS_DSTATES: tl.constexpr,
    MERGE: tl.constexpr, SAME_GROUP: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr,
    PREFETCH: tl.constexpr, AHEAD: tl.constexpr, PREFETCH_CK: tl.constexpr, PIPE1: tl.constexpr, PIPE: tl.constexpr,
    PASS1: tl.constexpr, PIPE_BC: tl.constexpr, PIPE_BC2: tl.constexpr, VEC_CK: tl.constexpr,
    BC_MODE: tl.constexpr, PAR_ROUTES: tl.constexpr, BS: tl.constexpr,
    FAST: tl.constexpr, ROUTES_FIRST: tl.constexpr, TAIL_MERGE: tl.constexpr, MERGE_BL: tl.constexpr,
):
    # as in the forward; shared inputs' gradients go to route planes
    pid_d, b, route, n_d_programs = _program_ids(PAR_ROUTES, ROUTES_FIRST)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < Dm
    n = tl.arange(0, NP) * one  # `one` hides the stride from the compiler: n stays in registers
    t = tl.arange(0, BS)  # blocks of BS = 8 or 4 steps
    nb = n_sub * (8 // BS)  # with 4, a last block may be all padding (masked; it leaves the state alone)
    nd_mask = (n < N)[:, None] & dmask[None, :]
    # (state, channel) tiles travel to and from memory flat, state-major, with the strides hidden from the compiler
    # (`one`), so that they keep the layout of the scan: lanes = channels, states in registers
    e = tl.arange(0, NP * BLOCK_D) * one
    en = _state_of(e // BLOCK_D, NP, BLOCK_D)
    ed = pid_d * BLOCK_D + e % BLOCK_D
    e_mask = (en < N) & (ed < Dm)
    # prefetch: lane i asks for step i % BS of the next block (its channel's u, delta, ...; that step's B, C row)
    lane_step = tl.arange(0, BLOCK_D) % BS
    for k in tl.static_range(K):
        kb = k if BC_ROUTES else 0
        kx = k if X_ROUTES else 0
        u_row0 = u_ptr + b * su_b + (k if U_ROUTES else 0) * su_k + tl.minimum(d, Dm - 1) * su_d
        dl_row0 = dl_ptr + b * sdl_b + (k if DL_ROUTES else 0) * sdl_k + tl.minimum(d, Dm - 1) * sdl_d
        u_row = u_row0[:, None]
        dl_row = dl_row0[:, None]
        A2 = _tile(tl.load(A_ptr + (k if A_ROUTES else 0) * sA_k + ed * sA_d + en * sA_n, mask=e_mask, other=0.0),
                   BLOCK_D) * 1.4426950408889634
        if SAME_GROUP:
            grp = (pid_d * BLOCK_D) // d_per_group
        else:
            grp = (tl.minimum(d, Dm - 1) // d_per_group)[None, :]  # padding channels read a valid row
        bc_off = b * sB_b + kb * sB_k + grp * sB_g
        b_row = B_ptr + bc_off
        c_row = C_ptr + bc_off
        if BC_MODE == 1:  # rows of this tile alone: (B, K, tiles, n_sub * 8, NP), summed over tiles by the host
            part_off = ((b * K + k) * n_d_programs + pid_d) * n_sub * 8 * NP
            db_row = dB_ptr + part_off
            dc_row = dC_ptr + part_off
        else:
            db_row = dB_ptr + bc_off
            dc_row = dC_ptr + bc_off
        order_row = order_ptr + b * sord_b + k * sord_k
        dst_row = dst_ptr + ((b * K + k) * Dm + ed) * L * N + en
        ck_row = ck_ptr + ((b * K + k) * nb * D_PAD + ed) * NP + en  # block-entry states, channels padded to tiles
        bias = tl.load(bias_ptr + kx * sbias_k + d, mask=dmask, other=0.0) if HAS_BIAS else 0.0
        Dk = tl.load(D_ptr + kx * sD_k + d, mask=dmask, other=0.0) if HAS_D else 0.0
        # pass 1: the state entering every block, in route order
        if HAS_INIT:
            h = _tile(tl.load(init_ptr + ((b * K + k) * Dm + ed) * N + en, mask=e_mask, other=0.0), BLOCK_D)
        else:
            h = tl.zeros([NP, BLOCK_D], tl.float32)
        live = (route == k) if PAR_ROUTES else (pid_d >= 0)
        n_blocks = tl.where(live, nb, 0)
        if PIPE1:
            j_first = nb - 1 if REVS[k] else 0
            nu, ndt = _ud_loads(j_first, t, BS, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row, su_l, sdl_l)
            if PIPE_BC and BS == 4:
                nB = _bc_rows4(b_row, j_first * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
        for jj in range(n_blocks if PASS1 else 0):  # (without PASS1 another kernel wrote ck: _seq_checkpoints)
            j = (nb - 1 - jj) if REVS[k] else jj
            if PREFETCH:
                pn = _pos_of(_next_block(j, nb, REVS[k], AHEAD) * BS + lane_step, L, H, W, order_row, KINDS[k])
                _prefetch(u_row0 + pn * su_l, True)
                _prefetch(dl_row0 + pn * sdl_l, True)
                _prefetch(b_row + pn * NP, SAME_GROUP)
            m2 = dmask[:, None] & (j * BS + t < L)[None, :]
            Bs = None
            if PIPE1:
                u, dt = nu, ndt
                j_next = _next_block(j, nb, REVS[k])
                nu, ndt = _ud_loads(j_next, t, BS, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row, su_l, sdl_l)
                if PIPE_BC and BS == 4:
                    Bs = nB
                    nB = _bc_rows4(b_row, j_next * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
            else:
                u, dt = _ud_loads(j, t, BS, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row, su_l, sdl_l)
            if BS == 4 and not (PIPE1 and PIPE_BC):
                Bs = _bc_rows4(b_row, j * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
            h = _ck_block(h, A2, u, dt, Bs, j, bias, m2, ck_row + j * NP * D_PAD, ed < D_PAD, L, H, W, order_row, b_row,
                          KINDS[k], REVS[k], NP, BS, HAS_BIAS, SOFTPLUS, FAST, VEC_CK)
        tl.debug_barrier()
        # pass 2: blocks in reverse route order
        if HAS_DLAST:
            ga = _tile(tl.load(dlast_ptr + ((b * K + k) * Dm + ed) * N + en, mask=e_mask, other=0.0), BLOCK_D)
        else:
            ga = tl.zeros([NP, BLOCK_D], tl.float32)
        dA = tl.zeros([NP, BLOCK_D], tl.float32)
        dD_acc = tl.zeros([BLOCK_D], tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], tl.float32)
        do_row0 = dout_ptr + b * sdo_b + (k if MERGE == 0 else 0) * sdo_k + d * sdo_d
        z_row0 = z_ptr + b * sz_b + d * sz_d
        if PIPE:  # the first block's reads; every block then reads the next one's before its own work
            nu, nx, ndo, nzt, nck = _bwd_loads(0 if REVS[k] else nb - 1, t, BS, L, H, W, order_row, KINDS[k], dmask,
                                               u_row, dl_row, do_row0[:, None], z_row0[:, None], su_l, sdl_l, sdo_l,
                                               sz_l, ck_row, NP * D_PAD, HAS_Z, VEC_CK)
            j_first = 0 if REVS[k] else nb - 1
            if PIPE_BC2 > 0 and BS == 4:
                nB2 = _bc_rows4(b_row, j_first * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
            if PIPE_BC2 > 1 and BS == 4:
                nC2 = _bc_rows4(c_row, j_first * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
        for jj in range(n_blocks):
            j = jj if REVS[k] else (nb - 1 - jj)
            if PREFETCH:  # the blocks are walked against the route's direction
                jn = _next_block(j, nb, not REVS[k], AHEAD)
                pn = _pos_of(jn * BS + lane_step, L, H, W, order_row, KINDS[k])
                _prefetch(ck_row + jn * NP * D_PAD, PREFETCH_CK)
                _prefetch(u_row0 + pn * su_l, True)
                _prefetch(dl_row0 + pn * sdl_l, True)
                _prefetch(dout_ptr + b * sdo_b + (k if MERGE == 0 else 0) * sdo_k + tl.minimum(d, Dm - 1) * sdo_d
                          + pn * sdo_l, True)
                _prefetch(z_ptr + b * sz_b + tl.minimum(d, Dm - 1) * sz_d + pn * sz_l, HAS_Z)
                _prefetch(b_row + pn * NP, SAME_GROUP)
                _prefetch(c_row + pn * NP, SAME_GROUP)
            s0 = j * BS
            ws0 = b * sws_b + k * sws_k + d * sws_d  # offsets of position 0 (sws_k: 0 unless PAR_ROUTES)
            du0 = b * sdu_b + (k if U_ROUTES else 0) * sdu_k + d * sdu_d
            ddl0 = b * sddl_b + (k if DL_ROUTES else 0) * sddl_k + d * sddl_d
            dz0 = b * sdz_b + d * sdz_d
            s = s0 + t
            pos = _positions(s, L, H, W, order_row, KINDS[k])
            m2 = dmask[:, None] & (s < L)[None, :]
            if PIPE:
                u, x, do, zt, ck = nu, nx, ndo, nzt, nck
                j_next = _next_block(j, nb, not REVS[k])
                nu, nx, ndo, nzt, nck = _bwd_loads(j_next, t, BS, L, H, W, order_row,
                                                   KINDS[k], dmask, u_row, dl_row, do_row0[:, None], z_row0[:, None],
                                                   su_l, sdl_l, sdo_l, sz_l, ck_row, NP * D_PAD, HAS_Z,
                                                   VEC_CK)
                if PIPE_BC2 > 0 and BS == 4:
                    Bs = nB2
                    nB2 = _bc_rows4(b_row, j_next * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
                if PIPE_BC2 > 1 and BS == 4:
                    Cs = nC2
                    nC2 = _bc_rows4(c_row, j_next * 4, L, H, W, order_row, KINDS[k], REVS[k], NP)
            else:
                u, x, do, zt, ck = _bwd_loads(j, t, BS, L, H, W, order_row, KINDS[k], dmask, u_row, dl_row,
                                              do_row0[:, None], z_row0[:, None], su_l, sdl_l, sdo_l, sz_l, ck_row,
                                              NP * D_PAD, HAS_Z, VEC_CK)
            x, dt, do, dy, zsig = _step_inputs(u, x, do, zt, bias[:, None] if HAS_BIAS else bias, m2, K,
                                               HAS_BIAS, SOFTPLUS, MERGE, HAS_Z, FAST)
            if BS == 4:
                if not (PIPE and PIPE_BC2 > 0):
                    Bs = _bc_rows4(b_row, s0, L, H, W, order_row, KINDS[k], REVS[k], NP)
                if not (PIPE and PIPE_BC2 > 1):
                    Cs = _bc_rows4(c_row, s0, L, H, W, order_row, KINDS[k], REVS[k], NP)
                ga, dA, ddt, du, y = _bblock4(ga, dA, ck, A2, u, dt, dy, Bs, Cs, s0, L, H, W, order_row,
                                              db_row, dc_row, dst_row, e_mask, nd_mask, N, KINDS[k], REVS[k], NP,
                                              HAS_DSTATES, SAME_GROUP, HAS_Z, BC_MODE, FAST)
            else:
                ga, dA, ddt, du, y = _bblock8(ga, dA, ck, A2, u, dt, dy, s0, L, H, W, order_row, b_row, c_row,
                                              db_row, dc_row, dst_row, e_mask, nd_mask, N, KINDS[k], REVS[k], NP,
                                              HAS_DSTATES, SAME_GROUP, HAS_Z, BC_MODE)
            ddt, du, dz, dd = _step_outputs(ddt, du, y, u, x, do, dy, zt, zsig,
                                            Dk[:, None] if HAS_D else Dk, m2, HAS_D, HAS_Z, SOFTPLUS, FAST)
            dD_acc += tl.sum(dd, 1)
            dbias_acc += tl.sum(ddt, 1)
            _step_stores(du, ddt, dz, pos[None, :], m2, du_ptr, ddl_ptr, dz_ptr, wsu_ptr, wsdl_ptr, wsz_ptr,
                         du0[:, None], ddl0[:, None], dz0[:, None], ws0[:, None], sdu_l, sddl_l, sdz_l, sws_l,
                         U_ROUTES, DL_ROUTES, HAS_Z, k, K, PAR_ROUTES)
        tl.atomic_add(dA_ptr + ((k if A_ROUTES else 0) * Dm + ed) * N + en, _flat(dA), mask=e_mask & live,
                      sem="relaxed")
        if HAS_INIT:
            tl.store(dinit_ptr + ((b * K + k) * Dm + ed) * N + en, _flat(ga), mask=e_mask & live)
        if HAS_D:
            tl.atomic_add(dD_ptr + kx * Dm + d, dD_acc, mask=dmask & live, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + kx * Dm + d, dbias_acc, mask=dmask & live, sem="relaxed")
        tl.debug_barrier()  # the next route rereads the workspaces
    if TAIL_MERGE:  # the tile's last route program sums the shared inputs' gradient planes into the gradients
        if _last_route(cnt_ptr + b * n_d_programs + pid_d, K):
            if not U_ROUTES:
                _merge_tail(wsu_ptr, wsu_ptr, du_ptr, b, d, dmask, L, sws_b, sws_k, sws_d, sws_l, 0, 0, 0, sdu_b,
                            sdu_d, sdu_l, K, False, False, FAST, MERGE_BL)
            if not DL_ROUTES:
                _merge_tail(wsdl_ptr, wsdl_ptr, ddl_ptr, b, d, dmask, L, sws_b, sws_k, sws_d, sws_l, 0, 0, 0, sddl_b,
                            sddl_d, sddl_l, K, False, False, FAST, MERGE_BL)
            if HAS_Z:
                _merge_tail(wsz_ptr, wsz_ptr, dz_ptr, b, d, dmask, L, sws_b, sws_k, sws_d, sws_l, 0, 0, 0, sdz_b,
                            sdz_d, sdz_l, K, False, False, FAST, MERGE_BL)


@triton.jit
def _relayout_kernel(src_ptr, dst_ptr, K, Dm, L, ss_b, ss_k, ss_d, ss_l, sd_b, sd_k, sd_d, sd_l,
                     BD: tl.constexpr, BL: tl.constexpr):
    """dst[b, k] = src[b, k] for (D, L) planes of any strides, a [BD, BL] tile a program. Unit strides are
    specialised by Triton, so the tile is read along the source's contiguous axis and written along the
    destination's, exchanged through shared memory in between."""
    bk = tl.program_id(0).to(tl.int64)
    b = bk // K
    k = bk % K
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    ls = tl.program_id(2) * BL + tl.arange(0, BL)
    m = (d < Dm)[:, None] & (ls < L)[None, :]
    x = tl.load(src_ptr + b * ss_b + k * ss_k + d[:, None] * ss_d + ls[None, :] * ss_l, mask=m)
    tl.store(dst_ptr + b * sd_b + k * sd_k + d[:, None] * sd_d + ls[None, :] * sd_l, x.to(dst_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _stage_kernel(b_ptr, c_ptr, out_ptr, Kb, G, N, L, length, sb_b, sb_k, sb_g, sb_n, sb_l, sc_b, sc_k, sc_g, sc_n,
                  sc_l, NP: tl.constexpr, BL: tl.constexpr):
    """out[0] = B, out[1] = C (program axis 2) as fp32 rows: out (2, batch, Kb, G, length, NP) contiguous from
    (batch, Kb, G, N, L) of any strides, a [BL, NP] tile of steps by states a program; states N..NP-1 zero."""
    bkg = tl.program_id(0).to(tl.int64)
    b = bkg // (Kb * G)
    k = (bkg // G) % Kb
    g = bkg % G
    ls = tl.program_id(1) * BL + tl.arange(0, BL)
    n = tl.arange(0, NP)
    m = (ls < L)[:, None] & (n < N)[None, :]
    if tl.program_id(2) == 0:  # (converted in each branch: B and C may differ in dtype)
        x = tl.load(b_ptr + b * sb_b + k * sb_k + g * sb_g + n[None, :] * sb_n + ls[:, None] * sb_l, mask=m,
                    other=0.0).to(tl.float32)
    else:
        x = tl.load(c_ptr + b * sc_b + k * sc_k + g * sc_g + n[None, :] * sc_n + ls[:, None] * sc_l, mask=m,
                    other=0.0).to(tl.float32)
    rows = out_ptr + ((tl.program_id(2) * tl.num_programs(0) + bkg) * length + ls[:, None]) * NP + n[None, :]
    tl.store(rows, x, mask=(ls < L)[:, None])


@triton.jit
def _merge_block(p_ptr, z_ptr, out_ptr, b, d, ls, m, sp_b, sp_k, sp_d, sp_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                 K: tl.constexpr, MEAN: tl.constexpr, HAS_Z: tl.constexpr, FAST: tl.constexpr, L2_ONLY: tl.constexpr):
    """out[b, d, ls] = the K route planes p[b, k, d, ls] summed in fp32 (divided by K for a mean, gated by silu(z)),
    under mask m. L2_ONLY: the planes are read past L1 (other programs of the running kernel wrote them)."""
    offs = b * sp_b + d[:, None] * sp_d + ls[None, :] * sp_l
    acc = tl.zeros([d.shape[0], ls.shape[0]], tl.float32)
    for k in tl.static_range(K):
        if L2_ONLY:
            acc += tl.load(p_ptr + k * sp_k + offs, mask=m, other=0.0, cache_modifier=".cg").to(tl.float32)
        else:
            acc += tl.load(p_ptr + k * sp_k + offs, mask=m, other=0.0).to(tl.float32)
    if MEAN:
        acc = acc / K
    if HAS_Z:
        zt = tl.load(z_ptr + b * sz_b + d[:, None] * sz_d + ls[None, :] * sz_l, mask=m, other=0.0).to(tl.float32)
        acc = acc * zt * _sigmoid(zt, FAST)
    tl.store(out_ptr + b * so_b + d[:, None] * so_d + ls[None, :] * so_l, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _merge_routes_kernel(p_ptr, z_ptr, out_ptr, Dm, L, sp_b, sp_k, sp_d, sp_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                         K: tl.constexpr, MEAN: tl.constexpr, HAS_Z: tl.constexpr, FAST: tl.constexpr,
                         BD: tl.constexpr, BL: tl.constexpr):
    """``_merge_block`` on a [BD, BL] tile of (D, L) a program, read and written along the layout's contiguous axis
    (unit strides are specialised)."""
    b = tl.program_id(2).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    ls = tl.program_id(0) * BL + tl.arange(0, BL)
    m = (d < Dm)[:, None] & (ls < L)[None, :]
    _merge_block(p_ptr, z_ptr, out_ptr, b, d, ls, m, sp_b, sp_k, sp_d, sp_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                 K, MEAN, HAS_Z, FAST, False)


@triton.jit
def _last_route(cnt_ptr, K: tl.constexpr):
    """Whether this program is the last of its channel tile's K one-route programs to get here: their planes are
    then complete and visible to it. The barrier puts every lane's plane stores before the count, whose release
    publishes them (acquire: the last program sees the others'). The last one leaves the count at zero for the
    next kernel on the stream (``_route_counters``)."""
    tl.debug_barrier()
    last = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu") == K - 1
    tl.store(cnt_ptr, 0, mask=last)
    return last


@triton.jit
def _merge_tail(p_ptr, z_ptr, out_ptr, b, d, dmask, L, sp_b, sp_k, sp_d, sp_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                K: tl.constexpr, MEAN: tl.constexpr, HAS_Z: tl.constexpr, FAST: tl.constexpr, BL: tl.constexpr):
    """``_merge_block`` over a whole route, BL steps at a time, for the channels d of a program (its tile)."""
    for l0 in range(0, L, BL):
        ls = l0 + tl.arange(0, BL)
        _merge_block(p_ptr, z_ptr, out_ptr, b, d, ls, dmask[:, None] & (ls < L)[None, :], sp_b, sp_k, sp_d, sp_l,
                     sz_b, sz_d, sz_l, so_b, so_d, so_l, K, MEAN, HAS_Z, FAST, True)


# ----------------------------------------------------------------------------------------------------------------
# Host side: routes, configuration, launchers
# ----------------------------------------------------------------------------------------------------------------

def _memo(cache: dict, tensors: tuple[Tensor, ...], state: tuple, make):
    """``make()``, remembered in ``cache`` for these tensor objects while they live (weak references) and while
    ``state`` (their in-place versions and whatever else the result depends on) is unchanged."""
    key = tuple(id(t) for t in tensors)
    hit = cache.get(key)
    if _still_valid(hit, tensors, state):
        return hit[2]
    result = make()
    _remember(cache, key, tensors, state, result)
    return result


def _still_valid(hit: tuple | None, tensors: tuple[Tensor, ...], state: tuple) -> bool:
    """Whether a cache entry (weak references, state, result) was made for these very tensor objects (ids can be
    reused once an object dies) in this state."""
    return (hit is not None and hit[1] == state
            and all(ref() is t for ref, t in zip(hit[0], tensors, strict=True)))


def _remember(cache: dict, key: tuple, tensors: tuple[Tensor, ...], state: tuple, result) -> None:

    def drop(_, key=key):
        cache.pop(key, None)

    cache[key] = (tuple(weakref.ref(t, drop) for t in tensors), state, result)


_route_cache: dict[tuple[int], tuple] = {}


def route_kinds(order: Tensor) -> tuple[tuple[int, ...], tuple[bool, ...], int, int]:
    """Recognise each route of ``order`` (Bi, K, L) as index arithmetic: (kinds, reversed, H, W).

    kinds[k] is FLAT (storage order, reversed[k] for its reverse), COL (column-major on an H x W grid, or its
    reverse) or TABLE (positions read from ``order``; per-sample routes always). The answer is cached per tensor
    object (routes keep their device tensors), so the host sync happens once per route set.
    """
    return _memo(_route_cache, (order,), (_version(order),), lambda: _classify(order))


def _version(t: Tensor) -> int:
    """The tensor's in-place version. Inference tensors (made under torch.inference_mode) have no version counter:
    their data pointer stands in (route tensors are never changed in place)."""
    return t.data_ptr() if t.is_inference() else t._version


COL_MAX_L = 2 ** 22 - 64  # column-major routes up to this long (see _positions; padding steps included); longer: TABLE


def _classify(order: Tensor) -> tuple[tuple[int, ...], tuple[bool, ...], int, int]:
    Bi, K, L = order.shape
    if Bi > 1:
        return (TABLE,) * K, (False,) * K, 1, L
    maps = order[0].cpu()
    steps = torch.arange(L)
    kinds, revs, grid = [], [], (1, L)
    for row in maps:
        found = None
        for rev, candidate in ((False, row), (True, row.flip(0))):
            if torch.equal(candidate, steps):
                found = (FLAT, rev)
                break
            if L > 1 and 1 < int(candidate[1]) < L and L % int(candidate[1]) == 0:
                W = int(candidate[1])
                H = L // W
                if (torch.equal(candidate, (steps % H) * W + steps // H) and grid in ((1, L), (H, W))
                        and L <= COL_MAX_L):
                    found, grid = (COL, rev), (H, W)
                    break
        kind, rev = found or (TABLE, False)
        kinds.append(kind)
        revs.append(rev)
    return tuple(kinds), tuple(revs), grid[0], grid[1]


class Config:
    """Launch parameters: a tile is a [P, BLOCK_D, M] tensor, P chunks of M steps (T = P * M steps) by BLOCK_D
    channels, in one of two register layouts (Triton derives them from the tile's shape and strides):

    - channels-first (time is the contiguous axis): P = 32 * num_warps chunks, one per thread, so the loads are
      coalesced along time; a thread holds the M steps of its chunk for its BLOCK_D channels, so B and C rows are
      loaded once per thread and dB, dC are summed over the channels in registers (``bcast``).
    - channels-last (channels are contiguous): P = 1, one channel per thread (BLOCK_D = 32 * num_warps), coalesced
      along channels; each thread holds all T = M steps, and B, C rows are loaded per thread (a warp broadcast).

    The forward pass that saves tile-entry states and the backward that reads them must use the same T.
    """

    def __init__(self, P: int, M: int, block_d: int, num_warps: int, same_group: bool, bcast: bool):
        self.P, self.M, self.block_d, self.num_warps = P, M, block_d, num_warps
        self.same_group, self.bcast = same_group, bcast
        self.T = P * M

    def constexprs(self) -> dict:
        return dict(P=self.P, M=self.M, BLOCK_D=self.block_d, SAME_GROUP=self.same_group, BC_BCAST=self.bcast)

    def __repr__(self) -> str:
        return (f"Config(P={self.P}, M={self.M}, block_d={self.block_d}, num_warps={self.num_warps}, "
                f"same_group={self.same_group}, bcast={self.bcast})")


MAX_T = 256  # longest tile; tests lower it to get several tiles at tiny L
CL_STEPS = 16  # steps per tile when a thread holds a channel's whole tile (lanes along channels)
SHORT_L = 512  # backward: sequences up to this length run with lanes along channels


def config_for(L: int, Dm: int, d_per_group: int, channels_last: bool, which: str, N: int = 1) -> Config:
    """The launch configuration for a call (see ``Config``); the choices are the fastest measured on an H100 at the
    issue's shapes (tools/benchmark.py ops).

    - Lanes along channels (P = 1, a thread holds one channel's CL_STEPS steps): channels-last calls, and the
      backward of short channels-first sequences, where it avoids per-state cross-warp reductions.
    - Lanes along time (P = 32 chunks of M = T / 32 steps): the channels-first forward (one warp, 2 or 4 channels a
      thread), and the backward of long sequences (two warps, one channel each; route tiles of T = 256 steps).

    BLOCK_D is a power of two that divides the group size when it can, so that a program's channels share one row
    of B and C. The forward pass and the backward (which recomputes its tile-entry states) need not share a config.
    """
    if channels_last or (which == "bwd" and L <= SHORT_L):
        warps = max(1, min(2, _pow2(Dm) // 32))
        T = min(max(2, _pow2(L)), CL_STEPS, MAX_T)
        return Config(1, T, 32 * warps, warps, d_per_group % (32 * warps) == 0, False)
    T = min(max(32, _pow2(L)), max(MAX_T, 32))
    P = min(T, 32)
    M = T // P
    if which == "bwd":
        warps = max(1, min(2, _pow2(Dm)))
        return Config(P, M, warps, warps, d_per_group % warps == 0, False)
    want = max(1, min(4 if N >= 4 else 16 // M, _pow2(Dm)))
    block_d = want
    while block_d > 1 and d_per_group % block_d:
        block_d //= 2
    same_group = block_d == want
    return Config(P, M, block_d if same_group else want, 1, same_group, True)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (host side; triton's helpers cost microseconds a call through their
    constexpr wrappers)."""
    return 1 << max(0, n - 1).bit_length()


_POISONED = os.environ.get(_POISON_ENV, "0") == "1"  # read once: an environment lookup per buffer costs host time


def _poison() -> bool:
    return _POISONED


def _new(shape, dtype, device) -> Tensor:
    """A buffer the kernels write in full: NaN-filled under SSMZOO_POISON=1 so unwritten elements show."""
    if _poison():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _like(x: Tensor) -> Tensor:
    """A gradient buffer with x's shape, dtype and strides (what the op's fake promises), poisoned like _new."""
    t = torch.empty_like(x)
    return t.fill_(float("nan")) if _poison() else t


def _natural(batch: int, K: int | None, Dm: int, L: int, dtype, device, channels_last: bool) -> tuple[Tensor, Tensor]:
    """A natural-layout buffer (B, [K,] D, L) or (B, L, [K,] D) and its canonical (B, K|1, D, L) view."""
    if channels_last:
        t = _new((batch, L, K, Dm) if K else (batch, L, Dm), dtype, device)
        view = t.movedim(1, -1) if K else t.movedim(1, -1).unsqueeze(1)
    else:
        t = _new((batch, K, Dm, L) if K else (batch, Dm, L), dtype, device)
        view = t if K else t.unsqueeze(1)
    return t, view


_INTERPRETED = type(_fwd_kernel).__name__ == "InterpretedFunction"  # loaded under TRITON_INTERPRET=1: CPU tensors
# softplus and sigmoid through the special-function unit's log2 and reciprocal (see _lg2, _rcp; compiled kernels only)
FAST_MATH = True


def _check(u: Tensor, *tensors: Tensor | None) -> None:
    for x in (u, *tensors):
        if x is not None and x.dtype not in KERNEL_DTYPES:
            raise ValueError(f"selective_scan (triton): unsupported dtype {x.dtype}; use float32, float16 or "
                             f"bfloat16")
    if u.device.type != "cuda" and not _INTERPRETED:
        raise ValueError(f"selective_scan (triton): tensors must be on a CUDA device, got {u.device}")


class _Call:
    """Everything both kernels need about one call: shapes, route kinds, flags, strides, config."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, merge, channels_last, which):
        self.batch, self.Ku, self.Dm, self.L = u.shape
        self.K, self.N, self.G = order.shape[-2], A.shape[-1], B.shape[2]
        self.kinds, self.revs, self.H, self.W = route_kinds(order)
        self.cfg = config_for(self.L, self.Dm, self.Dm // self.G, channels_last, which, self.N)
        self.n_tiles = _cdiv(self.L, self.cfg.T)
        self.merge = {"none": 0, "sum": 1, "mean": 2}[merge]
        self.order = order
        self.flags = dict(
            K=self.K, KINDS=self.kinds, REVS=self.revs,
            U_ROUTES=u.shape[1] > 1, DL_ROUTES=delta.shape[1] > 1, A_ROUTES=A.shape[0] > 1,
            BC_ROUTES=B.shape[1] > 1 or C.shape[1] > 1,
            X_ROUTES=(D is not None and D.shape[0] > 1) or (delta_bias is not None and delta_bias.shape[0] > 1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            MERGE=self.merge, FAST=FAST_MATH and not _INTERPRETED, **self.cfg.constexprs(),
        )
        # routes sharing B or C with per-route partners: expand the shared one (a stride-0 view, no copy)
        B = B.expand(-1, self.K, -1, -1, -1) if self.flags["BC_ROUTES"] and B.shape[1] == 1 else B
        C = C.expand(-1, self.K, -1, -1, -1) if self.flags["BC_ROUTES"] and C.shape[1] == 1 else C
        staged = self.N >= STAGE_MIN_N
        self.B = _stage(B, self.n_tiles * self.cfg.T) if staged else B
        self.C = _stage(C, self.n_tiles * self.cfg.T) if staged else C
        self.flags["BC_PADDED"] = staged
        self.D = D.expand(self.K, -1) if D is not None and self.flags["X_ROUTES"] and D.shape[0] == 1 else D
        self.bias = (delta_bias.expand(self.K, -1) if delta_bias is not None and self.flags["X_ROUTES"]
                     and delta_bias.shape[0] == 1 else delta_bias)
        self.grid = (_cdiv(self.Dm, self.cfg.block_d), self.batch)

    def input_strides(self, u, delta, A, z) -> tuple:
        """Strides of the inputs in the kernels' argument order (dummy zeros for absent tensors)."""
        zs = (z.stride(0), z.stride(1), z.stride(2)) if z is not None else (0, 0, 0)
        order_b = self.order.stride(0) if self.order.shape[0] > 1 else 0
        return (*u.stride(), *delta.stride(), *A.stride(), *self.B.stride(), *self.C.stride(),
                self.D.stride(0) if self.D is not None else 0,
                self.bias.stride(0) if self.bias is not None else 0, *zs), (order_b, self.order.stride(1))

    def sizes(self) -> tuple:
        return self.L, self.H, self.W, self.Dm, self.N, self.n_tiles, self.Dm // self.G, 0

    def chunk_buffer(self, initial_state: Tensor | None, device) -> Tensor:
        """(B, K, n_tiles + 1, D, N) fp32 tile-entry states; slot 0 = initial state (zeros when None)."""
        chunk = _new((self.batch, self.K, self.n_tiles + 1, self.Dm, self.N), torch.float32, device)
        if initial_state is None:
            chunk[:, :, 0].zero_()
        else:
            chunk[:, :, 0].copy_(initial_state)
        return chunk


STAGE_MIN_N = 4  # from this many states B and C are read often enough per element to be worth staging


def _stage(x: Tensor, length: int) -> Tensor:
    """B or C (B, Kb, G, N, L) as contiguous fp32 rows zero-padded to ``length`` >= L steps (whole tiles).

    The kernels read B and C once per (step, state) for every channel tile. They are N / D the size of u, so one
    conversion here costs little and spares the kernels a conversion and a mask per load.
    """
    staged = torch.zeros((*x.shape[:-1], length), dtype=torch.float32, device=x.device)
    staged[..., :x.shape[-1]].copy_(x)
    return staged


def _or_dummy(dummy: Tensor, *tensors: Tensor | None) -> list[Tensor]:
    """Kernel pointer arguments: absent tensors (never read, their flags are off) replaced by ``dummy``."""
    return [dummy if t is None else t for t in tensors]


def _forward(call: _Call, u, delta, A, z, initial_state, out, out_view, ws, chunk, states, output: bool,
             save_chunks: bool):
    """Launch the forward kernel (see _fwd_kernel) on canonical inputs."""
    strides, order_strides = call.input_strides(u, delta, A, z)
    out_strides = out_view.stride() if out_view is not None else (0, 0, 0, 0)
    ws_strides = (ws.stride(0), ws.stride(2), ws.stride(3)) if ws is not None else (0, 0, 0)
    launch(_fwd_kernel, call.grid,
        *_or_dummy(u, u, delta, A, call.B, call.C, call.D, z, call.bias, call.order, out, ws, chunk, states),
        *strides, *out_strides, *ws_strides, *order_strides, *call.sizes(),
        CARRY=chunk is not None and (call.n_tiles > 1 or initial_state is not None), SAVE_CHUNKS=save_chunks,
        RET_STATES=states is not None, OUTPUT=output, **call.flags, num_warps=call.cfg.num_warps,
    )


# Sequential kernels: channels per program (one warp), N split over lanes (fewer registers, more programs).
# Forward with N > 1: 8 channels a warp (a channel's states over 4 threads). Since a thread's states are contiguous
# B/C rows (16-byte loads) this beats 32 lanes (all states in one thread, 255 registers) on every shape: kernel µs,
# 32 -> 8 lanes, Vim-S bf16 440 -> 419, fp32 524 -> 477, DPMamba inter 119 -> 117 (16 lanes: 431, 139); before
# it, 8 lanes were taken only when 32 left the GPU mostly idle (DPMamba intra, 544 programs: 182 µs). 4 lanes (2
# states a thread): Vim-S 419 -> 566, DPMamba inter 118 -> 159, intra 111 -> 140. H100.
SEQ_FWD_LANES = 8
# backward with N > 1: 8 channels a warp (a channel's states over 4 threads), or more when N is too small to fill a
# warp. With blocks of 4 steps and a 168 cap, 8 lanes beat 16 (DPMamba inter bwd 1105 -> 837 µs; Vim-S 3747 vs 3787,
# a tie; H100 bf16, issue #4 note). 4 lanes (half the shuffles, no spill, twice the warps): Vim-S 2378 -> 3170,
# DPMamba inter 602 -> 799, intra 597 -> 785 (kernel µs, later session).
SEQ_BWD_LANES = 8
# One state: 32 channels a warp in the backward. Narrower programs add warps but not shorter walks: VMamba-T s1
# channels-last bf16 fwd / bwd 3.9 / 11.8 ms at 32, 3.8 / 22.5 at 16, 6.5 / 30.8 at 8 (more dB/dC atomics per
# channel), H100. 64 (two channels a thread) with the pipelined backward: 4233 vs 3660 µs (kernel). Again with its
# tiles in the scan's layout (_channel_offsets; 4-byte pairs, the other half of the 128-byte lines a warp reads): loop
# 771 instructions for 8 (channel, step)s against 491 for 4, but bf16 1975 -> 2435 / 2052 / 2144 µs at 168 / 184 /
# 200 registers; fp32 2782 -> 2618 / 2760 / 2707 (later session).
SEQ_ONE_STATE_LANES = 32
# The forward: 64 channels a warp, two a thread: a bf16 row of a step is one whole 128-byte line (32 channels read
# half a line; ncu: 2.23 GB read from DRAM where the inputs are 1.23 GB) and two independent chains a thread.
# VMamba-T s1 channels-last bf16 kernel 1335 -> 940 µs (with the 80-register cap 1200, 128: 1018), H100.
SEQ_ONE_STATE_FWD_LANES = 64
# backward with up to this many states: each channel tile stores its dB, dC rows and the host sums them (no atomics
# per step); with more states the sum's traffic costs more than the atomics (Vim-S 4.3 -> 5.4 ms, issue #4 note).
# Off since a block of 4 steps adds its sums with one atomic (one state: VMamba-T s1 channels-last 5249 -> 4764 µs)
SEQ_PARTIAL_BC_MAX_NP = 0
# backward with blocks of 4 and 16 states: a block's dB/dC channel sums as one reduce-scatter over its 4 steps and
# the states (_scatter_add4), exchanged by lane shuffles in place. First written with tl.gather, which moved every
# operand through shared memory first: Vim-S bf16 bwd 2367 -> 3146 µs, DPMamba inter 598 -> 767, intra 592 -> 773
# against the block's one atomic (_block_add4). With the shuffles (hot loop 782 -> 687 SASS instructions, 122 -> 58
# shuffles, the same 2 atomics a block): kernel µs Vim-S bf16 2374 -> 2166, fp32 2626 -> 2485; DPMamba inter
# 598 -> 500, intra 595 -> 522. H100. The shuffles rely on the compiler's layout of the (state, channel) tiles:
# channels on lane bits 0-2, a thread's 4 states in registers. Checked for 16 states at 8 channels a warp (the
# compiled code); with 4 or 8 states the split tiles are laid out otherwise, with 64 the states sit on the lanes.
# The sums over states (of w A, g B, C h) then the same way (_lane_groups, _group_scatter4): each lane group sums its
# 4 states, a reduce-scatter over the 4 groups leaves one step's sums a thread, and ddelta, du, y come out as a
# [channels, 4] tile in the load layout (no shared-memory round trip): loop 687 -> 583 instructions (barriers 12
# -> 3, spill 88 -> 40 bytes), kernel µs Vim-S bf16 2166 -> 2094, fp32 2485 -> 2474, DPMamba inter 500 -> 449,
# intra 522 -> 497 (same-run reference, the knob off: 2378, 2628, 597, 591).
SEQ_SCATTER_BC = True
SCATTER_NP, SCATTER_LANES = 16, 8  # the tile shape the shuffles were checked for
# One state (32 channels a warp): a block's dB and dC channel sums as one reduce-scatter of its 8 values
# (_scatter_add8) instead of summing each step's two over the warp and adding them with _block_add4 (shuffles a
# block 48 -> 17, loop 535 -> 461 SASS instructions): VMamba-T s1 channels-last backward kernel bf16 2392 -> 2204
# µs, fp32 3006 -> 2929; public fwd+bwd bf16 4785 -> 4373, channels-first 5714 -> 5529. With it a 152-register cap
# (15 warps per SM instead of 14) loses: 2285 µs. H100.
SEQ_ONE_STATE_SCATTER_BC = True
# else add a block of 4 steps' channel sums with one atomic (_block_add4; BC_MODE 3) rather than one a step and
# quantity, each moved to the atomic's layout through shared memory behind a barrier: Vim-S bf16 bwd 3670 -> 3217 µs
SEQ_BLOCK_BC = True
# One route per program (each route stores its own plane, _route_planes; one kernel sums them) for routes at least
# this long. H100 bf16 fwd+bwd µs, all routes in a program -> one a program: VMamba-T s1 channels-last (768 programs
# of 4 x 3136 steps) 11.1 -> 6.2 ms; Vim-S (L = 197) 3758 -> 3601; DPMamba intra (L = 250) kernels 1164 -> 963;
# DPMamba inter (L = 34) loses: 1331-1573 -> 1933 (host-bound: one more launch, no kernel gain). Issue #4 notes.
SEQ_PAR_ROUTES_MIN_L = 128
# One route a program with N > 1: the routes of a (channel tile, batch row) as the grid's fastest axis, so that they
# run together (and share reads of what the routes share, z and the output's gradient, from L2). Kernel µs, bf16,
# routes first vs last: Vim-S fwd 402 vs 420, bwd 2042 vs 2085; DPMamba intra 609 vs 612 (noise). With one state
# (VMamba-T s1, four routes over one u) mixed: channels-last bwd 2171 vs 2199 but forward and checkpoints 1608 vs
# 1584, fp32 fwd+bwd 6768 vs 6681 µs: off there. H100.
SEQ_ROUTES_FIRST = True
# L1 prefetch of a later block (compiled kernels only). Without it (later session, kernel µs, bf16): forwards lose
# (Vim-S 421 -> 449, DPMamba inter 121 -> 173); the N > 1 backwards move a few % either way (Vim-S 2369 -> 2339,
# DPMamba intra 596 -> 575, inter 598 -> 606, Vim-S fp32 2642 -> 2656) and VMamba's loses (2380 -> 2591).
SEQ_PREFETCH = True
# The N > 1 backward without it, after its checkpoints' 16-byte accesses (SEQ_VECTOR_CK): kernel µs, bf16, Vim-S
# 1727 -> 1642, DPMamba intra 423 -> 416, inter 381 -> 384 (ncu, Vim-S: the prefetches were half of its 133 M L2
# requests). H100.
SEQ_BWD_PREFETCH = False
# How far ahead (blocks). Farther did not pay: VMamba-T s1 channels-last bf16 kernels fwd / bwd 1329 / 4285 µs at 1,
# 1306 / 4312 at 2, 1431 / 4422 at 4, 1471 / 5091 at 8; the checkpoint as well at 4: 1434 / 4255 (Vim-S 2981 at 1,
# 3067 with it), H100.
SEQ_FWD_AHEAD = 1  # forward: blocks of 8 steps
SEQ_BWD_AHEAD = 1  # backward: blocks of SEQ_BWD_BLOCK / SEQ_ONE_STATE_BWD_BLOCK steps
SEQ_BWD_PREFETCH_CK = False  # the backward's second pass also prefetches that block's checkpoint
# Software pipelining: a block's tiles (u, delta, dy, z, its checkpoint) are loaded into registers one block early,
# so the global loads' latency (ncu: "long scoreboard", the largest stall) overlaps a block's arithmetic. Kernel µs,
# H100 bf16: backward second pass Vim-S 2986 -> 2536, DPMamba intra 727 -> 645, inter 638 -> 646, VMamba-T s1
# channels-last 4267 -> 3660; first pass too: Vim-S 2539 -> 2442, intra 647 -> 621, inter 646 -> 625 (VMamba
# 3668 -> 3675); forward with N > 1: Vim-S 457 -> 438, intra 166 -> 136, inter 114 -> 119; with one state it loses
# (VMamba 1018 -> 1275: spills).
SEQ_BWD_PIPELINE = True
SEQ_BWD_PIPELINE_PASS1 = True
# The rows of B (first pass) and of B and C (second pass) of a block of 4 steps read with its tiles, one block early
# (ncu, Vim-S backward: the top stalls wait on a block's B and C loads, issued ~50 instructions before their use).
# With one state the rows are one register a step: B and C of the second pass early pay (VMamba-T s1 bf16 kernel µs,
# backward 2185 -> 1955 channels-last, fp32 2961 -> 2794). With 16 states they cost 16 registers each and spill
# (Vim-S 2005 -> 2055 for B, 2260 for B and C; DPMamba intra 476 -> 487 / 539, inter 411 -> 446 / 494); B in the
# first pass (Vim-S 2005 -> 2008, inter 411 -> 419, intra equal; after the 16-byte checkpoints 1642 -> 1639, 385 ->
# 384, 415 -> 415) neither; nor in the one-state checkpoint kernel
# (_seq_checkpoints' u, delta and B a block early: VMamba-T s1 forward + checkpoints 1590 -> 1694 µs). H100.
SEQ_BWD_PIPELINE_BC = False
# The backward's block-entry states are (channel, state) rows ((B, K, blocks, D_PAD, NP)), so that a thread's states
# of a channel are contiguous; with 16 states one 16-byte access a thread (_ck_store, _ck_load) instead of four of 4
# bytes (ncu, Vim-S: the checkpoints' 4-byte accesses were 39 M of the 97 M L2 requests; the loop lost its spill, 580
# -> 560 SASS instructions). Kernel µs, backward, bf16: (state, channel) rows -> (channel, state) rows -> 16-byte
# accesses: Vim-S 2003 -> 1793 -> 1726, DPMamba intra 475 -> 442 -> 432, inter 411 -> 405 -> 383; fp32 Vim-S 2186 ->
# 2147 (the first step not measured in fp32). H100.
SEQ_VECTOR_CK = True
SEQ_BWD_PIPELINE_BC2 = 0  # 1: B, 2: B and C
SEQ_ONE_STATE_BWD_PIPELINE_BC2 = 2
SEQ_FWD_PIPELINE = True
SEQ_ONE_STATE_FWD_PIPELINE = False
# One state: the backward's first pass (the state entering every block of 4 steps) as its own kernel
# (_seq_checkpoints: the forward kernel's CK_ONLY mode, 62 registers) instead of inside the backward kernel (144):
# VMamba-T s1 bf16 fwd+bwd channels-last 5067 -> 4584 µs, channels-first 7044 -> 6576 (32 channels a warp; with
# the forward's 64 the first pass took 1515 µs instead of 673 and the call 5428). H100.
SEQ_ONE_STATE_CK_KERNEL = True
SEQ_ONE_STATE_CK_LANES = 32  # its channels a warp (None: the forward's)
# One state, a forward whose inputs are saved for a backward (the eager autograd Function): the forward kernel
# writes the checkpoints as it goes (two 8-byte stores a thread and block of 8 steps, loop 579 -> 594 instructions)
# and they are saved with the inputs (FORWARD_RESIDUALS), so the backward runs no checkpoint kernel. VMamba-T s1
# fwd+bwd µs, H100, twice each: channels-last bf16 4000 -> 3491, fp32 6450 -> 5555; channels-first 5163 -> 4652,
# 8597 -> 7717 (forward kernel with the stores 938 µs bf16, against 1450 for forward and checkpoint kernels). The
# first try stored them by a flat index, which the compiler reached by shuffling h (a spill): 1450 -> 1538, a loss.
# Costs memory between the passes: 4 bytes a (route, channel, 4 steps), twice u's bf16 bytes with VMamba's 4
# routes: held after the forward 159 -> 453 MiB at VMamba-T s1 batch 128 bf16 (the backward's peak is the same:
# it allocated them itself). Through torch.compile (the op's backward) they are recomputed as before.
SEQ_ONE_STATE_FWD_CK = True
# N > 1: the same split loses. The block-entry states are NP / 2 times u's bytes (fp32, a state row per 4 steps):
# written by their own kernel they go to DRAM, where the backward's own first pass rereads most from L2 (its
# program's rows, just written). H100 bf16 kernel µs, backward alone -> checkpoint kernel + backward: Vim-S 2420 ->
# 514 + 2003, DPMamba intra 619 -> 185 + 498, inter 624 -> 116 + 535 (8 lanes, or a 144-register cap: no better).
# Again with the (channel, state) checkpoint rows: Vim-S 1642 -> 616 + 1279 (8 lanes; 32: 1283 + 1280), DPMamba intra
# 415 -> 176 + 307, inter 385 -> 136 + 296: the first pass is ~360 µs of the Vim-S backward.
SEQ_CK_KERNEL = False
SEQ_CK_LANES = 32
# N > 1 forward: 128 registers, 16 warps per SM. DPMamba intra's 4352 programs take 2.06 waves at that; a 120 cap
# (17 warps per SM, one 4-byte spill in the loop) fits them in 2 but the kernel got no faster: bf16 kernel µs, None /
# 120 / 112: intra 122 / 127 / 131, inter 121 / 120 / 124, Vim-S 404 / 408 / 414 (fp32 intra 143 / 143 / 151, Vim-S
# 462 / 466 / 469). The last, thin wave runs faster than a full one (ncu, intra: SM cycles active 209 K of 237 K).
# H100, 2026-11-24.
SEQ_FWD_MAXNREG = None  # register caps (None: the compiler's choice, up to 255)
# N > 1 backward: 168 registers, 12 warps per SM, 72 B of spill stack with blocks of 4 (DPMamba intra bwd 1512 ->
# 1204 µs; 224: 1518; no cap: Vim-S 3797 -> 4999). H100 bf16, issue #4 note. Re-checked with the kernels of a later
# session: Vim-S / DPMamba inter / intra 2367 / 598 / 592 at 168, 2412 / 609 / 606 at 160, 2692 / 704 / 705 at 184.
# With the shuffled reduce-scatter of dB/dC (SEQ_SCATTER_BC), kernel µs Vim-S / DPMamba inter / intra bwd: 168 (12
# warps per SM) 2170 / 499 / 523; 152 (13) 2251 / 522 / 549; 144 (14) 2467 / 565 / 591; 184 (11, no spill) 2527 / 575
# / 642; with 168, prefetching the block's checkpoint as well (SEQ_BWD_PREFETCH_CK): 2251 / 510 / 540. Again after the
# 16-byte checkpoints (no spill left at 168; the loop has none down to 144): 168 1641 / 383 / 415; 152 1675 / 394 /
# 424; 144 1714 / 405 / 428; 136 1737 / 416 / 438; 128 1732 / 372 / 474; 184 1892 / 466 / 505 (fp32 Vim-S: 168 2131,
# 144 2161).
SEQ_BWD_MAXNREG = 168
# With one state the backward's cap pays: 168 registers give it 12 warps per SM instead of 8 (7293 -> 5591 µs; 128:
# 6596); pipelined, 144 (14 warps): 3674 -> 3557 µs (128: 3849). H100, bf16. The forward (64 lanes) runs best
# uncapped (above).
SEQ_ONE_STATE_FWD_MAXNREG = None
SEQ_ONE_STATE_BWD_MAXNREG = 144
# Backward blocks of 4 steps (recomputed once from their own checkpoint, all 4 states kept: fewer live values) or of
# 8 (states recomputed in two halves, half the checkpoints, (B, K, L/8, D, N) fp32). N > 1: 4 (Vim-S bwd 4397 ->
# 3747 µs, DPMamba inter 1217 -> 1105); one state: 4 as well since a block's dB/dC go out with one atomic
# (_block_add4; VMamba-T s1 channels-last 5249 -> 4764 µs; with per-tile rows, blocks of 8 won: 5591 vs 6129).
# H100, bf16.
SEQ_BWD_BLOCK = 4
SEQ_ONE_STATE_BWD_BLOCK = 4
# One state, the forward and the checkpoint kernel: tiles loaded and stored in the scan's layout (_channel_offsets)
# instead of 16-byte loads moved through shared memory: forward loop 637 -> 579 SASS instructions (3 barriers a
# block -> 0), 168 -> 128 registers; VMamba-T s1 channels-last kernels bf16 fwd + checkpoints 1590 -> 1449 µs,
# fp32 2690 -> 2614; fwd+bwd 4141 -> 4000, fp32 6530 -> 6443, channels-first 5303 -> 5205 (H100, twice each).
# The backward the same way (one channel a thread, 2-byte accesses) loses though its loop drops 491 -> 437
# instructions (7 barriers -> 0, spill 16 -> 8 bytes): 1973 -> 2011 µs bf16, 2782 -> 2836 fp32; at 120 / 128 / 160
# registers 2024 / 2055 / 2013; loads or stores alone spill more (501 / 589 instructions). Forward capped at 96
# registers: 1573 µs; the checkpoints at the forward's 64 channels a warp: 2332.
SEQ_ONE_STATE_HIDE_D = True


def _maxnreg(cap: int | None) -> dict:
    return {} if cap is None or _INTERPRETED else {"maxnreg": cap}


# Channels-last grid routes (VMamba's model path) run the sequential kernels: a warp's loads are coalesced along
# channels whatever the route; measured faster than the tile kernels there (fwd 3.9 vs 5.0 ms, bwd 11.7 vs 12.7 ms,
# VMamba-T s1 bf16, H100, before the one-route programs). On channels-first strides the sequential kernels took
# 25.0 / 50.3 ms (a column walk reads one element per channel row): those calls take copies instead (below).
SEQ_GRID_CHANNELS_LAST = True
SEQ_GRID_CHANNELS_FIRST = False
# Channels-first grid routes: the sequential kernels on channels-last copies (see via_channels_last): VMamba-T s1
# bf16 fwd+bwd 13351 -> 9292 µs vs the tile kernels (fp32 16249 -> 11703), H100
# Measured and dropped (issue #4 note, 2026-11-24): one state, every route of one (batch, channel) in one program
# with the whole 56 x 56 grid in registers, routes merged on chip (no copies, no route planes, no checkpoints; each
# route a tl.associative_scan along rows or columns of the padded [64, 64] tile, then over the lines' totals; the
# backward recomputing states and adjoint the same way). Correct, interpreted and on the GPU, but kernels bf16 fwd
# 2915 / bwd 9109 µs against this path's 1650 / ~2840 (fwd+bwd 11963 vs 4649; fp32 13568 vs 7728; 2 or 4 channels
# a program, 8 or 32 cells a thread: slower). Triton gives the tile its loads' layout (8 cells of a row a thread, 8
# lanes along a row, rows across warps), so most of every scan crosses lanes and warps (SASS a thread: 5288
# instructions, SHFL 1002, LDS 538, 255 registers), and it lowers a reversed scan with lane shuffles even along
# registers. Two Gluon forwards with explicit layouts (reversed routes loaded reversed) were no faster: a line's
# 16-32 cells a thread, 2.2-3.2 ms (255 registers: one 8-warp program an SM); a thread walking its line block by
# block, two passes, y summed in shared memory, 2.7-4.4 ms (64 registers; latency-bound, 0.23 T warp
# instructions/s).
SEQ_GRID_VIA_CHANNELS_LAST = True
RELAYOUT_TILE = 64  # a (128, 4, 192, 3136) bf16 copy: 2.63 TB/s (128: 2.60, 32: 2.14), H100



def _seq_lanes(N: int, which: str, batch: int, Dm: int) -> int:
    """Channels per program (one warp) of the sequential kernels. With one state a thread cannot share its channel:
    one or two channels a thread. Else both split a channel's states over threads (fewer registers a thread, more
    programs to hide latency), at least one state a thread. Measured on an H100 (tools/benchmark.py ops, issue #4
    notes); batch and Dm are there for choices by the call's size (none now)."""
    if N == 1:
        return SEQ_ONE_STATE_FWD_LANES if which == "fwd" else SEQ_ONE_STATE_LANES
    return max(SEQ_FWD_LANES if which == "fwd" else SEQ_BWD_LANES, 32 // _pow2(N))


def _zeroed_views(device, *shapes) -> list[Tensor | None]:
    """Zeroed fp32 tensors of the given shapes (None for None), views of one allocation."""
    sizes = [0 if shape is None else math.prod(shape) for shape in shapes]
    parts = torch.zeros(sum(sizes), dtype=torch.float32, device=device).split(sizes)
    return [None if shape is None else part.view(shape) for part, shape in zip(parts, shapes, strict=True)]


def sequential(kinds: tuple[int, ...], channels_last: bool = False) -> bool:
    """Whether a call runs the sequential kernels directly: every route is 1-D storage order or its reverse (Vim,
    Mamba, dual-path), or channels-last grid routes (VMamba's model path). Channels-first grid routes go through
    channels-last copies (``via_channels_last``) or, with that off, the tile kernels."""
    grid_sequential = SEQ_GRID_CHANNELS_LAST if channels_last else SEQ_GRID_CHANNELS_FIRST
    if grid_sequential and all(kind in (FLAT, COL) for kind in kinds):
        return True
    return all(kind == FLAT for kind in kinds)


def via_channels_last(kinds: tuple[int, ...], channels_last: bool) -> bool:
    """Whether a channels-first call with grid routes runs the sequential kernels on channels-last copies of its
    inputs (``_relayout``) rather than the tile kernels: a column walk over channels-first rows reads one element
    a row, and the copies cost less than the tile kernels' extra time (SEQ_GRID_VIA_CHANNELS_LAST)."""
    return (SEQ_GRID_VIA_CHANNELS_LAST and not channels_last and COL in kinds
            and all(kind in (FLAT, COL) for kind in kinds))


def _relayout(src: Tensor, dst: Tensor) -> Tensor:
    """Copy src into dst: (B, K, D, L) tensors of the same shape, any strides (one kernel; torch's strided copy
    moves a transposed bf16 tensor at a quarter of the bandwidth)."""
    batch, K, Dm, L = src.shape
    if src.numel():
        launch(_relayout_kernel, (batch * K, _cdiv(Dm, RELAYOUT_TILE), _cdiv(L, RELAYOUT_TILE)),
            src, dst, K, Dm, L, *src.stride(), *dst.stride(), BD=RELAYOUT_TILE, BL=RELAYOUT_TILE, num_warps=4)
    return dst


def _merge_routes(parts: Tensor, out: Tensor, z: Tensor | None = None, mean: bool = False) -> Tensor:
    """out (B, D, L) = the sum of parts (B, K, D, L) over routes (a mean when asked, gated by silu(z) (B, D, L));
    any strides, one kernel."""
    batch, K, Dm, L = parts.shape
    zs = z.stride() if z is not None else (0, 0, 0)
    if out.numel():
        launch(_merge_routes_kernel, (_cdiv(L, RELAYOUT_TILE), _cdiv(Dm, RELAYOUT_TILE), batch),
            parts, parts if z is None else z, out, Dm, L, *parts.stride(), *zs, *out.stride(), K=K, MEAN=mean,
            HAS_Z=z is not None, FAST=FAST_MATH and not _INTERPRETED, BD=RELAYOUT_TILE, BL=RELAYOUT_TILE,
            num_warps=4)
    return out


# One route per program, merged: the last of a channel tile's route programs to finish sums the tile's planes (the
# forward's y, the backward's gradients of shared inputs) in the kernel's tail (``_last_route``, ``_merge_tail``)
# instead of a _merge_routes launch after the kernel, for routes of at most TAIL_MERGE_MAX elements (batch * D * L).
# It saves the host a launch (and the planes' second trip through DRAM) but a tail is one warp merging its tile, ~1.6x
# the merge kernel's time: a gain where the host is the limit, a loss on large calls. H100 bf16 (kernel µs, fwd+bwd
# µs through the op; tail steps 32 / 256): Vim-S (19.4 M elements a route) kernels 2161 -> 2260 / 2222; DPMamba intra
# (4.4 M, host-bound) kernels 563 -> 578 / 560, fwd+bwd 1766-1991 -> 1590 / 1482 (the lent host's noise is ~10 %;
# back to back, five alternating rounds: 1540 -> 1465 bf16, 1708 -> 1680 fp32);
# VMamba-T s1 with one state (routes not run together, their planes in DRAM) kernels 4126 -> 4168 channels-last, 5289
# -> 5340 channels-first: off there (again after the one-state forward writes its checkpoints, with TAIL_MERGE_MAX
# lifted: kernels bf16 3475 -> 8630, fwd 935 -> 5656, bwd 1975 -> 2930; fp32 5553 -> 11460). Around the
# threshold, Vim-S kernels merge kernel -> tail: batch 16 (2.4 M) 333 -> 330, batch 32 (4.8 M) 604 -> 615, batch 64
# (9.7 M) 1134 -> 1161 (all three host-bound through the op).
SEQ_TAIL_MERGE = True
SEQ_ONE_STATE_TAIL_MERGE = False
TAIL_MERGE_MAX = 1 << 23
# steps of a tile the tail merges at a time (Vim-S forward kernel µs: 32 513, 64 650, 128 532, 256 505)
TAIL_MERGE_STEPS = 256

# int32 counts of the tail merge per (device, stream): a stream's kernels run one after another, and each leaves
# the counts at zero (the last program of a tile resets its own), so a stream's buffer is never cleared again.
_route_counters: dict[tuple, Tensor] = {}


def _tail_merge(call: _SeqCall, device) -> Tensor | None:
    """The counts for a call's tail merge (``SEQ_TAIL_MERGE``; a program of its grid each), or None without one."""
    if not (call.par_routes and (SEQ_TAIL_MERGE if call.N > 1 else SEQ_ONE_STATE_TAIL_MERGE)
            and call.batch * call.Dm * call.L <= TAIL_MERGE_MAX):
        return None
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None  # a buffer made while capturing a CUDA graph would come from the graph's pool, which it reuses
    n = call.batch * call.n_tiles
    key = (device, torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0)
    counts = _route_counters.get(key)
    if counts is None or counts.numel() < n:
        counts = torch.zeros(max(n, 1 << 12), dtype=torch.int32, device=device)
        _route_counters[key] = counts
    return counts


def _channels_last_copy(x: Tensor | None) -> Tensor | None:
    """A (B, K, D, L) or (B, D, L) tensor copied to channels-last storage (the same logical view); x itself when its
    channels are already contiguous (a copy saved by the forward, see ``saved_inputs``)."""
    if x is None or (x.stride(-2) == 1 and x.stride(-1) >= x.shape[-2]):
        return x
    x4 = x if x.dim() == 4 else x.unsqueeze(1)
    y = _relayout(x4, torch.empty(x4.shape[:2] + x4.shape[2:][::-1], dtype=x.dtype, device=x.device).transpose(2, 3))
    return y if x.dim() == 4 else y.squeeze(1)


# Channels-first grid routes on channels-last copies: the backward kernel stores every gradient (du, ddelta, dz)
# straight into the channels-first result, a channel's 4 steps at a time, instead of a copy back afterwards. Loses
# badly (a warp's store touches 32 rows): VMamba-T s1 bf16 backward 4490 -> 14800 µs (fp32 6735 -> 18216), H100.
# What does pay: route planes summed by _merge_routes straight into the channels-first output and shared inputs'
# gradients (no copy back): fwd+bwd 6557 -> 6310 µs.
SEQ_CF_DIRECT_GRADS = False


# Channels-last copies of a channels-first call's u and delta, made by a forward whose caller saves its inputs for
# the backward (SAVING_FOR_BACKWARD): the caller takes them (``saved_inputs``) and saves them instead of u and
# delta, so the backward does not copy them again (VMamba-T s1 bf16: five planes read and written, ~0.6 ms). An
# entry lives from the forward's copy to the caller's taking it.
_saved_copies: dict[tuple[int, int], tuple] = {}


def _copies(u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Channels-last copies of u and delta, kept for ``saved_inputs`` when the caller saves for a backward."""
    copies = (_channels_last_copy(u), _channels_last_copy(delta))
    if SAVING_FOR_BACKWARD.get() and not (u.is_inference() or delta.is_inference()):
        _remember(_saved_copies, (id(u), id(delta)), (u, delta), (u._version, delta._version), copies)
    return copies


def saved_inputs(u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """What the autograd Function saves for u and delta after this backend's forward: the channels-last copies the
    forward made of them (the same values in another layout; the backward reads them as they are), or u and delta.
    Takes the copies out of ``_saved_copies``: a later call copies again."""
    hit = _saved_copies.pop((id(u), id(delta)), None)
    if u.is_inference() or delta.is_inference() or not _still_valid(hit, (u, delta), (u._version, delta._version)):
        return u, delta
    return hit[2]


def _seq_forward_via_channels_last(u, delta, A, B, C, D, z, delta_bias, initial_state, order, delta_softplus, merge,
                                   return_last_state, return_states, out_dtype):
    """``_seq_forward`` of a channels-first call on channels-last copies. Merged routes of one program each are
    summed by ``_merge_routes`` straight into the channels-first output (it reads z where it is); else y is copied
    back."""
    per_route = merge == "none"
    batch, _, Dm, L = u.shape
    u_cl, delta_cl = _copies(u, delta)
    if not per_route and parallel_routes(order.shape[-2], L):
        into = _natural(batch, None, Dm, L, out_dtype or torch.float32, u.device, False)
        return _seq_forward(u_cl, delta_cl, A, B, C, D, z, delta_bias, initial_state, order, delta_softplus, merge,
                            True, return_last_state, return_states, out_dtype, into=into)
    y, last, states = _seq_forward(u_cl, delta_cl, A, B, C, D, _channels_last_copy(z), delta_bias, initial_state,
                                   order, delta_softplus, merge, True, return_last_state, return_states, out_dtype)
    out, out_view = _natural(batch, y.shape[2] if per_route else None, Dm, L, y.dtype, u.device, False)
    _relayout(_canonical_dy(y, 0 if per_route else 1, True), out_view)
    return out, last, states


def _seq_backward_via_channels_last(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                                    delta_softplus, merge):
    """``_seq_backward`` of a channels-first call on channels-last copies. Gradients of inputs the routes share,
    with one route per program, are route planes that ``_merge_routes`` sums straight into channels-first
    gradients; the others are copied back (or stored in place, SEQ_CF_DIRECT_GRADS)."""
    per_route = merge == "none"
    dy_cl, dy_cl_view = _natural(dy.shape[0], dy.shape[1] if per_route else None, u.shape[2], u.shape[3], dy.dtype,
                                 dy.device, True)
    _relayout(_canonical_dy(dy, 0 if per_route else 1, False), dy_cl_view)
    planes = parallel_routes(order.shape[-2], u.shape[-1])
    into = {name: _channels_first_like(x) for name, x, shared in (("du", u, u.shape[1] == 1),
                                                                  ("ddelta", delta, delta.shape[1] == 1),
                                                                  ("dz", z, True))
            if x is not None and ((planes and shared) or SEQ_CF_DIRECT_GRADS)}
    grads = _seq_backward(dy_cl, dlast, dstates, _channels_last_copy(u), _channels_last_copy(delta), A, B, C, D,
                          _channels_last_copy(z), delta_bias, initial_state, order, delta_softplus, merge, True,
                          into=into)
    if "du" not in into:
        grads[0] = _relayout(grads[0], _channels_first_like(u))
    if "ddelta" not in into:
        grads[1] = _relayout(grads[1], _channels_first_like(delta))
    if z is not None and "dz" not in into:
        grads[6] = _relayout(grads[6].unsqueeze(1), _channels_first_like(z).unsqueeze(1)).squeeze(1)
    return grads


def _channels_first_like(x: Tensor) -> Tensor:
    """A gradient buffer for x of a channels-first call: x's strides when it is channels-first, contiguous when it
    is a channels-last copy that the forward saved in its place (``saved_inputs``)."""
    return _like(x) if x.stride(-1) == 1 else _new(x.shape, x.dtype, x.device)


def parallel_routes(K: int, L: int) -> bool:
    """Whether the sequential kernels give each route its own program (K times the programs, each walking one
    route instead of K one after the other): for long enough routes. The routes' tiles are then stored per route
    and summed by ``_merge_routes`` in a fixed order (deterministic)."""
    return K > 1 and L >= SEQ_PAR_ROUTES_MIN_L


def _route_planes(batch: int, K: int, Dm: int, L: int, dtype, device, channels_last: bool) -> Tensor:
    """The per-route planes a one-route-per-program call stores (canonical (B, K, D, L) view, natural layout) in the
    result's dtype: bf16 planes move a quarter of the bytes of fp32 atomics into a zeroed workspace (VMamba-T s1
    channels-last bf16 fwd 2058 -> 1617 µs, bwd 4691 -> 4549; fp32 planes 2035 / 4905). H100, issue #4 note."""
    return _natural(batch, K, Dm, L, dtype, device, channels_last)[1]


def _stage_rows(B: Tensor, C: Tensor, length: int, NP: int) -> tuple[Tensor, Tensor]:
    """B and C (B, Kb, G, N, L) as contiguous fp32 (B, Kb, G, length, NP) rows: a step's N values are one row that
    every thread of a program reads (16-byte loads). States N..NP-1 are zeros (they must add nothing); rows
    L..length-1 are never read (the kernels clamp positions) and stay unwritten. Both in one allocation and one
    kernel (``_stage_kernel``): at the dual-path shapes the host time of two strided copies was longer than
    the scan's kernels."""
    batch, Kb, G, N, L = B.shape
    staged = torch.empty((2, batch, Kb, G, length, NP), dtype=torch.float32, device=B.device)
    if B.numel():
        launch(_stage_kernel, (batch * Kb * G, _cdiv(L, STAGE_ROWS), 2), B, C, staged, Kb, G, N, L, length,
               *B.stride(), *C.stride(), NP=NP, BL=STAGE_ROWS, num_warps=4)
    return staged[0], staged[1]


STAGE_ROWS = 64  # steps a program of _stage_kernel copies

# Staged rows of the last forward calls, reused by their backward (the same B and C objects: autograd hands the
# saved tensors back): saves the backward its staging. An entry lives while its B and C do (weak references); with
# flat (B, K, G, N, L) inputs those are the caller's own tensors, so a later call with the same unchanged B and C
# reuses it too.
_staged_cache: dict[tuple[int, int], tuple] = {}


def _staged_rows(B: Tensor, C: Tensor, K: int, length: int, NP: int) -> tuple[Tensor, Tensor]:
    """``_stage_rows`` of B and C expanded to K routes (K = 1: as they are), from the cache when this B and C were
    staged unchanged (same in-place versions) for the same K, length and NP. Inference tensors have no version
    counter (a buffer refilled in place under torch.inference_mode keeps its address): never cached, and they need
    no backward. Nor is a call captured in a CUDA graph: its replays must stage the values B and C then hold."""
    expand = (lambda t: t.expand(-1, K, -1, -1, -1)) if K > 1 else (lambda t: t)
    if B.is_inference() or C.is_inference() or (B.is_cuda and torch.cuda.is_current_stream_capturing()):
        return _stage_rows(expand(B), expand(C), length, NP)
    return _memo(_staged_cache, (B, C), (B._version, C._version, K, length, NP),
                 lambda: _stage_rows(expand(B), expand(C), length, NP))


class _SeqCall:
    """Shapes, flags and staged B, C of one call of the sequential kernels."""

    def __init__(self, u, delta, A, B, C, D, delta_bias, order, merge, lanes, staged=None):
        self.batch, self.Ku, self.Dm, self.L = u.shape
        self.K, self.N, self.G = order.shape[-2], A.shape[-1], B.shape[2]
        kinds, revs, self.H, self.W = route_kinds(order)
        self.NP = _pow2(self.N)
        self.block_d = lanes
        self.n_sub = _cdiv(self.L, 8)
        self.merge = {"none": 0, "sum": 1, "mean": 2}[merge]
        bc_routes = B.shape[1] > 1 or C.shape[1] > 1
        x_routes = (D is not None and D.shape[0] > 1) or (delta_bias is not None and delta_bias.shape[0] > 1)
        self.x_routes = x_routes
        if staged is None:
            staged = _staged_rows(B, C, self.K if bc_routes else 1, self.n_sub * 8, self.NP)
        self.B, self.C = staged  # another call's, when given
        self.D = D.expand(self.K, -1) if D is not None and x_routes and D.shape[0] == 1 else D
        self.bias = (delta_bias.expand(self.K, -1) if delta_bias is not None and x_routes
                     and delta_bias.shape[0] == 1 else delta_bias)
        self.order = order
        d_per_group = self.Dm // self.G
        self.sizes = (self.L, self.H, self.W, self.Dm, self.N, self.n_sub, d_per_group, 1)
        n_tiles = _cdiv(self.Dm, lanes)
        self.par_routes = parallel_routes(self.K, self.L)
        self.flags = dict(
            K=self.K, KINDS=kinds, REVS=revs, U_ROUTES=self.Ku > 1, DL_ROUTES=delta.shape[1] > 1,
            A_ROUTES=A.shape[0] > 1, BC_ROUTES=bc_routes, X_ROUTES=x_routes, HAS_D=D is not None,
            HAS_BIAS=delta_bias is not None, MERGE=self.merge, SAME_GROUP=d_per_group % lanes == 0,
            BLOCK_D=lanes, NP=self.NP, PREFETCH=SEQ_PREFETCH and not _INTERPRETED, PAR_ROUTES=self.par_routes,
            FAST=FAST_MATH and not _INTERPRETED, ROUTES_FIRST=self.par_routes and SEQ_ROUTES_FIRST and self.N > 1,
        )
        self.n_tiles = n_tiles
        if self.flags["ROUTES_FIRST"]:
            self.grid = (self.K, n_tiles, self.batch)
        else:
            self.grid = (n_tiles, self.batch, self.K if self.par_routes else 1)

    def strides(self, u, delta, A, z) -> tuple:
        zs = (z.stride(0), z.stride(1), z.stride(2)) if z is not None else (0, 0, 0)
        return (*u.stride(), *delta.stride(), *A.stride(), *self.B.stride()[:3],
                self.D.stride(0) if self.D is not None else 0,
                self.bias.stride(0) if self.bias is not None else 0, *zs)

    def order_strides(self) -> tuple:
        return (self.order.stride(0) if self.order.shape[0] > 1 else 0, self.order.stride(1))


def _seq_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, order, delta_softplus, merge, channels_last,
                 return_last_state, return_states, out_dtype, into=None):
    """The sequential forward; ``into``: the output and its canonical view to write (another layout than the
    inputs': a channels-first call on channels-last copies whose route planes are merged straight into it)."""
    lanes = _seq_lanes(A.shape[-1], "fwd", u.shape[0], u.shape[2])
    call = _SeqCall(u, delta, A, B, C, D, delta_bias, order, merge, lanes)
    device, batch, K, Dm, L, N = u.device, call.batch, call.K, call.Dm, call.L, call.N
    if into is not None:
        out, out_view = into
    else:
        out, out_view = _natural(batch, K if call.merge == 0 else None, Dm, L, out_dtype or torch.float32, device,
                                 channels_last)
    merged = call.merge and K > 1
    planes = merged and call.par_routes  # one plane a route, summed below; else one fp32 running sum
    if planes:
        ws = _route_planes(batch, K, Dm, L, out.dtype, device, channels_last)
    else:
        ws = _workspace(batch, Dm, L, device, channels_last) if merged else None
    ws_strides = (ws.stride(0), ws.stride(1) if planes else 0, ws.stride(2), ws.stride(3)) if ws is not None \
        else (0, 0, 0, 0)
    last = _new((batch, K, Dm, N), torch.float32, device) if return_last_state else None
    states = _new((batch, K, Dm, L, N), torch.float32, device) if return_states else None
    init = initial_state.contiguous() if initial_state is not None else None
    counts = _tail_merge(call, device) if planes else None
    ck = _forward_checkpoints(call)
    launch(_seq_fwd_kernel, call.grid,
        *_or_dummy(u, u, delta, A, call.B, call.C, call.D, z, call.bias, order, init, out, ws, last, states, ck,
                   counts),
        *call.strides(u, delta, A, z), *out_view.stride(), *ws_strides, *call.order_strides(), *call.sizes,
        ck.shape[3] if ck is not None else 0,
        HAS_Z=z is not None, SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, RET_LAST=return_last_state,
        RET_STATES=return_states, **call.flags, AHEAD=SEQ_FWD_AHEAD,
        PIPE=SEQ_FWD_PIPELINE if N > 1 else SEQ_ONE_STATE_FWD_PIPELINE, CK_ONLY=False,
        TAIL_MERGE=counts is not None, MERGE_BL=TAIL_MERGE_STEPS, HIDE_D=N == 1 and SEQ_ONE_STATE_HIDE_D,
        SAVE_CK=ck is not None, num_warps=1, **_maxnreg(SEQ_FWD_MAXNREG if N > 1 else SEQ_ONE_STATE_FWD_MAXNREG),
    )
    if planes and counts is None:  # sum, mean, gate and cast in one kernel
        _merge_routes(ws, out_view[:, 0], z, call.merge == 2)
    return out, last, states


def _checkpoint_shape(call: _SeqCall, block: int = 4) -> tuple[int, ...]:
    """The backward's block-entry states of a call (ck: (B, K, blocks of ``block`` steps, channels padded to the
    backward's tiles, NP) fp32)."""
    lanes = _seq_lanes(call.N, "bwd", call.batch, call.Dm)
    return (call.batch, call.K, call.n_sub * 8 // block, _cdiv(call.Dm, lanes) * lanes, call.NP)


def _forward_checkpoints(call: _SeqCall) -> Tensor | None:
    """The one-state backward's checkpoints, to be written by the forward kernel and saved for the backward
    (FORWARD_RESIDUALS, SEQ_ONE_STATE_FWD_CK), or None."""
    residuals = FORWARD_RESIDUALS.get()
    if (residuals is None or call.N > 1 or not SEQ_ONE_STATE_FWD_CK or SEQ_ONE_STATE_BWD_BLOCK != 4
            or not SEQ_ONE_STATE_CK_KERNEL):
        return None
    ck = _new(_checkpoint_shape(call), torch.float32, call.B.device)
    residuals.append(ck)
    return ck


def _seq_checkpoints(call: _SeqCall, u, delta, A, B, C, D, delta_bias, init, order, delta_softplus, merge, ck, d_pad):
    """The backward's first pass (blocks of 4) as the forward kernel's CK_ONLY mode: its own registers (62 with one
    state) and warps per SM instead of the backward's (the first pass was 29 % of the backward's time, VMamba-T s1);
    writes ck for ``_seq_bwd_kernel``, reusing ``call``'s staged B and C. One state always; N > 1 with
    SEQ_CK_KERNEL."""
    if call.N == 1:
        lanes = SEQ_ONE_STATE_CK_LANES or _seq_lanes(1, "fwd", call.batch, call.Dm)
    else:
        lanes = SEQ_CK_LANES
    fcall = _SeqCall(u, delta, A, B, C, D, delta_bias, order, merge, lanes, staged=(call.B, call.C))
    launch(_seq_fwd_kernel, fcall.grid,
        *_or_dummy(u, u, delta, A, fcall.B, fcall.C, fcall.D, None, fcall.bias, order, init, None, None, None, None,
                   ck, None),
        *fcall.strides(u, delta, A, None), *([0] * 4), *([0] * 4), *fcall.order_strides(), *fcall.sizes, d_pad,
        HAS_Z=False, SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, RET_LAST=False, RET_STATES=False,
        **{**fcall.flags, "MERGE": 0}, AHEAD=1, PIPE=False, CK_ONLY=True, TAIL_MERGE=False,
        MERGE_BL=TAIL_MERGE_STEPS, HIDE_D=call.N == 1 and SEQ_ONE_STATE_HIDE_D, SAVE_CK=False, num_warps=1,
        **_maxnreg(SEQ_ONE_STATE_FWD_MAXNREG if call.N == 1 else SEQ_FWD_MAXNREG),
    )


def _seq_backward(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order, delta_softplus,
                  merge, channels_last, into=None):
    """The sequential backward; ``into``: gradient buffers ("du", "ddelta", "dz") to write instead of buffers
    like the inputs (a channels-first call on channels-last copies: see ``_seq_backward_via_channels_last``)."""
    into = into or {}
    lanes = _seq_lanes(A.shape[-1], "bwd", u.shape[0], u.shape[2])
    call = _SeqCall(u, delta, A, B, C, D, delta_bias, order, merge, lanes)
    device, batch, K, Dm, L, N = u.device, call.batch, call.K, call.Dm, call.L, call.N
    d_pad = call.n_tiles * call.block_d
    # the state entering every block of 4 or 8 steps, written by the kernel's first pass and read by its second
    block = SEQ_BWD_BLOCK if N > 1 else SEQ_ONE_STATE_BWD_BLOCK
    init = initial_state.contiguous() if initial_state is not None else None
    ck_kernel = block == 4 and (SEQ_ONE_STATE_CK_KERNEL if N == 1 else SEQ_CK_KERNEL)
    ck_shape = _checkpoint_shape(call, block)
    ck = next((r for r in BACKWARD_RESIDUALS.get() if tuple(r.shape) == ck_shape and r.device == device), None)
    if ck is not None:  # the forward wrote them (SEQ_ONE_STATE_FWD_CK): no first pass
        ck_kernel = True
    else:
        ck = _new(ck_shape, torch.float32, device)
        if ck_kernel:  # the first pass as its own kernel, with the forward's lanes and registers
            _seq_checkpoints(call, u, delta, A, B, C, D, delta_bias, init, order, delta_softplus, merge, ck, d_pad)
    dy_view = _canonical_dy(dy, call.merge, channels_last)
    du = into["du"] if "du" in into else _like(u)
    ddelta = into["ddelta"] if "ddelta" in into else _like(delta)
    dz = (into["dz"] if "dz" in into else _like(z)) if z is not None else None
    Kx = K if call.x_routes else 1
    partial = call.flags["SAME_GROUP"] and call.NP <= SEQ_PARTIAL_BC_MAX_NP
    scatter = (SEQ_SCATTER_BC and call.flags["SAME_GROUP"] and not partial and block == 4
               and (call.NP, call.block_d) == (SCATTER_NP, SCATTER_LANES))
    scatter_one = (SEQ_ONE_STATE_SCATTER_BC and call.flags["SAME_GROUP"] and not partial and block == 4
                   and (call.NP, call.block_d) == (1, 32))
    blocked = (SEQ_BLOCK_BC and call.flags["SAME_GROUP"] and not partial and not scatter and not scatter_one
               and block == 4)
    bc_mode = 1 if partial else 2 if scatter else 4 if scatter_one else 3 if blocked else 0  # _astep's BC_MODE
    # every buffer the kernel adds into, carved from one zeroed allocation (one fill launch instead of five)
    dB, dC, dA, dD, dbias = _zeroed_views(device, None if partial else call.B.shape, None if partial else call.C.shape,
                                          (A.shape[0], Dm, N), (Kx, Dm) if D is not None else None,
                                          (Kx, Dm) if delta_bias is not None else None)
    if partial:  # every tile stores its own dB, dC rows (no atomics); summed over a group's tiles below
        dB, dC = (_new((batch, K, call.n_tiles, call.n_sub * 8, call.NP), torch.float32, device) for _ in range(2))
    dinit = _new((batch, K, Dm, N), torch.float32, device) if initial_state is not None else None
    # gradients of inputs the routes share: summed over routes in an fp32 workspace, or (one route per program) one
    # plane a route in the gradient's dtype, summed below
    shared = ((u.shape[1] == 1, u.dtype), (delta.shape[1] == 1, delta.dtype),
              (z is not None, z.dtype if z is not None else None))
    wsu, wsdl, wsz = ((_route_planes(batch, K, Dm, L, dtype, device, channels_last) if call.par_routes
                       else _workspace(batch, Dm, L, device, channels_last)) if K > 1 and routes_share else None
                      for routes_share, dtype in shared)
    ws_strides = next(((w.stride(0), w.stride(1) if call.par_routes else 0, w.stride(2), w.stride(3))
                       for w in (wsu, wsdl, wsz) if w is not None), (0, 0, 0, 0))
    dlast = dlast.contiguous() if dlast is not None else None
    dstates = dstates.contiguous() if dstates is not None else None
    dz_strides = dz.stride() if dz is not None else (0, 0, 0)
    planes = call.par_routes and any(w is not None for w in (wsu, wsdl, wsz))
    counts = _tail_merge(call, device) if planes else None
    launch(_seq_bwd_kernel, call.grid,
        *_or_dummy(u, u, delta, A, call.B, call.C, call.D, z, call.bias, order, init, dy_view, dlast, dstates, ck,
                   du, ddelta, dB, dC, dA, dD, dbias, dz, dinit, wsu, wsdl, wsz, counts),
        *call.strides(u, delta, A, z), *dy_view.stride(), *call.order_strides(), *du.stride(), *ddelta.stride(),
        *dz_strides, *ws_strides, *call.sizes, d_pad,
        HAS_Z=z is not None, SOFTPLUS=bool(delta_softplus), HAS_INIT=init is not None, HAS_DLAST=dlast is not None,
        HAS_DSTATES=dstates is not None,
        **{**call.flags, "PREFETCH": call.flags["PREFETCH"] and (SEQ_BWD_PREFETCH or N == 1)},
        BC_MODE=bc_mode, BS=block, AHEAD=SEQ_BWD_AHEAD,
        PREFETCH_CK=SEQ_BWD_PREFETCH_CK, PIPE1=SEQ_BWD_PIPELINE_PASS1 and not ck_kernel, PIPE=SEQ_BWD_PIPELINE,
        PASS1=not ck_kernel, PIPE_BC=SEQ_BWD_PIPELINE_BC,
        VEC_CK=SEQ_VECTOR_CK and not _INTERPRETED and (call.NP, call.block_d) == (SCATTER_NP, SCATTER_LANES),
        PIPE_BC2=SEQ_BWD_PIPELINE_BC2 if N > 1 else SEQ_ONE_STATE_BWD_PIPELINE_BC2,
        TAIL_MERGE=counts is not None, MERGE_BL=TAIL_MERGE_STEPS, num_warps=1,
        **_maxnreg(SEQ_BWD_MAXNREG if N > 1 else SEQ_ONE_STATE_BWD_MAXNREG),
    )
    if planes and counts is None:  # the route planes of shared inputs' gradients: summed into the gradients
        for ws, grad in ((wsu, du), (wsdl, ddelta), (wsz, None if dz is None else dz.unsqueeze(1))):
            if ws is not None:
                _merge_routes(ws, grad[:, 0])
    if partial:  # (B, K, tiles, Lp, NP) -> (B, K, G, Lp, NP): sum the tiles of each group
        dB, dC = (g[:, :, :, :L].unflatten(2, (call.G, -1)).sum(3) for g in (dB, dC))

    def unstage(g: Tensor, k_input: int) -> Tensor:  # (B, K, G, Lp, NP) -> (B, Kb, G, N, L)
        return _fold_routes(g[..., :L, :N].transpose(-1, -2), k_input)

    dD = None if dD is None else _fold_routes(dD, D.shape[0], dim=0).to(D.dtype)
    dbias = None if dbias is None else _fold_routes(dbias, delta_bias.shape[0], dim=0).to(delta_bias.dtype)
    return [du, ddelta, dA.to(A.dtype), unstage(dB, B.shape[1]).to(B.dtype), unstage(dC, C.shape[1]).to(C.dtype),
            dD, dz, dbias, dinit]


def _workspace(batch: int, Dm: int, L: int, device, channels_last: bool) -> Tensor:
    """An fp32 natural-layout (B, D, L) workspace, as its canonical (B, 1, D, L) view."""
    return _natural(batch, None, Dm, L, torch.float32, device, channels_last)[1]


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                   delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool,
                   return_states: bool, out_dtype: torch.dtype | None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Forward on canonical views (``reference.selective_scan`` gives the semantics and the output shapes).

    Returns (y, last_state, states): y in the natural layout, (B, D, L) / (B, L, D) merged or (B, K, D, L) /
    (B, L, K, D) per route, in ``out_dtype`` (default float32); last_state (B, K, D, N) and states
    (B, K, D, L, N) fp32 when requested, else None.
    """
    if any(x is not None and x.dtype == torch.float64 for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)):
        from ssmzoo.ops.selective_scan import chunked
        return chunked.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse,
                                      delta_softplus, merge, channels_last, return_last_state, return_states,
                                      out_dtype)
    _check(u, delta, B, C, z)
    kinds = route_kinds(order)[0]
    if via_channels_last(kinds, channels_last):
        return _seq_forward_via_channels_last(u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                                              delta_softplus, merge, return_last_state, return_states, out_dtype)
    if sequential(kinds, channels_last):
        return _seq_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, order, delta_softplus, merge,
                            channels_last, return_last_state, return_states, out_dtype)
    call = _Call(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, merge, channels_last, "fwd")
    device = u.device
    out, out_view = _natural(call.batch, call.K if call.merge == 0 else None, call.Dm, call.L,
                             out_dtype or torch.float32, device, channels_last)
    ws = _workspace(call.batch, call.Dm, call.L, device, channels_last) if call.merge and call.K > 1 else None
    save_chunks = call.n_tiles > 1 or return_last_state
    chunk = call.chunk_buffer(initial_state, device) if save_chunks or initial_state is not None else None
    states = _new((call.batch, call.K, call.Dm, call.L, call.N), torch.float32, device) if return_states else None
    _forward(call, u, delta, A, z, initial_state, out, out_view, ws, chunk, states, True, save_chunks)
    last = chunk[:, :, call.n_tiles].contiguous() if return_last_state else None
    return out, last, states


def selective_scan_backward(dy: Tensor, dlast: Tensor | None, dstates: Tensor | None, u: Tensor, delta: Tensor,
                            A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                            delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                            delta_softplus: bool, merge: str, channels_last: bool,
                            out_dtype: torch.dtype | None) -> list[Tensor | None]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) in their canonical shapes and dtypes
    (None for absent inputs), given dy in the layout of y, dlast (B, K, D, N) and dstates (B, K, D, L, N) (either
    may be None). Forward states are recomputed tile by tile."""
    if any(x is not None and x.dtype == torch.float64 for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)):
        from ssmzoo.ops.selective_scan import chunked
        return chunked.selective_scan_backward(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias,
                                               initial_state, order, inverse, delta_softplus, merge, channels_last,
                                               out_dtype)
    _check(u, delta, B, C, z, dy)
    kinds = route_kinds(order)[0]
    if via_channels_last(kinds, channels_last):
        return _seq_backward_via_channels_last(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                               order, delta_softplus, merge)
    if sequential(kinds, channels_last):
        return _seq_backward(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                             delta_softplus, merge, channels_last)
    call = _Call(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, merge, channels_last, "bwd")
    device, K = u.device, call.K
    carry = call.n_tiles > 1 or initial_state is not None
    chunk = call.chunk_buffer(initial_state, device) if carry else None
    if call.n_tiles > 1:  # recompute the state entering every tile (reads u, delta, B once; writes chunk only)
        _forward(call, u, delta, A, z, initial_state, None, None, None, chunk, None, False, True)
    gc = _new((call.batch, K, 2, call.Dm, call.N), torch.float32, device)  # adjoint carry, see _bwd_kernel
    entry = gc[:, :, (call.n_tiles - 1) % 2]
    if dlast is None:
        entry.zero_()
    else:
        entry.copy_(dlast)
    dy_view = _canonical_dy(dy, call.merge, channels_last)
    du, ddelta = _like(u), _like(delta)
    dz = _like(z) if z is not None else None
    dB, dC, dA, dD, dbias = _accumulators(call, A, D, delta_bias, device)
    # inputs shared by the routes: their gradients are summed over routes in fp32 workspaces
    wsu, wsdl, wsz = (_workspace(call.batch, call.Dm, call.L, device, channels_last) if K > 1 and shared else None
                      for shared in (u.shape[1] == 1, delta.shape[1] == 1, z is not None))
    ws_strides = next(((w.stride(0), w.stride(2), w.stride(3)) for w in (wsu, wsdl, wsz) if w is not None), (0, 0, 0))
    strides, order_strides = call.input_strides(u, delta, A, z)
    dz_strides = dz.stride() if dz is not None else (0, 0, 0)
    launch(_bwd_kernel, call.grid,
        *_or_dummy(u, u, delta, A, call.B, call.C, call.D, z, call.bias, order, dy_view, chunk, gc, dstates, du,
                   ddelta, dB, dC, dA, dD, dbias, dz, wsu, wsdl, wsz),
        *strides, *dy_view.stride(), *order_strides, *du.stride(), *ddelta.stride(), *dz_strides, *ws_strides,
        *dB.stride()[:4], *call.sizes(),
        CARRY=carry, HAS_DSTATES=dstates is not None, **call.flags, num_warps=call.cfg.num_warps,
    )
    dB = _fold_routes(dB, B.shape[1]).to(B.dtype)
    dC = _fold_routes(dC, C.shape[1]).to(C.dtype)
    dD = None if dD is None else _fold_routes(dD, D.shape[0], dim=0).to(D.dtype)
    dbias = None if dbias is None else _fold_routes(dbias, delta_bias.shape[0], dim=0).to(delta_bias.dtype)
    dinit = gc[:, :, 1].contiguous() if initial_state is not None else None
    return [du, ddelta, dA.to(A.dtype), dB, dC, dD, dz, dbias, dinit]


def _canonical_dy(dy: Tensor, merge: int, channels_last: bool) -> Tensor:
    """dy in the natural layout of y as a canonical (B, K or 1, D, L) view."""
    dy = dy.movedim(1, -1) if channels_last else dy
    return dy if merge == 0 else dy.unsqueeze(1)


def _accumulators(call: _Call, A: Tensor, D: Tensor | None, delta_bias: Tensor | None, device):
    """Zeroed fp32 buffers the backward adds into: dB, dC (B, Kb, G, N, L), dA (Ka, D, N), dD, ddelta_bias (Kx, D)."""
    Kx = call.K if call.flags["X_ROUTES"] else 1
    bc = (call.batch, call.B.shape[1], call.G, call.N, call.L)
    return _zeroed_views(device, bc, bc, (A.shape[0], call.Dm, call.N), (Kx, call.Dm) if D is not None else None,
                         (Kx, call.Dm) if delta_bias is not None else None)


def _fold_routes(g: Tensor, k_input: int, dim: int = 1) -> Tensor:
    """A gradient accumulated per route for an input shared by the routes (size 1 along ``dim``): sum the routes."""
    return g.sum(dim, keepdim=True) if g.shape[dim] != k_input else g

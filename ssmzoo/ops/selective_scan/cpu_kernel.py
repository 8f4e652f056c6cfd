"""A compiled CPU forward of the selective scan (numba): the recurrence fused over steps, states in L1.

The chunked PyTorch path runs the recurrence one step at a time, and every step is several passes over the whole
(batch x routes x channels x states) state in memory: ~2-3 ns per state entry and step on one core, most of the
separation demo's time. This kernel keeps a block of 32 channels x N states of one sequence in a small array,
walks the steps with them, and computes exp(dt * A) inline with a polynomial that the compiler vectorises over the
channels (math.exp would be a scalar libm call per state): ~1 ns per entry and step, no per-step memory traffic.

Scope: the forward only, float32 compute, CPU tensors, every route kind, shared or per-route inputs, groups,
``initial_state`` and ``return_last_state``. Calls outside it (float64, ``return_states``, tracing for export) and
every backward run the chunked path, which is also what computes the gradients after this forward (the op's
backward recomputes from the inputs). numba compiles the kernel on its first call (~5 s, then cached on disk).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic
from torch import Tensor

from ssmzoo.ops.selective_scan import chunked
from ssmzoo.ops.selective_scan.checks import is_tracing
from ssmzoo.ops.selective_scan.common import compute_dtype

__all__ = ["selective_scan", "selective_scan_backward", "handles"]

BLOCK = 32  # channels per job: 4 AVX2 vectors; 64 measured slower (the state block leaves L1)
LOG2E = np.float32(1.4426950408889634)
# 2^f on [-0.5, 0.5], degree 6, least squares in relative error on Chebyshev nodes: max relative error 9.7e-8 in
# float32 (fitted once with numpy; highest degree first).
EXP2_COEFFS = np.array([1.5337576746530653e-04, 1.3399860363701999e-03, 9.618519534640192e-03,
                        5.550328997515995e-02, 2.4022646608711984e-01, 6.931472056005114e-01,
                        1.0000000005920209e00], np.float32)


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits`` (no numba function reinterprets a scalar)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(inline="always", fastmath=True)
def _exp2_nonpositive(x2):  # pragma: no cover (compiled)
    """2^x2 for float32 x2 <= 0: 2^round(x2) from exponent bits times a polynomial of the remainder (vectorises,
    unlike math.exp's libm call); 0 to float32 accuracy below 2^-125."""
    x2 = max(x2, np.float32(-125.0))
    whole = np.int32(x2 - np.float32(0.5))
    f = x2 - np.float32(whole)
    c = EXP2_COEFFS
    poly = (((((c[0] * f + c[1]) * f + c[2]) * f + c[3]) * f + c[4]) * f + c[5]) * f + c[6]
    return poly * _float_from_bits((whole + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", fastmath=True)
def _exp_nonpositive(x):  # pragma: no cover (compiled)
    """exp(x) for float32 x <= 0 (see :func:`_exp2_nonpositive`)."""
    return _exp2_nonpositive(x * LOG2E)


@numba.njit(inline="always", fastmath=True)
def _softplus(x):  # pragma: no cover (compiled)
    """mamba_ssm's softplus (identity above 20): max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], with
    log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3, by its odd series to s^17 (relative error < 1e-8)."""
    e = _exp_nonpositive(-abs(x))
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    series = ((((((((np.float32(1 / 17) * s2 + np.float32(1 / 15)) * s2 + np.float32(1 / 13)) * s2
                   + np.float32(1 / 11)) * s2 + np.float32(1 / 9)) * s2 + np.float32(1 / 7)) * s2
                + np.float32(1 / 5)) * s2 + np.float32(1 / 3)) * s2 + np.float32(1.0))
    value = max(x, np.float32(0.0)) + np.float32(2.0) * s * series
    return x if x > np.float32(20.0) else value


def _scan_kernel(u, delta, bias, A, B, C, Dskip, z, order, h0, y, last, softplus, use_bias, use_h0, use_d, use_z,
                 merge):  # pragma: no cover (compiled; tested through the op)
    """Position-major arrays: u (Bn, L, Ku, D), delta (Bn, L, Kd, D), bias / Dskip (Kx, D), A (Ka, D, N),
    B (Bn, L, Kb, G, N), C (Bn, L, Kc, G, N), z (Bn, L, D), order (Bi, K, L) int64, h0 / last (Bn, K, D, N).
    y: (Bn, L, K, D) per route when merge == 0, else (Bn, L, 1, D) = sum over routes (merge 1) or mean (merge 2),
    times silu(z) when use_z. One job per (sample, group, block of channels); it runs the routes in turn, so the
    merge needs no atomics."""
    nb, L, ku_n, nd = u.shape
    kd_n, kx_n, kd2_n = delta.shape[2], bias.shape[0], Dskip.shape[0]
    K = order.shape[1]
    ka_n, N = A.shape[0], A.shape[2]
    kb_n, kc_n, G = B.shape[2], C.shape[2], B.shape[3]
    bi_n = order.shape[0]
    per_group = nd // G
    blocks = (per_group + BLOCK - 1) // BLOCK
    for job in numba.prange(nb * G * blocks):
        b = job // (G * blocks)
        g = (job // blocks) % G
        d0 = g * per_group + (job % blocks) * BLOCK
        width = min(BLOCK, (g + 1) * per_group - d0)
        bi = b if bi_n > 1 else 0
        h = np.zeros((N, BLOCK), np.float32)  # the innermost loops run over channels, which vectorise
        a = np.zeros((N, BLOCK), np.float32)
        dts = np.zeros(BLOCK, np.float32)  # lanes past `width` stay 0: their state stays 0 and is never written
        dtu = np.zeros(BLOCK, np.float32)
        acc = np.zeros(BLOCK, np.float32)
        for k in range(K):
            ku, kd, kx = min(k, ku_n - 1), min(k, kd_n - 1), min(k, kx_n - 1)
            ka, kb, kc, kd2 = min(k, ka_n - 1), min(k, kb_n - 1), min(k, kc_n - 1), min(k, kd2_n - 1)
            ky = k if merge == 0 else 0
            for n in range(N):
                for j in range(width):
                    a[n, j] = A[ka, d0 + j, n] * LOG2E  # exp(dt A) = 2^(dt A log2 e)
                    h[n, j] = h0[b, k, d0 + j, n] if use_h0 else np.float32(0.0)
            for t in range(L):
                p = order[bi, k, t]
                for j in range(width):
                    x = delta[b, p, kd, d0 + j]
                    if use_bias:
                        x += bias[kx, d0 + j]
                    dt = _softplus(x) if softplus else x
                    dts[j] = dt
                    dtu[j] = dt * u[b, p, ku, d0 + j]
                for j in range(BLOCK):
                    acc[j] = 0.0
                for n in range(N):
                    bn = B[b, p, kb, g, n]
                    cn = C[b, p, kc, g, n]
                    hn = h[n]
                    an = a[n]
                    for j in range(BLOCK):
                        state = _exp2_nonpositive(dts[j] * an[j]) * hn[j] + dtu[j] * bn
                        hn[j] = state
                        acc[j] += state * cn
                for j in range(width):
                    out = acc[j]
                    if use_d:
                        out += Dskip[kd2, d0 + j] * u[b, p, ku, d0 + j]
                    if merge == 0 or k == 0:
                        y[b, p, ky, d0 + j] = out
                    else:
                        y[b, p, ky, d0 + j] += out
            for n in range(N):
                for j in range(width):
                    last[b, k, d0 + j, n] = h[n, j]
        routes_out = K if merge == 0 else 1
        scale = np.float32(1.0 / K) if merge == 2 else np.float32(1.0)
        if use_z or scale != 1.0:
            for p in range(L):
                for j in range(width):
                    gate = scale
                    if use_z:
                        zv = z[b, p, d0 + j]
                        e = _exp_nonpositive(-abs(zv))
                        gate *= zv * (np.float32(1.0) if zv >= 0 else e) / (np.float32(1.0) + e)
                    for r in range(routes_out):
                        y[b, p, r, d0 + j] *= gate


def _compiled(func, **options):
    """numba.njit with the compiled code cached on disk, or without the cache where numba finds no writable place
    for it (a read-only install and home): numba then refuses ``cache=True`` at decoration time."""
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:
        return numba.njit(cache=False, **options)(func)


_scan_kernel = _compiled(_scan_kernel, parallel=True, fastmath=True, boundscheck=False, error_model="numpy")


def handles(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
            delta_bias: Tensor | None, initial_state: Tensor | None, return_states: bool) -> bool:
    """Whether this kernel runs the forward of such a call (else the chunked path does)."""
    return (u.device.type == "cpu" and not return_states and not is_tracing()
            and compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state) == torch.float32)


def _position_major(x: Tensor) -> np.ndarray:
    """Canonical (Bn, K, ..., L) float32 -> a C-contiguous (Bn, L, K, ...) array (a view for channels-last input)."""
    moved = x.to(torch.float32).movedim(-1, 1)
    return moved.contiguous().numpy()


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                   delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool,
                   return_states: bool, out_dtype: torch.dtype | None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The backend signature of ``reference.selective_scan`` (canonical views); softplus, skip term, route merge
    and gate run inside the kernel too."""
    if not handles(u, delta, A, B, C, D, z, delta_bias, initial_state, return_states):
        return chunked.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse,
                                      delta_softplus, merge, channels_last, return_last_state, return_states,
                                      out_dtype)
    batch, _, Dm, L = u.shape
    K, N = order.shape[-2], A.shape[-1]
    merged = merge in ("sum", "mean")
    y = torch.empty(batch, L, 1 if merged else K, Dm)
    last = torch.empty(batch, K, Dm, N)
    unused = np.zeros((1, 1, 1), np.float32)

    def array(x: Tensor | None) -> np.ndarray:
        return x.to(torch.float32).contiguous().numpy() if x is not None else unused[0]

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _scan_kernel(_position_major(u), _position_major(delta), array(delta_bias), array(A), _position_major(B),
                 _position_major(C), array(D), array(z.movedim(-1, 1)) if z is not None else unused,
                 order.contiguous().numpy(), initial_state.to(torch.float32).contiguous().numpy()
                 if initial_state is not None else last.numpy(), y.numpy(), last.numpy(), delta_softplus,
                 delta_bias is not None, initial_state is not None, D is not None, z is not None,
                 {"none": 0, "sum": 1, "mean": 2}[merge])
    if merged:
        y = y[:, :, 0] if channels_last else y[:, :, 0].transpose(1, 2)
    elif not channels_last:
        y = y.permute(0, 2, 3, 1)
    return y.to(out_dtype or torch.float32), last if return_last_state else None, None


selective_scan_backward = chunked.selective_scan_backward

"""The selective scan with routes: public function, ``torch.library`` op, autograd and backend dispatch.

Backends (same canonical signature, see ``reference.selective_scan``): ``reference`` (sequential, the definition),
``chunked`` (parallel PyTorch, CPU and ONNX), ``cpu_kernel`` (a numba-compiled CPU forward; its backward and the
calls it does not cover are chunked's) and ``triton`` (CUDA kernels). ``SSMZOO_BACKEND`` forces one; else CUDA
tensors use triton when it is importable and CPU tensors use cpu_kernel (chunked when numba is not importable). A
CUDA call without triton, or where Triton cannot compile or launch its kernels (ptxas refusing the GPU, too little
shared memory), falls back to chunked with a one-time warning. During ONNX export the chunked path is
traced directly, so the ONNX graph holds standard ops only; torch.compile and torch.export see the single op
``torch.ops.ssmzoo.selective_scan``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
import weakref
from types import ModuleType

import torch
from torch import Tensor

from ssmzoo.ops.directions import Routes
from ssmzoo.ops.selective_scan import reference
from ssmzoo.ops.selective_scan.checks import MERGES, Canonical, canonicalize
from ssmzoo.ops.selective_scan.common import BACKWARD_RESIDUALS, FORWARD_RESIDUALS, SAVING_FOR_BACKWARD, compute_dtype

__all__ = ["selective_scan", "backend_name"]

BACKENDS = ("reference", "chunked", "cpu_kernel", "triton")
_warned: set[str] = set()


@functools.cache
def _load(name: str) -> ModuleType | None:
    """A backend module, or None when it cannot be imported here (no Triton)."""
    try:
        return importlib.import_module(f"ssmzoo.ops.selective_scan.{name}")
    except ImportError:
        return None


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def backend_name(device: torch.device) -> str:
    """The backend a call on ``device`` runs: SSMZOO_BACKEND if set, else triton on CUDA, cpu_kernel elsewhere
    (chunked when numba cannot be imported)."""
    forced = os.environ.get("SSMZOO_BACKEND", "")
    if forced and forced not in BACKENDS:
        raise ValueError(f"SSMZOO_BACKEND must be one of {BACKENDS}, got {forced!r}")
    wanted = forced or ("triton" if device.type == "cuda" else "cpu_kernel")
    if wanted == "cpu_kernel" and (device.type != "cpu" or _load("cpu_kernel") is None):
        wanted = "chunked"
    # Triton kernels run on CUDA tensors, or on CPU tensors under its interpreter (TRITON_INTERPRET=1, CI).
    runnable = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    if wanted == "triton" and (not runnable or _load("triton") is None):
        _warn_once(f"triton-{device.type}", f"selective_scan: no Triton kernel for {device.type} tensors here; "
                                            "using the chunked PyTorch path (slower)")
        wanted = "chunked"
    return wanted


_triton_unusable: set[str] = set()  # device types where Triton could not compile or launch its kernels


def _op_backend(device: torch.device) -> ModuleType:
    """The module behind the op. The reference has no analytic backward: forced, it runs outside the op under
    autograd (``_run``), and a direct call of the op falls back to chunked. Where Triton failed to compile its
    kernels once (``_with_fallback``), chunked."""
    name = backend_name(device)
    if name == "triton" and device.type in _triton_unusable:
        name = "chunked"
    return _load("chunked" if name == "reference" else name)


def _toolchain_errors() -> tuple[type[BaseException], ...]:
    """Triton's errors that mean "cannot compile or launch here" (ptxas missing or refusing the GPU, a kernel
    needing more shared memory or registers than the GPU has) rather than a bug: they switch to chunked."""
    try:
        from triton.runtime.errors import OutOfResources, PTXASError
    except ImportError:
        return ()
    return (PTXASError, OutOfResources)


def _on_device(device: torch.device):
    """The device guard for a call on ``device``: Triton launches its kernels on the current CUDA device, which
    need not be the tensors' (a model on cuda:1 while cuda:0 is current)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _with_fallback(device: torch.device, method: str, *args):
    """``backend.<method>(*args)`` on ``device``; when the Triton backend cannot compile here, warn once and run
    chunked from then on for this device type."""
    backend = _op_backend(device)
    try:
        with _on_device(device):
            return getattr(backend, method)(*args)
    except _toolchain_errors() as err:
        if backend is not _load("triton"):
            raise
        _triton_unusable.add(device.type)
        _warn_once(f"triton-failed-{device.type}", f"selective_scan: the Triton kernels cannot be compiled or "
                                                    f"launched on this {device.type} device ({type(err).__name__}: "
                                                    f"{err}); using the chunked PyTorch path (slower)")
        with _on_device(device):
            return getattr(_load("chunked"), method)(*args)


def _empty(x: Tensor | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    """Op outputs must be tensors: an unrequested output is a 0-element tensor."""
    return like.new_empty(0, dtype=dtype) if x is None else x


@torch.library.custom_op("ssmzoo::selective_scan", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
             delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
             delta_softplus: bool, merge: str, channels_last: bool, return_last_state: bool, return_states: bool,
             out_dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
    return _scan_impl(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse, delta_softplus, merge,
                      channels_last, return_last_state, return_states, out_dtype)


def _scan_impl(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse, delta_softplus, merge,
               channels_last, return_last_state, return_states, out_dtype) -> tuple[Tensor, Tensor, Tensor]:
    y, last, states = _with_fallback(
        u.device, "selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse,
        delta_softplus, merge, channels_last, return_last_state, return_states, out_dtype)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    # contiguous, as the fake promises (compiled code relies on the fake's strides)
    return y.contiguous(), _empty(last, u, dtype).contiguous(), _empty(states, u, dtype).contiguous()


@_scan_op.register_fake
def _scan_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse, delta_softplus, merge,
               channels_last, return_last_state, return_states, out_dtype):
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, _, Dm, L = u.shape
    K, N = order.shape[-2], A.shape[-1]
    if merge == "none":
        shape = (batch, L, K, Dm) if channels_last else (batch, K, Dm, L)
    else:
        shape = (batch, L, Dm) if channels_last else (batch, Dm, L)
    last = u.new_empty((batch, K, Dm, N) if return_last_state else (0,), dtype=dtype)
    states = u.new_empty((batch, K, Dm, L, N) if return_states else (0,), dtype=dtype)
    return u.new_empty(shape, dtype=out_dtype or dtype), last, states


@torch.library.custom_op("ssmzoo::selective_scan_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, dlast: Tensor | None, dstates: Tensor | None, u: Tensor, delta: Tensor,
                      A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                      delta_bias: Tensor | None, initial_state: Tensor | None, order: Tensor, inverse: Tensor,
                      delta_softplus: bool, merge: str, channels_last: bool, out_dtype: torch.dtype | None
                      ) -> list[Tensor]:
    """Gradients of the 9 tensor inputs, laid out like the inputs (0-element tensors for absent inputs)."""
    return _scan_backward_impl(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                               inverse, delta_softplus, merge, channels_last, out_dtype)


def _scan_backward_impl(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse,
                        delta_softplus, merge, channels_last, out_dtype, as_op=True) -> list[Tensor | None]:
    grads = _with_fallback(
        u.device, "selective_scan_backward", dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias,
        initial_state, order, inverse, delta_softplus, merge, channels_last, out_dtype)
    if not as_op:  # eager autograd takes gradients of any strides, and None for absent inputs
        return grads
    result = []
    for x, g in zip((u, delta, A, B, C, D, z, delta_bias, initial_state), grads, strict=True):
        if x is None:
            result.append(u.new_empty(0))
            continue
        out = torch.empty_like(x)  # the layout the fake promises
        result.append(g if g.stride() == out.stride() else out.copy_(g))
    return result


@_scan_backward_op.register_fake
def _scan_backward_fake(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse,
                        delta_softplus, merge, channels_last, out_dtype):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [u.new_empty(0) if x is None else torch.empty_like(x) for x in inputs]


def _setup_context(ctx, inputs, output, residuals=()):
    ctx.save_for_backward(*inputs[:11], *residuals)
    ctx.flags = inputs[11:]


def _backward(ctx, dy, dlast, dstates, eager=False):
    delta_softplus, merge, channels_last, return_last_state, return_states, out_dtype = ctx.flags
    saved = ctx.saved_tensors
    args = (dy, dlast if return_last_state else None, dstates if return_states else None, *saved[:11],
            delta_softplus, merge, channels_last, out_dtype)
    if eager:
        residuals = BACKWARD_RESIDUALS.set(saved[11:])
        try:
            grads = _scan_backward_impl(*args, as_op=False)
        finally:
            BACKWARD_RESIDUALS.reset(residuals)
    else:
        grads = torch.ops.ssmzoo.selective_scan_backward(*args)
    return (*[g if need else None for g, need in zip(grads, ctx.needs_input_grad[:9], strict=True)], *([None] * 8))


_scan_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The op's forward and backward as an autograd.Function, for eager calls.

    ``torch.library`` custom ops cost tens to hundreds of microseconds of Python per call (dispatch, the fake-tensor
    machinery, the autograd wrapper), which at B = 1 speech shapes is longer than the kernels themselves. Eager
    calls take this path; torch.compile and torch.export still see the single op ``ssmzoo::selective_scan``.
    Outputs and gradients are those of the op (same backends, same layouts)."""

    @staticmethod
    def forward(ctx, *args):
        residuals = []  # what the backend's forward computed for its backward (saved below)
        saving, collecting = SAVING_FOR_BACKWARD.set(True), FORWARD_RESIDUALS.set(residuals)
        try:
            outputs = _scan_impl(*args)
        finally:
            SAVING_FOR_BACKWARD.reset(saving)
            FORWARD_RESIDUALS.reset(collecting)
        # a backend may hand back copies of u and delta in another layout (the same values) to save instead:
        # the backward then reads them as they are (the Triton backend's channels-last copies of channels-first
        # grid-route calls)
        saved_inputs = getattr(_op_backend(args[0].device), "saved_inputs", None)
        if saved_inputs is not None:
            args = (*saved_inputs(args[0], args[1]), *args[2:])
        _setup_context(ctx, args, outputs, residuals)
        # unused outputs (last_state, states, or y) get None instead of zero-filled gradients: two to three
        # allocations and fills less per backward, host time at the host-bound speech shapes
        ctx.set_materialize_grads(False)
        y = outputs[0]
        ctx.y_meta = (y.shape, y.dtype, y.device)
        return outputs

    @staticmethod
    def backward(ctx, dy, dlast, dstates):
        if dy is None:  # only last_state or states reach the loss
            shape, dtype, device = ctx.y_meta
            dy = torch.zeros(shape, dtype=dtype, device=device)
        return _backward(ctx, dy, dlast, dstates, eager=True)


_plain_copies: dict[int, tuple[weakref.ref, Tensor]] = {}


def _plain(x: Tensor) -> Tensor:
    """x, or outside inference mode a kept plain copy of an inference tensor: routes first put on a device under
    torch.inference_mode hold inference tensors, which autograd may not save (the copy is made once per tensor)."""
    if not x.is_inference() or torch.is_inference_mode_enabled():
        return x
    key = id(x)
    hit = _plain_copies.get(key)
    if hit is None or hit[0]() is not x:
        hit = (weakref.ref(x, lambda _: _plain_copies.pop(key, None)), x.clone())
        _plain_copies[key] = hit
    return hit[1]


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def _run(c: Canonical, delta_softplus: bool, merge: str | None, return_last_state: bool, return_states: bool,
         out_dtype: torch.dtype | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    if torch.compiler.is_compiling():  # dynamo cannot trace is_inference(); compiled code runs no inference tensors
        order, inverse = c.order, c.inverse
    else:
        order, inverse = _plain(c.order), _plain(c.inverse)
    args = (c.u, c.delta, c.A, c.B, c.C, c.D, c.z, c.delta_bias, c.initial_state, order, inverse,
            delta_softplus, merge or "none", c.channels_last, return_last_state, return_states, out_dtype)
    if torch.onnx.is_in_onnx_export():  # trace the standard ops of the exportable path into the ONNX graph
        with torch.no_grad():  # an inference graph; chunked writes into reused buffers (out=), which autograd refuses
            return _load("chunked").selective_scan(*args)
    if os.environ.get("SSMZOO_BACKEND") == "reference":  # the definition, differentiated by autograd (debugging)
        return reference.selective_scan(*args)
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        y, last, states = torch.ops.ssmzoo.selective_scan(*args)
    elif _needs_grad(args[:9]):  # eager: the same backends without the op's dispatch layers (~0.1-0.3 ms per call)
        y, last, states = _EagerScan.apply(*args)
    else:  # inference: no graph to record, so not even the autograd.Function (~40 µs of host time per call)
        y, last, states = _scan_impl(*args)
    return y, last if return_last_state else None, states if return_states else None


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   routes: Routes | str = "forward", merge: str | None = "sum", layout: str = "channels_first",
                   initial_state: Tensor | None = None, return_last_state: bool = False,
                   return_states: bool = False, out_dtype: torch.dtype | None = None):
    """Mamba-1 selective scan along K routes, inputs and outputs in the natural (spatial) layout.

    Per route k the scan visits natural position p_t = route_k(t) at step t (mamba_ssm ``selective_scan_ref``):
    ``h_t = exp(dt_t A_k) h_{t-1} + dt_t B_k[p_t] u_k[p_t]``, ``y_k[p_t] = C_k[p_t] . h_t``, with
    ``dt = softplus(delta_k + delta_bias_k)``; then ``out_k = (y_k + D_k u_k) * silu(z)``, merged over routes.

    Shapes, with batch B, channels D, states N, groups G (D % G == 0; channel d uses group d // (D/G)), routes K,
    and spatial = (L,) or, for routes on a grid, (L,) or (H, W) (row-major, L = H*W):

    ======================  ===============================  =================================
    argument                layout="channels_first"          layout="channels_last"
    ======================  ===============================  =================================
    u, delta  shared        (B, D, *spatial)                 (B, *spatial, D)
    u, delta  per route     (B, K, D, *spatial)              (B, *spatial, K, D)
    B, C      shared        (B, G, N, *spatial)              (B, *spatial, G, N)
    B, C      per route     (B, K, G, N, *spatial)           (B, *spatial, K, G, N)
    z (optional, shared)    (B, D, *spatial)                 (B, *spatial, D)
    A                       (D, N) or (K, D, N)              same
    D, delta_bias           (D,) or (K, D)                   same
    initial_state           (B, K, D, N)                     same
    return: merge sum/mean  (B, D, *spatial)                 (B, *spatial, D)
    return: merge=None      (B, K, D, *spatial)              (B, *spatial, K, D)
    last_state              (B, K, D, N)                     same
    states                  (B, K, D, L, N), natural order   same
    ======================  ===============================  =================================

    Args:
        u, delta, B, C, z: float32, float16, bfloat16 (or float64); any strides, nothing is copied by the caller.
        A: float32/float64, real, every entry <= 0 (each route must decay; A = -exp(A_log)).
        D, delta_bias, initial_state: float32/float64.
        delta_softplus: apply softplus to delta + delta_bias (mamba_ssm's threshold 20). When False, delta must be
            >= 0 already.
        routes: a ``ssmzoo.ops.directions.Routes`` (e.g. ``directions.cross2d(H, W)``, ``directions.bidi(L)``,
            ``directions.permutation(idx)``) or a name: "forward", "reverse", "bidi" (1-D, L from the tensors),
            "cross2d", "bidi2d", "unidi2d" (2-D, tensors must carry (H, W)).
        merge: "sum" (VMamba), "mean" (Vim) or None (per-route outputs).
        layout: "channels_first" or "channels_last", for every activation and the output.
        initial_state: state before step 0 of each route (streaming); zeros when None.
        return_last_state: also return the state after the last step of each route.
        return_states: also return the state after every step, at the natural position visited (Spatial-Mamba).
        out_dtype: dtype of the output; default float32 (float64 if an input is float64). States are always in
            the compute dtype (float32, or float64).

    Returns:
        ``out``, or a tuple ``(out, last_state)``, ``(out, states)`` or ``(out, last_state, states)`` when asked.
        Gradients flow to every tensor input and through last_state and states.

    Raises:
        ValueError: naming the argument and the shapes, for mismatched shapes, routes that do not fit the
            spatial shape, wrong dtypes or devices, A with positive entries (always checked on the CPU, on other
            devices with SSMZOO_CHECK_FINITE=1), and NaN/Inf inputs when SSMZOO_CHECK_FINITE=1.
    """
    if merge not in MERGES:
        raise ValueError(f"selective_scan: merge must be one of {MERGES}, got {merge!r}")
    c = canonicalize(u, delta, A, B, C, D, z, delta_bias, routes, layout, initial_state)
    y, last, states = _run(c, delta_softplus, merge, return_last_state, return_states, out_dtype)
    extra = [x for x, wanted in ((last, return_last_state), (states, return_states)) if wanted]
    y = _unflatten(y, c.spatial, c.channels_last)
    return (y, *extra) if extra else y


def _unflatten(y: Tensor, spatial: tuple[int, ...], channels_last: bool) -> Tensor:
    if len(spatial) == 1:
        return y
    return y.unflatten(1, spatial) if channels_last else y.unflatten(-1, spatial)


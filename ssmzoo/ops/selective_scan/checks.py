"""Argument checking for ``selective_scan``: public shapes and layouts -> the canonical views every backend takes.

Canonical views (no copies: reshapes of the spatial dims and permutes only; any strides):

- u, delta: (B, Ku, D, L), Ku in {1, K} (1 = shared by every route)
- A: (Ka, D, N); D, delta_bias: (Kx, D), Ka, Kx in {1, K}
- B, C: (B, Kb, G, N, L), Kb in {1, K}, D % G == 0 (channel d reads group d // (D // G))
- z: (B, D, L); initial_state: (B, K, D, N)
- order, inverse: (Bi, K, L) int64, Bi in {1, B} (see ``ssmzoo.ops.directions``)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ssmzoo.ops import directions
from ssmzoo.ops.directions import Routes

LAYOUTS = ("channels_first", "channels_last")
MERGES = ("sum", "mean", None)
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PARAMETER_DTYPES = (torch.float32, torch.float64)
NAMED_ROUTES_1D = {"forward": directions.forward, "reverse": directions.reverse, "bidi": directions.bidi}
NAMED_ROUTES_2D = {"cross2d": directions.cross2d, "bidi2d": directions.bidi2d, "unidi2d": directions.unidi2d}


@dataclass
class Canonical:
    """The arguments of one call in canonical views (module docstring), plus what is needed to shape the outputs."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    delta_bias: Tensor | None
    initial_state: Tensor | None
    order: Tensor
    inverse: Tensor
    spatial: tuple[int, ...]
    channels_last: bool


def is_tracing() -> bool:
    """True while torch.compile / torch.export / ONNX export trace: no data-dependent checks then."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing())


def _shape(x: Tensor | None) -> str:
    return "None" if x is None else str(tuple(x.shape))


def _fail(name: str, x: Tensor | None, expected: list[tuple], layout: str) -> ValueError:
    options = " or ".join(str(tuple(e)) for e in expected)
    return ValueError(f"selective_scan: `{name}` must have shape {options} for layout={layout!r}, "
                      f"got {_shape(x)}")


def _check_dtype(name: str, x: Tensor, allowed: tuple[torch.dtype, ...], device: torch.device) -> None:
    if x.dtype not in allowed:
        raise ValueError(f"selective_scan: `{name}` must be one of {[str(d) for d in allowed]}, got {x.dtype} "
                         f"(shape {_shape(x)})")
    if x.device != device:
        raise ValueError(f"selective_scan: `{name}` is on {x.device} but `u` is on {device}")


def _spatial_rank(u: Tensor, routes: str | Routes, channels_last: bool, Dm: int) -> int:
    """1 when the tensors carry a flat L, 2 when they carry (H, W) (only for routes defined on a grid)."""
    if isinstance(routes, str):
        return 2 if routes in NAMED_ROUTES_2D else 1
    if routes.grid is None or u.dim() < 4:
        return 1
    spatial = tuple(u.shape[1:3]) if channels_last else tuple(u.shape[-2:])
    features = tuple(u.shape[3:]) if channels_last else tuple(u.shape[1:-2])
    fits = spatial == routes.grid and features in ((Dm,), (routes.K, Dm))
    return 2 if fits else 1


def _flat(x: Tensor, n_feat: int, S: int, L: int, channels_last: bool) -> Tensor:
    """(B, *feat, *spatial) or (B, *spatial, *feat) -> (B, *feat, L) without copying when strides allow. A flat
    spatial axis is not reshaped: a same-shape reshape is still a view, one more autograd node per input
    (host time in the backward at the host-bound speech shapes)."""
    if channels_last:
        if S > 1:
            x = x.reshape(x.shape[0], L, *x.shape[1 + S:])
        return x.movedim(1, -1)
    return x if S == 1 else x.reshape(*x.shape[:1 + n_feat], L)


def _activation(name: str, x: Tensor, feats: list[tuple], batch: int, spatial: tuple[int, ...], L: int,
                channels_last: bool, layout: str) -> tuple[Tensor, int]:
    """Check x against the allowed feature shapes; return its (B, *feat, L) view and the index of the match."""
    expected = [(batch, *spatial, *f) if channels_last else (batch, *f, *spatial) for f in feats]
    if x is None or tuple(x.shape) not in expected:
        raise _fail(name, x, expected, layout)
    match = expected.index(tuple(x.shape))
    return _flat(x, len(feats[match]), len(spatial), L, channels_last), match


def _bc(name: str, x: Tensor, batch: int, K: int, N: int, Dm: int, spatial: tuple[int, ...], L: int,
        channels_last: bool, layout: str) -> Tensor:
    """B or C -> (B, Kb, G, N, L); G is read from the tensor and must divide D."""
    S = len(spatial)
    n_feat = x.dim() - 1 - S if isinstance(x, Tensor) else 0
    feat = tuple(x.shape[1 + S:]) if channels_last else tuple(x.shape[1:1 + n_feat])
    G = feat[-2] if len(feat) >= 2 else 1
    view, match = _activation(name, x, [(G, N), (K, G, N)], batch, spatial, L, channels_last, layout)
    if Dm % G:
        raise ValueError(f"selective_scan: `{name}` has G={G} groups, which must divide D={Dm} "
                         f"(shape {_shape(x)})")
    return view.unsqueeze(1) if match == 0 else view


def _parameter(name: str, x: Tensor | None, feats: list[tuple], device: torch.device) -> Tensor | None:
    if x is None:
        return None
    if tuple(x.shape) not in feats:
        raise ValueError(f"selective_scan: `{name}` must have shape {' or '.join(map(str, feats))}, "
                         f"got {_shape(x)}")
    _check_dtype(name, x, PARAMETER_DTYPES, device)
    return x if len(x.shape) == len(feats[-1]) else x.unsqueeze(0)


def canonicalize(u, delta, A, B, C, D, z, delta_bias, routes, layout, initial_state) -> Canonical:
    """Validate the public arguments of ``selective_scan`` and return their canonical views.

    Raises ValueError naming the argument and the shapes for any mismatch.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"selective_scan: layout must be one of {LAYOUTS}, got {layout!r}")
    channels_last = layout == "channels_last"
    if not isinstance(u, Tensor) or u.dim() not in (3, 4, 5):
        got = _shape(u) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"selective_scan: `u` must be a 3-, 4- or 5-dim tensor, got {got}")
    device = u.device
    if not isinstance(A, Tensor) or A.dim() not in (2, 3):
        raise ValueError(f"selective_scan: `A` must have shape (D, N) or (K, D, N), got {_shape(A)}")
    _check_dtype("A", A, PARAMETER_DTYPES, device)
    Dm, N = A.shape[-2:]
    if isinstance(routes, str):
        if routes not in NAMED_ROUTES_1D and routes not in NAMED_ROUTES_2D:
            raise ValueError(f"selective_scan: routes must be a directions.Routes or one of "
                             f"{sorted(NAMED_ROUTES_1D) + sorted(NAMED_ROUTES_2D)}, got {routes!r}")
    elif not isinstance(routes, Routes):
        raise ValueError(f"selective_scan: routes must be a directions.Routes or a name, got {type(routes)}")

    S = _spatial_rank(u, routes, channels_last, Dm)
    batch = u.shape[0]
    spatial = tuple(u.shape[1:1 + S]) if channels_last else tuple(u.shape[u.dim() - S:])
    L = math.prod(spatial)
    if isinstance(routes, str):
        named = NAMED_ROUTES_2D if S == 2 else NAMED_ROUTES_1D
        routes = named[routes](*spatial)
    K = routes.K
    if routes.L != L or (S == 2 and routes.grid != spatial):
        wanted = f"{routes.grid} or a flat L={routes.L}" if routes.grid else f"L={routes.L}"
        raise ValueError(f"selective_scan: routes {routes} do not fit `u` {_shape(u)} (layout={layout!r}): its "
                         f"spatial dims must be {wanted}")
    if routes.per_batch and routes.order.shape[0] != batch:
        raise ValueError(f"selective_scan: per-sample routes have batch {routes.order.shape[0]}, `u` has "
                         f"{batch} (u {_shape(u)})")

    u_, mu = _activation("u", u, [(Dm,), (K, Dm)], batch, spatial, L, channels_last, layout)
    delta_, md = _activation("delta", delta, [(Dm,), (K, Dm)], batch, spatial, L, channels_last, layout)
    for name, x in (("u", u), ("delta", delta)):
        _check_dtype(name, x, ACTIVATION_DTYPES, device)
    B_ = _bc("B", B, batch, K, N, Dm, spatial, L, channels_last, layout)
    C_ = _bc("C", C, batch, K, N, Dm, spatial, L, channels_last, layout)
    for name, x in (("B", B), ("C", C)):
        _check_dtype(name, x, ACTIVATION_DTYPES, device)
    z_ = None
    if z is not None:
        z_, _ = _activation("z", z, [(Dm,)], batch, spatial, L, channels_last, layout)
        _check_dtype("z", z, ACTIVATION_DTYPES, device)
    if A.dim() == 3 and A.shape[0] != K:
        raise ValueError(f"selective_scan: `A` {_shape(A)} has {A.shape[0]} routes, routes have K={K}")
    if initial_state is not None:
        if tuple(initial_state.shape) != (batch, K, Dm, N):
            raise ValueError(f"selective_scan: `initial_state` must have shape {(batch, K, Dm, N)}, "
                             f"got {_shape(initial_state)}")
        _check_dtype("initial_state", initial_state, PARAMETER_DTYPES, device)
    order, inverse = routes.index(device)
    canonical = Canonical(
        u=u_.unsqueeze(1) if mu == 0 else u_, delta=delta_.unsqueeze(1) if md == 0 else delta_,
        A=A if A.dim() == 3 else A.unsqueeze(0), B=B_, C=C_,
        D=_parameter("D", D, [(Dm,), (K, Dm)], device), z=z_,
        delta_bias=_parameter("delta_bias", delta_bias, [(Dm,), (K, Dm)], device),
        initial_state=initial_state, order=order, inverse=inverse, spatial=spatial, channels_last=channels_last)
    if not is_tracing():
        _check_values(canonical, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                                  "delta_bias": delta_bias, "initial_state": initial_state})
    return canonical


def _check_values(c: Canonical, named: dict[str, Tensor | None]) -> None:
    """Data-dependent checks (host syncs). A <= 0 always on the CPU; on other devices, and finiteness of every
    input, only when SSMZOO_CHECK_FINITE=1 (a sync per call would stall a GPU pipeline)."""
    debug = os.environ.get("SSMZOO_CHECK_FINITE", "0") == "1"
    if debug:
        for name, x in named.items():
            if x is not None and not bool(torch.isfinite(x).all()):
                raise ValueError(f"selective_scan: `{name}` {_shape(x)} contains NaN or Inf "
                                 f"(SSMZOO_CHECK_FINITE=1)")
    if (debug or c.A.device.type == "cpu") and bool((c.A > 0).any()):
        raise ValueError(f"selective_scan: `A` {_shape(named['A'])} has positive entries; every route needs "
                         f"decay (A <= 0, e.g. A = -exp(A_log)), max {c.A.max().item():.4g}")

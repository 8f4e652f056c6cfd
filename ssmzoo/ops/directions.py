"""Scan routes as data: the orders in which a scan visits the positions of a sequence or an H x W grid.

A :class:`Routes` holds K routes over L positions as two int64 index maps:

- ``order[..., k, t]``: the natural position visited by route k at step t (route order -> natural);
- ``inverse[..., k, p]``: the step at which route k visits natural position p (natural -> route order).

Both have shape (K, L), or (B, K, L) for per-sample routes (MambaIRv2's semantic sort). A grid of H x W is stored
row-major, position p = h * W + w. The 2-D routes follow VMamba's cross-scan (``csm_triton.py``, scans=0/1/2):

=========  ==========================================  ================================
name       visits at step t                            as a tensor op on (..., H, W)
=========  ==========================================  ================================
row        row-major: p = t                            ``x.flatten(-2)``
col        column-major: h = t % H, w = t // H         ``x.transpose(-1, -2).flatten(-2)``
row_rev    reversed row: p = L - 1 - t                 ``flip`` of row
col_rev    reversed col                                ``flip`` of col
=========  ==========================================  ================================

so a sum merge of the four cross-scan outputs y0..y3 (each in route order) equals VMamba's
``y0 + flip(y2) + T(y1 + flip(y3))``. The scan op consumes and returns natural layouts; it never materialises the
route-ordered copies these maps describe.

Constructors are cached (models call them in every forward with the same H, W) and their index maps are cached per
device, so building routes costs a dictionary lookup after the first call. The cached maps are built with numpy so
that a first call made while torch.export traces (under a fake-tensor mode) still caches real tensors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

GRID_ROUTES = ("row", "col", "row_rev", "col_rev")


class Routes:
    """K scan routes over L positions (see the module docstring).

    Args:
        order: int64 (K, L) or (B, K, L), a tensor or (constant routes made by this module) a numpy array; each
            row a permutation of range(L).
        names: K route names, for messages and repr.
        grid: (H, W) when the routes are defined on a row-major H x W grid, else None.
        inverse: the inverse permutations, same shape and kind as ``order``; computed when None.
    """

    def __init__(self, order: Tensor | np.ndarray, names: tuple[str, ...], grid: tuple[int, int] | None = None,
                 inverse: Tensor | np.ndarray | None = None):
        if isinstance(order, Tensor) and (order.dtype != torch.int64 or order.dim() not in (2, 3)):
            raise ValueError(f"Routes: order must be int64 of shape (K, L) or (B, K, L), got {order.dtype} "
                             f"{tuple(order.shape)}")
        if len(names) != order.shape[-2]:
            raise ValueError(f"Routes: {len(names)} names for {order.shape[-2]} routes")
        if grid is not None and grid[0] * grid[1] != order.shape[-1]:
            raise ValueError(f"Routes: grid {grid} does not have L={order.shape[-1]} positions")
        if inverse is None:
            inverse = np.argsort(order, axis=-1) if isinstance(order, np.ndarray) else invert(order)
        # Constant routes keep numpy arrays and make tensors on demand: a tensor made while torch.export traces
        # is a fake tensor, and must not outlive that trace in a cache.
        self._maps = (order, inverse)
        self.names = tuple(names)
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def order(self) -> Tensor:
        """(K, L) or (B, K, L) int64: order[..., k, t] = the natural position visited by route k at step t."""
        return _tensor(self._maps[0])

    @property
    def inverse(self) -> Tensor:
        """Same shape: inverse[..., k, p] = the step at which route k visits natural position p."""
        return _tensor(self._maps[1])

    @property
    def K(self) -> int:
        return self._maps[0].shape[-2]

    @property
    def L(self) -> int:
        return self._maps[0].shape[-1]

    @property
    def per_batch(self) -> bool:
        """True when every sample has its own routes (order of shape (B, K, L))."""
        return self._maps[0].ndim == 3

    def index(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(order, inverse) as (Bi, K, L) int64 tensors on ``device``, Bi = B for per-sample routes else 1."""
        device = torch.device(device)
        if device in self._on_device:
            return self._on_device[device]
        order, inverse = self.order, self.inverse
        if not self.per_batch:
            order, inverse = order.unsqueeze(0), inverse.unsqueeze(0)
        maps = (order.to(device), inverse.to(device))
        if not torch.compiler.is_compiling():  # made while tracing, it may be a fake tensor: never keep it
            self._on_device[device] = maps
        return maps

    def to_route(self, x: Tensor, k: int, dim: int = -1) -> Tensor:
        """x with its L positions along ``dim`` (natural order) rearranged into the visiting order of route k.

        For per-sample routes dim 0 of x is the batch.
        """
        return _take(x, self._rows(x, k, self.order), dim)

    def to_natural(self, x: Tensor, k: int, dim: int = -1) -> Tensor:
        """Inverse of :meth:`to_route`: x in route-k order along ``dim`` back to natural order."""
        return _take(x, self._rows(x, k, self.inverse), dim)

    def _rows(self, x: Tensor, k: int, maps: Tensor) -> Tensor:
        return maps[:, k] if self.per_batch else maps[k]

    def __repr__(self) -> str:
        where = f"grid={self.grid}" if self.grid else f"L={self.L}"
        batch = ", per-sample" if self.per_batch else ""
        return f"Routes({', '.join(self.names)}; {where}{batch})"


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def invert(order: Tensor) -> Tensor:
    """Inverse permutations of the rows of ``order`` (..., L): inverse[..., order[..., t]] = t."""
    steps = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, steps)


def _take(x: Tensor, rows: Tensor, dim: int) -> Tensor:
    """x indexed along ``dim`` by ``rows`` (L,) or, per sample, (B, L)."""
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[dim] = rows.shape[-1]
    if rows.dim() == 2:
        shape[0] = rows.shape[0]
    return torch.take_along_dim(x, rows.reshape(shape).to(x.device), dim=dim)


def _grid_route(name: str, H: int, W: int) -> np.ndarray:
    t = np.arange(H * W, dtype=np.int64)
    if name in ("row", "row_rev"):
        pos = t
    elif name in ("col", "col_rev"):
        pos = (t % H) * W + t // H
    else:
        raise ValueError(f"grid route name must be one of {GRID_ROUTES}, got {name!r}")
    return pos[::-1] if name.endswith("_rev") else pos


@functools.lru_cache(maxsize=256)
def grid(H: int, W: int, names: tuple[str, ...] = GRID_ROUTES) -> Routes:
    """Routes on a row-major H x W grid, one per name in ``names`` (each from ``GRID_ROUTES``)."""
    if H < 1 or W < 1:
        raise ValueError(f"grid: H and W must be positive, got H={H}, W={W}")
    return Routes(np.stack([_grid_route(n, H, W) for n in names]), tuple(names), grid=(H, W))


def cross2d(H: int, W: int) -> Routes:
    """VMamba's four cross-scan routes (row, col, row_rev, col_rev) on H x W, official order (scans=0)."""
    return grid(H, W, GRID_ROUTES)


def bidi2d(H: int, W: int) -> Routes:
    """VMamba's bidirectional set (scans=2): row, row, row_rev, row_rev."""
    return grid(H, W, ("row", "row", "row_rev", "row_rev"))


def unidi2d(H: int, W: int) -> Routes:
    """VMamba's unidirectional set (scans=1): four row-major routes."""
    return grid(H, W, ("row",) * 4)


@functools.lru_cache(maxsize=256)
def _line(L: int, names: tuple[str, ...]) -> Routes:
    if L < 1:
        raise ValueError(f"routes need L >= 1, got L={L}")
    t = np.arange(L, dtype=np.int64)
    maps = {"forward": t, "reverse": t[::-1]}
    return Routes(np.stack([maps[n] for n in names]), names)


def forward(L: int) -> Routes:
    """One 1-D route visiting 0, 1, ..., L-1."""
    return _line(L, ("forward",))


def reverse(L: int) -> Routes:
    """One 1-D route visiting L-1, ..., 0."""
    return _line(L, ("reverse",))


def bidi(L: int) -> Routes:
    """Two 1-D routes, forward then reverse (Vim's bimamba v2, dual-path Mamba)."""
    return _line(L, ("forward", "reverse"))


def permutation(order: Tensor, validate: bool = True) -> Routes:
    """One route visiting ``order`` (L,) or, per sample, (B, L): e.g. MambaIRv2's semantic sort indices.

    ``validate`` checks that every row is a permutation of range(L) (a host sync; pass False inside compiled code).
    """
    if order.dim() not in (1, 2):
        raise ValueError(f"permutation: order must be (L,) or (B, L), got {tuple(order.shape)}")
    order = order.long()
    if validate and not torch.equal(order.sort(-1).values, torch.arange(order.shape[-1], device=order.device)
                                    .expand_as(order)):
        raise ValueError(f"permutation: every row of order {tuple(order.shape)} must be a permutation of range(L)")
    return Routes(order.unsqueeze(-2), ("permutation",))


def concat(*routes: Routes) -> Routes:
    """Routes of several sets in sequence (same L; per-sample sets need the same batch)."""
    if len({r.L for r in routes}) != 1:
        raise ValueError(f"concat: routes have different L: {[r.L for r in routes]}")
    grids = {r.grid for r in routes}
    per_batch = any(r.per_batch for r in routes)
    batch = max(r.order.shape[0] if r.per_batch else 1 for r in routes)

    def maps(r: Routes, attr: str) -> Tensor:
        m = getattr(r, attr)
        return m.expand(batch, *m.shape[-2:]) if per_batch and not r.per_batch else m

    order = torch.cat([maps(r, "order") for r in routes], dim=-2)
    inverse = torch.cat([maps(r, "inverse") for r in routes], dim=-2)
    names = tuple(n for r in routes for n in r.names)
    return Routes(order, names, grid=grids.pop() if len(grids) == 1 else None, inverse=inverse)

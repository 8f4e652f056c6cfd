"""Random selective-scan cases for the tests: public-API arguments in either layout, and helpers to run a backend."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

from ssmzoo.ops import directions, selective_scan

TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@contextlib.contextmanager
def backend(name: str):
    """Force SSMZOO_BACKEND inside the block (hypothesis tests cannot use the monkeypatch fixture)."""
    old = os.environ.get("SSMZOO_BACKEND")
    os.environ["SSMZOO_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["SSMZOO_BACKEND"]
        else:
            os.environ["SSMZOO_BACKEND"] = old


@dataclass
class Case:
    """Channels-first tensors (the logical layout) plus the options of one call."""

    tensors: dict[str, torch.Tensor | None]
    routes: object
    merge: str | None
    spatial: tuple[int, ...]
    n_feat: dict[str, int] = field(default_factory=dict)  # feature dims before the spatial dims, per activation

    def to(self, dtype: torch.dtype) -> Case:
        """The same case with every tensor in ``dtype`` (e.g. the float64 truth of a float32 case)."""
        tensors = {n: None if x is None else x.to(dtype) for n, x in self.tensors.items()}
        return Case(tensors, self.routes, self.merge, self.spatial, self.n_feat)

    def kwargs(self, layout: str, dtype: torch.dtype | None = None, requires_grad: bool = False) -> dict:
        """Arguments for selective_scan; activations cast to ``dtype`` and laid out channels-last when asked
        (built as contiguous channels-last tensors, so no caller-side copy is involved)."""
        out = dict(routes=self.routes, merge=self.merge, layout=layout)
        for name, x in self.tensors.items():
            if x is None:
                out[name] = None
                continue
            if name in self.n_feat:
                x = x.to(dtype) if dtype is not None else x
                if layout == "channels_last":
                    x = to_channels_last(x, self.n_feat[name], len(self.spatial))
            out[name] = x.detach().clone().requires_grad_(requires_grad)
        return out


def to_channels_last(x: torch.Tensor, n_feat: int, n_spatial: int) -> torch.Tensor:
    """(B, *feat, *spatial) -> contiguous (B, *spatial, *feat)."""
    return x.movedim(tuple(range(1, 1 + n_feat)), tuple(range(1 + n_spatial, 1 + n_spatial + n_feat))).contiguous()


def to_channels_first(x: torch.Tensor, n_feat: int, n_spatial: int) -> torch.Tensor:
    return x.movedim(tuple(range(1 + n_spatial, 1 + n_spatial + n_feat)), tuple(range(1, 1 + n_feat)))


@st.composite
def cases(draw, lengths=(1, 7, 63, 197), dtype=torch.float64, max_work=200_000):
    """A random case: L, N, K, groups, shared or per-route parameters, optional D/z/bias/initial state, routes of
    every kind (named 1-D, grids with (H, W) or flat tensors, per-sample permutations), merges."""
    L = draw(st.sampled_from(lengths))
    N = draw(st.sampled_from((1, 4, 16)))
    K = draw(st.sampled_from((1, 2, 4)))
    G = draw(st.sampled_from((1, 2)))
    Dm = G * draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    if batch * K * Dm * L * N > max_work:
        K, N = 1, min(N, 4)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731

    kind = draw(st.sampled_from(("named", "grid", "permutation")))
    spatial = (L,)
    if kind == "named" and K <= 2:
        routes = "forward" if K == 1 else "bidi"
    elif kind == "grid" and L in (63, 7):
        H, W = (7, 9) if L == 63 else (1, 7)
        routes = directions.grid(H, W, tuple(draw(st.permutations(directions.GRID_ROUTES)))[:K])
        # flat (L,) tensors too, except on the 1 x 7 grid: there a per-route (B, K=1, D=1, L) tensor would read as a
        # shared (B, D, H=1, W) one
        spatial = (H, W) if H == 1 or draw(st.booleans()) else (L,)
    else:
        sample = st.sampled_from((0, 1))
        perms = [torch.stack([torch.randperm(L, generator=g) for _ in range(batch)]) if draw(sample)
                 else torch.randperm(L, generator=g) for _ in range(K)]
        routes = directions.concat(*[directions.permutation(p) for p in perms])

    def act(feat_shared, feat_route, shared):
        return rnd(batch, *(feat_shared if shared else feat_route), *spatial)

    flags = {n: draw(st.booleans()) for n in ("u_shared", "delta_shared", "B_shared", "C_shared", "A_shared",
                                                "D_shared", "bias_shared")}
    tensors = dict(
        u=act((Dm,), (K, Dm), flags["u_shared"]),
        delta=act((Dm,), (K, Dm), flags["delta_shared"]) * 0.5,
        B=act((G, N), (K, G, N), flags["B_shared"]),
        C=act((G, N), (K, G, N), flags["C_shared"]),
        A=-torch.rand(*(() if flags["A_shared"] else (K,)), Dm, N, generator=g, dtype=dtype) * 2,
        D=rnd(*(() if flags["D_shared"] else (K,)), Dm) if draw(st.booleans()) else None,
        z=rnd(batch, Dm, *spatial) if draw(st.booleans()) else None,
        delta_bias=rnd(*(() if flags["bias_shared"] else (K,)), Dm) if draw(st.booleans()) else None,
        initial_state=rnd(batch, K, Dm, N) if draw(st.booleans()) else None,
    )
    n_feat = {n: tensors[n].dim() - 1 - len(spatial) for n in ("u", "delta", "B", "C", "z") if tensors[n] is not None}
    return Case(tensors, routes, draw(st.sampled_from(("sum", "mean", None))), spatial, n_feat)


def run(case: Case, backend_name: str, layout: str = "channels_first", dtype=None, grads: bool = True,
        out_dtype=None, seed: int = 0, states: bool = True):
    """Outputs (out, last_state, states), out in channels-first, and the gradients of a random linear loss of all
    three with respect to every tensor input (None where absent). ``states=False``: no per-step states are asked
    for (states is then an empty tensor)."""
    kw = case.kwargs(layout, dtype, requires_grad=grads)
    with backend(backend_name):
        if states:
            out, last, states = selective_scan(**kw, return_last_state=True, return_states=True, out_dtype=out_dtype)
        else:
            out, last = selective_scan(**kw, return_last_state=True, out_dtype=out_dtype)
            states = out.new_zeros(0)
    n_feat_out = 1 if case.merge else 2
    if layout == "channels_last":
        out = to_channels_first(out, n_feat_out, len(case.spatial))
    if not grads:
        return (out, last, states), None
    g = torch.Generator().manual_seed(seed)
    loss = sum((x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64)).sum() for x in (out, last, states))
    leaves = [kw[n] for n in TENSORS if kw[n] is not None]
    computed = iter(torch.autograd.grad(loss, leaves))
    result = {}
    for n in TENSORS:
        if kw[n] is None:
            result[n] = None
            continue
        d = next(computed)
        result[n] = to_channels_first(d, case.n_feat[n], len(case.spatial)) \
            if layout == "channels_last" and n in case.n_feat else d
    return (out, last, states), result


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (DESIGN's relative measure), 0 for empty or all-zero references."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item() if b.numel() else 0.0

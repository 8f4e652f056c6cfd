"""The reference selective scan against hand computations and mamba_ssm's documented recurrence."""
import math

import torch
import torch.nn.functional as F

from ssmzoo.ops import directions
from ssmzoo.ops.selective_scan import checks, reference


def _ref(**kw):
    args = dict(D=None, z=None, delta_bias=None, delta_softplus=True, routes="forward", merge="sum",
                layout="channels_first", initial_state=None)
    args.update(kw)
    c = checks.canonicalize(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"],
                            args["delta_bias"], args["routes"], args["layout"], args["initial_state"])
    return reference.selective_scan(c.u, c.delta, c.A, c.B, c.C, c.D, c.z, c.delta_bias, c.initial_state, c.order,
                                    c.inverse, args["delta_softplus"], args["merge"] or "none", c.channels_last,
                                    True, True, None)


def test_hand_computation_two_steps_both_routes():
    f64 = dict(dtype=torch.float64)
    u = torch.tensor([[[1.0, 2.0]]], **f64)
    delta = torch.tensor([[[0.5, 1.0]]], **f64)
    A = torch.tensor([[-1.0]], **f64)
    B = torch.tensor([[[[1.0, 3.0]]]], **f64)
    C = torch.tensor([[[[2.0, 1.0]]]], **f64)
    D = torch.tensor([0.5], **f64)
    e = math.exp
    # forward: h0 = 0.5, y0 = 2*0.5 + 0.5*1; h1 = e^-1*0.5 + 1*3*2, y1 = h1 + 0.5*2
    fwd = [1.5, 7 + 0.5 * e(-1)]
    # reverse visits position 1 first: h = 6, y[1] = 6 + 1; then h = e^-0.5*6 + 0.5, y[0] = 2h + 0.5
    rev = [2 * (6 * e(-0.5) + 0.5) + 0.5, 7.0]
    y, last, states = _ref(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_softplus=False, routes="bidi", merge=None)
    assert torch.allclose(y, torch.tensor([[[fwd], [rev]]], **f64).squeeze(2).unsqueeze(2), atol=1e-12)
    assert torch.allclose(last.flatten(), torch.tensor([6 + 0.5 * e(-1), 6 * e(-0.5) + 0.5], **f64))
    assert torch.allclose(states[0, 1, 0, :, 0], torch.tensor([6 * e(-0.5) + 0.5, 6.0], **f64))
    y_mean, _, _ = _ref(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_softplus=False, routes="bidi", merge="mean")
    assert torch.allclose(y_mean[0, 0], (torch.tensor(fwd, **f64) + torch.tensor(rev, **f64)) / 2)


def _mamba_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's documented recurrence, one route: u, delta (b, d, l), A (d, n), B, C (b, g, n, l)."""
    delta = F.softplus(delta + delta_bias[:, None])
    B = B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)
    C = C.repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = torch.exp(delta[:, :, i, None] * A) * x + delta[:, :, i, None] * B[:, :, :, i] * u[:, :, i, None]
        ys.append((x * C[:, :, :, i]).sum(-1))
    out = torch.stack(ys, 2) + D[:, None] * u
    return out if z is None else out * F.silu(z)


def test_matches_mamba_recurrence_per_route_vim_style():
    g = torch.Generator().manual_seed(0)
    b, d, L, n, G, K = 2, 6, 9, 4, 3, 2
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, z = rnd(b, K, d, L), rnd(b, K, d, L), rnd(b, d, L)
    A = -torch.rand(K, d, n, generator=g, dtype=torch.float64)
    B, C, D, bias = rnd(b, K, G, n, L), rnd(b, K, G, n, L), rnd(K, d), rnd(K, d)
    y, _, _ = _ref(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, routes="bidi", merge="mean")
    fwd = _mamba_selective_scan_ref(u[:, 0], delta[:, 0], A[0], B[:, 0], C[:, 0], D[0], z, bias[0])
    flip = lambda x: x.flip(-1)  # noqa: E731
    bwd = flip(_mamba_selective_scan_ref(flip(u[:, 1]), flip(delta[:, 1]), A[1], flip(B[:, 1]), flip(C[:, 1]), D[1],
                                         flip(z), bias[1]))
    assert torch.allclose(y, (fwd + bwd) / 2, atol=1e-12)


def test_vmamba_cross_scan_equivalence():
    g = torch.Generator().manual_seed(1)
    b, d, H, W, n, K = 1, 4, 3, 5, 1, 4
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, B, C = rnd(b, d, H, W), rnd(b, K, d, H, W), rnd(b, K, 1, n, H, W), rnd(b, K, 1, n, H, W)
    A, D, bias = -torch.rand(K, d, n, generator=g, dtype=torch.float64), rnd(K, d), rnd(K, d)
    routes = directions.cross2d(H, W)
    y, _, _ = _ref(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=bias, routes=routes)
    official = []
    for k in range(K):
        seq = lambda x, k=k: routes.to_route(x.flatten(-2), k)  # noqa: E731
        yk = _mamba_selective_scan_ref(seq(u), seq(delta[:, k]), A[k], seq(B[:, k]), seq(C[:, k]), D[k], None,
                                       bias[k])
        official.append(yk)
    ys = torch.stack(official, 1)  # VMamba's cross-merge of the route-ordered outputs
    merged = ys[:, 0] + ys[:, 2].flip(-1) + (ys[:, 1] + ys[:, 3].flip(-1)).view(b, d, W, H).transpose(2, 3).flatten(2)
    assert torch.allclose(y.flatten(2), merged, atol=1e-10)

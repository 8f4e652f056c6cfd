"""The chunked backend (through the public op and its analytic backward) against the reference, forward and
backward, over random shapes, layouts, groups, routes and dtypes."""
import pytest
import torch
from hypothesis import given, settings
from scan_cases import TENSORS, Case, backend, cases, rel_err, run

from ssmzoo.ops import directions, selective_scan
from ssmzoo.ops.selective_scan import chunked


def _compare(a, b, tol, what, same_dtype=True, grad_tol=None):
    (out_a, last_a, states_a), grads_a = a
    (out_b, last_b, states_b), grads_b = b
    for name, x, y in (("out", out_a, out_b), ("last_state", last_a, last_b), ("states", states_a, states_b)):
        assert x.shape == y.shape, (what, name)
        assert rel_err(x, y) <= tol, (what, name, rel_err(x, y))
    for name in TENSORS if grads_a else ():
        if grads_b[name] is None:
            assert grads_a[name] is None
            continue
        assert grads_a[name].shape == grads_b[name].shape, (what, name)
        assert not same_dtype or grads_a[name].dtype == grads_b[name].dtype, (what, name)
        # a bf16 input gets a bf16 gradient: rounded to 2^-8 relative, within DESIGN's 1e-2 for bf16
        limit = 1e-2 if grads_a[name].dtype == torch.bfloat16 else grad_tol or 2 * tol
        assert rel_err(grads_a[name], grads_b[name]) <= limit, (what, "grad", name,
                                                                rel_err(grads_a[name], grads_b[name]))


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_chunked_matches_reference_fp64(case):
    ref = run(case, "reference")
    _compare(run(case, "chunked"), ref, 1e-10, "chunked fp64, channels_first")
    _compare(run(case, "chunked", layout="channels_last"), ref, 1e-10, "chunked fp64, channels_last")


@settings(max_examples=10, deadline=None)
@given(case=cases(dtype=torch.float32))
def test_chunked_matches_reference_fp32(case):
    """fp32 against the float64 reference (the truth) to 1e-5, gradients to DESIGN's 2e-4 (a sum over every step
    such as dA of a single state can cancel: 9e-5 seen); against the fp32 reference, whose own rounding (e.g. dA
    summed step after step) adds to the difference, to DESIGN's 1e-4."""
    got = run(case, "chunked", layout="channels_last")
    _compare(got, run(case.to(torch.float64), "reference"), 1e-5, "chunked fp32 vs reference fp64",
             same_dtype=False, grad_tol=2e-4)
    _compare(got, run(case, "reference"), 1e-4, "chunked fp32 vs reference fp32")


@settings(max_examples=8, deadline=None)
@given(case=cases(dtype=torch.float32, lengths=(7, 63, 197)))
def test_bf16_inputs_computed_in_fp32(case):
    """bf16 activations (fp32 parameters and state): the recurrence runs in fp32, so the result matches the fp32
    reference on the same (bf16-rounded) inputs to fp32 accuracy, far inside DESIGN's 1e-2 for bf16 inputs."""
    for name in case.n_feat:
        case.tensors[name] = case.tensors[name].bfloat16().float()
    ref = run(case, "reference")
    got = run(case, "chunked", dtype=torch.bfloat16)
    assert got[0][0].dtype == torch.float32  # output fp32 unless asked
    assert got[1]["u"].dtype == torch.bfloat16 and got[1]["A"].dtype == torch.float32
    _compare(got, ref, 1e-5, "chunked bf16", same_dtype=False)
    out_bf16 = run(case, "chunked", dtype=torch.bfloat16, out_dtype=torch.bfloat16, grads=False)[0][0]
    assert out_bf16.dtype == torch.bfloat16
    assert rel_err(out_bf16, ref[0][0]) <= 1e-2


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_gradcheck_fp64(layout):
    g = torch.Generator().manual_seed(3)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    b, K, Dm, H, W, N, G = 2, 4, 4, 2, 3, 2, 2
    cl = layout == "channels_last"
    u = torch.randn(b, H, W, Dm, generator=g, **f64) if cl else torch.randn(b, Dm, H, W, generator=g, **f64)
    delta = torch.randn(*((b, H, W, K, Dm) if cl else (b, K, Dm, H, W)), generator=g, **f64)
    B = torch.randn(*((b, H, W, K, G, N) if cl else (b, K, G, N, H, W)), generator=g, **f64)
    C = torch.randn(*((b, H, W, G, N) if cl else (b, G, N, H, W)), generator=g, **f64)
    z = torch.randn(*((b, H, W, Dm) if cl else (b, Dm, H, W)), generator=g, **f64)
    A = (-torch.rand(K, Dm, N, generator=g, dtype=torch.float64)).requires_grad_()
    D, bias = torch.randn(K, Dm, generator=g, **f64), torch.randn(Dm, generator=g, **f64)
    h0 = torch.randn(b, K, Dm, N, generator=g, **f64)
    routes = directions.cross2d(H, W)

    def f(*x):
        return selective_scan(*x[:5], D=x[5], z=x[6], delta_bias=x[7], initial_state=x[8], routes=routes,
                              layout=layout, merge="mean", return_last_state=True, return_states=True)

    assert torch.autograd.gradcheck(f, (u, delta, A, B, C, D, z, bias, h0), fast_mode=True)


def test_gradcheck_per_sample_permutation_merge_none():
    g = torch.Generator().manual_seed(4)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    b, Dm, L, N = 2, 3, 6, 3
    routes = directions.concat(directions.forward(L), directions.permutation(
        torch.stack([torch.randperm(L, generator=g) for _ in range(b)])))
    x = (torch.randn(b, Dm, L, generator=g, **f64), torch.randn(b, 2, Dm, L, generator=g, **f64),
         (-torch.rand(Dm, N, generator=g, dtype=torch.float64)).requires_grad_(),
         torch.randn(b, 1, N, L, generator=g, **f64), torch.randn(b, 2, 1, N, L, generator=g, **f64))
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, routes=routes, merge=None), x)


def test_long_sequence_large_delta_is_finite_and_accurate():
    """L = 4096, delta up to 10 and |A| up to 16: decays underflow to 0, nothing overflows, forward and backward."""
    g = torch.Generator().manual_seed(5)
    b, Dm, L, N = 1, 2, 4096, 16
    u = torch.randn(b, Dm, L, generator=g)
    delta = torch.rand(b, Dm, L, generator=g) * 10
    A = -torch.linspace(1e-3, 16, N).expand(Dm, N).contiguous()
    B, C = torch.randn(b, 1, N, L, generator=g), torch.randn(b, 1, N, L, generator=g)
    leaves = [u.clone().requires_grad_(), delta.clone().requires_grad_(), A.clone().requires_grad_()]
    y, last = selective_scan(*leaves, B, C, delta_softplus=False, routes="reverse", return_last_state=True)
    grads = torch.autograd.grad(y.square().sum() + last.sum(), leaves)
    assert torch.isfinite(y).all() and all(torch.isfinite(d).all() for d in grads)
    f64 = [x.double() for x in (u, delta, A, B, C)]
    with torch.no_grad(), backend("reference"):
        y64, last64 = selective_scan(*f64, delta_softplus=False, routes="reverse", return_last_state=True)
    assert rel_err(y, y64) <= 1e-5 and rel_err(last, last64) <= 1e-5


@pytest.mark.parametrize("step_elements, block_elements", [(1, 1), (1, 200), (1 << 30, 1), (1 << 30, 500)])
@pytest.mark.parametrize("slice_elements", [1 << 30, 1])
def test_every_plan_matches_reference(monkeypatch, step_elements, block_elements, slice_elements):
    """One chunk or sqrt(L) chunks, blocks of one step or several, the batch whole or in slices of one sample
    (per-sample routes and initial states cut with it): the same result to fp64 rounding."""
    monkeypatch.setattr(chunked, "STEP_ELEMENTS", step_elements)
    monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(chunked, "SLICE_ELEMENTS", slice_elements)
    g = torch.Generator().manual_seed(6)
    b, K, Dm, L, N, G = 2, 2, 4, 23, 3, 2
    f64 = dict(dtype=torch.float64)
    routes = directions.concat(directions.reverse(L), directions.permutation(
        torch.stack([torch.randperm(L, generator=g) for _ in range(b)])))
    tensors = dict(u=torch.randn(b, Dm, L, generator=g, **f64), delta=torch.randn(b, K, Dm, L, generator=g, **f64),
                   A=-torch.rand(K, Dm, N, generator=g, **f64), B=torch.randn(b, K, G, N, L, generator=g, **f64),
                   C=torch.randn(b, G, N, L, generator=g, **f64), D=torch.randn(Dm, generator=g, **f64),
                   z=torch.randn(b, Dm, L, generator=g, **f64), delta_bias=torch.randn(K, Dm, generator=g, **f64),
                   initial_state=torch.randn(b, K, Dm, N, generator=g, **f64))
    case = Case(tensors, routes, "mean", (L,), {"u": 1, "delta": 2, "B": 3, "C": 2, "z": 1})
    plan = chunked.plan(L, b * K * Dm * N)
    assert (plan[1] == 1) == (step_elements == 1) and (plan[2] == 1) == (block_elements == 1)
    _compare(run(case, "chunked"), run(case, "reference"), 1e-10, f"plan {plan}")


def test_plan_covers_the_sequence():
    for L in (1, 2, 3, 7, 63, 197, 3136, 4096):
        for elements in (1, 768, 24576, 1 << 20):
            T, nc, Tb = chunked.plan(L, elements)
            assert T * nc >= L > T * (nc - 1) and 1 <= Tb <= T and nc * nc <= max(L, 1)

"""The compiled CPU forward (numba) against the reference: outputs and last states over random shapes, layouts,
groups, routes, shared / per-route inputs, skip, gate, bias, initial states and merges; gradients through the op
(the chunked backward after this forward); bf16 inputs; extreme decays; and the calls it hands to chunked."""
import pytest
import torch
from hypothesis import given, settings
from scan_cases import backend, cases, rel_err, run
from test_selective_scan_chunked import _compare

from ssmzoo.ops import selective_scan
from ssmzoo.ops.selective_scan import backend_name, chunked, cpu_kernel


@pytest.fixture
def no_chunked_forward(monkeypatch):
    """Fail if the forward falls back to the chunked path (so the kernel is what the comparison measures)."""
    def refuse(*args, **kwargs):
        raise AssertionError("cpu_kernel fell back to chunked.selective_scan")
    monkeypatch.setattr(chunked, "selective_scan", refuse)


def test_cpu_tensors_default_to_the_kernel(monkeypatch):
    monkeypatch.delenv("SSMZOO_BACKEND", raising=False)
    assert backend_name(torch.device("cpu")) == "cpu_kernel"


@settings(max_examples=25, deadline=None)
@given(case=cases(dtype=torch.float32, lengths=(1, 7, 63, 197)))
def test_kernel_matches_reference_fp32(case):
    """fp32 against the float64 reference (the truth): outputs and last states to 1e-5 (DESIGN's fp32 1e-4 with
    margin), gradients (chunked's backward) to DESIGN's 2e-4: a short sequence's dD (a sum of dy * u over a few
    steps) can cancel to well below its terms, and hypothesis found one at 5.8e-5; both layouts."""
    truth = run(case.to(torch.float64), "reference", states=False)
    for layout in ("channels_first", "channels_last"):
        _compare(run(case, "cpu_kernel", layout=layout, states=False), truth, 1e-5, f"cpu_kernel fp32 {layout}",
                 same_dtype=False, grad_tol=2e-4)


@settings(max_examples=6, deadline=None)
@given(case=cases(dtype=torch.float32, lengths=(7, 63)))
def test_kernel_runs_without_falling_back(case):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunked, "selective_scan", lambda *a, **k: pytest.fail("fell back to chunked"))
        (out, last, _), _ = run(case, "cpu_kernel", grads=False, states=False)
    truth = run(case.to(torch.float64), "reference", grads=False, states=False)[0]
    assert rel_err(out, truth[0]) <= 1e-5 and rel_err(last, truth[1]) <= 1e-5


@settings(max_examples=6, deadline=None)
@given(case=cases(dtype=torch.float32, lengths=(7, 63, 197)))
def test_bf16_inputs_computed_in_fp32(case):
    for name in case.n_feat:
        case.tensors[name] = case.tensors[name].bfloat16().float()
    truth = run(case.to(torch.float64), "reference", states=False)
    got = run(case, "cpu_kernel", dtype=torch.bfloat16, states=False)
    assert got[0][0].dtype == torch.float32 and got[1]["u"].dtype == torch.bfloat16
    _compare(got, truth, 1e-5, "cpu_kernel bf16", same_dtype=False)
    out_bf16 = run(case, "cpu_kernel", dtype=torch.bfloat16, out_dtype=torch.bfloat16, grads=False,
                   states=False)[0][0]
    assert out_bf16.dtype == torch.bfloat16 and rel_err(out_bf16, truth[0][0]) <= 1e-2


@pytest.mark.parametrize("softplus", [True, False])
def test_extreme_decays_and_softplus_range(no_chunked_forward, softplus):
    """L = 2048 reversed, |A| up to 16 and dt up to 30 (decays far below float32's range: the kernel's exp clamps
    to 2^-125) or tiny; delta over [-40, 40] through softplus (identity above 20, ~e^x far below 0): finite and
    within 1e-5 of the float64 reference, odd channel count over two groups."""
    g = torch.Generator().manual_seed(11)
    b, Dm, L, N, G = 2, 70, 2048, 16, 2
    u = torch.randn(b, Dm, L, generator=g)
    delta = (torch.rand(b, Dm, L, generator=g) * 80 - 40) if softplus else torch.rand(b, Dm, L, generator=g) * 30
    A = -torch.linspace(1e-4, 16, N).expand(Dm, N).contiguous()
    B, C = torch.randn(b, G, N, L, generator=g), torch.randn(b, G, N, L, generator=g)
    with torch.no_grad(), backend("cpu_kernel"):
        y, last = selective_scan(u, delta, A, B, C, delta_softplus=softplus, routes="reverse",
                                 return_last_state=True)
    with torch.no_grad(), backend("reference"):
        y64, last64 = selective_scan(*(x.double() for x in (u, delta, A, B, C)), delta_softplus=softplus,
                                     routes="reverse", return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert rel_err(y, y64) <= 1e-5 and rel_err(last, last64) <= 1e-5


def test_calls_outside_the_kernel_run_chunked(monkeypatch):
    """float64 and return_states go to the chunked path (and give its results)."""
    calls = []
    real = chunked.selective_scan
    monkeypatch.setattr(chunked, "selective_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(12)
    u, delta = torch.randn(1, 4, 9, generator=g), torch.randn(1, 4, 9, generator=g)
    A, B = -torch.rand(4, 3, generator=g), torch.randn(1, 1, 3, 9, generator=g)
    with torch.no_grad(), backend("cpu_kernel"):
        selective_scan(u, delta, A, B, B)
        assert calls == []
        selective_scan(u.double(), delta.double(), A.double(), B.double(), B.double())
        assert calls == [1]
        selective_scan(u, delta, A, B, B, return_states=True)
        assert calls == [1, 1]
    assert not cpu_kernel.handles(u, delta, A, B, B, None, None, None, None, return_states=True)


def _plus_one(x):
    return x + 1


def test_kernel_compiles_where_numba_cannot_cache(monkeypatch):
    """A read-only install and home leave numba no cache directory; it then refuses cache=True when decorating,
    and the kernel must still compile (uncached), not break every CPU scan at import."""
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    compiled = cpu_kernel._compiled(_plus_one)
    assert compiled(1) == 2 and type(compiled._cache).__name__ == "NullCache"

"""The public selective_scan: argument errors, dispatch, SSMZOO_CHECK_FINITE, torch.export / torch.compile (one
op), ONNX export (dynamo exporter) against onnxruntime."""
import importlib
import re
import types
import warnings

import numpy as np
import pytest
import torch
from scan_cases import rel_err

from ssmzoo.ops import directions, selective_scan
from ssmzoo.ops.selective_scan import backend_name


def _vmamba_args(b=2, d=4, H=3, W=5, n=2, K=4):
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(b, d, H, W, generator=g), delta=torch.randn(b, K, d, H, W, generator=g),
                A=-torch.rand(K, d, n, generator=g), B=torch.randn(b, K, 1, n, H, W, generator=g),
                C=torch.randn(b, K, 1, n, H, W, generator=g), D=torch.randn(K, d, generator=g),
                delta_bias=torch.randn(K, d, generator=g), routes=directions.cross2d(H, W))


@pytest.mark.parametrize("change, message", [
    (dict(delta=torch.randn(2, 4, 4, 3, 6)), r"`delta` must have shape .*\(2, 4, 3, 5\) or \(2, 4, 4, 3, 5\).* got "
                                             r"\(2, 4, 4, 3, 6\)"),
    (dict(B=torch.randn(2, 4, 1, 3, 3, 5)), r"`B` must have shape .*\(2, 4, 1, 2, 3, 5\).* got \(2, 4, 1, 3, 3, 5\)"),
    (dict(C=torch.randn(2, 4, 3, 2, 3, 5)), r"`C` has G=3 groups, which must divide D=4"),
    (dict(A=-torch.rand(3, 4, 2)), r"`A` \(3, 4, 2\) has 3 routes, routes have K=4"),
    (dict(A=torch.rand(4, 4, 2)), r"`A` \(4, 4, 2\) has positive entries"),
    (dict(A=-torch.rand(4, 4, 2).half()), r"`A` must be one of .*float32.* got torch.float16"),
    (dict(u=torch.randn(2, 4, 3, 5).int()), r"`u` must be one of .* got torch.int32"),
    (dict(D=torch.randn(3, 4)), r"`D` must have shape \(4,\) or \(4, 4\), got \(3, 4\)"),
    (dict(z=torch.randn(2, 4, 5, 3)), r"`z` must have shape .*\(2, 4, 3, 5\).* got \(2, 4, 5, 3\)"),
    (dict(initial_state=torch.randn(2, 4, 4, 3)), r"`initial_state` must have shape \(2, 4, 4, 2\), got"),
    (dict(routes=directions.cross2d(5, 3)), r"routes Routes\(row, col, row_rev, col_rev; grid=\(5, 3\)\) do not fit "
                                            r"`u` \(2, 4, 3, 5\).*must be \(5, 3\) or a flat L=15"),
    (dict(routes=directions.bidi(15)), r"routes Routes\(forward, reverse; L=15\) do not fit `u` \(2, 4, 3, 5\)"),
    (dict(routes="diagonal"), r"routes must be a directions.Routes or one of"),
    (dict(layout="nchw"), r"layout must be one of"),
    (dict(merge="max"), r"merge must be one of"),
])
def test_bad_input_names_argument_and_shapes(change, message):
    kw = _vmamba_args()
    kw.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**kw)


def test_routes_not_fitting_flat_length():
    kw = _vmamba_args()
    kw.update(u=kw["u"].flatten(2), delta=kw["delta"].flatten(3), B=kw["B"].flatten(4), C=kw["C"].flatten(4),
              routes=directions.forward(14))
    with pytest.raises(ValueError, match=re.escape("routes Routes(forward; L=14) do not fit `u` (2, 4, 15)")):
        selective_scan(**kw)
    kw["routes"] = directions.permutation(torch.stack([torch.randperm(15)] * 3))
    with pytest.raises(ValueError, match="per-sample routes have batch 3, `u` has 2"):
        selective_scan(**kw)


def test_check_finite(monkeypatch):
    kw = _vmamba_args()
    kw["delta"] = kw["delta"].clone()
    kw["delta"][0, 1, 2, 0, 0] = float("nan")
    selective_scan(**kw)  # unchecked by default (a host sync per call)
    monkeypatch.setenv("SSMZOO_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match=r"`delta` \(2, 4, 4, 3, 5\) contains NaN"):
        selective_scan(**kw)


def test_flat_and_grid_tensors_agree_and_named_routes():
    kw = _vmamba_args()
    y_grid = selective_scan(**kw)
    flat = dict(kw, u=kw["u"].flatten(2), delta=kw["delta"].flatten(3), B=kw["B"].flatten(4), C=kw["C"].flatten(4))
    assert y_grid.shape == kw["u"].shape
    assert torch.equal(selective_scan(**flat).view_as(y_grid), y_grid)
    assert torch.equal(selective_scan(**dict(kw, routes="cross2d")), y_grid)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_outputs_are_contiguous_in_their_layout(layout):
    """The op's outputs have the strides its fake implementation promises (torch.compile relies on them)."""
    kw = _vmamba_args()
    if layout == "channels_last":
        kw.update(u=kw["u"].permute(0, 2, 3, 1), delta=kw["delta"].permute(0, 3, 4, 1, 2),
                  B=kw["B"].permute(0, 4, 5, 1, 2, 3), C=kw["C"].permute(0, 4, 5, 1, 2, 3))
    for merge in ("sum", None):
        out, last, states = selective_scan(**kw, merge=merge, layout=layout, return_last_state=True,
                                           return_states=True)
        assert out.is_contiguous() and last.is_contiguous() and states.is_contiguous()
        assert last.shape == (2, 4, 4, 2) and states.shape == (2, 4, 4, 15, 2)


def test_graph_only_when_a_gradient_can_flow():
    """Calls that need no gradient (no_grad, or no input requiring one) record no graph and skip the autograd
    wrapper; the outputs are the same, and a call that needs one still differentiates every input."""
    kw = _vmamba_args()
    plain = selective_scan(**kw)
    leaves = {k: v.clone().requires_grad_() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        quiet = selective_scan(**{**kw, **leaves})
    graph = selective_scan(**{**kw, **leaves})
    assert plain.grad_fn is None and quiet.grad_fn is None and graph.grad_fn is not None
    assert torch.equal(plain, quiet) and torch.equal(plain, graph.detach())
    grads = torch.autograd.grad(graph.sum(), list(leaves.values()))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_triton_that_cannot_compile_falls_back_to_chunked_with_one_warning(monkeypatch):
    """A Triton backend whose kernels fail in the toolchain (ptxas, resources) hands the call, forward and backward,
    to chunked with one warning, and later calls go straight to chunked."""
    pytest.importorskip("triton")
    from triton.runtime.errors import PTXASError

    scan_module = importlib.import_module("ssmzoo.ops.selective_scan")  # the package, not the function
    failing = types.SimpleNamespace(calls=0)

    def broken(*args, **kwargs):
        failing.calls += 1
        raise PTXASError("ptxas fatal: Value 'sm_61' is not defined for option 'gpu-name'")

    triton_backend = types.SimpleNamespace(selective_scan=broken, selective_scan_backward=broken)
    real_load = scan_module._load
    monkeypatch.setattr(scan_module, "_load", lambda name: triton_backend if name == "triton" else real_load(name))
    monkeypatch.setattr(scan_module, "backend_name", lambda device: "triton")
    monkeypatch.setattr(scan_module, "_triton_unusable", set())
    monkeypatch.setattr(scan_module, "_warned", set())
    kw = _vmamba_args()
    leaves = [kw[name].requires_grad_() for name in ("u", "delta")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = selective_scan(**kw)
        torch.autograd.grad(y.sum(), leaves)
        selective_scan(**kw)
    messages = [str(w.message) for w in caught if "cannot be compiled" in str(w.message)]
    assert len(messages) == 1 and "PTXASError" in messages[0] and "sm_61" in messages[0]
    assert failing.calls == 1  # the first forward only: the backward and the next call went to chunked
    monkeypatch.setenv("SSMZOO_BACKEND", "chunked")
    torch.testing.assert_close(y, selective_scan(**kw))


def test_dispatch(monkeypatch):
    monkeypatch.delenv("SSMZOO_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend_name(torch.device("cpu")) == "cpu_kernel"  # numba is a dependency
    monkeypatch.setenv("SSMZOO_BACKEND", "chunked")
    assert backend_name(torch.device("cpu")) == "chunked"
    monkeypatch.setenv("SSMZOO_BACKEND", "reference")
    assert backend_name(torch.device("cpu")) == "reference"
    monkeypatch.setenv("SSMZOO_BACKEND", "triton")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert backend_name(torch.device("cpu")) == "chunked"  # no interpreter: a slower path, never an error
    monkeypatch.setenv("SSMZOO_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SSMZOO_BACKEND must be one of"):
        backend_name(torch.device("cpu"))


def test_reference_and_chunked_backends_agree_through_public_api(monkeypatch):
    kw = _vmamba_args()
    outs = {}
    for name in ("reference", "chunked"):
        monkeypatch.setenv("SSMZOO_BACKEND", name)
        outs[name] = selective_scan(**kw, return_last_state=True)
    assert rel_err(outs["chunked"][0], outs["reference"][0]) < 1e-5
    assert rel_err(outs["chunked"][1], outs["reference"][1]) < 1e-5


@pytest.mark.parametrize("used", ["out", "last", "states", "last+states"])
def test_gradients_when_only_some_outputs_reach_the_loss(monkeypatch, used):
    """The eager path hands the backward None for an output the loss does not use (no zero-filled gradients):
    gradients must equal those of the reference definition under autograd, whichever outputs are used."""
    leaves = {k: v.double().requires_grad_() for k, v in _vmamba_args().items() if isinstance(v, torch.Tensor)}
    grads = {}
    for name in ("reference", "chunked"):
        monkeypatch.setenv("SSMZOO_BACKEND", name)
        out, last, states = selective_scan(**leaves, routes=directions.cross2d(3, 5), return_last_state=True,
                                           return_states=True)
        parts = {"out": out, "last": last, "states": states}
        loss = sum((parts[p] * torch.linspace(-1, 1, parts[p].numel(), dtype=torch.float64).view_as(parts[p])).sum()
                   for p in used.split("+"))
        got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)  # D: not in last_state
        grads[name] = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves.values(), got, strict=True)]
    for key, got, want in zip(leaves, grads["chunked"], grads["reference"], strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), key


class _SS2DCore(torch.nn.Module):
    """The scan part of a VMamba block in channels-last form: the shape of what models wrap around the op."""

    def __init__(self, d=4, n=2, K=4):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A_log = torch.nn.Parameter(torch.randn(K, d, n, generator=g))
        self.D = torch.nn.Parameter(torch.ones(K, d))
        self.bias = torch.nn.Parameter(torch.randn(K, d, generator=g))

    def forward(self, u, delta, B, C, z):
        H, W = u.shape[1:3]
        return selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, z=z, delta_bias=self.bias,
                              routes=directions.cross2d(H, W), layout="channels_last")


def _core_inputs(b=2, H=3, W=7, d=4, n=2, K=4):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(b, H, W, d, generator=g), torch.randn(b, H, W, K, d, generator=g),
            torch.randn(b, H, W, K, 1, n, generator=g), torch.randn(b, H, W, K, 1, n, generator=g),
            torch.randn(b, H, W, d, generator=g))


def test_torch_export_sees_one_op():
    model, args = _SS2DCore(), _core_inputs()
    ep = torch.export.export(model, args)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("ssmzoo.selective_scan.default") == 1
    assert not any("gather" in t or "cumsum" in t for t in targets)
    assert torch.allclose(ep.module()(*args), model(*args))


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    model, args = _SS2DCore(), _core_inputs()
    expected = model(*args)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), model.A_log)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(*args)
    (grad,) = torch.autograd.grad(out.square().sum(), model.A_log)
    assert rel_err(out, expected) < 1e-5 and rel_err(grad, grad_expected) < 1e-5


def test_onnx_export_matches_onnxruntime(tmp_path):
    """Dynamo exporter; the graph has standard ops only, a dynamic batch and a fixed H x W (the input shapes say
    so). onnxruntime agrees to 1e-5 relative, also at another batch size. L = 21 is not a multiple of the chunk
    length, so the padded-step masking is exported too."""
    ort = pytest.importorskip("onnxruntime")
    model, args = _SS2DCore(), _core_inputs()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=[{0: batch}] * 5, verbose=False)
    program.save(str(tmp_path / "scan.onnx"))
    assert not [n.domain for n in program.model_proto.graph.node if n.domain not in ("", "ai.onnx")]
    session = ort.InferenceSession(str(tmp_path / "scan.onnx"))
    assert [i.shape[:3] for i in session.get_inputs()] == [["batch", 3, 7]] * 5
    for b in (2, 3):
        inputs = _core_inputs(b=b)
        expected = model(*inputs).detach().numpy()
        (got,) = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)})
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()

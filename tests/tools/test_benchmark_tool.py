"""tools/benchmark.py: the mamba_ssm runner's glue (route gathers, merge, gate) against ssmzoo's op, on the CPU.

mamba_ssm's ``selective_scan_cuda`` cannot be built here; a stand-in with its interface (``fwd`` / ``bwd`` of one
forward route, computed by ssmzoo's reference) checks that ``mamba_cuda_scan`` gives the op's outputs and gradients.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ssmzoo.ops import directions, selective_scan
from ssmzoo.ops.selective_scan import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import benchmark  # noqa: E402


def _one_route(u, delta, A, B, C, D, z, delta_bias, softplus):
    """mamba_ssm's semantics for one call: (B, D, L) u, delta; (D, N) A; (B, G, N, L) B, C; z ignored (None)."""
    L = u.shape[-1]
    order = torch.arange(L).view(1, 1, L)
    y, _, _ = reference.selective_scan(u.unsqueeze(1), delta.unsqueeze(1), A.unsqueeze(0), B.unsqueeze(1),
                                       C.unsqueeze(1), D.unsqueeze(0), None, delta_bias.unsqueeze(0), None, order,
                                       order, softplus, "sum", False, False, False, None)
    return y


def _fake_mamba_module():
    def fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        assert z is None and u.stride(-1) == 1 and delta.stride(-1) == 1
        return [_one_route(u, delta, A, B, C, D, z, delta_bias, softplus).to(u.dtype), torch.empty(0)]

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute_out_z):
        with torch.enable_grad():  # called from inside autograd's backward
            leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, delta_bias)]
            y = _one_route(*leaves[:6], None, leaves[6], softplus)
            return list(torch.autograd.grad(y, leaves, dout))

    return SimpleNamespace(fwd=fwd, bwd=bwd)


@pytest.mark.parametrize("name", ["vim-s", "vmamba-t-s1"])
def test_mamba_cuda_runner_matches_the_op(name):
    shape = benchmark.SHAPES[name]
    spatial = (5, 4) if shape.routes == "cross2d" else (9,)
    small = benchmark.ScanShape(name, 2, 3, min(shape.states, 2), spatial, shape.routes, shape.per_route_u,
                                shape.gated, shape.merge)
    kw = benchmark.scan_inputs(small, torch.float64, "channels_first", device="cpu")
    kw["out_dtype"] = torch.float64
    leaves = [x for x in kw.values() if isinstance(x, torch.Tensor)]
    want = selective_scan(**kw)
    got = benchmark.mamba_cuda_scan(_fake_mamba_module(), **kw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    for g_got, g_want in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(want, leaves, grad),
                             strict=True):
        torch.testing.assert_close(g_got, g_want)


def test_mamba_cuda_runner_refuses_what_it_cannot_glue():
    routes = directions.bidi(4)
    u = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="channels-first layout"):
        benchmark.mamba_cuda_scan(SimpleNamespace(), u, u, None, None, None, None, None, None, routes, "sum",
                                  layout="channels_last")


@pytest.mark.slow
def test_kernel_stats_compiles_for_the_h100_without_a_gpu():
    """tools/kernel_stats.py: both sequential kernels compile for sm_90 here and report registers."""
    pytest.importorskip("triton")
    import subprocess

    tool = Path(__file__).resolve().parents[2] / "tools" / "kernel_stats.py"
    done = subprocess.run([sys.executable, str(tool), "--shapes", "dpmamba-m-inter"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["_stage_kernel", "_seq_fwd_kernel", "_seq_bwd_kernel"]  # B, C rows first
    assert all(0 < int(r[3]) <= 255 for r in rows)  # registers per thread
    assert all(0 < int(r[6]) <= 64 and float(r[7]) > 0 for r in rows[1:])  # warps per SM, waves at the real shape


def test_kernel_stats_occupancy_and_waves():
    """Warps an H100 SM holds for a kernel's registers, and the waves of a grid (what decided today's knobs)."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import kernel_stats

    assert kernel_stats.waves(3072, 80, 1, 1024) == (25, "0.93")  # VMamba-T s1 forward, one route per program
    assert kernel_stats.waves(3072, 168, 1, 1024) == (12, "1.94")  # its backward
    assert kernel_stats.waves(2176, 255, 1, 1024) == (8, "2.06")  # DPMamba intra backward: a third, nearly empty wave
    assert kernel_stats.waves(None, 64, 4, 0) == (32, "-")  # tile kernels (grid not known here): 64 registers
    assert kernel_stats.waves(None, 32, 4, 0) == (64, "-")  # at most 64 warps an SM


def test_cold_cache_option_points_triton_at_an_empty_directory(monkeypatch):
    """--cold-cache: the '1st call s' column then measures compiling (Triton's cache is warm after any run)."""
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert benchmark.parse_args(["ops", "--cold-cache"]).cold_cache
    assert not benchmark.parse_args(["ops"]).cold_cache
    first, second = benchmark.use_cold_cache(), benchmark.use_cold_cache()
    assert first != second and os.environ["TRITON_CACHE_DIR"] == second
    assert os.path.isdir(second) and not os.listdir(second)


def test_model_step_pieces_on_the_cpu():
    """`benchmark.py model`'s input and step: the input has the model's pretrained_cfg size (or the one asked for),
    and a step returns a finite gradient for every trainable parameter (its GPU timing itself needs CUDA)."""
    import ssmzoo

    model = ssmzoo.create_model("dpmamba_xs")
    assert benchmark.model_input(model, 3, device="cpu").shape == (3, 32000)
    x = benchmark.model_input(model, 2, (1600,), device="cpu")
    assert x.shape == (2, 1600)
    grads = benchmark.training_step(model, x, None)()
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(grads) == len(params) and all(g.shape == p.shape for g, p in zip(grads, params, strict=True))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    args = benchmark.parse_args(["model", "dpmamba_xs", "vim_tiny", "--batch", "1", "4", "--amp", "none"])
    assert args.models == ["dpmamba_xs", "vim_tiny"] and args.batch == [1, 4] and args.func is benchmark.bench_model

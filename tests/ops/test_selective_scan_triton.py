"""The Triton selective-scan kernels against the reference, forward and every gradient.

- CPU (CI): the kernels run under the Triton interpreter at tiny shapes against the float64 reference, with every
  kernel-written buffer poisoned with NaN (SSMZOO_POISON=1) and tiles short enough that a route crosses several of
  them. TRITON_INTERPRET must be set before Triton is imported, so this file runs itself as a subprocess with it set
  (one process for all cases); the pytest process and the other tests keep compiled Triton.
- GPU (``-m gpu``): the compiled kernels at the reference shapes of issue #4 (smaller batches), fp32 and bf16
  inputs, against the chunked path in float64, at DESIGN's tolerances; every check draws fresh inputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from ssmzoo.ops import directions, selective_scan
from ssmzoo.ops.selective_scan import checks, reference
from ssmzoo.ops.selective_scan.common import BACKWARD_RESIDUALS, FORWARD_RESIDUALS

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}  # forward; gradients get twice as much


def make_case(batch, Dm, N, G, spatial, routes, layout="channels_first", per_route_u=False, per_route_bc=True,
              z=True, D=True, bias=True, init=False, softplus=True, dtype=torch.float32, device="cpu", seed=0):
    """Public-API tensors for one call (fresh random values), in ``layout``."""
    g = torch.Generator().manual_seed(seed)
    K = routes.K
    cl = layout == "channels_last"

    def act(*feat, scale=1.0):
        shape = (batch, *spatial, *feat) if cl else (batch, *feat, *spatial)
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)

    delta = act(K, Dm, scale=0.5)
    return dict(
        u=act(K, Dm) if per_route_u else act(Dm),
        delta=delta if softplus else delta.abs(),
        A=(-torch.rand(K, Dm, N, generator=g) * 2 - 0.05).to(device),
        B=act(K, G, N) if per_route_bc else act(G, N),
        C=act(K, G, N) if per_route_bc else act(G, N),
        D=torch.randn(K, Dm, generator=g).to(device) if D else None,
        z=act(Dm) if z else None,
        delta_bias=(torch.randn(K, Dm, generator=g) * 0.3).to(device) if bias else None,
        initial_state=torch.randn(batch, K, Dm, N, generator=g).to(device) if init else None,
    )


def canonical(tensors, routes, layout):
    return checks.canonicalize(*(tensors[n] for n in NAMES[:8]), routes, layout, tensors["initial_state"])


def rel(a, b) -> float:
    """max|a - b| / max|b| (DESIGN's measure); NaN anywhere fails."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_against(module, ref_fwd, ref_bwd, tensors, routes, layout, merge, softplus=True, ret=True,
                  tol=1e-4):
    """Run ``module`` (forward and backward) and the reference pair on float64 copies; assert both agree."""
    c = canonical(tensors, routes, layout)
    views = [getattr(c, n) for n in NAMES]
    tail = (c.order, c.inverse, softplus, merge, c.channels_last)
    out = module.selective_scan(*views, *tail, ret, ret, None)
    c64 = canonical({n: (t.double() if t is not None else None) for n, t in tensors.items()}, routes, layout)
    views64 = [getattr(c64, n) for n in NAMES]
    ref = ref_fwd(*views64, *tail, ret, ret, None)
    for name, got, want in zip(("out", "last_state", "states"), out, ref, strict=True):
        if want is not None:
            assert torch.isfinite(got).all(), f"{name}: unwritten or non-finite elements"
            assert rel(got, want) < tol, f"{name}: relative error {rel(got, want):.2e}"
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(x.shape, generator=g).to(x.device) if x is not None else None for x in ref]
    dy, dlast, dstates = cot
    grads = module.selective_scan_backward(dy.to(out[0].dtype), dlast, dstates, *views, *tail, None)
    want = ref_bwd(dy.double(), *(x.double() if x is not None else None for x in (dlast, dstates)), *views64,
                   *tail, None)
    for name, got, exp in zip(NAMES, grads, want, strict=True):
        if exp is None:
            assert got is None, name
            continue
        assert torch.isfinite(got).all(), f"d{name}: unwritten or non-finite elements"
        assert rel(got, exp) < 2 * tol, f"d{name}: relative error {rel(got, exp):.2e}"


def reference_backward(dy, dlast, dstates, *args):
    """Gradients of the reference by autograd: the definition, differentiated."""
    views, tail = list(args[:9]), args[9:]
    leaves = [v.detach().requires_grad_() if v is not None else None for v in views]
    out = reference.selective_scan(*leaves, *tail[:5], dlast is not None, dstates is not None, None)
    loss = (out[0] * dy).sum()
    if dlast is not None:
        loss = loss + (out[1] * dlast).sum() + (out[2] * dstates).sum()
    present = [x for x in leaves if x is not None]
    computed = iter(torch.autograd.grad(loss, present))
    return [next(computed) if x is not None else None for x in leaves]


def reference_forward(*args):
    return reference.selective_scan(*args)


# Each case: (id, make_case kwargs, merge). Spatial sizes give routes of 2-3 tiles (MAX_T = 32, see
# run_interpreted_case).
CASES = [
    ("bidi-mean-z-init-states", dict(batch=1, Dm=4, N=3, G=1, spatial=(45,), routes=directions.bidi(45),
                                     per_route_u=True, init=True), "mean"),
    ("cross2d-groups-shared-u", dict(batch=1, Dm=4, N=2, G=2, spatial=(7, 6), routes=directions.cross2d(7, 6),
                                     z=False), "sum"),
    ("cross2d-channels-last-per-route-out", dict(batch=1, Dm=4, N=1, G=1, spatial=(5, 4),
                                                 routes=directions.cross2d(5, 4), layout="channels_last",
                                                 init=True), None),
    ("permutations-per-sample-staged-bc", dict(batch=2, Dm=3, N=4, G=1, spatial=(20,),
                                               routes=directions.concat(
                                                   directions.forward(20),
                                                   directions.permutation(torch.stack([torch.randperm(20),
                                                                                       torch.randperm(20)]))),
                                               layout="channels_last", per_route_u=True, per_route_bc=False),
     "sum"),
    ("no-softplus-odd-channels-shared-bc", dict(batch=1, Dm=5, N=5, G=1, spatial=(40,),
                                                routes=directions.reverse(40), per_route_bc=False, D=False,
                                                bias=False, softplus=False), "sum"),
]


# The bidi cases above run the sequential kernels with channel tiles wider than D (per-channel B/C rows); this one
# fills whole tiles (one B/C row per tile, dB/dC summed over the tile's channels).
CASES.append(("bidi-whole-channel-tiles", dict(batch=2, Dm=32, N=4, G=1, spatial=(19,), routes=directions.bidi(19),
                                               per_route_u=True, init=True), "sum"))
# Two groups of 16 channels: the backward's tiles of 8 (or 16) channels each store their own dB/dC rows, which the
# host sums per group.
CASES.append(("bidi-groups-of-whole-tiles", dict(batch=1, Dm=32, N=4, G=2, spatial=(19,), routes=directions.bidi(19),
                                                 per_route_u=True, per_route_bc=False), "sum"))
# One state over more channels than a forward program's 64 (a partial second tile), channels-last grid routes.
CASES.append(("cross2d-one-state-70-channels", dict(batch=1, Dm=70, N=1, G=1, spatial=(4, 3),
                                                    routes=directions.cross2d(4, 3), layout="channels_last"), "mean"))
# One state over whole tiles of 32 channels (one B/C row a tile): the backward's dB/dC channel sums as one
# reduce-scatter a block (_scatter_add8; `noscatterone:` adds a block's sums with one atomic instead).
CASES.append(("cross2d-one-state-whole-tiles", dict(batch=2, Dm=64, N=1, G=1, spatial=(5, 4),
                                                    routes=directions.cross2d(5, 4), layout="channels_last",
                                                    init=True), "sum"))
# The contract's largest states: 64 (a channel's states over 4 threads in the backward and the tiny call's forward,
# all in one thread with the forward's 32 lanes: `fwd32:`), and a non-power of two above 32 in the tile kernels.
CASES.append(("bidi-64-states", dict(batch=1, Dm=8, N=64, G=1, spatial=(13,), routes=directions.bidi(13),
                                     per_route_u=True, init=True), "mean"))
# 16 states over whole tiles of 8 channels: the backward's dB/dC channel sums as one reduce-scatter a block
# (_scatter_add4; `noscatter:` adds a block's sums with one atomic instead).
CASES.append(("bidi-16-states-whole-tiles", dict(batch=1, Dm=16, N=16, G=1, spatial=(21,),
                                                 routes=directions.bidi(21), per_route_u=True, init=True), "mean"))
CASES.append(("cross2d-33-states", dict(batch=1, Dm=2, N=33, G=1, spatial=(3, 2), routes=directions.cross2d(3, 2),
                                        init=True), "sum"))
# Grid and permutation routes dispatch to the tile kernels; the sequential kernels support them too (checked here
# by calling them directly).
SEQ_GRID_CASE = ("cross2d-groups-shared-u", "permutations-per-sample-staged-bc")

BF16_CASE = dict(batch=1, Dm=4, N=4, G=1, spatial=(36,), routes=directions.bidi(36), per_route_u=True,
                 dtype=torch.bfloat16)
LARGE_CASE = dict(batch=2, Dm=6, N=3, G=3, spatial=(9, 8), routes=directions.cross2d(9, 8), per_route_u=True,
                  init=True)


# Case-id prefixes that change one knob of the kernels' dispatch. Tiny calls get the backward's 8 lanes (4 threads
# per channel), all routes in one program, and atomics for dB/dC when N > 1; these reach the other choices.
KNOB_PREFIXES = {
    "bwd16": ("SEQ_BWD_LANES", 16),  # 16 lanes (2 threads per channel)
    "fwd32": ("SEQ_FWD_LANES", 32),  # forward with N > 1: 32 lanes (a channel's states in one thread)
    "parallel": ("SEQ_PAR_ROUTES_MIN_L", 0),  # one route per program, route planes summed in the kernel's tail (N > 1)
    "kernelmerge": ("TAIL_MERGE_MAX", 0),  # the same, route planes summed by _merge_routes after the kernel
    "tailone": ("SEQ_ONE_STATE_TAIL_MERGE", True),  # one state: route planes summed in the kernel's tail
    "routeslast": ("SEQ_ROUTES_FIRST", False),  # one route per program, N > 1: routes the grid's slowest axis
    "partial": ("SEQ_PARTIAL_BC_MAX_NP", 64),  # dB/dC rows stored per channel tile, summed by the host
    "block8": ("SEQ_BWD_BLOCK", 8),  # backward blocks of 8 steps with N > 1
    "block8one": ("SEQ_ONE_STATE_BWD_BLOCK", 8),  # backward blocks of 8 steps with one state
    "noscatter": ("SEQ_SCATTER_BC", False),  # 16 states: a block's dB/dC channel sums added with one atomic
    "noscatterone": ("SEQ_ONE_STATE_SCATTER_BC", False),  # one state: the same
    "stepbc": ("SEQ_BLOCK_BC", False),  # dB/dC channel sums added a step at a time (not a block's with one atomic)
    "nopipe": ("SEQ_BWD_PIPELINE", False),  # backward second pass: a block's tiles read when used, not one block early
    "nopipe1": ("SEQ_BWD_PIPELINE_PASS1", False),  # backward first pass: the same
    "pipebc": ("SEQ_BWD_PIPELINE_BC", True),  # N > 1: the first pass reads a block's rows of B one block early
    "pipebc2": ("SEQ_BWD_PIPELINE_BC2", 2),  # N > 1: the second pass reads a block's rows of B and C one block early
    "pipeb2": ("SEQ_BWD_PIPELINE_BC2", 1),  # N > 1: the same, rows of B only
    "nopipebcone": ("SEQ_ONE_STATE_BWD_PIPELINE_BC2", 0),  # one state: the second pass reads rows when used
    "nofwdpipe": ("SEQ_FWD_PIPELINE", False),  # forward with N > 1: the same
    "fwdpipe1": ("SEQ_ONE_STATE_FWD_PIPELINE", True),  # forward with one state: tiles one block early
    "fwd32one": ("SEQ_ONE_STATE_FWD_LANES", 32),  # forward with one state: 32 channels a warp (not 64)
    "nockkernel": ("SEQ_ONE_STATE_CK_KERNEL", False),  # one state: the backward's first pass inside its kernel
    "ck64": ("SEQ_ONE_STATE_CK_LANES", None),  # one state: the checkpoint kernel with the forward's 64 lanes
    "cksplit": ("SEQ_CK_KERNEL", True),  # N > 1: the backward's first pass as the checkpoint kernel too
    "tiles": ("SEQ_GRID_VIA_CHANNELS_LAST", False),  # channels-first grid routes on the tile kernels (no copies)
    "cfdirect": ("SEQ_CF_DIRECT_GRADS", True),  # channels-first grid routes: gradients stored in place, not copied
}


def check_relayout(kernels) -> None:
    """The channels-first <-> channels-last copy kernel: odd sizes, several tiles, transposed, sliced and
    broadcast sources, exact."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 70, 67, generator=gen).to(dtype)
        for src in (x, x.transpose(2, 3).contiguous().transpose(2, 3), x[:, 1:, ::2], x[:, :1].expand(2, 3, 70, 67)):
            cl = kernels._channels_last_copy(src)
            assert cl.stride(2) == 1 and torch.equal(cl, src), "channels-last copy"
            back = kernels._relayout(cl, torch.full(src.shape, float("nan"), dtype=dtype))
            assert torch.equal(back, src), "copy back"
        assert torch.equal(kernels._channels_last_copy(x[0]), x[0]), "3-d copy"


def check_merge_routes(kernels) -> None:
    """The kernel that sums one-route-per-program planes: odd sizes over several tiles, both layouts, mean and
    z gate, an output of another dtype; against torch in fp32."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    parts = torch.randn(2, 3, 70, 67, generator=gen)
    z = torch.randn(2, 70, 67, generator=gen)
    for channels_last in (False, True):
        planes = parts.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) if channels_last else parts
        for mean, gate in ((False, None), (True, z)):
            want = parts.sum(1) / (3 if mean else 1)
            want = want * torch.nn.functional.silu(gate) if gate is not None else want
            out = torch.full((2, 70, 67), float("nan"), dtype=torch.bfloat16)
            kernels._merge_routes(planes, out, gate, mean)
            # one bf16 ulp (the interpreter truncates where the GPU rounds to nearest)
            torch.testing.assert_close(out.float(), want, atol=0, rtol=2**-7, msg="merged routes")


@contextlib.contextmanager
def counted_staging(kernels):
    """Record every launch of the B/C staging kernel (their grids, in the yielded list) while the body runs; the
    kernel and SSMZOO_BACKEND are restored afterwards."""
    staged = []
    real = kernels._stage_kernel

    class Counting:  # launch() falls back to kernel[grid] for objects without Triton's caches
        def __getitem__(self, grid):
            staged.append(grid)
            return real[grid]

    kernels._stage_kernel = Counting()
    saved_backend = os.environ.get("SSMZOO_BACKEND")
    try:
        yield staged
    finally:
        kernels._stage_kernel = real
        if saved_backend is None:
            os.environ.pop("SSMZOO_BACKEND", None)
        else:
            os.environ["SSMZOO_BACKEND"] = saved_backend


def check_staged_once(kernels) -> None:
    """Through the public op: a forward stages B and C in one launch and its backward reuses those rows (the
    same B, C objects come back from autograd); the next call stages its own. B shared by the routes and in
    float16, C per route in float32 (B expanded to the routes when staged); gradients against the chunked path in
    float64."""
    routes = directions.bidi(21)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    tensors = make_case(batch=2, Dm=4, N=3, G=1, spatial=(21,), routes=routes, per_route_u=True, seed=seed)
    tensors["B"] = tensors["B"][:, 0].to(torch.float16)  # (batch, G, N, L): shared by both routes; another dtype
    with counted_staging(kernels) as staged:
        results = {}
        for backend, dtype in (("triton", None), ("chunked", torch.float64)):
            os.environ["SSMZOO_BACKEND"] = backend
            for call in range(2):
                leaves = {n: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
                          if t is not None else None for n, t in tensors.items()}
                out = selective_scan(**leaves, routes=routes, merge="sum")
                out.backward(torch.cos(out.detach()))
                if backend == "triton":
                    assert len(staged) == call + 1, f"call {call}: {len(staged)} staging launches in all"
            results[backend] = (out, *(leaves[n].grad for n in ("u", "delta", "B", "C")))
        for name, got, want in zip(("out", "du", "ddelta", "dB", "dC"), results["triton"], results["chunked"],
                                   strict=True):
            tol = 2e-3 if name == "dB" else 2e-4  # dB comes back in B's float16
            assert rel(got, want) < tol, f"{name}: {rel(got, want):.3g}"


def check_staged_in_place(kernels) -> None:
    """Through the public op without autograd: flat per-route B and C reach the kernels as the caller's own
    tensors, so their staged rows are reused by a later call only while B and C are unchanged. Refilled in place
    (a version bump), or inference tensors refilled under torch.inference_mode (no version counter), they are
    staged again: outputs against the chunked path in float64 after every refill."""
    routes = directions.bidi(19)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    tensors = make_case(batch=2, Dm=4, N=3, G=1, spatial=(19,), routes=routes, per_route_u=True, seed=seed)

    def both(args):
        outs = {}
        for backend in ("triton", "chunked"):
            os.environ["SSMZOO_BACKEND"] = backend
            cast = (lambda t: t) if backend == "triton" else (lambda t: t.double() if t is not None else None)
            outs[backend] = selective_scan(**{n: cast(t) for n, t in args.items()}, routes=routes, merge="sum")
        assert rel(outs["triton"], outs["chunked"]) < 2e-4, f"{rel(outs['triton'], outs['chunked']):.3g}"

    with counted_staging(kernels) as staged, torch.no_grad():
        args = {n: t.clone() if t is not None else None for n, t in tensors.items()}
        both(args)
        both(args)
        assert len(staged) == 1, f"unchanged B and C staged {len(staged)} times"
        args["B"].mul_(-0.5)
        args["C"].add_(1.0)
        both(args)
        assert len(staged) == 2, "B and C changed in place but not staged again"
    with counted_staging(kernels), torch.inference_mode():
        args = {n: t.clone() if t is not None else None for n, t in tensors.items()}
        both(args)
        args["B"].copy_(torch.randn_like(args["B"]))
        both(args)


def check_saved_copies(kernels) -> None:
    """Channels-first grid routes through the public op with autograd: the forward's channels-last copies of u and
    delta are what the Function saves, so the backward copies two tensors fewer than when it is handed u and delta
    (``saved_inputs`` off); outputs and gradients against the chunked path in float64, both ways, with route planes
    and without."""
    routes = directions.cross2d(6, 7)
    seed = int(torch.randint(0, 2**31 - 1, ()))
    tensors = make_case(batch=2, Dm=4, N=2, G=1, spatial=(6, 7), routes=routes, seed=seed)
    real, real_saved, real_min_l = kernels._relayout_kernel, kernels.saved_inputs, kernels.SEQ_PAR_ROUTES_MIN_L
    launched = []

    class Counting:  # launch() falls back to kernel[grid] for objects without Triton's caches
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    def run(backend, dtype=None):
        os.environ["SSMZOO_BACKEND"] = backend
        leaves = {n: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
                  if t is not None else None for n, t in tensors.items()}
        out = selective_scan(**leaves, routes=routes, merge="sum")
        before = len(launched)
        out.backward(torch.cos(out.detach()))
        return (out, *(leaves[n].grad for n in ("u", "delta", "z"))), len(launched) - before

    saved_backend = os.environ.get("SSMZOO_BACKEND")
    kernels._relayout_kernel = Counting()
    try:
        for min_l in (10**9, 1):  # one program for all routes; one a route (route planes)
            kernels.SEQ_PAR_ROUTES_MIN_L = min_l
            want, _ = run("chunked", torch.float64)
            kernels.saved_inputs = lambda u, delta: (u, delta)
            plain, plain_copies = run("triton")
            kernels.saved_inputs = real_saved
            got, copies = run("triton")
            assert copies == plain_copies - 2, f"backward relayouts: {copies} with saved copies, {plain_copies} without"
            for name, a, b, w in zip(("out", "du", "ddelta", "dz"), got, plain, want, strict=True):
                assert rel(a, w) < 2e-4 and rel(b, w) < 2e-4, f"{name}: {rel(a, w):.3g} / {rel(b, w):.3g}"
            assert not kernels._saved_copies, "copies left behind after the Function took them"
    finally:
        kernels._relayout_kernel, kernels.saved_inputs = real, real_saved
        kernels.SEQ_PAR_ROUTES_MIN_L = real_min_l
        if saved_backend is None:
            os.environ.pop("SSMZOO_BACKEND", None)
        else:
            os.environ["SSMZOO_BACKEND"] = saved_backend


def check_public_op_checkpoints(kernels) -> None:
    """One state through the public op with autograd (the eager Function): the forward writes the backward's
    checkpoints and the Function saves them, so the backward launches no checkpoint kernel (one with
    SEQ_ONE_STATE_FWD_CK off); outputs and every gradient against the chunked path in float64, both layouts."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    real_ck, real_knob = kernels._seq_checkpoints, kernels.SEQ_ONE_STATE_FWD_CK
    ck_runs = []

    def counted(*args):
        ck_runs.append(1)
        return real_ck(*args)

    def run(backend, layout, dtype=None):
        os.environ["SSMZOO_BACKEND"] = backend
        tensors = make_case(batch=2, Dm=5, N=1, G=1, spatial=(5, 3), routes=directions.cross2d(5, 3), layout=layout,
                            init=True, seed=seed)
        leaves = {n: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
                  if t is not None else None for n, t in tensors.items()}
        out = selective_scan(**leaves, routes=directions.cross2d(5, 3), merge="sum", layout=layout)
        del ck_runs[:]
        out.backward(torch.cos(out.detach()))
        return (out, *(leaves[n].grad for n in NAMES if leaves.get(n) is not None)), len(ck_runs)

    saved_backend = os.environ.get("SSMZOO_BACKEND")
    kernels._seq_checkpoints = counted
    try:
        for layout in ("channels_first", "channels_last"):
            want, _ = run("chunked", layout, torch.float64)
            for on, runs in ((True, 0), (False, 1)):
                kernels.SEQ_ONE_STATE_FWD_CK = on
                got, ck_kernels = run("triton", layout)
                assert ck_kernels == runs, f"{layout}, forward checkpoints {on}: {ck_kernels} checkpoint kernels"
                for i, (a, w) in enumerate(zip(got, want, strict=True)):
                    assert torch.isfinite(a).all() and rel(a, w) < 2e-4, f"{layout} {on} #{i}: {rel(a, w):.3g}"
    finally:
        kernels._seq_checkpoints, kernels.SEQ_ONE_STATE_FWD_CK = real_ck, real_knob
        if saved_backend is None:
            os.environ.pop("SSMZOO_BACKEND", None)
        else:
            os.environ["SSMZOO_BACKEND"] = saved_backend


def run_interpreted_case(case_id: str) -> None:
    """Check one case with the kernels of this process (interpreted when TRITON_INTERPRET=1); raise on mismatch."""
    from ssmzoo.ops.selective_scan import triton as kernels

    prefix, _, rest = case_id.partition(":")
    if prefix in KNOB_PREFIXES:  # the same case with one dispatch knob changed
        knob, value = KNOB_PREFIXES[prefix]
        saved = getattr(kernels, knob)
        setattr(kernels, knob, value)
        try:
            return run_interpreted_case(rest)
        finally:
            setattr(kernels, knob, saved)
    # several tiles at tiny L; backward with lanes along channels up to L = 30, along time beyond
    kernels.MAX_T, kernels.CL_STEPS, kernels.SHORT_L = 32, 8, 30
    if case_id == "relayout":
        check_relayout(kernels)
        return
    if case_id == "merge-routes":
        check_merge_routes(kernels)
        return
    if case_id == "staged-once":
        check_staged_once(kernels)
        return
    if case_id == "staged-in-place":
        check_staged_in_place(kernels)
        return
    if case_id == "saved-copies":
        check_saved_copies(kernels)
        return
    if case_id == "public-op-checkpoints":
        check_public_op_checkpoints(kernels)
        return
    if case_id == "bf16":  # bf16 inputs, fp32 state, vs the float64 reference of the same rounded inputs
        check_against(kernels, reference_forward, reference_backward, make_case(**BF16_CASE),
                      BF16_CASE["routes"], "channels_first", "sum", ret=False, tol=1e-2)
        return
    if case_id == "large":
        check_against(kernels, reference_forward, reference_backward, make_case(**LARGE_CASE),
                      LARGE_CASE["routes"], "channels_first", "mean")
        return
    forward_checkpoints = case_id.startswith("fwdck:")
    if forward_checkpoints:
        case_id = case_id.split(":", 1)[1]
    module = kernels
    if case_id.startswith("sequential:"):  # the sequential kernels called directly, whatever the routes
        case_id = case_id.split(":", 1)[1]
        module = _SequentialKernels(kernels)
    if forward_checkpoints:
        module = _ForwardCheckpoints(kernels, module)
    case, merge = next((dict(c[1]), c[2]) for c in CASES if c[0] == case_id)
    softplus = case.pop("softplus", True)
    check_against(module, reference_forward, reference_backward, make_case(**case, softplus=softplus),
                  case["routes"], case.get("layout", "channels_first"), merge or "none", softplus=softplus)


class _SequentialKernels:
    """The module interface of the kernels with dispatch bypassed: always the sequential kernels."""

    def __init__(self, kernels):
        self.k = kernels

    def selective_scan(self, u, delta, A, B, C, D, z, delta_bias, initial_state, order, inverse, *rest):
        return self.k._seq_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, order, *rest)

    def selective_scan_backward(self, dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                                inverse, delta_softplus, merge, channels_last, out_dtype):
        return self.k._seq_backward(dy, dlast, dstates, u, delta, A, B, C, D, z, delta_bias, initial_state, order,
                                    delta_softplus, merge, channels_last)


class _ForwardCheckpoints:
    """The kernels as the eager autograd Function calls them with one state: the forward writes the backward's
    checkpoints and hands them over (FORWARD_RESIDUALS), the backward takes them (BACKWARD_RESIDUALS) and must not
    compute them again (``_seq_checkpoints`` fails here)."""

    def __init__(self, kernels, inner):
        self.k, self.inner, self.residuals = kernels, inner, []

    def selective_scan(self, *args):
        token = FORWARD_RESIDUALS.set(self.residuals)
        try:
            return self.inner.selective_scan(*args)
        finally:
            FORWARD_RESIDUALS.reset(token)

    def selective_scan_backward(self, *args):
        assert len(self.residuals) == 1, f"the forward handed over {len(self.residuals)} tensors, not its checkpoints"

        def recomputed(*_):
            raise AssertionError("the backward recomputed the checkpoints the forward wrote")

        token, real = BACKWARD_RESIDUALS.set(tuple(self.residuals)), self.k._seq_checkpoints
        self.k._seq_checkpoints = recomputed
        try:
            return self.inner.selective_scan_backward(*args)
        finally:
            BACKWARD_RESIDUALS.reset(token)
            self.k._seq_checkpoints = real


def interpret(case_ids: list[str]) -> dict[str, str]:
    """Run cases in a subprocess under TRITON_INTERPRET=1 (NaN poisoning on): {case id: "" or the failure}."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
    env = dict(os.environ, TRITON_INTERPRET="1", SSMZOO_POISON="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, __file__, *case_ids], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


INTERPRETED = ([c[0] for c in CASES] + ["bf16", "relayout", "merge-routes", "staged-once", "staged-in-place",
                                         "saved-copies", "public-op-checkpoints"]
               + [f"sequential:{c}" for c in SEQ_GRID_CASE]
               + ["bwd16:bidi-whole-channel-tiles", "bwd16:bidi-mean-z-init-states", "bwd16:bidi-groups-of-whole-tiles",
                  "parallel:bidi-mean-z-init-states", "routeslast:parallel:bidi-mean-z-init-states",
                  "parallel:sequential:cross2d-groups-shared-u",
                  "parallel:cross2d-channels-last-per-route-out",
                  "partial:bidi-groups-of-whole-tiles", "partial:bwd16:bidi-groups-of-whole-tiles",
                  "block8:bidi-mean-z-init-states", "block8:parallel:sequential:cross2d-groups-shared-u",
                  "block8:bwd16:bidi-whole-channel-tiles", "block8one:cross2d-channels-last-per-route-out",
                  "block8one:partial:cross2d-channels-last-per-route-out",
                  "fwd32:bidi-mean-z-init-states", "fwd32:bidi-whole-channel-tiles", "fwd32:bidi-64-states",
                  "block8:bidi-64-states", "noscatter:bidi-16-states-whole-tiles",
                  "noscatterone:cross2d-one-state-whole-tiles",
                  "stepbc:bidi-whole-channel-tiles", "stepbc:bidi-groups-of-whole-tiles", "stepbc:bidi-64-states",
                  "tiles:cross2d-groups-shared-u", "tiles:cross2d-33-states",
                  "nopipe:bidi-mean-z-init-states", "nopipe1:block8:bidi-64-states", "nofwdpipe:bidi-64-states",
                  "pipebc:bidi-mean-z-init-states", "pipebc2:bidi-16-states-whole-tiles",
                  "pipeb2:pipebc:parallel:bidi-mean-z-init-states", "nopipebcone:cross2d-one-state-whole-tiles",
                  "fwdpipe1:cross2d-one-state-70-channels", "fwd32one:cross2d-one-state-70-channels",
                  "nockkernel:cross2d-one-state-70-channels", "ck64:cross2d-one-state-70-channels",
                  "nockkernel:parallel:cross2d-channels-last-per-route-out",
                  "parallel:cross2d-groups-shared-u", "parallel:large", "cfdirect:cross2d-groups-shared-u",
                  "cfdirect:parallel:large", "kernelmerge:parallel:bidi-mean-z-init-states",
                  "kernelmerge:parallel:large", "tailone:parallel:cross2d-one-state-70-channels",
                  "fwdck:cross2d-one-state-70-channels", "fwdck:cross2d-one-state-whole-tiles",
                  "fwdck:cross2d-channels-last-per-route-out", "parallel:fwdck:cross2d-one-state-70-channels"])


@pytest.fixture(scope="module")
def interpreted_results():
    return interpret(INTERPRETED)


@pytest.mark.parametrize("case_id", INTERPRETED)
def test_interpreted_matches_reference(interpreted_results, case_id):
    assert interpreted_results[case_id] == ""


@pytest.mark.slow
def test_interpreted_large_grid_every_option():
    assert interpret(["large", "tiles:large"]) == {"large": "", "tiles:large": ""}


def test_route_kinds_are_index_arithmetic():
    from ssmzoo.ops.selective_scan import triton as kernels  # compiled module: only host code runs here

    def kinds(routes):
        return kernels.route_kinds(routes.index("cpu")[0])

    assert kinds(directions.cross2d(6, 5)) == ((0, 1, 0, 1), (False, False, True, True), 6, 5)
    assert kinds(directions.bidi(9)) == ((0, 0), (False, True), 1, 9)
    assert kinds(directions.permutation(torch.tensor([2, 0, 1])))[0] == (2,)
    per_sample = directions.permutation(torch.stack([torch.arange(4), torch.arange(4).flip(0)]))
    assert kinds(per_sample)[0] == (2,)


def test_column_routes_longer_than_the_float_floor_read_the_table(monkeypatch):
    """Column-major positions divide by H in fp32 (exact up to COL_MAX_L steps); longer grids take TABLE routes."""
    from ssmzoo.ops.selective_scan import triton as kernels

    monkeypatch.setattr(kernels, "COL_MAX_L", 29)
    assert kernels._classify(directions.cross2d(6, 5).index("cpu")[0])[0] == (0, 2, 0, 2)
    monkeypatch.setattr(kernels, "COL_MAX_L", 30)
    assert kernels._classify(directions.cross2d(6, 5).index("cpu")[0])[0] == (0, 1, 0, 1)


def test_kernel_family_and_lanes_choice():
    """Which kernels and how many channels per warp a call gets (the choices measured in tools/benchmark.py)."""
    from ssmzoo.ops.selective_scan import triton as kernels

    grid = kernels.route_kinds(directions.cross2d(6, 5).index("cpu")[0])[0]
    line = kernels.route_kinds(directions.bidi(9).index("cpu")[0])[0]
    assert kernels.sequential(line) and kernels.sequential(line, channels_last=True)
    assert kernels.sequential(grid, channels_last=True) and not kernels.sequential(grid)
    lanes = kernels._seq_lanes

    assert lanes(1, "bwd", 128, 192) == 32  # one state: one thread a channel in the backward
    assert lanes(1, "fwd", 2, 192) == 64  # two a thread in the forward (whole 128-byte rows of bf16)
    # N > 1 forward: a channel's states over 4 threads, whatever the call's size (Vim-S, DPMamba inter and intra)
    assert lanes(16, "fwd", 128, 768) == lanes(16, "fwd", 250, 512) == lanes(16, "fwd", 34, 512) == 8
    assert lanes(16, "bwd", 128, 768) == lanes(64, "bwd", 1, 64) == 8  # a channel's states over 4 threads
    assert lanes(2, "bwd", 128, 768) == lanes(2, "fwd", 1, 64) == 16  # at least one state a thread
    assert lanes(3, "bwd", 1, 64) == 8
    # one route per program for long routes: VMamba-T stage 1, Vim-S, DPMamba intra; not DPMamba inter (host-bound)
    assert kernels.parallel_routes(4, 3136) and kernels.parallel_routes(2, 197) and kernels.parallel_routes(2, 250)
    assert not kernels.parallel_routes(2, 34)
    assert not kernels.parallel_routes(1, 4096)  # one route


def test_routes_first_used_under_inference_mode_then_with_autograd():
    """Routes put on a device inside torch.inference_mode hold inference tensors: the kernels' route cache and
    a later autograd call must both work (the op uses plain copies of them)."""
    from ssmzoo.ops.selective_scan import triton as kernels

    routes = directions.bidi(6)
    tensors = make_case(batch=1, Dm=2, N=2, G=1, spatial=(6,), routes=routes, per_route_u=True)
    with torch.inference_mode():
        order = routes.index("cpu")[0]
        assert kernels.route_kinds(order)[0] == (0, 0)
        selective_scan(**tensors, routes=routes, merge="sum")
    leaf = tensors["u"].clone().requires_grad_()
    out = selective_scan(**{**tensors, "u": leaf}, routes=routes, merge="sum")
    out.sum().backward()
    assert torch.isfinite(leaf.grad).all()


def test_bad_input_errors():
    from ssmzoo.ops.selective_scan import triton as kernels  # compiled: CPU tensors are refused

    tensors = make_case(batch=1, Dm=2, N=1, G=1, spatial=(4,), routes=directions.forward(4))
    c = canonical(tensors, directions.forward(4), "channels_first")
    args = [getattr(c, n) for n in NAMES] + [c.order, c.inverse, True, "sum", False, False, False, None]
    with pytest.raises(ValueError, match="CUDA"):
        kernels.selective_scan(*args)
    args[0] = args[0].to(torch.int32)
    with pytest.raises(ValueError, match="int32"):
        kernels.selective_scan(*args)


# ---------------------------------------------------------------------------------------------------------------
# GPU: compiled kernels at the reference shapes
# ---------------------------------------------------------------------------------------------------------------

GPU_CASES = {
    # VMamba-T stage 1: 4 cross-scan routes, N = 1, shared u, per-route delta/B/C, no z
    "vmamba-t-s1": (dict(batch=2, Dm=192, N=1, G=1, spatial=(56, 56), routes=directions.cross2d(56, 56),
                         z=False), "sum"),
    "vmamba-t-s1-channels-last": (dict(batch=2, Dm=192, N=1, G=1, spatial=(56, 56),
                                       routes=directions.cross2d(56, 56), z=False, layout="channels_last"), "sum"),
    # Vim-S: forward + reverse, per-route u and parameters, z gate, mean merge
    "vim-s": (dict(batch=2, Dm=768, N=16, G=1, spatial=(197,), routes=directions.bidi(197), per_route_u=True),
              "mean"),
    # dual-path Mamba-M layer: intra (L = 250) and inter (L = 34) passes
    "dpmamba-intra": (dict(batch=4, Dm=512, N=16, G=1, spatial=(250,), routes=directions.bidi(250),
                           per_route_u=True), "sum"),
    "dpmamba-inter": (dict(batch=16, Dm=512, N=16, G=1, spatial=(34,), routes=directions.bidi(34),
                           per_route_u=True, init=True), "sum"),
    # the contract's largest states: 64 in the sequential kernels, 33 (padded to 64) in the tile kernels
    "64-states-bidi": (dict(batch=3, Dm=96, N=64, G=2, spatial=(77,), routes=directions.bidi(77), per_route_u=True,
                            init=True), "mean"),
    "33-states-grid": (dict(batch=2, Dm=40, N=33, G=1, spatial=(9, 7), routes=directions.cross2d(9, 7), z=False),
                       "sum"),
}

gpu = pytest.mark.gpu


def _chunked():
    from ssmzoo.ops.selective_scan import chunked
    return chunked


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_matches_chunked_float64(name, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from ssmzoo.ops.selective_scan import triton as kernels

    case, merge = GPU_CASES[name]
    case = dict(case)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    tensors = make_case(**case, dtype=dtype, device="cuda", seed=seed)
    chunked = _chunked()
    check_against(kernels, chunked.selective_scan, chunked.selective_scan_backward, tensors, case["routes"],
                  case.get("layout", "channels_first"), merge, ret=name == "dpmamba-inter", tol=TOL[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["vmamba-t-s1", "vmamba-t-s1-channels-last"])
def test_gpu_forward_checkpoints_match_chunked_float64(name, dtype):
    """One state as the eager autograd Function runs it: the forward kernel writes the backward's checkpoints
    (SEQ_ONE_STATE_FWD_CK), which the backward uses instead of its checkpoint kernel."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from ssmzoo.ops.selective_scan import triton as kernels

    case, merge = GPU_CASES[name]
    tensors = make_case(**dict(case), dtype=dtype, device="cuda", seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    chunked = _chunked()
    check_against(_ForwardCheckpoints(kernels, kernels), chunked.selective_scan, chunked.selective_scan_backward,
                  tensors, case["routes"], case.get("layout", "channels_first"), merge, tol=TOL[dtype])


# The dispatch alternatives the knobs at the top of triton.py select (kept correct for the A/B runs that decide
# them): (knob, value, GPU case).
GPU_KNOB_CASES = {
    "backward-blocks-of-8-steps": ("SEQ_BWD_BLOCK", 8, "vim-s"),
    "backward-16-lanes": ("SEQ_BWD_LANES", 16, "dpmamba-inter"),
    "forward-32-lanes": ("SEQ_FWD_LANES", 32, "vim-s"),
    "dB-dC-one-atomic-a-block": ("SEQ_SCATTER_BC", False, "dpmamba-inter"),
    "one-state-dB-dC-one-atomic-a-block": ("SEQ_ONE_STATE_SCATTER_BC", False, "vmamba-t-s1-channels-last"),
    "dB-dC-per-step-atomics": ("SEQ_BLOCK_BC", False, "64-states-bidi"),
    "all-routes-in-one-program-gated": ("SEQ_PAR_ROUTES_MIN_L", 10**9, "vim-s"),
    "backward-not-pipelined": ("SEQ_BWD_PIPELINE", False, "vim-s"),
    "one-state-forward-32-lanes": ("SEQ_ONE_STATE_FWD_LANES", 32, "vmamba-t-s1-channels-last"),
    "one-state-first-pass-in-backward-kernel": ("SEQ_ONE_STATE_CK_KERNEL", False, "vmamba-t-s1-channels-last"),
    "one-route-per-program-initial-state": ("SEQ_PAR_ROUTES_MIN_L", 0, "dpmamba-inter"),
    "dB-dC-rows-per-tile": ("SEQ_PARTIAL_BC_MAX_NP", 64, "dpmamba-inter"),
    "one-state-dB-dC-rows-per-tile": ("SEQ_PARTIAL_BC_MAX_NP", 1, "vmamba-t-s1-channels-last"),
    "one-state-blocks-of-8": ("SEQ_ONE_STATE_BWD_BLOCK", 8, "vmamba-t-s1-channels-last"),
    "channels-first-grid-tile-kernels": ("SEQ_GRID_VIA_CHANNELS_LAST", False, "vmamba-t-s1"),
    "33-states-grid-tile-kernels": ("SEQ_GRID_VIA_CHANNELS_LAST", False, "33-states-grid"),
    "routes-merged-by-a-kernel": ("TAIL_MERGE_MAX", 0, "vim-s"),
    "one-state-routes-merged-in-the-tail": ("SEQ_ONE_STATE_TAIL_MERGE", True, "vmamba-t-s1"),
    "one-state-routes-merged-in-the-tail-channels-last": ("SEQ_ONE_STATE_TAIL_MERGE", True,
                                                          "vmamba-t-s1-channels-last"),
}


@gpu
@pytest.mark.parametrize("name", list(GPU_KNOB_CASES))
def test_gpu_dispatch_alternatives_match_chunked_float64(name, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from ssmzoo.ops.selective_scan import triton as kernels

    knob, value, case_name = GPU_KNOB_CASES[name]
    monkeypatch.setattr(kernels, knob, value)
    case, merge = GPU_CASES[case_name]
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    tensors = make_case(**case, dtype=torch.bfloat16, device="cuda", seed=seed)
    chunked = _chunked()
    check_against(kernels, chunked.selective_scan, chunked.selective_scan_backward, tensors, case["routes"],
                  case.get("layout", "channels_first"), merge, ret=case_name == "dpmamba-inter",
                  tol=TOL[torch.bfloat16])


@gpu
def test_gpu_b_and_c_of_different_dtypes(monkeypatch):
    """B in float16 shared by the routes, C per route in float32, the rest bf16: staged together by one kernel
    (a dtype per branch), against the chunked path in float64."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    routes = directions.bidi(197)
    kw = make_case(batch=2, Dm=64, N=16, G=1, spatial=(197,), routes=routes, per_route_u=True,
                   dtype=torch.bfloat16, device="cuda", seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    kw["B"] = kw["B"][:, 0].to(torch.float16)
    kw["C"] = kw["C"].float()
    results = {}
    for backend, dtype in (("triton", None), ("chunked", torch.float64)):
        monkeypatch.setenv("SSMZOO_BACKEND", backend)
        leaves = {n: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_() if t is not None
                  else None for n, t in kw.items()}
        out = selective_scan(**leaves, routes=routes, merge="mean")
        out.backward(torch.cos(out.detach().float()).to(out.dtype))
        results[backend] = (out.detach(), leaves["u"].grad, leaves["B"].grad, leaves["C"].grad)
    for name, got, want in zip(("out", "du", "dB", "dC"), results["triton"], results["chunked"], strict=True):
        assert rel(got, want) < 2 * TOL[torch.bfloat16], name


# Calls captured in a CUDA graph (torch.compile's "reduce-overhead", a training step captured whole): the paths
# with host-side state (staged B and C, the channels-first copies saved for the backward, the tail merge's counts).
CAPTURE_CASES = ("vim-s", "dpmamba-intra", "dpmamba-inter", "vmamba-t-s1", "vmamba-t-s1-channels-last")


@gpu
@pytest.mark.parametrize("name", CAPTURE_CASES)
# the leaves' AccumulateGrad nodes date from the warm-up on its side stream; torch says so once (harmless here)
@pytest.mark.filterwarnings("ignore:The AccumulateGrad node's stream does not match")
def test_gpu_cuda_graph_replay_matches_eager_calls(name):
    """A forward and backward captured in a CUDA graph and replayed on new input values give what eager calls give
    on them. One route a program (L >= 128) merges the route planes in the kernels' tail when eager (counts kept
    in a buffer per stream) and with the merge kernel when captured; B and C are staged inside the graph (not
    taken from the staging cache of the warm-up's values); channels-first grid routes copy u and delta inside it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    case, merge = GPU_CASES[name]
    routes, layout = case["routes"], case.get("layout", "channels_first")
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    static = {n: t.requires_grad_() if t is not None else None
              for n, t in make_case(**case, dtype=torch.bfloat16, device="cuda", seed=seed).items()}
    leaves = [t for t in static.values() if t is not None]

    def step():
        out = selective_scan(**static, routes=routes, merge=merge, layout=layout)
        return (out, *torch.autograd.grad(out, leaves, torch.cos(out.detach().float()).to(out.dtype)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles, stages) off the capture, as torch.cuda.graphs asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for n, t in make_case(**case, dtype=torch.bfloat16, device="cuda", seed=seed + 1).items():
            if t is not None:
                static[n].copy_(t)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    # not bitwise: atomics add in any order, and a gradient rounded to bf16 may then differ by an ulp
    for i, (got, want) in enumerate(zip(captured, eager, strict=True)):
        assert rel(got.float(), want.float()) < TOL[torch.bfloat16], f"output {i}: replay differs from eager"


@gpu
def test_gpu_tensors_on_a_device_that_is_not_the_current_one(monkeypatch):
    """Tensors on the second GPU while the first is current: the kernels run where the tensors are (forward and
    gradients against the chunked path in float64 on that device)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    routes = directions.bidi(50)
    kw = make_case(batch=2, Dm=32, N=16, G=1, spatial=(50,), routes=routes, per_route_u=True, device="cuda:1",
                   seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    results = {}
    with torch.cuda.device(0):
        for backend, dtype in (("triton", None), ("chunked", torch.float64)):
            monkeypatch.setenv("SSMZOO_BACKEND", backend)
            leaves = {n: (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_() if t is not None
                      else None for n, t in kw.items()}
            out = selective_scan(**leaves, routes=routes, merge="sum")
            out.backward(torch.cos(out.detach()))
            results[backend] = (out.detach(), leaves["u"].grad, leaves["B"].grad, leaves["A"].grad)
    assert results["triton"][0].device == torch.device("cuda:1")
    for name, got, want in zip(("out", "du", "dB", "dA"), results["triton"], results["chunked"], strict=True):
        assert rel(got, want) < 2e-4, name


@gpu
def test_gpu_public_op_dispatches_to_triton_with_autograd(monkeypatch):
    """selective_scan on CUDA tensors runs the Triton kernels (no fallback warning) and backpropagates."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from ssmzoo.ops.selective_scan import backend_name

    assert backend_name(torch.device("cuda")) == "triton"
    routes = directions.cross2d(14, 14)
    kw = make_case(batch=2, Dm=64, N=4, G=1, spatial=(14, 14), routes=routes, device="cuda",
                   seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    results = {}
    for backend in ("triton", "chunked"):
        monkeypatch.setenv("SSMZOO_BACKEND", backend)
        leaves = {n: t.detach().clone().requires_grad_() if t is not None else None for n, t in kw.items()}
        out = selective_scan(**leaves, routes=routes, merge="sum")
        out.backward(torch.ones_like(out))
        results[backend] = (out.detach(), leaves["u"].grad, leaves["B"].grad)
    for got, want in zip(results["triton"], results["chunked"], strict=True):
        assert rel(got, want) < 2e-4


if __name__ == "__main__":  # the interpreter subprocess of ``interpret``
    results = {}
    for case_id in sys.argv[1:]:
        try:
            run_interpreted_case(case_id)
            results[case_id] = ""
        except AssertionError as err:
            results[case_id] = str(err) or "assertion failed"
    print(json.dumps(results))

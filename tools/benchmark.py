#!/usr/bin/env python
"""Benchmarks, one subcommand each.

    python tools/benchmark.py ops [--dtype bf16 fp32] [--shapes vmamba-t-s1 vim-s ...] [--layout channels_first]
    python tools/benchmark.py model dpmamba_m vim_small ... [--batch 1 4] [--amp bf16] [--input-size 32000]

``ops``: the selective scan with routes (``ssmzoo.ops.selective_scan``) on a CUDA device at the reference shapes
of issue #4. For each shape it prints forward, backward and forward+backward time (``triton.testing.do_bench``
median, L2 flushed between runs), the achieved bandwidth counted on the minimal bytes, the physical floor
(shared/reference/kernels.md section 4: max of memory, FP32 and MUFU time at the H100's measured ceilings) and
the time over that floor, next to the chunked PyTorch path and, when importable, mamba_ssm's CUDA kernel
(``mamba_cuda_scan``: one call per route, as VMamba and Vim glue it), and the memory a forward and backward
allocate beyond their inputs (``f+b MiB``: peak, with the output and the gradients). ``graph f+b µs``: the Triton
path's forward and backward captured in one CUDA graph and replayed, i.e. the GPU's own time with no host work in
between (what a training step captured whole, or torch.compile's "reduce-overhead", gets); where the eager column
is higher, the call is host-bound.
Activations and the output are in the benchmarked dtype (``out_dtype``), as a model would call the op.

``model``: a training step of registered models on a CUDA device (forward under autocast, a mean-square loss on the
output, the parameters' gradients; the input is random, of the model's ``pretrained_cfg['input_size']`` unless
``--input-size`` says otherwise). For each model and batch size it prints the step's time eager (do_bench median,
L2 flushed), the GPU time of its kernels (torch.profiler, the sum over all CUDA kernels of a step), the step
captured in one CUDA graph and replayed (the GPU's own time: an eager step above it is host-bound), and the peak
memory a step allocates beyond the model and its input.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import ssmzoo
from ssmzoo.ops import directions, selective_scan

# Measured ceilings of an H100 80GB HBM3 (shared/reference/kernels.md, section 0).
HBM_BYTES_PER_S = 3.02e12
FP32_INSTR_PER_S = 32.6e12
MUFU_PER_S = 3.74e12
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ScanShape:
    """One reference call: batch, channels, states, spatial size, routes, per-route u, z gate, merge rule."""

    name: str
    batch: int
    channels: int
    states: int
    spatial: tuple[int, ...]
    routes: str
    per_route_u: bool
    gated: bool
    merge: str

    @property
    def L(self) -> int:
        return int(torch.tensor(self.spatial).prod())

    def route_set(self) -> directions.Routes:
        if self.routes == "cross2d":
            return directions.cross2d(*self.spatial)
        return directions.bidi(self.L)

    def floor_us(self, elem_bytes: int) -> tuple[float, float, float, float]:
        """(forward floor, backward floor, minimal forward bytes, minimal backward bytes): kernels.md 4.1's model,
        each input read once and each output written once, routes merged, states recomputed."""
        K, N = self.route_set().K, self.states
        bdl = self.batch * self.channels * self.L
        u = (K if self.per_route_u else 1) * bdl
        delta, bc, z = K * bdl, 2 * K * self.batch * N * self.L, (bdl if self.gated else 0)
        fwd_bytes = elem_bytes * (u + delta + bc + z + bdl)
        bwd_bytes = elem_bytes * ((u + delta + bc + z + bdl) + (u + delta + bc + z))
        states = K * bdl * N  # element-states
        fwd_fp32 = 4 * states + 12 * K * bdl + 4 * z
        fwd_mufu = states + 2 * K * bdl + 2 * z
        bwd_fp32 = 12 * states + 25 * K * bdl + 8 * z
        bwd_mufu = states + 3 * K * bdl + 2 * z

        def floor(nbytes, fp32, mufu):
            return 1e6 * max(nbytes / HBM_BYTES_PER_S, fp32 / FP32_INSTR_PER_S, mufu / MUFU_PER_S)

        return floor(fwd_bytes, fwd_fp32, fwd_mufu), floor(bwd_bytes, bwd_fp32, bwd_mufu), fwd_bytes, bwd_bytes


SHAPES = {
    s.name: s for s in (
        ScanShape("vmamba-t-s1", 128, 192, 1, (56, 56), "cross2d", False, False, "sum"),
        ScanShape("vim-s", 128, 768, 16, (197,), "bidi", True, True, "mean"),
        ScanShape("dpmamba-m-intra", 34, 512, 16, (250,), "bidi", True, True, "sum"),
        ScanShape("dpmamba-m-inter", 250, 512, 16, (34,), "bidi", True, True, "sum"),
    )
}


def scan_inputs(shape: ScanShape, dtype: torch.dtype, layout: str, device="cuda") -> dict:
    """Random public-API arguments of ``shape`` (activations in ``dtype``, parameters fp32), requiring grad."""
    routes = shape.route_set()
    K, Dm, N = routes.K, shape.channels, shape.states
    cl = layout == "channels_last"

    def act(*feat, scale=1.0):
        dims = (shape.batch, *shape.spatial, *feat) if cl else (shape.batch, *feat, *shape.spatial)
        return (torch.randn(dims, device=device) * scale).to(dtype).requires_grad_()

    def param(x):
        return x.to(device).requires_grad_()

    return dict(
        u=act(K, Dm) if shape.per_route_u else act(Dm), delta=act(K, Dm, scale=0.5),
        A=param(-torch.rand(K, Dm, N) - 0.1), B=act(K, 1, N), C=act(K, 1, N), D=param(torch.randn(K, Dm)),
        z=act(Dm) if shape.gated else None, delta_bias=param(torch.randn(K, Dm) * 0.3),
        routes=routes, merge=shape.merge, layout=layout, out_dtype=dtype,
    )


def _fwd_bwd_us(forward, leaves: list[torch.Tensor]) -> dict[str, float]:
    """Median µs of ``forward()``, of the backward of its graph, and of both (do_bench, L2 flushed)."""
    from triton.testing import do_bench

    out = forward()
    grad = torch.randn_like(out)
    with torch.no_grad():
        fwd = do_bench(forward, return_mode="median")
    bwd = do_bench(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True), return_mode="median")
    total = do_bench(lambda: torch.autograd.grad(forward(), leaves, grad), return_mode="median")
    return dict(fwd=1e3 * fwd, bwd=1e3 * bwd, total=1e3 * total)


def graph_ms(step) -> float:
    """Median ms of a replay of ``step()`` captured in one CUDA graph (do_bench, L2 flushed). Raises RuntimeError
    when the step cannot be captured (a host sync, a CPU tensor read)."""
    import warnings

    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # a warm-up off the capture, as torch.cuda.graph asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings():
        # the leaves' autograd nodes date from calls on the default stream; torch notes it once (harmless here)
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
        with torch.cuda.graph(graph):
            step()
    ms = do_bench(graph.replay, return_mode="median")
    del graph  # its memory pool goes back before the next shape
    return ms


def graph_fwd_bwd_us(forward, leaves: list[torch.Tensor]) -> float:
    """Median µs of a replay of ``forward()`` and its backward captured in one CUDA graph."""
    grad = torch.randn_like(forward())
    return 1e3 * graph_ms(lambda: torch.autograd.grad(forward(), leaves, grad))


def step_peak_mib(step) -> float:
    """MiB that ``step()`` allocates at its peak beyond what is allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()  # what it returns is dropped after the peak is recorded
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_mib(forward, leaves: list[torch.Tensor]) -> float:
    """MiB a forward and backward allocate beyond what is allocated before it (its inputs): the peak of the
    activations saved for the backward, the kernels' workspaces and copies, the output and the gradients."""
    grad = torch.randn_like(forward())
    return step_peak_mib(lambda: torch.autograd.grad(forward(), leaves, grad))


def time_backend(backend: str, kw: dict) -> dict[str, float]:
    """Median µs of forward, backward (given the forward's graph) and both, plus the first call (compiles) and the
    peak memory of a forward and backward."""
    os.environ["SSMZOO_BACKEND"] = backend
    leaves = [x for x in kw.values() if isinstance(x, torch.Tensor)]
    start = time.perf_counter()
    out = selective_scan(**kw)
    torch.autograd.grad(out, leaves, torch.randn_like(out))
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    del out

    def forward():
        # B and C as new views each call, as a model's are (slices of its x_proj output): the Triton backend keeps
        # the rows it staged from unchanged B and C objects, which the same tensors every call would reuse
        return selective_scan(**{**kw, "B": kw["B"].view_as(kw["B"]), "C": kw["C"].view_as(kw["C"])})

    graph = graph_fwd_bwd_us(forward, leaves) if backend == "triton" else float("nan")
    return dict(_fwd_bwd_us(forward, leaves), first_s=first, peak_mib=peak_mib(forward, leaves), graph=graph)


class _MambaCudaRoute(torch.autograd.Function):
    """One route through mamba_ssm's CUDA kernel (``selective_scan_cuda.fwd/bwd``), as its own
    ``SelectiveScanFn`` calls it: (B, D, L) u and delta, (D, N) A, (B, G, N, L) B and C, fp32 D and delta_bias."""

    @staticmethod
    def forward(ctx, module, u, delta, A, B, C, D, delta_bias):
        out, x, *_ = module.fwd(u, delta, A, B, C, D, None, delta_bias, True)
        ctx.module = module
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x, out)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, x, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, *_ = ctx.module.bwd(u, delta, A, B, C, D, None, delta_bias,
                                                              dout.contiguous(), x, out, None, True, False)
        return None, du, ddelta, dA, dB, dC, dD, dbias


def mamba_cuda_scan(module, u, delta, A, B, C, D, z, delta_bias, routes, merge, layout="channels_first",
                    out_dtype=None):
    """``selective_scan``'s semantics (channels-first, shared routes) from mamba_ssm's one-route CUDA kernel, the way
    a VMamba- or Vim-style model glues it: each route's inputs gathered into route order (a copy, skipped for the
    storage order), one kernel call per route, the outputs put back in place, merged, then gated by silu(z)."""
    if layout != "channels_first" or routes.per_batch:
        raise ValueError("mamba_cuda_scan: channels-first layout and shared routes only")
    K, L, spatial = routes.K, routes.L, delta.shape[3:]
    order, inverse = (x[0] for x in routes.index(u.device))
    identity = [bool(torch.equal(order[k].cpu(), torch.arange(L))) for k in range(K)]
    per_route_u = u.dim() == delta.dim()
    flat = lambda x, feat: x.reshape(*x.shape[:1 + feat], L)  # noqa: E731  (B, *feat, *spatial) -> (B, *feat, L)
    u, delta, B, C = flat(u, 2 if per_route_u else 1), flat(delta, 2), flat(B, 3), flat(C, 3)
    outs = []
    for k in range(K):
        def route(x, k=k):
            return x.contiguous() if identity[k] else x.index_select(-1, order[k])
        y = _MambaCudaRoute.apply(module, route(u[:, k] if per_route_u else u), route(delta[:, k]), A[k],
                                  route(B[:, k]), route(C[:, k]), D[k], delta_bias[k])
        outs.append(y if identity[k] else y.index_select(-1, inverse[k]))
    y = torch.stack(outs).sum(0) if merge == "sum" else torch.stack(outs).mean(0)
    if z is not None:
        y = y * torch.nn.functional.silu(flat(z, 1))
    return y.reshape(*y.shape[:2], *spatial)


def mamba_cuda_module():
    """mamba_ssm's compiled extension, or None with the reason."""
    try:
        import selective_scan_cuda  # mamba_ssm's compiled extension
    except ImportError as err:
        return None, f"mamba_ssm selective_scan_cuda: not importable here ({err}); not timed"
    return selective_scan_cuda, ("mamba_ssm selective_scan_cuda: timed (one call per route, gathers and merge in "
                                 "PyTorch)")


def time_mamba_cuda(module, kw: dict) -> dict[str, float]:
    """Median µs of ``mamba_cuda_scan`` forward, backward and both (same method as ``time_backend``)."""
    leaves = [x for x in kw.values() if isinstance(x, torch.Tensor)]
    out = mamba_cuda_scan(module, **kw)
    torch.autograd.grad(out, leaves, torch.randn_like(out))  # first call outside the timing
    return _fwd_bwd_us(lambda: mamba_cuda_scan(module, **kw), leaves)


def use_cold_cache() -> str:
    """Point Triton at a new, empty kernel cache (before anything compiles), so that the '1st call s' column is the
    compile time; Triton's own cache is warm after any earlier run. Returns the directory."""
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ssmzoo-triton-cache-")
    return os.environ["TRITON_CACHE_DIR"]


def bench_ops(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("ops: needs a CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    cache = f"cold Triton cache {use_cold_cache()}" if args.cold_cache else "Triton's cache as found"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, layout {args.layout}, "
          f"{time.strftime('%Y-%m-%d')}; 1st call with {cache}")
    mamba, note = mamba_cuda_module()
    if mamba is not None and args.layout != "channels_first":
        mamba, note = None, "mamba_ssm selective_scan_cuda: channels-first only; not timed"
    print(note)
    header = (f"{'shape':18} {'dtype':5} {'fwd µs':>8} {'bwd µs':>8} {'f+b µs':>8} {'GB/s':>6} {'floor µs':>9} "
              f"{'x floor f/b/f+b':>17} {'graph f+b µs':>12} {'x floor':>7} "
              f"{'chunked f+b µs':>15} {'vs chunked':>10} {'1st call s':>10} {'f+b MiB':>8}"
              + (f" {'mamba f/b/f+b µs':>20} {'vs mamba':>8}" if mamba is not None else ""))
    print(header)
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        for name in args.shapes:
            shape = SHAPES[name]
            kw = scan_inputs(shape, dtype, args.layout)
            tri = time_backend("triton", kw)
            chunk = time_backend("chunked", kw) if args.chunked else None
            f_floor, b_floor, f_bytes, b_bytes = shape.floor_us(torch.finfo(dtype).bits // 8)
            gbps = (f_bytes + b_bytes) / (tri["total"] * 1e-6) / 1e9
            ratio = f"{tri['fwd'] / f_floor:4.1f}/{tri['bwd'] / b_floor:4.1f}/{tri['total'] / (f_floor + b_floor):4.1f}"
            chunk_txt = (f"{chunk['total']:15.0f} {chunk['total'] / tri['total']:9.1f}x" if chunk
                         else f"{'-':>15} {'-':>10}")
            peer_txt = ""
            if mamba is not None:
                peer = time_mamba_cuda(mamba, kw)
                peer_txt = (f" {peer['fwd']:6.0f}/{peer['bwd']:6.0f}/{peer['total']:6.0f}"
                            f" {peer['total'] / tri['total']:7.1f}x")
            print(f"{name:18} {dtype_name:5} {tri['fwd']:8.0f} {tri['bwd']:8.0f} {tri['total']:8.0f} {gbps:6.0f} "
                  f"{f_floor + b_floor:9.0f} {ratio:>17} {tri['graph']:12.0f} "
                  f"{tri['graph'] / (f_floor + b_floor):7.1f} "
                  f"{chunk_txt} {tri['first_s']:10.1f} {tri['peak_mib']:8.0f}"
                  f"{peer_txt}")
            del kw
            torch.cuda.empty_cache()
    return 0


def model_input(model: torch.nn.Module, batch: int, input_size: tuple[int, ...] | None = None,
                device="cuda") -> torch.Tensor:
    """A random batch of the model's input size (``pretrained_cfg['input_size']``: (C, H, W) images, (T,) audio)."""
    size = tuple(input_size or model.pretrained_cfg["input_size"])
    return torch.randn(batch, *size, device=device)


def training_step(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None):
    """A function running one forward (autocast to ``amp``, or none) and backward: a mean-square loss on the
    output, returning the parameters' gradients (``autograd.grad``: nothing accumulates between calls)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        loss = out.float().square().mean()
        return torch.autograd.grad(loss, params)

    return step


def kernel_ms(step) -> float:
    """GPU time of one call's CUDA kernels (torch.profiler; mean of 3 calls)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    kernels = [e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(kernels) / 3 / 1e3


def bench_model(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("model: needs a CUDA device", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    torch.manual_seed(args.seed)
    amp = None if args.amp == "none" else DTYPES[args.amp]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"training step, autocast {args.amp}, mean-square loss, gradients of all parameters")
    print(f"{'model':22} {'batch':>5} {'input':>16} {'eager ms':>9} {'kernels ms':>10} {'graph ms':>9} "
          f"{'peak MiB':>9}")
    for name in args.models:
        model = ssmzoo.create_model(name).cuda().train()
        for batch in args.batch:
            x = model_input(model, batch, tuple(args.input_size) if args.input_size else None)
            step = training_step(model, x, amp)
            step()  # compiles the kernels, warms the allocator
            peak = step_peak_mib(step)
            eager = do_bench(step, return_mode="median")
            kernels = kernel_ms(step)
            try:
                graph_txt = f"{graph_ms(step):9.1f}"
            except RuntimeError as err:  # a model with a host sync cannot be captured: say so, time the rest
                graph_txt = f"  not capturable: {str(err).splitlines()[0][:80]}"
            print(f"{name:22} {batch:5d} {'x'.join(map(str, x.shape[1:])):>16} {eager:9.1f} {kernels:10.1f} "
                  f"{graph_txt} {peak:9.0f}", flush=True)
            del x, step
            torch.cuda.empty_cache()
        del model
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="selective scan kernels vs the floor and the chunked path (CUDA)")
    ops.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    ops.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ops.add_argument("--layout", choices=("channels_first", "channels_last"), default="channels_first")
    ops.add_argument("--no-chunked", dest="chunked", action="store_false", help="skip the chunked PyTorch path")
    ops.add_argument("--seed", type=int, default=0)
    ops.add_argument("--cold-cache", action="store_true",
                     help="compile into an empty Triton cache, so that '1st call s' is the compile time")
    ops.set_defaults(func=bench_ops)
    model = sub.add_parser("model", help="a training step of registered models: eager, kernels, CUDA graph (CUDA)")
    model.add_argument("models", nargs="+", help="registered names, e.g. dpmamba_m vmamba_tiny")
    model.add_argument("--batch", nargs="+", type=int, default=[1])
    model.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="autocast dtype")
    model.add_argument("--input-size", nargs="+", type=int,
                       help="per-item input size (default: the model's pretrained_cfg input_size)")
    model.add_argument("--seed", type=int, default=0)
    model.set_defaults(func=bench_model)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

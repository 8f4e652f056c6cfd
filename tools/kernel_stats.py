#!/usr/bin/env python
"""Compile the selective-scan Triton kernels for a GPU architecture on any machine (no GPU needed) and print what
the compiler made of them: registers, spill stack, shared memory, the warps an H100 SM holds and how many waves the
real shape's programs take (sequential kernels), and the SASS instruction mix.

    python tools/kernel_stats.py [--shapes vim-s dpmamba-m-intra ...] [--layout channels_last] [--arch 90]

It runs the kernels' host code on small CPU tensors of each benchmark shape (tools/benchmark.py's SHAPES, batch 2,
at most 64 channels: the compiled code depends on flags and dtypes, not on sizes) with a stand-in driver, so every
launch compiles for ``--arch`` and is not run. Register counts and spills decide occupancy for these latency-bound
kernels (issue #4), so a variant can be judged here before it costs device time; speed still needs the GPU
(``tools/benchmark.py ops``). Needs Triton's bundled cuobjdump (the Linux x86-64 wheel has it).
"""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (the reference shapes and their inputs)


class _CompileOnlyDriver:
    """Just enough of Triton's active driver for JITFunction.run to compile for ``arch``."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


def _cuobjdump() -> str:
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def sass_stats(cubin: bytes) -> dict:
    """Registers, stack (spills), shared memory and instruction counts (static) of one compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ops = collections.Counter()
    for line in sass.splitlines():
        match = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if match:
            ops[match.group(1)] += 1

    def field(name):
        found = re.search(rf"{name}:(\d+)", usage)
        return int(found.group(1)) if found else 0

    return dict(regs=field("REG"), stack=field("STACK"), shared=field("SHARED"), ops=ops)


def compile_kernels(call, arch: int) -> list[dict]:
    """Run ``call()`` with every Triton launch compiled for ``arch`` instead of run; one record per launch."""
    import triton.runtime.jit as jit
    from triton.runtime import driver

    records = []
    run = jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        name = self.fn.__name__ + (":ck" if kwargs.get("CK_ONLY") else "")  # the one-state backward's first pass
        records.append(dict(name=name, num_warps=kernel.metadata.num_warps,
                            **sass_stats(kernel.asm["cubin"])))
        return kernel

    from ssmzoo.ops import launch

    active = driver._active  # None until first used; restored afterwards (reset_active fails with no GPU)
    driver.set_active(_CompileOnlyDriver(arch))
    jit.JITFunction.run = compile_only
    fast, launch.FAST_LAUNCH = launch.FAST_LAUNCH, False  # every launch through JITFunction.run: compiled, not run
    try:
        call()
    finally:
        jit.JITFunction.run = run
        driver._active = active
        launch.FAST_LAUNCH = fast
    return records


def shape_calls(name: str, layout: str, dtype: torch.dtype):
    """A function that runs the forward and backward host code of the Triton backend at ``name`` (small sizes)."""
    from ssmzoo.ops.selective_scan.checks import canonicalize

    kernels = importlib.import_module("ssmzoo.ops.selective_scan.triton")
    kernels._check = lambda *tensors: None  # let CPU tensors through the device check; the launches only compile
    ref = benchmark.SHAPES[name]
    small = benchmark.ScanShape(name, 2, min(ref.channels, 64), ref.states, ref.spatial, ref.routes, ref.per_route_u,
                                ref.gated, ref.merge)
    kw = benchmark.scan_inputs(small, dtype, layout, device="cpu")
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    c = canonicalize(*(kw[n].detach() if kw[n] is not None else None for n in names), kw["routes"], layout, None)
    args = (c.u, c.delta, c.A, c.B, c.C, c.D, c.z, c.delta_bias, None, c.order, c.inverse, True, small.merge,
            c.channels_last)

    # lanes and one route per program depend on the real shape's batch and channels: take its choices
    K = kw["routes"].K
    lanes = {which: kernels._seq_lanes(ref.states, which, ref.batch, ref.channels) for which in ("fwd", "bwd")}
    tiles = {which: ref.batch * kernels._cdiv(ref.channels, lanes[which]) for which in lanes}
    par = {which: kernels.parallel_routes(K, ref.L) for which in lanes}
    programs = {f"_seq_{which}_kernel": tiles[which] * (K if par[which] else 1) for which in lanes}
    ck_lanes = kernels.SEQ_ONE_STATE_CK_LANES or lanes["fwd"]  # the checkpoint kernel (one state)
    programs["_seq_fwd_kernel:ck"] = ref.batch * kernels._cdiv(ref.channels, ck_lanes) * (K if par["bwd"] else 1)
    choose, parallel = kernels._seq_lanes, kernels.parallel_routes

    def call():
        kernels._seq_lanes = lambda N, which, *_: lanes[which]  # the real shape's lanes at the small sizes
        try:
            kernels.parallel_routes = lambda *_: par["fwd"]
            y, _, _ = kernels.selective_scan(*args, False, False, dtype)
            kernels.parallel_routes = lambda *_: par["bwd"]
            kernels.selective_scan_backward(torch.zeros_like(y), None, None, *args, dtype)
        finally:
            kernels._seq_lanes, kernels.parallel_routes = choose, parallel

    return call, programs


H100_SMS = 132


def waves(programs: int | None, regs: int, num_warps: int, shared: int) -> tuple[int, str]:
    """Warps resident per SM of an H100 (64 at most; registers in 256-register warp units, 228 KB of shared memory,
    32 programs) and how many waves of them the real shape's programs take ('-' when not known)."""
    warp_regs = -(-max(regs, 1) * 32 // 256) * 256
    per_sm = min(32, 64 // num_warps, 65536 // (warp_regs * num_warps), 233472 // max(shared, 1))
    return per_sm * num_warps, (f"{programs / (H100_SMS * per_sm):.2f}" if programs and per_sm else "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(benchmark.SHAPES), default=list(benchmark.SHAPES))
    parser.add_argument("--layout", choices=("channels_first", "channels_last"), default="channels_first")
    parser.add_argument("--dtype", choices=sorted(benchmark.DTYPES), default="bf16")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    args = parser.parse_args(argv)
    print(f"{'shape':16} {'kernel':16} {'warps':>5} {'regs':>4} {'stack':>5} {'shared':>6} {'warps/SM':>8} "
          f"{'waves':>5} {'instr':>6} {'MUFU':>5} {'FP32':>5} {'LD':>4} {'ST':>4} {'RED':>4} {'SHFL':>5} {'BAR':>4}")
    for name in args.shapes:
        call, programs = shape_calls(name, args.layout, benchmark.DTYPES[args.dtype])
        for r in compile_kernels(call, args.arch):
            ops = r["ops"]
            fp32 = ops["FFMA"] + ops["FMUL"] + ops["FADD"]
            mem = [sum(v for k, v in ops.items() if k.startswith(p)) for p in ("LD", "ST")]
            resident, n_waves = waves(programs.get(r["name"]), r["regs"], r["num_warps"], r["shared"])
            print(f"{name:16} {r['name']:16} {r['num_warps']:5} {r['regs']:4} {r['stack']:5} {r['shared']:6} "
                  f"{resident:8} {n_waves:>5} {sum(ops.values()):6} {ops['MUFU']:5} {fp32:5} {mem[0]:4} {mem[1]:4} "
                  f"{ops['RED'] + ops['ATOM'] + ops['REDG'] + ops['ATOMG']:4} {ops['SHFL']:5} {ops['BAR']:4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

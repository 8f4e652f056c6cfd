"""Launching Triton kernels with less host time per call.

``kernel[grid](*args, **kwargs)`` (``JITFunction.run``) spends 70-95 µs of Python on an H100 host for a kernel of
~75 arguments (Triton 3.6): binding and specialising the arguments (~25-40 µs, native), then a cache key built from
strings, knob and global-variable checks and launch metadata before the compiled launcher (~15-18 µs). At the
dual-path Mamba shapes the scan is host-bound, so ``launch`` keeps the first two and the last: the same binder
(hence the same specialisation: integers equal to 1 or divisible by 16, pointer alignment, dtypes), its result as
the key of a dict of compiled kernels, and the compiled kernel's launcher, given raw addresses (the launcher
otherwise calls ``data_ptr()`` and queries the driver for every tensor argument). A key seen for the first time, an
active launch hook (profilers), an interpreted kernel or a Triton other than 3.6 take ``kernel[grid]`` itself,
which compiles, checks and launches as usual.
"""

from __future__ import annotations

import torch
import triton
from triton import knobs

__all__ = ["launch"]

# The short path uses Triton internals (the per-device binder, CompiledKernel.run's arguments) as Triton 3.6 has
# them, the version torch 2.11 pins; another Triton takes JITFunction.run. Off: every launch through it.
FAST_LAUNCH = triton.__version__.split(".")[:2] == ["3", "6"]

# (kernel, device, specialisation, options) -> (CompiledKernel, positions of its pointer arguments)
_compiled: dict[tuple, tuple] = {}
_COMPILED_MAX = 4096  # distinct specialisations kept (shapes vary, e.g. audio lengths); then start over


def _hooks_active() -> bool:
    runtime = knobs.runtime
    return bool(getattr(runtime.launch_enter_hook, "calls", True) or getattr(runtime.launch_exit_hook, "calls", True))


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.jit`` kernel (an interpreted one is simply called)."""
    caches = getattr(kernel, "device_caches", None) if FAST_LAUNCH else None
    if caches is None:  # the interpreter, or a Triton without these internals
        kernel[grid](*args, **kwargs)
        return
    device = torch.cuda.current_device()
    binder = caches[device][-1]
    bound, specialization, options = binder(*args, **kwargs)
    key = (kernel, device, tuple(specialization), tuple(options.items()))
    hit = _compiled.get(key)
    if hit is None or _hooks_active():
        compiled = kernel[grid](*args, **kwargs)  # compiles on a miss; runs the hooks when a profiler set them
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        pointers = tuple(i for i, (kind, _) in enumerate(specialization) if kind.startswith("*"))
        _compiled[key] = (compiled, pointers)
        return
    compiled, pointers = hit
    values = list(bound.values())
    for i in pointers:  # raw addresses: the launcher then skips a data_ptr() call and a driver query per tensor
        if values[i] is not None:
            values[i] = values[i].data_ptr()
    grid = (*grid, 1, 1)
    compiled.run(grid[0], grid[1], grid[2], torch._C._cuda_getCurrentRawStream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *values)

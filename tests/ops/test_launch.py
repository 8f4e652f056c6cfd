"""``ssmzoo.ops.launch``: the short launch path must run the kernel Triton itself would pick for the arguments."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")  # (machines without Triton have no kernels to launch)
tl = pytest.importorskip("triton.language")

from ssmzoo.ops import launch as launch_module  # noqa: E402  (after the skip: it imports Triton)
from ssmzoo.ops.launch import launch  # noqa: E402


@triton.jit
def _scaled_gather(x_ptr, y_ptr, n, stride, scale, BLOCK: tl.constexpr):
    """y[i] = scale * x[i * stride] for i < n."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(y_ptr + i, tl.load(x_ptr + i * stride, mask=m) * scale, mask=m)


def test_objects_without_triton_caches_are_launched_by_indexing():
    """The interpreter's kernels (and test doubles) have no device caches: launch() indexes them as usual."""
    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    launch(Kernel(), (3,), 1, 2, FLAG=True, num_warps=1)
    assert calls == [((3,), (1, 2), {"FLAG": True, "num_warps": 1})]


@pytest.mark.gpu
def test_short_path_matches_triton_for_every_specialisation():
    """Unit, divisible and odd strides, aligned and misaligned pointers, fp32 and bf16: each call goes through the
    short path after its first and must give Triton's result; each specialisation gets its own compiled kernel."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not launch_module.FAST_LAUNCH:
        pytest.skip(f"the short path is off for Triton {triton.__version__}")
    launch_module._compiled.clear()
    gen = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4000, device="cuda", generator=gen).to(dtype)
        for stride in (1, 16, 3):
            for offset in (0, 1):
                cases.append((x[offset:], stride))
    for round_ in range(3):  # the first round compiles (misses), the others take the short path
        if round_ == 1:
            first = dict(launch_module._compiled)
        for x, stride in cases:
            n = (x.numel() - 1) // stride + 1 - 7
            y = torch.full((n,), float("nan"), device="cuda", dtype=x.dtype)
            launch(_scaled_gather, (triton.cdiv(n, 128),), x, y, n, stride, 0.5, BLOCK=128, num_warps=4)
            torch.testing.assert_close(y, x[::stride][:n] * 0.5, rtol=0, atol=0)
    assert launch_module._compiled == first  # every later call found its compiled kernel
    # dtype x stride (1, 16, other) x pointer alignment, at least: one compiled kernel each
    assert len({key[2] for key in first if key[0] is _scaled_gather}) >= 12

"""LargeGroupNorm and group_norm_by_reduction against PyTorch's GroupNorm: outputs, gradients, dtypes, layouts."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmzoo.layers.norm import LargeGroupNorm, group_norm_by_reduction

# (shape, groups, permutation of a contiguous tensor that gives the input its layout, or None)
CASES = [
    ((2, 6, 5, 3), 3, None),
    ((1, 4, 7), 1, None),
    ((3, 8, 2, 5, 3), 2, None),
    ((1, 5, 9, 4), 1, (0, 3, 2, 1)),  # DPMamba's intra norm: a (B, S, K, N) tensor seen as (B, N, K, S)
    ((2, 6, 3, 7), 2, (0, 3, 1, 2)),  # its inter norm: (B, K, S, N) seen as (B, N, K, S)
]


def _input(shape, perm, dtype, device="cpu") -> torch.Tensor:
    if perm is None:
        return torch.randn(shape, device=device).mul(3).add(1.5).to(dtype)
    inverse = [perm.index(i) for i in range(len(perm))]
    stored = torch.randn([shape[i] for i in inverse], device=device).mul(3).add(1.5).to(dtype)
    x = stored.permute(perm)
    assert x.shape == shape and not x.is_contiguous()
    return x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, groups, perm", CASES)
def test_group_norm_by_reduction_matches_torch(shape, groups, perm, affine, dtype):
    x = _input(shape, perm, dtype).requires_grad_()
    C = shape[1]
    weight = torch.randn(C, requires_grad=True) if affine else None
    bias = torch.randn(C, requires_grad=True) if affine else None
    got = group_norm_by_reduction(x, groups, weight, bias, 1e-5)
    want = F.group_norm(x.float(), groups, weight, bias, 1e-5)  # what autocast runs: fp32 from the input's values
    assert got.dtype == torch.float32 and got.shape == x.shape
    if perm is not None:  # a permuted input is not copied: the result keeps its layout
        assert got.permute([perm.index(i) for i in range(len(perm))]).is_contiguous()
    assert _rel(got, want) < 1e-6
    grad = torch.randn_like(want)
    leaves = [t for t in (x, weight, bias) if t is not None]
    for name, g_got, g_want in zip(("x", "weight", "bias"), torch.autograd.grad(got, leaves, grad),
                                   torch.autograd.grad(want, leaves, grad), strict=False):
        assert _rel(g_got, g_want) < (1e-5 if dtype == torch.float32 else 1e-2), name


def test_group_norm_by_reduction_keeps_float64():
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    got = group_norm_by_reduction(x, 2, None, None, 1e-8)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, F.group_norm(x, 2, None, None, 1e-8))


def test_group_norm_by_reduction_names_a_bad_shape():
    with pytest.raises(ValueError, match=r"C divisible by num_groups=4"):
        group_norm_by_reduction(torch.randn(2, 6, 5), 4, None, None, 1e-5)
    with pytest.raises(ValueError, match=r"needs \(B, C, \.\.\.\)"):
        group_norm_by_reduction(torch.randn(6), 1, None, None, 1e-5)


def test_large_group_norm_is_a_group_norm_with_its_keys():
    """A drop-in: same keys (official checkpoints load), an nn.GroupNorm to isinstance (GroupNormStatistics), and
    on the CPU PyTorch's own kernel (bitwise the same)."""
    ours, theirs = LargeGroupNorm(2, 6, eps=1e-8), nn.GroupNorm(2, 6, eps=1e-8)
    nn.init.normal_(theirs.weight)
    nn.init.normal_(theirs.bias)
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, nn.GroupNorm) and list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(3, 6, 11)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_gpu_large_group_norm_matches_group_norm(dtype, autocast):
    """On CUDA, where the reduction path runs: outputs, gradients and output dtype as nn.GroupNorm's, eager and
    under bf16 autocast, at DPMamba-M's intra-norm shape and layout and at an odd grouped one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for shape, groups, perm in [((2, 256, 250, 34), 1, (0, 3, 2, 1)), ((3, 12, 17, 5), 4, None)]:
        ours = LargeGroupNorm(groups, shape[1], eps=1e-8).cuda()
        theirs = nn.GroupNorm(groups, shape[1], eps=1e-8).cuda()
        nn.init.normal_(theirs.weight)
        nn.init.normal_(theirs.bias)
        ours.load_state_dict(theirs.state_dict())
        x = _input(shape, perm, dtype, "cuda").requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            got = ours(x)
            # eager, PyTorch's kernel refuses a bf16 input with fp32 parameters; ours returns the input's dtype
            want = theirs(x) if autocast or dtype == torch.float32 else theirs(x.float()).to(dtype)
        assert got.dtype == want.dtype == (torch.float32 if autocast else dtype)
        tol = 1e-5 if want.dtype == torch.float32 else 1e-2
        assert _rel(got, want) < tol
        grad = torch.randn_like(want)
        for name, g_got, g_want in zip(
                ("x", "weight", "bias"), torch.autograd.grad(got, [x, ours.weight, ours.bias], grad),
                torch.autograd.grad(want, [x, theirs.weight, theirs.bias], grad), strict=True):
            assert _rel(g_got, g_want) < (1e-4 if dtype == torch.float32 else 2e-2), name


@pytest.mark.gpu
def test_large_group_norm_names_a_wrong_channel_count_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match=r"must be \(B, 6, \.\.\.\)"):
        LargeGroupNorm(1, 6).cuda()(torch.randn(2, 5, 3, device="cuda"))

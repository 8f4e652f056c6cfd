"""The shared Mamba mixer, residual block and causal conv against a plain restatement of the official bimamba v2 code.

The restatement follows ``mamba_ssm/modules/mamba_simple.py`` of hustvl/Vim (fast path, ``bimamba_type="v2"``):
each direction is computed on its own, the backward one on ``xz.flip(-1)`` with ``conv1d`` padded by K - 1 on both
sides and cropped, a single-route scan with the op's reference backend, then ``(y_f + y_b.flip(-1)) / 2``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import RmsNorm

from ssmzoo.layers import mamba_mixer
from ssmzoo.layers.causal_conv1d import CausalConv1d
from ssmzoo.layers.mamba_mixer import MambaBlock, MambaMixer, init_mamba_residual_stream_
from ssmzoo.ops import selective_scan

OFFICIAL_V2_KEYS = [
    "A_log", "D", "A_b_log", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
    "dt_proj_b.bias", "out_proj.weight",
]


def _perturbed_mixer(d_model=24, d_state=8, **kwargs) -> MambaMixer:
    """A mixer whose per-direction parameters all differ (as after training), so swaps cannot pass."""
    torch.manual_seed(0)
    mixer = MambaMixer(d_model, d_state=d_state, **kwargs)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            scale = 0.3 if "A_" in name else 0.2 if name in ("D", "D_b") or name.endswith("bias") else 0.0
            p.add_(scale * torch.randn(p.shape, generator=gen))
            if name.startswith("x_proj"):
                p.mul_(3.0)  # make the B/C path matter (the default init leaves it almost inert)
    return mixer


def _direction(mixer: MambaMixer, xz: torch.Tensor, suffix: str) -> torch.Tensor:
    """One direction of the official fast path on channels-first xz (B, 2E, L): gated scan output (B, E, L)."""
    E, R, N, K = mixer.d_inner, mixer.dt_rank, mixer.d_state, mixer.d_conv
    conv = getattr(mixer, "conv1d" + suffix)
    x, z = xz.chunk(2, dim=1)
    L = x.shape[-1]
    u = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=K - 1, groups=E)[..., :L])
    x_dbl = F.linear(u.transpose(1, 2), getattr(mixer, "x_proj" + suffix).weight)
    dt, B, C = torch.split(x_dbl, [R, N, N], dim=-1)
    dt_proj = getattr(mixer, "dt_proj" + suffix)
    delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
    A = -torch.exp(getattr(mixer, "A_log" if not suffix else "A_b_log").float())
    D = getattr(mixer, "D" + suffix).float()
    return selective_scan(u, delta, A, B.transpose(1, 2).unsqueeze(1), C.transpose(1, 2).unsqueeze(1), D=D, z=z,
                          delta_bias=dt_proj.bias.float(), delta_softplus=True, routes="forward")


def _official_forward(mixer: MambaMixer, h: torch.Tensor) -> torch.Tensor:
    xz = mixer.in_proj(h).transpose(1, 2)
    y = _direction(mixer, xz, "")
    if mixer.bimamba_type == "v2":
        y_b = _direction(mixer, xz.flip(-1), "_b").flip(-1)
        y = (y + y_b) / 2 if mixer.if_divide_out else y + y_b
    return mixer.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_padded_conv(reverse, activation):
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4, activation=activation, reverse=reverse)
    x = torch.randn(2, 6, 9)
    xin = x.flip(-1) if reverse else x
    expected = F.conv1d(xin, conv.weight, conv.bias, padding=3, groups=6)[..., :9]
    expected = F.silu(expected) if activation else expected
    expected = expected.flip(-1) if reverse else expected
    torch.testing.assert_close(conv(x), expected, rtol=1e-6, atol=1e-6)
    assert [k for k, _ in conv.state_dict().items()] == ["weight", "bias"]
    assert conv.weight.shape == (6, 1, 4)


def test_causal_conv1d_is_causal():
    conv = CausalConv1d(3, 4)
    x = torch.randn(1, 3, 12)
    y = conv(x)
    x2 = x.clone()
    x2[..., 7:] += 1.0  # the future must not change the past
    torch.testing.assert_close(conv(x2)[..., :7], y[..., :7])
    conv.reverse = True
    x3 = x.clone()
    x3[..., :5] += 1.0  # ... and for the reverse conv, the past must not change the future
    torch.testing.assert_close(conv(x3)[..., 5:], conv(x)[..., 5:])


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bimamba_type,if_divide_out", [("v2", True), ("v2", False), ("none", False)])
def test_mixer_matches_per_direction_official_computation(monkeypatch, bimamba_type, if_divide_out, channels_last):
    """Both scan layouts (channels-last is the CPU's, channels-first CUDA's) against the official computation."""
    monkeypatch.setattr(mamba_mixer, "scan_channels_last", lambda x: channels_last)
    mixer = _perturbed_mixer(bimamba_type=bimamba_type, if_divide_out=if_divide_out)
    h = torch.randn(2, 13, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = mixer(h)
        monkeypatch.setenv("SSMZOO_BACKEND", "reference")
        expected = _official_forward(mixer, h)
    assert ours.shape == h.shape and ours.dtype == h.dtype
    scale = expected.abs().max()
    assert (ours - expected).abs().max() <= 2e-5 + 1e-4 * scale


def test_mixer_directions_are_distinct():
    """A wrong route, a z that is not flipped with x, or swapped per-direction parameters must show."""
    mixer = _perturbed_mixer(bimamba_type="v2", if_divide_out=True)
    h = torch.randn(2, 13, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = mixer(h)
        for a, b in (("A_log", "A_b_log"), ("D", "D_b")):
            pa, pb = getattr(mixer, a), getattr(mixer, b)
            saved = pa.clone()
            pa.copy_(pb)
            pb.copy_(saved)
            assert (mixer(h) - ref).abs().max() > 1e-3, f"swapping {a} and {b} went unnoticed"
            pb.copy_(pa)
            pa.copy_(saved)
        torch.testing.assert_close(mixer(h), ref)


def test_mixer_keys_shapes_and_official_init():
    torch.manual_seed(0)
    d_model, N, depth = 64, 16, 4
    mixer = MambaMixer(d_model, d_state=N, bimamba_type="v2", if_divide_out=True)
    E, R = 2 * d_model, math.ceil(d_model / 16)
    assert list(mixer.state_dict()) == OFFICIAL_V2_KEYS
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes["in_proj.weight"] == (2 * E, d_model) and shapes["x_proj_b.weight"] == (R + 2 * N, E)
    assert shapes["conv1d_b.weight"] == (E, 1, 4) and shapes["dt_proj.weight"] == (E, R)
    expected_A_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N)
    torch.testing.assert_close(mixer.A_log, expected_A_log)
    torch.testing.assert_close(mixer.A_b_log, expected_A_log)
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert mixer.dt_proj.weight.abs().max() <= R ** -0.5
    # The model-level pass (Vim's / Mamba-TasNet's _init_weights) spares the forward dt bias only.
    forward_bias = mixer.dt_proj.bias.clone()
    out_proj = nn.Linear(E, d_model, bias=False)
    mixer.apply(lambda m: init_mamba_residual_stream_(m, n_layer=depth))
    torch.testing.assert_close(mixer.dt_proj.bias, forward_bias)
    assert torch.all(mixer.dt_proj_b.bias == 0), "official quirk: the backward dt bias starts at 0"
    bound = 1 / math.sqrt(E) / math.sqrt(depth)  # kaiming_uniform(a=sqrt(5)) / sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-7
    assert mixer.out_proj.weight.abs().max() < out_proj.weight.abs().max()


def test_unidirectional_mixer_has_mamba_keys_only():
    mixer = MambaMixer(32)
    assert not any(k.endswith("_b") or "_b." in k or "A_b" in k for k in mixer.state_dict())
    assert mixer.bimamba_type == "none"


def test_mixer_gradients_reach_both_directions():
    """The official slow path silently drops the backward direction; here every parameter learns."""
    mixer = _perturbed_mixer(bimamba_type="v2", if_divide_out=True, init_layer_scale=0.5)
    mixer(torch.randn(2, 9, 24)).square().mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_mixer_rejects_unknown_variants():
    with pytest.raises(ValueError, match="bimamba_type"):
        MambaMixer(16, bimamba_type="v1")


def test_block_is_add_norm_mixer_with_fp32_residual():
    torch.manual_seed(0)
    block = MambaBlock(16, MambaMixer(16, bimamba_type="v2", if_divide_out=True), lambda d: RmsNorm(d, eps=1e-5),
                       residual_in_fp32=True)
    x = torch.randn(2, 7, 16)
    hidden, residual = block(x)
    torch.testing.assert_close(residual, x)
    torch.testing.assert_close(hidden, block.mixer(block.norm(x)))
    hidden2, residual2 = block(hidden, residual)
    torch.testing.assert_close(residual2, residual + hidden)
    with torch.no_grad():
        _, residual_bf16 = block(hidden.bfloat16(), residual)
    assert residual_bf16.dtype == torch.float32

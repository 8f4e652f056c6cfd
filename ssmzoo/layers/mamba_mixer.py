"""The Mamba mixer (uni- or bidirectional) and mamba_ssm's residual-stream block, shared by the 1-D Mamba families.

:class:`MambaMixer` is mamba_ssm's ``Mamba`` in the version vendored by Vim (``mamba-1p1p1/.../mamba_simple.py``),
with ``bimamba_type="none"`` (the original, causal Mamba) or ``"v2"`` (Vim's bidirectional Mamba, also used
unchanged by the dual-path Mamba / Mamba-TasNet speech separators). Parameter names, shapes and initialisation are
the official ones, so official checkpoints load without renaming:

=============================  ==================  ===========================================================
key                            shape               role
=============================  ==================  ===========================================================
``in_proj.weight``             (2E, d_model)       shared by both directions: x (first E rows) and gate z
``conv1d.{weight,bias}``       (E, 1, K), (E,)     causal depthwise conv + SiLU, forward direction
``x_proj.weight``              (R + 2N, E)         -> dt (R), B (N), C (N)
``dt_proj.{weight,bias}``      (E, R), (E,)        delta = dt_proj.weight @ dt; the bias is the scan's delta_bias
``A_log``, ``D``               (E, N), (E,)        A = -exp(A_log); D skip
``*_b`` / ``A_b_log``          same                backward direction (``bimamba_type="v2"`` only)
``out_proj.weight``            (d_model, E)        shared
``gamma``                      (d_model,)          layer scale, only with ``init_layer_scale``
=============================  ==================  ===========================================================

E = expand * d_model, R = dt_rank (ceil(d_model / 16) for "auto"), N = d_state, K = d_conv.

Both directions run in ONE call of :func:`ssmzoo.ops.selective_scan` with routes ``bidi`` (forward, reverse) and
per-route u, delta, A, B, C, D, delta_bias, the gate z shared and the outputs merged inside the op. The official
code flips ``xz`` for the backward direction, scans, flips back and averages; here nothing is flipped: the backward
causal conv is computed anti-causally in natural order (:class:`~ssmzoo.layers.causal_conv1d.CausalConv1d` with
``reverse=True``) and the scan's reverse route visits the natural layout backwards, which is the same arithmetic.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from ssmzoo.layers.causal_conv1d import CausalConv1d
from ssmzoo.ops import selective_scan

__all__ = ["MambaBlock", "MambaMixer", "init_mamba_residual_stream_"]


def scan_channels_last(x: torch.Tensor) -> bool:
    """The layout the mixer gives the scan: channels-last on the CPU, where the chunked path then reads u, delta, z
    and writes y without any transposed copy (a call's prologue and epilogue cost about half as much); CUDA keeps
    channels-first, the layout the Triton kernels are tuned for."""
    return not x.is_cuda


class MambaMixer(nn.Module):
    """Mamba / bidirectional Mamba ("bimamba v2") mixer: (B, L, d_model) -> (B, L, d_model), input dtype.

    Per direction: ``u = silu(conv(x))``, ``dt, B, C = x_proj(u)``, ``delta = dt_proj.weight @ dt``, selective scan
    with ``delta_bias = dt_proj.bias`` (softplus), ``A = -exp(A_log)``, ``D`` and gate ``silu(z)``; the directions
    are merged by mean (``if_divide_out=True``, Vim's ``(y_f + y_b.flip) / 2``) or sum, then ``out_proj``.

    Args:
        d_model: model width.
        d_state: N, SSM state size.
        d_conv: K, causal conv width.
        expand: E = expand * d_model.
        dt_rank: R, or "auto" for ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: the forward dt_proj bias is initialised to softplus^-1(dt) with
            dt ~ log-uniform[dt_min, dt_max], floored at dt_init_floor.
        dt_init: "random" (weight ~ U(+-dt_scale / sqrt(R))) or "constant".
        dt_scale: scale of the dt_proj weight init.
        conv_bias: bias in the causal convs.
        bias: bias in in_proj / out_proj.
        bimamba_type: "none" (causal Mamba, one direction) or "v2" (forward + backward, separate parameters).
        if_divide_out: with "v2", merge by mean (True, Vim / Mamba-TasNet) or sum (False, mamba_ssm's default).
        init_layer_scale: if set, the output is multiplied by a learnable ``gamma`` initialised to this value.

    Initialisation follows ``Mamba.__init__``: A_log = log(1..N) (S4D-real), D = 1 for both directions, the special
    dt init for the forward ``dt_proj`` only; the backward ``dt_proj_b`` keeps nn.Linear's default init.
    ``dt_proj.bias`` is tagged ``_no_reinit`` as in mamba_ssm, so a model-level init that zeroes Linear biases
    (:func:`init_mamba_residual_stream_`, Vim's and Mamba-TasNet's ``_init_weights``) spares it but zeroes
    ``dt_proj_b.bias``: in the official models the backward direction starts at delta = softplus(0) ~ 0.69 while
    the forward one starts in [dt_min, dt_max]. That quirk is kept so training from scratch behaves the same.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, bimamba_type: str = "none",
                 if_divide_out: bool = False, init_layer_scale: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        if bimamba_type not in ("none", "v2"):
            raise ValueError(f"MambaMixer: bimamba_type must be 'none' or 'v2', got {bimamba_type!r} "
                             "(v1, with shared conv and x_proj, is not used by any released model)")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"MambaMixer: dt_init must be 'random' or 'constant', got {dt_init!r}")
        dd = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bimamba_type = bimamba_type
        self.if_divide_out = if_divide_out
        E, R, N = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias, **dd)
        self.conv1d = CausalConv1d(E, d_conv, bias=conv_bias, activation="silu", **dd)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **dd)
        self.dt_proj = nn.Linear(R, E, bias=True, **dd)
        dt_init_std = R ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(dt_init_std)
            else:
                self.dt_proj.weight.uniform_(-dt_init_std, dt_init_std)
            dt = torch.exp(torch.rand(E, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True
        # A_log and D stay float32 whatever ``dtype`` is: the scan's decay and skip are computed in float32.
        self.A_log = nn.Parameter(self._s4d_real_log(E, N, device))
        self.D = nn.Parameter(torch.ones(E, device=device))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        if bimamba_type == "v2":
            self.conv1d_b = CausalConv1d(E, d_conv, bias=conv_bias, activation="silu", reverse=True, **dd)
            self.x_proj_b = nn.Linear(E, R + 2 * N, bias=False, **dd)
            self.dt_proj_b = nn.Linear(R, E, bias=True, **dd)
            self.A_b_log = nn.Parameter(self._s4d_real_log(E, N, device))
            self.D_b = nn.Parameter(torch.ones(E, device=device))
            self.A_b_log._no_weight_decay = self.D_b._no_weight_decay = True
        self.out_proj = nn.Linear(E, d_model, bias=bias, **dd)
        self.gamma = None
        if init_layer_scale is not None:
            self.gamma = nn.Parameter(torch.full((d_model,), float(init_layer_scale), **dd))

    @staticmethod
    def _s4d_real_log(E: int, N: int, device) -> torch.Tensor:
        return torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=device)).repeat(E, 1).contiguous()

    def _directions(self) -> list[tuple[CausalConv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]]:
        dirs = [(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)]
        if self.bimamba_type == "v2":
            dirs.append((self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b))
        return dirs

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model), same dtype."""
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        channels_last = scan_channels_last(hidden_states)
        xz = self.in_proj(hidden_states)  # (B, L, 2E)
        x, z = xz[..., :E], xz[..., E:]
        directions = self._directions()
        convs = [conv(x.transpose(1, 2)) for conv, *_ in directions]  # (B, E, L)
        if channels_last:
            u = torch.stack([c.transpose(1, 2) for c in convs], 2)  # (B, L, K, E)
        else:
            u = torch.stack(convs, 1)  # (B, K, E, L)
        deltas, Bs, Cs = [], [], []
        for k, (_, x_proj, dt_proj, _, _) in enumerate(directions):
            u_k = u[:, :, k] if channels_last else u[:, k].transpose(1, 2)  # (B, L, E)
            dt, B, C = torch.split(x_proj(u_k), [R, N, N], dim=-1)  # (B, L, .)
            delta = F.linear(dt, dt_proj.weight)  # (B, L, E); the bias goes in as delta_bias
            deltas.append(delta if channels_last else delta.transpose(1, 2))
            Bs.append(B if channels_last else B.transpose(1, 2))
            Cs.append(C if channels_last else C.transpose(1, 2))
        # Per-route tensors: u, delta (B, L, K, E) | (B, K, E, L); B, C (B, L, K, G=1, N) | (B, K, G=1, N, L);
        # z (B, L, E) | (B, E, L).
        k_dim = 2 if channels_last else 1
        delta, B, C = torch.stack(deltas, k_dim), torch.stack(Bs, k_dim), torch.stack(Cs, k_dim)
        B, C = B.unsqueeze(k_dim + 1), C.unsqueeze(k_dim + 1)
        if not channels_last:
            z = z.transpose(1, 2)
        y = selective_scan(
            u, delta, torch.stack([-torch.exp(d[3].float()) for d in directions]), B, C,
            D=torch.stack([d[4].float() for d in directions]), z=z,
            delta_bias=torch.stack([d[2].bias.float() for d in directions]), delta_softplus=True,
            routes="bidi" if len(directions) == 2 else "forward",
            merge="mean" if self.if_divide_out and len(directions) == 2 else "sum", out_dtype=x.dtype,
            layout="channels_last" if channels_last else "channels_first",
        )  # (B, L, E) | (B, E, L)
        out = self.out_proj(y if channels_last else y.transpose(1, 2))
        return out * self.gamma if self.gamma is not None else out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"d_conv={self.d_conv}, bimamba_type={self.bimamba_type!r}, if_divide_out={self.if_divide_out}")


class MambaBlock(nn.Module):
    """mamba_ssm's residual-stream ``Block``: Add -> Norm -> Mixer (pre-norm, with the add moved in front).

    ``forward(hidden_states, residual)`` returns ``(mixer_out, residual_out)``:

    - ``residual_out = hidden_states`` for the first block (``residual is None``), else
      ``residual + drop_path(hidden_states)``; kept in float32 when ``residual_in_fp32``;
    - ``mixer_out = mixer(norm(residual_out))``.

    A stack ends with ``norm_f(residual + drop_path(hidden_states))``. This is what the official Triton kernel
    ``rms_norm_fn(..., prenorm=True)`` fuses (add in float32, then RMSNorm); the unfused form here gives the same
    values. Shapes (B, L, dim); keys ``norm.*`` and ``mixer.*`` as in mamba_ssm.

    Args:
        dim: width.
        mixer: the mixer module (e.g. :class:`MambaMixer`).
        norm_layer: norm constructor called as ``norm_layer(dim)`` (e.g. ``partial(RmsNorm, eps=1e-5)``).
        drop_path: stochastic depth applied to the incoming ``hidden_states`` (the previous mixer's output).
        residual_in_fp32: keep the residual stream in float32 (Vim: True).
    """

    def __init__(self, dim: int, mixer: nn.Module, norm_layer, drop_path: float = 0.0,
                 residual_in_fp32: bool = False) -> None:
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = norm_layer(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        hidden_states = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        return hidden_states, residual


def init_mamba_residual_stream_(module: nn.Module, n_layer: int, n_residuals_per_layer: int = 1) -> None:
    """mamba_ssm's model-level ``_init_weights`` (GPT-2 scheme), applied to one module (use with ``model.apply``).

    Zeroes every nn.Linear bias not tagged ``_no_reinit`` (so ``dt_proj.bias`` keeps its dt init while
    ``dt_proj_b.bias`` becomes 0, the official quirk), and re-initialises a mixer's ``out_proj.weight`` as
    kaiming-uniform(a=sqrt(5)) / sqrt(n_residuals_per_layer * n_layer).
    """
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    if isinstance(module, MambaMixer):
        nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            module.out_proj.weight /= math.sqrt(n_residuals_per_layer * n_layer)

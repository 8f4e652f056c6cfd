"""SS2D: VMamba's 2-D selective scan over four cross-scan routes, on channels-last maps.

Follows ``SS2D`` of MzeroMiko/VMamba (``classification/models/vmamba.py``) in its two released forms:

- v2 (``forward_type="v05_noz"``, the released VMamba-T/S/B): in_proj -> depthwise conv 3x3 (no bias) -> SiLU ->
  scan -> out_norm -> out_proj; N = 1; scan inputs in the activation dtype, scan output float32.
- v0 ("vanilla VMamba", ``forward_type="v0"``): in_proj to x and z -> z = SiLU(z); depthwise conv 3x3 (bias) ->
  SiLU -> scan -> out_norm -> y * z -> out_proj; N = 16; scan inputs forced to float32.

The scan visits the four routes of ``ssmzoo.ops.directions.cross2d`` (row, column, reversed row, reversed column)
with per-route x_proj / dt_proj / A / D / delta_bias, and merges them by sum inside one ``selective_scan`` call on
the natural layout: no cross-scanned copy of the map is made. x_proj is applied per position before the scan,
which equals the official projection of the route-ordered copies because it is pointwise.

Parameter names and shapes are the official ones (K = 4 routes, E = d_inner, R = dt_rank, N = d_state), so the
released checkpoints load without reshaping: ``x_proj_weight`` (K, R + 2N, E), ``dt_projs_weight`` (K, E, R),
``dt_projs_bias`` (K, E), ``A_logs`` (K*E, N), ``Ds`` (K*E).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmzoo.ops import directions, selective_scan

__all__ = ["SS2D"]


class SS2D(nn.Module):
    """(B, H, W, dim) -> (B, H, W, dim): VMamba's SS2D (module docstring) on a channels-last map.

    Args:
        dim: channels of the input and output (the block width, ``d_model``).
        d_state: N, states per channel (1 for VMamba v2, 16 for v0).
        ssm_ratio: E = int(ssm_ratio * dim) channels inside the scan.
        dt_rank: R, rank of the delta projection; "auto" is ceil(dim / 16) (from the block width, not E).
        act_layer: activation after the depthwise conv and, when gated, of z.
        d_conv: depthwise conv kernel size; < 2 means no conv.
        conv_bias: bias of the depthwise conv.
        gate: split in_proj into x and z and multiply the normalised scan output by act(z) (v0; v2 ``_noz`` off).
        force_fp32: run the scan on float32 inputs under autocast (v0); otherwise the scan reads the activation
            dtype and returns float32 (v2's fp16-in/fp32-out contract).
        drop: dropout after out_proj.
        dt_min, dt_max, dt_init_floor, dt_scale: the "v0" initialisation of dt_projs (mamba's).
    """

    num_routes = 4

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        act_layer: type[nn.Module] = nn.SiLU,
        d_conv: int = 3,
        conv_bias: bool = False,
        gate: bool = False,
        force_fp32: bool = False,
        drop: float = 0.0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
    ) -> None:
        super().__init__()
        K = self.num_routes
        self.d_state = N = int(d_state)
        self.d_inner = E = int(ssm_ratio * dim)
        self.dt_rank = R = int(math.ceil(dim / 16) if dt_rank == "auto" else dt_rank)
        self.gate = gate
        self.force_fp32 = force_fp32
        self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale = dt_min, dt_max, dt_init_floor, dt_scale

        self.in_proj = nn.Linear(dim, 2 * E if gate else E, bias=False)
        self.act = act_layer()
        self.conv2d = nn.Conv2d(E, E, d_conv, padding=(d_conv - 1) // 2, groups=E, bias=conv_bias) \
            if d_conv > 1 else None
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, E))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, E, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, E))
        self.A_logs = nn.Parameter(torch.empty(K * E, N))
        self.Ds = nn.Parameter(torch.empty(K * E))
        self.out_norm = nn.LayerNorm(E)
        self.out_proj = nn.Linear(E, dim, bias=False)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """VMamba's "v0" init of the stacked scan parameters (the Linear layers are initialised by the model).

        x_proj as nn.Linear's default, U(+-1/sqrt(E)); dt_projs_weight U(+-dt_scale/sqrt(R)); dt_projs_bias the
        inverse softplus of dt ~ log-uniform [dt_min, dt_max] (floored); A_logs = log(1..N) (S4D-real); Ds = 1.
        """
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        nn.init.uniform_(self.x_proj_weight, -E ** -0.5, E ** -0.5)
        std = self.dt_scale * R ** -0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        K, E, R, N = self.num_routes, self.d_inner, self.dt_rank, self.d_state
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
            z = self.act(z)
        if self.conv2d is not None:
            # A permuted view: the conv runs in channels_last memory format, no copy of the map.
            x = self.conv2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.act(x)

        x_dbl = F.linear(x, self.x_proj_weight.reshape(K * (R + 2 * N), E)).unflatten(-1, (K, R + 2 * N))
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)  # (B, H, W, K, R | N | N)
        dts = torch.einsum("bhwkr,ker->bhwke", dts, self.dt_projs_weight)
        u = x
        if self.force_fp32:
            u, dts, Bs, Cs = u.float(), dts.float(), Bs.float(), Cs.float()
        y = selective_scan(
            u, dts, -torch.exp(self.A_logs.float()).view(K, E, N), Bs.unsqueeze(-2), Cs.unsqueeze(-2),
            D=self.Ds.float().view(K, E), delta_bias=self.dt_projs_bias.float(), delta_softplus=True,
            routes=directions.cross2d(H, W), merge="sum", layout="channels_last",
        )  # (B, H, W, E), float32
        y = self.out_norm(y).to(x.dtype)
        if self.gate:
            y = y * z
        return self.drop(self.out_proj(y))

"""VMamba: Visual State Space Model (Liu et al., NeurIPS 2024, arXiv 2401.10166), faithful to MzeroMiko/VMamba.

Two released designs, both four-stage pyramids (strides 4/8/16/32) of VSS blocks around
:class:`~ssmzoo.layers.ss2d.SS2D`:

- v2 (``vmamba_tiny/small/base`` and the s1/s2 variants): stem conv3x3 s2 -> LN -> GELU -> conv3x3 s2 -> LN;
  blocks ``x + SS2D(LN(x))`` then ``x + MLP(LN(x))``; downsample conv3x3 s2 -> LN; N = 1, no z gate.
- v0 ("vanilla", ``vmamba_vanilla_*``): stem conv4x4 s4 -> LN; SS2D blocks only (N = 16, z gate, float32 scan);
  Swin's PatchMerging (2x2 concat -> LN -> Linear) between stages.

Head: LN -> global average pool -> Linear. LayerNorm eps is 1e-5 everywhere. Internally every map is channels-last
(B, H, W, C): the LayerNorms and 1x1 projections are then plain ``nn.LayerNorm`` / ``nn.Linear`` (the official v2
runs channels-first with LayerNorm2d / Linear2d: the same math, ~20 % slower on a CPU), and the convolutions read
permuted views in channels_last memory format. ``forward_features`` and every feature map are NCHW.

Our module tree differs from the official one where timm's conventions want it: the downsample opens the next
stage (so ``stages.i`` outputs the stride 4*2^i map), blocks name their first norm ``norm1``, and the classifier is
``norm`` + ``head.fc``. :func:`checkpoint_filter_fn` maps the official checkpoints (classification code keys and the
legacy v0 names, Linear2d weights stored as 1x1 convs, ``Backbone_VSSM``'s ``outnorm{i}``) to ours;
:func:`from_official` builds our equivalent of any official ``VSSM(**kwargs)`` this module supports.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, get_act_layer, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from timm.models.swin_transformer import PatchMerging

from ssmzoo.layers.ss2d import SS2D

from ._builder import build_model
from ._registry import generate_default_cfgs, register_model

__all__ = ["VSSM", "VSSBlock", "checkpoint_filter_fn", "from_official", "official_parity"]


class Stem(nn.Module):
    """(B, in_chans, H, W) -> (B, H/4, W/4, dim), channels-last.

    "v2": conv3x3 s2 (dim/2) -> LN -> GELU -> conv3x3 s2 (dim) -> LN, output ceil(H/4) x ceil(W/4).
    "v1": conv4x4 s4 -> LN (Swin's patch embedding), output floor(H/4) x floor(W/4).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, version: str = "v2") -> None:
        super().__init__()
        if version == "v2":
            stride = patch_size // 2
            self.conv1 = nn.Conv2d(in_chans, dim // 2, stride + 1, stride, padding=1)
            self.norm1 = nn.LayerNorm(dim // 2)
            self.act = nn.GELU()
            self.conv2 = nn.Conv2d(dim // 2, dim, stride + 1, stride, padding=1)
            self.norm2 = nn.LayerNorm(dim)
        elif version == "v1":
            self.conv1 = nn.Conv2d(in_chans, dim, patch_size, patch_size)
            self.norm1 = nn.LayerNorm(dim)
            self.conv2 = None
        else:
            raise ValueError(f"VMamba stem version must be 'v1' or 'v2', got {version!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.conv1(x).permute(0, 2, 3, 1))
        if self.conv2 is not None:
            x = self.norm2(self.conv2(self.act(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return x


class ConvDownsample(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim): conv s2 -> LN (v3: 3x3 padding 1; v2: 2x2)."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, kernel_size, stride=2, padding=(kernel_size - 1) // 2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class VSSBlock(nn.Module):
    """(B, H, W, dim) -> same: ``x + drop_path(SS2D(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))`` when
    ``mlp_ratio > 0``. ``ssm_kwargs`` go to :class:`SS2D`."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0,
                 mlp_act_layer: type[nn.Module] = nn.GELU, mlp_drop: float = 0.0, **ssm_kwargs: Any) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm_kwargs)
        # One DropPath for both branches, as in the official block: each call draws its own mask.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=mlp_act_layer, drop=mlp_drop)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VSSStage(nn.Module):
    """(B, H, W, in_dim) -> (B, H', W', dim): optional downsample (stride 2), then ``depth`` VSS blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: str | None, drop_path: Sequence[float],
                 **block_kwargs: Any) -> None:
        super().__init__()
        self.grad_checkpointing = False
        if downsample is None:
            self.downsample = nn.Identity()
        elif downsample == "v1":
            self.downsample = PatchMerging(in_dim, dim)
        elif downsample in ("v2", "v3"):
            self.downsample = ConvDownsample(in_dim, dim, kernel_size=2 if downsample == "v2" else 3)
        else:
            raise ValueError(f"VMamba downsample version must be 'v1', 'v2' or 'v3', got {downsample!r}")
        self.blocks = nn.Sequential(*[VSSBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VSSM(nn.Module):
    """VMamba classifier / backbone: (B, in_chans, H, W) -> (B, num_classes).

    Args:
        in_chans, num_classes, global_pool, drop_rate: timm's (drop_rate: dropout before the classifier).
        depths: blocks per stage.
        dims: channels per stage, or the first stage's (doubled at every stage).
        patch_size: stride of the stem.
        stem_type: "v2" (two 3x3 s2 convs) or "v1" (one patch_size conv).
        downsample_type: "v3" (conv3x3 s2), "v2" (conv2x2 s2) or "v1" (PatchMerging).
        d_state, ssm_ratio, dt_rank, ssm_act_layer, d_conv, conv_bias, gate, force_fp32, ssm_drop_rate:
            :class:`~ssmzoo.layers.ss2d.SS2D`'s.
        mlp_ratio: MLP hidden ratio; 0 leaves blocks without MLP (v0).
        mlp_act_layer, mlp_drop_rate: the MLP's activation and dropout.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        out_norms: add a LayerNorm per stage output (``Backbone_VSSM``'s ``outnorm{i}``, used by the dense-task
            checkpoints); ``forward_intermediates`` and ``features_only`` then return normalised maps.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: int | Sequence[int] = 96,
        patch_size: int = 4,
        stem_type: str = "v2",
        downsample_type: str = "v3",
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        ssm_act_layer: str | Callable = "silu",
        d_conv: int = 3,
        conv_bias: bool = False,
        gate: bool = False,
        force_fp32: bool = False,
        ssm_drop_rate: float = 0.0,
        mlp_ratio: float = 4.0,
        mlp_act_layer: str | Callable = "gelu",
        mlp_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        out_norms: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        dims = [int(dims * 2 ** i) for i in range(num_stages)] if isinstance(dims, int) else list(dims)
        if len(dims) != num_stages:
            raise ValueError(f"VMamba: {len(depths)} depths but {len(dims)} dims")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = Stem(in_chans, dims[0], patch_size, stem_type)
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]  # torch.linspace's
        dpr = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(num_stages)]
        block_kwargs = dict(
            mlp_ratio=mlp_ratio, mlp_act_layer=get_act_layer(mlp_act_layer), mlp_drop=mlp_drop_rate,
            d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, act_layer=get_act_layer(ssm_act_layer),
            d_conv=d_conv, conv_bias=conv_bias, gate=gate, force_fp32=force_fp32, drop=ssm_drop_rate,
        )
        stages, self.feature_info = [], []
        for i in range(num_stages):
            stages.append(VSSStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample_type if i > 0 else None, dpr[i],
                                   **block_kwargs))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims) if out_norms else None
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official init: Linear (and Linear2d) weights trunc_normal(0.02), biases 0; convs keep PyTorch's.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official SS2D marks A_logs and Ds ``_no_weight_decay``; A_logs is 2-D, so timm would decay it.
        return {"*.A_logs", "*.Ds"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^(norm|stage_norms)", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"VMamba expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"VMamba expects H and W >= {self.patch_size} (the stem's stride), "
                             f"got input of shape {tuple(x.shape)}")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (B, C_i, H/(4*2^i), W/(4*2^i)) for the stages ``indices`` selects (timm's meaning).

        With ``out_norms`` each map goes through its stage norm (the official backbone's output norms); without,
        ``norm=True`` applies the final norm to the last stage's map, the only one it fits. Returns the maps, or
        ``(forward_features(x), maps)`` unless ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                if self.stage_norms is not None:
                    y = self.stage_norms[i](x)
                else:
                    y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the norm / head that no longer fit)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if self.stage_norms is not None:
            self.stage_norms = self.stage_norms[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            # the head's new input width set directly: reset()'s in_features argument needs timm >= 1.0.31
            self.head.in_features = self.num_features
            self.head.reset(0, pool_type="")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normalised last-stage map (B, num_features, H/32, W/32)."""
        self._check_input(x)
        x = self.stages(self.stem(x))
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- official checkpoints and configurations -----------------------------------------------------------------------

_BLOCK_RENAMES = (("ln_1.", "norm1."), ("norm.", "norm1."), ("self_attention.", "op."))


def _official_to_ours(key: str) -> str | None:
    """One official key -> ours (None: the key has no counterpart and is dropped)."""
    m = re.match(r"patch_embed\.(\d+|proj|norm)\.(.+)", key)
    if m:
        part = {"0": "conv1", "proj": "conv1", "2": "norm1", "norm": "norm1", "5": "conv2", "7": "norm2"}
        return f"stem.{part[m.group(1)]}.{m.group(2)}" if m.group(1) in part else None
    m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if m:
        rest = m.group(3)
        for old, new in _BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
    m = re.match(r"layers\.(\d+)\.downsample\.(\d+|reduction|norm)\.(.+)", key)
    if m:
        # The official downsample closes stage i; ours opens stage i + 1.
        part = {"1": "conv", "3": "norm", "reduction": "reduction", "norm": "norm"}[m.group(2)]
        return f"stages.{int(m.group(1)) + 1}.downsample.{part}.{m.group(3)}"
    m = re.match(r"(?:classifier\.)?(norm|head)\.(.+)", key)
    if m:
        return f"norm.{m.group(2)}" if m.group(1) == "norm" else f"head.fc.{m.group(2)}"
    m = re.match(r"outnorm(\d+)\.(.+)", key)
    if m:
        return f"stage_norms.{m.group(1)}.{m.group(2)}"
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VSSM) -> dict[str, torch.Tensor]:
    """Official VMamba state_dict (``VSSM`` / ``Backbone_VSSM`` of the classification code, or the legacy v0
    names ``patch_embed.proj``, ``ln_1``, ``self_attention``, top-level ``norm`` / ``head``) -> ours.

    Linear2d weights stored as 1x1 convs (C_out, C_in, 1, 1) are flattened to Linear shape. ``outnorm{i}`` is
    kept only when ``model`` has stage norms. A state_dict already in our layout passes through unchanged.
    """
    state_dict = state_dict.get("model", state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict
    ours = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        new = _official_to_ours(key)
        if new is None or (new.startswith("stage_norms.") and new not in ours):
            continue
        target = ours.get(new)
        if target is not None and value.dim() == 4 and target.dim() == 2 and value.shape[-2:] == (1, 1):
            value = value.flatten(1)
        out[new] = value
    return out


# v01-v05, v2, v3 differ only in kernels, einsum vs grouped conv and whether scan inputs are forced to fp32 ("v2"
# selects a "core" kernel that the official snapshot's own assertion rejects; its math is v03's).
_V2_FORWARD_TYPES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
# Official VSSM kwargs that describe nothing our model needs (checkpointing is set_grad_checkpointing here).
_IGNORED_KWARGS = {"use_checkpoint", "imgsize"}


def _from_official_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Official ``VSSM(**kwargs)`` -> our ``VSSM`` kwargs; ValueError for options this module does not implement."""
    kw = dict(kwargs)
    forward_type = kw.pop("forward_type", "v2")
    base, gate, force_fp32 = forward_type, True, True
    # The official SS2Dv2 strips its postfixes from the end in this order; other postfixes are not implemented.
    if base.endswith("_no32"):
        base, force_fp32 = base[: -len("_no32")], False
    if base.endswith("_noz"):
        base, gate = base[: -len("_noz")], False
    if forward_type in ("v0", "v0seq"):  # v0seq: the four routes scanned one by one, the same math
        fixed = dict(d_conv=3, conv_bias=True, ssm_act_layer="silu")  # SS2Dv0 ignores these arguments
    elif base in _V2_FORWARD_TYPES:
        force_fp32 = force_fp32 and base in ("v01", "v02", "v03", "v2")
        fixed = {}
    else:
        raise ValueError(f"VMamba forward_type {forward_type!r} is not implemented (supported: 'v0', "
                         f"{', '.join(repr(t) for t in _V2_FORWARD_TYPES)}, with '_noz' and/or '_no32' for v0x)")
    # norm_layer "ln" and "ln2d" are the same math (channels-last vs channels-first); the init is v0's only.
    unsupported = {"gmlp": (False,), "posembed": (False,), "patch_norm": (True,), "norm_layer": ("ln", "ln2d"),
                   "ssm_init": ("v0",)}
    for name, allowed in unsupported.items():
        if name in kw and (kw[name].lower() if name == "norm_layer" else kw[name]) not in allowed:
            raise ValueError(f"VMamba official option {name}={kw[name]!r} is not implemented (supported: {allowed})")
    for name in (*_IGNORED_KWARGS, *unsupported):
        kw.pop(name, None)
    rename = {"ssm_d_state": "d_state", "ssm_dt_rank": "dt_rank", "ssm_conv": "d_conv", "ssm_conv_bias": "conv_bias",
              "patchembed_version": "stem_type", "downsample_version": "downsample_type"}
    ours = {rename.get(k, k): v for k, v in kw.items()}
    ours.setdefault("stem_type", "v1")  # the official defaults differ from ours
    ours.setdefault("downsample_type", "v2")
    ours.setdefault("d_state", 16)
    ours.setdefault("conv_bias", True)
    ours.update(fixed, gate=gate, force_fp32=force_fp32)
    known = set(inspect.signature(VSSM).parameters)
    if set(ours) - known:
        raise ValueError(f"VMamba official options {sorted(set(ours) - known)} are not implemented")
    return ours


def from_official(constructor: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> VSSM:
    """Our equivalent of an official ``{"cls": "VSSM", "kwargs": {...}}`` with ``state_dict`` (official keys)
    loaded through :func:`checkpoint_filter_fn` (strictly). ValueError for options not implemented here."""
    if constructor.get("cls") != "VSSM":
        raise ValueError(f"from_official builds the official class 'VSSM', got {constructor.get('cls')!r}")
    model = VSSM(**_from_official_kwargs(constructor.get("kwargs", {})))
    if state_dict is not None:
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    return model


def official_parity(model: VSSM, fixture: dict[str, Any]) -> dict[str, Any]:
    """Our values of the fixture's fields: ``output`` (B, num_classes) and ``stage_outputs`` (stage i's blocks'
    output, NCHW, before the next downsample), in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        features, stages = model.forward_intermediates(fixture["input"].float())
        return {"output": model.forward_head(features), "stage_outputs": stages}


PARITY_NOT_REPRODUCED: dict[str, str] = {}


# --- registry ----------------------------------------------------------------------------------------------------

_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download/"


def _cfg(url: str | None = None, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "min_input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv1", "classifier": "head.fc", "checkpoint_key": "model",
        "sha256": None, "license": "mit", "paper_ids": "arXiv:2401.10166",
        "paper_name": "VMamba: Visual State Space Model", "origin_url": "https://github.com/MzeroMiko/VMamba",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vmamba_tiny.in1k": _cfg(_RELEASE + "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
    "vmamba_small.in1k": _cfg(_RELEASE + "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"),
    "vmamba_base.in1k": _cfg(_RELEASE + "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"),
    "vmamba_tiny_s2l5.in1k": _cfg(_RELEASE + "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"),
    "vmamba_small_s1l20.in1k": _cfg(_RELEASE + "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth"),
    "vmamba_base_s1l20.in1k": _cfg(_RELEASE + "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth"),
    "vmamba_vanilla_tiny.in1k": _cfg(_RELEASE + "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth"),
    "vmamba_vanilla_small.in1k": _cfg(_RELEASE + "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth"),
    "vmamba_vanilla_base.in1k": _cfg(_RELEASE + "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth"),
    "test_vmamba.untrained": _cfg(input_size=(3, 48, 64), pool_size=(2, 2),
                                  license=None, paper_ids=None, paper_name=None, origin_url=None),
})


def _create_vssm(variant: str, pretrained: bool = False, **kwargs: Any) -> VSSM:
    num_stages = len(kwargs.get("depths", (2, 2, 9, 2)))
    return build_model(
        VSSM, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(num_stages)), feature_cls="getter"), **kwargs,
    )


# The released v2 design (``forward_type="v05_noz"``) and the vanilla v0 design.
_V2 = dict(stem_type="v2", downsample_type="v3", d_state=1, conv_bias=False, gate=False, force_fp32=False,
           mlp_ratio=4.0)
_V0 = dict(stem_type="v1", downsample_type="v1", d_state=16, ssm_ratio=2.0, conv_bias=True, gate=True, force_fp32=True,
           mlp_ratio=0.0)


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-T [s1l8], the headline tiny model (30.25 M)."""
    args = dict(_V2, depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2)
    return _create_vssm("vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-S [s2l15] (50.15 M)."""
    args = dict(_V2, depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3)
    return _create_vssm("vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-B [s2l15] (88.56 M)."""
    args = dict(_V2, depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6)
    return _create_vssm("vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-T [s2l5] (30.71 M)."""
    args = dict(_V2, depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_vssm("vmamba_tiny_s2l5", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-S [s1l20] (49.01 M)."""
    args = dict(_V2, depths=(2, 2, 20, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3)
    return _create_vssm("vmamba_small_s1l20", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-B [s1l20] (86.61 M)."""
    args = dict(_V2, depths=(2, 2, 20, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.5)
    return _create_vssm("vmamba_base_s1l20", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_vanilla_tiny(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla VMamba-T (v0, 22.89 M)."""
    args = dict(_V0, depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2)
    return _create_vssm("vmamba_vanilla_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_vanilla_small(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla VMamba-S (v0, 44.42 M)."""
    args = dict(_V0, depths=(2, 2, 27, 2), dims=96, drop_path_rate=0.3)
    return _create_vssm("vmamba_vanilla_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_vanilla_base(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla VMamba-B (v0, 76.25 M)."""
    args = dict(_V0, depths=(2, 2, 27, 2), dims=128, drop_path_rate=0.5)
    return _create_vssm("vmamba_vanilla_base", pretrained, **dict(args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """A tiny v2 VMamba for CI (dims 16/32/64/128, depths 1/1/2/1)."""
    args = dict(_V2, depths=(1, 1, 2, 1), dims=16, ssm_ratio=2.0, drop_path_rate=0.0)
    return _create_vssm("test_vmamba", pretrained, **dict(args, **kwargs))

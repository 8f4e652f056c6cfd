"""Vision Mamba (Vim): a plain ViT-like stack of bidirectional Mamba blocks with a middle class token.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model" (Zhu et al.,
ICML 2024, arXiv 2401.09417). Official code: https://github.com/hustvl/Vim (``vim/models_mamba.py``, the mixer in
``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` with ``bimamba_type="v2"``), Apache-2.0.

The released models ("..._bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"):

- patch embed: Conv2d(3, D, kernel 16, stride 16), or stride 8 for the fine-tuned "+" models (overlapping patches,
  27 x 27 tokens at 224); no norm after it;
- a class token inserted in the middle of the M patch tokens, at index M // 2, then an absolute position embedding
  (1, M + 1, D);
- 24 residual-stream blocks (Add -> RMSNorm -> bidirectional Mamba mixer, residual kept in float32,
  :class:`~ssmzoo.layers.mamba_mixer.MambaBlock`), then ``norm_f(residual + hidden)``;
- the head reads the class token only.

Differences from the official code, all outside the released forward at 224 x 224:

- Any input size whose patch grid fits (``dynamic_img_size``, default True): the position embedding is resampled
  to the grid on the fly. The official ``PatchEmbed`` asserts the training size.
- Position-embedding resampling keeps the middle class token out of the interpolation
  (:func:`resample_pos_embed`). The official ``interpolate_pos_embed`` (DeiT's) assumes the class token at index 0:
  it keeps entry 0 (the first *patch*) aside and interpolates the other M entries as a grid, the class token's
  embedding included, which shifts every patch's embedding by one and smears the class embedding into the grid.
  Checkpoints stored at another grid (e.g. Ti/S weights loaded into a stride-8 model) are resampled the right way
  by :func:`checkpoint_filter_fn`; the released stride-8 fine-tunes already carry their 27 x 27 (+1) embedding.
- ``no_weight_decay`` also lists ``A_log``/``D`` (mamba_ssm tags them ``_no_weight_decay``); the official training
  script (timm 0.4 ``create_optimizer``) only spared 1-D tensors and the class/position tokens, so it decayed the
  2-D ``A_log``/``A_b_log``.
- ``drop_path_rate`` defaults to 0 (timm's convention; the official class defaults to 0.1 and its training scripts
  pass it explicitly).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    PatchEmbed,
    RmsNorm,
    lecun_normal_,
    resample_abs_pos_embed,
    resample_patch_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models._features import feature_take_indices

from ssmzoo.layers.mamba_mixer import MambaBlock, MambaMixer, init_mamba_residual_stream_

from ._builder import build_model
from ._registry import generate_default_cfgs, register_model

__all__ = ["VisionMamba", "checkpoint_filter_fn", "from_official", "official_parity", "resample_pos_embed"]


def _fit(size: int, kernel: int, stride: int) -> int:
    """Padding that makes (size - kernel) a non-negative multiple of stride."""
    return kernel - size if size < kernel else (-(size - kernel)) % stride


class VimPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with a stride (overlapping patches for the stride-8 models): (B, C, H, W) -> (B, gh, gw, D).

    ``gh = (H - patch) // stride + 1`` (and likewise gw). An input whose ``H - patch`` is not a multiple of the stride
    raises a ValueError, or is zero-padded at the bottom / right with ``dynamic_img_pad=True``.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, stride: int | None = None,
                 in_chans: int = 3, embed_dim: int = 192, strict_img_size: bool = True,
                 dynamic_img_pad: bool = False) -> None:
        self.stride = to_2tuple(stride or patch_size)  # read by _init_img_size inside PatchEmbed.__init__
        super().__init__(img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC",
                         strict_img_size=strict_img_size, dynamic_img_pad=dynamic_img_pad)
        if self.stride != self.patch_size:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def _init_img_size(self, img_size):
        if img_size is None:
            return None, None, None
        img_size = to_2tuple(img_size)
        grid_size = tuple((s - p) // t + 1 for s, p, t in zip(img_size, self.patch_size, self.stride, strict=True))
        return img_size, grid_size, grid_size[0] * grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return max(self.stride) if as_scalar else self.stride

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        sizes = []
        for s, p, t in zip(img_size, self.patch_size, self.stride, strict=True):
            s = s + _fit(s, p, t) if self.dynamic_img_pad else s
            sizes.append((s - p) // t + 1)
        return sizes[0], sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if self.strict_img_size and self.img_size is not None and (H, W) != self.img_size:
            raise ValueError(f"Input size ({H}, {W}) doesn't match the model's img_size {self.img_size} "
                             "(create the model with dynamic_img_size=True to accept other sizes)")
        pad_h, pad_w = (_fit(s, p, t) for s, p, t in zip((H, W), self.patch_size, self.stride, strict=True))
        if pad_h or pad_w:
            if not self.dynamic_img_pad:
                raise ValueError(
                    f"Input size ({H}, {W}) does not fit patch size {self.patch_size} with stride {self.stride}: "
                    f"size - patch must be a non-negative multiple of the stride (e.g. {H + pad_h} x {W + pad_w}); "
                    "resize the input or create the model with dynamic_img_pad=True to zero-pad it")
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x).permute(0, 2, 3, 1)


def resample_pos_embed(pos_embed: torch.Tensor, new_size: Sequence[int], old_size: Sequence[int],
                       cls_token: bool = True, cls_position: str = "middle", interpolation: str = "bicubic",
                       antialias: bool = True) -> torch.Tensor:
    """Resample a Vim position embedding from an ``old_size`` patch grid to ``new_size``.

    pos_embed: (1, M + 1, D) with the class token's entry at ``M // 2`` (``cls_position="middle"``) or 0
    (``"head"``), or (1, M, D) without a class token; M = old_size[0] * old_size[1], row-major.
    Returns (1, M' + 1, D) (or (1, M', D)) with the class entry at ``M' // 2`` (or 0), unchanged: only the patch
    entries are interpolated (timm's ``resample_abs_pos_embed``, bicubic, antialiased when shrinking).
    """
    old_size, new_size = tuple(old_size), tuple(new_size)
    if old_size == new_size:
        return pos_embed
    M = old_size[0] * old_size[1]
    if pos_embed.shape[1] != M + int(cls_token):
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)} does not hold {M} patch entries (grid {old_size})"
                         f"{' and a class token' if cls_token else ''}")
    if not cls_token:
        return resample_abs_pos_embed(pos_embed, list(new_size), list(old_size), num_prefix_tokens=0,
                                      interpolation=interpolation, antialias=antialias)
    i = _cls_index(M, cls_position)
    grid = torch.cat([pos_embed[:, :i], pos_embed[:, i + 1:]], dim=1)
    grid = resample_abs_pos_embed(grid, list(new_size), list(old_size), num_prefix_tokens=0,
                                  interpolation=interpolation, antialias=antialias)
    j = _cls_index(new_size[0] * new_size[1], cls_position)
    return torch.cat([grid[:, :j], pos_embed[:, i:i + 1], grid[:, j:]], dim=1)


def _cls_index(num_patches: int, cls_position: str) -> int:
    return num_patches // 2 if cls_position == "middle" else 0


class VisionMamba(nn.Module):
    """Vision Mamba: (B, in_chans, H, W) -> (B, num_classes).

    Tokens are (B, T, D) with T = M + 1 (M patches of a gh x gw grid and the class token at ``M // 2``).
    ``forward_features`` returns ``norm_f`` of the final residual stream (B, T, D); ``forward_head`` pools the class
    token (``global_pool="token"``) or averages the patch tokens (``"avg"``). ``forward_intermediates`` gives,
    per block, the residual stream after it (what the next block normalises) as NCHW (B, D, gh, gw) maps without the
    class token, or the mixer output alone with ``intermediate_output="mixer"`` (the official segmentation
    backbone's features).

    Args:
        img_size: training image size; the position embedding's native grid.
        patch_size: patch (kernel) size.
        stride: patch stride (None: = patch_size; 8 for the "+" models).
        in_chans, num_classes: input channels, classes (0: no head).
        global_pool: "token" (class token), "avg" (mean of the patch tokens, or of all tokens without class
            token) or "" (no pooling: forward_head returns the tokens).
        embed_dim: D; depth: number of blocks.
        d_state: N of the mixers; ssm_cfg: other :class:`MambaMixer` arguments (d_conv, expand, dt_rank, dt_min...).
        bimamba_type: "v2" (bidirectional, the released models) or "none" (causal Mamba).
        if_divide_out: merge the two directions by mean (True, released) or sum.
        init_layer_scale: layer scale of the mixers (None: off).
        class_token: use a class token; cls_position: "middle" (released) or "head".
        rms_norm: RMSNorm (True, released) or LayerNorm; norm_eps: their eps.
        residual_in_fp32: keep the residual stream in float32.
        drop_rate: dropout before the head; pos_drop_rate: dropout after the position embedding (the official
            ``drop_rate``); drop_path_rate: stochastic depth, official schedule ``[0] + linspace(0, rate, depth)``
            over the blocks' incoming hidden states and the full rate before ``norm_f``.
        dynamic_img_size: accept any input size (position embedding resampled per forward); dynamic_img_pad:
            zero-pad inputs whose size does not fit the patch grid.
        intermediate_output: "residual" or "mixer", see above.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, stride: int | None = None,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 192,
                 depth: int = 24, d_state: int = 16, ssm_cfg: dict[str, Any] | None = None, bimamba_type: str = "v2",
                 if_divide_out: bool = True, init_layer_scale: float | None = None, class_token: bool = True,
                 cls_position: str = "middle", rms_norm: bool = True, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dynamic_img_size: bool = True, dynamic_img_pad: bool = False,
                 intermediate_output: str = "residual") -> None:
        super().__init__()
        if global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if cls_position not in ("middle", "head"):
            raise ValueError(f"cls_position must be 'middle' or 'head', got {cls_position!r}")
        if intermediate_output not in ("residual", "mixer"):
            raise ValueError(f"intermediate_output must be 'residual' or 'mixer', got {intermediate_output!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_position = cls_position
        self.bimamba_type = bimamba_type
        self.dynamic_img_size = dynamic_img_size
        self.intermediate_output = intermediate_output
        self.grad_checkpointing = False

        self.patch_embed = VimPatchEmbed(img_size, patch_size, stride, in_chans, embed_dim,
                                         strict_img_size=not dynamic_img_size, dynamic_img_pad=dynamic_img_pad)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        norm_layer = partial(RmsNorm, eps=norm_eps) if rms_norm else partial(nn.LayerNorm, eps=norm_eps)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # official float32 rates
        mixer = partial(MambaMixer, d_state=d_state, bimamba_type=bimamba_type, if_divide_out=if_divide_out,
                        init_layer_scale=init_layer_scale, **(ssm_cfg or {}))
        self.layers = nn.ModuleList([
            MambaBlock(embed_dim, mixer(embed_dim), norm_layer, drop_path=dpr[i], residual_in_fp32=residual_in_fp32)
            for i in range(depth)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm_f = norm_layer(embed_dim)
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}") for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        """The official init: lecun-normal patch conv, trunc-normal(0.02) head / pos_embed / cls_token, then
        mamba_ssm's model-level pass (Linear biases zeroed except the forward dt_proj's, out_proj rescaled)."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(partial(init_mamba_residual_stream_, n_layer=depth))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed", "*.A_log", "*.A_b_log", "*.D", "*.D_b"}
        if self.cls_token is not None:
            names.add("cls_token")
        if self.bimamba_type == "none":
            names -= {"*.A_b_log", "*.D_b"}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "token", "avg") or (global_pool == "token" and self.cls_token is None):
                raise ValueError(f"global_pool {global_pool!r} is not available for this model")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # --- forward pieces ----------------------------------------------------------------------------------------

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, gh, gw, D) -> tokens (B, T, D) with the class token inserted and positions added."""
        B, gh, gw, D = x.shape
        x = x.reshape(B, gh * gw, D)
        pos_embed = self.pos_embed
        if (gh, gw) != tuple(self.patch_embed.grid_size):
            pos_embed = resample_pos_embed(pos_embed, (gh, gw), self.patch_embed.grid_size,
                                           cls_token=self.cls_token is not None, cls_position=self.cls_position)
        if self.cls_token is not None:
            i = _cls_index(gh * gw, self.cls_position)
            x = torch.cat([x[:, :i], self.cls_token.expand(B, -1, -1).to(x.dtype), x[:, i:]], dim=1)
        return self.pos_drop(x + pos_embed)

    def _block(self, block: MambaBlock, hidden: torch.Tensor, residual: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(block, hidden, residual, use_reentrant=False)
        return block(hidden, residual)

    def _stream(self, i: int, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after block i: what block i + 1 (or norm_f after the last) adds up and normalises."""
        if residual is None:  # no block ran
            return hidden
        drop_path = self.layers[i + 1].drop_path if i + 1 < len(self.layers) else self.drop_path
        return residual + drop_path(hidden)

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, M, D) without the class token."""
        if self.cls_token is None:
            return x
        i = _cls_index(x.shape[1] - 1, self.cls_position)
        return torch.cat([x[:, :i], x[:, i + 1:]], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, T, D), class token at (T - 1) // 2."""
        hidden, residual = self._pos_embed(self.patch_embed(x)), None
        for block in self.layers:
            hidden, residual = self._block(block, hidden, residual)
        return self.norm_f(self._stream(len(self.layers) - 1, hidden, residual))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes), or the pooled (B, D) with pre_logits."""
        if self.global_pool == "token":
            x = x[:, _cls_index(x.shape[1] - 1, self.cls_position)]
        elif self.global_pool == "avg":
            x = self._patch_tokens(x).mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-block token maps (see the class docstring) and the final features.

        Args:
            x: (B, C, H, W).
            indices: blocks to return (list), or the last n blocks (int); None: all.
            norm: apply ``norm_f`` to each intermediate.
            stop_early: stop after the last requested block (the final features then come from it).
            output_fmt: "NCHW" (B, D, gh, gw) or "NLC" (B, M, D), class token excluded either way.
            intermediates_only: return the list only.

        Returns:
            list of maps, or (final tokens (B, T, D) normalised as by forward_features, list of maps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x = self.patch_embed(x)
        B, gh, gw, _ = x.shape
        hidden, residual = self._pos_embed(x), None
        blocks = self.layers[: max_index + 1] if stop_early or intermediates_only else self.layers
        intermediates = []
        for i, block in enumerate(blocks):
            hidden, residual = self._block(block, hidden, residual)
            if i not in take_indices:
                continue
            feat = hidden if self.intermediate_output == "mixer" else self._stream(i, hidden, residual)
            feat = self._patch_tokens(self.norm_f(feat) if norm else feat)
            if output_fmt == "NCHW":
                feat = feat.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append(feat)
        if intermediates_only:
            return intermediates
        return self.norm_f(self._stream(len(blocks) - 1, hidden, residual)), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the blocks up to the last of ``indices``; optionally drop norm_f and the head. Returns the kept
        indices."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        if max_index + 1 < len(self.layers):
            # The stream after the new last block keeps the drop-path rate the next block gave it.
            self.drop_path = self.layers[max_index + 1].drop_path
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- official checkpoints ------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionMamba) -> dict[str, torch.Tensor]:
    """Official Vim state_dict (or the DeiT-style checkpoint dict holding it under ``model``) -> ours.

    The key names are the official ones. What changes: a position embedding stored for another grid is resampled
    with the class entry kept out of the interpolation (official checkpoints are square grids), a class token is
    dropped (with its position entry) for a model without one, and a patch kernel of another size is resampled.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    had_cls = "cls_token" in state_dict
    out = {}
    for key, value in state_dict.items():
        if key == "cls_token" and model.cls_token is None:
            continue
        if key == "patch_embed.proj.weight" and value.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            value = resample_patch_embed(value, list(model.patch_embed.proj.weight.shape[-2:]))
        if key == "pos_embed":
            value = _adapt_pos_embed(value, model, had_cls)
        out[key] = value
    return out


def _adapt_pos_embed(pos_embed: torch.Tensor, model: VisionMamba, had_cls: bool) -> torch.Tensor:
    M = pos_embed.shape[1] - int(had_cls)
    if M != model.patch_embed.num_patches:
        side = math.isqrt(M)
        if side * side != M:
            raise ValueError(f"checkpoint pos_embed {tuple(pos_embed.shape)} is not for the model's "
                             f"{model.patch_embed.grid_size} grid and not for a square grid either")
        pos_embed = resample_pos_embed(pos_embed, model.patch_embed.grid_size, (side, side), cls_token=had_cls,
                                       cls_position=model.cls_position)
    if had_cls and model.cls_token is None:
        i = _cls_index(pos_embed.shape[1] - 1, model.cls_position)
        pos_embed = torch.cat([pos_embed[:, :i], pos_embed[:, i + 1:]], dim=1)
    return pos_embed


# Official VisionMamba arguments that only select code paths the released models do not take.
_OFFICIAL_UNSUPPORTED = {
    "if_bidirectional": False, "if_rope": False, "use_double_cls_token": False, "if_bimamba": False,
}
# Official arguments without an effect on the values computed here (fused kernels, RoPE sizes, init only).
_OFFICIAL_IGNORED = {"fused_add_norm", "device", "dtype", "initializer_cfg", "ft_seq_len", "pt_hw_seq_len",
                     "if_rope_residual", "if_devide_out"}


def from_official(constructor: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> VisionMamba:
    """Our model equivalent to an official ``VisionMamba(**constructor["kwargs"])``, with the converted official
    weights loaded when ``state_dict`` (official keys, or the checkpoint dict) is given.

    Raises ValueError for official options no released model uses (RoPE, the paired-layer "bidirectional" stack,
    double class tokens, bimamba v1, random sequence flips or class-token positions, max/all pooling).
    """
    if constructor.get("cls", "VisionMamba") != "VisionMamba":
        raise ValueError(f"from_official builds hustvl/Vim VisionMamba, not {constructor.get('cls')!r}")
    kw = dict(constructor.get("kwargs", {}))
    for name, supported in _OFFICIAL_UNSUPPORTED.items():
        if bool(kw.pop(name, supported)) != supported:
            raise ValueError(f"official option {name}={not supported} is not supported")
    if kw.pop("flip_img_sequences_ratio", -1.0) > 0:
        raise ValueError("official option flip_img_sequences_ratio > 0 (random sequence flips) is not supported")
    if kw.pop("if_abs_pos_embed", True) is not True:
        raise ValueError("official option if_abs_pos_embed=False is not supported")
    class_token = bool(kw.pop("if_cls_token", True))
    final_pool_type = kw.pop("final_pool_type", "none")
    if not class_token and final_pool_type != "mean":
        raise ValueError(f"official final_pool_type={final_pool_type!r} without class token is not supported")
    bimamba_type = kw.pop("bimamba_type", "v2")
    if bimamba_type not in ("v2", "none"):
        raise ValueError(f"official bimamba_type={bimamba_type!r} is not supported")
    for name in _OFFICIAL_IGNORED:
        kw.pop(name, None)
    args = dict(
        img_size=kw.pop("img_size", 224), patch_size=kw.pop("patch_size", 16), stride=kw.pop("stride", 16),
        depth=kw.pop("depth", 24), embed_dim=kw.pop("embed_dim", 192), d_state=kw.pop("d_state", 16),
        in_chans=kw.pop("channels", 3), num_classes=kw.pop("num_classes", 1000), ssm_cfg=kw.pop("ssm_cfg", None),
        pos_drop_rate=kw.pop("drop_rate", 0.0), drop_path_rate=kw.pop("drop_path_rate", 0.1),
        norm_eps=kw.pop("norm_epsilon", 1e-5), rms_norm=kw.pop("rms_norm", True),
        residual_in_fp32=kw.pop("residual_in_fp32", True), bimamba_type=bimamba_type,
        if_divide_out=kw.pop("if_divide_out", True), init_layer_scale=kw.pop("init_layer_scale", None),
        class_token=class_token, cls_position="middle" if kw.pop("use_middle_cls_token", True) else "head",
        global_pool="token" if class_token else "avg", dynamic_img_size=False,
    )
    if kw:
        raise ValueError(f"unknown official VisionMamba arguments: {sorted(kw)}")
    model = VisionMamba(**args)
    if state_dict is not None:
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    return model


# The fixture's fields are all reproduced (output, features, block_outputs).
PARITY_NOT_REPRODUCED: dict[str, str] = {}


@torch.no_grad()
def official_parity(model: VisionMamba, fixture: dict[str, Any]) -> dict[str, Any]:
    """Our values for the fields of the official parity fixture (``../shared/fixtures/parity/vim.pt``):
    ``output`` (logits), ``features`` (``forward(x, return_features=True)``: the normalised class token) and
    ``block_outputs`` (per block, the ``(hidden_states, residual)`` pair that the official ``Block`` returns)."""
    model.eval()
    x = fixture["input"].float()
    hidden, residual = model._pos_embed(model.patch_embed(x)), None
    blocks = []
    for block in model.layers:
        hidden, residual = block(hidden, residual)
        blocks.append(dict(hidden_states=hidden, residual=residual))
    features = model.forward_features(x)
    return dict(output=model.forward_head(features), features=model.forward_head(features, pre_logits=True),
                block_outputs=blocks)


# --- registry ------------------------------------------------------------------------------------------------------


def _cfg(url: str = "", **kwargs) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "min_input_size": (3, 64, 64),
        "pool_size": None, "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj",
        "classifier": "head", "license": "apache-2.0", "paper_ids": "arXiv:2401.09417", "paper_name": "Vision Mamba",
        "origin_url": "https://github.com/hustvl/Vim", "checkpoint_key": "model", "sha256": None, **kwargs,
    }


_HF = "https://huggingface.co/hustvl"

default_cfgs = generate_default_cfgs({
    # Official ImageNet-1k weights (Hugging Face, files of the hustvl/Vim README's model table). Their sha256 is
    # not known here: the hub records the first download's hash and checks later uses against it.
    "vim_tiny.in1k": _cfg(url=f"{_HF}/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth"),
    "vim_small.in1k": _cfg(url=f"{_HF}/Vim-small-midclstok/resolve/main/vim_s_midclstok_80p5acc.pth"),
    "vim_base.in1k": _cfg(url=f"{_HF}/Vim-base-midclstok/resolve/main/vim_b_midclstok_81p9acc.pth"),
    # The "+" models: Ti/S fine-tuned 30 epochs at stride 8 (27 x 27 tokens).
    "vim_tiny_stride8.in1k": _cfg(url=f"{_HF}/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_stride8.in1k": _cfg(url=f"{_HF}/Vim-small-midclstok/resolve/main/vim_s_midclstok_ft_81p6acc.pth"),
    "test_vim": _cfg(num_classes=10, input_size=(3, 32, 32), min_input_size=(3, 8, 8), crop_pct=1.0,
                     license=None, checkpoint_key=None),
})


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model(VisionMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                       feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: D 192, 24 blocks, patch 16 (7.15 M parameters)."""
    return _create_vim("vim_tiny", pretrained, **dict(dict(patch_size=16, embed_dim=192, depth=24), **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: D 384, 24 blocks, patch 16 (25.80 M parameters)."""
    return _create_vim("vim_small", pretrained, **dict(dict(patch_size=16, embed_dim=384, depth=24), **kwargs))


@register_model
def vim_base(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: D 768, 24 blocks, patch 16 (97.60 M parameters)."""
    return _create_vim("vim_base", pretrained, **dict(dict(patch_size=16, embed_dim=768, depth=24), **kwargs))


@register_model
def vim_tiny_stride8(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+: Vim-Ti with 16 x 16 patches at stride 8 (7.25 M parameters)."""
    args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim("vim_tiny_stride8", pretrained, **dict(args, **kwargs))


@register_model
def vim_small_stride8(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+: Vim-S with 16 x 16 patches at stride 8 (26.00 M parameters)."""
    args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim("vim_small_stride8", pretrained, **dict(args, **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> VisionMamba:
    """A tiny Vim for tests: 32 x 32 input, patch 8 (16 tokens + class token), D 32, 3 blocks, N 8."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, d_state=8)
    return _create_vim("test_vim", pretrained, **dict(args, **kwargs))

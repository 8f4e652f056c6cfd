"""Dual-path Mamba (DPMamba) and Mamba-TasNet: time-domain speech separators with bidirectional Mamba mask nets.

Papers: "Dual-path Mamba: Short and Long-term Bidirectional Selective Structured State Space Models for Speech
Separation" (Jiang, Han, Mesgarani, arXiv 2403.18257) and "Speech Slytherin: Examining the Performance and
Efficiency of Mamba for Speech Separation, Recognition, and Synthesis" (arXiv 2407.09732, Mamba-TasNet).
Official code: https://github.com/xi-j/Mamba-TasNet (a SpeechBrain recipe: ``modules/mamba_blocks.py``,
``modules/mamba_masknet.py``, ``modules/mamba/bimamba.py``, with SpeechBrain's ``lobes/models/dual_path.py`` for the
encoder, the dual-path mask net and the decoder), Apache-2.0.

Both separators are encoder -> mask net -> decoder on 8 kHz waveforms, ``(B, T) -> (B, S, T)`` float32:

- encoder: ``Conv1d(1, N, 16, stride 8, no bias)`` + ReLU -> ``(B, N, L)``, L = (T - 16) // 8 + 1;
- mask net -> ``(S, B, N, L)`` non-negative masks;
- decoder: ``ConvTranspose1d(N, 1, 16, stride 8, no bias)`` on ``encoder_out * mask_s`` -> (L - 1) * 8 + 16 samples,
  zero-padded or cropped to T.

DPMamba's mask net is SpeechBrain's ``Dual_Path_Model`` with Mamba blocks: GroupNorm(1, N, eps 1e-8) + 1x1 conv,
chunks of K frames at 50 % overlap (:func:`chunk`, the official padding), R dual-path blocks (intra-chunk then
inter-chunk ``MambaBlocksSequential`` of bidirectional Mamba, each followed by GroupNorm; ``out = inter + intra``,
optionally with a skip around intra), PReLU + 1x1 Conv2d to S masks, overlap-add (:func:`overlap_add`),
``tanh(conv) * sigmoid(conv)``, a 1x1 conv and ReLU. Mamba-TasNet's mask net runs one ``MambaBlocksSequential``
over all L frames (no chunking) between a channel-wise LayerNorm + bottleneck and a 1x1 mask conv. Its GroupNorms
are :class:`~ssmzoo.layers.norm.LargeGroupNorm` (``nn.GroupNorm``'s math and keys; on CUDA their statistics come
from a reduction over the whole GPU instead of PyTorch's one block per item).

The Mamba blocks are the shared :class:`~ssmzoo.layers.mamba_mixer.MambaMixer` (``bimamba_type="v2"``,
directions averaged, one :func:`ssmzoo.ops.selective_scan` call with both routes) inside the shared residual-stream
:class:`~ssmzoo.layers.mamba_mixer.MambaBlock`, with pre-norm RMSNorm (eps 1e-5) and a final ``norm_f``.

Parameter and module names are the official ones, so a SpeechBrain checkpoint folder (``encoder.ckpt``,
``masknet.ckpt``, ``decoder.ckpt``) loads through :func:`read_speechbrain_checkpoint` and
:func:`checkpoint_filter_fn`. The official weights are on Google Drive only (no stable URL), so no tag downloads
them; ``dpmamba_xs.tts2mix`` holds the separator trained here (``weights/``, loaded offline).

Differences from the official code, none in the computed values:

- The output is ``(B, S, T)`` (Asteroid's and torchmetrics' layout); the official recipe returns ``(B, T, S)``.
- Mamba-TasNet's channel-wise LayerNorm is ``nn.LayerNorm`` over channels (same math, eps 1e-8) and its 1x1
  convs are plain ``nn.Conv1d``; :func:`checkpoint_filter_fn` maps the official ``gamma``/``beta`` and
  SpeechBrain ``.conv.`` keys.
- The official fused kernels run the backward direction on flipped tensors; the shared mixer scans it in place
  (same arithmetic, see ``ssmzoo/layers/mamba_mixer.py``).
"""
from __future__ import annotations

import copy
import importlib.resources
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import RmsNorm
from timm.models import resolve_pretrained_cfg

from ssmzoo.layers.mamba_mixer import MambaBlock, MambaMixer, init_mamba_residual_stream_
from ssmzoo.layers.norm import LargeGroupNorm
from ssmzoo.ops.selective_scan.checks import is_tracing

from ._builder import build_model
from ._registry import generate_default_cfgs, register_model

__all__ = [
    "DPMamba",
    "DualPathMaskNet",
    "MambaBlocksSequential",
    "MambaTasNet",
    "MambaTasNetMaskNet",
    "checkpoint_filter_fn",
    "chunk",
    "from_official",
    "official_parity",
    "overlap_add",
    "read_speechbrain_checkpoint",
]



def _bundled_weights_dir() -> Path:
    """The weights shipped with ssmzoo: the package ``ssmzoo.weights`` of an install (a wheel carries them; an
    editable install maps it to the repository's ``weights/``), or ``weights/`` of a checkout used without install."""
    try:
        return Path(str(importlib.resources.files("ssmzoo.weights")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "weights"


WEIGHTS_DIR = _bundled_weights_dir()


# --- building blocks -------------------------------------------------------------------------------------------


class MambaBlocksSequential(nn.Module):
    """Mamba-TasNet's ``MambaBlocksSequential``: ``n_mamba`` residual-stream Mamba blocks and a final RMSNorm.

    ``(B, L, d_model) -> (B, L, d_model)``: block i computes ``h_i = mixer(norm(r_i))`` with ``r_0 = x`` and
    ``r_i = r_{i-1} + h_{i-1}``; the output is ``norm_f(r_last + h_last)``. Keys ``layers.{i}.{norm,mixer}.*`` and
    ``norm_f.weight`` as in the official module. Initialisation: mamba_ssm's (``_init_weights`` with
    ``n_layer=n_mamba``: Linear biases zeroed except ``dt_proj.bias``, ``out_proj`` rescaled by 1/sqrt(n_mamba)).

    Without autograd (and not while tracing for export), a batch of more than ``inference_positions`` sequence
    positions runs in slices of whole sequences (the sequences are independent, so the result is the same): a
    dual-path model on a long file then holds the Mamba layers' temporaries for one slice only, and its memory grows
    with the file only by the few (N, K, S) activations between blocks.
    """

    inference_positions = 2**14

    def __init__(self, n_mamba: int, d_model: int, bidirectional: bool = True, d_state: int = 16, expand: int = 2,
                 d_conv: int = 4, dt_rank: int | str = "auto", conv_bias: bool = True, bias: bool = False,
                 rms_norm: bool = True, norm_eps: float = 1e-5, residual_in_fp32: bool = False,
                 if_divide_out: bool = True) -> None:
        super().__init__()
        norm_layer = partial(RmsNorm, eps=norm_eps) if rms_norm else partial(nn.LayerNorm, eps=norm_eps)
        mixer = partial(MambaMixer, d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                        conv_bias=conv_bias, bias=bias, bimamba_type="v2" if bidirectional else "none",
                        if_divide_out=if_divide_out)
        self.layers = nn.ModuleList([MambaBlock(d_model, mixer(), norm_layer, residual_in_fp32=residual_in_fp32)
                                     for _ in range(n_mamba)])
        self.norm_f = norm_layer(d_model)
        self.apply(partial(init_mamba_residual_stream_, n_layer=n_mamba))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape[:2]
        per_slice = max(1, self.inference_positions // max(L, 1))
        if torch.is_grad_enabled() or B <= per_slice or is_tracing():  # an exported graph must not bake in slices
            return self._blocks(x)
        out = x.new_empty(x.shape[:2] + (self.norm_f.weight.shape[0],), dtype=self.norm_f.weight.dtype)
        for start in range(0, B, per_slice):
            out[start:start + per_slice] = self._blocks(x[start:start + per_slice])
        return out

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))


def chunk(x: torch.Tensor, K: int) -> tuple[torch.Tensor, int]:
    """SpeechBrain's ``_Segmentation``: ``(B, N, L) -> ((B, N, K, S), gap)``, chunks of K frames at hop P = K // 2.

    The frames are padded as ``[P zeros | x | gap zeros | P zeros]`` with ``gap = K - (P + L % K) % K`` (in
    [1, K]: a whole chunk of zeros is added when P + L is a multiple of K, as in the official code). The chunks
    interleave two hop-K streams started at 0 and at P, so for even K chunk s covers ``padded[s * P : s * P + K]``;
    S = 2 (L + gap + P) / K is even.
    """
    B, N, L = x.shape
    P = K // 2
    gap = K - (P + L % K) % K
    x = F.pad(x, (P, gap + P))
    first = x[..., :-P].reshape(B, N, -1, K)  # chunks 0, 2, 4, ... (hop K from 0)
    second = x[..., P:].reshape(B, N, -1, K)  # chunks 1, 3, 5, ... (hop K from P)
    return torch.stack([first, second], dim=3).reshape(B, N, -1, K).transpose(2, 3), gap


def overlap_add(x: torch.Tensor, gap: int) -> torch.Tensor:
    """SpeechBrain's ``_over_add``, the inverse of :func:`chunk`'s layout: ``(B, N, K, S) -> (B, N, L)``.

    Overlapping halves are summed (not averaged), then the P leading frames and P + gap trailing ones are dropped.
    """
    B, N, K, S = x.shape
    P = K // 2
    x = x.transpose(2, 3).reshape(B, N, -1, 2 * K)
    first = x[..., :K].reshape(B, N, -1)[..., P:]
    second = x[..., K:].reshape(B, N, -1)[..., :-P]
    out = first + second
    return out[..., :-gap] if gap > 0 else out


class DualComputationBlock(nn.Module):
    """SpeechBrain's ``Dual_Computation_Block`` (``norm="ln"``, no linear layers): ``(B, N, K, S)`` in and out.

    ``intra = GroupNorm(intra_mdl(x over K))`` (+ x with ``skip_around_intra``), then
    ``inter = GroupNorm(inter_mdl(intra over S))``, and the block returns ``inter + intra``.
    """

    def __init__(self, intra_mdl: nn.Module, inter_mdl: nn.Module, channels: int,
                 skip_around_intra: bool = False) -> None:
        super().__init__()
        self.intra_mdl, self.inter_mdl = intra_mdl, inter_mdl
        self.skip_around_intra = skip_around_intra
        # SpeechBrain's "ln" is GroupNorm(1, N) with eps 1e-8: statistics over N, K and S of each item.
        self.intra_norm = LargeGroupNorm(1, channels, eps=1e-8)
        self.inter_norm = LargeGroupNorm(1, channels, eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, K, S = x.shape
        intra = self.intra_mdl(x.permute(0, 3, 2, 1).reshape(B * S, K, N))  # sequences over K, batch-major
        intra = self.intra_norm(intra.reshape(B, S, K, N).permute(0, 3, 2, 1))
        if self.skip_around_intra:
            intra = intra + x
        inter = self.inter_mdl(intra.permute(0, 2, 3, 1).reshape(B * K, S, N))  # sequences over S
        inter = self.inter_norm(inter.reshape(B, K, S, N).permute(0, 3, 1, 2))
        return inter + intra


class DualPathMaskNet(nn.Module):
    """SpeechBrain ``Dual_Path_Model`` with bidirectional Mamba intra/inter models: ``(B, N, L) -> (S, B, N, L)``.

    Args:
        in_channels: N, the encoder's channels.
        out_channels: width of the dual-path blocks (the official configs use N).
        num_layers: R, dual-path blocks.
        K: chunk length in frames (250 = 125 ms at stride 8, 8 kHz).
        num_spks: S.
        skip_around_intra: add the block input after the intra norm (dpmamba_M / _L).
        mamba_kwargs: :class:`MambaBlocksSequential` arguments (``n_mamba`` per path included).

    Every block starts as a copy of the first one, as the official constructor deep-copies one
    ``Dual_Computation_Block``; the blocks then train apart.
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 8, K: int = 250, num_spks: int = 2,
                 skip_around_intra: bool = False, **mamba_kwargs: Any) -> None:
        super().__init__()
        self.K, self.num_spks, self.grad_checkpointing = K, num_spks, False
        self.norm = LargeGroupNorm(1, in_channels, eps=1e-8)
        self.conv1d = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        block = DualComputationBlock(MambaBlocksSequential(d_model=out_channels, **mamba_kwargs),
                                     MambaBlocksSequential(d_model=out_channels, **mamba_kwargs), out_channels,
                                     skip_around_intra=skip_around_intra)
        self.dual_mdl = nn.ModuleList([copy.deepcopy(block) for _ in range(num_layers)])
        self.conv2d = nn.Conv2d(out_channels, out_channels * num_spks, kernel_size=1)
        self.end_conv1x1 = nn.Conv1d(out_channels, in_channels, 1, bias=False)
        self.prelu = nn.PReLU()
        self.output = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Tanh())
        self.output_gate = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(self.norm(x))
        x, gap = chunk(x, self.K)
        for block in self.dual_mdl:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.conv2d(self.prelu(x))
        B, _, K, S = x.shape
        x = overlap_add(x.reshape(B * self.num_spks, -1, K, S), gap)  # (B*S_spk, out_channels, L)
        x = self.end_conv1x1(self.output(x) * self.output_gate(x))
        x = F.relu(x.reshape(B, self.num_spks, x.shape[1], x.shape[2]))
        return x.transpose(0, 1)


class MambaTasNetMaskNet(nn.Module):
    """Mamba-TasNet's ``MaskNet``: ``(B, N, L) -> (S, B, N, L)`` ReLU masks from one bidirectional Mamba stack.

    Channel-wise LayerNorm (eps 1e-8) -> 1x1 bottleneck conv (no bias) -> :class:`MambaBlocksSequential` over all
    L frames -> 1x1 conv to S * N channels (no bias) -> ReLU.
    """

    def __init__(self, enc_dim: int, bot_dim: int, n_spk: int = 2, **mamba_kwargs: Any) -> None:
        super().__init__()
        self.n_spk, self.grad_checkpointing = n_spk, False
        self.layer_norm = nn.LayerNorm(enc_dim, eps=1e-8)
        self.bottleneck_conv1x1 = nn.Conv1d(enc_dim, bot_dim, 1, bias=False)
        self.mamba_net = MambaBlocksSequential(d_model=bot_dim, **mamba_kwargs)
        self.mask_conv1x1 = nn.Conv1d(bot_dim, n_spk * enc_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, L = x.shape
        y = self.bottleneck_conv1x1(self.layer_norm(x.transpose(1, 2)).transpose(1, 2))
        y = self.mamba_net(y.transpose(1, 2)).transpose(1, 2)
        score = self.mask_conv1x1(y).reshape(B, self.n_spk, N, L)
        return F.relu(score).transpose(0, 1)


class Encoder(nn.Module):
    """SpeechBrain ``dual_path.Encoder``: ``(B, T) -> (B, N, L)``, ReLU(Conv1d(1, N, k, stride k // 2, no bias))."""

    def __init__(self, out_channels: int, kernel_size: int = 16) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(1, out_channels, kernel_size, stride=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1d(x.unsqueeze(1)))


# --- the separators ----------------------------------------------------------------------------------------------


class _MaskingSeparator(nn.Module):
    """Encoder -> mask net -> decoder, the structure shared by DPMamba and Mamba-TasNet (see the module docstring).

    Subclasses set ``self.masknet``. ``forward(mix (B, T) or (T,)) -> (B, S, T)`` float32 (a 1-D input gives
    ``(S, T)``). T must be at least ``kernel_size`` samples.
    """

    def __init__(self, enc_channels: int, kernel_size: int, num_spks: int, sample_rate: int) -> None:
        super().__init__()
        self.num_spks, self.kernel_size, self.sample_rate = num_spks, kernel_size, sample_rate
        self.encoder = Encoder(enc_channels, kernel_size)
        self.decoder = nn.ConvTranspose1d(enc_channels, 1, kernel_size, stride=kernel_size // 2, bias=False)
        self.masknet: nn.Module

    def encode(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, N, L)`` encoder output."""
        if mix.shape[-1] < self.kernel_size:
            raise ValueError(f"{type(self).__name__}: input of {mix.shape[-1]} samples is shorter than the encoder "
                             f"kernel ({self.kernel_size} samples)")
        return self.encoder(mix)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        squeeze = mix.ndim == 1
        if squeeze:
            mix = mix.unsqueeze(0)
        if mix.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects a (B, T) waveform batch, got shape {tuple(mix.shape)}")
        T = mix.shape[-1]
        w = self.encode(mix)
        masks = self.masknet(w)  # (S, B, N, L)
        S, B, N, L = masks.shape
        est = self.decoder((w.unsqueeze(0) * masks).reshape(S * B, N, L))  # (S*B, 1, (L-1)*stride + kernel)
        est = est.reshape(S, B, -1).transpose(0, 1)
        # The decoder's length differs from T by up to stride - 1 samples: pad the end or crop, as the recipe does.
        est = F.pad(est, (0, T - est.shape[-1])) if est.shape[-1] < T else est[..., :T]
        return est[0] if squeeze else est

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.masknet.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # mamba_ssm tags A_log and D ``_no_weight_decay`` (the official recipe uses no weight decay at all).
        return {"*.A_log", "*.A_b_log", "*.D", "*.D_b"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        dual = hasattr(self.masknet, "dual_mdl")
        blocks = r"^masknet\.dual_mdl\.(\d+)" if dual else r"^masknet\.mamba_net\.layers\.(\d+)"
        return dict(stem=r"^encoder|^masknet\.(norm|conv1d|layer_norm|bottleneck)", blocks=blocks)


class DPMamba(_MaskingSeparator):
    """Dual-path Mamba separator: ``(B, T)`` mixtures -> ``(B, num_spks, T)`` estimates, float32, at 8 kHz.

    Args:
        num_spks: S, sources separated.
        enc_channels: N, encoder filters (128 XS, 256 S/M, 512 L).
        channels: width of the dual-path blocks (the official configs use N).
        kernel_size: encoder / decoder filter length (stride kernel_size // 2).
        num_blocks: R, dual-path blocks (8 XS/S, 16 M/L).
        chunk_size: K, frames per chunk.
        skip_around_intra: skip connection around the intra model (M/L).
        n_mamba: Mamba blocks per intra / inter model (official: n_mamba_dp // 2 = 1).
        d_state, expand, d_conv, dt_rank, conv_bias, bias, rms_norm, norm_eps, residual_in_fp32, bidirectional,
            if_divide_out: the Mamba blocks' settings (defaults: the official ones).
        sample_rate: the rate the model was trained at (a property of the weights, used by the Separator task).
    """

    def __init__(self, num_spks: int = 2, enc_channels: int = 128, channels: int | None = None,
                 kernel_size: int = 16, num_blocks: int = 8, chunk_size: int = 250, skip_around_intra: bool = False,
                 n_mamba: int = 1, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | str = "auto",
                 conv_bias: bool = True, bias: bool = False, rms_norm: bool = True, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = False, bidirectional: bool = True, if_divide_out: bool = True,
                 sample_rate: int = 8000) -> None:
        super().__init__(enc_channels, kernel_size, num_spks, sample_rate)
        self.masknet = DualPathMaskNet(
            enc_channels, channels or enc_channels, num_layers=num_blocks, K=chunk_size, num_spks=num_spks,
            skip_around_intra=skip_around_intra, n_mamba=n_mamba, bidirectional=bidirectional, d_state=d_state,
            expand=expand, d_conv=d_conv, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias, rms_norm=rms_norm,
            norm_eps=norm_eps, residual_in_fp32=residual_in_fp32, if_divide_out=if_divide_out)


class MambaTasNet(_MaskingSeparator):
    """Single-path Mamba-TasNet separator: ``(B, T) -> (B, num_spks, T)``, float32, at 8 kHz.

    Args:
        num_spks: S.
        enc_channels: N, encoder filters.
        bottleneck: width of the Mamba stack (the official configs use N).
        kernel_size: encoder / decoder filter length.
        n_mamba: bidirectional Mamba blocks (16 XS/S, 32 M/L).
        d_state ... if_divide_out, sample_rate: as for :class:`DPMamba`.
    """

    def __init__(self, num_spks: int = 2, enc_channels: int = 128, bottleneck: int | None = None,
                 kernel_size: int = 16, n_mamba: int = 16, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | str = "auto", conv_bias: bool = True, bias: bool = False, rms_norm: bool = True,
                 norm_eps: float = 1e-5, residual_in_fp32: bool = False, bidirectional: bool = True,
                 if_divide_out: bool = True, sample_rate: int = 8000) -> None:
        super().__init__(enc_channels, kernel_size, num_spks, sample_rate)
        self.masknet = MambaTasNetMaskNet(
            enc_channels, bottleneck or enc_channels, n_spk=num_spks, n_mamba=n_mamba, bidirectional=bidirectional,
            d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias,
            rms_norm=rms_norm, norm_eps=norm_eps, residual_in_fp32=residual_in_fp32, if_divide_out=if_divide_out)


# --- official checkpoints ------------------------------------------------------------------------------------------

_MODULES = ("encoder", "masknet", "decoder")


def read_speechbrain_checkpoint(folder: str | Path) -> dict[str, torch.Tensor]:
    """The flat state_dict of a SpeechBrain checkpoint folder (``CKPT+<date>/{encoder,masknet,decoder}.ckpt``).

    Each file is a plain ``torch.save`` of one module's state_dict; they are read with the hub's safe loader and
    merged under the prefixes ``encoder.``, ``masknet.``, ``decoder.`` (our module names).
    """
    from ssmzoo import hub

    folder = Path(folder)
    out = {}
    for name in _MODULES:
        path = folder / f"{name}.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"SpeechBrain checkpoint folder {folder} has no {name}.ckpt")
        out.update({f"{name}.{k}": v for k, v in hub.load_state_dict(path).items()})
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: _MaskingSeparator) -> dict[str, torch.Tensor]:
    """Official DPMamba / Mamba-TasNet weights -> ours.

    Accepts the flat dict of :func:`read_speechbrain_checkpoint` (``encoder.* / masknet.* / decoder.*``, the parity
    fixture's layout) or a dict ``{"encoder": sd, "masknet": sd, "decoder": sd}`` of the three files. DPMamba keys
    are unchanged; Mamba-TasNet's ``layer_norm.gamma/beta`` (1, 1, N) become LayerNorm ``weight/bias`` (N,) and
    SpeechBrain's wrapped convs (``*.conv.weight``) plain ``*.weight``. Our own (safetensors) weights pass as they
    are.
    """
    if all(isinstance(state_dict.get(m), dict) for m in _MODULES):
        state_dict = {f"{m}.{k}": v for m in _MODULES for k, v in state_dict[m].items()}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("masknet.layer_norm.") and key.rsplit(".", 1)[1] in ("gamma", "beta"):
            key = "masknet.layer_norm." + ("weight" if key.endswith("gamma") else "bias")
            value = value.reshape(-1)
        elif key in ("masknet.bottleneck_conv1x1.conv.weight", "masknet.mask_conv1x1.conv.weight"):
            key = key.replace(".conv.weight", ".weight")
        out[key] = value
    return out


def _mamba_kwargs(intra: dict[str, Any], mixer: dict[str, Any]) -> dict[str, Any]:
    mixer = dict(mixer)
    for name, expected in (("d_state", intra.get("d_state", 16)), ("d_conv", intra.get("d_conv", 4)),
                           ("expand", intra.get("expand", 2))):
        if mixer.get(name, expected) != expected:
            raise ValueError(f"official mixer {name}={mixer[name]} differs from the block's {expected}")
    if mixer.get("init_layer_scale") is not None:
        raise ValueError("official init_layer_scale is not used by any Mamba-TasNet recipe and is not supported")
    return dict(
        n_mamba=intra.get("n_mamba", 1), bidirectional=intra.get("bidirectional", True),
        d_state=intra.get("d_state", 16), expand=intra.get("expand", 2), d_conv=intra.get("d_conv", 4),
        dt_rank=intra.get("dt_rank", "auto"), conv_bias=intra.get("conv_bias", True), bias=intra.get("bias", False),
        rms_norm=intra.get("rms_norm", True), norm_eps=intra.get("norm_epsilon", 1e-5),
        residual_in_fp32=intra.get("residual_in_fp32", False), if_divide_out=mixer.get("if_devide_out", True),
    )


def from_official(constructor: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None
                  ) -> _MaskingSeparator:
    """Our separator equivalent to an official (SpeechBrain) Encoder / mask net / Decoder configuration.

    ``constructor`` has the parity fixture's form: ``{"encoder": {"kwargs"}, "masknet": {"class", "kwargs",
    "intra_model": {"kwargs"}, "mixer": {"kwargs"}}, "decoder": {"kwargs"}, "sample_rate"}`` for
    ``speechbrain.lobes.models.dual_path.Dual_Path_Model`` (DPMamba), or ``masknet.class`` =
    ``modules.mamba_masknet.MaskNet`` (Mamba-TasNet, Mamba settings in the mask net's kwargs). ``state_dict`` is the
    flat official dict (``encoder.*``, ``masknet.*``, ``decoder.*``). Raises ValueError for official options the
    Mamba recipes never use (other norms, linear layers after intra/inter, positional encodings).
    """
    enc = constructor["encoder"]["kwargs"]
    dec = constructor["decoder"]["kwargs"]
    mask_cls = constructor["masknet"].get("class", "")
    mk = dict(constructor["masknet"]["kwargs"])
    if enc.get("in_channels", 1) != 1 or dec.get("out_channels", 1) != 1 or dec.get("bias", False):
        raise ValueError("only the single-channel, bias-free SpeechBrain encoder / decoder are supported")
    kernel = enc.get("kernel_size", 16)
    if dec.get("kernel_size", kernel) != kernel or dec.get("stride", kernel // 2) != kernel // 2:
        raise ValueError("the decoder must mirror the encoder (same kernel, stride kernel // 2)")
    common = dict(kernel_size=kernel, sample_rate=constructor.get("sample_rate", 8000))
    # The Mamba settings sit inside the mask net's entry (the fixture) or beside it.
    def part(name: str) -> Any:
        return constructor["masknet"].get(name, constructor.get(name))

    mixer = (part("mixer") or {}).get("kwargs", {})
    if mask_cls.endswith("Dual_Path_Model"):
        for name, supported in (("norm", "ln"), ("linear_layer_after_inter_intra", False),
                                ("use_global_pos_enc", False)):
            if mk.get(name, supported) != supported:
                raise ValueError(f"official Dual_Path_Model option {name}={mk[name]!r} is not supported")
        intra = part("intra_model")["kwargs"]
        inter = part("inter_model")
        if isinstance(inter, dict) and inter.get("kwargs", intra) != intra:
            raise ValueError("intra and inter models with different settings are not supported")
        if intra.get("d_model", mk["out_channels"]) != mk["out_channels"]:
            raise ValueError("the Mamba blocks' d_model must equal the mask net's out_channels")
        model = DPMamba(num_spks=mk.get("num_spks", 2), enc_channels=mk["in_channels"], channels=mk["out_channels"],
                        num_blocks=mk.get("num_layers", 1), chunk_size=mk.get("K", 200),
                        skip_around_intra=mk.get("skip_around_intra", True), **_mamba_kwargs(intra, mixer), **common)
    elif mask_cls.endswith("MaskNet"):
        # norm_type and causal are accepted but unused by the official MaskNet; its recipes all use ReLU masks.
        if mk.get("mask_nonlinear", "relu") != "relu":
            raise ValueError(f"official MaskNet mask_nonlinear={mk['mask_nonlinear']!r} is not supported")
        if mk.get("d_model", mk["bot_dim"]) != mk["bot_dim"]:
            raise ValueError("Mamba-TasNet's d_model must equal bot_dim")
        mamba = _mamba_kwargs(dict(mk, n_mamba=mk.get("n_mamba", 16)), mixer)
        model = MambaTasNet(num_spks=mk.get("n_spk", 2), enc_channels=mk["enc_dim"], bottleneck=mk["bot_dim"],
                            **mamba, **common)
    else:
        raise ValueError(f"from_official: unknown official mask net class {mask_cls!r}")
    if enc["out_channels"] != model.encoder.conv1d.out_channels:
        raise ValueError("the encoder's out_channels must equal the mask net's in_channels")
    if state_dict is not None:
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    return model


# The fixture's fields are all reproduced (output, output_odd_length, output_skip_around_intra, intermediate).
PARITY_NOT_REPRODUCED: dict[str, str] = {}


@torch.no_grad()
def official_parity(model: _MaskingSeparator, fixture: dict[str, Any]) -> dict[str, Any]:
    """Our values for the fields of ``../shared/fixtures/parity/dpmamba.pt``, in the official layouts:
    ``output`` / ``output_odd_length`` / ``output_skip_around_intra`` as ``(B, T, S)`` and ``intermediate`` =
    ``{encoder_out (B, N, L), masks_batch0 (S, 1, N, L)}``."""
    model.eval()
    x = fixture["input"].float()
    out = {"output": model(x).transpose(1, 2),
           "output_odd_length": model(fixture["input_odd_length"].float()).transpose(1, 2)}
    if "output_skip_around_intra" in fixture:
        constructor = copy.deepcopy(fixture["constructor"])
        constructor["masknet"]["kwargs"]["skip_around_intra"] = True
        skip = from_official(constructor, model.state_dict()).eval()
        out["output_skip_around_intra"] = skip(x).transpose(1, 2)
    w = model.encode(x)
    out["intermediate"] = {"encoder_out": w, "masks_batch0": model.masknet(w)[:, :1]}
    return out


# --- registry ------------------------------------------------------------------------------------------------------


def _cfg(**kwargs) -> dict[str, Any]:
    # A waveform model: input_size is (T,) at 8 kHz; no classifier, so timm's classifier API does not apply.
    return {
        "url": "", "num_classes": 0, "input_size": (32000,), "min_input_size": (800,), "fixed_input_size": False,
        "mean": None, "std": None, "first_conv": "encoder.conv1d", "classifier": None, "license": "apache-2.0",
        "paper_ids": "arXiv:2403.18257", "paper_name": "Dual-path Mamba: Short and Long-term Bidirectional "
        "Selective Structured State Space Models for Speech Separation",
        "origin_url": "https://github.com/xi-j/Mamba-TasNet", "sha256": None, **kwargs,
    }


# The separator trained here on the TTS corpus of tools/make_mixtures.py (see weights/manifest.json).
_TTS2MIX = dict(file=str(WEIGHTS_DIR / "dpmamba_xs_tts2mix.safetensors"),
                sha256="3e39bb2a0a7670ea0740a114655e3eff27925fd026a0cfdd7146518fb62b4a29", license="apache-2.0")

default_cfgs = generate_default_cfgs({
    "dpmamba_xs.tts2mix": _cfg(**_TTS2MIX),
    "dpmamba_s": _cfg(),
    "dpmamba_m": _cfg(),
    "dpmamba_l": _cfg(),
    "mambatasnet_xs": _cfg(paper_ids="arXiv:2407.09732", paper_name="Speech Slytherin"),
    "mambatasnet_s": _cfg(paper_ids="arXiv:2407.09732", paper_name="Speech Slytherin"),
    "mambatasnet_m": _cfg(paper_ids="arXiv:2407.09732", paper_name="Speech Slytherin"),
    "test_dpmamba": _cfg(input_size=(1200,), min_input_size=(400,), license=None),
})


def _create(cls: type[_MaskingSeparator], variant: str, pretrained: bool = False, **kwargs) -> _MaskingSeparator:
    # timm derives num_classes / global_pool / in_chans from the cfg, and asserts that input_size is (C, H, W)
    # before it can filter in_chans out. A waveform's input_size is (T,): it is hidden from timm during the build
    # and put back on the model's cfg.
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    input_size = overlay.pop("input_size", None) or resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg")).input_size
    model = build_model(cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                        pretrained_cfg_overlay=dict(overlay, input_size=None),
                        kwargs_filter=("num_classes", "global_pool", "in_chans"), **kwargs)
    model.pretrained_cfg["input_size"] = tuple(input_size)
    return model


@register_model
def dpmamba_xs(pretrained: bool = False, **kwargs) -> DPMamba:
    """DPMamba-XS: N 128, 8 dual-path blocks, K 250 (2.27 M parameters; WSJ0-2mix SI-SNRi 19.2 dB officially)."""
    return _create(DPMamba, "dpmamba_xs", pretrained, **dict(dict(enc_channels=128, num_blocks=8), **kwargs))


@register_model
def dpmamba_s(pretrained: bool = False, **kwargs) -> DPMamba:
    """DPMamba-S: N 256, 8 dual-path blocks (8.14 M parameters; 21.4 dB)."""
    return _create(DPMamba, "dpmamba_s", pretrained, **dict(dict(enc_channels=256, num_blocks=8), **kwargs))


@register_model
def dpmamba_m(pretrained: bool = False, **kwargs) -> DPMamba:
    """DPMamba-M: N 256, 16 dual-path blocks, skip around intra (15.87 M parameters; 22.6 dB)."""
    args = dict(enc_channels=256, num_blocks=16, skip_around_intra=True)
    return _create(DPMamba, "dpmamba_m", pretrained, **dict(args, **kwargs))


@register_model
def dpmamba_l(pretrained: bool = False, **kwargs) -> DPMamba:
    """DPMamba-L: N 512, 16 dual-path blocks, skip around intra (59.79 M parameters; 23.4 dB)."""
    args = dict(enc_channels=512, num_blocks=16, skip_around_intra=True)
    return _create(DPMamba, "dpmamba_l", pretrained, **dict(args, **kwargs))


@register_model
def mambatasnet_xs(pretrained: bool = False, **kwargs) -> MambaTasNet:
    """Mamba-TasNet-XS: N 128, 16 bidirectional Mamba blocks (2.21 M parameters; 19.0 dB)."""
    return _create(MambaTasNet, "mambatasnet_xs", pretrained, **dict(dict(enc_channels=128, n_mamba=16), **kwargs))


@register_model
def mambatasnet_s(pretrained: bool = False, **kwargs) -> MambaTasNet:
    """Mamba-TasNet-S: N 256, 16 bidirectional Mamba blocks (7.93 M parameters; 21.4 dB)."""
    return _create(MambaTasNet, "mambatasnet_s", pretrained, **dict(dict(enc_channels=256, n_mamba=16), **kwargs))


@register_model
def mambatasnet_m(pretrained: bool = False, **kwargs) -> MambaTasNet:
    """Mamba-TasNet-M: N 256, 32 bidirectional Mamba blocks (15.65 M parameters; 22.4 dB)."""
    return _create(MambaTasNet, "mambatasnet_m", pretrained, **dict(dict(enc_channels=256, n_mamba=32), **kwargs))


@register_model
def test_dpmamba(pretrained: bool = False, **kwargs) -> DPMamba:
    """A tiny DPMamba for tests: N 16, 2 dual-path blocks, K 50, d_state 8."""
    args = dict(enc_channels=16, num_blocks=2, chunk_size=50, d_state=8)
    return _create(DPMamba, "test_dpmamba", pretrained, **dict(args, **kwargs))

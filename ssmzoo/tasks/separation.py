"""Speech separation as a task: the :class:`Separator` user API, the PIT SI-SNR loss and the SI-SNRi / SDRi metrics.

``Separator.from_pretrained()`` loads the bundled 8 kHz two-speaker separator (``dpmamba_xs.tts2mix``, offline,
from the weights shipped in the package, ``ssmzoo.weights`` = the repository's ``weights/``); any ssmzoo separator
name (``"dpmamba_s"``) or an ``nn.Module`` that maps ``(B, T) -> (B, S, T)`` works too::

    from ssmzoo.tasks.separation import Separator
    sep = Separator.from_pretrained()
    sources = sep.separate("mixture.wav")            # (2, T) float32 at the file's sample rate
    sep.separate_file("mixture.wav", "out/")          # out/mixture_s1.wav, out/mixture_s2.wav

Input handling, so that no bad input reaches the model: multi-channel audio is down-mixed to mono; any sample rate
is resampled to the model's and the estimates back to the input's (``torchaudio.functional.resample``); an input
shorter than the model's receptive field is zero-padded and the estimates cropped; all-zero input gives all-zero
estimates; empty input, NaN / Inf samples, missing or undecodable files raise errors that say so.

Estimates are rescaled so that they add up to the mixture (:func:`fit_to_mixture`): an SI-SNR-trained model's
output gain is arbitrary.

Inputs up to ``chunk_seconds`` (300 s by default) are separated in one pass, exactly as the model defines it; its
Mamba layers run in slices of whole sequences (``MambaBlocksSequential.inference_positions``), so memory grows only
with the activations between blocks: DPMamba-XS peaks at 1.3 GB RSS on a 20 s file and 5.8 GB on a 10-minute one
(2 threads, measured 2026-11-23).

Longer inputs are separated in overlapping windows (8 s overlap): each window's speaker order is aligned to the
previous one by permutation-invariant SI-SNR on their overlap (as Asteroid's ``LambdaOverlapAdd(reorder_chunks=
True)``), and the two are cross-faded with a raised cosine over 1 s that ends 1 s before the previous window does.
Two things make a window's output differ from the whole file's, both measured on the bundled DPMamba-XS:

- context. Cutting the input's future changes only the last ~1 s before the cut (25 dB SI-SNR to the whole-file
  output there, > 33 dB earlier); cutting its past changes the next 4-6 s (18-22 dB, > 30 dB only ~6 s after the
  cut: the forward inter-chunk Mamba remembers long). Hence the late fade: each window is used only where it has
  >= 6 s of past and >= 1 s of future.
- normalisation. DPMamba's GroupNorms take statistics over the whole input; with a window's own statistics, the
  first seconds of a window of a 20 s file of concatenated utterances agreed with the whole-file output to only
  7-14 dB, and with the file's statistics to 60-80 dB. So by default (``file_statistics=True``) a first pass over
  windows that tile the file pools every GroupNorm's statistics, and the windows then normalise with them
  (:class:`~ssmzoo.tasks.window_stats.GroupNormStatistics`; the pooled statistics of deeper layers are close to,
  not equal to, the file's, and this model is sensitive to them: shifts of 0.02-0.06 standard deviations still
  move some seconds by 7-9 dB).

On a 20 s two-talker file (the demo voices), 14 s windows with 8 s overlap agree with the whole-file output to 34 dB
SI-SNR (12 s windows: 31 dB; the earlier centred fade over a 4 s overlap: 23 dB) and separate as well (SI-SNRi 6.06
vs 6.01 dB). On three 20 s files of concatenated test utterances (voices and levels change every ~2 s): 15, 30 and
35 dB (17, 19 and 20 dB with per-window statistics). The first pass costs about one more pass over the file.
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
from torchmetrics.functional.audio import (
    permutation_invariant_training,
    pit_permutate,
    scale_invariant_signal_noise_ratio,
    signal_distortion_ratio,
)

from ssmzoo.tasks.separation_data import read_audio, resample
from ssmzoo.tasks.window_stats import GroupNormStatistics

__all__ = ["DEFAULT_MODEL", "Separator", "fit_to_mixture", "pit_si_snr_loss", "separation_metrics"]

DEFAULT_MODEL = "dpmamba_xs.tts2mix"


def pit_si_snr_loss(est: torch.Tensor, ref: torch.Tensor, threshold: float | None = -40.0) -> torch.Tensor:
    """Negative SI-SNR under the best speaker permutation (SpeechBrain's ``get_si_snr_with_pitwrapper``), a scalar.

    Args:
        est, ref: (B, S, T) estimates and references.
        threshold: items whose loss is already below it (SI-SNR above -threshold dB) are left out of the mean, as
            in the official recipe (``threshold_byloss``); None keeps every item.
    Returns:
        The mean over the kept items of ``-mean_s SI-SNR(est_{pi(s)}, ref_s)`` in dB (0-dim tensor).
    """
    best, _ = permutation_invariant_training(est, ref, scale_invariant_signal_noise_ratio, mode="speaker-wise",
                                             eval_func="max")
    loss = -best  # (B,)
    if threshold is not None:
        kept = loss[loss > threshold]
        loss = kept if kept.numel() else loss
    return loss.mean()


@torch.no_grad()
def separation_metrics(est: torch.Tensor, ref: torch.Tensor, mix: torch.Tensor, sdr: bool = True) -> dict:
    """SI-SNR, SI-SNRi and (optionally) SDR, SDRi in dB per item, each averaged over the speakers.

    ``est``, ``ref``: (B, S, T); ``mix``: (B, T). The estimates are first put in the speaker order that maximises
    SI-SNR; the improvements subtract the metric of the mixture used as the estimate of every source (the
    Mamba-TasNet / SpeechBrain convention). SDR is torchmetrics' BSS-eval SDR (512-tap distortion filter), the
    quantity ``mir_eval.separation.bss_eval_sources`` reports. Returns ``{name: (B,) float64 tensor}``.
    """
    est, ref, mix = est.double(), ref.double(), mix.double()
    _, perm = permutation_invariant_training(est, ref, scale_invariant_signal_noise_ratio, mode="speaker-wise",
                                             eval_func="max")
    est = pit_permutate(est, perm)
    mix = mix.unsqueeze(1).expand_as(ref)
    out = {"si_snr": scale_invariant_signal_noise_ratio(est, ref).mean(-1)}
    out["si_snri"] = out["si_snr"] - scale_invariant_signal_noise_ratio(mix, ref).mean(-1)
    if sdr:
        out["sdr"] = signal_distortion_ratio(est, ref).mean(-1)
        out["sdri"] = out["sdr"] - signal_distortion_ratio(mix, ref).mean(-1)
    return out


def fit_to_mixture(est: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Rescale (S, T) estimates so that ``sum_s g_s est_s`` is the least-squares fit of the (T,) mixture.

    A model trained with a scale-invariant loss (SI-SNR) outputs each source at an arbitrary gain; since the true
    sources add up to the mixture, the per-source gains that best rebuild it put the estimates back at the
    mixture's level (and keep consecutive windows of a long input at one level). When that fit is degenerate (a
    silent estimate, or a gain <= 0 from near-identical estimates), one gain common to all sources is used.
    """
    e = est.double()
    gram = e @ e.T  # (S, S)
    rhs = e @ mix.double()
    ridge = 1e-9 * gram.diagonal().max().clamp_min(1e-30) * torch.eye(len(e), dtype=e.dtype)
    try:
        gains = torch.linalg.solve(gram + ridge, rhs)
    except RuntimeError:
        gains = torch.zeros(len(e), dtype=e.dtype)
    if not torch.isfinite(gains).all() or (gains <= 0).any():
        total = e.sum(0)
        gains = (total @ mix.double() / (total @ total).clamp_min(1e-30)).clamp_min(0).expand(len(e))
    return (e * gains[:, None]).to(est.dtype)


def _as_mono(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(T,) or (C, T) audio (float, or integer PCM) -> (T,) float32; channels are averaged."""
    if isinstance(wav, np.ndarray):
        if np.issubdtype(wav.dtype, np.integer):
            wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    if not torch.is_tensor(wav):
        raise TypeError(f"expected a path, a tensor or a numpy array, got {type(wav).__name__}")
    if not wav.is_floating_point():
        wav = wav.float() / float(torch.iinfo(wav.dtype).max + 1)
    wav = wav.detach().cpu().float()
    if wav.ndim == 2:
        if wav.shape[0] > wav.shape[1] > 0:
            raise ValueError(f"audio of shape {tuple(wav.shape)}: expected (channels, samples) with fewer channels "
                             "than samples (transpose a (samples, channels) array)")
        wav = wav.mean(0)
    elif wav.ndim != 1:
        raise ValueError(f"audio must be (T,) or (channels, T), got shape {tuple(wav.shape)}")
    return wav


class Separator:
    """A waveform separator with its sample rate, and the input handling a user file needs.

    Args:
        model: ``(B, T) -> (B, S, T)`` at ``sample_rate`` (an ssmzoo DPMamba / MambaTasNet, torchaudio's ConvTasNet
            wrapped to that layout, ...). Put in eval mode.
        sample_rate: the model's rate; default ``model.sample_rate`` (8000 for the ssmzoo separators).
        chunk_seconds: inputs longer than this are separated in windows of this length (memory then stays bounded
            by one window; shorter inputs are separated whole, exactly).
        overlap_seconds: overlap of consecutive windows, used to align their speaker order and to cross-fade.
        fade_seconds: length of the raised-cosine cross-fade inside the overlap.
        lookahead_seconds: the fade ends this long before the previous window does (that window's last samples
            lack future context); the new window is used from ``overlap - lookahead - fade`` after its start.
        file_statistics: windows normalise with the whole file's GroupNorm statistics, pooled in a first pass
            over windows that tile the file (:class:`~ssmzoo.tasks.window_stats.GroupNormStatistics`); costs that
            extra pass (about 2x the time in all) on inputs longer than ``chunk_seconds``.
        device: where the model runs.
    """

    def __init__(self, model: nn.Module, sample_rate: int | None = None, chunk_seconds: float = 300.0,
                 overlap_seconds: float = 8.0, fade_seconds: float = 1.0, lookahead_seconds: float = 1.0,
                 file_statistics: bool = True, device: str | torch.device = "cpu") -> None:
        self.sample_rate = int(sample_rate or getattr(model, "sample_rate", 8000))
        if not 0 < overlap_seconds < chunk_seconds:
            raise ValueError(f"overlap_seconds ({overlap_seconds}) must be in (0, chunk_seconds={chunk_seconds})")
        if fade_seconds <= 0 or lookahead_seconds < 0 or fade_seconds + lookahead_seconds > overlap_seconds:
            raise ValueError(f"need fade_seconds > 0, lookahead_seconds >= 0 and fade_seconds + lookahead_seconds <= "
                             f"overlap_seconds, got {fade_seconds} + {lookahead_seconds} > {overlap_seconds}")
        self.chunk = int(chunk_seconds * self.sample_rate)
        self.overlap = int(overlap_seconds * self.sample_rate)
        self.fade = max(1, int(fade_seconds * self.sample_rate))
        self.lookahead = int(lookahead_seconds * self.sample_rate)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.norm_stats = GroupNormStatistics(self.model) if file_statistics else None
        # The encoder needs at least one frame; shorter inputs are zero-padded to this many samples.
        self.min_samples = max(int(getattr(model, "kernel_size", 16)), self.sample_rate // 10)

    @classmethod
    def from_pretrained(cls, name: str | None = None, device: str | torch.device = "cpu", **kwargs) -> Separator:
        """A :class:`Separator` around ``ssmzoo.create_model(name, pretrained=True)``; ``name=None`` is the bundled
        default (:data:`DEFAULT_MODEL`, weights shipped in the package, no network)."""
        import ssmzoo

        model = ssmzoo.create_model(name or DEFAULT_MODEL, pretrained=True)
        return cls(model, device=device, **kwargs)

    @property
    def num_spks(self) -> int:
        return int(getattr(self.model, "num_spks", 2))

    # --- core --------------------------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: the CUDA scan kernels' custom op refuses inference tensors
    def separate_batch(self, mix: torch.Tensor) -> torch.Tensor:
        """The model on a (B, T) batch at the model's rate, in one pass: (B, S, T) float32 on the CPU."""
        return self.model(mix.to(self.device, torch.float32)).float().cpu()

    def _window(self, mix: torch.Tensor) -> torch.Tensor:
        """(T,) -> (S, T) estimates of one window, rescaled to add up to the mixture (see :func:`fit_to_mixture`)."""
        return fit_to_mixture(self.separate_batch(mix[None])[0], mix)

    def _separate_long(self, mix: torch.Tensor) -> torch.Tensor:
        """(T,) at the model's rate -> (S, T): whole when short, else aligned, cross-faded windows."""
        T = mix.shape[-1]
        if T < self.min_samples:  # shorter than the receptive field: pad, separate, crop
            return self._window(torch.nn.functional.pad(mix, (0, self.min_samples - T)))[:, :T]
        if T <= self.chunk:
            return self._window(mix)
        if not self.norm_stats:
            return self._overlap_add_windows(mix)
        self.norm_stats.reset()
        with self.norm_stats.record():  # first pass: the file's statistics, from windows that tile it
            pieces = math.ceil(T / self.chunk)
            bounds = [round(i * T / pieces) for i in range(pieces + 1)]
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
                self.separate_batch(mix[None, start:stop])
        with self.norm_stats.frozen():
            return self._overlap_add_windows(mix)

    def _overlap_add_windows(self, mix: torch.Tensor) -> torch.Tensor:
        """(T,) -> (S, T) from overlapping windows: speaker order aligned by PIT on each overlap, then cross-faded."""
        T = mix.shape[-1]
        hop = self.chunk - self.overlap
        starts = list(range(0, T - self.overlap, hop))
        out = torch.zeros(self.num_spks, T)
        end_prev = 0
        for i, start in enumerate(starts):
            stop = min(start + self.chunk, T)
            if stop - start < self.min_samples:
                start = max(0, stop - self.min_samples)
            est = self._window(mix[start:stop])  # (S, stop - start)
            if i == 0:
                out[:, start:stop] = est
            else:
                n = end_prev - start  # overlap with what is already written
                prev = out[:, start:end_prev]
                _, perm = permutation_invariant_training(est[None, :, :n], prev[None],
                                                         scale_invariant_signal_noise_ratio, eval_func="max")
                est = pit_permutate(est[None], perm)[0]
                w = self._fade_in(n)
                out[:, start:end_prev] = prev * (1 - w) + est[:, :n] * w
                out[:, end_prev:stop] = est[:, n:]
            end_prev = stop
        return out

    def _fade_in(self, n: int) -> torch.Tensor:
        """(n,) weights of the new window over an overlap of n samples: 0, a raised-cosine rise over ``fade``
        samples that ends ``lookahead`` samples before the overlap does, then 1 (see the module docstring)."""
        fade = min(self.fade, n)
        lookahead = min(self.lookahead, n - fade)
        rise_start = n - lookahead - fade
        w = torch.ones(n)
        w[:rise_start] = 0
        w[rise_start:rise_start + fade] = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, fade))
        return w

    def separate(self, wav_or_path: str | os.PathLike | torch.Tensor | np.ndarray,
                 sample_rate: int | None = None) -> torch.Tensor:
        """Separate one recording: ``(S, T)`` float32 estimates at the input's sample rate and length.

        Args:
            wav_or_path: an audio file (any format soundfile reads), or a (T,) / (channels, T) tensor or array
                (float in [-1, 1], or integer PCM).
            sample_rate: the rate of a tensor / array input (default: the model's rate). For a file, its own rate
                is used and this argument must be None or equal to it.
        Raises:
            FileNotFoundError, ValueError: missing / undecodable file, empty audio, NaN or Inf samples,
                a ``sample_rate`` that contradicts the file's.
        """
        name = "input"
        if isinstance(wav_or_path, (str, os.PathLike)):
            name = str(wav_or_path)
            wav, file_rate = read_audio(wav_or_path)  # channels averaged
            if sample_rate is not None and int(sample_rate) != file_rate:
                raise ValueError(f"{name} is at {file_rate} Hz but sample_rate={sample_rate} was given")
            sample_rate = file_rate
        else:
            wav = wav_or_path
        sample_rate = int(sample_rate or self.sample_rate)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        wav = _as_mono(wav)
        T = wav.shape[-1]
        if T == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        if not torch.isfinite(wav).all():
            raise ValueError(f"{name} contains NaN or Inf samples")
        if not wav.abs().max() > 0:
            return torch.zeros(self.num_spks, T)  # silence separates into silence
        mix = resample(wav, sample_rate, self.sample_rate)
        if mix.shape[-1] == 0:  # e.g. one sample at 48 kHz
            mix = wav[:1].clone()
        est = self._separate_long(mix)
        est = resample(est, self.sample_rate, sample_rate)
        # Resampling rounds lengths: pad or crop to exactly the input's length.
        return torch.nn.functional.pad(est, (0, T - est.shape[-1])) if est.shape[-1] < T else est[:, :T]

    def separate_file(self, path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
        """Separate an audio file into ``<out_dir>/<stem>_s1.wav``, ``<stem>_s2.wav`` ... (see :meth:`save`);
        ``out_dir`` defaults to the input's folder. Returns the written paths."""
        path = Path(path)
        est = self.separate(path)
        return self.save(est, sf.info(str(path)).samplerate, Path(out_dir) if out_dir is not None else path.parent,
                         path.stem)

    @staticmethod
    def save(estimates: torch.Tensor, sample_rate: int, out_dir: str | os.PathLike, stem: str) -> list[Path]:
        """Write (S, T) estimates as ``<out_dir>/<stem>_s<k>.wav``, 16-bit PCM at ``sample_rate``.

        Each file is written to a temporary name and renamed, so an interrupted run leaves no partial output. If an
        estimate would clip, all estimates are scaled by the same factor (with a warning), keeping their relative
        levels. Returns the written paths.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        peak = float(estimates.abs().max())
        if peak > 0.999:
            warnings.warn(f"{stem}: estimates peak at {peak:.3f}; scaling them by {0.999 / peak:.3f} to avoid "
                          "clipping", RuntimeWarning, stacklevel=2)
            estimates = estimates * (0.999 / peak)
        return [_write_atomic(out_dir / f"{stem}_s{k + 1}.wav", estimates[k].numpy(), sample_rate)
                for k in range(len(estimates))]

    def separate_files(self, paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> list[list[Path]]:
        """:meth:`separate_file` for several files into one folder."""
        return [self.separate_file(p, out_dir) for p in paths]


def _write_atomic(path: Path, wav: np.ndarray, rate: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav.partial", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, wav, rate, subtype="PCM_16", format="WAV")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

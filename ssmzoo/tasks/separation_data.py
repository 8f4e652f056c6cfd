"""Speech-separation data: audio reading, wsj0-2mix style mixing, and datasets over the real corpus layouts.

Layouts read here (the same code reads the real corpora and the TTS corpus of ``tools/make_mixtures.py``):

- **wsj0-2mix folders** (:class:`Wsj0MixDataset`): ``<root>/{tr,cv,tt}/{mix,s1,s2,...}/<name>.wav``; for the real
  corpus ``root`` is ``.../2speakers/wav8k/min``.
- **LibriMix CSVs** (:class:`LibriMixDataset`): ``mixture_ID,mixture_path,source_1_path,source_2_path,...,length``
  (Asteroid's ``metadata/mixture_<split>_mix_clean.csv``). Relative paths are resolved against the folder that
  holds ``metadata/`` (absolute paths, as LibriMix writes them, are used as they are).
- **Single-speaker folders** (:class:`DynamicMixDataset`, dynamic mixing as in the Mamba-TasNet / SepFormer
  recipes): ``<root>/<speaker>/**/*.{wav,flac}`` (WSJ0 ``si_tr_s``, LibriSpeech ``train-clean-100``, or the TTS
  bank ``speakers/tr``).

Every item is a dict ``{"mix": (T,) float32, "sources": (S, T) float32, "id": str}`` at ``sample_rate``
(files at another rate are resampled with ``torchaudio.functional.resample``); :func:`collate_separation` pads a
batch to its longest item.

Mixing follows wsj0-2mix (MERL's ``create_wav_2speakers.m``): each source is scaled to unit active level, then by
``10^(g/20)`` for source 1 and ``10^(-g/20)`` for source 2 with ``g ~ U(0, 2.5)`` dB (a relative level of 0-5 dB,
source 1 louder), truncated to the shorter source ("min"), summed, and everything is scaled so the largest of
``|mix|, |s1|, |s2|`` is 0.9.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

__all__ = [
    "AUDIO_EXTENSIONS",
    "DynamicMixDataset",
    "LibriMixDataset",
    "SeparationDataset",
    "Wsj0MixDataset",
    "active_level",
    "collate_separation",
    "make_mixture",
    "read_audio",
    "resample",
]

AUDIO_EXTENSIONS = (".wav", ".flac")
MAX_AMP = 0.9  # wsj0-2mix and LibriMix peak level


def read_audio(path: str | Path, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile: ``(wav, sample_rate)``, float32, (T,) when ``mono`` else (C, T).

    Multi-channel files are down-mixed to mono by averaging the channels when ``mono``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: soundfile cannot decode it (the message names the file and the decoder's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    wav = wav.T  # (C, T)
    return (wav.mean(0) if mono else wav), int(sr)


def resample(wav: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last dim (``torchaudio.functional.resample``); float32 tensor out."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if orig_sr == new_sr:
        return wav
    # Reduce the ratio so the polyphase filter bank stays small (e.g. 44100 -> 8000 is 441 -> 80).
    g = math.gcd(int(orig_sr), int(new_sr))
    return AF.resample(wav, int(orig_sr) // g, int(new_sr) // g)


def active_level(x: np.ndarray, sample_rate: int = 8000, frame_ms: float = 20.0, floor_db: float = 40.0) -> float:
    """Speech active level (RMS over the active frames), a simplified ITU-T P.56.

    Frames of ``frame_ms`` whose energy is within ``floor_db`` of the loudest frame count as active; their RMS is
    returned (0.0 for a silent signal). P.56's hangover and iterative threshold are left out: for clean
    single-talker speech both give levels within a fraction of a dB, which is all the mixing gains need.
    """
    x = np.asarray(x, dtype=np.float64)
    n = max(1, int(sample_rate * frame_ms / 1000))
    frames = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    energy = (frames**2).mean(1)
    if energy.size == 0 or energy.max() <= 0:
        return 0.0
    active = energy >= energy.max() * 10 ** (-floor_db / 10)
    return float(np.sqrt(energy[active].mean()))


def make_mixture(sources: Sequence[np.ndarray], gains_db: Sequence[float], sample_rate: int = 8000,
                 mode: str = "min", length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """wsj0-2mix mixing of S single-talker signals: ``(mix (T,), scaled_sources (S, T))``, float32.

    Each source is scaled to unit :func:`active_level`, then by ``10^(gain_db/20)``; ``mode="min"`` truncates to
    the shortest source, ``"max"`` zero-pads to the longest, and ``length`` (if given) crops / zero-pads the result
    to exactly that many samples. The sum and the sources are finally scaled together so that the peak of any of
    them is :data:`MAX_AMP` (0.9), which keeps int16 files from clipping.
    """
    if len(sources) != len(gains_db):
        raise ValueError(f"make_mixture: {len(sources)} sources but {len(gains_db)} gains")
    if mode not in ("min", "max"):
        raise ValueError(f"make_mixture: mode must be 'min' or 'max', got {mode!r}")
    lengths = [len(s) for s in sources]
    T = length if length is not None else (min(lengths) if mode == "min" else max(lengths))
    out = np.zeros((len(sources), T), dtype=np.float64)
    for i, (s, g) in enumerate(zip(sources, gains_db, strict=True)):
        s = np.asarray(s, dtype=np.float64)[:T]
        level = active_level(s, sample_rate)
        out[i, : len(s)] = s * (10 ** (g / 20) / level if level > 0 else 0.0)
    mix = out.sum(0)
    peak = max(np.abs(mix).max(initial=0.0), np.abs(out).max(initial=0.0))
    scale = MAX_AMP / peak if peak > 0 else 1.0
    return (mix * scale).astype(np.float32), (out * scale).astype(np.float32)


def _crop(length: int, segment: int | None, rng: np.random.Generator | None) -> tuple[int, int]:
    """Start and stop of a crop of ``segment`` samples (random when ``rng`` is given, else from the start)."""
    if segment is None or length <= segment:
        return 0, length
    start = int(rng.integers(0, length - segment + 1)) if rng is not None else 0
    return start, start + segment


class SeparationDataset(Dataset):
    """Fixed mixtures listed as ``(id, mix_path, [source_paths])``; items as described in the module docstring.

    Args:
        items: the list of mixtures.
        sample_rate: rate of the returned tensors; files at another rate are resampled.
        segment: crop length in seconds (None: whole files). Mixtures shorter than ``segment`` are zero-padded
            at the end when ``pad_short`` (so a batch has one length), else returned whole.
        random_crop: crop at a random offset (training) rather than at the start (validation).
        pad_short: see ``segment``.
        seed: base seed of the random crops; item ``i`` of epoch ``e`` uses ``(seed, e, i)`` (see
            :meth:`set_epoch`), so crops are reproducible and independent of DataLoader workers.
    """

    def __init__(self, items: Sequence[tuple[str, Path, Sequence[Path]]], sample_rate: int = 8000,
                 segment: float | None = None, random_crop: bool = True, pad_short: bool = True,
                 seed: int = 0) -> None:
        self.items = [(str(i), Path(m), [Path(s) for s in srcs]) for i, m, srcs in items]
        if not self.items:
            raise ValueError(f"{type(self).__name__}: no mixtures found")
        self.sample_rate = int(sample_rate)
        self.segment = None if segment is None else int(round(segment * sample_rate))
        self.random_crop, self.pad_short, self.seed, self.epoch = random_crop, pad_short, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of another epoch (call before iterating, as with a DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, path: Path) -> torch.Tensor:
        wav, sr = read_audio(path)
        return resample(wav, sr, self.sample_rate)

    def __getitem__(self, index: int) -> dict:
        uid, mix_path, src_paths = self.items[index]
        mix = self._load(mix_path)
        sources = [self._load(p) for p in src_paths]
        T = min(len(mix), *(len(s) for s in sources))  # resampling can differ by a sample
        mix, sources = mix[:T], torch.stack([s[:T] for s in sources])
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.random_crop else None
        start, stop = _crop(T, self.segment, rng)
        mix, sources = mix[start:stop], sources[:, start:stop]
        if self.segment is not None and self.pad_short and mix.shape[-1] < self.segment:
            pad = self.segment - mix.shape[-1]
            mix, sources = torch.nn.functional.pad(mix, (0, pad)), torch.nn.functional.pad(sources, (0, pad))
        return {"mix": mix, "sources": sources, "id": uid}


class Wsj0MixDataset(SeparationDataset):
    """wsj0-2mix / wsj0-3mix folders: ``<root>/<split>/mix/<name>.wav`` and ``<root>/<split>/s<k>/<name>.wav``.

    Args:
        root: the folder holding ``tr``, ``cv``, ``tt`` (for the real corpus ``.../2speakers/wav8k/min``).
        split: ``"tr"``, ``"cv"`` or ``"tt"``.
        n_src: number of sources (folders ``s1 .. s<n_src>``).
        **kwargs: :class:`SeparationDataset` options (``sample_rate``, ``segment``, ``random_crop`` ...).
    """

    def __init__(self, root: str | Path, split: str, n_src: int = 2, **kwargs) -> None:
        base = Path(root) / split
        mix_dir = base / "mix"
        if not mix_dir.is_dir():
            raise FileNotFoundError(f"Wsj0MixDataset: {mix_dir} is not a folder (expected <root>/{split}/mix)")
        names = sorted(p.name for p in mix_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
        items = []
        for name in names:
            srcs = [base / f"s{k + 1}" / name for k in range(n_src)]
            missing = [str(s) for s in srcs if not s.is_file()]
            if missing:
                raise FileNotFoundError(f"Wsj0MixDataset: mixture {mix_dir / name} has no source file {missing[0]}")
            items.append((Path(name).stem, mix_dir / name, srcs))
        super().__init__(items, **kwargs)


class LibriMixDataset(SeparationDataset):
    """A LibriMix-style mixture CSV (``mixture_ID, mixture_path, source_1_path, ..., source_<n>_path[, ...]``).

    Args:
        csv_path: e.g. ``<corpus>/metadata/mixture_tt_mix_clean.csv``.
        n_src: number of ``source_<k>_path`` columns to read.
        root: folder that relative paths are relative to (default: the parent of the CSV's folder).
        **kwargs: :class:`SeparationDataset` options.
    """

    def __init__(self, csv_path: str | Path, n_src: int = 2, root: str | Path | None = None, **kwargs) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"LibriMixDataset: {csv_path} does not exist")
        base = Path(root) if root is not None else csv_path.parent.parent
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = ["mixture_ID", "mixture_path"] + [f"source_{k + 1}_path" for k in range(n_src)]
        if rows and any(c not in rows[0] for c in columns):
            raise ValueError(f"LibriMixDataset: {csv_path} lacks columns {[c for c in columns if c not in rows[0]]}")
        items = [(r["mixture_ID"], base / r["mixture_path"], [base / r[f"source_{k + 1}_path"] for k in range(n_src)])
                 for r in rows]  # an absolute path stays absolute under the / operator
        super().__init__(items, **kwargs)


def list_speaker_folders(root: str | Path) -> dict[str, list[Path]]:
    """``{speaker: sorted audio files}`` for ``<root>/<speaker>/**/*.{wav,flac}`` (speakers with no file dropped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"single-speaker root {root} is not a folder")
    speakers = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if files:
            speakers[folder.name] = files
    return speakers


class DynamicMixDataset(Dataset):
    """Mixtures drawn on the fly from single-speaker folders (dynamic mixing), reproducible per (seed, epoch, index).

    Item ``i``: ``n_src`` distinct speakers, one random utterance each, each optionally speed-perturbed (a
    resampling by a factor drawn from ``speed_perturb``, SpeechBrain's ``SpeedPerturb``), each cut to a random
    window of ``segment`` seconds (zero-padded when shorter), then :func:`make_mixture` with source 1 at ``+g`` and
    the others at ``-g`` dB, ``g ~ U(0, max_level_db / 2)``; the order of the sources is then shuffled so the
    louder one is not always first.

    Args:
        root: ``<root>/<speaker>/**/*.{wav,flac}``.
        num_mixtures: the dataset's length (an "epoch").
        n_src: speakers per mixture.
        segment: length of every item in seconds.
        sample_rate: output rate; files at another rate are resampled.
        max_level_db: largest relative level between source 1 and the others (wsj0-2mix: 5 dB).
        speed_perturb: speed factors to draw from, e.g. ``(0.95, 1.0, 1.05)``; None for no perturbation.
        preload: read every file once into memory (int16), for small banks and fast epochs.
        seed: base seed; see :meth:`set_epoch`.
    """

    def __init__(self, root: str | Path, num_mixtures: int = 20000, n_src: int = 2, segment: float = 4.0,
                 sample_rate: int = 8000, max_level_db: float = 5.0, speed_perturb: Sequence[float] | None = None,
                 preload: bool = False, seed: int = 0) -> None:
        self.speakers = list_speaker_folders(root)
        if len(self.speakers) < n_src:
            raise ValueError(f"DynamicMixDataset: {root} has {len(self.speakers)} speaker folders with audio, "
                             f"fewer than n_src={n_src}")
        self.names = sorted(self.speakers)
        self.num_mixtures, self.n_src = int(num_mixtures), int(n_src)
        self.sample_rate, self.segment = int(sample_rate), int(round(segment * sample_rate))
        self.max_level_db = float(max_level_db)
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else None
        self.seed, self.epoch = seed, 0
        self._cache: dict[Path, np.ndarray] = {}
        if preload:
            for files in self.speakers.values():
                for path in files:
                    self._cache[path] = self._read(path)

    def set_epoch(self, epoch: int) -> None:
        """Draw the mixtures of another epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_mixtures

    def _read(self, path: Path) -> np.ndarray:
        wav, sr = read_audio(path)
        wav = resample(wav, sr, self.sample_rate).numpy()
        return np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16)  # half the memory of float32

    def _utterance(self, path: Path) -> np.ndarray:
        wav = self._cache.get(path)
        if wav is None:
            wav = self._read(path)
        return wav.astype(np.float32) / 32767

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        speakers = rng.choice(len(self.names), size=self.n_src, replace=False)
        sources, ids = [], []
        for k in speakers:
            files = self.speakers[self.names[k]]
            path = files[int(rng.integers(len(files)))]
            wav = self._utterance(path)
            if self.speed_perturb is not None:
                factor = float(rng.choice(self.speed_perturb))
                if factor != 1.0:
                    # Playing sr*factor samples per second: resample sr*factor -> sr shortens by 1/factor.
                    wav = resample(wav, int(round(self.sample_rate * factor)), self.sample_rate).numpy()
            start, stop = _crop(len(wav), self.segment, rng)
            sources.append(wav[start:stop])
            ids.append(path.stem)
        g = rng.uniform(0.0, self.max_level_db / 2)
        gains = [g] + [-g] * (self.n_src - 1)
        mix, scaled = make_mixture(sources, gains, self.sample_rate, length=self.segment)
        order = rng.permutation(self.n_src)
        return {"mix": torch.from_numpy(mix), "sources": torch.from_numpy(scaled[order].copy()),
                "id": "_".join(ids[i] for i in order)}


def collate_separation(batch: Sequence[dict]) -> dict:
    """Stack items into ``{"mix": (B, T), "sources": (B, S, T), "lengths": (B,) int64, "id": [str]}``.

    Items of different lengths are zero-padded at the end to the longest; ``lengths`` holds the true ones.
    """
    lengths = torch.tensor([item["mix"].shape[-1] for item in batch], dtype=torch.int64)
    T = int(lengths.max())
    mix = torch.stack([torch.nn.functional.pad(item["mix"], (0, T - item["mix"].shape[-1])) for item in batch])
    sources = torch.stack([torch.nn.functional.pad(item["sources"], (0, T - item["sources"].shape[-1]))
                           for item in batch])
    return {"mix": mix, "sources": sources, "lengths": lengths, "id": [item["id"] for item in batch]}

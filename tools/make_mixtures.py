"""Build a wsj0-2mix style two-speaker corpus offline, from text-to-speech voices.

Stage ``synth`` reads the sentences bundled in ``tools/tts_sentences.txt`` with the TTS voices of Debian main
(espeak-ng voice variants; flite and festival voices when installed) into a single-speaker bank; stage ``mix``
draws wsj0-2mix mixtures from that bank. ``all`` (the default) runs both::

    apt-get install -y espeak-ng                                # flite, festival, festvox-* add more voices
    python tools/make_mixtures.py data/tts2mix                  # 2000 / 300 / 300 mixtures, ~3 min on 2 cores
    python tools/make_mixtures.py data/tts2mix --stage mix --n-mix 20000 5000 3000   # more mixtures, same bank

Output (8 kHz, 16-bit mono)::

    <out>/speakers/{tr,cv,tt}/<speaker>/<utt>.wav      single-speaker bank (DynamicMixDataset reads <out>/speakers/tr)
    <out>/{tr,cv,tt}/{mix,s1,s2}/<utt1>_<g>_<utt2>_<-g>.wav    wsj0-2mix layout and naming (Wsj0MixDataset)
    <out>/metadata/mixture_{tr,cv,tt}_mix_clean.csv    LibriMix / Asteroid mixture lists (LibriMixDataset)
    <out>/metadata/libri2mix_{tr,cv,tt}.csv            LibriMix recipe: bank utterances and their linear gains
    <out>/metadata/speakers.csv, utterances.csv        voices (engine, settings, split) and what each one read

Splits are speaker-disjoint (each voice belongs to one split; voices that are the same recorded speaker in two
engines, flite's and festival's "slt", share a split) and sentence-disjoint (the sentence list is shuffled with
the seed and cut into tr / cv / tt pools). Mixing is wsj0-2mix's (see ``ssmzoo.tasks.separation_data``): unit
active level, source 1 at +g and source 2 at -g dB with g ~ U(0, 2.5), "min" truncation, peak 0.9.

Everything is seeded: the same seed and voices give the same corpus. Engines that are not installed are skipped
with a note; espeak-ng alone still gives 12 training, 4 validation and 4 test voices.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmzoo.tasks.separation_data import make_mixture, read_audio, resample  # noqa: E402

SPLITS = ("tr", "cv", "tt")
SENTENCES = Path(__file__).with_name("tts_sentences.txt")
SAMPLE_RATE = 8000


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, its voice, and (espeak-ng) a base pitch (0-99) and rate (words/min)."""

    name: str
    engine: str
    voice: str
    gender: str
    split: str
    pitch: int = 50
    rate: int = 160


def _es(name: str, voice: str, gender: str, split: str, pitch: int, rate: int) -> Voice:
    return Voice(name, "espeak-ng", voice, gender, split, pitch, rate)


# espeak-ng variants of one gender sound alike (long-term spectra within 0.95-0.97 cosine), so each speaker also
# gets its own accent, pitch and rate; different engines are clearly different speakers.
VOICES: tuple[Voice, ...] = (
    # training voices
    _es("es-us-m3", "en-us+m3", "M", "tr", 35, 150),
    _es("es-gb-m7", "en-gb+m7", "M", "tr", 25, 140),
    _es("es-us-klatt3", "en-us+klatt3", "M", "tr", 50, 150),
    _es("es-rp-m2", "en-gb-x-rp+m2", "M", "tr", 40, 165),
    _es("es-nyc-m6", "en-us-nyc+m6", "M", "tr", 30, 175),
    _es("es-wm-m5", "en-gb-x-gbcwmd+m5", "M", "tr", 55, 145),
    _es("es-car-m4", "en-029+m4", "M", "tr", 45, 160),
    _es("es-us-f2", "en-us+f2", "F", "tr", 60, 165),
    _es("es-gb-f5", "en-gb+f5", "F", "tr", 70, 150),
    _es("es-lan-f1", "en-gb-x-gbclan+f1", "F", "tr", 65, 160),
    _es("es-us-linda", "en-us+linda", "F", "tr", 55, 170),
    _es("es-gb-steph", "en-gb+steph", "F", "tr", 62, 155),
    Voice("fl-kal", "flite", "kal", "M", "tr"),
    Voice("fl-rms", "flite", "rms", "M", "tr"),
    Voice("fl-slt", "flite", "slt", "F", "tr"),
    Voice("fe-slt", "festival", "cmu_us_slt_arctic_hts", "F", "tr"),  # the same speaker as fl-slt
    # validation voices
    _es("es-sc-m8", "en-gb-scotland+m8", "M", "cv", 40, 150),
    _es("es-us-adam", "en-us+adam", "M", "cv", 48, 170),
    _es("es-rp-f3", "en-gb-x-rp+f3", "F", "cv", 68, 160),
    _es("es-car-andrea", "en-029+Andrea", "F", "cv", 58, 150),
    # test voices (the bundled demo mixes two of them)
    _es("es-sc-m1", "en-gb-scotland+m1", "M", "tt", 45, 155),
    _es("es-us-klatt2", "en-us+klatt2", "M", "tt", 38, 165),
    _es("es-us-f4", "en-us+f4", "F", "tt", 75, 175),
    _es("es-rp-annie", "en-gb-x-rp+Annie", "F", "tt", 64, 150),
    Voice("fl-awb", "flite", "awb", "M", "tt"),
    Voice("fe-ked", "festival", "ked_diphone", "M", "tt"),
)
FESTIVAL_VOICE_DIRS = ("/usr/share/festival/voices", "/usr/lib/festival/voices")


def available_voices(voices=VOICES) -> tuple[list[Voice], list[str]]:
    """The voices whose engine (and, for festival, voice data) is installed, and notes on those skipped."""
    notes, out = [], []
    for engine, exe in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("festival", "festival")):
        if shutil.which(exe) is None:
            names = [v.name for v in voices if v.engine == engine]
            if names:
                notes.append(f"{engine} not installed: skipping {', '.join(names)}")
    for v in voices:
        if shutil.which(v.engine) is None:
            continue
        if v.engine == "festival" and not any(Path(d).glob(f"*/{v.voice}") for d in FESTIVAL_VOICE_DIRS):
            notes.append(f"festival voice {v.voice} not installed: skipping {v.name}")
            continue
        out.append(v)
    return out, notes


def load_sentences(path: Path = SENTENCES) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def split_sentences(sentences: list[str], seed: int, n_cv: int, n_tt: int) -> dict[str, list[tuple[int, str]]]:
    """Disjoint pools ``{split: [(sentence_id, text)]}``; the id is the line's index in the list."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    if n_cv + n_tt >= len(order):
        raise ValueError(f"{len(order)} sentences cannot give {n_cv} cv + {n_tt} tt sentences and a tr pool")
    cut = {"tt": order[:n_tt], "cv": order[n_tt:n_tt + n_cv], "tr": order[n_tt + n_cv:]}
    return {split: [(i, sentences[i]) for i in sorted(ids)] for split, ids in cut.items()}


# --- synthesis ---------------------------------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float = 60) -> None:
    result = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({result.returncode}): {result.stderr.decode()[-300:]}")


def _festival_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synthesize(voice: Voice, jobs: list[tuple[str, Path]], rng: random.Random) -> None:
    """Write ``(text, wav_path)`` jobs with ``voice`` at the engine's native rate (raw files, post-processed later).

    espeak-ng gets a per-utterance jitter of +-4 pitch and +-7 % rate, so one speaker does not read every sentence
    with the same melody; flite and festival voices have no such knob and read as they are.
    """
    if voice.engine == "espeak-ng":
        for text, path in jobs:
            pitch = min(99, max(0, voice.pitch + rng.randint(-4, 4)))
            rate = int(round(voice.rate * rng.uniform(0.93, 1.07)))
            _run(["espeak-ng", "-v", voice.voice, "-p", str(pitch), "-s", str(rate), "-w", str(path), text])
    elif voice.engine == "flite":
        for text, path in jobs:
            _run(["flite", "-voice", voice.voice, "-t", text, "-o", str(path)])
    elif voice.engine == "festival":
        # One festival process per voice: its start-up (~0.3 s) dominates a single utterance.
        script = [f"(voice_{voice.voice})"]
        script += [f"(utt.save.wave (utt.synth (Utterance Text {_festival_string(t)})) {_festival_string(str(p))} "
                   "'riff)" for t, p in jobs]
        with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
            f.write("\n".join(script) + "\n")
        try:
            _run(["festival", "--batch", f.name], timeout=60 + 5 * len(jobs))
        finally:
            os.unlink(f.name)
    else:
        raise ValueError(f"unknown TTS engine {voice.engine!r}")


def postprocess(raw: Path, out: Path, sample_rate: int = SAMPLE_RATE, margin_s: float = 0.05) -> float:
    """Mono, resampled to ``sample_rate``, leading/trailing silence (< -40 dB of the peak) trimmed to ``margin_s``,
    peak at -3 dBFS, written as 16-bit PCM (WAV or FLAC by suffix). Returns the duration in seconds."""
    wav, sr = read_audio(raw)
    wav = resample(wav, sr, sample_rate).numpy()
    peak = np.abs(wav).max(initial=0.0)
    if peak <= 0:
        raise RuntimeError(f"the TTS engine wrote silence to {raw}")
    loud = np.flatnonzero(np.abs(wav) > peak * 10 ** (-40 / 20))
    margin = int(margin_s * sample_rate)
    wav = wav[max(0, loud[0] - margin): loud[-1] + 1 + margin]
    wav = wav / np.abs(wav).max() * 10 ** (-3 / 20)
    sf.write(str(out), wav, sample_rate, subtype="PCM_16")
    return len(wav) / sample_rate


def synth_stage(out: Path, voices: list[Voice], pools: dict, utts_per_speaker: dict[str, int], seed: int,
                bank_format: str, workers: int) -> list[dict]:
    """Synthesise the bank; returns the rows of ``utterances.csv``. Existing utterances are kept (resumable)."""
    tasks = []
    for v in voices:
        pool = pools[v.split]
        n = min(utts_per_speaker[v.split], len(pool))
        picked = sorted(random.Random(f"{seed}-{v.name}").sample(pool, n))
        tasks.append((v, [(sid, text, out / "speakers" / v.split / v.name / f"{v.name}-{sid:03d}.{bank_format}")
                          for sid, text in picked]))

    def work(task) -> list[dict]:
        v, items = task
        todo = [(sid, text, path) for sid, text, path in items if not path.is_file()]
        if todo:
            with tempfile.TemporaryDirectory() as tmp:
                raw = [(text, Path(tmp) / f"{sid}.wav") for sid, text, _ in todo]
                synthesize(v, raw, random.Random(f"{seed}-{v.name}-jitter"))
                for (_, path), (_, _, final) in zip(raw, todo, strict=True):
                    final.parent.mkdir(parents=True, exist_ok=True)
                    tmp_final = final.with_name(final.stem + ".partial" + final.suffix)
                    postprocess(path, tmp_final)
                    tmp_final.replace(final)  # a killed run leaves no half-written bank file
        return [{"utt_id": p.stem, "speaker": v.name, "split": v.split, "sentence_id": sid, "text": text,
                 "path": str(p.relative_to(out)), "duration": f"{sf.info(str(p)).duration:.3f}"}
                for sid, text, p in items]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for rows in pool.map(work, tasks) for row in rows]
    return rows


# --- mixing ------------------------------------------------------------------------------------------------------

def _bank(out: Path, split: str) -> dict[str, list[Path]]:
    root = out / "speakers" / split
    if not root.is_dir():
        raise FileNotFoundError(f"no single-speaker bank at {root}: run the synth stage first")
    return {d.name: sorted(p for p in d.iterdir() if p.suffix in (".wav", ".flac"))
            for d in sorted(root.iterdir()) if d.is_dir()}


def mix_stage(out: Path, split: str, n_mix: int, seed: int) -> int:
    """Write ``n_mix`` mixtures of ``split`` and its two CSVs; returns the number written."""
    bank = _bank(out, split)
    speakers = [s for s in bank if bank[s]]
    if len(speakers) < 2:
        raise ValueError(f"split {split} has {len(speakers)} voices with utterances; two are needed")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    for sub in ("mix", "s1", "s2"):
        shutil.rmtree(out / split / sub, ignore_errors=True)  # no stale mixtures of an earlier run
        (out / split / sub).mkdir(parents=True)
    meta, recipe, seen = [], [], set()
    cache: dict[Path, np.ndarray] = {}
    attempts = 0
    while len(meta) < n_mix:
        attempts += 1
        if attempts > 20 * n_mix + 100:
            raise ValueError(f"split {split}: cannot draw {n_mix} distinct mixtures from this bank")
        a, b = rng.choice(len(speakers), size=2, replace=False)
        pa = bank[speakers[a]][int(rng.integers(len(bank[speakers[a]])))]
        pb = bank[speakers[b]][int(rng.integers(len(bank[speakers[b]])))]
        if pa.stem.rsplit("-", 1)[1] == pb.stem.rsplit("-", 1)[1] or (pa, pb) in seen:
            continue  # two voices reading the same sentence, or a pair already used
        seen.add((pa, pb))
        g = float(rng.uniform(0.0, 2.5))
        for p in (pa, pb):
            if p not in cache:
                cache[p] = read_audio(p)[0]
        mix, (s1, s2) = make_mixture([cache[pa], cache[pb]], [g, -g], SAMPLE_RATE)
        name = f"{pa.stem}_{g:.4f}_{pb.stem}_{-g:.4f}"
        for sub, wav in (("mix", mix), ("s1", s1), ("s2", s2)):
            sf.write(str(out / split / sub / f"{name}.wav"), wav, SAMPLE_RATE, subtype="PCM_16")
        meta.append({"mixture_ID": name, "mixture_path": f"{split}/mix/{name}.wav",
                     "source_1_path": f"{split}/s1/{name}.wav", "source_2_path": f"{split}/s2/{name}.wav",
                     "length": len(mix)})
        # Linear gains that turn the bank files into s1 / s2 (LibriMix's recipe CSV).
        ga = float(np.dot(s1, cache[pa][: len(s1)]) / max(np.dot(cache[pa][: len(s1)], cache[pa][: len(s1)]), 1e-12))
        gb = float(np.dot(s2, cache[pb][: len(s2)]) / max(np.dot(cache[pb][: len(s2)], cache[pb][: len(s2)]), 1e-12))
        recipe.append({"mixture_ID": name, "source_1_path": str(pa.relative_to(out)), "source_1_gain": f"{ga:.6f}",
                       "source_2_path": str(pb.relative_to(out)), "source_2_gain": f"{gb:.6f}"})
    _write_csv(out / "metadata" / f"mixture_{split}_mix_clean.csv", meta)
    _write_csv(out / "metadata" / f"libri2mix_{split}.csv", recipe)
    return len(meta)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--stage", choices=("all", "synth", "mix"), default="all")
    parser.add_argument("--n-mix", type=int, nargs=3, default=(2000, 300, 300), metavar=("TR", "CV", "TT"),
                        help="mixtures per split (wsj0-2mix has 20000 5000 3000)")
    parser.add_argument("--utts-per-speaker", type=int, nargs=3, default=(120, 40, 40), metavar=("TR", "CV", "TT"),
                        help="sentences each voice of a split reads (capped by the split's sentence pool)")
    parser.add_argument("--sentences", type=int, nargs=2, default=(40, 40), metavar=("CV", "TT"),
                        help="sentences reserved for cv and tt; the rest are the tr pool")
    parser.add_argument("--engines", default="espeak-ng,flite,festival",
                        help="comma-separated engines to use (default: every installed one)")
    parser.add_argument("--bank-format", choices=("wav", "flac"), default="wav")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "synth"):
        wanted = set(args.engines.split(","))
        voices, notes = available_voices([v for v in VOICES if v.engine in wanted])
        for note in notes:
            print(f"note: {note}")
        if not voices:
            print("error: no TTS engine is installed (apt-get install espeak-ng)", file=sys.stderr)
            return 1
        missing = [s for s in SPLITS if not any(v.split == s for v in voices)]
        if missing:
            print(f"error: no voice for split(s) {missing}", file=sys.stderr)
            return 1
        pools = split_sentences(load_sentences(), args.seed, *args.sentences)
        rows = synth_stage(out, voices, pools, dict(zip(SPLITS, args.utts_per_speaker, strict=True)), args.seed,
                           args.bank_format, args.workers)
        _write_csv(out / "metadata" / "speakers.csv", [asdict(v) for v in voices])
        _write_csv(out / "metadata" / "utterances.csv", rows)
        hours = sum(float(r["duration"]) for r in rows) / 3600
        print(f"synth: {len(voices)} voices, {len(rows)} utterances ({hours:.2f} h) in {out / 'speakers'}")
    if args.stage in ("all", "mix"):
        for split, n in zip(SPLITS, args.n_mix, strict=True):
            if n > 0:
                print(f"mix: {split}: {mix_stage(out, split, n, args.seed)} mixtures in {out / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

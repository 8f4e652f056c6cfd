"""Separate two overlapping talkers with the bundled dual-path Mamba separator, offline on a CPU.

    python demo/separate_speech.py                    # the bundled mixture of two unseen test voices
    python demo/separate_speech.py my_mixture.wav     # your recording: any sample rate, mono or stereo

Writes ``<out-dir>/<name>_s1.wav``, ``<name>_s2.wav`` (the estimates, at the input's sample rate) and
``<name>_spectrograms.png`` (mixture and estimates), then prints the SI-SNR improvement when reference sources are
known (bundled with the demo mixture, or given with ``--refs``) and the CPU real-time factor (processing time /
audio duration).

The bundled model is ``dpmamba_xs.tts2mix``: DPMamba-XS trained briefly on a synthetic corpus of text-to-speech
voices (``tools/make_mixtures.py``; ``weights/manifest.json`` has the recipe and test scores). It separates voices
like those well enough to hear the principle; it was not trained on real recordings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmzoo.runtime import keep_freed_memory  # noqa: E402
from ssmzoo.tasks.separation import Separator, separation_metrics  # noqa: E402
from ssmzoo.tasks.separation_data import read_audio  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parent
BUNDLED = DEMO_DIR / "tt_mixture.wav"
BUNDLED_REFS = (DEMO_DIR / "tt_reference_s1.wav", DEMO_DIR / "tt_reference_s2.wav")


def plot_spectrograms(path: Path, signals: list[tuple[str, torch.Tensor]], sample_rate: int) -> None:
    """One PNG, one spectrogram per row (dB, shared colour scale), titled with each row's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(signals), 1, figsize=(9, 2.3 * len(signals)), sharex=True, squeeze=False)
    nfft = 256 if sample_rate <= 16000 else 1024
    for ax, (label, wav) in zip(axes[:, 0], signals, strict=True):
        ax.specgram(wav.numpy(), NFFT=nfft, Fs=sample_rate, noverlap=nfft * 3 // 4, cmap="magma", vmin=-120, vmax=-20)
        ax.set_title(label, fontsize=10, loc="left")
        ax.set_ylabel("Hz")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", nargs="?", type=Path, default=None,
                        help=f"mixture to separate (default: the bundled {BUNDLED.name})")
    parser.add_argument("--out-dir", type=Path, default=Path("separated"), help="where the results go")
    parser.add_argument("--refs", type=Path, nargs=2, metavar=("S1", "S2"), default=None,
                        help="reference sources of the mixture, to print the SI-SNR improvement")
    parser.add_argument("--model", default=None, help="ssmzoo separator name (default: the bundled dpmamba_xs.tts2mix)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)

    path = args.audio or BUNDLED
    refs = args.refs or (BUNDLED_REFS if args.audio is None else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # the separator's large temporaries then reuse memory instead of faulting in fresh pages
    try:
        mix, rate = read_audio(path)
        separator = Separator.from_pretrained(args.model)
        separator.separate(mix[: rate // 2], sample_rate=rate)  # warm-up: first-call allocations are not the RTF
        start = time.perf_counter()
        estimates = separator.separate(path)
        elapsed = time.perf_counter() - start
        written = separator.save(estimates, rate, args.out_dir, path.stem)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    duration = mix.shape[-1] / rate
    mix = torch.from_numpy(mix)

    print(f"separated {path} ({duration:.2f} s at {rate} Hz) into:")
    for p in written:
        print(f"  {p}")
    labels = [(f"mixture: {path.name}", mix)] + [(f"estimate {k + 1}", est) for k, est in enumerate(estimates)]
    if refs is not None:
        ref = torch.stack([torch.from_numpy(read_audio(r)[0]) for r in refs])
        metrics = separation_metrics(estimates[None], ref[None], mix[None], sdr=False)
        print(f"SI-SNR {metrics['si_snr'].item():.2f} dB, improvement over the mixture (SI-SNRi) "
              f"{metrics['si_snri'].item():.2f} dB")
        labels[0] = (labels[0][0] + f"  (estimates: SI-SNRi {metrics['si_snri'].item():.1f} dB)", mix)
    png = args.out_dir / f"{path.stem}_spectrograms.png"
    plot_spectrograms(png, labels, rate)
    print(f"  {png}")
    print(f"CPU real-time factor {elapsed / duration:.3f} ({elapsed:.2f} s for {duration:.2f} s of audio, "
          f"{torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

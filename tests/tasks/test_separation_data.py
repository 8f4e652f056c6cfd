"""ssmzoo.tasks.separation_data on tiny synthetic layouts: reading, resampling, cropping, dynamic mixing, collation."""
import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from ssmzoo.tasks.separation_data import (
    DynamicMixDataset,
    LibriMixDataset,
    Wsj0MixDataset,
    active_level,
    collate_separation,
    make_mixture,
    read_audio,
)


def _tone(f0: float, seconds: float, sr: int, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * env * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


@pytest.fixture()
def wsj_root(tmp_path):
    for split in ("tr", "tt"):
        for k in range(3):
            s1, s2 = _tone(200 + 20 * k, 1.0 + 0.25 * k, 8000, k), _tone(330 + 10 * k, 1.0 + 0.25 * k, 8000, 5 + k)
            for sub, wav in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
                (tmp_path / split / sub).mkdir(parents=True, exist_ok=True)
                sf.write(str(tmp_path / split / sub / f"m{k}.wav"), wav, 8000, subtype="PCM_16")
    return tmp_path


def test_wsj0mix_items_and_crops(wsj_root):
    ds = Wsj0MixDataset(wsj_root, "tr", random_crop=False)
    item = ds[2]
    assert item["id"] == "m2" and item["mix"].shape == (12000,) and item["sources"].shape == (2, 12000)
    torch.testing.assert_close(item["mix"], item["sources"].sum(0), atol=2e-4, rtol=0)
    cropped = Wsj0MixDataset(wsj_root, "tr", segment=0.5, seed=3)
    a, b = cropped[2], cropped[2]
    assert a["mix"].shape == (4000,)
    torch.testing.assert_close(a["mix"], b["mix"])  # the same (seed, epoch, index) gives the same crop
    cropped.set_epoch(1)
    assert not torch.equal(cropped[2]["mix"], a["mix"])
    padded = Wsj0MixDataset(wsj_root, "tr", segment=2.0)[0]  # shorter than the segment: zero-padded
    assert padded["mix"].shape == (16000,) and padded["mix"][8000:].abs().max() == 0


def test_resampling_and_collate(wsj_root):
    ds16 = Wsj0MixDataset(wsj_root, "tt", sample_rate=16000, random_crop=False)
    assert ds16[0]["mix"].shape == (16000,)
    batch = collate_separation([ds16[0], ds16[2]])
    assert batch["mix"].shape == (2, 24000) and batch["sources"].shape == (2, 2, 24000)
    assert batch["lengths"].tolist() == [16000, 24000] and batch["id"] == ["m0", "m2"]


def test_librimix_csv_relative_and_absolute_paths(wsj_root):
    meta = wsj_root / "metadata"
    meta.mkdir()
    with open(meta / "mixture_tt_mix_clean.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"])
        w.writerow(["a", "tt/mix/m0.wav", "tt/s1/m0.wav", str(wsj_root / "tt/s2/m0.wav"), 8000])
    ds = LibriMixDataset(meta / "mixture_tt_mix_clean.csv")
    assert len(ds) == 1 and ds[0]["sources"].shape == (2, 8000)


def test_missing_layouts_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tr/mix"):
        Wsj0MixDataset(tmp_path, "tr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot read audio"):
        read_audio(tmp_path / "bad.wav")


def test_make_mixture_levels_and_peak():
    a, b = _tone(200, 1.0, 8000, 0), 0.01 * _tone(300, 0.8, 8000, 1)
    mix, (s1, s2) = make_mixture([a, b], [1.5, -1.5])
    assert mix.shape == (6400,)  # "min" truncation
    assert 20 * np.log10(active_level(s1) / active_level(s2)) == pytest.approx(3.0, abs=1e-3)
    assert max(np.abs(mix).max(), np.abs(s1).max(), np.abs(s2).max()) == pytest.approx(0.9)
    np.testing.assert_allclose(mix, s1 + s2, atol=1e-6)


def test_dynamic_mixing_from_speaker_folders(tmp_path):
    for spk in range(3):
        (tmp_path / f"spk{spk}" / "chapter").mkdir(parents=True)
        for utt in range(2):
            wav = _tone(150 + 60 * spk + 10 * utt, 0.6 + 0.3 * utt, 16000, spk + utt)
            sf.write(str(tmp_path / f"spk{spk}" / "chapter" / f"spk{spk}-u{utt}.flac"), wav, 16000)
    ds = DynamicMixDataset(tmp_path, num_mixtures=5, segment=0.5, sample_rate=8000,
                           speed_perturb=(0.95, 1.0, 1.05), preload=True, seed=1)
    items = [ds[i] for i in range(5)]
    assert all(it["mix"].shape == (4000,) and it["sources"].shape == (2, 4000) for it in items)
    for it in items:
        torch.testing.assert_close(it["mix"], it["sources"].sum(0), atol=1e-6, rtol=0)
        a, b = it["id"].split("_")
        assert a != b
    torch.testing.assert_close(ds[3]["mix"], items[3]["mix"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["mix"], items[3]["mix"])
    with pytest.raises(ValueError, match="fewer than n_src"):
        DynamicMixDataset(tmp_path / "spk0")

"""tools/make_mixtures.py on a tiny espeak-ng corpus: layout, CSVs, disjoint splits, wsj0-2mix levels, determinism."""
import csv
import hashlib
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssmzoo.tasks.separation_data import LibriMixDataset, Wsj0MixDataset, active_level

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_mixtures.py"
N_MIX = (6, 3, 4)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _tool():
    spec = importlib.util.spec_from_file_location("make_mixtures_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the tool is being executed
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("tts2mix")
    args = [str(out), "--engines", "espeak-ng", "--utts-per-speaker", "3", "2", "2", "--n-mix", *map(str, N_MIX)]
    assert _tool().main(args) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_csvs_and_audio_format(corpus):
    for split, n in zip(("tr", "cv", "tt"), N_MIX, strict=True):
        names = {sub: sorted(p.name for p in (corpus / split / sub).glob("*.wav")) for sub in ("mix", "s1", "s2")}
        assert len(names["mix"]) == n and names["mix"] == names["s1"] == names["s2"]
        for name in names["mix"]:
            # wsj0-2mix naming: <utt1>_<g>_<utt2>_<-g>, the two gains opposite
            m = re.fullmatch(r"(.+)_(\d\.\d{4})_(.+)_(-\d\.\d{4})\.wav", name)
            assert m and float(m.group(2)) == -float(m.group(4)), name
        rows = _rows(corpus / "metadata" / f"mixture_{split}_mix_clean.csv")
        assert sorted(r["mixture_ID"] + ".wav" for r in rows) == names["mix"]
        assert set(rows[0]) == {"mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"}
        recipe = _rows(corpus / "metadata" / f"libri2mix_{split}.csv")
        assert len(recipe) == n and {"source_1_gain", "source_2_gain"} <= set(recipe[0])
    info = sf.info(str(next((corpus / "tt" / "mix").glob("*.wav"))))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")


def test_mixtures_are_sums_with_wsj0_levels(corpus):
    for path in (corpus / "tr" / "mix").glob("*.wav"):
        mix, _ = sf.read(str(path))
        s1, _ = sf.read(str(path.parent.parent / "s1" / path.name))
        s2, _ = sf.read(str(path.parent.parent / "s2" / path.name))
        np.testing.assert_allclose(mix, s1 + s2, atol=2.5 / 32768)  # three int16 roundings
        assert max(np.abs(mix).max(), np.abs(s1).max(), np.abs(s2).max()) == pytest.approx(0.9, abs=1e-4)
        rel_db = 20 * np.log10(active_level(s1) / active_level(s2))
        g = float(path.stem.split("_")[1])
        assert -0.05 <= rel_db <= 5.05 and rel_db == pytest.approx(2 * g, abs=0.05)


def test_recipe_gains_rebuild_the_sources(corpus):
    row = _rows(corpus / "metadata" / "libri2mix_cv.csv")[0]
    s1, _ = sf.read(str(corpus / "cv" / "s1" / f"{row['mixture_ID']}.wav"))
    bank, _ = sf.read(str(corpus / row["source_1_path"]))
    np.testing.assert_allclose(bank[: len(s1)] * float(row["source_1_gain"]), s1, atol=2 / 32768)


def test_splits_are_speaker_and_sentence_disjoint(corpus):
    utts = _rows(corpus / "metadata" / "utterances.csv")
    by_split = {s: [u for u in utts if u["split"] == s] for s in ("tr", "cv", "tt")}
    speakers = {s: {u["speaker"] for u in rows} for s, rows in by_split.items()}
    sentences = {s: {u["sentence_id"] for u in rows} for s, rows in by_split.items()}
    for a, b in (("tr", "cv"), ("tr", "tt"), ("cv", "tt")):
        assert not speakers[a] & speakers[b] and not sentences[a] & sentences[b]
    assert all(len(speakers[s]) >= 2 for s in speakers)
    # every mixture uses two different voices of its own split reading different sentences
    for split in ("tr", "cv", "tt"):
        for row in _rows(corpus / "metadata" / f"libri2mix_{split}.csv"):
            a, b = Path(row["source_1_path"]), Path(row["source_2_path"])
            assert a.parts[1] == b.parts[1] == split and a.parent.name != b.parent.name
            assert a.stem.rsplit("-", 1)[1] != b.stem.rsplit("-", 1)[1]


def test_mix_stage_is_deterministic(corpus, tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted((root / "tt").rglob("*.wav")):
            h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    before = digest(corpus)
    assert _tool().main([str(corpus), "--stage", "mix", "--n-mix", "0", "0", str(N_MIX[2])]) == 0
    assert digest(corpus) == before


def test_datasets_read_the_generated_layouts(corpus):
    folders = Wsj0MixDataset(corpus, "tt", random_crop=False)
    listed = LibriMixDataset(corpus / "metadata" / "mixture_tt_mix_clean.csv", random_crop=False)
    assert len(folders) == len(listed) == N_MIX[2]
    by_id = {listed[i]["id"]: listed[i] for i in range(len(listed))}
    item = folders[0]
    assert item["mix"].ndim == 1 and item["sources"].shape == (2, item["mix"].shape[0])
    np.testing.assert_array_equal(item["mix"].numpy(), by_id[item["id"]]["mix"].numpy())


def test_missing_engine_is_reported(tmp_path, capsys):
    assert _tool().main([str(tmp_path / "x"), "--engines", "no-such-engine"]) == 1
    assert "no TTS engine" in capsys.readouterr().err

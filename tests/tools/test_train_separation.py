"""tools/train_separation.py on a tiny synthetic corpus: train, checkpoint, resume, evaluate, export."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train_separation.py"


def _tool():
    spec = importlib.util.spec_from_file_location("train_separation_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    for spk in range(3):  # single-speaker folders for dynamic mixing
        (tmp_path / "speakers" / "tr" / f"spk{spk}").mkdir(parents=True)
        for utt in range(2):
            wav = 0.3 * np.sin(2 * np.pi * (120 + 90 * spk + 7 * utt) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            sf.write(str(tmp_path / "speakers" / "tr" / f"spk{spk}" / f"spk{spk}-{utt}.wav"), wav, 8000)
    for k in range(2):  # two fixed test mixtures
        s1, s2 = 0.2 * rng.standard_normal(2000), 0.1 * np.sin(2 * np.pi * 300 * t[:2000])
        for sub, wav in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
            (tmp_path / "tt" / sub).mkdir(parents=True, exist_ok=True)
            sf.write(str(tmp_path / "tt" / sub / f"m{k}.wav"), wav, 8000)
    return tmp_path


def test_train_resume_evaluate_export(corpus, tmp_path):
    tool = _tool()
    work = tmp_path / "work"
    common = ["--model", "test_dpmamba", "--data", str(corpus), "--work-dir", str(work), "--batch-size", "2",
              "--segment", "0.25", "--num-workers", "0", "--device", "cpu", "--log-every", "1", "--no-sdr"]
    assert tool.main(common + ["--steps", "2"]) == 0
    results = json.loads((work / "results.json").read_text())
    assert results["step"] == 2 and results["n_mixtures"] == 2 and np.isfinite(results["si_snri"])
    assert tool.main(common + ["--steps", "3", "--resume", "--extend"]) == 0
    assert json.loads((work / "results.json").read_text())["step"] == 3
    assert "resumed from" in (work / "log.txt").read_text()
    out = tmp_path / "w.safetensors"
    assert tool.main(common + ["--export", str(out)]) == 0
    assert "encoder.conv1d.weight" in load_file(str(out))


def test_schedule_warms_up_then_decays_to_one_percent():
    tool = _tool()
    factors = [tool.lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert tool.lr_factor(100, 10, 100) == pytest.approx(0.01)

"""The contract every registered ssmzoo model inherits: timm's API, gradients, ONNX export and official parity.

Families opt in by registering (``ssmzoo.models.register_model``); nothing here names a family. Full-size models
run at their cfg's ``min_input_size`` (the smallest input they accept) to keep the suite fast on a CPU.
"""
from __future__ import annotations

import fnmatch
import importlib
from pathlib import Path

import pytest
import timm
import torch
from conftest import shared_dir

import ssmzoo
from models.parity import parity_failures
from ssmzoo.export import export_onnx
from ssmzoo.models import FAMILY_OF_OFFICIAL_REPO

MODELS = ssmzoo.list_models()
TEST_MODELS = [name for name in MODELS if name.startswith("test_")]
BATCH = 2


def _params(names: list[str]) -> list:
    """Full-size models (tens of millions of parameters) run in the slow suite (``-m slow``); the tiny ``test_*``
    variant of each family, built from the same code, keeps the default CPU run within its time budget."""
    return [name if name.startswith("test_") else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


def _input_size(name: str) -> tuple[int, ...]:
    cfg = _cfg(name)
    if name.startswith("test_"):
        return tuple(cfg["input_size"])
    return tuple(cfg.get("min_input_size") or cfg["input_size"])


def _input(name: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *_input_size(name), generator=generator)


def _is_classifier(name: str) -> bool:
    return _cfg(name).get("classifier") is not None


CLASSIFIERS = [name for name in MODELS if _is_classifier(name)]


def _create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return ssmzoo.create_model(name, **kwargs).eval()


def _assert_map_size(feature: torch.Tensor, x: torch.Tensor, reduction: int) -> None:
    """A level of reduction r has about (H/r, W/r) cells: padded convs give ceil, overlapping patch embeddings
    (Vim's 16x16 patches at stride 8) give (H - 16) // 8 + 1, one less."""
    for actual, size in zip(feature.shape[-2:], x.shape[-2:], strict=True):
        assert abs(actual - size / reduction) < 1 + 1e-9 and actual >= 1, \
            f"map of {tuple(feature.shape[-2:])} for input {tuple(x.shape[-2:])} at reduction {reduction}"


def test_harness_sees_models():
    assert "test_toyzoo" in MODELS, "the tests' toy family must be registered (tests/conftest.py)"
    assert all(timm.is_model(name) for name in MODELS)


@pytest.mark.parametrize("name", _params(CLASSIFIERS))
def test_classifier_api(name):
    model = _create(name)
    x = _input(name)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state, f"first_conv {cfg['first_conv']} not in the state_dict"
    assert cfg["classifier"] + ".weight" in state, f"classifier {cfg['classifier']} not in the state_dict"
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        assert out.shape == (BATCH, model.num_classes)
        torch.testing.assert_close(model.forward_head(features), out)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)
        if features.ndim == 4:  # NCHW maps; token models return (B, L, C)
            assert features.shape[1] == model.num_features
        else:
            assert features.shape[-1] == model.num_features
        assert model.get_classifier() is not None
        model.reset_classifier(0)
        assert model(x).shape == (BATCH, model.head_hidden_size)
        model.reset_classifier(7)
        assert model(x).shape == (BATCH, 7)
        assert isinstance(model.get_classifier(), torch.nn.Module)


@pytest.mark.parametrize("name", _params(CLASSIFIERS))
def test_no_weight_decay_patterns_match(name):
    model = _create(name)
    params = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(p, pattern) for p in params), f"no_weight_decay entry {pattern!r} matches nothing"
    assert isinstance(model.group_matcher(), dict)


@pytest.mark.parametrize("name", _params(CLASSIFIERS))
def test_forward_intermediates_and_features_only(name):
    model = _create(name)
    x = _input(name)
    info = model.feature_info
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-6)
        assert len(intermediates) == len(info) >= 3
        for feat, level in zip(intermediates, info, strict=True):
            assert feat.ndim == 4, "intermediates must be NCHW maps"
            assert feat.shape[1] == level["num_chs"]
            _assert_map_size(feat, x, level["reduction"])
        only = model.forward_intermediates(x, indices=[0, len(info) - 1], intermediates_only=True)
        assert len(only) == 2
        torch.testing.assert_close(only[1], intermediates[-1])

    features = _create(name, features_only=True)
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    for m, reduction in zip(maps, features.feature_info.reduction(), strict=True):
        assert m.ndim == 4, "features_only must give NCHW maps"
        _assert_map_size(m, x, reduction)


@pytest.mark.parametrize("name", _params(CLASSIFIERS))
def test_grad_checkpointing_same_output(name):
    model = _create(name)
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        model.set_grad_checkpointing(True)
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def _outputs(result) -> list[torch.Tensor]:
    if torch.is_tensor(result):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    return [t for item in result for t in _outputs(item)]


@pytest.mark.parametrize("name", _params(MODELS))
def test_backward_gives_finite_grads(name):
    model = _create(name).train()
    out = _outputs(model(_input(name)))
    loss = sum(o.float().square().mean() for o in out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}{' ...' if len(missing) > 5 else ''}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    model = _create(name)
    report = export_onnx(model, _input(name), tmp_path / f"{name}.onnx", rtol=1e-4)
    assert report.max_abs_diff <= 1e-4 * max(report.output_scale, 1e-12)
    assert report.path.is_file()


# --- parity with the official code -------------------------------------------------------------------------------

FIXTURES = sorted((shared_dir() / "fixtures" / "parity").glob("*.pt"))


def _fixture_id(path: Path) -> str:
    return path.stem


def _family_module(fixture: dict):
    repo = fixture["official_repo"]
    family = FAMILY_OF_OFFICIAL_REPO.get(repo)
    assert family is not None, f"no family is assigned to official repository {repo} (FAMILY_OF_OFFICIAL_REPO)"
    try:
        return importlib.import_module(f"ssmzoo.models.{family}")
    except ModuleNotFoundError as err:
        if err.name == f"ssmzoo.models.{family}":
            pytest.skip(f"family module ssmzoo.models.{family} does not exist yet")
        raise


def test_parity_fixtures_found():
    if not (shared_dir() / "fixtures" / "parity").is_dir():
        pytest.skip(f"no parity fixtures at {shared_dir()}")
    assert FIXTURES, "the parity fixture folder holds no .pt files"


@pytest.mark.parametrize("path", FIXTURES, ids=_fixture_id)
def test_official_parity(path):
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    family = _family_module(fixture)
    model = family.from_official(fixture["constructor"], fixture["state_dict"]).eval()
    with torch.no_grad():
        ours = family.official_parity(model, fixture)
    failures = parity_failures(fixture, ours, getattr(family, "PARITY_NOT_REPRODUCED", None))
    assert not failures, f"{path.name} ({fixture['official_repo']}):\n  " + "\n  ".join(failures)

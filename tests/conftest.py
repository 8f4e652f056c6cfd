"""Test-wide set-up: register the toy family of the tests and keep tests off the user's weight cache."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models.toy_family  # noqa: E402,F401  (registers test_toyzoo before parametrisation)


@pytest.fixture(autouse=True)
def _isolated_weight_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty SSMZOO_HOME so nothing depends on (or pollutes) ~/.cache/ssmzoo."""
    monkeypatch.setenv("SSMZOO_HOME", str(tmp_path_factory.mktemp("ssmzoo_home")))
    for name in ("SSMZOO_OFFLINE", "SSMZOO_REQUIRE_HASH"):
        monkeypatch.delenv(name, raising=False)
    yield


def shared_dir() -> Path:
    """``../shared`` beside the checkout (CI and every engineer have it); ``SSMZOO_SHARED`` overrides."""
    return Path(os.environ.get("SSMZOO_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")

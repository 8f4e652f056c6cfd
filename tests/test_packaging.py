"""A wheel ships all of ssmzoo and the bundled weights: every source folder is a regular package listed in
pyproject.toml, and the weights folder installs as ``ssmzoo.weights``."""
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssmzoo"


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_folder_has_an_init():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py are left out of a wheel: {missing}"


def test_every_package_is_listed_for_the_wheel():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")
             if "__pycache__" not in p.parts}
    listed = set(_setuptools()["packages"])
    assert found <= listed, f"packages missing from pyproject's [tool.setuptools] packages: {sorted(found - listed)}"


def test_bundled_weights_ship_as_package_data():
    cfg = _setuptools()
    assert cfg["package-dir"]["ssmzoo.weights"] == "weights" and (ROOT / "weights" / "__init__.py").is_file()
    patterns = cfg["package-data"]["ssmzoo.weights"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "weights").glob(pattern)}
    on_disk = {p.name for p in (ROOT / "weights").iterdir() if p.suffix in (".safetensors", ".json")}
    assert on_disk and on_disk <= shipped, f"weights not shipped in a wheel: {sorted(on_disk - shipped)}"

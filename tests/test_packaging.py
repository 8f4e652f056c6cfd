"""Every folder of the package is a regular package, so a non-editable install (wheel) ships all of it."""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssmzoo"


def test_every_source_folder_has_an_init():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py are left out of a wheel: {missing}"

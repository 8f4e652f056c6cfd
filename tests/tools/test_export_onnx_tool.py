"""tools/export_onnx.py: writes a verified file and reports the difference, or names the operator it cannot export."""
import importlib.util
from pathlib import Path

import onnx
import torch

from ssmzoo.models import build_model, generate_default_cfgs, register_model

TOOL = Path(__file__).resolve().parents[2] / "tools" / "export_onnx.py"


def _tool():
    spec = importlib.util.spec_from_file_location("export_onnx_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_writes_verified_file_and_prints_difference(tmp_path, capsys):
    out = tmp_path / "toy.onnx"
    assert _tool().main(["test_toyzoo", "-o", str(out), "--dynamic-batch"]) == 0
    printed = capsys.readouterr().out
    assert "max |onnx - torch|" in printed and "batch" in printed
    onnx.checker.check_model(onnx.load(str(out)))
    assert not list(tmp_path.glob("*.partial"))


def test_fixed_shapes_are_reported(tmp_path, capsys):
    assert _tool().main(["test_toyzoo", "-o", str(tmp_path / "t.onnx"), "--input-size", "3", "40", "24"]) == 0
    assert "[2, 3, 40, 24] (all input sizes are fixed" in capsys.readouterr().out


@torch.library.custom_op("ssmzoo_tests::opaque_square", mutates_args=())
def _opaque_square(x: torch.Tensor) -> torch.Tensor:
    return x * x


@_opaque_square.register_fake
def _(x):
    return torch.empty_like(x)


class _Unexportable(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return _opaque_square(self.proj(x))


def _register_unexportable():
    import sys

    module = sys.modules[__name__]
    module.default_cfgs = generate_default_cfgs({"toyzoo_unexportable": dict(input_size=(1, 4, 4), num_classes=0)})

    def toyzoo_unexportable(pretrained=False, **kwargs):
        return build_model(_Unexportable, "toyzoo_unexportable", pretrained, **kwargs)

    toyzoo_unexportable.__module__ = __name__
    register_model(toyzoo_unexportable)


def test_unexportable_model_fails_naming_the_op(tmp_path, capsys):
    _register_unexportable()
    out = tmp_path / "bad.onnx"
    assert _tool().main(["toyzoo_unexportable", "-o", str(out)]) == 1
    assert "ssmzoo_tests.opaque_square" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert _tool().main(["test_toyzo", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "did you mean test_toyzoo" in capsys.readouterr().err

"""ONNX export (torch.onnx dynamo exporter) and verification in onnxruntime.

:func:`export_onnx` writes a self-contained ``.onnx`` file (weights embedded), runs it in onnxruntime on the
example input and compares with PyTorch. The file is written to a temporary name and renamed only when the export
succeeded, so a failed export leaves nothing behind. An operator without an ONNX translation is reported by name.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ExportError", "ExportReport", "export_onnx", "run_onnx"]

DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """The model could not be exported or its ONNX output disagrees with PyTorch."""


@dataclass
class ExportReport:
    path: Path
    opset: int
    input_shapes: dict[str, list[int | str]]  # as fixed in the graph: ints are baked-in sizes, strings symbolic
    max_abs_diff: float
    output_scale: float  # max |output| of PyTorch, the scale the difference is judged against

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.output_scale, 1e-12)

    def describe(self) -> str:
        shapes = ", ".join(f"{name}: [{', '.join(map(str, dims))}]" for name, dims in self.input_shapes.items())
        fixed = all(isinstance(d, int) for dims in self.input_shapes.values() for d in dims)
        note = " (all input sizes are fixed: other sizes are rejected by onnxruntime)" if fixed else ""
        return (f"{self.path}: opset {self.opset}, inputs {shapes}{note}; max |onnx - torch| = "
                f"{self.max_abs_diff:.3g} (output scale {self.output_scale:.3g}, relative {self.rel_diff:.3g})")


def _offending_op(err: BaseException) -> str | None:
    text = "".join(str(e) for e in _chain(err))
    for pattern in (r"No ONNX function found for <OpOverload\(op='([^']+)'", r"OpOverload\(op='([^']+)'",
                    r"Unsupported: (.{0,120})", r"aten::[\w.]+", r"torch\.ops\.[\w.]+"):
        match = re.search(pattern, text)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return None


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _flatten(outputs: Any) -> list[torch.Tensor]:
    if torch.is_tensor(outputs):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return [t for item in outputs for t in _flatten(item)]


def run_onnx(path: str | os.PathLike, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run an ONNX file in onnxruntime (CPU) and return its outputs as tensors."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def export_onnx(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    rtol: float = 1e-4,
    verify: bool = True,
) -> ExportReport:
    """Export ``model`` (put in eval mode) to ``path`` and check onnxruntime against PyTorch.

    Args:
        example_inputs: the input(s) traced; their sizes are fixed in the graph except the batch when
            ``dynamic_batch`` (trace with batch >= 2: torch.export specialises size-1 dimensions).
        rtol: allowed max-abs difference relative to the output's max-abs (``ExportError`` beyond it).
    Returns:
        an :class:`ExportReport` with the graph's input shapes and the measured difference.
    """
    if opset < 18:
        raise ValueError(f"opset {opset} is too old: the dynamo exporter needs opset >= 18")
    inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with torch.no_grad():
                program = torch.onnx.export(
                    model, inputs, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                    external_data=False, optimize=True, verbose=False,
                )
        except Exception as err:
            op = _offending_op(err)
            what = f"operator {op} has no ONNX translation or cannot be traced" if op else "export failed"
            raise ExportError(f"cannot export {type(model).__name__} to ONNX: {what} ({type(err).__name__})") from err
        program.save(str(tmp), external_data=False)
        input_shapes = {
            value.name: [d if isinstance(d, int) else str(d) for d in value.shape]
            for value in program.model.graph.inputs
        }
        max_abs, scale = float("nan"), float("nan")
        if verify:
            with torch.no_grad():
                expected = _flatten(model(*inputs))
            actual = run_onnx(tmp, *inputs)
            if len(actual) != len(expected):
                raise ExportError(f"ONNX graph has {len(actual)} outputs, PyTorch {len(expected)}")
            max_abs = max(float((a.float() - e.float()).abs().max()) for a, e in zip(actual, expected, strict=True))
            scale = max(float(e.float().abs().max()) for e in expected)
            if not max_abs <= rtol * max(scale, 1e-12):
                raise ExportError(
                    f"onnxruntime disagrees with PyTorch: max abs diff {max_abs:.3g} > {rtol} x scale {scale:.3g}"
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(path=path, opset=opset, input_shapes=input_shapes, max_abs_diff=max_abs, output_scale=scale)

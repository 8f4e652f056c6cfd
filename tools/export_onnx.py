#!/usr/bin/env python
"""Export a registered model to a verified ONNX file.

    python tools/export_onnx.py vmamba_tiny --pretrained --input-size 3 224 224 -o vmamba_tiny.onnx

Prints the graph's input shapes (fixed sizes are said to be fixed) and the max difference measured between
onnxruntime and PyTorch on a random input; exits non-zero, naming the operator, when the model cannot be exported.
"""
from __future__ import annotations

import argparse
import sys

import torch

import ssmzoo
from ssmzoo.export import DEFAULT_OPSET, ExportError, export_onnx


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registered model name, optionally with a pretrained tag (name.tag)")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--pretrained", action="store_true", help="load the pretrained weights first")
    parser.add_argument("--input-size", type=int, nargs="+", default=None,
                        help="input size without the batch, e.g. 3 224 224 (default: the model's cfg)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--dynamic-batch", action="store_true", help="leave the batch dimension symbolic")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="allowed max-abs difference relative to the output scale")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = ssmzoo.create_model(args.model, pretrained=args.pretrained)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    input_size = tuple(args.input_size or model.pretrained_cfg.get("input_size", (3, 224, 224)))
    torch.manual_seed(args.seed)
    example = torch.randn(args.batch_size, *input_size)
    try:
        report = export_onnx(model, example, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                             rtol=args.rtol)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())

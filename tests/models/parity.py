"""Comparison of a family's outputs with an official parity fixture (../shared/fixtures/parity/).

A fixture stores the official model's ``output`` and intermediates (``stage_outputs``, ``block_outputs``, ...).
A family returns its own values under the same field names and structure from ``official_parity(model, fixture)``;
every tensor field of the fixture that is not an input must be returned, or be listed with a reason in the
module's ``PARITY_NOT_REPRODUCED``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Final outputs: within 2e-5 absolute AND 1e-4 relative to the output's scale (max |ref|).
OUTPUT_ATOL, OUTPUT_RTOL_OF_SCALE = 2e-5, 1e-4
# Intermediates (fixture README): |d| <= 2e-5 + 1e-5 |ref| elementwise.
INTERMEDIATE_ATOL, INTERMEDIATE_RTOL = 2e-5, 1e-5
# Fields that describe the inputs, the weights or training targets, not something the model computes.
NOT_OUTPUTS = {"state_dict", "target"}


def _has_tensor(value: Any) -> bool:
    if torch.is_tensor(value):
        return True
    if isinstance(value, Mapping):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    return False


def expected_fields(fixture: Mapping[str, Any]) -> list[str]:
    """Fixture fields holding computed tensors: everything tensor-valued but inputs, weights and targets."""
    return [k for k, v in fixture.items() if not k.startswith("input") and k not in NOT_OUTPUTS and _has_tensor(v)]


def _compare(path: str, ref: Any, ours: Any, final: bool, failures: list[str]) -> None:
    if torch.is_tensor(ref):
        if not torch.is_tensor(ours):
            failures.append(f"{path}: expected a tensor, got {type(ours).__name__}")
            return
        if tuple(ours.shape) != tuple(ref.shape):
            failures.append(f"{path}: shape {tuple(ours.shape)} != official {tuple(ref.shape)}")
            return
        if not ref.is_floating_point():
            if not torch.equal(ours.to(ref.dtype), ref):
                failures.append(f"{path}: integer values differ in {int((ours.to(ref.dtype) != ref).sum())} places")
            return
        dtype = torch.float64
        ref64, ours64 = ref.to(dtype), ours.detach().to(dtype)
        if not torch.isfinite(ours64).all():
            failures.append(f"{path}: non-finite values")
            return
        diff = (ours64 - ref64).abs()
        scale = float(ref64.abs().max()) if ref64.numel() else 0.0
        max_abs = float(diff.max()) if diff.numel() else 0.0
        if final:
            ok = max_abs <= OUTPUT_ATOL and max_abs <= OUTPUT_RTOL_OF_SCALE * max(scale, 1e-12)
            rule = f"{OUTPUT_ATOL:g} abs and {OUTPUT_RTOL_OF_SCALE:g} x scale {scale:.3g}"
        else:
            ok = bool((diff <= INTERMEDIATE_ATOL + INTERMEDIATE_RTOL * ref64.abs()).all())
            rule = f"{INTERMEDIATE_ATOL:g} + {INTERMEDIATE_RTOL:g}|ref|"
        if not ok:
            failures.append(f"{path}: max abs diff {max_abs:.3g} exceeds {rule}")
        return
    if isinstance(ref, Mapping):
        if not isinstance(ours, Mapping):
            failures.append(f"{path}: expected a dict, got {type(ours).__name__}")
            return
        for key, value in ref.items():
            if not _has_tensor(value):
                continue
            if key not in ours:
                failures.append(f"{path}.{key}: missing")
                continue
            _compare(f"{path}.{key}", value, ours[key], final, failures)
        return
    if isinstance(ref, (list, tuple)):
        if not isinstance(ours, (list, tuple)) or len(ours) != len(ref):
            failures.append(f"{path}: expected a sequence of {len(ref)}, got {type(ours).__name__}"
                            f"{f' of {len(ours)}' if isinstance(ours, (list, tuple)) else ''}")
            return
        for i, (r, o) in enumerate(zip(ref, ours, strict=True)):
            if _has_tensor(r):
                _compare(f"{path}[{i}]", r, o, final, failures)


def parity_failures(fixture: Mapping[str, Any], ours: Mapping[str, Any],
                    not_reproduced: Mapping[str, str] | None = None) -> list[str]:
    """Every way ``ours`` misses the fixture; empty when the family reproduces it."""
    not_reproduced = dict(not_reproduced or {})
    failures = []
    if "output" not in ours:
        failures.append("output: missing (official_parity must return the final output)")
    for field in expected_fields(fixture):
        if field in not_reproduced:
            continue
        if field not in ours:
            failures.append(f"{field}: missing (return it, or list it in PARITY_NOT_REPRODUCED with a reason)")
            continue
        _compare(field, fixture[field], ours[field], field.startswith("output"), failures)
    return failures

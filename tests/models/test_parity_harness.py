"""The parity comparison itself must be able to fail: checked on a synthetic fixture."""
import torch

from models.parity import parity_failures


def _fixture():
    g = torch.Generator().manual_seed(0)
    return {
        "official_repo": "x/y", "input": torch.randn(2, 3, generator=g), "state_dict": {"w": torch.ones(1)},
        "output": torch.randn(2, 10, generator=g),
        "stage_outputs": [torch.randn(2, 4, generator=g), torch.randn(2, 8, generator=g)],
        "block_outputs": [
            {"hidden_states": torch.randn(2, 5, generator=g), "residual": torch.randn(2, 5, generator=g)}
        ],
        "cls_token_index": 8,
    }


def _copy(fx):
    return {"output": fx["output"].clone(), "stage_outputs": [t.clone() for t in fx["stage_outputs"]],
            "block_outputs": [{k: v.clone() for k, v in d.items()} for d in fx["block_outputs"]]}


def test_identical_values_pass():
    fx = _fixture()
    assert parity_failures(fx, _copy(fx)) == []


def test_output_off_by_mapping_error_size_fails():
    fx = _fixture()
    ours = _copy(fx)
    ours["output"][0, 3] += 1.4e-4  # the smallest deliberate mapping error in the fixtures' README
    assert any(f.startswith("output") for f in parity_failures(fx, ours))


def test_output_within_noise_passes():
    fx = _fixture()
    ours = _copy(fx)
    ours["output"] += 1e-6
    assert parity_failures(fx, ours) == []


def test_intermediate_error_shape_and_missing_fields_fail():
    fx = _fixture()
    ours = _copy(fx)
    ours["stage_outputs"][1][0, 0] += 1e-3
    ours["block_outputs"][0]["residual"] = ours["block_outputs"][0]["residual"][:, :4]
    failures = parity_failures(fx, ours)
    assert any(f.startswith("stage_outputs[1]") for f in failures)
    assert any(f.startswith("block_outputs[0].residual: shape") for f in failures)
    del ours["stage_outputs"]
    assert any(f.startswith("stage_outputs: missing") for f in parity_failures(fx, ours))


def test_declared_not_reproduced_field_is_excused_but_output_never():
    fx = _fixture()
    ours = _copy(fx)
    del ours["stage_outputs"]
    assert parity_failures(fx, ours, {"stage_outputs": "not exposed"}) == []
    del ours["output"]
    assert parity_failures(fx, ours, {"output": "x"})  # the final output is always required

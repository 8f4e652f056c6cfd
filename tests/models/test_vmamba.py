"""VMamba-specific checks; the timm API, gradients, ONNX and fixture parity are covered by test_contract.py."""
from __future__ import annotations

import sys
import types

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import shared_dir
from timm.optim import param_groups_weight_decay

import ssmzoo
from ssmzoo.models import vmamba

FIXTURE = shared_dir() / "fixtures" / "parity" / "vmamba_v2_ratio2.pt"

# Parameters (M) of the official constructors (reference doc table 2.4: counts of the official classes).
OFFICIAL_PARAMS_M = {
    "vmamba_tiny": 30.25,  # vmamba_tiny_s1l8
    "vmamba_small": 50.15,  # vmamba_small_s2l15
    "vmamba_base": 88.56,  # vmamba_base_s2l15
    "vmamba_tiny_s2l5": 30.71,
    "vmamba_small_s1l20": 49.01,
    "vmamba_base_s1l20": 86.61,
    "vmamba_vanilla_tiny": 22.89,
    "vmamba_vanilla_small": 44.42,
    "vmamba_vanilla_base": 76.25,
}

# Small official configurations (kwargs of the official ``VSSM``) of both designs.
OFFICIAL_V2 = dict(depths=[1, 1, 2, 1], dims=16, num_classes=10, drop_path_rate=0.0, ssm_d_state=1, ssm_ratio=2.0,
                   ssm_conv=3, ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=4.0, norm_layer="ln2d",
                   downsample_version="v3", patchembed_version="v2")
OFFICIAL_V0 = dict(depths=[1, 1, 2, 1], dims=16, num_classes=10, drop_path_rate=0.0, ssm_d_state=16, ssm_ratio=2.0,
                   forward_type="v0", mlp_ratio=0.0, norm_layer="ln", downsample_version="v1",
                   patchembed_version="v1")


def test_registered_names():
    expected = set(OFFICIAL_PARAMS_M) | {"test_vmamba"}
    assert set(ssmzoo.list_models("*vmamba*")) == expected
    assert set(ssmzoo.list_models("*vmamba*", pretrained=True)) >= {f"{n}.in1k" for n in OFFICIAL_PARAMS_M}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS_M))
def test_parameter_count_matches_official(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - OFFICIAL_PARAMS_M[name]) < 0.005, f"{name}: {count:.4f} M, official {OFFICIAL_PARAMS_M[name]}"


def _official_v0_state_dict(model: vmamba.VSSM) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official classification code's key names (v0 design)."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("stem.conv1.", "patch_embed.0.").replace("stem.norm1.", "patch_embed.2.")
        key = key.replace(".norm1.", ".norm.").replace("head.fc.", "classifier.head.")
        if key.startswith("norm."):
            key = "classifier." + key
        if ".downsample." in key:  # ours opens stage i + 1, the official one closes stage i
            stage, rest = key[len("stages."):].split(".", 1)
            key = f"layers.{int(stage) - 1}.{rest}"
        key = key.replace("stages.", "layers.")
        out[key] = value
    return out


def test_official_and_legacy_v0_keys_load():
    torch.manual_seed(0)
    source = vmamba.from_official({"cls": "VSSM", "kwargs": OFFICIAL_V0})
    official = _official_v0_state_dict(source)
    assert "layers.0.downsample.reduction.weight" in official and "patch_embed.0.weight" in official
    # The names of the Jan 2024 checkpoints, which the official VSSM._load_from_state_dict renames.
    legacy = {}
    for key, value in official.items():
        key = key.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        key = key.replace(".blocks.", ".blocks#").replace(".op.", ".self_attention.")
        if ".blocks#" in key and ".norm." in key and ".self_attention." not in key:
            key = key.replace(".norm.", ".ln_1.")
        key = key.replace(".blocks#", ".blocks.").replace("classifier.", "")
        legacy[key] = value
    assert "layers.0.blocks.0.ln_1.weight" in legacy and "layers.0.blocks.0.self_attention.A_logs" in legacy
    assert "head.weight" in legacy and "norm.weight" in legacy
    # Linear2d checkpoints may store 1x1-conv shaped weights.
    legacy["layers.0.blocks.0.self_attention.in_proj.weight"] = legacy[
        "layers.0.blocks.0.self_attention.in_proj.weight"][..., None, None]

    expected = source.state_dict()
    for state_dict in (official, legacy):
        target = vmamba.from_official({"cls": "VSSM", "kwargs": OFFICIAL_V0}, state_dict)
        loaded = target.state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_backbone_out_norms_map_and_apply():
    """Backbone_VSSM's ``outnorm{i}`` load into ``stage_norms`` and normalise the maps of forward_intermediates
    and features_only."""
    torch.manual_seed(0)
    model = timm.create_model("test_vmamba", out_norms=True).eval()
    dims = (16, 32, 64, 128)
    official = {f"outnorm{i}.{p}": torch.randn(d) for i, d in enumerate(dims) for p in ("weight", "bias")}
    mapped = vmamba.checkpoint_filter_fn(official, model)
    assert set(mapped) == {f"stage_norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert vmamba.checkpoint_filter_fn(official, timm.create_model("test_vmamba")) == {}
    model.load_state_dict(mapped, strict=False)
    features = timm.create_model("test_vmamba", out_norms=True, features_only=True, out_indices=(1, 3)).eval()
    features.model.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        normed = model.forward_intermediates(x, intermediates_only=True)
        maps = features(x)
        norms, model.stage_norms = model.stage_norms, None
        plain = model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(maps, [normed[1], normed[3]])
    for i, norm in enumerate(norms):
        manual = F.layer_norm(plain[i].permute(0, 2, 3, 1), (dims[i],), norm.weight, norm.bias, eps=1e-5)
        torch.testing.assert_close(normed[i], manual.permute(0, 3, 1, 2))


def test_features_only_with_the_oldest_supported_timm_head(monkeypatch):
    """pyproject allows timm >= 1.0.21, whose ClassifierHead.reset() has no in_features argument (timm 1.0.31 added
    it): pruning the model for features_only must work with the old signature."""
    original = timm.layers.ClassifierHead.reset
    monkeypatch.setattr(timm.layers.ClassifierHead, "reset",
                        lambda self, num_classes, pool_type=None: original(self, num_classes, pool_type))
    features = timm.create_model("test_vmamba", features_only=True, out_indices=(1, 2))
    assert features.model.head.in_features == features.model.num_features == 64
    assert [m.shape[1] for m in features(torch.randn(1, 3, 64, 64))] == [32, 64]


@pytest.mark.parametrize("options, message", [
    (dict(forward_type="v05_oact"), "forward_type"),
    (dict(forward_type="m0_noz"), "forward_type"),
    (dict(norm_layer="bn"), "norm_layer"),
    (dict(posembed=True), "posembed"),
    (dict(gmlp=True), "gmlp"),
])
def test_from_official_rejects_unimplemented_options(options, message):
    with pytest.raises(ValueError, match=message):
        vmamba.from_official({"cls": "VSSM", "kwargs": {**OFFICIAL_V2, **options}})


def test_bad_input_names_shapes():
    model = timm.create_model("test_vmamba").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 64, 64\)"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r">= 4.*\(1, 3, 3, 64\)"):
        model(torch.randn(1, 3, 3, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.forward_intermediates(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", ["test_vmamba", "vmamba_vanilla_tiny"])
def test_sizes_not_divisible_by_32(name):
    """v2 pads like the official convs (ceil); v0's stem floors and PatchMerging pads odd maps."""
    model = timm.create_model(name, num_classes=5, depths=(1, 1, 1, 1), dims=16).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert model(x).shape == (1, 5)
    sizes = [tuple(m.shape[-2:]) for m in maps]
    if name.startswith("test_"):
        assert sizes == [(13, 18), (7, 9), (4, 5), (2, 3)]
    else:
        assert sizes == [(12, 17), (6, 9), (3, 5), (2, 3)]


V0_SMALL = dict(stem_type="v1", downsample_type="v1", d_state=4, conv_bias=True, gate=True, force_fp32=True,
                mlp_ratio=0.0)


def _train_20_steps(device: str, autocast_dtype: torch.dtype | None, **model_kwargs) -> list[float]:
    """20 AdamW steps on a fixed random batch; asserts every parameter gets a finite gradient at every step."""
    torch.manual_seed(0)
    model = timm.create_model("test_vmamba", num_classes=3, depths=(1, 1, 1, 1), drop_path_rate=0.1,
                              **model_kwargs).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, target = torch.randn(3, 3, 32, 32, device=device), torch.tensor([0, 1, 2], device=device)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        with torch.autocast(device, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"parameters without a finite gradient: {missing[:5]}"
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("design", [{}, V0_SMALL], ids=["v2", "v0"])
def test_training_numerics_cpu(design, autocast_dtype):
    """fp32 and bf16 autocast on the CPU (v0 forces its scan inputs to fp32 under autocast): finite, decreasing
    loss; every parameter gets a gradient."""
    losses = _train_20_steps("cpu", autocast_dtype, **design)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], f"loss did not decrease: {losses}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("design", [{}, V0_SMALL], ids=["v2", "v0"])
def test_training_numerics_cuda_bf16_autocast(design):
    losses = _train_20_steps("cuda", torch.bfloat16, **design)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], f"loss did not decrease: {losses}"


def test_no_weight_decay_covers_ssm_parameters():
    model = timm.create_model("test_vmamba")
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith(("A_logs", "Ds")):
            assert id(p) in no_decay, name


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"no parity fixture at {FIXTURE}")
def test_pretrained_official_file_through_hub(tmp_path, monkeypatch):
    """An official release-style file (Swin dict with a pickled yacs CfgNode, weights under "model") loads by
    ``create_model(pretrained=True)`` through ssmzoo.hub and reproduces the official output."""
    fixture = torch.load(FIXTURE, weights_only=True)
    # test_vmamba is the fixture's configuration (dims 16, depths 1/1/2/1, ssm_ratio 2) with 10 classes.
    yacs_config = types.ModuleType("yacs.config")
    cfg_node = type("CfgNode", (dict,), {"__module__": "yacs.config"})
    yacs_config.CfgNode = cfg_node
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", yacs_config)
    path = tmp_path / "vssm_ckpt_epoch_1.pth"
    torch.save({"model": fixture["state_dict"], "optimizer": {}, "epoch": 1, "max_accuracy": 0.5,
                "config": cfg_node(MODEL=cfg_node(TYPE="vssm"))}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")  # the loader must not need the class
    model = ssmzoo.create_model("test_vmamba", pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    with torch.no_grad():
        out = model(fixture["input"])
    torch.testing.assert_close(out, fixture["output"], rtol=0, atol=2e-5)


@pytest.mark.slow
def test_vmamba_tiny_onnx_224(tmp_path):
    from ssmzoo.export import export_onnx

    model = timm.create_model("vmamba_tiny").eval()
    report = export_onnx(model, torch.randn(1, 3, 224, 224), tmp_path / "vmamba_tiny.onnx", rtol=1e-4)
    assert report.max_abs_diff <= 1e-4 * report.output_scale

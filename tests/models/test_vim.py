"""Vision Mamba specifics beyond the generic contract (test_contract.py runs the timm API, ONNX and the parity
fixture for every registered model): parameter counts, position-embedding resampling with the middle class token,
dynamic input sizes, bad inputs, official checkpoint files and training numerics."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import ssmzoo
from ssmzoo.models import vim

# sum(p.numel() for p in model.parameters()) of the official hustvl/Vim models (vim/models_mamba.py @ dd0358a,
# built on CPU with the CUDA imports stubbed): ..._patch16_224_..., ..._patch16_stride8_224_...
OFFICIAL_PARAMS = {
    "vim_tiny": 7_148_008,
    "vim_small": 25_796_584,
    "vim_base": 97_598_440,
    "vim_tiny_stride8": 7_250_344,
    "vim_small_stride8": 26_001_256,
}


def _small(**kwargs) -> vim.VisionMamba:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, d_state=8, num_classes=5)
    return vim.VisionMamba(**dict(args, **kwargs)).eval()


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    with torch.device("meta"):
        model = ssmzoo.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


def test_registered_variants_and_tags():
    assert {"vim_tiny", "vim_small", "vim_base", "vim_tiny_stride8", "vim_small_stride8", "test_vim"} <= set(
        ssmzoo.list_models("*vim*"))
    pretrained = set(ssmzoo.list_models("*vim*", pretrained=True))
    assert {f"{n}.in1k" for n in OFFICIAL_PARAMS} <= pretrained
    cfg = ssmzoo.create_model("vim_tiny_stride8", pretrained=False).pretrained_cfg
    assert cfg["url"].startswith("https://huggingface.co/hustvl/") and cfg["checkpoint_key"] == "model"
    assert cfg["license"] == "apache-2.0"


def test_middle_cls_token_position_and_stride8_grid():
    model = _small(img_size=40, patch_size=16, stride=8)  # (40 - 16) / 8 + 1 = 4 -> 16 patches
    assert model.patch_embed.grid_size == (4, 4) and model.pos_embed.shape == (1, 17, 32)
    assert model.feature_info[0]["reduction"] == 8
    x = torch.randn(2, 3, 40, 40)
    tokens = model._pos_embed(model.patch_embed(x))
    torch.testing.assert_close(tokens[:, 8], (model.cls_token + model.pos_embed[:, 8])[0].expand(2, -1))
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert maps[0].shape == (2, 32, 4, 4)


def test_resample_pos_embed_keeps_middle_cls_out_of_the_grid():
    torch.manual_seed(0)
    old, new = (4, 4), (6, 5)
    pos = torch.randn(1, 17, 8)
    out = vim.resample_pos_embed(pos, new, old)
    assert out.shape == (1, 31, 8)
    j = 30 // 2
    torch.testing.assert_close(out[:, j], pos[:, 8])  # the class entry is carried over, at M' // 2
    grid = torch.cat([pos[:, :8], pos[:, 9:]], dim=1)
    expected = resample_abs_pos_embed(grid, list(new), list(old), num_prefix_tokens=0)
    torch.testing.assert_close(torch.cat([out[:, :j], out[:, j + 1:]], dim=1), expected)
    torch.testing.assert_close(vim.resample_pos_embed(pos, old, old), pos)
    # The official (DeiT) interpolate_pos_embed keeps entry 0 (a patch) aside and interpolates entries 1..M as the
    # grid, class entry included: the class embedding is smeared into the patches and lost from position M' // 2.
    deit = torch.cat([pos[:, :1], resample_abs_pos_embed(pos[:, 1:], [6, 6], list(old), num_prefix_tokens=0)], 1)
    ours = vim.resample_pos_embed(pos, (6, 6), old)
    torch.testing.assert_close(ours[:, 18], pos[:, 8])
    assert (deit[:, 18] - pos[:, 8]).abs().max() > 0.1


def test_dynamic_img_size_equals_model_built_for_that_size():
    model = _small()  # dynamic_img_size=True by default
    x = torch.randn(2, 3, 48, 40)  # 6 x 5 patches, non-square
    with torch.no_grad():
        out = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (2, 5) and maps[-1].shape == (2, 32, 6, 5)
    fixed = _small(img_size=(48, 40), dynamic_img_size=False)
    state = model.state_dict()
    state["pos_embed"] = vim.resample_pos_embed(state["pos_embed"], (6, 5), (4, 4))
    fixed.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), out)
    with pytest.raises(ValueError, match="doesn't match"):
        fixed(torch.randn(1, 3, 32, 32))


def test_checkpoint_filter_resamples_for_another_grid():
    src = _small()
    state = {"model": src.state_dict(), "epoch": 3, "args": argparse.Namespace(model="vim")}  # DeiT-style file
    dst = _small(img_size=48, patch_size=16, stride=8)  # 5 x 5 grid
    dst.load_state_dict(vim.checkpoint_filter_fn(state, dst))
    torch.testing.assert_close(dst.pos_embed, vim.resample_pos_embed(src.pos_embed, (5, 5), (4, 4)))
    wide = _small(img_size=(48, 40))  # a non-square grid of the model's own size passes unchanged
    torch.testing.assert_close(vim.checkpoint_filter_fn(wide.state_dict(), wide)["pos_embed"], wide.pos_embed)
    no_cls = _small(class_token=False, global_pool="avg")
    filtered = vim.checkpoint_filter_fn(src.state_dict(), no_cls)
    assert "cls_token" not in filtered
    torch.testing.assert_close(filtered["pos_embed"], torch.cat([src.pos_embed[:, :8], src.pos_embed[:, 9:]], 1))
    no_cls.load_state_dict(filtered)


def test_pretrained_official_file_through_hub(tmp_path):
    """An official-format file (DeiT dict, pickled argparse args) loads via pretrained=True and the hub."""
    src = ssmzoo.create_model("test_vim")
    path = tmp_path / "vim_official.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 299}, path)
    model = ssmzoo.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_bad_input_size_error_or_padding():
    model = _small()
    x = torch.randn(1, 3, 35, 32)
    with pytest.raises(ValueError, match="does not fit patch size"):
        model(x)
    padded = _small(dynamic_img_pad=True)
    with torch.no_grad():
        out = padded(x)
        torch.testing.assert_close(out, padded(F.pad(x, (0, 0, 0, 5))))
    assert padded.patch_embed.dynamic_feat_size((35, 32)) == (5, 4)
    with pytest.raises(ValueError, match="does not fit patch size"):
        _small(patch_size=16, stride=8)(torch.randn(1, 3, 36, 32))


def test_intermediates_options():
    model = _small(depth=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True, output_fmt="NLC")
        torch.testing.assert_close(maps[-1], model._patch_tokens(final))
        model.intermediate_output = "mixer"  # the official segmentation backbone's features: mixer outputs
        tokens = model._pos_embed(model.patch_embed(x))
        hidden, _ = model.layers[0](tokens)
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        torch.testing.assert_close(first, model._patch_tokens(hidden).reshape(2, 4, 4, 32).permute(0, 3, 1, 2))
    assert model.prune_intermediate_layers([0, 1]) == [0, 1] and len(model.layers) == 2


def test_from_official_rejects_unsupported_options():
    with pytest.raises(ValueError, match="if_rope"):
        vim.from_official({"cls": "VisionMamba", "kwargs": {"if_rope": True}})
    with pytest.raises(ValueError, match="unknown"):
        vim.from_official({"cls": "VisionMamba", "kwargs": {"depth": 2, "not_an_option": 1}})


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast_cpu"])
def test_training_steps_finite_and_decreasing(autocast):
    """A few AdamW steps on a fixed batch. The bf16 case runs CPU autocast; the GPU run is the gpu-marked test."""
    torch.manual_seed(0)
    model = ssmzoo.create_model("test_vim", num_classes=4).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), "non-finite gradients"
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


@pytest.mark.gpu
def test_bf16_autocast_training_20_steps_cuda():
    """Issue #6: bf16 autocast training stays finite (the official code needed fp32, hustvl/Vim #30)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    model = ssmzoo.create_model("vim_tiny", num_classes=10, drop_path_rate=0.05).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    x = torch.randn(16, 3, 224, 224, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0], losses

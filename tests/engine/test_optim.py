"""Parameter groups: mmengine's rules, the model's no-decay list and BEiT / timm layer-wise lr decay."""
from __future__ import annotations

import pytest
from mmengine.optim import build_optim_wrapper

import ssmzoo.engine  # noqa: F401  (registers the constructor)
from ssmzoo.engine.models import ImageClassifier, Segmentor

HEADS = dict(decode_head=dict(channels=8), auxiliary_head=dict(channels=8))


def _groups(model, paramwise_cfg, lr=1.0, wd=0.05):
    wrapper = build_optim_wrapper(model, dict(
        type="OptimWrapper", optimizer=dict(type="AdamW", lr=lr, weight_decay=wd),
        constructor="ZooOptimWrapperConstructor", paramwise_cfg=paramwise_cfg))
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g["params"][0])]: g for g in wrapper.optimizer.param_groups}


def test_vim_segmentor_layer_decay_is_beit():
    """test_vim has 3 blocks: embeddings rate**4, block i rate**(3 - i), neck / heads 1 (BEiT with num_layers=3)."""
    model = Segmentor(dict(name="test_vim", out_indices=(0, 1, 2), class_token=False, global_pool="avg",
                           intermediate_output="mixer"), num_classes=3, neck=dict(scales=(4, 2, 1)), **HEADS)
    rate = 0.9
    groups = _groups(model, dict(flat_decay_mult=0.0, bias_decay_mult=0.0, layer_decay_rate=rate))
    prefix = "segmentor.backbone.model."
    assert groups[prefix + "pos_embed"]["lr"] == pytest.approx(rate ** 4)
    assert groups[prefix + "patch_embed.proj.weight"]["lr"] == pytest.approx(rate ** 4)
    for i in range(3):
        assert groups[f"{prefix}layers.{i}.mixer.in_proj.weight"]["lr"] == pytest.approx(rate ** (3 - i))
    assert groups["segmentor.decode_head.fpn_bottleneck.0.weight"]["lr"] == pytest.approx(1.0)
    assert groups["segmentor.neck.ops.0.0.weight"]["lr"] == pytest.approx(1.0)
    # no decay: 1-D tensors, biases, and the model's no_weight_decay list (pos_embed, A_log, D)
    for name in ("pos_embed", "layers.0.mixer.A_log", "layers.1.mixer.D_b", "layers.2.norm.weight",
                 "patch_embed.proj.bias"):
        assert groups[prefix + name]["weight_decay"] == 0.0, name
    assert groups[prefix + "layers.0.mixer.in_proj.weight"]["weight_decay"] == 0.05


def test_classifier_layer_decay_is_timm():
    """Inside a classifier the head is the backbone's last group (full lr) and the groups below decay from there,
    timm's param_groups_layer_decay: Vim's norm_f joins the last block."""
    model = ImageClassifier(dict(name="test_vim", num_classes=3))
    groups = _groups(model, dict(layer_decay_rate=0.5))
    assert groups["backbone.head.weight"]["lr"] == pytest.approx(1.0)
    assert groups["backbone.norm_f.weight"]["lr"] == pytest.approx(0.5)
    assert groups["backbone.layers.2.mixer.in_proj.weight"]["lr"] == pytest.approx(0.5)
    assert groups["backbone.layers.0.mixer.in_proj.weight"]["lr"] == pytest.approx(0.5 ** 3)
    assert groups["backbone.cls_token"]["lr"] == pytest.approx(0.5 ** 4)


def test_upernet_recipe_norms_and_model_list_without_decay():
    """The official Swin/VMamba key 'norm' plus the backbone's no_weight_decay (A_logs, Ds); convs keep decay."""
    model = Segmentor(dict(name="test_vmamba", out_norms=True), num_classes=3, **HEADS)
    groups = _groups(model, dict(custom_keys={"norm": dict(decay_mult=0.0)}), wd=0.01)
    no_decay = {n for n, g in groups.items() if g["weight_decay"] == 0.0}
    assert any(".A_logs" in n for n in no_decay) and any(n.endswith(".Ds") for n in no_decay)
    assert all("norm" in n or ".A_logs" in n or n.endswith(".Ds") for n in no_decay)
    assert any("stage_norms" in n for n in no_decay)
    assert groups["segmentor.decode_head.bottleneck.0.weight"]["weight_decay"] == 0.01
    assert all("lr_scale" not in g for g in groups.values())

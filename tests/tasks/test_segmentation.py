"""UperNet on ssmzoo backbones: shapes, mmseg's loss and inference conventions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.tasks.segmentation import MultiScaleNeck, UperNet, seg_cross_entropy, slide_inference

HEADS = dict(decode_head=dict(channels=16), auxiliary_head=dict(channels=8))


@pytest.fixture(scope="module")
def vmamba_upernet():
    torch.manual_seed(0)
    return UperNet(dict(name="test_vmamba", out_norms=True), num_classes=5, **HEADS)


def test_hierarchical_backbone_shapes_and_losses(vmamba_upernet):
    model = vmamba_upernet.train()
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    labels[:, :8] = 255
    losses = model.loss(x, labels)
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"}
    (losses["decode.loss_ce"] + losses["aux.loss_ce"]).backward()
    used = [n for n, p in model.named_parameters() if p.grad is not None]
    assert len(used) == len(list(model.parameters()))  # every parameter reaches the loss
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 5, 50, 70)  # odd sizes, logits at input size


def test_plain_backbone_gets_strides_from_the_neck():
    model = UperNet(dict(name="test_vim", out_indices=(0, 1, 2), class_token=False,
                         global_pool="avg", intermediate_output="mixer"),
                    num_classes=3, neck=dict(scales=(4, 2, 1)), **HEADS)
    feats = model.extract_feat(torch.randn(2, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]  # patch 8: strides 2, 4, 8
    assert model.decode_head.lateral_convs[0][0].in_channels == 32  # in_channels from feature_info


def test_neck_rejects_unknown_scale():
    with pytest.raises(ValueError, match="unsupported scale 3"):
        MultiScaleNeck(8, scales=(4, 3))


def test_aux_index_out_of_range_names_it():
    with pytest.raises(ValueError, match="in_index=7"):
        UperNet(dict(name="test_vmamba"), num_classes=2, auxiliary_head=dict(in_index=7))


def test_loss_is_mmseg_mean_over_all_pixels():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[0, :5] = 255
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, labels, ignore_index=255, reduction="none")
    # ignored pixels add 0 yet count: the mean is over all 2 * 16 * 16 pixels, not the labelled ones
    assert seg_cross_entropy(logits, labels) == pytest.approx(per_pixel.sum().item() / labels.numel(), rel=1e-6)
    assert seg_cross_entropy(logits, labels) < F.cross_entropy(up, labels, ignore_index=255)


def test_aux_loss_weight(vmamba_upernet):
    model = vmamba_upernet.eval()  # no dropout: both passes see the same logits
    x, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    with torch.no_grad():
        aux = model.auxiliary_head(model.extract_feat(x)[2])
        assert model.loss(x, labels)["aux.loss_ce"] == pytest.approx(0.4 * seg_cross_entropy(aux, labels).item())


def test_slide_windows_follow_mmseg():
    seen = []

    def fn(crop):
        seen.append(crop.shape[-2:])
        return crop[:, :2] * 2.0

    x = torch.randn(1, 3, 700, 520)
    out = slide_inference(fn, x, 2, crop_size=(512, 512), stride=(341, 341))
    # ceil((700 - 512) / 341) + 1 = 2 rows, ceil((520 - 512) / 341) + 1 = 2 columns, last ones moved to the border
    assert len(seen) == 4 and all(s == (512, 512) for s in seen)
    torch.testing.assert_close(out, x[:, :2] * 2.0)  # overlaps are averaged
    small = torch.randn(1, 3, 100, 60)
    torch.testing.assert_close(slide_inference(fn, small, 2, (512, 512), (341, 341)), small[:, :2] * 2.0)


def test_whole_and_slide_agree_when_one_window_covers_the_image(vmamba_upernet):
    model = vmamba_upernet.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.inference(x, "slide", (64, 64), (48, 48)), model.inference(x, "whole"))
    with pytest.raises(ValueError, match="whole' or 'slide"):
        model.inference(x, "tiles")


def test_backbone_loads_classification_weights_with_new_stage_norms(tmp_path):
    """The VMamba configs' backbone: ImageNet weights (no ``outnorm``) load non-strictly, as the official
    ``Backbone_VSSM.load_pretrained`` does, the stage norms keep their fresh init."""
    from ssmzoo import create_model

    classifier = create_model("test_vmamba")
    torch.save({"model": classifier.state_dict()}, tmp_path / "cls.pth")
    model = UperNet(dict(name="test_vmamba", out_norms=True, pretrained=True, pretrained_strict=False,
                         pretrained_cfg_overlay=dict(file=str(tmp_path / "cls.pth"))), num_classes=2, **HEADS)
    backbone = model.backbone.model
    torch.testing.assert_close(backbone.stem.conv1.weight, classifier.stem.conv1.weight)
    assert torch.equal(backbone.stage_norms[0].weight, torch.ones_like(backbone.stage_norms[0].weight))

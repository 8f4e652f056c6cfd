"""BaseModel wrappers: mmengine's three modes, mmseg's pre- and post-processing, bf16 autocast."""
from __future__ import annotations

import pytest
import torch

import ssmzoo.engine  # noqa: F401
from ssmzoo.engine.models import ImageClassifier, SegDataPreprocessor, Segmentor

HEADS = dict(decode_head=dict(channels=8), auxiliary_head=dict(channels=8))


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return ImageClassifier(dict(name="test_vim", num_classes=4), label_smoothing=0.1,
                           mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))


@pytest.fixture(scope="module")
def segmentor():
    torch.manual_seed(0)
    return Segmentor(dict(name="test_vmamba", out_norms=True), num_classes=3, **HEADS,
                     data_preprocessor=dict(type="SegDataPreprocessor", size=(32, 32)))


def test_classifier_modes(classifier):
    data = {"inputs": torch.randn(4, 3, 32, 32), "data_samples": torch.tensor([0, 1, 2, 3])}
    classifier.train()
    losses = classifier(**classifier.data_preprocessor(data, True), mode="loss")
    assert set(losses) == {"loss"} and losses["loss"].isfinite()
    classifier.eval()
    out = classifier.val_step(data)
    assert len(out) == 4 and out[0]["pred_topk"].shape == (4,) and int(out[2]["gt_label"]) == 2
    assert out[0]["pred_score"].sum() == pytest.approx(1.0, abs=1e-5)
    assert classifier(data["inputs"]).shape == (4, 4)


def test_classifier_needs_a_name():
    with pytest.raises(KeyError, match="needs a 'name'"):
        ImageClassifier(dict(num_classes=3))


def test_seg_preprocessor_normalises_and_pads():
    pre = SegDataPreprocessor(size=(8, 8))
    images = [torch.full((3, 6, 5), 255, dtype=torch.uint8), torch.zeros((3, 4, 8), dtype=torch.uint8)]
    samples = [{"gt_sem_seg": torch.ones(6, 5, dtype=torch.uint8)},
               {"gt_sem_seg": torch.zeros(4, 8, dtype=torch.uint8)}]
    out = pre({"inputs": images, "data_samples": samples}, training=True)
    assert out["inputs"].shape == (2, 3, 8, 8)
    torch.testing.assert_close(out["inputs"][0, :, 0, 0], (255 - pre.mean.flatten()) / pre.std.flatten())
    assert out["inputs"][0, :, 7, 7].abs().sum() == 0  # padded after normalisation with 0
    assert out["data_samples"][0]["gt_sem_seg"][6:].eq(255).all() and out["data_samples"][0]["img_shape"] == (6, 5)


def test_segmentor_predict_drops_padding_and_resizes_to_the_original(segmentor):
    segmentor.eval()
    images = [torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8),
              torch.randint(0, 255, (3, 40, 32), dtype=torch.uint8)]
    samples = [{"ori_shape": (64, 96), "gt_sem_seg": torch.zeros(64, 96)}, {"ori_shape": (40, 32)}]
    out = segmentor.val_step({"inputs": images, "data_samples": samples})
    assert out[0]["img_shape"] == (32, 48) and out[1]["img_shape"] == (40, 32)  # batch padded to 40 x 48
    assert out[0]["pred_sem_seg"].shape == (64, 96) and out[1]["pred_sem_seg"].shape == (40, 32)
    assert out[0]["gt_sem_seg"].shape == (64, 96)  # the sample's fields travel to the metric


def test_segmentor_bad_test_cfg():
    with pytest.raises(ValueError, match="mode='slide', crop_size"):
        Segmentor(dict(name="test_vmamba"), num_classes=2, test_cfg=dict(mode="slide"))


def test_losses_are_finite_under_bf16_autocast(segmentor, classifier):
    """What --amp bf16 runs (on GPUs): the losses are computed in float32 from bf16 activations."""
    segmentor.train()
    images = [torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    samples = [{"gt_sem_seg": torch.randint(0, 3, (32, 32), dtype=torch.uint8)} for _ in range(2)]
    data = segmentor.data_preprocessor({"inputs": images, "data_samples": samples}, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = segmentor(**data, mode="loss")
        cls_loss = classifier(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), mode="loss")["loss"]
    assert all(v.dtype == torch.float32 and v.isfinite() for v in losses.values())
    assert cls_loss.dtype == torch.float32 and cls_loss.isfinite()
    (losses["decode.loss_ce"] + cls_loss).backward()

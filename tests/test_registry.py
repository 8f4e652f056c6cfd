"""``import ssmzoo`` registers its models in timm; ssmzoo's create/list functions are thin wrappers of timm's."""
import timm
import torch

import ssmzoo


def test_timm_sees_ssmzoo_models_after_import():
    assert "test_toyzoo" in ssmzoo.list_models()
    assert "test_toyzoo" in timm.list_models("test_toy*")
    model = timm.create_model("test_toyzoo", num_classes=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_list_models_holds_only_ssmzoo_names():
    names = ssmzoo.list_models()
    assert names == sorted(set(names), key=names.index)
    assert "resnet50" not in names and "resnet50" in timm.list_models("resnet50")
    assert all(n.split(".")[0] in names for n in ssmzoo.list_models(pretrained=True))


def test_create_model_passes_timm_kwargs():
    model = ssmzoo.create_model("test_toyzoo", num_classes=0, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, model.num_features)

"""DPMamba / Mamba-TasNet specifics: official parameter counts, chunking, SpeechBrain checkpoints, official configs.

Official parity itself runs in the generic ``test_contract.py::test_official_parity[dpmamba]``.
"""
import copy

import pytest
import torch
from conftest import shared_dir

import ssmzoo
from ssmzoo.models import dpmamba

FIXTURE = shared_dir() / "fixtures" / "parity" / "dpmamba.pt"

# Parameter counts of the official recipes (xi-j/Mamba-TasNet README table, checked analytically from the YAMLs).
OFFICIAL_PARAMS_M = {"dpmamba_xs": 2.27, "dpmamba_s": 8.14, "dpmamba_m": 15.87, "dpmamba_l": 59.79,
                     "mambatasnet_xs": 2.21, "mambatasnet_s": 7.93, "mambatasnet_m": 15.65}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS_M))
def test_official_parameter_counts(name):
    with torch.device("meta"):  # no memory, no init time: only the shapes are counted
        model = ssmzoo.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == OFFICIAL_PARAMS_M[name]


@pytest.mark.parametrize("L", [1, 7, 10, 15, 25, 99])
@pytest.mark.parametrize("K", [10, 11])
def test_chunking_is_speechbrains_layout_and_overlap_add_inverts_it(L, K):
    x = torch.randn(2, 3, L)
    chunks, gap = dpmamba.chunk(x, K)
    P = K // 2
    assert 1 <= gap <= K and chunks.shape[2] == K and chunks.shape[3] % 2 == 0
    if K % 2 == 0:  # chunk s = padded[s*P : s*P + K] (odd K keeps the official reshapes, not a uniform hop)
        padded = torch.nn.functional.pad(x, (P, gap + P))
        torch.testing.assert_close(chunks, padded.unfold(-1, K, P).transpose(2, 3))
    # every frame is covered by exactly two chunks: overlap-add returns 2 x
    torch.testing.assert_close(dpmamba.overlap_add(chunks, gap), 2 * x)


def test_waveform_shapes_and_short_input():
    model = ssmzoo.create_model("test_dpmamba").eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1001)).shape == (3, 2, 1001)  # odd length: decoder output padded back
        assert model(torch.randn(800)).shape == (2, 800)
        with pytest.raises(ValueError, match="shorter than the encoder kernel"):
            model(torch.randn(1, 15))
    assert model.pretrained_cfg["input_size"] == (1200,) and model.pretrained_cfg["classifier"] is None


def test_inference_in_slices_of_sequences_is_exact(monkeypatch):
    """Without autograd the Mamba stacks run in slices of whole sequences; the output is the unsliced one (to float
    rounding of the batched matmuls), and with autograd nothing is sliced."""
    model = ssmzoo.create_model("test_dpmamba").eval()
    x = torch.randn(2, 4000)
    with torch.no_grad():
        whole = model(x)
    calls = []
    blocks = dpmamba.MambaBlocksSequential._blocks
    monkeypatch.setattr(dpmamba.MambaBlocksSequential, "_blocks",
                        lambda self, h: calls.append(len(h)) or blocks(self, h))
    monkeypatch.setattr(dpmamba.MambaBlocksSequential, "inference_positions", 7)  # one sequence per slice
    with torch.no_grad():
        sliced = model(x)
    assert max(calls) == 1 and len(calls) > 2 * len(model.masknet.dual_mdl)
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)
    calls.clear()
    model(x)
    assert min(calls) > 1  # training-mode autograd: whole batches


def _fixture():
    if not FIXTURE.is_file():
        pytest.skip(f"no parity fixture at {FIXTURE}")
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def test_speechbrain_checkpoint_folder_loads(tmp_path):
    fx = _fixture()
    for module in ("encoder", "masknet", "decoder"):  # what a SpeechBrain CKPT+... folder holds
        torch.save({k[len(module) + 1:]: v for k, v in fx["state_dict"].items() if k.startswith(module + ".")},
                   tmp_path / f"{module}.ckpt")
    flat = dpmamba.read_speechbrain_checkpoint(tmp_path)
    assert flat.keys() == fx["state_dict"].keys()
    model = dpmamba.from_official(fx["constructor"])
    nested = {m: {k[len(m) + 1:]: v for k, v in flat.items() if k.startswith(m + ".")}
              for m in ("encoder", "masknet", "decoder")}
    model.load_state_dict(dpmamba.checkpoint_filter_fn(nested, model))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, fx["state_dict"][k])
    with pytest.raises(FileNotFoundError, match="decoder.ckpt"):
        (tmp_path / "decoder.ckpt").unlink()
        dpmamba.read_speechbrain_checkpoint(tmp_path)


def test_mambatasnet_official_keys_are_mapped():
    constructor = {
        "encoder": {"kwargs": {"kernel_size": 16, "out_channels": 16}},
        "masknet": {"class": "modules.mamba_masknet.MaskNet",
                    "kwargs": {"enc_dim": 16, "bot_dim": 16, "n_spk": 2, "n_mamba": 2, "d_model": 16, "d_state": 4}},
        "decoder": {"kwargs": {"in_channels": 16, "out_channels": 1, "kernel_size": 16, "stride": 8, "bias": False}},
    }
    ours = dpmamba.from_official(constructor).eval()
    official = {}
    for k, v in ours.state_dict().items():  # the official names and shapes of the same weights
        if k.startswith("masknet.layer_norm."):
            k, v = k.replace("weight", "gamma").replace("bias", "beta"), v.reshape(1, 1, -1)
        elif k in ("masknet.bottleneck_conv1x1.weight", "masknet.mask_conv1x1.weight"):
            k = k.replace(".weight", ".conv.weight")
        official[k] = v + 0.1 * torch.randn_like(v)
    model = dpmamba.from_official(constructor, official).eval()
    x = torch.randn(1, 800)
    with torch.no_grad():
        assert model(x).shape == (1, 2, 800)
    torch.testing.assert_close(model.masknet.layer_norm.weight, official["masknet.layer_norm.gamma"].reshape(-1))


def test_from_official_refuses_unused_options():
    fx = _fixture()
    bad = copy.deepcopy(fx["constructor"])
    bad["masknet"]["kwargs"]["linear_layer_after_inter_intra"] = True
    with pytest.raises(ValueError, match="linear_layer_after_inter_intra"):
        dpmamba.from_official(bad)
    bad = copy.deepcopy(fx["constructor"])
    bad["masknet"]["class"] = "somewhere.SepFormer"
    with pytest.raises(ValueError, match="unknown official mask net"):
        dpmamba.from_official(bad)


def test_bundled_weights_load_offline_and_match_the_manifest(monkeypatch):
    import json

    from ssmzoo.hub import sha256_file

    monkeypatch.setenv("SSMZOO_OFFLINE", "1")
    entry = json.loads((dpmamba.WEIGHTS_DIR / "manifest.json").read_text())["dpmamba_xs_tts2mix.safetensors"]
    model = ssmzoo.create_model("dpmamba_xs.tts2mix", pretrained=True)
    path = model.pretrained_cfg["file"]
    assert sha256_file(path) == entry["sha256"] == model.pretrained_cfg["sha256"]
    assert model.masknet.dual_mdl[0].intra_mdl.layers[0].mixer.A_log.dtype == torch.float32
    assert entry["metrics_tt"]["si_snri_db"] > entry["baseline"]["metrics_tt"]["si_snri_db"]

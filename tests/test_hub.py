"""ssmzoo.hub against a real HTTP server on 127.0.0.1: downloads, checksums, offline mode and safe unpickling."""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ssmzoo
from ssmzoo import hub


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, str]] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body, mode = self.routes.get(self.path, (None, "missing"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # announce the whole body, send half, drop the connection
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    routes: dict[str, tuple[bytes, str]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(path: str, body: bytes, mode: str = "ok") -> str:
        routes[path] = (body, mode)
        return base + path

    yield serve
    httpd.shutdown()
    httpd.server_close()


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cache_files() -> list[Path]:
    root = hub.get_home()
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_good_download_is_cached_and_verified(server):
    body = os.urandom(300_000)
    url = server("/weights/good.bin", body)
    path = hub.download(url, _sha(body), progress=False)
    assert path == hub.cache_path(url) and path.read_bytes() == body
    assert _cache_files() == [path]
    assert hub.resolve({"url": url, "sha256": _sha(body)}) == path  # served from the cache now


def test_corrupt_body_raises_naming_url_and_both_hashes_and_leaves_nothing(server):
    body = os.urandom(50_000)
    url = server("/weights/corrupt.bin", body)
    wrong = _sha(b"something else")
    with pytest.raises(hub.ChecksumError) as info:
        hub.download(url, wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and _sha(body) in message
    assert _cache_files() == []


def test_connection_dropped_half_way_leaves_no_partial_file(server):
    url = server("/weights/dropped.bin", os.urandom(400_000), mode="truncate")
    with pytest.raises(hub.DownloadError, match="dropped.bin"):
        hub.download(url, progress=False)
    assert _cache_files() == []


def test_http_error_is_a_download_error(server):
    server("/exists", b"x")
    url = server("/exists", b"x").replace("/exists", "/nope.pth")
    with pytest.raises(hub.DownloadError, match="404"):
        hub.download(url, progress=False)
    assert _cache_files() == []


def test_offline_uses_cache_and_names_missing_file(server, monkeypatch):
    body = os.urandom(1000)
    url = server("/weights/offline.bin", body)
    cached = hub.download(url, _sha(body), progress=False)
    monkeypatch.setenv("SSMZOO_OFFLINE", "1")
    assert hub.resolve({"url": url, "sha256": _sha(body)}) == cached
    missing = url.replace("offline.bin", "never-downloaded.bin")
    with pytest.raises(hub.OfflineError) as info:
        hub.resolve({"url": missing})
    assert str(hub.cache_path(missing)) in str(info.value)


def test_unhashed_file_warns_once_records_hash_and_detects_later_corruption(server, monkeypatch):
    body = os.urandom(2000)
    url = server("/weights/unhashed.bin", body)
    with pytest.warns(UserWarning, match="No sha256 is known"):
        path = hub.resolve({"url": url})
    assert Path(f"{path}.sha256").read_text().strip() == _sha(body)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.resolve({"url": url}) == path
    path.write_bytes(b"bit rot")
    with pytest.raises(hub.ChecksumError, match="unhashed.bin"):
        hub.resolve({"url": url})
    monkeypatch.setenv("SSMZOO_REQUIRE_HASH", "1")
    with pytest.raises(hub.ChecksumError, match="SSMZOO_REQUIRE_HASH"):
        hub.resolve({"url": server("/weights/other.bin", body)})


class _Malicious:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _MaliciousExec:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


class ForeignTrainerState:
    """Stands for a class of another code base (a Lightning callback, a yacs CfgNode ...)."""

    def __init__(self):
        self.step = 7
        self.ema = torch.arange(3.0)


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    weights = {"w": torch.randn(3, 3)}
    path = tmp_path / "evil.pth"
    path.write_bytes(_torch_bytes({"model": weights, "payload": _Malicious(marker), "p2": _MaliciousExec(marker)}))
    checkpoint = hub.load_checkpoint(path)
    assert not marker.exists()
    assert isinstance(checkpoint["payload"], hub.Placeholder) and "system" in checkpoint["payload"].target
    torch.testing.assert_close(hub.pick_state_dict(checkpoint, "model")["w"], weights["w"])


def test_checkpoint_with_namespace_and_foreign_class_loads_tensors(tmp_path):
    weights = {"layer.weight": torch.randn(4, 2), "layer.bias": torch.randn(4)}
    ckpt = {"model": weights, "args": argparse.Namespace(lr=0.1, model="vim_tiny"), "state": ForeignTrainerState(),
            "epoch": 3}
    path = tmp_path / "official.pth"
    path.write_bytes(_torch_bytes(ckpt))
    loaded = hub.load_checkpoint(path)
    assert loaded["epoch"] == 3
    assert isinstance(loaded["args"], hub.Placeholder) and loaded["args"].target == "argparse.Namespace"
    assert loaded["args"].state == {"lr": 0.1, "model": "vim_tiny"}
    torch.testing.assert_close(loaded["state"].state["ema"], torch.arange(3.0))  # tensors inside stay reachable
    state_dict = hub.load_state_dict(path)  # finds the 'model' entry by itself
    assert state_dict.keys() == weights.keys()


def test_pick_state_dict_key_and_prefix():
    weights = {"model.a": torch.ones(1), "model.b": torch.zeros(1), "loss.w": torch.ones(2)}
    assert hub.pick_state_dict({"state_dict": weights}, "state_dict", prefix="model.").keys() == {"a", "b"}
    with pytest.raises(KeyError, match="params"):
        hub.pick_state_dict({"state_dict": weights}, "params")
    with pytest.raises(KeyError, match="no state_dict found"):
        hub.pick_state_dict({"epoch": 1})


def test_safetensors_and_not_a_checkpoint(tmp_path):
    weights = {"a": torch.randn(2, 3)}
    save_file(weights, tmp_path / "w.safetensors")
    torch.testing.assert_close(hub.load_checkpoint(tmp_path / "w.safetensors")["a"], weights["a"])
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(hub.NotACheckpointError, match="notes.pth"):
        hub.load_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(hub.NotACheckpointError, match="bad.safetensors"):
        hub.load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        hub.load_checkpoint(tmp_path / "missing.pth")


# --- pretrained models end to end (the tests' toy family) ----------------------------------------------------------


def _official_toy_checkpoint() -> tuple[bytes, dict]:
    """The toy model's weights in its "official" layout (classifier named fc), inside a trainer-style dict."""
    torch.manual_seed(123)
    reference = ssmzoo.create_model("test_toyzoo").eval()
    official = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in reference.state_dict().items()}
    body = _torch_bytes({"model": official, "args": argparse.Namespace(epochs=300)})
    return body, reference.state_dict()


def test_create_model_pretrained_downloads_filters_and_adapts(server):
    body, expected = _official_toy_checkpoint()
    url = server("/release/toy_in1k.pth", body)
    overlay = dict(url=url, sha256=_sha(body), checkpoint_key="model")
    model = ssmzoo.create_model("test_toyzoo", pretrained=True, pretrained_cfg_overlay=overlay)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert "state_dict" not in model.pretrained_cfg
    # another head size keeps the backbone and re-initialises the classifier (timm's behaviour)
    model5 = ssmzoo.create_model("test_toyzoo", pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay)
    assert model5.head.out_features == 5
    torch.testing.assert_close(model5.stages[0][0].weight, expected["stages.0.0.weight"])
    # features_only loads the weights before wrapping
    features = ssmzoo.create_model("test_toyzoo", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(features.stages_0[0].weight, expected["stages.0.0.weight"])


def test_load_pretrained_from_path_and_url(server, tmp_path):
    body, expected = _official_toy_checkpoint()
    path = tmp_path / "toy.pth"
    path.write_bytes(body)
    model = ssmzoo.load_pretrained(ssmzoo.create_model("test_toyzoo"), str(path))
    torch.testing.assert_close(model.head.weight, expected["head.weight"])
    url = server("/release/toy.pth", body)
    with pytest.warns(UserWarning, match="No sha256"):
        model = ssmzoo.load_pretrained(ssmzoo.create_model("test_toyzoo"), url)
    torch.testing.assert_close(model.head.weight, expected["head.weight"])


def test_pretrained_without_weights_and_unknown_names():
    with pytest.raises(ValueError, match="no pretrained weights for test_toyzoo"):
        ssmzoo.create_model("test_toyzoo", pretrained=True)
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'in22k'.*untrained"):
        ssmzoo.create_model("test_toyzoo.in22k")
    with pytest.raises(ValueError, match="did you mean test_toyzoo"):
        ssmzoo.create_model("test_toyzo")

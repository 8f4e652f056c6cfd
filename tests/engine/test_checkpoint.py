"""mmengine checkpoints load weights-only through the allow-list; anything else stays refused."""
from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint

import ssmzoo.engine  # noqa: F401  (installs the loader)
from ssmzoo.engine.checkpoint import MMENGINE_CHECKPOINT_GLOBALS


def _mmengine_like_checkpoint() -> dict:
    """What CheckpointHook saves: meta, weights, optimizer state and the message hub with its HistoryBuffers."""
    hub = MessageHub.get_instance("ssmzoo-test-checkpoint")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", np.float32(0.1))
    hub.update_info("iter", np.int64(3))
    return {"meta": {"iter": 3, "seed": 0, "dataset_meta": {"classes": ("a", "b")}},
            "state_dict": {"w": torch.ones(2)}, "message_hub": hub.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}


def test_mmengine_checkpoint_loads_weights_only(tmp_path):
    path = tmp_path / "iter_3.pth"
    torch.save(_mmengine_like_checkpoint(), path)
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):  # what mmengine 0.10.7 runs into
        torch.load(path, weights_only=True)
    ckpt = _load_checkpoint(str(path))
    buffer = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == pytest.approx(1 / 3)
    # the allow-list is scoped to these loads, not added to torch's global one
    assert HistoryBuffer not in torch.serialization.get_safe_globals()


class _Payload:
    def __reduce__(self):
        return getattr, (np.ndarray, "tofile")


@pytest.mark.parametrize("obj", [argparse.Namespace(lr=0.1), _Payload()], ids=["namespace", "getattr"])
def test_other_objects_are_refused(tmp_path, obj):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {}, "args": obj}, path)
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(str(path))


def test_allow_list_holds_classes_not_modules():
    assert all(callable(g) or isinstance(g, tuple) for g in MMENGINE_CHECKPOINT_GLOBALS)


def test_resume_finds_the_newest_complete_checkpoint_when_last_checkpoint_is_empty(tmp_path):
    """--resume without a path: mmengine's last_checkpoint when it names a file; a kill while mmengine rewrote it
    leaves it empty, and then the newest complete iter_N.pth is taken (one cut short by a kill is skipped)."""
    from ssmzoo.engine.runner import resume_checkpoint

    assert resume_checkpoint(str(tmp_path)) is None  # nothing saved yet: train from the start
    for step in (2, 10):
        torch.save(_mmengine_like_checkpoint(), tmp_path / f"iter_{step}.pth")
    whole = (tmp_path / "iter_10.pth").read_bytes()
    (tmp_path / "iter_12.pth").write_bytes(whole[: len(whole) // 2])  # killed while saving
    marker = tmp_path / "last_checkpoint"
    marker.write_text(str(tmp_path / "iter_2.pth"))
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / "iter_2.pth")  # what mmengine recorded
    marker.write_text("")
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / "iter_10.pth")  # numeric order, not 'iter_2' > 'iter_10'
    marker.write_text(str(tmp_path / "gone.pth"))
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / "iter_10.pth")
    for step in (2, 10):
        (tmp_path / f"iter_{step}.pth").unlink()
    with pytest.raises(FileNotFoundError, match="no complete"):
        resume_checkpoint(str(tmp_path))

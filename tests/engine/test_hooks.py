"""ssmzoo.engine.hooks: the compute-dtype log and the finite-loss check (AMP checks), on stand-in runners."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from ssmzoo.engine import hooks


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def _run(monkeypatch, autocast: bool) -> list[str]:
    logged = []
    monkeypatch.setattr(hooks, "print_log", lambda msg, **_: logged.append(msg))
    runner = SimpleNamespace(model=_Net())
    hook = hooks.ComputeDtypeHook("backbone")
    hook.before_train(runner)
    for i in range(2):  # logged once, after the first iteration
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            runner.model(torch.randn(3, 4))
        hook.after_train_iter(runner, i)
    return logged


def test_compute_dtype_under_autocast(monkeypatch):
    expected = "compute dtype: autocast torch.bfloat16 on cpu; backbone output torch.bfloat16, parameters torch.float32"
    assert _run(monkeypatch, True) == [expected]


def test_compute_dtype_without_autocast(monkeypatch):
    expected = "compute dtype: no autocast (cpu); backbone output torch.float32, parameters torch.float32"
    assert _run(monkeypatch, False) == [expected]


def test_finite_loss_hook_stops_at_a_nan():
    runner = SimpleNamespace(iter=6)
    hook = hooks.FiniteLossHook(interval=1)
    hook.after_train_iter(runner, 6, outputs={"loss": torch.tensor(0.5), "acc": 1.0})
    with pytest.raises(FloatingPointError, match="iter 7.*'loss': nan"):
        hook.after_train_iter(runner, 6, outputs={"loss": torch.tensor(float("nan")), "acc": 1.0})


def test_compute_dtype_reports_autocast_when_the_output_is_float32(monkeypatch):
    """A module ending in an op that autocast runs in float32 (CUDA's layer_norm; here a float cast) still shows the
    autocast in effect: what the GPU run of issue #8 needed (its backbone ends in LayerNorms)."""
    logged = []
    monkeypatch.setattr(hooks, "print_log", lambda msg, **_: logged.append(msg))
    runner = SimpleNamespace(model=nn.Sequential(nn.Linear(4, 4), nn.Identity()))
    runner.model[1].register_forward_hook(lambda m, a, out: out.float())
    hook = hooks.ComputeDtypeHook("")
    hook.before_train(runner)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runner.model(torch.randn(3, 4))
    hook.after_train_iter(runner, 0)
    assert logged == ["compute dtype: autocast torch.bfloat16 on cpu; model output torch.float32, "
                      "parameters torch.float32"]

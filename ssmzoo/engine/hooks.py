"""Hooks registered in mmengine's ``HOOKS``."""
from __future__ import annotations

import hashlib

import torch
from mmengine.dist import all_gather_object, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

__all__ = ["ComputeDtypeHook", "FiniteLossHook", "ParamSyncCheckHook", "parameter_digests"]


def parameter_digests(model: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter's bytes (float32 CPU copies), by name."""
    return {name: hashlib.sha256(p.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, p in model.named_parameters()}


@HOOKS.register_module()
class ParamSyncCheckHook(Hook):
    """Check that every rank holds the same parameters after training iterations (a DDP sanity check).

    Every ``interval`` iterations (and after the last) the ranks exchange per-parameter sha256 digests; if any
    differ, a RuntimeError names the parameters, else rank 0 logs "parameters identical on N ranks after iter i
    (sha256 ...)". Under data-parallel training with synchronised gradients this always holds; a missing
    all-reduce, a non-synchronised buffer turned parameter or a rank-dependent update breaks it. Costs one
    hash of the model per check.
    """

    priority = "LOW"

    def __init__(self, interval: int = 1) -> None:
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digests = parameter_digests(model)
        gathered = all_gather_object(digests)
        differing = sorted({name for other in gathered for name in digests if other.get(name) != digests[name]})
        if differing:
            raise RuntimeError(f"parameters differ between ranks after iter {runner.iter + 1}: {differing[:10]}"
                               + (f" and {len(differing) - 10} more" if len(differing) > 10 else ""))
        whole = hashlib.sha256("".join(digests[k] for k in sorted(digests)).encode()).hexdigest()
        print_log(f"parameters identical on {get_world_size()} ranks after iter {runner.iter + 1} "
                  f"(sha256 {whole[:16]})", logger="current")


def _first_tensor(value):
    """The first tensor in a (nested) output: a tensor, or a list / tuple / dict of them."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


@HOOKS.register_module()
class ComputeDtypeHook(Hook):
    """Log the precision a training run computes in, read inside the first training iteration's forward pass.

    Logs once, e.g. "compute dtype: autocast torch.bfloat16 on cuda; backbone output torch.float32, parameters
    torch.float32", for the submodule ``module`` (a dotted name in the unwrapped model; "" for the whole model): the
    autocast state in effect while that module ran (what ``--amp`` switches on: matmuls and convolutions in bf16 /
    fp16), its output dtype and its parameters' dtypes. The output dtype alone says little: CUDA autocast runs
    layer_norm in float32, so a backbone that ends in a LayerNorm returns float32 under bf16 autocast too.
    """

    priority = "LOW"

    def __init__(self, module: str = "backbone") -> None:
        self.module = module
        self._handle = None
        self._seen: str | None = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._target = model.get_submodule(self.module)
        self._handle = self._target.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        tensor = _first_tensor(output)
        if tensor is None or self._seen is not None:
            return
        device = tensor.device.type
        autocast = (f"autocast {torch.get_autocast_dtype(device)} on {device}"
                    if torch.is_autocast_enabled(device) else f"no autocast ({device})")
        self._seen = f"{autocast}; {self.module or 'model'} output {tensor.dtype}"
        self._handle.remove()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._handle is None or self._seen is None:
            return
        param_dtypes = sorted({str(p.dtype) for p in self._target.parameters()})
        print_log(f"compute dtype: {self._seen}, parameters {', '.join(param_dtypes)}", logger="current")
        self._handle = None


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop training at the first non-finite loss: every ``interval`` iterations each logged loss of the step must
    be finite, else a FloatingPointError names the iteration and the losses (mmseg's CheckInvalidLossHook, which
    mmengine lacks; a GPU sync per check)."""

    priority = "LOW"

    def __init__(self, interval: int = 1) -> None:
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs or not self.every_n_train_iters(runner, self.interval):
            return
        bad = {k: float(v) for k, v in outputs.items() if not torch.isfinite(torch.as_tensor(v)).all()}
        if bad:
            raise FloatingPointError(f"non-finite loss at iter {runner.iter + 1}: {bad}")

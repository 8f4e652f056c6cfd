"""Hooks registered in mmengine's ``HOOKS``."""
from __future__ import annotations

import hashlib

import torch
from mmengine.dist import all_gather_object, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

__all__ = ["ParamSyncCheckHook", "parameter_digests"]


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

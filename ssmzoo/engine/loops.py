"""An iteration-based training loop whose resumed runs repeat uninterrupted ones exactly.

mmengine restores weights, optimizer, schedulers and the iteration count, and replays the data order by drawing
the already-trained batches again. What it cannot restore is the main process's random state: an uninterrupted
run reaches iteration k with generators advanced by k model steps (dropout, drop path, mixup), by validation
runs and by main-process data transforms, a resumed run with generators advanced by the data replay only.
:class:`SeededIterBasedTrainLoop` removes that history: before fetching the batch of iteration i it reseeds
Python's ``random``, numpy's global generator and torch's (CPU and every CUDA device) from
``(runner seed, rank, i)``. The random numbers of iteration i are then a function of i alone, so after a crash a
run resumed from a checkpoint produces the same losses as one that never stopped (given deterministic kernels).
Dataloader workers keep mmengine's seeding (``seed + rank * num_workers + worker_id``); their random streams are
replayed exactly by the data skip.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop

__all__ = ["SeededIterBasedTrainLoop", "reseed"]


def reseed(seed: int, rank: int, iteration: int) -> None:
    """Seed ``random``, numpy and torch (all devices) from ``(seed, rank, iteration)`` via numpy's SeedSequence,
    which gives statistically independent streams for distinct tuples."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, rank, iteration]).generate_state(2)
    random.seed(int(words[0]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))  # also seeds every CUDA device


@LOOPS.register_module()
class SeededIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` (same arguments) with the per-iteration reseeding described above."""

    def run(self) -> torch.nn.Module:
        self.runner.call_hook("before_train")
        # the whole run is one "epoch" for the hooks, as in mmengine's loop
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            print_log(f"Advance dataloader {self._iter} steps to skip data that has already been trained",
                      logger="current", level=logging.WARNING)
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        rank = get_rank()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            reseed(self.runner.seed, rank, self._iter)
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

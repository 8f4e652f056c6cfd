"""Weights-only loading of mmengine checkpoints on torch >= 2.6, through an allow-list.

mmengine 0.10.7 calls ``torch.load(filename, map_location=...)``; since torch 2.6 that means
``weights_only=True``, and its own checkpoints fail to load (``Unsupported global: GLOBAL
mmengine.logging.history_buffer.HistoryBuffer``): the message hub and the log history pickle a few non-tensor
objects. Rather than turning weights-only loading off (which would run arbitrary pickled code from any checkpoint
handed to ``--resume`` / ``load_from``), the local-file loader of mmengine's ``CheckpointLoader`` is replaced by one
that loads with ``weights_only=True`` inside ``torch.serialization.safe_globals`` holding exactly the classes
mmengine's checkpoints contain (:data:`MMENGINE_CHECKPOINT_GLOBALS`). Anything else in a checkpoint is still
refused, with torch's message naming it. The allow-list is scoped to these loads; ``torch.load`` elsewhere is
unaffected. Importing :mod:`ssmzoo.engine` installs the loader.
"""
from __future__ import annotations

import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ["MMENGINE_CHECKPOINT_GLOBALS", "load_from_local_safely"]



def _history_buffer_method(obj, name: str):
    """Stands in for ``getattr`` while unpickling: mmengine pickles a HistoryBuffer's statistics methods as
    ``getattr(HistoryBuffer, "mean")`` etc. Only public methods of HistoryBuffer itself resolve; anything else is
    refused, so allowing the name ``builtins.getattr`` does not open attribute access on other objects."""
    value = getattr(HistoryBuffer, name, None) if obj is HistoryBuffer and not name.startswith("_") else None
    if not callable(value):
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer's "
                                     "statistics methods are allowed")
    return value


# What mmengine's CheckpointHook writes besides tensors, dicts, lists and numbers: the message hub's HistoryBuffer
# objects (log windows held as numpy arrays, statistics methods referenced through getattr) and numpy scalars /
# arrays among its runtime info.
MMENGINE_CHECKPOINT_GLOBALS = [
    HistoryBuffer,
    (_history_buffer_method, "builtins.getattr"),
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    # an ndarray's dtype is rebuilt as an instance of its DType class (Float64DType ...): the inert ones
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__ if name != "ObjectDType"),
]


def load_from_local_safely(filename: str, map_location=None):
    """``torch.load(filename, weights_only=True)`` allowing :data:`MMENGINE_CHECKPOINT_GLOBALS`.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the checkpoint holds another class (torch's message names it).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


# mmengine's loader for plain paths (prefix ''): Runner.resume / load_from / load_checkpoint all go through it.
CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_safely, force=True)

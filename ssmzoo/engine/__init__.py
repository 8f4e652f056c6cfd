"""mmengine glue: importing this package registers ssmzoo's components in mmengine's root registries.

Configs reach them with ``custom_imports = dict(imports=["ssmzoo.engine"], allow_failed_imports=False)`` (the
base configs in ``configs/_base_`` do) and ``default_scope = "mmengine"``:

- models (``MODELS``): :class:`~ssmzoo.engine.models.ImageClassifier`, :class:`~ssmzoo.engine.models.Segmentor`,
  :class:`~ssmzoo.engine.models.SegDataPreprocessor`;
- datasets (``DATASETS``): ``ImageNetFolder``, ``SegmentationFolder``, ``ADE20KDataset``; transforms
  (``TRANSFORMS``): ``LoadImageFromFile``, ``LoadAnnotations``, ``Resize``, ``RandomResize``, ``RandomCrop``,
  ``RandomFlip``, ``PhotoMetricDistortion``, ``PackSegInputs``; collate function (``FUNCTIONS``) ``list_collate``;
- metrics (``METRICS``): ``Accuracy`` (top-k), ``IoUMetric`` (mmseg's mIoU / mAcc / aAcc);
- ``ZooOptimWrapperConstructor`` (no decay from the model, layer-wise lr decay), ``SeededIterBasedTrainLoop``
  (exact resume), ``ParamSyncCheckHook`` (DDP check);
- checkpoint loading through an allow-list of the classes mmengine's own checkpoints pickle
  (:mod:`ssmzoo.engine.checkpoint`), so ``--resume`` works with torch >= 2.6's weights-only loading.
"""
from . import checkpoint, datasets, hooks, loops, metrics, models, optim, transforms  # noqa: F401  (registration)
from .checkpoint import load_from_local_safely
from .collate import list_collate
from .datasets import ADE20KDataset, ImageNetFolder, SegmentationFolder
from .hooks import ParamSyncCheckHook
from .loops import SeededIterBasedTrainLoop
from .metrics import Accuracy, IoUMetric
from .models import ImageClassifier, SegDataPreprocessor, Segmentor
from .optim import ZooOptimWrapperConstructor

__all__ = [
    "ADE20KDataset",
    "Accuracy",
    "ImageClassifier",
    "ImageNetFolder",
    "IoUMetric",
    "ParamSyncCheckHook",
    "SeededIterBasedTrainLoop",
    "SegDataPreprocessor",
    "SegmentationFolder",
    "Segmentor",
    "ZooOptimWrapperConstructor",
    "list_collate",
    "load_from_local_safely",
]

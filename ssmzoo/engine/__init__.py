"""mmengine glue: importing this package registers ssmzoo's components in mmengine's root registries.

Configs reach them with ``custom_imports = dict(imports=["ssmzoo.engine"], allow_failed_imports=False)`` (the
base configs in ``configs/_base_`` do) and ``default_scope = "mmengine"``:

- models (``MODELS``): :class:`~ssmzoo.engine.models.ImageClassifier`, :class:`~ssmzoo.engine.models.Segmentor`,
  :class:`~ssmzoo.engine.models.SegDataPreprocessor`, :class:`~ssmzoo.engine.separation.SpeechSeparator`;
- datasets (``DATASETS``): ``ImageNetFolder``, ``SegmentationFolder``, ``ADE20KDataset``; transforms
  (``TRANSFORMS``): ``LoadImageFromFile``, ``LoadAnnotations``, ``Resize``, ``RandomResize``, ``RandomCrop``,
  ``RandomFlip``, ``PhotoMetricDistortion``, ``PackSegInputs``; collate function (``FUNCTIONS``) ``list_collate``;
- speech (:mod:`ssmzoo.engine.separation`): ``Wsj0MixFolder``, ``LibriMixCSV``, ``DynamicMixFolder``,
  ``separation_collate``, ``DatasetEpochHook``;
- metrics (``METRICS``): ``Accuracy`` (top-k), ``IoUMetric`` (mmseg's mIoU / mAcc / aAcc), ``SeparationMetric``
  (SI-SNR(i), SDR(i));
- ``ZooOptimWrapperConstructor`` (no decay from the model, layer-wise lr decay), ``SeededIterBasedTrainLoop``
  (exact resume), ``ParamSyncCheckHook`` (DDP check),
  ``ComputeDtypeHook`` (logs the dtype training computes in: AMP check), ``FiniteLossHook``;
- checkpoint loading through an allow-list of the classes mmengine's own checkpoints pickle
  (:mod:`ssmzoo.engine.checkpoint`), so ``--resume`` works with torch >= 2.6's weights-only loading.
"""
from . import checkpoint, datasets, hooks, loops, metrics, models, optim, separation, transforms  # noqa: F401
from .checkpoint import load_from_local_safely
from .collate import list_collate
from .datasets import ADE20KDataset, ImageNetFolder, SegmentationFolder
from .hooks import ComputeDtypeHook, FiniteLossHook, ParamSyncCheckHook
from .loops import SeededIterBasedTrainLoop
from .metrics import Accuracy, IoUMetric
from .models import ImageClassifier, SegDataPreprocessor, Segmentor
from .optim import ZooOptimWrapperConstructor
from .separation import SeparationMetric, SpeechSeparator

__all__ = [
    "ADE20KDataset",
    "Accuracy",
    "ComputeDtypeHook",
    "FiniteLossHook",
    "ImageClassifier",
    "ImageNetFolder",
    "IoUMetric",
    "ParamSyncCheckHook",
    "SeededIterBasedTrainLoop",
    "SegDataPreprocessor",
    "SegmentationFolder",
    "Segmentor",
    "SeparationMetric",
    "SpeechSeparator",
    "ZooOptimWrapperConstructor",
    "list_collate",
    "load_from_local_safely",
]

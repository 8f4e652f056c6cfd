# ADE20K scene parsing (ADEChallengeData2016/{images,annotations}/{training,validation}), mmseg 1.x pipelines:
# reduce-zero-label (150 classes, 255 ignored), random rescale of the (2048, 512) bound by 0.5-2.0, random
# 512 x 512 crop where no class covers 75 %, flip, photometric distortion; test: rescale to the (2048, 512) bound,
# labels at their original size (predictions are resized back to it).
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)
img_scale = (2048, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,  # per GPU: 8 GPUs x 2 = 16, the official total (VMamba's "4xb4": 4 x 4)
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='list_collate'),
    dataset=dict(type='ADE20KDataset', data_root=data_root, split='training', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='list_collate'),
    dataset=dict(type='ADE20KDataset', data_root=data_root, split='validation', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric')
test_evaluator = val_evaluator

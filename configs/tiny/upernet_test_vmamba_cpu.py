# A tiny CPU segmentation run for tests and smoke checks: the ADE20K UperNet configs shrunk to test_vmamba with a
# 32-channel head on 64 x 64 crops of an ADE20K-layout folder (--data-root) with 4 classes.
_base_ = [
    '../_base_/models/upernet.py', '../_base_/datasets/ade20k.py', '../_base_/schedules/upernet_160k.py',
    '../_base_/default_runtime.py',
]
crop_size = (64, 64)
img_scale = (256, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(name='test_vmamba', pretrained=False, out_norms=True),
    num_classes=4,
    decode_head=dict(channels=32),
    auxiliary_head=dict(channels=16))
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
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type='SegmentationFolder', data_root='data/tiny_ade', img_dir='images/training',
                 ann_dir='annotations/training', classes=('a', 'b', 'c', 'd'), reduce_zero_label=True,
                 pipeline=train_pipeline, _delete_=True))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(type='SegmentationFolder', data_root='data/tiny_ade', img_dir='images/validation',
                 ann_dir='annotations/validation', classes=('a', 'b', 'c', 'd'), reduce_zero_label=True,
                 pipeline=test_pipeline, _delete_=True))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=10, end=150),
]
train_cfg = dict(max_iters=150, val_interval=150)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=50, max_keep_ckpts=2, save_best=None))
log_processor = dict(window_size=1)

# A tiny CPU classification run for tests and smoke checks: the ImageNet base configs shrunk to test_vim on
# 32 x 32 images of a 4-class ImageNet-layout folder (--data-root), iteration-based with exact resume.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/in1k_finetune.py', '../_base_/default_runtime.py']
img_size = 32
model = dict(
    type='ImageClassifier',
    model=dict(name='test_vim', pretrained=False, num_classes=4),
    label_smoothing=0.1,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5, mode='batch'))
train_transform = dict(input_size=img_size, is_training=True, scale=(0.6, 1.0), interpolation='bilinear')
val_transform = dict(input_size=img_size, interpolation='bilinear', crop_pct=1.0)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root='data/tiny_imagenet', transform=train_transform))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, pin_memory=False,
    dataset=dict(data_root='data/tiny_imagenet', transform=val_transform))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=3e-3, weight_decay=0.05), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=1e-4, by_epoch=False, begin=10, end=200, T_max=190),
]
train_cfg = dict(_delete_=True, type='SeededIterBasedTrainLoop', max_iters=200, val_interval=100)
custom_hooks = [
    dict(type='EMAHook', momentum=0.1, priority='ABOVE_NORMAL'),  # validation sees the EMA weights
    dict(type='ParamSyncCheckHook', interval=1),  # checks the ranks agree under DDP
]
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2, save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
auto_scale_lr = dict(base_batch_size=8)

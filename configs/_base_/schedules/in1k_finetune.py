# ImageNet fine-tuning (timm / DeiT recipe pieces): AdamW, no weight decay on 1-D parameters (norms, biases) and
# on what the model's no_weight_decay() lists; linear warm-up then cosine, per iteration; EMA of the weights
# (validation uses the EMA weights); mixup 0.8 / cutmix 1.0 / label smoothing 0.1 live in the model config.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    constructor='ZooOptimWrapperConstructor',
    paramwise_cfg=dict(flat_decay_mult=0.0, model_no_decay=True))
max_epochs = 30
warmup_epochs = 5
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         T_max=max_epochs - warmup_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),  # losses, lr, time, ETA
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=True)
# total batch of the official runs; tools/train.py --auto-scale-lr rescales the lr to another total batch
auto_scale_lr = dict(enable=False, base_batch_size=1024)

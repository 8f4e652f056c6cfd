# The Swin / VMamba UperNet schedule: AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 except norms
# (custom key 'norm', as the official configs) and what the backbone's no_weight_decay() lists (position
# embeddings, A_log, D); 1500 linear warm-up iterations from 1e-6 x lr, then poly (power 1) to 0 at 160k;
# validation and a checkpoint every 16k iterations, the best mIoU kept.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='ZooOptimWrapperConstructor',
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}, model_no_decay=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
# SeededIterBasedTrainLoop: mmengine's IterBasedTrainLoop whose resumed runs repeat uninterrupted ones
train_cfg = dict(type='SeededIterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),  # losses, lr, time, ETA
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3, save_best='mIoU',
                    rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=False)

# The Mamba-TasNet / DPMamba WSJ0-2mix schedule (xi-j/Mamba-TasNet hparams/WSJ0Mix/*.yaml, SpeechBrain): Adam
# lr 1.5e-4, no weight decay, gradient norm clipped at 5; 20,000 linear warm-up steps (one epoch at batch 1), then
# cosine to 1 % of the lr over the 200 epochs; validation on cv every epoch, the best SI-SNRi kept.
# Not reproduced: skipping the rare items whose loss exceeds 999999.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=1.5e-4, weight_decay=0.0),
    clip_grad=dict(max_norm=5.0))
max_epochs = 200
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 20000, by_epoch=False, begin=0, end=20000),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=1, end=max_epochs, T_max=max_epochs - 1,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
custom_hooks = [dict(type='DatasetEpochHook')]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=500),  # losses, lr, time, ETA
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='si_snri', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=True)

# A tiny CPU separation run for tests and smoke checks: the WSJ0-2mix configs shrunk to test_dpmamba on 0.25 s
# crops of fixed mixtures from a wsj0-2mix-layout folder (--data-root), iteration-based with exact resume.
_base_ = ['../_base_/datasets/wsj0_2mix.py', '../_base_/schedules/separation_200e.py', '../_base_/default_runtime.py']
model = dict(type='SpeechSeparator', model=dict(name='test_dpmamba'), loss_threshold=-40.0)
data_root = 'data/tiny_wsj0mix'
train_dataloader = dict(
    batch_size=2, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, type='Wsj0MixFolder', data_root=data_root, split='tr', segment=0.25,
                 random_crop=True))
val_dataloader = dict(num_workers=0, dataset=dict(data_root=data_root))
test_dataloader = dict(num_workers=0, dataset=dict(data_root=data_root))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
train_cfg = dict(_delete_=True, type='SeededIterBasedTrainLoop', max_iters=20, val_interval=10)
custom_hooks = []
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=10, max_keep_ckpts=2, save_best=None))
log_processor = dict(by_epoch=False, window_size=1)

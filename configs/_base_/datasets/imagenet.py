# ImageNet-1k in its folder layout: <data_root>/{train,val}/<class>/*.JPEG (tools/train.py --data-root overrides).
# Augmentation: the DeiT recipe that Vim and VMamba train with (timm create_transform: RandomResizedCrop,
# flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 'pixel'; colour jitter is unused with RandAugment);
# evaluation: resize to 224 / 0.875 then centre crop 224, bicubic.
data_root = 'data/imagenet'
img_size = 224

train_dataloader = dict(
    batch_size=128,  # per GPU: 8 GPUs x 128 = 1024, the official total
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageNetFolder',
        data_root=data_root,
        split='train',
        transform=dict(input_size=img_size, is_training=True, color_jitter=0.3,
                       auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
                       re_prob=0.25, re_mode='pixel', re_count=1)))
val_dataloader = dict(
    batch_size=256,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageNetFolder',
        data_root=data_root,
        split='val',
        transform=dict(input_size=img_size, interpolation='bicubic', crop_pct=0.875)))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

# Fine-tune Vim-Ti from its ImageNet-1k weights (vim_tiny.in1k) on an ImageNet-layout folder with Vim's
# fine-tuning recipe (hustvl/Vim vim/scripts/ft-vim-t.sh on vim/main.py's DeiT defaults): 30 epochs, batch
# 8 x 128, AdamW lr 5e-6 x 1024 / 512 = 1e-5 (DeiT's linear scaling), warm-up and minimum lr also 1e-5 (so the
# lr stays at 1e-5), weight decay 1e-8, drop path 0, EMA 0.99996, mixup 0.8 / cutmix 1.0 / smoothing 0.1,
# RandAugment, random erasing 0.25, float32 (--no_amp). Not reproduced: DeiT's repeated-augmentation sampler.
# A folder with another number of classes: --cfg-options model.model.num_classes=N (the head is re-initialised).
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/in1k_finetune.py', '../_base_/default_runtime.py']
model = dict(
    type='ImageClassifier',
    model=dict(name='vim_tiny', pretrained=True, num_classes=1000, drop_path_rate=0.0),
    label_smoothing=0.1,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'))
optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-8))
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=30, T_max=25,
         convert_to_iter_based=True),
]
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]

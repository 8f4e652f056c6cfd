# Fine-tune VMamba-T from vmamba_tiny.in1k on an ImageNet-layout folder. VMamba publishes no fine-tuning recipe;
# this uses its training code's settings (classification/config.py: AdamW betas (0.9, 0.999), gradient clipping
# at 5.0, EMA 0.9999, mixup 0.8 / cutmix 1.0 / smoothing 0.1, RandAugment, random erasing 0.25, drop path of the
# model) with the fine-tuning schedule of the Swin code it derives from (30 epochs, 5 warm-up, lr 2e-5 x batch /
# 512 = 4e-5 at 1024, warm-up from 4e-8, cosine to 4e-7, weight decay 1e-8).
# VMamba trains with float16 AMP: add --amp fp16 on GPUs.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/in1k_finetune.py', '../_base_/default_runtime.py']
model = dict(
    type='ImageClassifier',
    model=dict(name='vmamba_tiny', pretrained=True, num_classes=1000),
    label_smoothing=0.1,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'))
optim_wrapper = dict(optimizer=dict(lr=4e-5, weight_decay=1e-8), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=4e-7, by_epoch=True, begin=5, end=30, T_max=25,
         convert_to_iter_based=True),
]
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]

# Vim-Ti + UperNet on ADE20K, Vim's own recipe (hustvl/Vim seg/configs/vim/upernet/
# upernet_vim_tiny_24_512_slide_60k.py, mmseg 0.x):
# - backbone: 512 x 512 position grid (resampled from the 14 x 14 ImageNet one), no class token, the mixer outputs
#   of blocks 5 / 11 / 17 / 23 (the official use_residual_as_feature=False), residual stream in the input dtype,
#   drop path 0.1 (the official class default), turned into strides 4 / 8 / 16 / 32 by the fpn1..fpn4 neck;
# - UperNet 192 channels (the official override of 512), auxiliary FCN head on the third map, SyncBN;
# - AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.92 over the 24 blocks (BEiT's constructor), no decay
#   on 1-D parameters, biases and the model's no_weight_decay list; 1500 linear warm-up iterations from 1e-6 x lr,
#   then poly (power 1) to 0 at 60k; 8 images per GPU on 4 GPUs (32 in all);
# - sliding-window test, 512 x 512 crops, stride 341; validation and checkpoints every 1000 iterations as in
#   the official schedule_60k (4 kept plus the best mIoU).
# The official launch script (seg/scripts/ft_vim_tiny_upernet.sh) overrides lr to 2e-4 and weight decay to 0.1:
# add --cfg-options optim_wrapper.optimizer.lr=2e-4 optim_wrapper.optimizer.weight_decay=0.1 for that run.
# Vim-S's official config uses RoPE and a class token (if_rope=True), which ssmzoo's Vim does not implement, so
# only Vim-Ti has a config here.
_base_ = [
    '../_base_/models/upernet.py', '../_base_/datasets/ade20k.py', '../_base_/schedules/upernet_160k.py',
    '../_base_/default_runtime.py',
]
crop_size = (512, 512)
model = dict(
    backbone=dict(name='vim_tiny', img_size=512, class_token=False, global_pool='avg', intermediate_output='mixer',
                  out_indices=(5, 11, 17, 23), residual_in_fp32=False, drop_path_rate=0.1),
    neck=dict(scales=(4, 2, 1, 0.5)),
    decode_head=dict(channels=192),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(_delete_=True, flat_decay_mult=0.0, bias_decay_mult=0.0, model_no_decay=True,
                       layer_decay_rate=0.92))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=60000),
]
train_cfg = dict(max_iters=60000, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=1000, max_keep_ckpts=4))

# VMamba-T [s1l8] + UperNet on ADE20K, the official recipe (MzeroMiko/VMamba
# segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py, which inherits mmseg's Swin-T UperNet
# 160k config): ImageNet weights, per-stage output LayerNorms (Backbone_VSSM's outnorm0..3, new, hence the
# non-strict load as in the official load_pretrained), drop path 0.2, batch 16, 160k iterations.
_base_ = [
    '../_base_/models/upernet.py', '../_base_/datasets/ade20k.py', '../_base_/schedules/upernet_160k.py',
    '../_base_/default_runtime.py',
]
model = dict(backbone=dict(name='vmamba_tiny', out_norms=True, drop_path_rate=0.2, pretrained_strict=False))

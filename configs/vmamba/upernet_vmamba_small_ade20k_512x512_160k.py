# VMamba-S [s2l15] + UperNet on ADE20K (official upernet_vssm_4xb4-160k_ade20k-512x512_small.py): drop path 0.3.
_base_ = ['./upernet_vmamba_tiny_ade20k_512x512_160k.py']
model = dict(backbone=dict(name='vmamba_small', drop_path_rate=0.3))

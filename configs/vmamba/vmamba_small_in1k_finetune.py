# Fine-tune VMamba-S [s2l15] from vmamba_small.in1k (recipe: vmamba_tiny_in1k_finetune.py).
_base_ = ['./vmamba_tiny_in1k_finetune.py']
model = dict(model=dict(name='vmamba_small'))

# Mamba-TasNet-S on WSJ0-2mix (official hparams/WSJ0Mix/mambatasnet_S.yaml): the DPMamba-S recipe.
_base_ = ['./dpmamba_s_wsj0-2mix.py']
model = dict(model=dict(name='mambatasnet_s'))

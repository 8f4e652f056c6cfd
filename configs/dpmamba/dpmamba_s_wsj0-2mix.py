# DPMamba-S on WSJ0-2mix with the official recipe (xi-j/Mamba-TasNet hparams/WSJ0Mix/dpmamba_S.yaml), float32
# as the released runs (their saved hyperparams say precision fp32).
_base_ = ['../_base_/datasets/wsj0_2mix.py', '../_base_/schedules/separation_200e.py', '../_base_/default_runtime.py']
model = dict(type='SpeechSeparator', model=dict(name='dpmamba_s'), loss_threshold=-40.0)

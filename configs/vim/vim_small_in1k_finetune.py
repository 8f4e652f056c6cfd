# Fine-tune Vim-S from vim_small.in1k with Vim's fine-tuning recipe (vim/scripts/ft-vim-s.sh): as Vim-Ti's.
_base_ = ['./vim_tiny_in1k_finetune.py']
model = dict(model=dict(name='vim_small'))

# The official Vim-Ti+ run (ft-vim-t.sh): the stride-8 model (27 x 27 tokens) initialised from the stride-16
# ImageNet weights (vim_tiny.in1k; the position embedding is resampled on load), then Vim's fine-tuning recipe.
_base_ = ['./vim_tiny_in1k_finetune.py']
model = dict(model=dict(
    name='vim_tiny_stride8',
    pretrained_cfg_overlay=dict(
        url='https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth')))

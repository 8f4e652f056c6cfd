# Runtime shared by every ssmzoo config: mmengine's root registries plus the components ssmzoo.engine registers.
default_scope = 'mmengine'
custom_imports = dict(imports=['ssmzoo.engine'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo when no GPU is visible
    dist_cfg=dict(backend='nccl'),
)
randomness = dict(seed=0)

# default_hooks (logging, checkpoint intervals) live in the schedules/ configs
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False

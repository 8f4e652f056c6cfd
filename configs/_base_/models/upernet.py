# UperNet + auxiliary FCN head (mmseg's upernet_swin.py settings) on an ssmzoo backbone; BatchNorm becomes
# SyncBatchNorm under distributed training (the official SyncBN).
model = dict(
    type='Segmentor',
    data_preprocessor=dict(type='SegDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           size=(512, 512), pad_val=0, seg_pad_val=255),
    backbone=dict(name=None, pretrained=True, out_indices=(0, 1, 2, 3)),
    num_classes=150,
    decode_head=dict(channels=512, pool_scales=(1, 2, 3, 6), dropout_ratio=0.1),
    auxiliary_head=dict(in_index=2, channels=256, num_convs=1, dropout_ratio=0.1, loss_weight=0.4),
    align_corners=False,
    test_cfg=dict(mode='whole'))
sync_bn = 'torch'

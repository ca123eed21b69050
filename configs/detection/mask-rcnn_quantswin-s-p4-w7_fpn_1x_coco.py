# Mask R-CNN, QuantSwin-S, 1x schedule: the Swin-T 1x config with Swin-S depths. mmdet releases no Swin-S 1x
# checkpoint; use this for your own 1x-trained Swin-S detectors.
_base_ = './mask-rcnn_quantswin-t-p4-w7_fpn_1x_coco.py'
pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa
model = dict(backbone=dict(depths=[2, 2, 18, 2], init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

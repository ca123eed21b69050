# Cascade Mask R-CNN, QuantSwin-S, 3x: as the Swin-T config, with Swin-S depths (the Swin authors' released
# Cascade Mask R-CNN Swin-S checkpoint has this architecture).
_base_ = './cascade-mask-rcnn_quantswin-t-p4-w7_fpn_giou-4conv1f_ms-3x_coco.py'
pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3,
                           init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

# Mask R-CNN, QuantSwin-S, 3x multi-scale-crop schedule (mmdet's AMP config, backbone named QuantSwin; AMP only
# affects training). Checkpoint: mmdet's mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco (48.2 / 43.2 mAP).
_base_ = 'mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py'
custom_imports = dict(imports=['plugin.detection'], allow_failed_imports=False)
task = 'detection'
model = dict(backbone=dict(type='QuantSwin'))

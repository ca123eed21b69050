# Mask R-CNN, QuantSwin-T, 3x multi-scale-crop schedule (mmdet's config, backbone named QuantSwin).
# Checkpoint: mmdet's mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco (bbox 46.0 / segm 41.6 mAP in mmdet's model zoo).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['plugin.detection'], allow_failed_imports=False)
task = 'detection'
model = dict(backbone=dict(type='QuantSwin'))

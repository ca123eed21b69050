# Mask R-CNN, QuantSwin-T, 1x schedule: mmdet's own config with the backbone named QuantSwin (same weights and keys).
# Checkpoint: mmdet's mask_rcnn_swin-t-p4-w7_fpn_1x_coco (bbox 42.7 / segm 39.3 mAP in mmdet's model zoo).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin.detection'], allow_failed_imports=False)
task = 'detection'
model = dict(backbone=dict(type='QuantSwin'))

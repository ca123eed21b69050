# Reference detector: Mask R-CNN with a small QuantSwin, trained from scratch on the COCO person set of
# ../shared/data/coco_person (700 train / 100 val images, longer side <= 512 px, one class).
#   train:    python tools/train_det.py configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py \
#                 --work-dir work_dirs/det_mini
#   quantize: python tools/ptq_test.py configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py \
#                 work_dirs/det_mini/model_final.safetensors --bits 4 6 --method repq ptq4vit minmax
# (model_final.safetensors / model_final.pth: the final weights train_det.py writes at the end, without pickled
# objects; mmengine's own epoch_N.pth files hold pickled objects and are refused without --unsafe-load.)
# The data folder can be moved with the environment variable COCO_PERSON_ROOT (a path ending in '/').
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin.detection'], allow_failed_imports=False)
task = 'detection'

data_root = '{{$COCO_PERSON_ROOT:../shared/data/coco_person/}}'
metainfo = dict(classes=('person', ), palette=[(220, 20, 60)])

model = dict(
    backbone=dict(
        type='QuantSwin', embed_dims=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16], window_size=7,
        drop_path_rate=0.1, convert_weights=False, init_cfg=None),  # no ImageNet weights: trained from scratch
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=512, num_classes=1),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=1)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=[(448, 448), (608, 608)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 512), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=4,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='instances_train.json',
                 data_prefix=dict(img='images/'), filter_cfg=dict(filter_empty_gt=True, min_size=8),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='instances_val.json',
                 data_prefix=dict(img='images/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'instances_val.json')
test_evaluator = val_evaluator

max_epochs = 100
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[75, 92], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.0002), clip_grad=dict(max_norm=10.0))
default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=2), logger=dict(interval=20))
# The learning rate above is for a total batch of 8 (one GPU); `--auto-scale-lr` scales it for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=8)

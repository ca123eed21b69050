# A CPU-sized first run (docs/detection.md, "A first run on a CPU"): Mask R-CNN with a very small QuantSwin, trained
# from scratch for a few minutes on a COCO-person subset with images of at most 320 px, then quantized.
#   data:     python tools/make_coco_subset.py ../shared/data/coco_person work_dirs/coco_person_cpu \
#                 --train-num 128 --val-num 32 --category person --max-side 320
#   train:    python tools/train_det.py THIS_CONFIG --work-dir work_dirs/det_cpu
#   quantize: python tools/ptq_test.py THIS_CONFIG work_dirs/det_cpu/model_final.safetensors --bits 4 \
#                 --method minmax repq --out work_dirs/det_cpu/ptq
# (model_final.safetensors: the final weights train_det.py writes, beside model_final.pth; mmengine's epoch_N.pth
# hold pickled objects and are refused without --unsafe-load.)
# The data folder is read from the environment variable COCO_SUBSET_ROOT (a path ending in '/'; default below).
# This checks that the whole chain works on a laptop; a detector trained this briefly finds few people (measured on
# 2 CPU cores: 4 min of training, 4.7 box / 2.5 mask mAP; docs/detection.md).
_base_ = ['./mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py']

data_root = '{{$COCO_SUBSET_ROOT:work_dirs/coco_person_cpu/}}'

model = dict(
    backbone=dict(embed_dims=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64)),
    # Fewer proposals and sampled RoIs than mmdet's defaults (2000/1000 and 512): the RoI heads dominate CPU time.
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(max_per_img=50)))

# Images of at most 320 px (make_coco_subset.py --max-side 320): one fixed scale, flips only.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=1,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'instances_val.json')
test_evaluator = val_evaluator

# From scratch in a few minutes: a higher lr than the mini recipe (2e-4 at batch 8), a short warmup, one decay.
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[10], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.001))
default_hooks = dict(checkpoint=dict(interval=max_epochs, max_keep_ckpts=1), logger=dict(interval=16))
auto_scale_lr = dict(enable=False, base_batch_size=4)

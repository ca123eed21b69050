# The reference detector (mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py: same model, data and augmentation)
# started from a CIFAR-10-pretrained backbone instead of from scratch (issue 16). The backbone weights come from
#   python tools/train_cls.py configs/classification/cifar10_swin_det_backbone.py ... --out DIR   (DIR/model.safetensors)
#   python tools/timm_swin_to_mmdet.py DIR/model.safetensors DIR/backbone_mmdet.pth
# and are read from the environment variable CIFAR_BACKBONE (default below). tools/run_det_reference.sh runs the
# whole chain (pretrain, convert, train this config on N GPUs, evaluate, float16 weights).
#
# Schedule for several GPUs: the learning rate is set for a total batch of 32 (4 GPUs x 8 images), and
# auto_scale_lr.base_batch_size says so, so that `--auto-scale-lr` scales it linearly to the batch actually used
# (1 GPU: 8 images, lr 1e-4; 2 GPUs: 2e-4; 8 GPUs: 8e-4):
#   torchrun --nproc_per_node 4 tools/train_det.py THIS_CONFIG --work-dir DIR --launcher pytorch --auto-scale-lr --amp
#   python tools/train_det.py THIS_CONFIG --work-dir DIR --auto-scale-lr --amp                      (one GPU)
# lr 4e-4 at 32 lies between linear scalings of mmdet's Swin-T recipe for a pretrained backbone (1e-4 at 16 -> 2e-4)
# and of the from-scratch mini recipe (2e-4 at 8 -> 8e-4): the backbone is pretrained, the neck and heads are not.
# Epochs: DET_EPOCHS (default 36) with the two lr steps at 3/4 and 11/12 of it, so that a shorter run still decays.
# At 32 images per step an epoch of the 700 training images is 22 steps, so warmup is 100 steps (about 5 epochs).
# Nothing has been trained with this config on a GPU yet: there is no measured mAP.
_base_ = ['./mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py']

pretrained = '{{$CIFAR_BACKBONE:work_dirs/cifar10_swin_det_backbone/backbone_mmdet.pth}}'
model = dict(
    backbone=dict(convert_weights=True, init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=pretrained)))

max_epochs = int('{{$DET_EPOCHS:36}}')
train_cfg = dict(max_epochs=max_epochs, val_interval=max(max_epochs // 6, 1))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[max(max_epochs * 3 // 4, 1), max(max_epochs * 11 // 12, 1)], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.0004), clip_grad=dict(max_norm=10.0))
default_hooks = dict(checkpoint=dict(interval=max(max_epochs // 6, 1), max_keep_ckpts=2), logger=dict(interval=10))
auto_scale_lr = dict(enable=False, base_batch_size=32)

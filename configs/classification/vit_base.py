# vit_base_patch16_224 on ImageNet-1k (timm weights: pass the checkpoint to tools/ptq_test.py).
_base_ = './_base_/imagenet.py'
model = dict(name='vit_base_patch16_224', kwargs=dict())

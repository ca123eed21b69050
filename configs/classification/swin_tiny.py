# swin_tiny_patch4_window7_224 on ImageNet-1k (timm weights: pass the checkpoint to tools/ptq_test.py).
_base_ = './_base_/imagenet.py'
model = dict(name='swin_tiny_patch4_window7_224', kwargs=dict())

# Reference ViT for CIFAR-10, trained from scratch with tools/train_cls.py: the ViT-Lite-7/4 shape of Hassani et al.,
# "Escaping the Big Data Paradigm with Compact Transformers" (2021): 4x4 patches (8x8 tokens + class token),
# width 256, 7 blocks, 4 heads, MLP ratio 2.
_base_ = ['_base_/cifar10.py']
model = dict(
    name='vit_tiny_patch16_224',
    kwargs=dict(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0))
# Measured: 87.6 % top-1 on the 10k test split in 285 s on one H100 (torch 2.11, timm 1.0.29), with
#   python tools/train_cls.py configs/classification/cifar10_vit.py --data-path .devdata/cifar10_jpeg_packed.npz \
#       --out work_dirs/cifar10_vit --device cuda --amp

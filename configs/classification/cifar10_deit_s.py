# Reference model in the DeiT-S shape (width 384, 12 blocks, 6 heads, MLP ratio 4, 21M parameters) for CIFAR-10,
# trained from scratch with tools/train_cls.py at 4x4 patches (8x8 tokens + class token). This is the shape where
# the published methods separate at 3 bits (RepQ-ViT collapses at W3A3 on ImageNet DeiT-S) and the shape of the
# frontier comparison (docs/fidelity.md, APHQ-ViT / FIMA-Q). Training command and measured top-1: docs/results.md.
_base_ = ['_base_/cifar10.py']
model = dict(
    name='deit_small_patch16_224',
    kwargs=dict(img_size=32, patch_size=4, num_classes=10, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0))
train = dict(epochs=100)

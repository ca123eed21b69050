# The embedded default: a tiny ViT trained from scratch on Fashion-MNIST (28x28 grey, 7x7 patches of 4x4 pixels).
# Its weights ship as plugin/assets/fmnist_vit_tiny.safetensors, its data as plugin/assets/fashion_mnist_subset.npz
# (512 calibration images from the train split, 1000 class-balanced evaluation images from the test split).
task = 'classification'
model = dict(
    name='vit_tiny_patch16_224',
    kwargs=dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
                mlp_ratio=2.0))
data = dict(type='npz', path='plugin/assets/fashion_mnist_subset.npz', mean=(0.2860,), std=(0.3530,))
calib = dict(batch_size=32)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=250)
# Recipe of tools/train_cls.py (full 60k train split, a few minutes on 2 CPU cores). Five epochs are too few to
# overfit, so no augmentation or label smoothing: both slowed learning down in trials of this short schedule.
train = dict(data='fashion_mnist', epochs=5, batch_size=128, lr=3e-3, weight_decay=0.05, warmup_epochs=0.5,
             label_smoothing=0.0, crop_padding=0, hflip=False, eval_every=1)

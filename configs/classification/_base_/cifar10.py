# CIFAR-10 as the packed-JPEG file of ../shared/data (see plugin/classification/data.py), calibration images from the train
# split, the full 10k test split for evaluation, and the tools/train_cls.py recipe of the reference models: AdamW with
# linear warmup and cosine decay, label smoothing, random crop (4-pixel zero padding) + horizontal flip, Mixup/CutMix.
task = 'classification'
data = dict(type='cifar10_packed', path='../shared/data/cifar10/cifar10_jpeg_packed.npz',
            mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
calib = dict(batch_size=32)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=500)
train = dict(data='cifar10', epochs=200, batch_size=512, lr=1e-3, min_lr=1e-5, weight_decay=0.05, warmup_epochs=10,
             label_smoothing=0.1, crop_padding=4, hflip=True, mixup=0.8, cutmix=1.0, mix_prob=1.0, drop_path=0.1,
             eval_every=10)

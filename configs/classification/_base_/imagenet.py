# ImageNet-1k validation set as ImageNet-style folders (data/imagenet/{train,val}/<wnid>/*.JPEG), preprocessed with
# each model's own timm eval transform. Calibration images come from the train split.
task = 'classification'
data = dict(type='imagefolder', root='data/imagenet', calib_split='train', eval_split='val')
calib = dict(num=32, batch_size=32)
eval = dict(batch_size=100)

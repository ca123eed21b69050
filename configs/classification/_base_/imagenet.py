# ImageNet-1k validation set as ImageNet-style folders (data/imagenet/{train,val}/<wnid>/*.JPEG), preprocessed with
# each model's own timm eval transform at the size the model was built with. Calibration images come from the train
# split. A model trained with other preprocessing sets any of input_size, mean, std, interpolation, crop_pct,
# crop_mode here (docs/own_model.md).
task = 'classification'
data = dict(type='imagefolder', root='data/imagenet', calib_split='train', eval_split='val')
calib = dict(batch_size=32)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=100)

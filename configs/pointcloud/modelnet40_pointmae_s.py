# Point-MAE-S (Pang et al., ECCV 2022; 22.1M parameters) for ModelNet40 classification on 1024 points.
# Official fine-tuned Point-MAE checkpoints load as they are (checkpoint_filter_fn maps their keys), e.g.
#   python tools/ptq_test.py configs/pointcloud/modelnet40_pointmae_s.py modelnet_1k.pth --bits 4 --method repq
# (the official checkpoints are pickled dicts of tensors and load with weights_only=True).
# Point-BERT checkpoints: encoder_dims=256, head_hidden=(256,), head_bn=False.
# Data: modelnet40_ply_hdf5_2048 (first 1024 of the 2048 points per shape). For modelnet40_normal_resampled use
# data = dict(root='data/modelnet40_normal_resampled', format='modelnet_normal', num_points=1024, sample='fps').
task = 'pointcloud_cls'
model = dict(type='PointMAECls', num_classes=40, trans_dim=384, depth=12, num_heads=6, num_group=64, group_size=32,
             drop_path_rate=0.1)
data = dict(root='data/modelnet40_ply_hdf5_2048', format='modelnet40_h5', num_points=1024,
            train_split='train', calib_split='train', eval_split='test')
calib = dict(batch_size=32)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=32)
train = dict(epochs=300, batch_size=32, lr=5e-4, weight_decay=0.05, warmup_epochs=10, label_smoothing=0.1,
             grad_clip=10.0, aug=dict(scale=(2 / 3, 3 / 2), shift=0.2, permute=True))

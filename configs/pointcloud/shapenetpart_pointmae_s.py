# Point-MAE-S part segmentation (Point-MAE's segmentation model; 27.1M parameters) on ShapeNetPart, 2048 points.
# Official Point-MAE segmentation checkpoints load as they are (checkpoint_filter_fn maps their keys).
# Data: shapenetcore_partanno_segmentation_benchmark_v0_normal (trained on train+val, evaluated on test). For the
# HDF5 release use data = dict(root='data/shapenet_part_seg_hdf5_data', format='shapenetpart_h5', num_points=2048, ...).
task = 'pointcloud_partseg'
model = dict(type='PointMAEPartSeg', num_categories=16, num_parts=50, trans_dim=384, depth=12, num_heads=6,
             num_group=128, group_size=32, propagation_mlp=(1536, 1024), head_hidden=(512, 256), drop_path_rate=0.1)
data = dict(root='data/shapenetcore_partanno_segmentation_benchmark_v0_normal', format='shapenetpart_normal',
            num_points=2048, train_split='trainval', calib_split='train', eval_split='test')
calib = dict(batch_size=16)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=16)
train = dict(epochs=300, batch_size=16, lr=2e-4, weight_decay=0.05, warmup_epochs=10, label_smoothing=0.0,
             grad_clip=10.0, aug=dict(scale=(0.8, 1.25), shift=0.1, permute=True))

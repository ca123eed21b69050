# Reference model on SYNTHETIC data: part segmentation of composite Open3D-primitive objects (8 categories, 20 parts;
# plugin/pointcloud/synthetic.py), written in the ShapeNetPart HDF5 format. Results on it are labelled SYNTHETIC.
# The set is generated into data/synthetic_parts (under the repository) the first time it is needed (needs open3d),
# or beforehand with: python tools/make_synthetic_parts.py data/synthetic_parts
# Model: a narrow Point-MAE segmenter (width 192, 12 blocks, 3 heads, head halved; 7.0M parameters).
task = 'pointcloud_partseg'
model = dict(type='PointMAEPartSeg', num_categories=8, num_parts=20, trans_dim=192, depth=12, num_heads=3,
             num_group=128, group_size=32, propagation_mlp=(768, 512), head_hidden=(256, 128), drop_path_rate=0.1)
data = dict(root='data/synthetic_parts', format='shapenetpart_h5', num_points=2048,
            train_split='train', calib_split='train', eval_split='test',
            synthetic=dict(train=150, val=10, test=50, points=2048, seed=0))
calib = dict(batch_size=16)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=16)
train = dict(epochs=100, batch_size=16, lr=5e-4, weight_decay=0.05, warmup_epochs=5, label_smoothing=0.0,
             grad_clip=10.0, aug=dict(scale=(0.8, 1.25), shift=0.1, permute=True))

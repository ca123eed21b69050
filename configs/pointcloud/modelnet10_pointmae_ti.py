# Reference model: a narrow Point-MAE (width 192, 12 blocks, 3 heads; 5.9M parameters) trained from scratch on the
# real ModelNet10 (1024 points per shape, ../shared/data/modelnet10), with tools/train_pc.py.
task = 'pointcloud_cls'
model = dict(type='PointMAECls', num_classes=10, trans_dim=192, depth=12, num_heads=3, num_group=64, group_size=32,
             drop_path_rate=0.1)
data = dict(root='../shared/data/modelnet10/modelnet10_1024.npz', format='modelnet10_npz', num_points=1024,
            train_split='train', calib_split='train', eval_split='test')
calib = dict(batch_size=32)  # calib.num: set it to override every method's own default (see tools/ptq_test.py)
eval = dict(batch_size=64)
train = dict(epochs=60, batch_size=32, lr=5e-4, weight_decay=0.05, warmup_epochs=5, label_smoothing=0.1,
             grad_clip=10.0, aug=dict(scale=(2 / 3, 3 / 2), shift=0.2, permute=True))

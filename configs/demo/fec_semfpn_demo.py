# Demo: FEC-Small Semantic FPN (../fec_semfpn_ade20k.py, same model) trained
# from scratch on the generated shapes of tools/make_demo_data.py, on CPU.
#
# Data: data/demo/ade/ADEChallengeData2016/ (ADE20K layout, 150-class label
# convention; the demo uses four of those classes), written by
# `python tools/make_demo_data.py`.
# Changed from the real config: data root and classes, crop size, schedule.
_base_ = '../fec_semfpn_ade20k.py'

data_root = 'data/demo/ade/ADEChallengeData2016'
# fec_mm.datasets.demo_data.ADE_DEMO_CLASSES: the photograph background and
# the three shapes, as ADE20K classes (mmseg maps the other 146 to ignore).
metainfo = dict(classes=('painting', 'box', 'ball', 'flag'))
crop_size = (128, 128)
num_iters = 200

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=0.9, eta_min=0., begin=20, end=num_iters, by_epoch=False),
]
train_cfg = dict(max_iters=num_iters, val_interval=num_iters)
# visualization: `tools/test.py --show-dir` draws every image (the library's
# interval of 50 drew at most one of the small demo split); off otherwise.
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=num_iters, max_keep_ckpts=1),
                     visualization=dict(interval=1))
auto_scale_lr = dict(enable=False, base_batch_size=4)
# Cluster maps (docs/user_guides/visualization.md) of the first two validation images
# after every validation: vis_data/vis_image/cluster_maps_*.png, and the
# per-stage numbers as cluster_maps/* scalars.
custom_hooks = [dict(type='ClusterMapHook', interval=1, num_images=2)]

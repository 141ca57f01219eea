# Demo: FEC-Small image classification (../fec_small_in1k.py, same model)
# trained from scratch on the generated shapes of tools/make_demo_data.py, on CPU.
#
# Data: data/demo/imagenet/ (ImageNet layout: train/<wnid>/, val/, meta/*.txt),
# written by `python tools/make_demo_data.py`.
# Changed from the real config: data root and classes, image size, schedule.
_base_ = '../fec_small_in1k.py'

data_root = 'data/demo/imagenet'
metainfo = dict(classes=('circle', 'square', 'triangle'))
crop = 64
num_epochs = 10

model = dict(head=dict(num_classes=3))
data_preprocessor = dict(num_classes=3)

bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=crop * 8 // 7, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
# Top-5 is undefined with 3 classes.
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=num_epochs),
]
train_cfg = dict(max_epochs=num_epochs, val_interval=num_epochs)
default_hooks = dict(logger=dict(interval=5),
                     checkpoint=dict(interval=num_epochs, max_keep_ckpts=1))
auto_scale_lr = dict(enable=False, base_batch_size=16)
# Cluster maps (docs/user_guides/visualization.md) of the first two validation images
# after every validation: vis_data/vis_image/cluster_maps_*.png, and the
# per-stage numbers as cluster_maps/* scalars.
custom_hooks = [dict(type='ClusterMapHook', interval=1, num_images=2)]

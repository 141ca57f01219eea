# Demo: FEC-Small Mask R-CNN (../fec_maskrcnn.py, same model) trained from
# scratch on the generated shapes of tools/make_demo_data.py, on CPU.
#
# Data: data/demo/coco/ (COCO instances format: annotations/instances_*.json,
# train2017/, val2017/), written by `python tools/make_demo_data.py`.
# Changed from the real config: data root and classes, image size, schedule.
# Main job: `bash tools/demo.sh` (docs/get_started.md, "First run: the demo").
_base_ = '../fec_maskrcnn.py'

data_root = 'data/demo/coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'),
                palette=[(220, 20, 60), (0, 160, 60), (30, 60, 230)])
image_scale = (160, 128)
num_epochs = 2

model = dict(
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    # Sized for small images with at most three objects: fewer proposals and
    # sampled RoIs (the mask head runs on every positive RoI) keep CPU steps short.
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# Schedule: from scratch, so a higher lr and a short warm-up, the lr cut by
# 0.2 for the last epoch; one evaluation and one checkpoint, at the end.
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=num_epochs, by_epoch=True,
         milestones=[num_epochs - 1], gamma=0.2),
]
train_cfg = dict(max_epochs=num_epochs, val_interval=num_epochs)
# visualization: `tools/test.py --show-dir` draws every image (the library's
# interval of 50 drew at most one of the small demo split); off otherwise.
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=num_epochs, max_keep_ckpts=1),
                     visualization=dict(interval=1))
auto_scale_lr = dict(enable=False, base_batch_size=4)
# Cluster maps (docs/user_guides/visualization.md) of the first two validation images
# after every validation: vis_data/vis_image/cluster_maps_*.png, and the
# per-stage numbers as cluster_maps/* scalars.
custom_hooks = [dict(type='ClusterMapHook', interval=1, num_images=2)]

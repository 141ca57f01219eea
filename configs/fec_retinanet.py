# FEC-Small RetinaNet, FPN, 1x schedule, COCO 2017 (boxes only).
#
# Paper figure: none (the paper reports Mask R-CNN only, docs/notes/design.md §3).
#
# Data (docs/user_guides/dataset_prepare.md): mmdet's COCO layout under data/coco/
#   data/coco/annotations/instances_{train,val}2017.json
#   data/coco/train2017/*.jpg, data/coco/val2017/*.jpg
#
# RetinaNet's FPN starts at stride 8, so the backbone builds stages 2-4
# outputs only (out_indices 1-3): every parameter gets a gradient and DDP
# needs no find_unused_parameters. Recipe: the Mask R-CNN one
# (configs/_base_/fec_adamw_coco_1x.py), 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    './_base_/fec_adamw_coco_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
# Crash-safe checkpoints: written aside and renamed, old ones removed after
# (fec_mm/checkpoints/atomic_save.py); same arguments as CheckpointHook.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        num_centers=(7, 7, 7, 7),
        folds=(2, 2, 1, 1),
        out_indices=(1, 2, 3),
        drop_path_rate=0.,
        init_cfg=None),
    neck=dict(in_channels=[64, 196, 320], start_level=0, add_extra_convs='on_input',
              num_outs=5))

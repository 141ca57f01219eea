# FEC-Small UperNet, ADE20K (150 classes), 512x512 crops, 80k iterations.
#
# Paper figure: none (the paper reports Semantic FPN only, docs/notes/design.md §3).
#
# Data (docs/user_guides/dataset_prepare.md): mmseg's ADE20K layout under
# data/ade/ADEChallengeData2016/
#   images/{training,validation}/ADE_*.jpg
#   annotations/{training,validation}/ADE_*.png  (0 = other/ignored, 1..150 classes)
#
# Recipe: the Semantic FPN one (configs/_base_/fec_adamw_ade20k_80k.py),
# 4 GPUs x 4 crops; segmentation centers (10, 10, 5, 5), no folds.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/fec_adamw_ade20k_80k.py',
]
custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
# Crash-safe checkpoints: written aside and renamed, old ones removed after
# (fec_mm/checkpoints/atomic_save.py); same arguments as CheckpointHook.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        num_centers=(10, 10, 5, 5),
        folds=(1, 1, 1, 1),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 196, 320], num_classes=150),
    auxiliary_head=dict(in_channels=196, num_classes=150))

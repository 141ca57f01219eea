# FEC-Small Mask R-CNN, FPN, 1x schedule, COCO 2017 instances.
#
# Paper figure (docs/notes/design.md §3): box AP 35.6 / mask AP 33.6, 24.3 M params,
# with the backbone initialised from the ImageNet-1k FEC-Small checkpoint:
#   --cfg-options model.backbone.init_cfg.type=Pretrained \
#                 model.backbone.init_cfg.checkpoint=fec_small_mm.pth
# (the authors' checkpoints load as they are: docs/user_guides/authors_checkpoints.md).
#
# Data (docs/user_guides/dataset_prepare.md): mmdet's COCO layout under data/coco/
#   data/coco/annotations/instances_{train,val}2017.json
#   data/coco/train2017/*.jpg, data/coco/val2017/*.jpg
#
# Recipe: 8 GPUs x 2 images, AdamW (configs/_base_/fec_adamw_coco_1x.py).
# Detection centers and folds as the authors: 7x7 centers per region, the
# stride-4 and stride-8 maps cut into 2x2 regions.
#
# Evaluation, compared with the authors' detection/configs/
# mask_rcnn_fec_small_fpn_1x_coco.py and its _base_ (mmdet 2.24, guikunchen/FEC
# 9ab075b):
# - same: mean/std (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on RGB;
#   single scale 1333x800 keeping the aspect ratio, padded to multiples of 32,
#   no flip; FPN (256 channels, 5 outputs); RPN test nms_pre 1000, 1000
#   proposals, NMS 0.7; RoIAlign 7x7 (boxes) and 14x14 (masks), sampling_ratio
#   0; R-CNN score_thr 0.05, NMS 0.5, 100 detections, mask threshold 0.5;
#   COCO bbox and segm AP on val2017. Base and large configs differ from small
#   only in the backbone and the neck's in_channels, as theirs.
# - differs: the code is mmdet 3.3's (its model zoo serves the 2.x Mask R-CNN
#   files with the 3.x config); the authors needed find_unused_parameters=True
#   for training (the pooling's never-trained conv_f), which fec-mm avoids by
#   freezing it. Expected effect on AP: none beyond floating-point noise (not
#   measured: no COCO or weights on the machines of this project).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    './_base_/fec_adamw_coco_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
# Crash-safe checkpoints: written aside and renamed, old ones removed after
# (fec_mm/checkpoints/atomic_save.py); same arguments as CheckpointHook.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

model = dict(
    # FEC(folds=(2, 2, 1, 1)).size_divisor == 32: every padded batch is a
    # valid FEC input, whatever the image sizes.
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        num_centers=(7, 7, 7, 7),
        folds=(2, 2, 1, 1),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 196, 320]))

# FEC-Small image classification, ImageNet-1k, 224x224.
#
# Paper figure (docs/notes/design.md §3): top-1 72.7 %, 5.7 M params.
#
# Data (docs/user_guides/dataset_prepare.md): mmpretrain's ImageNet layout under data/imagenet/
#   train/<wnid>/*.JPEG, val/*.JPEG (flat), meta/train.txt and meta/val.txt
#   ("<path relative to train/ or val/> <label>" per line)
#
# Recipe (the authors', docs/notes/design.md §4): AdamW lr 1e-3 at global batch 1024
# (8 GPUs x 128; other sizes: --auto-scale-lr), weight decay 0.05, 5 warm-up
# epochs, cosine to 1e-5 at epoch 300, then 10 cool-down epochs at 1e-5;
# drop path 0.1, RandAugment, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
# random erasing 0.25 (mmpretrain's Swin data pipeline). The authors trained
# with AMP: add --amp to tools/train.py on GPUs.

# Evaluation, compared with the authors' validate.py / cmds/validate.sh
# (timm 0.9.7, guikunchen/FEC 9ab075b): their models carry no timm
# pretrained_cfg, so timm's defaults apply: shorter side resized to
# floor(224 / 0.875) = 256 (bicubic, PIL), center crop 224, ImageNet mean/std;
# the same as mmpretrain's pipeline here (ResizeEdge 256 bicubic with pillow,
# CenterCrop 224). Differs: the long side is rounded to nearest here and
# floored by torchvision (at most one pixel, shifting the center crop by
# half a pixel at most). Expected effect on top-1: within noise (not measured:
# no ImageNet or weights on the machines of this project).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
# Crash-safe checkpoints: written aside and renamed, old ones removed after
# (fec_mm/checkpoints/atomic_save.py); same arguments as CheckpointHook.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='FEC',
        arch='small',
        num_centers=(4, 4, 2, 2),
        folds=(1, 1, 1, 1),
        out_indices=(3,),
        drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=320,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = dict(batch_size=128)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=300),
]
train_cfg = dict(max_epochs=310)
auto_scale_lr = dict(enable=False, base_batch_size=1024)

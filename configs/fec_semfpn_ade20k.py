# FEC-Small Semantic FPN, ADE20K (150 classes), 512x512 crops, 80k iterations.
#
# Paper figure (docs/notes/design.md §3): mIoU 35.3, 9.1 M params, with the backbone
# initialised from the ImageNet-1k FEC-Small checkpoint:
#   --cfg-options model.backbone.init_cfg.type=Pretrained \
#                 model.backbone.init_cfg.checkpoint=fec_small_mm.pth
#
# Data (docs/user_guides/dataset_prepare.md): mmseg's ADE20K layout under
# data/ade/ADEChallengeData2016/
#   images/{training,validation}/ADE_*.jpg
#   annotations/{training,validation}/ADE_*.png  (0 = other/ignored, 1..150 classes)
#
# Recipe: 4 GPUs x 4 crops, AdamW, poly (configs/_base_/fec_adamw_ade20k_80k.py).
# Segmentation centers as the authors: 10x10 (stages 1-2) and 5x5 (3-4), no folds.
#
# Evaluation, compared with the authors' segmentation/configs/sem_fpn/
# fpn_fec_small_ade20k_80k.py and its _base_ (mmseg 0.24, guikunchen/FEC 9ab075b):
# - same: Semantic FPN (FPN 256 channels, 4 outputs; FPNHead 128 channels,
#   SyncBN, dropout 0.1), 150 classes, reduce_zero_label, mean/std
#   (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on RGB, single scale,
#   no flip, 'whole' inference, image rescaled to fit (2048, 512) keeping its
#   aspect ratio, then resized (not padded) to multiples of 32 by their
#   AlignResize: fec_mm.transforms.AlignResize here; mIoU over the 150 classes.
# - differs: the code is mmseg 1.2's (the data preprocessor still pads to
#   size_divisor=32, a no-op after AlignResize); their train set was
#   RepeatDataset(times=50) of mmseg 0.x, equivalent for an iteration-based
#   schedule. Expected effect on mIoU: none beyond floating-point noise (not
#   measured: no ADE20K or weights on the machines of this project).
# The authors' whole-model file loads as it is (tools/test.py CONFIG FILE);
# see docs/model_zoo.md and docs/user_guides/authors_checkpoints.md.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
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
    # Training crops are 512x512; test images (short side 512, any long side)
    # are padded to FEC(...).size_divisor == 32 and the padding is cropped
    # from the prediction.
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
    neck=dict(in_channels=[32, 64, 196, 320]),
    decode_head=dict(num_classes=150))

# The authors' test-time resize (see the header).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='AlignResize', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# FEC-Base Mask R-CNN, FPN, 1x schedule, COCO 2017 instances.
#
# Paper figure (docs/notes/design.md §3): box AP 37.9 / mask AP 35.5, 33.1 M params,
# backbone initialised from the ImageNet-1k FEC-Base checkpoint.
# Data layout and recipe: as ./fec_maskrcnn.py (data/coco/, docs/user_guides/dataset_prepare.md).
_base_ = './fec_maskrcnn.py'

model = dict(
    backbone=dict(arch='base'),
    neck=dict(in_channels=[64, 128, 320, 512]))

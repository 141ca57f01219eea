# FEC-Base Semantic FPN, ADE20K (150 classes), 512x512 crops, 80k iterations.
#
# Paper figure (docs/notes/design.md §3, as repeated by the authors' group, not
# measured here): mIoU 37.7, 18.0 M params, backbone initialised from the
# ImageNet-1k FEC-Base checkpoint.
# Data layout, recipe and evaluation: as ./fec_semfpn_ade20k.py (its header
# lists what matches the authors' fpn_fec_base_ade20k_80k.py and what
# differs; their base/large configs differ from small only in the backbone
# and the neck's in_channels).
_base_ = './fec_semfpn_ade20k.py'

model = dict(
    backbone=dict(arch='base'),
    neck=dict(in_channels=[64, 128, 320, 512]))

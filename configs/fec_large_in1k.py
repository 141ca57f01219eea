# FEC-Large image classification, ImageNet-1k, 224x224.
#
# Paper figure (docs/notes/design.md §3, not measured here): top-1 81.2 %, 29.7 M params.
# Data layout, recipe and evaluation: as ./fec_small_in1k.py (its header
# compares the evaluation with the authors'). The authors published a
# training command for FEC-Small only (drop path 0.1); it is kept here.
_base_ = './fec_small_in1k.py'

model = dict(
    backbone=dict(arch='large'),
    head=dict(in_channels=512))

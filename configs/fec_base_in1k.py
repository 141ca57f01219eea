# FEC-Base image classification, ImageNet-1k, 224x224.
#
# Paper figure (docs/notes/design.md §3, not measured here): top-1 78.1 %, 15.1 M params.
# Data layout, recipe and evaluation: as ./fec_small_in1k.py (its header
# compares the evaluation with the authors'). The authors published a
# training command for FEC-Small only (drop path 0.1); it is kept here.
_base_ = './fec_small_in1k.py'

model = dict(
    backbone=dict(arch='base'),
    head=dict(in_channels=512))

# Context Clusters CoC-tiny-plain (coc_tiny_plain of the authors' models/context_cluster.py)
# ImageNet-1k classification, 224x224. Their reported result (README, not
# re-measured here): top-1 73.8 %, 5.3 M params. Otherwise as coc-tiny_in1k-224.py.
_base_ = './coc-tiny_in1k-224.py'

model = dict(backbone=dict(arch='tiny_plain'), head=dict(in_channels=320))

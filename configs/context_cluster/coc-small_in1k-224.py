# Context Clusters CoC-small (coc_small of the authors' models/context_cluster.py)
# ImageNet-1k classification, 224x224. Their reported result (README, not
# re-measured here): top-1 78.1 %, 14.0 M params. Otherwise as coc-tiny_in1k-224.py.
_base_ = './coc-tiny_in1k-224.py'

model = dict(backbone=dict(arch='small'), head=dict(in_channels=512))

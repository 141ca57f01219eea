# Context Clusters CoC-medium (coc_medium of the authors' models/context_cluster.py)
# ImageNet-1k classification, 224x224. Their reported result (README, not
# re-measured here): top-1 81.2 %, 27.9 M params. Otherwise as coc-tiny_in1k-224.py.
_base_ = './coc-tiny_in1k-224.py'

model = dict(backbone=dict(arch='medium'), head=dict(in_channels=512))

# Context Clusters CoC-Tiny (coc_tiny of the authors' models/context_cluster.py)
# ImageNet-1k classification, 224x224.
#
# Their reported result (github.com/ma-xu/Context-Cluster README, updated
# checkpoints, not re-measured here): top-1 73.2 %, 5.3 M params (5,570,584).
#
# Recipe: the same as ../fec_small_in1k.py (AdamW lr 1e-3 at batch 1024,
# 300 epochs, drop path 0.1), which is the authors' README recipe too.
# Their released model: convert it, then evaluate (docs/user_guides/context_cluster.md):
#   python tools/model_converters/coc_reference_to_mm.py THEIR.pth.tar coc-tiny_in1k.pth
#   python tools/test.py configs/context_cluster/coc-tiny_in1k-224.py coc-tiny_in1k.pth
_base_ = '../fec_small_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='tiny',
        out_indices=(3,),
        drop_path_rate=0.1),
    head=dict(in_channels=320))

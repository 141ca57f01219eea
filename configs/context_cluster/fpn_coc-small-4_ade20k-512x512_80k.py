# Semantic FPN, ADE20K 512x512, 80k iterations, with the Context Clusters
# backbone CoC-small-4 (2x2 = 4 centers per region, region folds 8/4/2/1): the
# authors' segmentation/configs/sem_fpn/fpn_coc_small_2_ade20k_80k.py on fec-mm.
#
# Their reported result (github.com/ma-xu/Context-Cluster, segmentation/README.md,
# not re-measured here): 36.6 mIoU.
#
# Recipe: the same as ../fec_semfpn_ade20k.py (AdamW lr 1e-4, weight decay
# 1e-4, poly 0.9, 80k iterations, batch 16), which is also theirs.
# Their released model: convert it, then evaluate (docs/user_guides/context_cluster.md):
#   python tools/model_converters/coc_reference_to_mm.py THEIR.pth coc-small-4_semfpn.pth
#   python tools/test.py configs/context_cluster/fpn_coc-small-4_ade20k-512x512_80k.py \
#       coc-small-4_semfpn.pth
_base_ = '../fec_semfpn_ade20k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='small',
        num_centers=2,
        folds=(8, 4, 2, 1),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 320, 512]))

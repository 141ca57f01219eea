# Mask R-CNN 1x, COCO, with the Context Clusters backbone CoC-small-4 (2x2 = 4
# centers per region, region folds 8/4/2/1): the authors'
# detection/configs/mask_rcnn_coc_small_2_fpn_1x_coco.py on fec-mm.
#
# Their reported result (github.com/ma-xu/Context-Cluster, detection/README.md,
# not re-measured here): 35.9 box AP / 33.8 mask AP, 33.6 M params.
#
# Recipe: the same as ../fec_maskrcnn.py (AdamW lr 2e-4, weight decay 1e-4,
# 12 epochs, batch 16), which is also theirs.
# Their released model: convert it, then evaluate (docs/user_guides/context_cluster.md):
#   python tools/model_converters/coc_reference_to_mm.py THEIR.pth coc-small-4_maskrcnn.pth
#   python tools/test.py configs/context_cluster/mask-rcnn_coc-small-4_fpn_1x_coco.py \
#       coc-small-4_maskrcnn.pth
# To train from their ImageNet classifier instead, set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint=CONVERTED_CLS.pth)
_base_ = '../fec_maskrcnn.py'

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

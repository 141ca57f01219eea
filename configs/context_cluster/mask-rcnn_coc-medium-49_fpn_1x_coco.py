# Mask R-CNN 1x, COCO, CoC-medium-49 (7x7 centers per region): the authors'
# detection/configs/mask_rcnn_coc_medium_7_fpn_1x_coco.py on fec-mm.
# Their reported result (detection/README.md, not re-measured here): see
# docs/user_guides/context_cluster.md. Otherwise as mask-rcnn_coc-small-4_fpn_1x_coco.py.
_base_ = './mask-rcnn_coc-small-4_fpn_1x_coco.py'

model = dict(backbone=dict(arch='medium', num_centers=7))

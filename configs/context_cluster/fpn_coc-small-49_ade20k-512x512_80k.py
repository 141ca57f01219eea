# Semantic FPN, ADE20K, CoC-small-49 (7x7 centers per region): the authors'
# segmentation/configs/sem_fpn/fpn_coc_small_7_ade20k_80k.py on fec-mm.
# Their reported result (segmentation/README.md, not re-measured here): see
# docs/user_guides/context_cluster.md. Otherwise as fpn_coc-small-4_ade20k-512x512_80k.py.
_base_ = './fpn_coc-small-4_ade20k-512x512_80k.py'

model = dict(backbone=dict(num_centers=7))

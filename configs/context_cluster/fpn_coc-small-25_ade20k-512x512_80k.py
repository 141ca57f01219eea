# Semantic FPN, ADE20K, CoC-small-25 (5x5 centers per region): the authors'
# segmentation/configs/sem_fpn/fpn_coc_small_5_ade20k_80k.py on fec-mm.
# Their reported result (segmentation/README.md, not re-measured here): see
# docs/user_guides/context_cluster.md. Otherwise as fpn_coc-small-4_ade20k-512x512_80k.py.
_base_ = './fpn_coc-small-4_ade20k-512x512_80k.py'

model = dict(backbone=dict(num_centers=5))

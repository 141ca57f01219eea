"""Train a model: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
[--amp] [--auto-scale-lr] [--cfg-options K=V ...] [--launcher {none,pytorch,slurm,mpi}]``.

mmdet 3.x's arguments; the config's ``default_scope`` picks mmdet, mmseg or
mmpretrain. The work lives in ``fec_mm.engine.training``.
"""
from fec_mm.engine.training import main

if __name__ == '__main__':
    main()

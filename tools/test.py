"""Test a model: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
[--out results.pkl] [--cfg-options K=V ...] [--launcher {none,pytorch,slurm,mpi}]``.

mmdet 3.x's arguments; the config's ``default_scope`` picks mmdet, mmseg or
mmpretrain. The work lives in ``fec_mm.engine.testing``.
"""
from fec_mm.engine.testing import main

if __name__ == '__main__':
    main()

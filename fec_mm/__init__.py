"""fec-mm: FEC backbones for mmpretrain, mmdet and mmseg.

``custom_imports=dict(imports=['fec_mm'])`` registers ``FEC`` and ``ContextCluster`` in
``mmengine.registry.MODELS``, which the registries of all three libraries
fall back to, and makes checkpoints of mmengine's training load in the
libraries' own APIs under torch>=2.6 (``fec_mm.checkpoints.register``: an
allowlist for torch's weights-only unpickler, and a checked local loader).
It also registers ``AlignResize`` (``fec_mm.transforms``, the authors'
ADE20K test-time resize) in mmengine's root ``TRANSFORMS``,
``ClusterMapHook`` (``fec_mm.visualization``) in mmengine's root ``HOOKS``,
teaches mmengine's FLOP counter (what the libraries' ``get_flops`` tools
call) FEC's fused ops (``fec_mm.analysis.flops``), and makes OpenCV errors of
image transforms name the image file and the cause (``fec_mm.images``).
``fec_mm.ops`` needs torch alone, so on a machine without mmengine and mmcv
(e.g. a bare GPU box testing kernels) only the ops load.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

if find_spec('mmengine') is not None and find_spec('mmcv') is not None:
    from . import analysis, checkpoints, images, transforms  # noqa: F401  (transforms registers AlignResize)
    from .models import FEC, ContextCluster  # noqa: F401  (registers both backbones)
    from .visualization import cluster_map_hook  # noqa: F401  (registers ClusterMapHook)

    analysis.register_flop_handles()
    checkpoints.register()
    images.register()

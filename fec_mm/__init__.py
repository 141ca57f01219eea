"""fec-mm: FEC backbones for mmpretrain, mmdet and mmseg.

``custom_imports=dict(imports=['fec_mm'])`` registers ``FEC`` in
``mmengine.registry.MODELS``, found by all three libraries' registries.
"""
from .models import FEC  # noqa: F401

__version__ = '0.1.0'

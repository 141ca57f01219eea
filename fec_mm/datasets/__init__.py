"""Demo data in the on-disk formats of COCO, ADE20K and ImageNet.

Not imported by ``fec_mm`` itself: ``import fec_mm.datasets`` when needed.
"""
from .demo_data import ADE_DEMO_CLASSES, CATEGORIES, DEFAULT_NUM_IMAGES, TASKS, make_demo_data

__all__ = ['ADE_DEMO_CLASSES', 'CATEGORIES', 'DEFAULT_NUM_IMAGES', 'TASKS', 'make_demo_data']

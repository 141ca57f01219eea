"""Clustering ops of FEC: ``cluster_assign``, ``cluster_encode``, ``cluster_pool``.

Kept free of OpenMMLab imports so that the kernels can be tested on a machine
that has only torch (and Triton).
"""
from .cluster_ops import IMPLS, cluster_assign, cluster_encode, cluster_pool

__all__ = ['IMPLS', 'cluster_assign', 'cluster_encode', 'cluster_pool']

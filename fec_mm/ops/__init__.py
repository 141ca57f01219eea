"""Clustering ops of FEC and Context Clusters: ``cluster_assign``, ``cluster_encode``,
``cluster_pool``, and the block's memory-lean MLP ``channel_mlp``.

Kept free of OpenMMLab imports so that the kernels can be tested on a machine
that has only torch (and Triton).
"""
from .cluster_ops import AGGREGATIONS, IMPLS, cluster_assign, cluster_encode, cluster_pool
from .export import center_pool
from .mlp import channel_mlp

__all__ = ['AGGREGATIONS', 'IMPLS', 'center_pool', 'channel_mlp', 'cluster_assign',
           'cluster_encode', 'cluster_pool']

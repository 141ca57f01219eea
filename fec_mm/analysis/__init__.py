"""Analysis of FEC models.

Cost (docs/user_guides/analysis.md): ``flops`` (FEC's ops in mmengine's
FLOP counter, registered on ``import fec_mm``; counts of models and configs).
Cluster quality (docs/user_guides/analysis.md, "Cluster quality"): ``segment_metrics`` (scores of a
partition against ground-truth segments), ``partitions`` (FEC's final
clusters, grid, SLIC), ``segment_data`` (images and masks from mmdet/mmseg
configs), ``cluster_quality`` (all together).
Low precision (docs/notes/low_precision.md): ``low_precision`` (flipped
assignments per layer under bf16/fp16 autocast vs float32).
"""
from .flops import FlopCount, clustering_flops, config_flops, count_flops, register_flop_handles

__all__ = ['FlopCount', 'clustering_flops', 'config_flops', 'count_flops', 'register_flop_handles']

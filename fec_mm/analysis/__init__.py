"""Analysis of FEC models. Cluster quality (README "Cluster quality"):
``segment_metrics`` (scores of a partition against ground-truth segments),
``partitions`` (FEC's final clusters, grid, SLIC), ``segment_data`` (images
and masks from mmdet/mmseg configs), ``cluster_quality`` (all together)."""

"""Analysis of FEC models. ``segment_metrics``: scores of a partition against
ground-truth segments; ``cluster_quality``: FEC's final clusters as segments,
against baselines (README "Cluster quality")."""

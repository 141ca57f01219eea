"""Cluster maps of FEC models: what the network really computed (docs/notes/design.md §5).

:func:`cluster_maps` traces one forward pass to pixels; ``.stats.stage_stats``
gives the per-stage numbers, :func:`class_contributions` the exact share of
each final cluster in a classifier's logits, :func:`merge_clusters` groups
the final clusters; :mod:`.views` and
:mod:`.render` draw them (skimage and matplotlib are imported there and in
``.stats``, not by ``import fec_mm``). ``ClusterMapHook`` draws them during training.
"""
from ..models.assignments import AssignmentRecord, AssignmentRecorder, record_assignments
from .cluster_maps import ClusterMaps, cluster_maps, pad_to_divisor
from .contributions import class_contributions, contribution_map, linear_classifier_head
from .merge import MERGE_METHODS, merge_clusters
from .trace import head_map_on_stem, stage_maps, to_pixels

__all__ = ['AssignmentRecord', 'AssignmentRecorder', 'ClusterMaps', 'MERGE_METHODS',
           'class_contributions', 'cluster_maps', 'contribution_map', 'head_map_on_stem',
           'linear_classifier_head', 'merge_clusters', 'pad_to_divisor', 'record_assignments',
           'stage_maps', 'to_pixels']

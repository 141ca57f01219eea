"""Cluster maps of FEC models: what the network really computed (spec §5)."""
from ..models.assignments import AssignmentRecord, AssignmentRecorder, record_assignments
from .merge import MERGE_METHODS, merge_clusters
from .trace import head_map_on_stem, stage_maps, to_pixels

__all__ = ['AssignmentRecord', 'AssignmentRecorder', 'MERGE_METHODS', 'head_map_on_stem',
           'merge_clusters', 'record_assignments', 'stage_maps', 'to_pixels']

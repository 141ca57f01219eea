"""FEC and Context Clusters model code; importing it registers ``FEC`` and
``ContextCluster`` in ``mmengine.registry.MODELS``."""
from .assignments import AssignmentRecord, AssignmentRecorder, record_assignments
from .checkpoint import convert_reference_state_dict, load_fec_checkpoint
from .coc_checkpoint import convert_coc_state_dict
from .context_cluster import ContextCluster
from .fec import FEC
from .unwrap import find_fec_backbone, unwrap_model

__all__ = ['FEC', 'ContextCluster', 'AssignmentRecord', 'AssignmentRecorder',
           'convert_coc_state_dict', 'convert_reference_state_dict', 'find_fec_backbone',
           'load_fec_checkpoint', 'record_assignments', 'unwrap_model']

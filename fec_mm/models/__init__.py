"""FEC model code; importing it registers ``FEC`` in ``mmengine.registry.MODELS``."""
from .assignments import AssignmentRecord, AssignmentRecorder, record_assignments
from .checkpoint import convert_reference_state_dict, load_fec_checkpoint
from .fec import FEC
from .unwrap import find_fec_backbone, unwrap_model

__all__ = ['FEC', 'AssignmentRecord', 'AssignmentRecorder', 'convert_reference_state_dict',
           'find_fec_backbone', 'load_fec_checkpoint', 'record_assignments', 'unwrap_model']

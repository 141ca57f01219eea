"""FEC model code; importing it registers ``FEC`` in ``mmengine.registry.MODELS``."""
from .assignments import AssignmentRecord, AssignmentRecorder, record_assignments
from .checkpoint import convert_reference_state_dict, load_fec_checkpoint
from .fec import FEC

__all__ = ['FEC', 'AssignmentRecord', 'AssignmentRecorder', 'convert_reference_state_dict',
           'load_fec_checkpoint', 'record_assignments']

"""FEC model code; importing it registers ``FEC`` in ``mmengine.registry.MODELS``."""
from .checkpoint import convert_reference_state_dict, load_fec_checkpoint
from .fec import FEC

__all__ = ['FEC', 'convert_reference_state_dict', 'load_fec_checkpoint']

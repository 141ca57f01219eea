"""Deployment of FEC models: ONNX export (dynamo exporter, standard ops only)
and ONNX Runtime parity checks. See docs/user_guides/deployment.md."""
from .model_parts import MMDEPLOY_HINT, PARTS, WithAssignments, build_model, export_part
from .onnx_export import ALLOWED_OPS, ExportError, check_standard_ops, export_onnx, save_onnx
from .parity import ParityReport, check_parity, onnxruntime_session
from .pytorch2onnx import ExportResult, export_config

__all__ = [
    'ALLOWED_OPS', 'ExportError', 'ExportResult', 'MMDEPLOY_HINT', 'PARTS', 'ParityReport',
    'WithAssignments', 'build_model', 'check_parity', 'check_standard_ops', 'export_config',
    'export_onnx', 'export_part', 'onnxruntime_session', 'save_onnx'
]

"""Which part of an mmdet / mmseg / mmpretrain model exports cleanly, as a module.

Parts (``--part`` of ``tools/deployment/pytorch2onnx.py``):

- ``backbone``: the backbone alone (any config): its tuple of maps.
- ``neck``: backbone + neck of an mmdet detector (the part before RoI heads
  and NMS), e.g. FEC + FPN: the tuple of pyramid maps.
- ``model``: the whole model where its output is a tensor: an mmseg
  encoder-decoder's segmentation logits resized to the input (what its
  ``encode_decode`` returns), an mmpretrain classifier's class scores.
  Whole mmdet detectors are refused: their RoI heads and NMS need
  mmdeploy's rewriters.

Every part takes the normalised image batch that the model's
``data_preprocessor`` produces, (B, 3, H, W).
"""
import os.path as osp
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch.nn as nn
from mmengine.config import Config
from torch import Tensor

from ..models.assignments import AssignmentRecorder, clustering_layers, record_assignments
from ..models.fec import FEC

PARTS = ('auto', 'backbone', 'neck', 'model')
MMDEPLOY_HINT = (
    'Exporting a whole mmdet detector needs the RoI heads and NMS in ONNX, which takes '
    "mmdeploy's rewriters (https://github.com/open-mmlab/mmdeploy); fec-mm exports the "
    'detector up to its neck (--part neck: backbone + FPN), which mmdeploy or your own '
    'runtime code can continue from')


def library_of(model: nn.Module) -> str:
    """'mmdet', 'mmseg', 'mmpretrain' or '' (another nn.Module), by base class."""
    checks = (('mmdet', 'mmdet.models.detectors', 'BaseDetector'),
              ('mmseg', 'mmseg.models.segmentors', 'BaseSegmentor'),
              ('mmpretrain', 'mmpretrain.models.classifiers', 'BaseClassifier'))
    import importlib
    for name, module, cls in checks:
        try:
            base = getattr(importlib.import_module(module), cls)
        except ImportError:
            continue
        if isinstance(model, base):
            return name
    return ''


def build_model(config: str, checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None, backbone_only: bool = False) -> nn.Module:
    """Build the config's model in eval mode, with the checkpoint's weights.

    With ``backbone_only`` (``--part backbone``) only the backbone's weights
    are checked and loaded: a checkpoint whose heads differ from the config's
    (a fine-tuned classifier with other classes) exports its backbone.

    Raises:
        FileNotFoundError: The config or checkpoint file does not exist.
        ValueError: The checkpoint's weights (its backbone's, with
            ``backbone_only``) do not fit the model (see
            :func:`fec_mm.engine.testing.check_checkpoint_fits`).
    """
    import importlib

    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from ..engine.testing import check_checkpoint_fits

    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope') or 'mmengine'
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:  # mmpretrain keeps it at the top
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    # No pretrained download while exporting: the checkpoint has all weights.
    model = registry.MODELS.build(model_cfg)
    if checkpoint is not None and backbone_only and hasattr(model, 'backbone'):
        check_checkpoint_fits(SimpleNamespace(model=model.backbone), checkpoint,
                              prefix='backbone.')
        load_checkpoint(model.backbone, checkpoint, map_location='cpu', strict=False,
                        logger='current', revise_keys=[(r'^module\.', ''), (r'^backbone\.', '')])
    elif checkpoint is not None:
        check_checkpoint_fits(SimpleNamespace(model=model), checkpoint)
        load_checkpoint(model, checkpoint, map_location='cpu', strict=False,
                        logger='current')
    return model.eval()


class BackboneNeck(nn.Module):
    """Backbone (+ neck, when given) of a model: image batch -> tuple of maps."""

    def __init__(self, backbone: nn.Module, neck: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        feats = self.backbone(x)
        return tuple(self.neck(feats) if self.neck is not None else feats)


class SegmentorLogits(nn.Module):
    """An mmseg segmentor's ``encode_decode``: logits (B, classes, H, W) at the
    input's size (bilinear, the decode head's ``align_corners``)."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: Tensor) -> Tensor:
        # A torch.Size img_shape makes predict_by_feat resize to it (as in
        # mmseg's slide inference), also for a symbolic size.
        return self.segmentor.encode_decode(x, [dict(img_shape=x.shape[2:])])


class ClassifierScores(nn.Module):
    """An mmpretrain classifier's ``forward(mode='tensor')``: class scores."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor):
        return self.classifier(x, mode='tensor')


def export_part(model: nn.Module, part: str = 'auto') -> Tuple[nn.Module, str]:
    """The module to export for ``part`` and the part's resolved name.

    ``auto``: ``neck`` for mmdet detectors, ``model`` for mmseg and mmpretrain
    models, ``backbone`` otherwise.

    Raises:
        ValueError: Unknown part, no backbone / neck, or a whole mmdet
            detector (RoI heads and NMS; see :data:`MMDEPLOY_HINT`).
    """
    if part not in PARTS:
        raise ValueError(f'unknown part {part!r}; valid ones are {PARTS}')
    library = library_of(model)
    if part == 'auto':
        part = {'mmdet': 'neck', 'mmseg': 'model', 'mmpretrain': 'model'}.get(library,
                                                                             'backbone')
    backbone = getattr(model, 'backbone', None)
    if part in ('backbone', 'neck') and backbone is None:
        if part == 'backbone' and clustering_layers(model):
            return model.eval(), part  # a bare backbone, e.g. fec_mm.models.FEC
        raise ValueError(f'{type(model).__name__} has no backbone to export')
    if part == 'backbone':
        return BackboneNeck(backbone).eval(), part
    if part == 'neck':
        if library != 'mmdet' or getattr(model, 'neck', None) is None:
            raise ValueError(f'--part neck exports the backbone + neck of an mmdet detector; '
                             f'{type(model).__name__} is not one with a neck')
        return BackboneNeck(backbone, model.neck).eval(), part
    if library == 'mmdet':
        raise ValueError(f'cannot export the whole {type(model).__name__}: {MMDEPLOY_HINT}')
    if library == 'mmseg':
        return SegmentorLogits(model).eval(), part
    if library == 'mmpretrain':
        return ClassifierScores(model).eval(), part
    return model.eval(), part


def size_divisor(module: nn.Module) -> int:
    """The size divisor of the FEC backbone(s) in ``module`` (1 if none)."""
    divisors = [m.size_divisor for m in module.modules() if isinstance(m, FEC)]
    return max(divisors) if divisors else 1


class WithAssignments(nn.Module):
    """``module``'s outputs followed by the assignment index of every
    clustering layer (``fec_mm.models.record_assignments``), in call order.

    Exported for verification: ONNX Runtime's assignments can then be
    compared with PyTorch's, index by index. ``names`` lists the layers.
    With ``with_inputs``, each layer's points and centers (the inputs of its
    argmax) follow the indices, two outputs per layer in the same order, so
    that a differing assignment can be rescored in float64 from what each
    runtime's layer saw (:func:`fec_mm.deployment.parity.compare`);
    ``layouts`` then holds each layer's ``(layout, centers_hw)``.
    """

    def __init__(self, module: nn.Module, with_inputs: bool = False) -> None:
        super().__init__()
        self.module = module
        self.with_inputs = with_inputs
        self.names: List[str] = []
        self.layouts: List[Tuple[tuple, tuple]] = []

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        recorder = AssignmentRecorder(keep_inputs=self.with_inputs)
        with record_assignments(self.module, recorder) as rec:
            out = self.module(x)
        self.names = [r.name for r in rec.records]
        self.layouts = [(r.layout, r.centers_hw) for r in rec.records]
        outs = (out,) if isinstance(out, Tensor) else tuple(out)
        inputs = [t for r in rec.records for t in (r.points, r.centers)] if self.with_inputs else []
        return (*outs, *(r.index for r in rec.records), *inputs)

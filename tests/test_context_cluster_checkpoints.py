"""The authors' Context Clusters whole-model files (classifier, Mask R-CNN,
Semantic FPN, as released: timm / mmdet 2.24 / mmseg 0.24 containers, the
backbone in their ``network.*`` layout) load as they are wherever a
checkpoint is accepted, into the tensors the converter writes, and predict
as the converted file does; a file lacking whole parts, of another arch or
of the other family (FEC) is refused, naming them. (Our own trained CoC
checkpoints in the library APIs: test_library_checkpoints.py.)"""
import argparse
import copy
import os.path as osp
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from demo_config_helpers import (
    CONFIG_DIR,
    load_demo_config,
    model_cfg,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    registry,
)
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint

from fec_mm.analysis.coc_reference import to_authors_layout
from fec_mm.datasets import make_demo_data
from fec_mm.engine.testing import build_test_parser, check_checkpoint_fits
from fec_mm.engine.testing import test as run_test
from fec_mm.models import ContextCluster
from fec_mm.models.whole_model import backbone_only_loading

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools', 'model_converters'))
from coc_reference_to_mm import convert  # noqa: E402

COC = CONFIG_DIR / 'context_cluster'
CLASSES = ('circle', 'square', 'triangle')


def build(config: Path, seed: int = 0) -> torch.nn.Module:
    """The model of ``config``, with every float tensor random (seeded), so
    that a tensor the load skipped shows; eval mode."""
    from mmengine.model import revert_sync_batchnorm
    cfg = Config.fromfile(str(config))
    torch.manual_seed(seed)
    model = revert_sync_batchnorm(registry(cfg).MODELS.build(model_cfg(cfg))).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.02 * torch.randn(value.shape, generator=gen))
    return model


def authors_file(model: torch.nn.Module, task: str, path: Path, conv_mlp: bool = False) -> Path:
    """``model``'s weights as the authors' released file of ``task`` holds
    them: 'cls' a timm checkpoint (backbone at the top level, ``head``),
    'det' / 'seg' an mmcv-full 1.6 one (``backbone.network.*``,
    ``backbone.norm{0,2,4,6}``, neck and heads under mmdet's / mmseg's names);
    with ``conv_mlp`` the MLPs as 1×1 convs (some of their dense files)."""
    state = model.state_dict()
    backbone = OrderedDict((k[len('backbone.'):], v.clone()) for k, v in state.items()
                           if k.startswith('backbone.'))
    rest = OrderedDict((k, v.clone()) for k, v in state.items() if not k.startswith('backbone.'))
    theirs = to_authors_layout(backbone, dense=task != 'cls', conv_mlp=conv_mlp)
    if task == 'cls':
        theirs['head.weight'], theirs['head.bias'] = rest.pop('head.fc.weight'), \
            rest.pop('head.fc.bias')
        assert not rest, list(rest)
        checkpoint = {'epoch': 299, 'arch': 'coc_tiny', 'state_dict': theirs, 'version': 2,
                      'args': argparse.Namespace(model='coc_tiny', lr=1e-3)}
    else:
        theirs = OrderedDict(('backbone.' + k, v) for k, v in theirs.items())
        theirs.update(rest)
        library = {'det': ('mmdet_version', '2.24.0'), 'seg': ('mmseg_version', '0.24.0')}[task]
        checkpoint = {'state_dict': theirs,
                      'meta': {library[0]: library[1], 'mmcv_version': '1.6.0',
                               'config': "model = dict(backbone=dict(type='context_cluster'))",
                               'CLASSES': CLASSES, 'epoch': 12, 'iter': 1000}}
        if task == 'seg':  # mmseg 0.x saved the palette too
            checkpoint['meta']['PALETTE'] = [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    torch.save(checkpoint, path)
    return path


def zeroed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every float tensor zero (cheaper than a build)."""
    target = copy.deepcopy(model)
    with torch.no_grad():
        for value in target.state_dict().values():
            if value.is_floating_point():
                value.zero_()
    return target


def fits(model: torch.nn.Module, path: Path) -> None:
    """tools/test.py's (and --resume's) check of a file against the model."""
    check_checkpoint_fits(types.SimpleNamespace(model=model), str(path))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def coc_det():
    """A CoC-Small Mask R-CNN of the released configs (random weights)."""
    return build(COC / 'mask-rcnn_coc-small-4_fpn_1x_coco.py', seed=1)


@pytest.fixture(scope='module')
def photo():
    """A real photograph (scikit-image's astronaut), odd-sized, BGR."""
    import mmcv
    from skimage import data
    return mmcv.imresize(data.astronaut()[:, :, ::-1].copy(), (203, 157))


@pytest.mark.parametrize('task,config,scope', [
    ('cls', COC / 'coc-tiny_in1k-224.py', 'mmpretrain'),
    ('det', None, 'mmdet'),
    ('seg', COC / 'fpn_coc-small-4_ade20k-512x512_80k.py', 'mmseg')])
def test_released_layouts_load_as_they_are_into_the_converters_tensors(task, config, scope,
                                                                       coc_det, tmp_path):
    model = coc_det if task == 'det' else build(config, seed=1)
    source = model.state_dict()
    path = authors_file(model, task, tmp_path / f'{task}.pth', conv_mlp=task == 'det')
    target = zeroed(model)
    fits(target, path)  # tools/test.py's check takes it
    with DefaultScope.overwrite_default_scope(scope):
        load_checkpoint(target, str(path), map_location='cpu', strict=True)
    assert same_tensors(target.state_dict(), source)  # every tensor used
    written = tmp_path / f'{task}_mm.pth'
    count, reshaped, _ = convert(str(path), str(written))
    assert same_tensors(torch.load(written, weights_only=True)['state_dict'], source)
    assert count == len(source) and reshaped == (2 * 12 if task == 'det' else 0)
    if task == 'cls':  # mmpretrain's own API
        from mmpretrain import get_model
        model = get_model(str(config), pretrained=str(path), device='cpu')
        assert same_tensors(model.state_dict(), source)


def test_detector_and_segmentor_apis_predict_as_the_converted_file(photo, tmp_path_factory):
    from mmdet.apis import inference_detector, init_detector
    from mmseg.apis import inference_model, init_model
    tmp = tmp_path_factory.mktemp('apis')
    root = tmp / 'demo'
    make_demo_data(str(root), num_train=2, num_val=2)
    outputs = {}
    for task, name in (('det', 'coc_maskrcnn_demo.py'), ('seg', 'coc_semfpn_demo.py')):
        cfg = load_demo_config(CONFIG_DIR / 'demo' / name, root)
        config = tmp / name
        cfg.dump(str(config))
        model = build(config, seed=3)
        authors = authors_file(model, task, tmp / f'{task}_authors.pth', conv_mlp=True)
        converted = tmp / f'{task}_converted.pth'
        convert(str(authors), str(converted))
        source = model.state_dict()
        preds = []
        for weights in (authors, converted):
            if task == 'det':
                loaded = init_detector(str(config), str(weights), device='cpu')
                assert list(loaded.dataset_meta['classes']) == list(CLASSES)
                preds.append(inference_detector(loaded, photo).pred_instances)
            else:
                loaded = init_model(str(config), str(weights), device='cpu')
                assert list(loaded.dataset_meta['classes']) == list(CLASSES)
                preds.append(inference_model(loaded, photo).pred_sem_seg.data)
            assert same_tensors(loaded.state_dict(), source), (task, weights)
        outputs[task] = preds
        if task == 'seg':  # tools/test.py (its checkpoint check, then load_from)
            metrics = [run_test(build_test_parser().parse_args(
                [str(config), str(w), '--work-dir', str(tmp / f'work{i}')]))
                for i, w in enumerate((authors, converted))]
            assert metrics[0] == metrics[1] and 'mIoU' in metrics[0]
    det, seg = outputs['det'], outputs['seg']
    assert len(det[0]) > 0
    for key in ('bboxes', 'scores', 'labels', 'masks'):
        assert torch.equal(det[0][key], det[1][key]), key
    assert torch.equal(seg[0], seg[1]) and seg[0].unique().numel() > 1


def test_files_lacking_parts_of_another_arch_or_family_are_refused(coc_det, tmp_path):
    from authors_checkpoints import authors_file as fec_authors_file
    from authors_checkpoints import build as build_fec
    det, fec_det = coc_det, build_fec('det', 'small')
    cls_file = authors_file(build(COC / 'coc-small_in1k-224.py'), 'cls', tmp_path / 'cls.pth')
    medium = zeroed(det)  # the Mask R-CNN of CoC-Medium (same neck and heads)
    medium.backbone = ContextCluster('medium', num_centers=2)
    medium_file = authors_file(medium, 'det', tmp_path / 'coc_medium.pth')
    fec_file = fec_authors_file(fec_det.state_dict(), 'small', 'det',
                                tmp_path / 'fec_small.pth', list(CLASSES))
    coc_file = authors_file(det, 'det', tmp_path / 'coc_small.pth')
    arch = r"the file holds ContextCluster\(arch='medium'\) weights"
    cases = [  # model, file, load's message, tools/test.py check's message
        (det, cls_file, r'cls.pth is not a whole MaskRCNN: it holds no weights for '
         r'backbone.norm0, backbone.norm1, backbone.norm2, neck, rpn_head, roi_head.*'
         r'It holds the ContextCluster backbone', r'checkpoint .*cls.pth lacks .*parts without '
         r'any weight: .*neck, rpn_head, roi_head'),
        (det, medium_file, r"ContextCluster\(arch='small'\) cannot take these weights.*"
         r'coc_medium.pth.*' + arch, r'coc_medium.pth: \d+ weights have other shapes.*' + arch),
        (det, fec_file, r"ContextCluster cannot take the checkpoint .*fec_small.pth: it holds "
         r"FEC weights.*type='FEC'", None),
        (fec_det, coc_file, r'FEC cannot take the checkpoint .*coc_small.pth: '
         r"it holds ContextCluster weights.*type='ContextCluster'", None)]
    for model, path, message, check in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(ValueError,
                                                                          match=message):
            load_checkpoint(model, str(path), map_location='cpu')
        with pytest.raises(ValueError, match=check or message):
            fits(model, path)
        assert same_tensors(model.state_dict(), before)

    # Asked for explicitly (load_from_backbone_only), a backbone-only start from the classifier.
    classifier = torch.load(cls_file, weights_only=False)['state_dict']
    start = zeroed(det)  # the shared fixture stays as it is
    with DefaultScope.overwrite_default_scope('mmdet'), backbone_only_loading():
        load_checkpoint(start, str(cls_file), map_location='cpu')
    assert torch.equal(start.backbone.downsamples[2].weight, classifier['network.5.proj.weight'])
    assert torch.equal(start.backbone.stages[3][1].mlp.fc2.weight,
                       classifier['network.6.1.mlp.fc2.weight'])


def test_analysis_and_visualization_tools_read_the_released_file(coc_det, tmp_path):
    """cluster_quality's and vis_clusters' loaders take the authors' CoC
    Mask R-CNN file as it is: the backbone gets the file's weights."""
    from fec_mm.analysis.partitions import backbone_from_config
    from fec_mm.visualization.cli import load_weights
    config = COC / 'mask-rcnn_coc-small-4_fpn_1x_coco.py'
    path = authors_file(coc_det, 'det', tmp_path / 'det.pth', conv_mlp=True)
    expected = {k[len('backbone.'):]: v for k, v in coc_det.state_dict().items()
                if k.startswith('backbone.')}
    backbone = backbone_from_config(Config.fromfile(str(config)), str(path))
    assert same_tensors(backbone.state_dict(), expected)
    target = zeroed(coc_det)
    load_weights(target, target.backbone, str(path))
    assert same_tensors(target.state_dict(), coc_det.state_dict())

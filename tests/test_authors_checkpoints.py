"""The authors' released checkpoints (every task and size) load as they are,
through mmengine's loading that every library API uses, and through the
converter, into the same tensors; a checkpoint lacking whole parts of the
model (another task's) or holding another arch is refused, naming them.
The library APIs themselves, with predictions on a photograph, are checked
in test_library_checkpoints.py."""
import os.path as osp
import sys

import mmcv
import numpy as np
import pytest
import torch
from authors_checkpoints import (
    CLASSES,
    CONFIGS,
    PALETTE,
    SCOPES,
    authors_file,
    authors_keys,
    build,
    perturbed,
)
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint

from fec_mm.models.whole_model import backbone_only_loading

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools', 'model_converters'))
from fec_reference_to_mm import main as convert_tool  # noqa: E402


@pytest.mark.parametrize('size', ['small', 'base', 'large'])
def test_authors_files_load_as_they_are_and_converted(size, tmp_path):
    for task in ('det', 'seg', 'cls'):
        target = build(task, size)
        source = perturbed(target, seed=1)  # every float tensor differs from the target's
        path = authors_file(source, size, task, tmp_path / f'{task}.pth', classes=CLASSES,
                            palette=PALETTE if task == 'seg' else None)
        with DefaultScope.overwrite_default_scope(SCOPES[task]):
            load_checkpoint(target, str(path), map_location='cpu')
        loaded = target.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.items()), (task, size)

        converted = tmp_path / f'{task}_mm.pth'
        report = convert_tool([str(path), str(converted)])
        written = torch.load(converted, weights_only=True)
        assert set(written) == {'state_dict', 'meta'}
        assert written['state_dict'].keys() == source.keys()
        assert all(torch.equal(written['state_dict'][k], v) for k, v in source.items())
        assert report['converted'] == len(authors_keys(size, dense=task != 'cls'))
        assert report['kept'] == len(source) - report['converted']
        if task == 'cls':
            assert {'optimizer', 'args', 'epoch', 'arch', 'version'} <= set(report['dropped'])
            assert 'dataset_meta' not in written['meta']
        else:
            assert {'optimizer', 'meta.config', 'meta.env_info', 'meta.hook_msgs'} \
                <= set(report['dropped'])
            expected = dict(classes=CLASSES, palette=PALETTE) if task == 'seg' \
                else dict(classes=CLASSES)
            assert written['meta']['dataset_meta'] == expected
            assert written['meta']['epoch'] == 12


def test_another_task_or_arch_is_refused_naming_parts_and_arch(tmp_path, caplog):
    det, seg, cls = build('det', 'small'), build('seg', 'small'), build('cls', 'small')
    det_file = authors_file(perturbed(det, 1), 'small', 'det', tmp_path / 'det.pth', CLASSES)
    cls_file = authors_file(perturbed(cls, 1), 'small', 'cls', tmp_path / 'cls.pth')
    base_file = authors_file(perturbed(build('det', 'base'), 1), 'base', 'det',
                             tmp_path / 'base.pth', CLASSES)
    cases = [(det, 'mmdet', cls_file, r'cls.pth is not a whole MaskRCNN: it holds no weights '
              r'for backbone.norm0, backbone.norm1, backbone.norm2, neck, rpn_head, roi_head'),
             (seg, 'mmseg', det_file, r'det.pth is not a whole EncoderDecoder: it holds no '
              r'weights for decode_head \('),
             (cls, 'mmpretrain', det_file, r'det.pth is not a whole ImageClassifier: it holds '
              r'no weights for head \('),
             (det, 'mmdet', base_file, r"FEC\(arch='small'\) cannot take these weights .*"
              r"base.pth.*the file holds FEC\(arch='base'\) weights")]
    for model, scope, path, message in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with DefaultScope.overwrite_default_scope(scope), pytest.raises(ValueError,
                                                                        match=message):
            load_checkpoint(model, str(path), map_location='cpu')
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # Asked for explicitly, a backbone-only start from the classifier.
    with DefaultScope.overwrite_default_scope('mmdet'), backbone_only_loading():
        load_checkpoint(det, str(cls_file), map_location='cpu')
    theirs = perturbed(cls, 1)
    assert all(torch.equal(det.state_dict()[k], v) for k, v in theirs.items()
               if k.startswith('backbone.'))


def test_align_resize_is_the_authors_resize():
    from mmcv.transforms import Compose
    from mmseg.registry import TRANSFORMS
    from skimage import data

    image = mmcv.imresize(data.astronaut()[:, :, ::-1].copy(), (203, 157))
    cfg = Config.fromfile(osp.join(CONFIGS, 'fec_semfpn_ade20k.py'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        steps = Compose([TRANSFORMS.build(t) for t in cfg.test_pipeline
                         if t['type'] in ('Resize', 'AlignResize')])
    out = steps(dict(img=image, ori_shape=image.shape[:2], img_shape=image.shape[:2]))
    # Their AlignResize (segmentation/align_resize.py): imrescale to fit
    # (2048, 512), then imresize to the next multiples of 32.
    rescaled = mmcv.imrescale(image, (2048, 512))
    h, w = (int(np.ceil(s / 32)) * 32 for s in rescaled.shape[:2])
    theirs = mmcv.imresize(rescaled, (w, h))
    assert out['img'].shape == theirs.shape == (512, 672, 3)
    np.testing.assert_array_equal(out['img'], theirs)
    assert out['scale_factor'] == (672 / 203, 512 / 157)


def test_load_from_backbone_only_needs_load_from():
    from fec_mm.engine.training import build_train_config, build_train_parser
    config = osp.join(CONFIGS, 'demo', 'fec_maskrcnn_demo.py')
    for options, message in ((['load_from_backbone_only=True'], 'needs a load_from'),
                             (['load_from_backbone_only=1'], 'must be True or False')):
        args = build_train_parser().parse_args([config, '--cfg-options', *options])
        with pytest.raises(ValueError, match=message):
            build_train_config(args)


def test_analysis_tools_take_the_authors_files(tmp_path):
    """cluster_quality / vis_clusters read checkpoints themselves (backbone
    only); the authors' whole-model files go through the same conversion."""
    from fec_mm.analysis.partitions import backbone_from_config
    source = perturbed(build('seg', 'small'), 1)
    path = authors_file(source, 'small', 'seg', tmp_path / 'seg.pth', CLASSES, PALETTE)
    cfg = Config.fromfile(osp.join(CONFIGS, 'fec_semfpn_ade20k.py'))
    backbone = backbone_from_config(cfg, str(path))
    assert all(torch.equal(v, source['backbone.' + k]) for k, v in backbone.state_dict().items())

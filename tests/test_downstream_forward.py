"""Configs that inherit the libraries' own configs and only swap in FEC
build and run forward (and backward) in mmdet, mmseg and mmpretrain."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope


def _config(tmp_path, text: str) -> Config:
    path = tmp_path / 'cfg.py'
    path.write_text(textwrap.dedent(text))
    return Config.fromfile(str(path))


def _assert_loss_backward(losses):
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k
                for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()


def test_mmdet_mask_rcnn_with_fec(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    cfg = _config(tmp_path, """
        _base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
        custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
        model = dict(
            backbone=dict(_delete_=True, type='FEC', arch='small', num_centers=7,
                          folds=(2, 2, 1, 1)),
            neck=dict(in_channels=[32, 64, 196, 320]))
        """)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    packed = demo_mm_inputs(2, [[3, 128, 160], [3, 96, 128]], with_mask=True, num_classes=80)
    data = model.data_preprocessor(packed, True)
    assert data['inputs'].shape[-2:] == (128, 160)
    _assert_loss_backward(model(**data, mode='loss'))
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and hasattr(results[0], 'pred_instances')


def test_mmseg_semantic_fpn_with_fec(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    cfg = _config(tmp_path, """
        _base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
        custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
        model = dict(
            data_preprocessor=dict(size=(128, 128)),
            pretrained=None,
            backbone=dict(_delete_=True, type='FEC', arch='small', num_centers=(10, 10, 5, 5)),
            neck=dict(in_channels=[32, 64, 196, 320]))
        """)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128),
                                             pad_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 128, 128)))
        samples.append(sample)
    packed = dict(inputs=[torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)] * 2,
                  data_samples=samples)
    data = model.data_preprocessor(packed, True)
    _assert_loss_backward(model(**data, mode='loss'))
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert results[0].pred_sem_seg.data.shape == (1, 128, 128)


@pytest.mark.parametrize('size', [224, 64])
def test_mmpretrain_image_classifier_with_fec(tmp_path, size):
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    cfg = _config(tmp_path, """
        _base_ = 'mmpretrain::_base_/models/resnet50.py'
        custom_imports = dict(imports=['fec_mm'], allow_failed_imports=False)
        model = dict(
            backbone=dict(_delete_=True, type='FEC', arch='small', out_indices=(3,)),
            head=dict(in_channels=320))
        """)
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    inputs = torch.randn(2, 3, size, size)
    samples = [DataSample().set_gt_label(3), DataSample().set_gt_label(7)]
    _assert_loss_backward(model(inputs, samples, mode='loss'))
    with torch.no_grad():
        scores = model(inputs, mode='tensor')
    assert scores.shape == (2, 1000)

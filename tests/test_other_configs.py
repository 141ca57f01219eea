"""FEC swapped into other mmdet and mmseg configs of the installed packages
(backbone, plus the in_channels each neck or head needs) trains: a forward
and backward on a small batch give a finite loss and backbone gradients."""
import math
import textwrap

import pytest
import torch
from demo_config_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from mmengine.config import Config
from mmengine.registry import init_default_scope

FEC_DET = "dict(_delete_=True, type='FEC', arch='small', num_centers=7, folds=(2, 2, 1, 1){})"
FEC_SEG = "dict(_delete_=True, type='FEC', arch='small', num_centers=(10, 10, 5, 5){})"

CASES = {
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', f"""
        model = dict(backbone={FEC_DET.format('')},
                     neck=dict(in_channels=[32, 64, 196, 320]))
        """),
    # FCOS's FPN starts at stride 8: build stages 2-4 outputs only.
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', f"""
        model = dict(backbone={FEC_DET.format(', out_indices=(1, 2, 3)')},
                     neck=dict(in_channels=[64, 196, 320], start_level=0))
        """),
    'upernet': ('mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', f"""
        model = dict(pretrained=None, data_preprocessor=dict(size=(64, 64)),
                     backbone={FEC_SEG.format('')},
                     decode_head=dict(in_channels=[32, 64, 196, 320]),
                     auxiliary_head=dict(in_channels=196))
        """),
    # DeepLabV3+: ASPP on the stride-32 map, low-level features from stride 4.
    'deeplabv3plus': ('mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py', f"""
        model = dict(pretrained=None, data_preprocessor=dict(size=(64, 64)),
                     backbone={FEC_SEG.format('')},
                     decode_head=dict(in_channels=320, in_index=3, c1_in_channels=32),
                     auxiliary_head=dict(in_channels=196, in_index=2))
        """),
    'mask2former': ('mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', f"""
        model = dict(data_preprocessor=dict(size=(64, 64)),
                     backbone={FEC_SEG.format('')},
                     decode_head=dict(in_channels=[32, 64, 196, 320]))
        """),
}


def _build(tmp_path, base: str, body: str):
    imports = ['mmdet.models', 'fec_mm'] if 'mask2former' in base else ['fec_mm']
    path = tmp_path / 'cfg.py'
    path.write_text(f'_base_ = {base!r}\n'
                    f'custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n'
                    + textwrap.dedent(body))
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return cfg, MODELS.build(cfg.model)


def _seg_batch(num_classes: int):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
        label = torch.zeros(1, 64, 64, dtype=torch.long)
        label[:, 16:48, 8:40] = torch.randint(1, num_classes, (1,))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
                        for _ in range(2)], data_samples=samples)


@pytest.mark.parametrize('case', sorted(CASES))
def test_fec_in_other_config_trains(case, tmp_path):
    base, body = CASES[case]
    cfg, model = _build(tmp_path, base, body)
    assert type(model.backbone).__name__ == 'FEC'
    if cfg.default_scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        packed = demo_mm_inputs(2, [[3, 96, 128], [3, 80, 100]], num_items=[2, 3],
                                with_mask=True, num_classes=80)
    else:
        packed = _seg_batch(cfg.model.decode_head.num_classes)
    model.train()
    data = model.data_preprocessor(packed, True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grad = model.backbone.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0

"""The libraries' own packaged tools on FEC models (docs/user_guides/library_tools.md):
mmdet's ``tools/test.py --tta --show-dir`` on a detection-only FEC config with
our ClusterMapHook on, from a checkpoint, on demo data."""
import json
import subprocess
import sys
from pathlib import Path

import mmdet
import torch
from demo_config_helpers import registry

from fec_mm.datasets import make_demo_data

REPO = Path(__file__).resolve().parents[1]
MMDET_TOOLS = Path(mmdet.__file__).parent / '.mim' / 'tools'
TINY_ARCH = dict(_delete_=True, depths=[1, 1, 1, 1], widths=[16, 32, 48, 64],
                 heads=[2, 2, 2, 2], head_dim=8)


def write_retinanet_demo_config(path: Path, data_root: Path) -> Path:
    """configs/fec_retinanet.py (boxes only: mmdet's TTA merges no masks) on
    the demo COCO split, with a tiny FEC and the ClusterMapHook."""
    coco = f'{data_root}/coco/'
    path.write_text(f'''
_base_ = {str(REPO / 'configs' / 'fec_retinanet.py')!r}
metainfo = dict(classes=('circle', 'square', 'triangle'))
model = dict(
    backbone=dict(arch={TINY_ARCH!r}, num_centers=(2, 2, 2, 2)),
    neck=dict(in_channels=[32, 48, 64]),
    bbox_head=dict(num_classes=3))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={coco!r}, metainfo=metainfo,
                                    pipeline=test_pipeline))
test_evaluator = dict(ann_file={coco + 'annotations/instances_val2017.json'!r})
custom_hooks = [dict(type='ClusterMapHook')]
''')
    return path


def test_mmdet_test_tool_with_tta_and_show_dir(tmp_path):
    from mmengine.config import Config
    make_demo_data(str(tmp_path / 'data'), num_train=1, num_val=2, tasks=('coco',))
    config = write_retinanet_demo_config(tmp_path / 'retinanet_demo.py', tmp_path / 'data')
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = registry(cfg).MODELS.build(cfg.model)
    checkpoint = tmp_path / 'random.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    work = tmp_path / 'work'
    result = subprocess.run(
        [sys.executable, str(MMDET_TOOLS / 'test.py'), str(config), str(checkpoint), '--tta',
         '--work-dir', str(work), '--show-dir', 'vis'],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # mmdet ran its TTA model around ours (the hook found FEC inside it, so no
    # warning), evaluated, and drew both images.
    log = result.stdout + result.stderr
    assert 'has no FEC backbone' not in log
    (run,) = [p for p in work.iterdir() if p.is_dir()]
    metrics = json.loads((run / f'{run.name}.json').read_text())
    assert 'coco/bbox_mAP' in metrics
    assert len(list((run / 'vis').glob('*.jpg'))) == 2

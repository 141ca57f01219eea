"""A checkpoint written by ``tools/train.py`` loads and predicts through each
library's own API (mmdet, mmseg, mmpretrain), in a fresh process that imports
the library first and fec_mm only through the config's ``custom_imports``;
the published form loads with a bare ``torch.load(weights_only=True)``; bad
checkpoints are errors naming the file in those APIs too."""
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_config_helpers import CONFIG_DIR, load_demo_config
from PIL import Image

from fec_mm.checkpoints import publish_checkpoint
from fec_mm.datasets import make_demo_data
from fec_mm.engine import build_train_parser, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=4, num_val=2)
    return root


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    """A real photograph (scikit-image's astronaut), odd-sized."""
    from skimage import data
    path = tmp_path_factory.mktemp('photo') / 'astronaut.jpg'
    Image.fromarray(data.astronaut()).resize((203, 157)).save(path)
    return path


def trained(name: str, demo_root: Path, tmp: Path):
    """Train a demo config for a few iterations with tools/train.py; return
    (dumped config, checkpoint)."""
    cfg = load_demo_config(CONFIG_DIR / 'demo' / name, demo_root)
    if 'max_iters' in cfg.train_cfg:
        cfg.train_cfg.update(max_iters=2, val_interval=2)
        cfg.default_hooks.checkpoint.update(interval=2)
    else:
        cfg.train_cfg.update(max_epochs=1, val_interval=1)
        cfg.default_hooks.checkpoint.update(interval=1)
    if cfg.default_scope == 'mmdet':
        cfg.model.test_cfg.rpn.max_per_img = 50
        cfg.model.test_cfg.rcnn.max_per_img = 10
    cfg.experiment_name = uuid.uuid4().hex
    config = tmp / name
    cfg.dump(str(config))
    work_dir = tmp / 'work'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(build_train_parser().parse_args([str(config), '--work-dir', str(work_dir)]))
    finally:
        torch.set_num_threads(threads)
    checkpoint = work_dir / ('iter_2.pth' if 'max_iters' in cfg.train_cfg else 'epoch_1.pth')
    assert checkpoint.is_file()
    return config, checkpoint


@pytest.fixture(scope='module')
def det_trained(demo_root, tmp_path_factory):
    return trained('fec_maskrcnn_demo.py', demo_root, tmp_path_factory.mktemp('det'))


@pytest.fixture(scope='module')
def seg_trained(demo_root, tmp_path_factory):
    return trained('fec_semfpn_demo.py', demo_root, tmp_path_factory.mktemp('seg'))


@pytest.fixture(scope='module')
def cls_trained(demo_root, tmp_path_factory):
    return trained('fec_cls_demo.py', demo_root, tmp_path_factory.mktemp('cls'))


def run_fresh(code: str, **paths) -> dict:
    """Run ``code`` in a new interpreter (the library is imported before any
    config is read); it prints one JSON line, returned here."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    header = ''.join(f'{k} = {str(v)!r}\n' for k, v in paths.items())
    result = subprocess.run([sys.executable, '-c', header + textwrap.dedent(code)],
                            capture_output=True, text=True, env=env, cwd=str(REPO), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Shared by the scripts: are the model's weights those of the file? (A model
# left at random init would also predict something.)
SAME_WEIGHTS = '''
import torch
def same_weights(model, ckpt):
    saved = torch.load(ckpt, map_location='cpu')['state_dict']
    own = model.state_dict()
    return all(torch.equal(own[k].cpu(), v) for k, v in saved.items())
def error_of(fn):
    try:
        fn()
    except Exception as err:
        return f'{type(err).__name__}: {err}'
    return None
'''


def bad_checkpoints(checkpoint: Path, tmp: Path) -> dict:
    """A truncated copy and a non-checkpoint pickle of ``checkpoint``."""
    truncated = tmp / 'truncated.pth'
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    not_weights = tmp / 'not_weights.pth'
    torch.save({'lr': [0.1, 0.01]}, not_weights)
    return dict(truncated=truncated, not_weights=not_weights)


def test_mmdet_apis_and_packaged_test_tool(det_trained, photo, tmp_path):
    config, checkpoint = det_trained
    out = run_fresh(SAME_WEIGHTS + '''
from mmdet.apis import DetInferencer, inference_detector, init_detector
inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu')
pred = inferencer(photo, return_vis=False)['predictions'][0]
model = init_detector(config, checkpoint, device='cpu')
result = inference_detector(model, photo)
print_json = dict(
    inferencer_loaded=same_weights(inferencer.model, checkpoint),
    init_loaded=same_weights(model, checkpoint),
    classes=list(model.dataset_meta['classes']),
    scores=pred['scores'],
    same_boxes=torch.allclose(torch.tensor(pred['bboxes']).reshape(-1, 4),
                              result.pred_instances.bboxes, atol=1e-3),
    truncated=error_of(lambda: init_detector(config, truncated, device='cpu')),
    not_weights=error_of(lambda: DetInferencer(model=config, weights=not_weights,
                                               device='cpu')))
import json; print(json.dumps(print_json))
''', config=config, checkpoint=checkpoint, photo=photo, **bad_checkpoints(checkpoint, tmp_path))
    assert out['inferencer_loaded'] and out['init_loaded']
    assert out['classes'] == ['circle', 'square', 'triangle']
    assert out['same_boxes'] and all(0 <= s <= 1 for s in out['scores'])
    assert 'truncated.pth is truncated or corrupted' in out['truncated']
    assert 'not_weights.pth holds a dict without tensors' in out['not_weights']

    import mmdet
    tool = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'test.py'
    result = subprocess.run(
        [sys.executable, str(tool), str(config), str(checkpoint), '--work-dir',
         str(tmp_path / 'mmdet_test')], capture_output=True, text=True, cwd=str(REPO),
        env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO)), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'coco/bbox_mAP' in result.stdout + result.stderr

    published = publish_checkpoint(str(checkpoint), str(tmp_path / 'fec_maskrcnn_demo.pth'))
    out = run_fresh('''
import hashlib, json, os, torch
ckpt = torch.load(published, weights_only=True)  # no fec_mm imported
sha = hashlib.sha256(open(published, 'rb').read()).hexdigest()
print(json.dumps(dict(keys=sorted(ckpt), meta=sorted(ckpt['meta']),
                      classes=list(ckpt['meta']['dataset_meta']['classes']),
                      named=os.path.basename(published).endswith(sha[:8] + '.pth'))))
''', published=published)
    assert out['keys'] == ['meta', 'state_dict'] and out['named']
    assert 'cfg' in out['meta'] and out['classes'] == ['circle', 'square', 'triangle']
    out = run_fresh(SAME_WEIGHTS + '''
from mmdet.apis import DetInferencer
inferencer = DetInferencer(model=config, weights=published, device='cpu')
inferencer(photo, return_vis=False)
import json; print(json.dumps(dict(loaded=same_weights(inferencer.model, published))))
''', config=config, published=published, photo=photo)
    assert out['loaded']


def test_mmseg_apis(seg_trained, photo, tmp_path):
    config, checkpoint = seg_trained
    other_arch = tmp_path / 'base.pth'
    saved = torch.load(checkpoint, weights_only=False)
    from fec_mm.models import FEC
    saved['state_dict'].update({f'backbone.{k}': v for k, v in FEC('base').state_dict().items()})
    torch.save(saved, other_arch)
    out = run_fresh(SAME_WEIGHTS + '''
from mmseg.apis import MMSegInferencer, inference_model, init_model
model = init_model(config, checkpoint, device='cpu')
result = inference_model(model, photo)
inferencer = MMSegInferencer(model=config, weights=checkpoint, device='cpu')
pred = inferencer(photo, return_datasamples=True)
print_json = dict(
    init_loaded=same_weights(model, checkpoint),
    inferencer_loaded=same_weights(inferencer.model, checkpoint),
    shape=list(result.pred_sem_seg.data.shape),
    same=bool((pred.pred_sem_seg.data == result.pred_sem_seg.data).all()),
    other_arch=error_of(lambda: init_model(config, other_arch, device='cpu')))
import json; print(json.dumps(print_json))
''', config=config, checkpoint=checkpoint, photo=photo, other_arch=other_arch)
    assert out['init_loaded'] and out['inferencer_loaded'] and out['same']
    assert out['shape'] == [1, 157, 203]
    assert "FEC(arch='small') cannot take these weights" in out['other_arch']
    assert 'base.pth' in out['other_arch']


def test_mmpretrain_apis_and_packaged_test_tool(cls_trained, photo, tmp_path):
    config, checkpoint = cls_trained
    out = run_fresh(SAME_WEIGHTS + '''
from mmpretrain import ImageClassificationInferencer, get_model
model = get_model(config, pretrained=checkpoint, device='cpu')
inferencer = ImageClassificationInferencer(model=config, pretrained=checkpoint, device='cpu')
pred = inferencer(photo)[0]
print_json = dict(get_model_loaded=same_weights(model, checkpoint),
                  inferencer_loaded=same_weights(inferencer.model, checkpoint),
                  score=float(pred['pred_score']), classes=len(pred['pred_scores']),
                  truncated=error_of(lambda: get_model(config, pretrained=truncated)))
import json; print(json.dumps(print_json))
''', config=config, checkpoint=checkpoint, photo=photo, **bad_checkpoints(checkpoint, tmp_path))
    assert out['get_model_loaded'] and out['inferencer_loaded']
    assert 0 < out['score'] <= 1 and out['classes'] >= 2
    assert 'truncated.pth is truncated or corrupted' in out['truncated']

    import mmpretrain
    tool = Path(mmpretrain.__file__).parent / '.mim' / 'tools' / 'test.py'
    result = subprocess.run(
        [sys.executable, str(tool), str(config), str(checkpoint), '--work-dir',
         str(tmp_path / 'mmpretrain_test')], capture_output=True, text=True, cwd=str(REPO),
        env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO)), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'accuracy/top1' in result.stdout + result.stderr
    assert np.isfinite(float(result.stdout.split('accuracy/top1:')[-1].split()[0]))


# The authors' released files, laid out as their training wrote them
# (tests/authors_checkpoints.py), made of a trained demo model's weights:
# loaded as they are through each library's API and tools/test.py, they give
# the weights of the demo checkpoint and the predictions of the converted
# file; another task's file is refused naming the parts it lacks.
AS_RELEASED = SAME_WEIGHTS + """
import json
def as_json(**values):
    print(json.dumps(values))
"""


def as_released(trained_pair, task: str, tmp: Path) -> dict:
    """The authors'-layout file of a trained demo checkpoint, its converted
    form, and an authors' file of another task (small, random weights)."""
    from authors_checkpoints import authors_file, build, perturbed
    from fec_reference_to_mm import main as convert_tool
    config, checkpoint = trained_pair
    saved = torch.load(checkpoint, weights_only=False)
    meta = saved['meta'].get('dataset_meta', {})
    authors = authors_file(saved['state_dict'], 'small', task, tmp / f'authors_{task}.pth',
                           classes=meta.get('classes'), palette=meta.get('palette'))
    converted = tmp / f'authors_{task}_converted.pth'
    convert_tool([str(authors), str(converted)])
    other_task = 'det' if task == 'cls' else 'cls'
    other = authors_file(perturbed(build(other_task, 'small'), 1), 'small', other_task,
                         tmp / f'authors_{other_task}.pth', classes=['a', 'b', 'c'])
    return dict(config=config, checkpoint=checkpoint, authors=authors, converted=converted,
                other=other, work=tmp / 'work')


sys.path.insert(0, str(REPO / 'tools' / 'model_converters'))


def test_authors_detector_as_released(det_trained, photo, tmp_path):
    out = run_fresh(AS_RELEASED + """
from mmdet.apis import DetInferencer, init_detector
from mmengine.config import Config
from mmengine.runner import Runner
from fec_mm.engine.testing import build_test_parser, test
from fec_mm.models.whole_model import backbone_only_loading
preds, loaded = [], []
for weights in (authors, converted, checkpoint):
    inferencer = DetInferencer(model=config, weights=weights, device='cpu')
    p = inferencer(photo, return_vis=False, return_datasamples=True)['predictions'][0]
    preds.append(p.pred_instances)
    loaded.append(same_weights(inferencer.model, checkpoint))
model = init_detector(config, authors, device='cpu')
metrics = [test(build_test_parser().parse_args([config, w, '--work-dir', f'{work}/{i}']))
           for i, w in enumerate((authors, converted))]
cfg = Config.fromfile(config)
cfg.work_dir, cfg.load_from = f'{work}/load_from', authors
runner = Runner.from_cfg(cfg)
runner.load_or_resume()
def load_from_other(backbone_only):
    cfg.load_from = other
    runner = Runner.from_cfg(cfg)
    if backbone_only:
        with backbone_only_loading():
            runner.load_or_resume()
    else:
        runner.load_or_resume()
same = lambda a, b: all(torch.equal(a[k], b[k]) for k in ('bboxes', 'scores', 'labels', 'masks'))
as_json(loaded=loaded, init_loaded=same_weights(model, checkpoint),
        load_from_loaded=same_weights(runner.model, checkpoint),
        classes=list(model.dataset_meta['classes']), detections=len(preds[0]),
        same_as_converted=same(preds[0], preds[1]), same_as_ours=same(preds[0], preds[2]),
        metrics=metrics, other_init=error_of(lambda: init_detector(config, other, device='cpu')),
        other_inferencer=error_of(lambda: DetInferencer(model=config, weights=other,
                                                        device='cpu')),
        other_load_from=error_of(lambda: load_from_other(False)),
        other_backbone_only=error_of(lambda: load_from_other(True)))
""", photo=photo, **as_released(det_trained, 'det', tmp_path))
    assert out['loaded'] == [True] * 3 and out['init_loaded'] and out['load_from_loaded']
    assert out['classes'] == ['circle', 'square', 'triangle']
    assert out['same_as_converted'] and out['same_as_ours'] and out['detections'] > 0
    assert out['metrics'][0] == out['metrics'][1] and 'coco/bbox_mAP' in out['metrics'][0]
    for key in ('other_init', 'other_inferencer', 'other_load_from'):
        assert 'authors_cls.pth is not a whole MaskRCNN' in out[key], out[key]
        assert 'neck, rpn_head, roi_head' in out[key]
    assert out['other_backbone_only'] is None


def test_authors_segmentor_as_released(seg_trained, photo, tmp_path):
    out = run_fresh(AS_RELEASED + """
from mmseg.apis import MMSegInferencer, inference_model, init_model
preds, loaded = [], []
for weights in (authors, converted, checkpoint):
    inferencer = MMSegInferencer(model=config, weights=weights, device='cpu')
    preds.append(inferencer(photo, return_datasamples=True).pred_sem_seg.data)
    loaded.append(same_weights(inferencer.model, checkpoint))
model = init_model(config, authors, device='cpu')
by_init = inference_model(model, photo).pred_sem_seg.data
as_json(loaded=loaded, init_loaded=same_weights(model, checkpoint),
        meta=model.dataset_meta, inferencer_meta=inferencer.model.dataset_meta,
        same_as_converted=bool(torch.equal(preds[0], preds[1])),
        same_as_ours=bool(torch.equal(preds[0], preds[2])),
        same_by_init=bool(torch.equal(preds[0], by_init)),
        other_init=error_of(lambda: init_model(config, other, device='cpu')),
        other_inferencer=error_of(lambda: MMSegInferencer(model=config, weights=other,
                                                          device='cpu')))
""", photo=photo, **as_released(seg_trained, 'seg', tmp_path))
    assert out['loaded'] == [True] * 3 and out['init_loaded']
    assert out['meta']['classes'] == ['painting', 'box', 'ball', 'flag']
    assert len(out['meta']['palette']) == 4
    assert out['same_as_converted'] and out['same_as_ours'] and out['same_by_init']
    for key in ('other_init', 'other_inferencer'):
        assert 'authors_cls.pth is not a whole EncoderDecoder' in out[key], out[key]
        assert 'neck, decode_head' in out[key]


def test_authors_classifier_as_released(cls_trained, photo, tmp_path):
    out = run_fresh(AS_RELEASED + """
from mmpretrain import ImageClassificationInferencer, get_model
scores, loaded = [], []
for weights in (authors, converted, checkpoint):
    inferencer = ImageClassificationInferencer(model=config, pretrained=weights, device='cpu')
    scores.append(inferencer(photo)[0]['pred_scores'].tolist())
    loaded.append(same_weights(inferencer.model, checkpoint))
model = get_model(config, pretrained=authors, device='cpu')
as_json(loaded=loaded, get_model_loaded=same_weights(model, checkpoint), scores=scores,
        other=error_of(lambda: get_model(config, pretrained=other, device='cpu')))
""", photo=photo, **as_released(cls_trained, 'cls', tmp_path))
    assert out['loaded'] == [True] * 3 and out['get_model_loaded']
    assert out['scores'][0] == out['scores'][1] == out['scores'][2]
    assert 'authors_det.pth is not a whole ImageClassifier' in out['other']
    assert 'no weights for head (' in out['other']


def test_context_cluster_checkpoints_in_mmdet_and_mmseg_apis(demo_root, photo, tmp_path):
    """CoC Mask R-CNN and Semantic FPN demo checkpoints from tools/train.py
    load and predict through mmdet's and mmseg's APIs (one fresh process for
    both); an FEC checkpoint given to the CoC config is refused naming both
    backbones and the file."""
    (tmp_path / 'det').mkdir()
    (tmp_path / 'seg').mkdir()
    det_config, det_ckpt = trained('coc_maskrcnn_demo.py', demo_root, tmp_path / 'det')
    seg_config, seg_ckpt = trained('coc_semfpn_demo.py', demo_root, tmp_path / 'seg')
    # Whole models whose backbone is FEC-Small (CoC-Tiny's widths: the neck
    # and heads fit), so only the family check can refuse them.
    from fec_mm.models import FEC
    fec_backbone = {f'backbone.{k}': v for k, v in FEC('small').state_dict().items()}

    def with_fec_backbone(checkpoint: Path, name: str) -> Path:
        saved = torch.load(checkpoint, weights_only=False)
        saved['state_dict'] = {k: v for k, v in saved['state_dict'].items()
                               if not k.startswith('backbone.')} | fec_backbone
        torch.save(saved, tmp_path / name)
        return tmp_path / name
    out = run_fresh(SAME_WEIGHTS + '''
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmseg.apis import MMSegInferencer, inference_model, init_model
inferencer = DetInferencer(model=det_config, weights=det_ckpt, device='cpu')
pred = inferencer(photo, return_vis=False)['predictions'][0]
detector = init_detector(det_config, det_ckpt, device='cpu')
boxes = inference_detector(detector, photo).pred_instances.bboxes
segmentor = init_model(seg_config, seg_ckpt, device='cpu')
seg = inference_model(segmentor, photo).pred_sem_seg.data
seg_inferencer = MMSegInferencer(model=seg_config, weights=seg_ckpt, device='cpu')
seg_pred = seg_inferencer(photo, return_datasamples=True).pred_sem_seg.data
print_json = dict(
    backbones=[type(m.backbone).__name__ for m in (inferencer.model, detector, segmentor,
                                                    seg_inferencer.model)],
    loaded=[same_weights(inferencer.model, det_ckpt), same_weights(detector, det_ckpt),
            same_weights(segmentor, seg_ckpt), same_weights(seg_inferencer.model, seg_ckpt)],
    scores=pred['scores'],
    same_boxes=torch.allclose(torch.tensor(pred['bboxes']).reshape(-1, 4), boxes, atol=1e-3),
    seg_shape=list(seg.shape), same_seg=bool((seg == seg_pred).all()),
    fec_to_det=error_of(lambda: init_detector(det_config, fec_det, device='cpu')),
    fec_to_seg=error_of(lambda: init_model(seg_config, fec_seg, device='cpu')))
import json; print(json.dumps(print_json))
''', det_config=det_config, det_ckpt=det_ckpt, seg_config=seg_config, seg_ckpt=seg_ckpt,
                   photo=photo, fec_det=with_fec_backbone(det_ckpt, 'fec_small_det.pth'),
                   fec_seg=with_fec_backbone(seg_ckpt, 'fec_small_seg.pth'))
    assert out['backbones'] == ['ContextCluster'] * 4
    assert out['loaded'] == [True] * 4
    assert out['same_boxes'] and all(0 <= s <= 1 for s in out['scores'])
    assert out['seg_shape'] == [1, 157, 203] and out['same_seg']
    for error, name in ((out['fec_to_det'], 'fec_small_det.pth'),
                        (out['fec_to_seg'], 'fec_small_seg.pth')):
        assert 'ContextCluster cannot take the checkpoint' in error, error
        assert 'it holds FEC weights' in error and name in error, error

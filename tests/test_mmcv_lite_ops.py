"""mmcv-lite's ``mmcv._ext`` from fec-mm-mmcv-ops (``mmcv_lite_ops/``) against full mmcv.

The golden outputs (``tests/data/mmcv_ops_golden.pt``) come from the compiled
mmcv (``tools/record_mmcv_ops_golden.py``). The value tests run mmcv.ops' own
Python wrappers on two backends: ``env``, this environment's ``mmcv._ext``
(the provider on the default set-up, the compiled one after
``make setup MMCV=full``), and ``provider``, ``mmcv_lite_ops/mmcv/_ext.py``
of this checkout put in its place, so both set-ups test the provider.
"""
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import mmcv
import mmcv._ext
import numpy as np
import pytest
import torch
from mmcv.ops import RoIAlign, batched_nms, nms, sigmoid_focal_loss

REPO = Path(__file__).resolve().parents[1]
PROVIDER_FILE = REPO / 'mmcv_lite_ops' / 'mmcv' / '_ext.py'
GOLDEN = torch.load(REPO / 'tests' / 'data' / 'mmcv_ops_golden.pt', weights_only=True)
COMPILED = mmcv._ext.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
OP_MODULES = ('nms', 'roi_align', 'focal_loss', 'deform_conv', 'carafe')


def _load_provider() -> ModuleType:
    spec = importlib.util.spec_from_file_location('fec_mm_test_mmcv_lite_ext', PROVIDER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROVIDER = _load_provider()


@pytest.fixture(params=['env', 'provider'])
def backend(request, monkeypatch) -> str:
    """Which mmcv._ext mmcv.ops' wrappers call (see the module docstring)."""
    if request.param == 'provider':
        for name in OP_MODULES:
            monkeypatch.setattr(importlib.import_module(f'mmcv.ops.{name}'), 'ext_module',
                                PROVIDER)
    return request.param


def _case_id(case: dict) -> str:
    return case['name']


def test_golden_file_is_full_mmcv():
    assert GOLDEN['mmcv'] == mmcv.__version__ == '2.1.0'
    assert len(GOLDEN['nms']) >= 10 and len(GOLDEN['roi_align']) >= 4
    # The cases have teeth: most suppress boxes, and torchvision's nms called
    # naively (its float64 threshold, its own sort) keeps other boxes in some.
    kept = [len(c['keep']) < len(c['boxes']) for c in GOLDEN['nms'] if len(c['boxes'])]
    assert sum(kept) >= len(kept) - 1
    naive = [torch.ops.torchvision.nms(c['boxes'], c['scores'], c['iou_threshold'])
             for c in GOLDEN['nms'] if len(c['boxes']) and 'max_num' not in c]
    golden = [c['keep'] for c in GOLDEN['nms'] if len(c['boxes']) and 'max_num' not in c]
    assert any(not torch.equal(a, b) for a, b in zip(naive, golden))


@pytest.mark.parametrize('case', GOLDEN['nms'], ids=_case_id)
def test_nms_keeps_full_mmcvs_boxes(backend, case):
    kwargs = {k: case[k] for k in ('score_threshold', 'max_num') if k in case}
    dets, keep = nms(case['boxes'], case['scores'], case['iou_threshold'], **kwargs)
    assert torch.equal(keep, case['keep'])
    assert torch.equal(dets, torch.cat([case['boxes'][keep], case['scores'][keep, None]], 1))
    # numpy in, numpy out, as in mmcv
    dets_np, keep_np = nms(case['boxes'].numpy(), case['scores'].numpy(), case['iou_threshold'],
                           **kwargs)
    assert isinstance(keep_np, np.ndarray) and np.array_equal(keep_np, case['keep'].numpy())


@pytest.mark.parametrize('case', GOLDEN['batched_nms'], ids=_case_id)
def test_batched_nms_keeps_full_mmcvs_boxes(backend, case):
    dets, keep = batched_nms(case['boxes'], case['scores'], case['idxs'], dict(case['nms_cfg']),
                             case['class_agnostic'])
    assert torch.equal(keep, case['keep'])
    assert torch.equal(dets, torch.cat([case['boxes'][keep], case['scores'][keep, None]], 1))


def test_nms_iou_exactly_at_the_threshold_is_kept(backend):
    # IoU 3/5 is float32(0.6) exactly; mmcv suppresses only above the
    # threshold in float32 (float64 0.6 is below float32(0.6)).
    boxes = torch.tensor([[0., 0., 5., 1.], [0., 0., 3., 1.], [0., 0., 2., 1.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoUs: (0, 1) 3/5, (0, 2) 2/5, (1, 2) 2/3.
    assert nms(boxes, scores, 0.6)[1].tolist() == [0, 1]
    assert nms(boxes, scores, 0.59)[1].tolist() == [0, 2]


@pytest.mark.parametrize('case', GOLDEN['roi_align'], ids=_case_id)
def test_roi_align_forward_backward_match_full_mmcv(backend, case):
    feats = case['input'].clone().requires_grad_()
    layer = RoIAlign(case['output_size'], case['spatial_scale'], case['sampling_ratio'],
                     aligned=case['aligned'])
    out = layer(feats, case['rois'])
    out.backward(case['grad_output'])
    torch.testing.assert_close(out, case['output'], atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.grad, case['grad_input'], atol=1e-5, rtol=0)
    assert case['output'].abs().sum() > 0 and case['grad_input'].abs().sum() > 0


def test_roi_align_gradcheck(backend):
    feats = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, -1.3, 0.4, 4.2, 5.9], [0, 2.1, 1.7, 8.5, 3.3]], dtype=torch.float64)
    layer = RoIAlign((2, 3), 1.0, 2, aligned=True)
    assert torch.autograd.gradcheck(lambda x: layer(x, rois), (feats,))


def _focal_inputs():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 6, generator=gen) * 3).requires_grad_()
    target = torch.randint(0, 7, (40,), generator=gen)  # 6 = background
    return logits, target


@pytest.mark.parametrize('reduction', ['none', 'mean'])
def test_sigmoid_focal_loss_matches_mmdets_pytorch_loss(backend, reduction):
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    if backend == 'env' and COMPILED:
        pytest.skip("the compiled mmcv's sigmoid_focal_loss has no CPU kernel")
    logits, target = _focal_inputs()
    loss = sigmoid_focal_loss(logits, target, 2.0, 0.25, None, reduction)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    x = logits.detach().requires_grad_()
    one_hot = torch.nn.functional.one_hot(target, 7)[:, :6].float()
    ref = py_sigmoid_focal_loss(x, one_hot, None, 2.0, 0.25, reduction='none')
    ref = ref.sum() / len(x) if reduction == 'mean' else ref
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_sigmoid_focal_loss_class_weight(backend):
    if backend == 'env' and COMPILED:
        pytest.skip("the compiled mmcv's sigmoid_focal_loss has no CPU kernel")
    logits, target = _focal_inputs()
    target = target.clamp(max=5)  # mmcv indexes the class weight by the target
    weight = torch.linspace(0.5, 2.0, 6)
    plain = sigmoid_focal_loss(logits, target, 2.0, 0.25, None, 'none')
    weighted = sigmoid_focal_loss(logits, target, 2.0, 0.25, weight, 'none')
    torch.testing.assert_close(weighted, plain * weight[target][:, None])


@pytest.mark.parametrize('call', [
    lambda ext: ext.deform_conv_forward(torch.zeros(1)),
    lambda ext: ext.carafe_forward(torch.zeros(1)),
    lambda ext: ext.nms(torch.rand(3, 4), torch.rand(3), iou_threshold=0.5, offset=1),
    lambda ext: ext.roi_align_forward(torch.rand(1, 1, 4, 4), torch.tensor([[0., 0, 0, 2, 2]]),
                                      torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2),
                                      torch.zeros(1, 1, 2, 2), aligned_height=2, aligned_width=2,
                                      spatial_scale=1.0, sampling_ratio=0, pool_mode=0,
                                      aligned=True),
], ids=['deform_conv', 'carafe', 'nms_offset1', 'roi_align_max'])
def test_missing_kernels_name_themselves_and_the_switch(call):
    with pytest.raises(PROVIDER.MissingMmcvOpError) as error:
        call(PROVIDER)
    message = str(error.value)
    assert 'make setup MMCV=full' in message and 'mmcv-lite' in message
    assert any(name in message for name in ('deform_conv_forward', 'carafe_forward',
                                            'offset=1', "pool_mode='max'"))


def test_provider_is_a_plain_module():
    # The import system probes dunders: they must not turn into kernels.
    assert not hasattr(PROVIDER, '__path__')
    with pytest.raises(AttributeError):
        PROVIDER._private
    assert callable(PROVIDER.modulated_deform_conv_forward)  # what load_ext asserts
    assert 'mmcv-lite' in PROVIDER.get_compiler_version()


@pytest.mark.skipif(COMPILED, reason='full mmcv runs deformable convolution')
def test_config_with_deformable_conv_fails_naming_the_op_and_the_switch():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(dict(
        type='ResNet', depth=50, out_indices=(3,),
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, False, False, True)))
    with pytest.raises(NotImplementedError, match=r"modulated_deform_conv_forward.*"
                       r"mmcv\.ops\.modulated_deform_conv.*make setup MMCV=full"):
        model(torch.rand(1, 3, 64, 64))


def test_this_environments_mmcv_ext():
    dists = {d.metadata['Name'] for d in importlib.metadata.distributions()}
    if COMPILED:  # full mmcv: the provider is not installed, mmcv-lite neither
        assert 'mmcv' in dists and not {'mmcv-lite', 'fec-mm-mmcv-ops'} & dists
    else:  # the default set-up: mmcv-lite with this checkout's provider
        assert {'mmcv-lite', 'fec-mm-mmcv-ops'} <= dists and 'mmcv' not in dists
        assert Path(mmcv._ext.__file__).read_text() == PROVIDER_FILE.read_text(), (
            'the installed fec-mm-mmcv-ops is not this checkout\'s: run `make setup`')


def test_compiled_module_wins_over_a_source_file_of_the_same_name(tmp_path):
    # Why a compiled mmcv._ext is never shadowed by the provider's _ext.py:
    # Python tries extension modules before source files in a folder.
    for name in ('_bisect', '_json', '_heapq', '_random'):
        origin = getattr(importlib.util.find_spec(name), 'origin', None) or ''
        if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            break
    else:
        pytest.skip('no stdlib extension module to copy')
    package = tmp_path / 'pkg_with_both'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / f'{name}.py').write_text('SOURCE = True\n')
    shutil.copy(origin, package / Path(origin).name)
    code = (f'import pkg_with_both.{name} as m, sys; '
            "sys.exit(0 if m.__file__.endswith('.so') and not hasattr(m, 'SOURCE') else 1)")
    assert subprocess.run([sys.executable, '-c', code], cwd=tmp_path).returncode == 0


def test_mmdet_inferencer_first_then_ops_in_a_fresh_process():
    # Whatever the user imports first: mmdet.apis before any config or op.
    code = '\n'.join([
        'from mmdet.apis import DetInferencer',
        'import mmcv._ext, torch',
        'from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor',
        'from mmdet.models.layers import multiclass_nms',
        "ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0),",
        '                         8, [4, 8])',
        'feats = [torch.rand(1, 8, 32, 32), torch.rand(1, 8, 16, 16)]',
        'rois = torch.tensor([[0., 4, 4, 60, 50], [0, 10, 2, 120, 100]])',
        'assert ext(feats, rois).abs().sum() > 0',
        'boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])',
        'scores = torch.tensor([[0.9, 0.1], [0.8, 0.1], [0.7, 0.1]])',
        "dets, labels = multiclass_nms(boxes, scores, 0.05, dict(type='nms', iou_threshold=0.5))",
        'assert labels.tolist() == [0, 0], labels',
        'print(mmcv._ext.__file__)',
    ])
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mmcv._ext.__file__

"""The ContextCluster backbone (docs/notes/design.md §7): presets and parameter counts,
equality with the authors' models/context_cluster.py (recorded outputs of
their code in tests/data, and live when their repository was fetched), the
authors' checkpoint layout, FEC/CoC checkpoints refused across, conventions."""
import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from fec_mm.analysis import coc_reference as cr
from fec_mm.models import FEC, ContextCluster
from fec_mm.models.coc_checkpoint import convert_coc_state_dict

RECORD = os.path.join(os.path.dirname(__file__), 'data', 'coc_reference_outputs.pt')
# Where `fetch github:ma-xu/Context-Cluster` puts the authors' repository.
AUTHORS_REPO = '/work/.mirror/ma-xu+Context-Cluster/repo'


@pytest.mark.parametrize('arch,params', [('tiny', 5_570_584), ('tiny_plain', 5_570_584),
                                         ('small', 14_657_024), ('medium', 29_290_520)])
def test_param_counts_match_spec(arch, params):
    """§7: the authors' classifiers (backbone, last norm, 1000-class head)."""
    model = ContextCluster(arch, out_indices=(3,))
    width = model.arch['widths'][3]
    assert sum(p.numel() for p in model.parameters()) + width * 1000 + 1000 == params


def _recorded():
    return torch.load(RECORD, weights_only=True)['cases']


@pytest.mark.parametrize('impl', ['reference', 'auto'])
@pytest.mark.parametrize('name', ['cls_tiny_224', 'det_small_feat5_256x320'])
def test_equals_recorded_outputs_of_the_authors_code(name, impl):
    """The same seeded weights, through the converter (their dense MLPs as
    1×1 convs), give the outputs their code gave (recorded at commit be9a03b)."""
    recorded = _recorded()[name]
    case = cr.CASES[name]
    assert all(recorded[k] == case[k] for k in ('arch', 'dense', 'num_centers', 'size'))
    x, weights = cr.case_inputs(case)
    outs = cr.ours_forward(cr.build_ours(case['arch'], case['num_centers'], case['dense'], impl),
                           weights, x, case['dense'])
    assert len(outs) == len(recorded['probes'])
    for got, expected in zip(cr.probe(outs), recorded['probes']):
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * expected.abs().max())


@pytest.mark.skipif(not os.path.isdir(AUTHORS_REPO),
                    reason=f'the authors\' repository is not fetched ({AUTHORS_REPO})')
def test_equals_the_authors_code_live():
    module = cr.load_authors_module(AUTHORS_REPO)
    case = cr.CASES['cls_tiny_plain_224']
    x, weights = cr.case_inputs(case)
    theirs = cr.authors_forward(module, case, x, weights)
    ours = cr.ours_forward(cr.build_ours(case['arch'], ops_impl='auto'), weights, x, False)
    assert cr.max_difference(ours, theirs) < 1e-5
    # the similarity weighting matters: FEC's mean update gives other outputs
    mean = cr.build_ours(case['arch'])
    for m in mean.modules():
        if hasattr(m, 'aggregation'):
            m.aggregation = 'mean'
    assert cr.max_difference(cr.ours_forward(mean, weights, x, False), theirs) > 1e-3


def test_conv_mlp_weights_are_reshaped_and_reported():
    model = ContextCluster('tiny', out_indices=(0,))
    authors = cr.to_authors_layout(cr.random_weights(model), dense=True, conv_mlp=True)
    assert authors['network.0.0.mlp.fc1.weight'].shape == (256, 32, 1, 1)
    converted, reshaped = convert_coc_state_dict(authors)
    assert len(reshaped) == 2 * 3 and 'stages.0.0.mlp.fc1.weight' in reshaped
    model.load_state_dict(converted)  # strict
    assert torch.equal(model.stages[0][0].mlp.fc1.weight,
                       authors['network.0.0.mlp.fc1.weight'].flatten(1))


def test_fec_and_coc_checkpoints_are_refused_across(tmp_path):
    # CoC-Small's blocks have FEC-Base's shapes: only the family check stops it.
    coc = ContextCluster('small').state_dict()
    with pytest.raises(ValueError, match="FEC cannot take.*ContextCluster weights.*"
                                         "type='ContextCluster'"):
        FEC('base').load_state_dict(coc, strict=False)
    authors = cr.to_authors_layout(coc, dense=True)
    path = str(tmp_path / 'coc_small_authors.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in authors.items()}}, path)
    fec = FEC('base', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match='FEC cannot take.*ContextCluster'):
        fec.init_weights()
    with pytest.raises(ValueError, match="ContextCluster cannot take.*FEC weights.*type='FEC'"):
        ContextCluster('tiny').load_state_dict(FEC('small').state_dict(), strict=False)


def test_authors_file_loads_through_init_cfg(tmp_path):
    model = ContextCluster('tiny', num_centers=5)
    weights = cr.random_weights(model, seed=3)
    path = str(tmp_path / 'coc_tiny_feat5_maskrcnn.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               cr.to_authors_layout(weights, dense=True, conv_mlp=True).items()},
                'meta': {}}, path)
    loaded = ContextCluster('tiny', num_centers=5,
                            init_cfg=dict(type='Pretrained', checkpoint=path))
    loaded.init_weights()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, weights[key]), key
    wrong = ContextCluster('small', num_centers=5, init_cfg=dict(type='Pretrained',
                                                                 checkpoint=path))
    with pytest.raises(ValueError, match="ContextCluster\\(arch='small'\\) cannot take"):
        wrong.init_weights()


def test_folds_that_do_not_divide_name_the_padding():
    model = ContextCluster('tiny')
    assert model.size_divisor == 32
    with pytest.raises(ValueError, match='folds \\(8, 4, 2, 1\\) do not divide.*200x224.*'
                                         'by 24 rows and 0 columns.*size_divisor=32'):
        model(torch.randn(1, 3, 200, 224))
    assert ContextCluster('tiny_plain').size_divisor == 4
    assert ContextCluster('tiny', folds=(2, 2, 1, 1)).size_divisor == 16


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="ContextCluster: unknown arch 'big'.*medium"):
        ContextCluster('big')
    with pytest.raises(ValueError, match='ContextCluster: folds must be'):
        ContextCluster(folds=(8, 4, 2))
    with pytest.raises(ValueError, match='ContextCluster: out_indices must be in'):
        ContextCluster(out_indices=(4,))
    with pytest.raises(ValueError, match='ContextCluster: unknown ops_impl'):
        ContextCluster(ops_impl='cuda')
    with pytest.raises(ValueError, match='ContextCluster: frozen_stages'):
        ContextCluster(frozen_stages=4)


def test_outputs_init_freezing_and_checkpointing():
    torch.manual_seed(0)
    model = ContextCluster('tiny', num_centers=(3, 2, 2, 2), folds=(2, 2, 1, 1),
                           frozen_stages=0, drop_path_rate=0.1)
    # the authors' init: linears trunc-normal 0.02, layer scale 1e-5, alpha 1, beta 0
    fc1 = model.stages[1][0].mlp.fc1
    assert 0.015 < fc1.weight.std() < 0.025 and fc1.bias.abs().max() == 0
    assert model.stages[0][0].layer_scale_1.eq(1e-5).all()
    assert model.stages[0][0].token_mixer.sim_alpha.item() == 1.0
    assert model.stages[0][0].token_mixer.aggregation == 'similarity'
    x = torch.randn(2, 3, 64, 96)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 64, 8, 12),
                                              (2, 196, 4, 6), (2, 320, 2, 3)]
    model.train()
    assert not model.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert model.downsamples[0].weight.requires_grad and not model.stages[0].training
    # with_cp: same gradients
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        m = ContextCluster('tiny', out_indices=(3,), with_cp=with_cp, ops_impl='reference')
        m.train()
        m(x)[0].square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_downstream_registry_builds_context_cluster(library):
    from mmengine.registry import MODELS
    assert MODELS.get('ContextCluster') is ContextCluster
    registry = importlib.import_module(f'{library}.registry').MODELS
    model = registry.build(dict(type='ContextCluster', arch='small', num_centers=5,
                                folds=(8, 4, 2, 1), out_indices=(0, 1, 2, 3)))
    assert type(model) is ContextCluster and model.num_centers == (5, 5, 5, 5)
    assert 'ContextCluster' not in registry.module_dict


COC_CONFIGS = sorted((Path(__file__).resolve().parents[1] / 'configs' / 'context_cluster')
                     .glob('*.py'))


def test_configs_of_the_released_models():
    """One config per released model (Mask R-CNN and Semantic FPN small/medium
    x 4/25/49 centers, four classifiers), with the authors' settings."""
    expected = {f'{task}_coc-{arch}-{n}_{rest}': (arch, c)
                for task, rest in (('mask-rcnn', 'fpn_1x_coco.py'),
                                   ('fpn', 'ade20k-512x512_80k.py'))
                for arch in ('small', 'medium') for n, c in ((4, 2), (25, 5), (49, 7))}
    expected.update({f'coc-{a.replace("_", "-")}_in1k-224.py': (a, None)
                     for a in ('tiny', 'tiny_plain', 'small', 'medium')})
    assert {p.name for p in COC_CONFIGS} == set(expected)
    for path in COC_CONFIGS:
        cfg = Config.fromfile(str(path))
        backbone = cfg.model.backbone
        arch, centers = expected[path.name]
        assert backbone.type == 'ContextCluster' and backbone.arch == arch, path.name
        if centers is not None:
            assert backbone.num_centers == centers and backbone.folds == (8, 4, 2, 1)
            assert cfg.model.neck.in_channels == [64, 128, 320, 512]
        else:
            assert cfg.model.head.in_channels == (320 if 'tiny' in arch else 512)


@pytest.mark.parametrize('name', ['mask-rcnn_coc-small-25_fpn_1x_coco.py',
                                  'fpn_coc-medium-4_ade20k-512x512_80k.py',
                                  'coc-small_in1k-224.py'])
def test_released_model_configs_build_and_run(name):
    from demo_config_helpers import model_cfg, registry
    cfg = Config.fromfile(str(COC_CONFIGS[0].parent / name))
    model = registry(cfg).MODELS.build(model_cfg(cfg)).eval()
    assert isinstance(model.backbone, ContextCluster)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if cfg.default_scope == 'mmdet':
            out = model.rpn_head(model.extract_feat(x))
        else:
            out = model(x, mode='tensor')
    assert all(torch.isfinite(t).all() for t in
               (out if isinstance(out, torch.Tensor) else [t for o in out for t in o]))


def _converter():
    spec = importlib.util.spec_from_file_location(
        'coc_reference_to_mm', COC_CONFIGS[0].parents[2] / 'tools' / 'model_converters' /
        'coc_reference_to_mm.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_on_classifier_and_dense_files(tmp_path):
    convert = _converter().convert
    tiny = ContextCluster('tiny', out_indices=(3,))
    weights = cr.random_weights(tiny, num_classes=1000, seed=4)
    src = str(tmp_path / 'coc_tiny.pth.tar')
    torch.save({'state_dict': cr.to_authors_layout(weights, dense=False)}, src)
    dst = str(tmp_path / 'out' / 'coc_tiny_mm.pth')
    assert convert(src, dst) == (len(weights), 0, 'classification')
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert set(converted) == {k if k.startswith('head.') else 'backbone.' + k for k in weights}
    # dense: the neck/heads stay, the 1x1-conv MLPs are reshaped and counted
    small = ContextCluster('small', num_centers=7)
    dense = {'backbone.' + k: v for k, v in cr.to_authors_layout(
        cr.random_weights(small), dense=True, conv_mlp=True).items()}
    dense['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    src = str(tmp_path / 'mask_rcnn_coc_small_7.pth')
    torch.save({'state_dict': dense, 'meta': {}}, src)
    count, reshaped, kind = convert(src, dst)
    assert (count, reshaped) == (len(dense), 2 * 12) and kind.startswith('dense')
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert 'neck.lateral_convs.0.conv.weight' in converted
    small.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()
                           if k.startswith('backbone.')})  # strict
    src = str(tmp_path / 'fec_small.pth')
    torch.save({'state_dict': FEC('small').state_dict()}, src)
    with pytest.raises(ValueError, match='ContextCluster cannot take the checkpoint .*fec_small'):
        convert(src, dst)


def test_whole_detector_loads_the_authors_file(tmp_path):
    """A Mask R-CNN file with the backbone in the authors' layout (MLPs as 1×1
    convs, as their released dense files) loads through mmengine's
    load_checkpoint, what load_from and the libraries' APIs use: converted in place."""
    from demo_config_helpers import model_cfg, registry
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(str(COC_CONFIGS[0].parents[1] / 'demo' / 'coc_maskrcnn_demo.py'))
    build = registry(cfg).MODELS.build
    torch.manual_seed(0)
    source = build(model_cfg(cfg))
    state = source.state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    authors = {'backbone.' + k: v for k, v in
               cr.to_authors_layout(backbone, dense=True, conv_mlp=True).items()}
    authors.update({k: v for k, v in state.items() if not k.startswith('backbone.')})
    path = str(tmp_path / 'mask_rcnn_coc_tiny_authors.pth')
    torch.save({'state_dict': authors, 'meta': {}}, path)
    torch.manual_seed(1)
    target = build(model_cfg(cfg))
    load_checkpoint(target, path, strict=True)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key

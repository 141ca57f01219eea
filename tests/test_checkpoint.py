"""Loading our checkpoints and the authors' layout, and the converter tool."""
import os.path as osp
import sys
from collections import OrderedDict

import pytest
import torch
from mmengine.logging import HistoryBuffer, MMLogger

from fec_mm.models import FEC
from fec_mm.models.checkpoint import convert_reference_key

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools', 'model_converters'))
from fec_reference_to_mm import main as convert_tool  # noqa: E402

KEYS_TSV = osp.join(osp.dirname(__file__), 'data', 'reference_checkpoint_keys_small.tsv')


def reference_state_dict(dense: bool = False, seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """A random FEC-Small state dict with the authors' key names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    state_dict = OrderedDict()
    with open(KEYS_TSV) as f:
        for line in f:
            if line.startswith('# dense'):
                break  # the keys only dense backbones have, added below
            if line.startswith('#') or not line.strip():
                continue
            key, shape = line.rstrip('\n').split('\t')
            shape = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
            state_dict[key] = torch.randn(shape, generator=gen) * 0.2
    if dense:
        for key in ('norm', 'head'):
            for k in [k for k in state_dict if k.startswith(key + '.')]:
                del state_dict[k]
        for i, c in zip((0, 2, 4, 6), (32, 64, 196, 320)):
            state_dict[f'norm{i}.weight'] = 1 + torch.randn(c, generator=gen) * 0.1
            state_dict[f'norm{i}.bias'] = torch.randn(c, generator=gen) * 0.1
    return state_dict


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / 'fec.log'
    MMLogger.get_instance(f'fec_ckpt_test_{tmp_path.name}', log_file=str(path))
    return path


def _outputs(model, seed=0):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def _assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_round_trip_of_our_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = FEC(num_centers=7, folds=(2, 2, 1, 1))
    path = tmp_path / 'epoch_1.pth'
    # As mmengine saves it: full-model keys and non-tensor training state.
    torch.save({'meta': {'epoch': 1}, 'message_hub': {'loss': HistoryBuffer([1.0], [1])},
                'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}
                | {'neck.conv.weight': torch.zeros(1)}}, path)
    torch.manual_seed(1)
    target = FEC(num_centers=7, folds=(2, 2, 1, 1),
                 init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    _assert_same(_outputs(source), _outputs(target))


@pytest.mark.parametrize('wrap', ['state_dict', 'model', None])
@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_reference_layout_loads_every_key(tmp_path, log_file, wrap, prefix):
    ref = reference_state_dict()
    state = {prefix + k: v for k, v in ref.items()}
    path = tmp_path / 'ref.pth'
    torch.save({wrap: state} if wrap else state, path)
    model = FEC(out_indices=(3,), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    own = model.state_dict()
    for key, value in ref.items():
        if key.startswith('head.'):
            continue
        assert torch.equal(own[convert_reference_key(key)], value), key
    assert len(own) == len(ref) - 2  # everything but the classification head
    log = log_file.read_text()
    assert 'unexpected keys' in log and 'head.fc.weight' in log
    assert 'missing keys' not in log


def test_dense_reference_checkpoint_and_converter_give_identical_outputs(tmp_path, log_file):
    path, converted = tmp_path / 'ref_det.pth', tmp_path / 'out' / 'fec_det.pth'
    torch.save({'state_dict': reference_state_dict(dense=True)}, path)
    report = convert_tool([str(path), str(converted)])
    assert report['converted'] + report['kept'] == len(FEC().state_dict())
    outs = []
    for ckpt in (path, converted):
        model = FEC(num_centers=7, folds=(2, 2, 1, 1),
                    init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
        model.init_weights()
        outs.append(_outputs(model))
    _assert_same(*outs)
    # The norms of the dense checkpoint land on our per-stage norms.
    model_norm = model.norm2.weight
    assert torch.equal(model_norm, torch.load(path)['state_dict']['norm4.weight'])
    assert 'missing keys' not in log_file.read_text()


def test_converter_output_loads_into_an_image_classifier(tmp_path):
    from mmpretrain.registry import MODELS
    path, converted = tmp_path / 'ref.pth', tmp_path / 'cls.pth'
    ref = reference_state_dict()
    torch.save({'model': ref}, path)
    convert_tool([str(path), str(converted)])
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # whatever earlier tests left
        classifier = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='FEC', arch='small', out_indices=(3,)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000, in_channels=320)))
    result = classifier.load_state_dict(torch.load(converted)['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(classifier.head.fc.weight, ref['head.weight'])


def test_missing_keys_are_reported(tmp_path, log_file):
    ref = reference_state_dict()
    del ref['network.2.0.mlp.fc1.weight']
    path = tmp_path / 'partial.pth'
    torch.save(ref, path)
    FEC(init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()
    log = log_file.read_text()
    assert 'missing keys' in log and 'stages.1.0.mlp.fc1.weight' in log
    assert 'norm0.weight' in log  # dense norms are not in a classification checkpoint


def test_bad_checkpoints_raise_clear_errors(tmp_path, capsys):
    def load(path):
        FEC(init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()

    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load(tmp_path / 'nowhere.pth')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError,
                       match='checkpoint .*garbage.pth is not a readable torch checkpoint'):
        load(garbage)
    base = tmp_path / 'base.pth'
    torch.save(FEC(arch='base').state_dict(), base)
    with pytest.raises(ValueError, match=r'patch_embed.proj.weight has shape \(64, 5, 4, 4\)'):
        load(base)
    unrelated = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}}, unrelated)
    with pytest.raises(ValueError, match='shares no key'):
        load(unrelated)
    with pytest.raises(SystemExit):  # the converter's one-line error
        convert_tool([str(base), str(tmp_path / 'x.pth')])
    assert f"error: {base} is not in the authors' layout" in capsys.readouterr().err
    assert not (tmp_path / 'x.pth').exists()

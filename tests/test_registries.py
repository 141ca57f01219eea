"""FEC is registered once and found by mmpretrain, mmdet and mmseg."""
import importlib

import pytest

from fec_mm.models import FEC


@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_downstream_registry_builds_fec(library):
    registry = importlib.import_module(f'{library}.registry').MODELS
    model = registry.build(dict(type='FEC', arch='base', out_indices=(3,)))
    assert type(model) is FEC
    assert model.arch['widths'] == (64, 128, 320, 512)


def test_registered_once_in_the_root_registry():
    from mmengine.registry import MODELS
    assert MODELS.get('FEC') is FEC
    for library in ('mmpretrain', 'mmdet', 'mmseg'):
        registry = importlib.import_module(f'{library}.registry').MODELS
        assert 'FEC' not in registry.module_dict

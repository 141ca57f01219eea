"""The model zoo's metafile parses with the loader mmpretrain's ModelHub uses
(``modelindex``), names configs that exist, and agrees with docs/model_zoo.md
and the spec's parameter counts."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools' / 'analysis_tools'))
from count_params import SPEC_PARAMS  # noqa: E402


@pytest.fixture
def hub(monkeypatch):
    from mmpretrain.apis.model import ModelHub
    monkeypatch.setattr(ModelHub, '_models_dict', {})
    ModelHub.register_model_index(REPO / 'model-index.yml', config_prefix=REPO)
    return ModelHub._models_dict


# Classifier parameter counts of Context Clusters (docs/notes/design.md §7).
COC_PARAMS = {'tiny': 5_570_584, 'tiny-plain': 5_570_584, 'small': 14_657_024,
              'medium': 29_290_520}


def test_metafile_parses_and_matches_the_zoo_page(hub):
    assert len(hub) == 9 + 16
    page = (REPO / 'docs' / 'model_zoo.md').read_text()
    tasks = {'Image Classification': 3 + 4, 'Object Detection': 3 + 6,
             'Instance Segmentation': 3 + 6, 'Semantic Segmentation': 3 + 6}
    for name, model in hub.items():
        assert Path(model.config).is_file(), model.config
        assert model.in_collection in ('FEC', 'ContextCluster')
        source = 'paper' if model.in_collection == 'FEC' else 'authors'
        assert model.metadata.data['Results Source'].startswith(source)
        for result in model.results:
            tasks[result.task] -= 1
            for metric, value in result.metrics.items():
                assert f'{value}' in page, (name, metric)
        assert f'{model.metadata.parameters:,}' in page, name
        assert Path(model.config).relative_to(REPO).as_posix() in page
        if model.in_collection == 'FEC':
            arch = next(a for a in SPEC_PARAMS if f'fec-{a}' in name)
            expected = SPEC_PARAMS[arch]
        else:
            arch = name[len('coc-'):-len('_3rdparty_in1k')]
            expected = COC_PARAMS.get(arch)
        if name.endswith('in1k'):
            assert model.metadata.parameters == expected, name
    assert all(count == 0 for count in tasks.values()), tasks

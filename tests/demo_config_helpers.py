"""Helpers of the config tests: load configs, point demo configs at a demo
data folder made by the test, build models the way mmengine's Runner does."""
import importlib
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'configs'
REAL_CONFIGS: List[Path] = sorted(CONFIG_DIR.glob('*.py'))
DEMO_CONFIGS: List[Path] = sorted((CONFIG_DIR / 'demo').glob('*.py'))
DEMO_DATA_ROOT = 'data/demo'


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One compute thread (import this fixture into a test module to use it):
    on 2 cores shared with other jobs, torch's two spinning OpenMP threads
    made these steps 5-10x slower than one thread (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def registry(cfg: Config) -> Any:
    """The registry module (``mmdet.registry`` ...) of the config's scope, as
    the default scope."""
    init_default_scope(cfg.default_scope)
    return importlib.import_module(f'{cfg.default_scope}.registry')


def model_cfg(cfg: Config) -> dict:
    """``cfg.model`` with the top-level ``data_preprocessor`` merged in, as
    mmengine's Runner does (mmpretrain configs keep it at the top)."""
    model = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', cfg.data_preprocessor)
    return model


def _replace_root(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return new + node[len(old):] if node.startswith(old) else node
    if isinstance(node, dict):
        return {k: _replace_root(v, old, new) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_root(v, old, new) for v in node)
    return node


def load_demo_config(path: Path, data_root: Path) -> Config:
    """A demo config whose every ``data/demo`` path points at ``data_root``,
    with a visualizer of its own.

    The libraries' base configs name the visualizer ``'visualizer'``, and
    mmengine hands a later Runner in the same process the instance of that
    name an earlier one made, with the earlier run's ``save_dir``: the scalar
    log would then go to another test's folder.
    """
    cfg = Config.fromfile(str(path))
    if 'visualizer' in cfg:
        cfg.visualizer.name = f'{path.stem}-{uuid.uuid4().hex}'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                'val_evaluator', 'test_evaluator'):
        if key in cfg:
            cfg[key] = _replace_root(cfg[key].to_dict() if hasattr(cfg[key], 'to_dict')
                                     else cfg[key], DEMO_DATA_ROOT, str(data_root))
    return cfg

"""FEC's default initialisation follows the authors' recipe (docs/notes/design.md §2).

The recipe is written here from its description, not from the authors' code:
``nn.Linear`` truncated normal std 0.02 with zero bias; every ``nn.Conv2d``
PyTorch's default (Kaiming-uniform a=√5, bias uniform in ±1/√fan_in);
GroupNorm weight 1, bias 0; layer scales 1e-5; α = 1, β = 0.
"""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from fec_mm.models import FEC
from fec_mm.models.cluster_block import ClusterBlock
from fec_mm.models.cluster_encoder import ClusterEncoder


def authors_recipe(model: nn.Module) -> None:
    """Re-initialise ``model`` in place as the authors' code does."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            m.reset_parameters()  # PyTorch's default
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, ClusterBlock):
            nn.init.constant_(m.layer_scale_1, 1e-5)
            nn.init.constant_(m.layer_scale_2, 1e-5)
        elif isinstance(m, ClusterEncoder):
            nn.init.ones_(m.sim_alpha)
            nn.init.zeros_(m.sim_beta)


def owners(model: nn.Module) -> dict:
    """Parameter name -> the module that holds it."""
    return {f'{mod_name}.{p_name}'.lstrip('.'): mod
            for mod_name, mod in model.named_modules()
            for p_name, _ in mod.named_parameters(recurse=False)}


def fan_in(conv: nn.Conv2d) -> int:
    return conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


@pytest.fixture(scope='module')
def ours_and_authors():
    torch.manual_seed(0)
    ours = FEC('small')
    ours.init_weights()
    torch.manual_seed(0)
    authors = FEC('small')
    torch.manual_seed(1)
    authors_recipe(authors)
    return ours, authors


def test_weights_have_the_authors_distribution_per_tensor(ours_and_authors):
    ours, authors = ours_and_authors
    ref = dict(authors.named_parameters())
    held_by = owners(ours)
    kinds = set()
    for name, p in ours.named_parameters():
        q, module = ref[name], held_by[name]
        leaf = name.rsplit('.', 1)[1]
        if isinstance(module, (nn.Conv2d, nn.Linear)) and leaf == 'weight':
            kinds.add(type(module).__name__)
            ratio = p.std().item() / q.std().item()
            assert abs(ratio - 1) < 0.05, f'{name}: std {p.std():.4f} vs recipe {q.std():.4f}'
        if isinstance(module, nn.Conv2d):
            bound = 1 / math.sqrt(fan_in(module))  # Kaiming-uniform a=√5 and the bias rule
            assert p.abs().max() <= bound + 1e-7, name
            assert p.abs().max() > 0.5 * bound, f'{name}: not spread over ±1/√fan_in'
        elif isinstance(module, nn.Linear) and leaf == 'bias':
            assert torch.equal(p, torch.zeros_like(p)), name
        elif not isinstance(module, (nn.Conv2d, nn.Linear)):
            # norms, layer scales, alpha/beta: constants, equal to the recipe's
            kinds.add(leaf if isinstance(module, nn.GroupNorm) else name.rsplit('.', 1)[1])
            assert torch.equal(p, q), f'{name}: {p.flatten()[:3]} vs recipe {q.flatten()[:3]}'
    assert {'Conv2d', 'Linear', 'weight', 'bias', 'layer_scale_1', 'layer_scale_2',
            'sim_alpha', 'sim_beta'} <= kinds


def test_conv_biases_are_uniform_in_the_fan_in_bound(ours_and_authors):
    """Pooled over all convolutions (each bias vector alone is too short for
    a std), bias · √fan_in is Uniform(-1, 1): std 1/√3."""
    ours, authors = ours_and_authors
    stds = []
    for model in (ours, authors):
        scaled = [m.bias * math.sqrt(fan_in(m)) for m in model.modules()
                  if isinstance(m, nn.Conv2d)]
        stds.append(torch.cat(scaled).std().item())
    assert abs(stds[0] / stds[1] - 1) < 0.05
    assert abs(stds[0] * math.sqrt(3) - 1) < 0.05


def test_pooling_conv_f_has_the_default_conv_spread():
    """The never-trained conv_f (fan-in 32 in the first pooling of small)
    has std 1/√(3·32) ≈ 0.10, five times a 0.02 normal."""
    torch.manual_seed(0)
    conv_f = FEC('small').cluster_poolings[0].conv_f
    expected = 1 / math.sqrt(3 * fan_in(conv_f))
    assert abs(conv_f.weight.std().item() / expected - 1) < 0.05


def test_init_cfg_overrides_the_default():
    torch.manual_seed(0)
    model = FEC('small', init_cfg=[dict(type='Constant', layer='Conv2d', val=0.5, bias=0.),
                                   dict(type='Constant', layer='Linear', val=0.25, bias=0.)])
    model.init_weights()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs and linears
    assert all(torch.all(m.weight == 0.5) and torch.all(m.bias == 0) for m in convs)
    assert all(torch.all(m.weight == 0.25) for m in linears)

"""Grad-CAM (pytorch-grad-cam, the ``tools`` extra) on an mmpretrain FEC
classifier and a real photograph: the stages run as modules, every layer
of the documented list gives a heat map, the others a clear error."""
import pytest
import torch
from demo_config_helpers import CONFIG_DIR, model_cfg, one_torch_thread, registry  # noqa: F401
from mmengine.config import Config

from fec_mm.models.hooks import HOOKABLE_LAYERS

cam_lib = pytest.importorskip('pytorch_grad_cam', reason='grad-cam is in the tools extra '
                              '(make setup EXTRAS=tools)')
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class Scores(torch.nn.Module):
    """An mmpretrain classifier as the plain module Grad-CAM wants."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x, mode='tensor')


@pytest.fixture(scope='module')
def classifier_and_photo():
    from skimage import data
    cfg = Config.fromfile(str(CONFIG_DIR / 'demo' / 'fec_cls_demo.py'))
    torch.manual_seed(0)
    model = registry(cfg).MODELS.build(model_cfg(cfg)).eval()
    rgb = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()
    rgb = torch.nn.functional.interpolate(rgb[None], size=(112, 112), mode='bilinear',
                                          antialias=True)[0]
    x = model.data_preprocessor(dict(inputs=[rgb.flip(0)]), False)['inputs']  # BGR in
    return model, x


def test_stage_hooks_see_the_stage_outputs(classifier_and_photo):
    model, x = classifier_and_photo
    seen = {}
    handles = [model.backbone.stages[k].register_forward_hook(
        lambda m, i, o, k=k: seen.__setitem__(k, o)) for k in range(4)]
    try:
        with torch.no_grad():
            out = model.backbone(x)[-1]
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == [0, 1, 2, 3]
    torch.testing.assert_close(model.backbone.norm3(seen[3]), out, rtol=0, atol=0)


def layer_names(depths):
    """The documented target layers, instantiated for the last block/stage."""
    k, j = len(depths) - 1, depths[-1] - 1
    return [n.format(k=k, j=j, i=k - 1) for n in HOOKABLE_LAYERS]


def test_every_documented_layer_gives_a_heat_map(classifier_and_photo):
    model, x = classifier_and_photo
    net = Scores(model)
    names = layer_names(model.backbone.arch['depths'])
    assert 'backbone.stages.3' in names and 'backbone.stages.3.1.token_mixer' in names
    for name in names:
        with cam_lib.GradCAM(model=net, target_layers=[model.get_submodule(name)]) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
        assert heat.shape == (1, 112, 112), name
        # Normalised to [0, 1] by the library; a layer whose hook never
        # fired fails inside the library, a blank map has no spread.
        assert heat.max() == pytest.approx(1, abs=1e-3) and heat.std() > 0.05, name


@pytest.mark.parametrize('name,owner', [('backbone.stages.3.1.mlp.fc2', 'ChannelsLastMlp.fc2'),
                                        ('backbone.stages.3.1.mlp.fc1', 'ChannelsLastMlp.fc1'),
                                        ('backbone.stages.3.1.token_mixer.proj',
                                         'ClusterEncoder.proj')])
def test_layers_applied_by_their_parent_are_a_clear_error(classifier_and_photo, name, owner):
    model, x = classifier_and_photo
    with cam_lib.GradCAM(model=Scores(model), target_layers=[model.get_submodule(name)]) as cam:
        with pytest.raises(RuntimeError, match=rf'{owner}, which never runs as a module.*'
                           r'Target a layer that runs: backbone\.stages\.\{k\}'):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])


def test_other_hooks_on_those_layers_are_left_alone(classifier_and_photo):
    """FLOP counters and scope tracers hook every module; they are not refused."""
    model, x = classifier_and_photo
    handle = model.backbone.stages[3][1].mlp.fc2.register_forward_hook(lambda *a: None)
    try:
        with torch.no_grad():
            model.backbone(x)
    finally:
        handle.remove()

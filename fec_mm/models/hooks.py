"""Which FEC layers run as modules (hooks fire on them) and a clear error
for hooks on those that do not (their weights are applied by the parent)."""
import torch.nn as nn

# Layers that run as modules, so that hooks on them fire (Grad-CAM targets,
# feature extractors); docs/user_guides/library_tools.md lists them.
HOOKABLE_LAYERS = ('backbone.stages.{k}', 'backbone.stages.{k}.{j}',
                   'backbone.stages.{k}.{j}.norm1', 'backbone.stages.{k}.{j}.token_mixer',
                   'backbone.stages.{k}.{j}.norm2', 'backbone.stages.{k}.{j}.mlp',
                   'backbone.cluster_poolings.{i}', 'backbone.norm{k}')


# Packages whose hooks on a layer expect it to run, to read its activations
# and gradients: pytorch-grad-cam (also behind mmpretrain's vis_cam.py) and
# captum. Other hooks (FLOP counters, scope tracers) hook every module and
# tolerate ones that never run.
ACTIVATION_HOOK_PACKAGES = ('pytorch_grad_cam', 'captum')


def has_activation_hook(module: nn.Module) -> bool:
    """Whether a Grad-CAM-style tool put a forward hook on ``module`` itself."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(getattr(h, '__module__', '').split('.')[0] in ACTIVATION_HOOK_PACKAGES
               for h in hooks)


def refuse_hooks(owner: nn.Module, **layers: nn.Module) -> None:
    """Raise if a Grad-CAM-style tool hooks a layer whose weights ``owner``
    applies itself: its hook would never fire and the tool would fail on
    empty activations, far from the cause."""
    for name, layer in layers.items():
        if has_activation_hook(layer):
            raise RuntimeError(
                f'a Grad-CAM hook is registered on {type(owner).__name__}.{name}, which never '
                f'runs as a module: {type(owner).__name__} applies its weights itself (fused, '
                f'with the layer scale folded in), so the hook would never fire. Target a '
                f'layer that runs: {", ".join(HOOKABLE_LAYERS)}')

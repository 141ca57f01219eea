"""Which FEC layers run as modules (hooks fire on them) and a clear error
for hooks on those that do not (their weights are applied by the parent)."""
import torch.nn as nn

# Layers that run as modules, so that hooks on them fire (Grad-CAM targets,
# feature extractors); docs/user_guides/library_tools.md lists them.
HOOKABLE_LAYERS = ('backbone.stages.{k}', 'backbone.stages.{k}.{j}',
                   'backbone.stages.{k}.{j}.norm1', 'backbone.stages.{k}.{j}.token_mixer',
                   'backbone.stages.{k}.{j}.norm2', 'backbone.stages.{k}.{j}.mlp',
                   'backbone.cluster_poolings.{i}', 'backbone.norm{k}')


def is_hooked(module: nn.Module) -> bool:
    """Whether forward or backward hooks are registered on ``module`` itself."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)


def refuse_hooks(owner: nn.Module, **layers: nn.Module) -> None:
    """Raise if a hook waits on a layer whose weights ``owner`` applies itself
    (the hook would never fire: Grad-CAM fails on empty activations)."""
    for name, layer in layers.items():
        if is_hooked(layer):
            raise RuntimeError(
                f'a hook is registered on {type(owner).__name__}.{name}, which never runs as '
                f'a module: {type(owner).__name__} applies its weights itself (fused, with '
                f'the layer scale folded in), so the hook would never fire. Hook a layer '
                f'that runs: {", ".join(HOOKABLE_LAYERS)}')

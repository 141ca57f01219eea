"""Exact share of each final cluster in each class logit (classification models).

An FEC classifier (mmpretrain ``ImageClassifier``: backbone, neck
``GlobalAveragePooling``, ``LinearClsHead``) computes

    logits = W · mean_n f_n + b = Σ_n (W · f_n + b) / N

with f_n the backbone's last output (the last stage's GN) at final token n,
which is final cluster n. So ``(W · f_n + b) / N`` is cluster n's exact
contribution to the logits: the contributions sum to the logits (the bias
shared equally). Tracing the final map paints every pixel with the
contribution of the cluster it feeds.
"""
from typing import Optional

import torch.nn as nn
from torch import Tensor


def linear_classifier_head(model: nn.Module) -> Optional[nn.Linear]:
    """The ``nn.Linear`` of a GN → global mean → linear classifier, or None
    when ``model`` is not one (detectors, segmentors, other necks/heads)."""
    neck, head = getattr(model, 'neck', None), getattr(model, 'head', None)
    fc = getattr(head, 'fc', None)
    if type(neck).__name__ != 'GlobalAveragePooling' or not isinstance(fc, nn.Linear):
        return None
    if getattr(neck, 'gap', None) is not None and not isinstance(neck.gap, nn.AdaptiveAvgPool2d):
        return None
    return fc


def class_contributions(final: Tensor, fc: nn.Linear) -> Tensor:
    """Contribution of every final cluster to every logit.

    Args:
        final (Tensor): (B, C, h, w) the backbone's last output.
        fc (nn.Linear): The head's linear layer (C -> num_classes).

    Returns:
        Tensor: (B, num_classes, h·w); summed over the last dim it gives the
        logits, (B, num_classes).
    """
    B, C, h, w = final.shape
    n = h * w
    per_token = fc.weight.to(final.dtype) @ final.reshape(B, C, n)
    return (per_token + fc.bias.to(final.dtype)[None, :, None]) / n


def contribution_map(contributions: Tensor, final_map: Tensor, cls: int) -> Tensor:
    """(B, H, W) contribution to class ``cls`` of the final cluster each pixel
    feeds (``final_map``: (B, H, W) final-cluster ids)."""
    per_cluster = contributions[:, cls]
    return per_cluster.gather(1, final_map.reshape(final_map.shape[0], -1)).reshape(
        final_map.shape)

"""Converting the authors' released FEC and Context Clusters checkpoints to
fec-mm files.

Their classification files come from timm's training script (the model's
state dict, optimizer, ``args``, ``epoch``...), their detection and
segmentation files from mmcv-full 1.6's runner under mmdet 2.24 / mmseg
0.24 (``state_dict``, ``optimizer`` and a ``meta`` with the mmcv 1.x
``config`` text, ``env_info``, ``CLASSES``, ``PALETTE``, ``hook_msgs``...).
fec-mm loads them as they are (:mod:`fec_mm.models.whole_model`);
:func:`convert_authors_checkpoint` writes the same weights under fec-mm's
names with an mmengine-style ``meta`` (``dataset_meta`` with ``classes`` and
``palette``), dropping what mmengine cannot use.
"""
import os.path as osp
from typing import Any, Dict, List, Optional

from ..checkpoints import load_checkpoint_file, state_dict_of, torch_save_atomic
from .families import convert_authors_file, is_classifier_layout

# Whole-model key differences between mmdet 2.24 -> 3.3 (Mask R-CNN, FPN)
# and mmseg 0.24 -> 1.2 (Semantic FPN): none. Both libraries' 3.x / 1.x
# model zoos serve their 2.x / 0.x files of these models unchanged (e.g.
# mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth, fpn_r50_512x512_160k_ade20k_20200718_131734
# -5b5a6ab9.pth in their metafiles), so neck and head keys are kept as they are.


def dataset_meta_of(meta: Optional[dict]) -> Optional[Dict[str, Any]]:
    """The mmengine ``dataset_meta`` (``classes``, ``palette`` as lists) of
    an mmcv 1.x ``meta`` (``CLASSES``, ``PALETTE``), or None without classes."""
    meta = meta or {}
    if 'dataset_meta' in meta:
        return dict(meta['dataset_meta'])
    if meta.get('CLASSES') is None:
        return None
    dataset_meta = {'classes': list(meta['CLASSES'])}
    if meta.get('PALETTE') is not None:
        dataset_meta['palette'] = [list(map(int, color)) for color in meta['PALETTE']]
    return dataset_meta


def convert_authors_checkpoint(src: str, dst: str) -> Dict[str, Any]:
    """Convert an authors' checkpoint (FEC or Context Clusters, any task,
    any size) to fec-mm's names.

    Args:
        src (str): Their file (classification, Mask R-CNN or Semantic FPN,
            or a backbone alone).
        dst (str): Output path; written atomically.

    Returns:
        dict: What was done: ``layout``, ``converted`` (keys mapped to
        fec-mm's names: the backbone's, and a classifier's ``head``),
        ``kept`` (neck/head keys of a whole detector or segmentor, as they are), ``dropped``
        (top-level entries and meta fields not written), ``dataset_meta`` and
        ``reshaped`` (1×1-conv MLP weights made ``nn.Linear``'s, Context
        Clusters' older dense files).

    Raises:
        FileNotFoundError, fec_mm.checkpoints.CheckpointError: ``src``
            missing or unusable.
        ValueError: ``src`` is not in the authors' layout.
        OSError: ``dst`` cannot be written.
    """
    checkpoint = load_checkpoint_file(src, map_location='cpu')
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict_of(checkpoint).items()}
    converted, layout, reshaped = convert_authors_file(state_dict)
    if layout is None:
        raise ValueError(f'{src} is not in the authors\' layout (no network.* or '
                         'backbone.network.* keys); fec-mm checkpoints need no conversion')
    mapped = (len(converted) if is_classifier_layout(layout)
              else sum(k.startswith('backbone.') for k in converted))
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    dataset_meta = dataset_meta_of(meta)
    out_meta: Dict[str, Any] = {'converted_from': osp.basename(src)}
    if dataset_meta is not None:
        out_meta['dataset_meta'] = dataset_meta
    if reshaped:
        out_meta['mlp_weights_reshaped_from_1x1_conv'] = len(reshaped)
    for key in ('epoch', 'iter'):
        if isinstance(meta.get(key, checkpoint.get(key)), int):
            out_meta[key] = meta.get(key, checkpoint.get(key))
    weights_key = next((k for k in ('state_dict', 'model') if isinstance(checkpoint.get(k), dict)),
                       None)
    dropped: List[str] = sorted(str(k) for k in checkpoint if k not in (weights_key, 'meta')
                                and k not in state_dict)
    dropped += [f'meta.{k}' for k in sorted(meta) if k not in ('CLASSES', 'PALETTE',
                                                                'dataset_meta', 'epoch', 'iter')]
    torch_save_atomic({'state_dict': converted, 'meta': out_meta}, dst)
    return dict(layout=layout, converted=mapped, kept=len(converted) - mapped,
                dropped=dropped, dataset_meta=dataset_meta, reshaped=len(reshaped))

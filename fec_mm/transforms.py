"""Test-time transform of the authors' ADE20K evaluation.

The authors evaluate their Semantic FPN models (mmseg 0.24,
``segmentation/align_resize.py`` of guikunchen/FEC) with ``AlignResize``:
the image is rescaled to fit (2048, 512) keeping its aspect ratio, as
mmseg's ``Resize``, and then *resized* (not padded) to the next multiples of
``size_divisor`` in height and width, so that every FEC input divides by 32.
mmseg 1.x's ADE20K pipeline pads instead (and crops the padding off the
prediction). :class:`AlignResize` is their second step for mmseg 1.x
pipelines, placed after ``Resize``; registered in mmengine's root
``TRANSFORMS``, which mmseg's registry falls back to.
"""
import math
from typing import Optional

import mmcv
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS


@TRANSFORMS.register_module()
class AlignResize(BaseTransform):
    """Resize the image to the next multiples of ``size_divisor``.

    As the authors' ``AlignResize`` after its keep-ratio rescale: bilinear
    ``mmcv.imresize`` of the image (nearest for ``gt_seg_map`` if loaded),
    ``img_shape`` the aligned size, ``scale_factor`` the aligned size over
    the original (``ori_shape``), so predictions are resized back to the
    original image as theirs were.

    Args:
        size_divisor (int): Height and width become multiples of it.
            Default 32 (theirs).
        interpolation (str): Image interpolation. Default 'bilinear' (theirs).

    Required keys: img, ori_shape. Modified keys: img, img_shape,
    gt_seg_map (if present). Added keys: scale_factor, keep_ratio.
    """

    def __init__(self, size_divisor: int = 32, interpolation: str = 'bilinear') -> None:
        if isinstance(size_divisor, bool) or not isinstance(size_divisor, int) \
                or size_divisor <= 0:
            raise ValueError(f'AlignResize: size_divisor must be a positive int, '
                             f'got {size_divisor!r}')
        self.size_divisor = size_divisor
        self.interpolation = interpolation

    def _aligned(self, size: int) -> int:
        return int(math.ceil(size / self.size_divisor)) * self.size_divisor

    def transform(self, results: dict) -> Optional[dict]:
        img = results['img']
        h, w = img.shape[:2]
        new_h, new_w = self._aligned(h), self._aligned(w)
        if (new_h, new_w) != (h, w):
            img = mmcv.imresize(img, (new_w, new_h), interpolation=self.interpolation)
            if results.get('gt_seg_map') is not None:
                results['gt_seg_map'] = mmcv.imresize(results['gt_seg_map'], (new_w, new_h),
                                                      interpolation='nearest')
        ori_h, ori_w = results.get('ori_shape', (h, w))[:2]
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['scale_factor'] = (new_w / ori_w, new_h / ori_h)
        results['keep_ratio'] = True
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size_divisor={self.size_divisor}, '
                f'interpolation={self.interpolation!r})')


__all__ = ['AlignResize']

"""Image errors that name the file and the cause.

An empty image file or a 3x5000 image ends, in the pipelines of mmcv, mmdet,
mmseg and mmpretrain, in a raw OpenCV assertion (``!buf.empty()`` from the
decoder, ``inv_scale_x > 0`` from a resize that leaves a side of 0 pixels)
that names neither the file nor the reason. ``import fec_mm`` (what fec-mm's
configs and tools do) calls :func:`register`: an OpenCV error raised by any
mmcv transform (``LoadImageFromFile``, ``Resize``, ...) of a sample with an
``img_path`` becomes an :class:`ImageError` naming the file, its size, the
transform and the cause. Other errors, and samples without a path, are left
as they are.
"""
import os.path as osp
from typing import Any, Optional

_registered = []


class ImageError(ValueError):
    """An image that cannot be loaded or transformed; names the file."""


def describe_image_failure(path: str, transform: str, message: str,
                           shape: Optional[tuple] = None) -> str:
    """One line: the file, its size, the transform and the cause, for an
    OpenCV error ``message``."""
    size = f' ({shape[1]}x{shape[0]} pixels)' if shape is not None and len(shape) >= 2 else ''
    if not osp.isfile(path):
        cause = 'the file does not exist'
    elif osp.getsize(path) == 0:
        cause = 'the file is empty (0 bytes)'
    elif '!buf.empty()' in message or 'imdecode' in message:
        cause = 'the file is not an image OpenCV can decode'
    elif any(s in message for s in ('inv_scale', 'dsize', 'ssize')):
        cause = ('resizing it leaves a side of 0 pixels: its aspect ratio is too extreme '
                 'for this resize')
    else:
        lines = [line for line in message.strip().splitlines() if line.strip()]
        cause = f'OpenCV: {lines[-1].strip() if lines else message}'
    return f'image {path}{size}: {transform} failed: {cause}'


def register() -> None:
    """Make OpenCV errors of mmcv transforms name the image (idempotent)."""
    if _registered:
        return
    import cv2
    from mmcv.transforms import BaseTransform
    original = BaseTransform.__call__

    def __call__(self, results: Any):
        try:
            return original(self, results)
        except cv2.error as err:
            path = results.get('img_path') if isinstance(results, dict) else None
            if not isinstance(path, str):
                raise
            img = results.get('img')
            shape = getattr(img, 'shape', None) or results.get('ori_shape')
            raise ImageError(describe_image_failure(path, type(self).__name__, str(err),
                                                    shape)) from err

    BaseTransform.__call__ = __call__
    _registered.append(original)

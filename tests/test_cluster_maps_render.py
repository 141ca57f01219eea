"""Drawing: fills and boundaries land where the labels say, in RGB order,
PNGs read back unchanged, and the sheet holds every panel."""
import numpy as np
from PIL import Image

from fec_mm.visualization.render import (
    BOUNDARY_COLOR,
    draw_sheet,
    overlay,
    palette,
    save_png,
    upscale,
)


def _scene():
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200  # red
    labels = np.zeros((20, 30), np.int64)
    labels[:, 15:] = 1
    return image, labels


def test_fills_and_boundaries():
    image, labels = _scene()
    colors = np.array([[0, 0, 255], [0, 255, 0]], np.uint8)
    assert np.array_equal(overlay(image, labels, colors, 0.0, boundaries=False), image)
    full = overlay(image, labels, colors, 1.0, boundaries=False)
    assert (full[:, :15] == (0, 0, 255)).all() and (full[:, 15:] == (0, 255, 0)).all()
    half = overlay(image, labels, colors, 0.5)
    yellow = tuple(int(255 * c) for c in BOUNDARY_COLOR)
    # 'inner' boundaries: the pixels on both sides of the cut, nowhere else.
    assert (half[:, 14] == yellow).all() and (half[:, 15] == yellow).all()
    assert tuple(half[5, 3]) == (100, 0, 128) and tuple(half[5, 25]) == (100, 128, 0)


def test_png_keeps_rgb(tmp_path):
    image, _ = _scene()
    save_png(str(tmp_path / 'a.png'), image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'a.png')), image)


def test_palette_is_fixed_and_upscale_is_nearest():
    assert np.array_equal(palette(50, seed=3), palette(50, seed=3))
    assert palette(50).shape == (50, 3) and palette(50).dtype == np.uint8
    x = np.arange(6).reshape(2, 3)
    assert np.array_equal(upscale(x, 2)[::2, ::2], x) and upscale(x, 2).shape == (4, 6)


def test_sheet_holds_every_panel():
    image, labels = _scene()
    colors = np.array([[0, 0, 255], [0, 255, 0]], np.uint8)
    panel = overlay(image, labels, colors, 1.0, boundaries=False)
    sheet = draw_sheet([('a', image), ('b', panel), ('c', panel)],
                       legend=[('group 0', (0, 0, 255))], notes=['line 1', 'line 2'])
    assert sheet.dtype == np.uint8 and sheet.shape[2] == 3
    assert sheet.shape[1] == 3 * 320
    # The pure blue and green fills of the panels are drawn.
    flat = sheet.reshape(-1, 3)
    assert ((flat == (0, 0, 255)).all(1)).sum() > 1000
    assert ((flat == (0, 255, 0)).all(1)).sum() > 1000

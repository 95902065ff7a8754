"""The display tone map shared by metrics, previews and inferred PNGs (qw.datagen.tonemap), and the motion colours of
`qw datagen preview`: plain numpy, no torch."""

import colorsys
import subprocess
import sys

import numpy as np

from qw.datagen.inspect_store import motion_colors
from qw.datagen.tonemap import tonemap, tonemap_8bit


def test_tonemap_is_reinhard_then_display_gamma_with_negatives_clamped():
    x = np.array([[-1.0, 0.0, 1.0], [3.0, 1e4, 0.25]], np.float32)
    expected = (np.maximum(x, 0) / (1 + np.maximum(x, 0))) ** (1 / 2.2)
    assert np.allclose(tonemap(x), expected, atol=1e-7) and tonemap(x).dtype == np.float32
    assert tonemap(x)[0, 0] == 0 and tonemap(x)[0, 2] == np.float32(0.5 ** (1 / 2.2))


def test_8bit_rounds_to_nearest():
    assert tonemap_8bit(np.array([0.0, 1.0, 1e9], np.float32)).tolist() == [0, round(255 * 0.5 ** (1 / 2.2)), 255]


def test_motion_colours_are_hsv_with_hue_as_direction():
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    motion = np.stack([np.cos(angles), np.sin(angles)], -1).astype(np.float32) * 2  # length 2, scale 4: value 0.5
    expected = [[round(255 * c * 0.5) for c in colorsys.hsv_to_rgb((a / (2 * np.pi)) % 1, 1, 1)] for a in angles]
    assert np.abs(motion_colors(motion, 4.0).astype(int) - np.array(expected)).max() <= 1


def test_previews_do_not_import_torch():
    code = "import sys, qw.datagen.inspect_store; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"

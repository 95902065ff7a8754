"""The display tone mapping shared by the metrics, previews and inferred PNGs: linear HDR → display values.

Reinhard x/(1+x) per channel (negatives clamped), then a 2.2 display gamma, in [0, 1]. It lives here, in numpy, so
that `qw inspect` (a datagen command) can draw previews without importing torch; the metrics apply the same curve.
"""

from __future__ import annotations

import numpy as np

DISPLAY_GAMMA = 2.2


def tonemap(linear: np.ndarray) -> np.ndarray:
    """Linear HDR (negatives clamped) → display values in [0, 1]: Reinhard x/(1+x) per channel, then gamma 2.2."""
    x = np.maximum(np.asarray(linear, np.float32), np.float32(0))
    return (x / (1 + x)) ** np.float32(1.0 / DISPLAY_GAMMA)


def tonemap_8bit(linear: np.ndarray) -> np.ndarray:
    """Linear HDR (..., 3) → 8-bit display values, rounded."""
    return (255 * np.clip(tonemap(linear), 0, 1) + 0.5).astype(np.uint8)

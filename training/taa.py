"""The TAA baseline: what a game engine does with the same jittered frames and motion vectors.

Per frame: reproject the previous output with the motion vectors (contract: pixel p was at p − m(p)) using a
Catmull-Rom bicubic filter, clamp the reprojected history to the min/max box of the current frame's 3×3
neighbourhood in YCoCg, and blend exponentially (weight `alpha` on the new frame). Colour is blended in a
luminance-compressed space (c / (1 + luma(c)), Karis 2014) so single bright samples do not dominate, then expanded
back to linear HDR. Where the history is invalid (first frame, camera cut) the output is the current frame.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from training.warp import _pixel_grid

LUMA = (0.299, 0.587, 0.114)
DEFAULT_ALPHA = 0.1


def catmull_rom_weights(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Weights of the four taps at offsets −1, 0, 1, 2 for a fractional position t in [0, 1)."""
    t2, t3 = t * t, t * t * t
    return (-0.5 * t3 + t2 - 0.5 * t,
            1.5 * t3 - 2.5 * t2 + 1.0,
            -1.5 * t3 + 2.0 * t2 + 0.5 * t,
            0.5 * t3 - 0.5 * t2)


def sample_catmull_rom(image: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Sample `image` (B,C,H,W) at pixel positions (B,2,H,W) (x, y; pixel centres at +0.5), clamping to the border."""
    b, c, h, w = image.shape
    u = positions[:, 0] - 0.5
    v = positions[:, 1] - 0.5
    x0, y0 = torch.floor(u), torch.floor(v)
    wx, wy = catmull_rom_weights(u - x0), catmull_rom_weights(v - y0)
    flat = image.reshape(b, c, h * w)
    out = torch.zeros_like(image)
    for j, wyj in enumerate(wy):
        yi = (y0 + (j - 1)).clamp(0, h - 1).long()
        for i, wxi in enumerate(wx):
            xi = (x0 + (i - 1)).clamp(0, w - 1).long()
            index = (yi * w + xi).reshape(b, 1, h * w).expand(b, c, h * w)
            out += torch.gather(flat, 2, index).reshape(b, c, h, w) * (wxi * wyj).unsqueeze(1)
    return out


def reproject(previous: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """The previous frame seen from the current one: sampled at p − m(p) with Catmull-Rom."""
    h, w = previous.shape[-2:]
    centres = _pixel_grid(h, w, previous.device, previous.dtype).permute(0, 3, 1, 2)  # (1,2,H,W): x, y
    return sample_catmull_rom(previous, centres - motion.to(previous.dtype))


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def compress_luma(rgb: torch.Tensor) -> torch.Tensor:
    """c / (1 + luma(c)): bounded, hue-preserving; `expand_luma` inverts it."""
    return rgb / (1.0 + _luma(rgb))


def expand_luma(rgb: torch.Tensor) -> torch.Tensor:
    return rgb / (1.0 - _luma(rgb)).clamp_min(1e-6)


def rgb_to_ycocg(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    return torch.stack((0.25 * r + 0.5 * g + 0.25 * b, 0.5 * r - 0.5 * b, -0.25 * r + 0.5 * g - 0.25 * b), 1)


def ycocg_to_rgb(ycocg: torch.Tensor) -> torch.Tensor:
    y, co, cg = ycocg.unbind(1)
    return torch.stack((y + co - cg, y + cg, y - co - cg), 1)


def neighbourhood_clamp(history: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Clamp `history` to the per-channel min/max of `current`'s 3×3 neighbourhood (both in the same space)."""
    hi = F.max_pool2d(F.pad(current, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    lo = -F.max_pool2d(F.pad(-current, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.maximum(torch.minimum(history, hi), lo)


def taa_step(color: torch.Tensor, previous_output: torch.Tensor | None, motion: torch.Tensor,
             alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """One TAA frame on linear HDR (B,3,H,W); `previous_output` None means the history is invalid."""
    color = color.float().clamp_min(0)
    if previous_output is None:
        return color
    current = rgb_to_ycocg(compress_luma(color))
    history = rgb_to_ycocg(compress_luma(reproject(previous_output, motion.float()).clamp_min(0)))
    blended = torch.lerp(neighbourhood_clamp(history, current), current, alpha)
    return expand_luma(ycocg_to_rgb(blended)).clamp_min(0)


def run_taa(frames: Iterable[tuple[torch.Tensor, torch.Tensor, bool]],
            alpha: float = DEFAULT_ALPHA) -> Iterator[torch.Tensor]:
    """TAA over a sequence of (color, motion, history_valid) frames, yielding each output (B,3,H,W)."""
    previous = None
    for color, motion, history_valid in frames:
        previous = taa_step(color, previous if history_valid else None, motion, alpha)
        yield previous

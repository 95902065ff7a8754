"""The TAA baselines: what a game engine does with the same jittered frames, motion vectors and depth.

`run_taa` is TAA as shipping engines do it (Karis 2014, UE4; Salvi 2016; Pedersen 2016, INSIDE). Per frame:

* **motion dilation**: each pixel reprojects with the motion of the closest surface (smallest depth) in its 3×3
  neighbourhood, so the edges of foreground objects carry their history with them;
* **reprojection** of the previous output at p − m(p) (contract: pixel p was there) with a Catmull-Rom filter;
* **history length** n per pixel, reprojected with the history: the blend weight of the new frame is
  max(1/n, `alpha`), so a fresh history converges as a running mean (1/n start-up) instead of an exponential
  that keeps the first aliased frame for long. n resets to 1 on a cut, where the reprojection leaves the screen
  and where the depth test finds a disocclusion (the previous frame saw something nearer there);
* **variance clipping**: the history is clipped toward the mean μ of the current 3×3 neighbourhood, inside the box
  μ ± `gamma`·σ in YCoCg (Salvi), along the line from μ to the history (Karis), so it keeps its hue;
* **luminance weighting**: colours are blended as c / (1 + luma(c)), so a single bright sample does not dominate
  (Karis), and where the clipped history and the current sample disagree in luminance the new frame gets more
  weight (`flicker_weight`, after Lottes and Pedersen): a large difference is new content, a small one noise;
* **unjittering** (optional, `unjitter`): the current sample is re-filtered at the pixel centre from its 3×3
  neighbours, weighted by a Gaussian of their distance (UE4's Blackman-Harris fit); the jitter offsets come with
  the frames.

`run_taa_clamp` is the simpler TAA qw shipped first (kept as `taa-clamp` for comparison): 3×3 min/max clamp in
YCoCg and a fixed exponential blend, no start-up, dilation or depth test. The default parameters of `TaaParams`
were chosen on the builtin *val* scene instances only (`benchmarks/quality.py --tune-taa`), and re-tuned on the
val instances of the game-like generators (courtyard, machinery), where `flicker_weight` 0.25 instead of 0.75
gave +0.25 dB PSNR and +0.87 dB tPSNR (docs/quality.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import torch

from qw.training.model.qwnet import kernel_taps
from qw.training.model.warp import _pixel_grid, warp

LUMA = (0.299, 0.587, 0.114)
DEFAULT_ALPHA = 0.1


class TaaFrame(NamedTuple):
    """One input frame: colour (B,3,H,W), motion (B,2,H,W), whether the history is valid, and optionally the
    planar depth (B,1,H,W) and the jitter offset (x, y) in pixels of this frame's samples."""

    color: torch.Tensor
    motion: torch.Tensor
    history_valid: bool
    depth: torch.Tensor | None = None
    jitter: tuple[float, float] | None = None


@dataclass(frozen=True)
class TaaParams:
    gamma: float | None = 1.0     # variance box half-width in standard deviations (None: no clipping)
    alpha: float = 0.2            # the smallest weight of the new frame (the 1/n start-up ends there)
    max_history: float = 16.0     # n saturates here
    flicker_weight: float = 0.25  # extra new-frame weight where clipped history and sample differ in luminance
    dilate: bool = True           # closest-depth motion dilation
    depth_tolerance: float = 0.05  # relative depth difference that counts as a disocclusion (0 = no depth test)
    unjitter: bool = True         # re-filter the current sample at the pixel centre


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


def source_positions(motion: torch.Tensor) -> torch.Tensor:
    """(B,2,H,W) positions p − m(p) in the previous frame (x, y; pixel centres at +0.5)."""
    h, w = motion.shape[-2:]
    centres = _pixel_grid(h, w, motion.device, torch.float32).permute(0, 3, 1, 2)  # (1,2,H,W): x, y
    return centres - motion.float()


def reproject(previous: torch.Tensor, motion: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The previous frame seen from the current one: sampled at p − m(p) with Catmull-Rom (`positions`: p − m(p)
    when the caller already has it from `source_positions`)."""
    positions = source_positions(motion) if positions is None else positions
    return sample_catmull_rom(previous, positions.to(previous.dtype))


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


def _neighbours(x: torch.Tensor) -> torch.Tensor:
    """(B,C,9,H,W): the 3×3 neighbourhood of every pixel (replicated at the border), row by row."""
    return torch.stack(kernel_taps(x), 2)


def neighbourhood_clamp(history: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Clamp `history` to the per-channel min/max of `current`'s 3×3 neighbourhood (both in the same space)."""
    near = _neighbours(current)
    return torch.maximum(torch.minimum(history, near.amax(2)), near.amin(2))


def variance_clip(history: torch.Tensor, current: torch.Tensor, gamma: float,
                  near: torch.Tensor | None = None) -> torch.Tensor:
    """Clip `history` toward the mean μ of `current`'s 3×3 neighbourhood into the box μ ± γσ (per channel).

    The clip moves the history along the line to μ until it enters the box (Karis's clip toward the box centre),
    instead of clamping each channel on its own, which would shift the hue. `near`: `_neighbours(current)`, when
    the caller already has it.
    """
    near = _neighbours(current) if near is None else near
    mean = near.mean(2)
    sigma = (near.square().mean(2) - mean.square()).clamp_min(0).sqrt()
    extent = (gamma * sigma).clamp_min(1e-6)
    offset = history - mean
    excess = (offset.abs() / extent).amax(1, keepdim=True)  # > 1: outside the box, along the worst channel
    return mean + offset / excess.clamp_min(1.0)


def dilate_motion(motion: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """The motion of the nearest surface (smallest depth) in each pixel's 3×3 neighbourhood."""
    closest = _neighbours(depth).argmin(2, keepdim=True)  # (B,1,1,H,W)
    near = _neighbours(motion)  # (B,2,9,H,W)
    return torch.gather(near, 2, closest.expand(-1, 2, -1, -1, -1)).squeeze(2)


def unjitter_weights(jitter: tuple[float, float]) -> torch.Tensor:
    """(9,) float32: the normalized weights exp(−2.29 d²) of the 3×3 neighbours, row by row, for samples that sit
    at pixel centre + jitter."""
    exponents = [-2.29 * ((dx + jitter[0]) ** 2 + (dy + jitter[1]) ** 2) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    weights = torch.exp(torch.tensor(exponents))
    return weights / weights.sum()


def unjitter(color: torch.Tensor, jitter: tuple[float, float], near: torch.Tensor | None = None) -> torch.Tensor:
    """`color` re-filtered at pixel centres: its samples sit at centre + jitter; Gaussian weights exp(−2.29 d²).
    `near`: `_neighbours(color)`, when the caller already has it."""
    near = _neighbours(color) if near is None else near
    return (near * unjitter_weights(jitter).to(color.device, color.dtype).reshape(1, 1, 9, 1, 1)).sum(2)


def off_screen(positions: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) True where the source position p − m(p) lies outside the previous frame."""
    h, w = positions.shape[-2:]
    x, y = positions[:, :1], positions[:, 1:]
    return (x < 0) | (x > w) | (y < 0) | (y > h)


def depth_disocclusion(motion: torch.Tensor, depth: torch.Tensor, previous_depth: torch.Tensor,
                       tolerance: float) -> torch.Tensor:
    """(B,1,H,W) True where the previous frame saw something nearer (by more than `tolerance` relative depth)
    where this surface was: it was hidden, and the history there belongs to the occluder."""
    # the farthest previous depth around the source: a surface that any nearby tap saw is not disoccluded
    farthest = _neighbours(previous_depth).amax(2)
    return warp(farthest, motion) < depth * (1.0 - tolerance)


class TemporalAA:
    """The state of `run_taa` between frames: the previous output, its history length and depth."""

    def __init__(self, params: TaaParams = TaaParams()):
        self.params = params
        self.output: torch.Tensor | None = None
        self.length: torch.Tensor | None = None
        self.depth: torch.Tensor | None = None

    def history_reset(self, motion: torch.Tensor, depth: torch.Tensor | None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B,1,H,W) True where the history restarts; `positions`: `source_positions(motion)` if already known."""
        reset = off_screen(source_positions(motion) if positions is None else positions)
        if depth is not None and self.depth is not None and self.params.depth_tolerance > 0:
            reset |= depth_disocclusion(motion, depth, self.depth, self.params.depth_tolerance)
        return reset

    def blend_weight(self, length: torch.Tensor, sample: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The new frame's weight: 1/n during start-up, at least `alpha`, more where luminances disagree."""
        p = self.params
        weight = (1.0 / length).clamp_min(p.alpha)
        if p.flicker_weight > 0:
            lc, lh = sample[:, :1], history[:, :1]
            disagreement = (lc - lh).abs() / torch.maximum(torch.maximum(lc, lh), torch.full_like(lc, 0.2))
            weight = torch.maximum(weight, (p.flicker_weight * disagreement).clamp(max=1.0))
        return weight

    def step(self, frame: TaaFrame) -> torch.Tensor:
        p = self.params
        color = frame.color.float().clamp_min(0)
        depth = None if frame.depth is None else frame.depth.float()
        current = rgb_to_ycocg(compress_luma(color))
        has_history = frame.history_valid and self.output is not None
        unjittering = p.unjitter and frame.jitter is not None
        # the 3×3 neighbourhood of the current frame, shared by the unjittering and the variance clip
        near = _neighbours(current) if unjittering or has_history else None
        sample = unjitter(current, frame.jitter, near) if unjittering else current
        if not has_history:
            length, blended = torch.ones_like(color[:, :1]), sample
        else:
            motion = frame.motion.float()
            if p.dilate and depth is not None:
                motion = dilate_motion(motion, depth)
            positions = source_positions(motion)
            reset = self.history_reset(motion, depth, positions)
            length = torch.where(reset, 1.0, (warp(self.length, motion) + 1.0).clamp(max=p.max_history))
            history = rgb_to_ycocg(compress_luma(reproject(self.output, motion, positions).clamp_min(0)))
            if p.gamma is not None:
                history = variance_clip(history, current, p.gamma, near)
            blended = torch.lerp(history, sample, self.blend_weight(length, sample, history))
        self.output = expand_luma(ycocg_to_rgb(blended)).clamp_min(0)
        self.length, self.depth = length, depth
        return self.output


def run_taa(frames: Iterable[TaaFrame], params: TaaParams = TaaParams()) -> Iterator[torch.Tensor]:
    """The engine-style TAA over a sequence of frames, yielding each output (B,3,H,W)."""
    taa = TemporalAA(params)
    for frame in frames:
        yield taa.step(TaaFrame(*frame))


def taa_clamp_step(color: torch.Tensor, previous_output: torch.Tensor | None, motion: torch.Tensor,
                   alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """One frame of the min/max-clamp TAA on linear HDR (B,3,H,W); `previous_output` None: no valid history."""
    color = color.float().clamp_min(0)
    if previous_output is None:
        return color
    current = rgb_to_ycocg(compress_luma(color))
    history = rgb_to_ycocg(compress_luma(reproject(previous_output, motion.float()).clamp_min(0)))
    blended = torch.lerp(neighbourhood_clamp(history, current), current, alpha)
    return expand_luma(ycocg_to_rgb(blended)).clamp_min(0)


def run_taa_clamp(frames: Iterable[TaaFrame], alpha: float = DEFAULT_ALPHA) -> Iterator[torch.Tensor]:
    """The min/max-clamp TAA (`taa-clamp`) over a sequence of frames, yielding each output (B,3,H,W)."""
    previous = None
    for color, motion, history_valid, *_ in frames:
        previous = taa_clamp_step(color, previous if history_valid else None, motion, alpha)
        yield previous

"""Backward warp of the previous frame by motion vectors (contract: pixels, +x right, +y down, current − previous).

Pixel p of the current frame saw the surface that was at p − m(p) in the previous frame, so the warped history
samples the previous image there: bilinearly (the paper's way) or bicubically. Samples outside the frame clamp to
the border (`padding="border"`) or read zeros (`"zeros"`, the public sample's convention).

Why bicubic: a bilinear sample at a fractional position is a low-pass filter (at offset ½ it removes the Nyquist
frequency entirely), and a recurrent history is resampled every frame, so under motion it loses its detail frame
after frame; QW-Net's softmax kernels are convex and cannot sharpen it back (`input_kernel_lobe` lets them).
Engine TAA samples its history with a Catmull-Rom filter for the same reason. On the quality protocol's content it
reaches in 2000 steps the val score bilinear reaches in 4000 and ends ~0.1 dB ahead on every seed, on val and on
test, so the quality plan's recipe uses it (docs/quality.md); bilinear, the paper's, stays the model's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pixel_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, H, W, 2) pixel-centre coordinates (x + 0.5, y + 0.5)."""
    ys = torch.arange(h, device=device, dtype=dtype) + 0.5
    xs = torch.arange(w, device=device, dtype=dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


def warp(image: torch.Tensor, motion: torch.Tensor, padding: str = "border", resample: str = "bilinear"
         ) -> torch.Tensor:
    """Sample `image` (B,C,H,W) at p − motion(p); `motion` is (B,2,H,W) in pixels; `padding`: "border" or "zeros";
    `resample`: "bilinear" or "bicubic" (cubic convolution, a = −0.75; its negative lobes can undershoot 0)."""
    h, w = image.shape[-2:]
    # grid_sample needs one dtype for image and grid; motion may arrive in float16 from the store.
    source = _pixel_grid(h, w, image.device, torch.float32) - motion.to(torch.float32).permute(0, 2, 3, 1)
    # align_corners=False: normalized −1 and 1 are the outer pixel edges, so x_n = 2·x/W − 1 for a position x.
    # The scales are Python scalars: a tensor built from host values would be a host-to-device copy per call,
    # which a CUDA graph cannot capture.
    grid = torch.stack((source[..., 0] * (2.0 / w), source[..., 1] * (2.0 / h)), dim=-1) - 1.0
    out = F.grid_sample(image.float(), grid, mode=resample, padding_mode=padding, align_corners=False)
    return out.to(image.dtype)

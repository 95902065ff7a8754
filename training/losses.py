"""QW-Net's loss, L = 0.3·L_s + 0.7·L_t, in the range-compressed domain (training.hdr).

L_s = L1(out_t, ref_t) over all T steps; L_t = L1(out_t − warp(out_{t−1}), ref_t − warp(ref_{t−1})) over the
steps whose history is valid (an invalid step contributes zero). Both are means over frames, so the loss of a
batch is the mean of per-block losses: what DDP's gradient averaging assumes.
Warping happens on the compressed images (the difference to warping linear colour and then compressing is
second order, and it saves two transforms per step).
"""

from __future__ import annotations

import torch

from training.hdr import compress
from training.warp import warp


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B,T,C,H,W) -> (B·T,C,H,W)."""
    return x.reshape(-1, *x.shape[2:])


def temporal_l1(out: torch.Tensor, ref: torch.Tensor, motion: torch.Tensor, history_valid: torch.Tensor) -> torch.Tensor:
    """Mean over (block, step ≥ 1) of the L1 between output and reference temporal differences; invalid steps 0."""
    b, t = out.shape[:2]
    warped_out = warp(_frames(out[:, :-1]), _frames(motion[:, 1:])).view(b, t - 1, *out.shape[2:])
    warped_ref = warp(_frames(ref[:, :-1]), _frames(motion[:, 1:])).view(b, t - 1, *ref.shape[2:])
    per_step = ((out[:, 1:] - warped_out) - (ref[:, 1:] - warped_ref)).abs().mean(dim=(2, 3, 4))
    return (per_step * history_valid[:, 1:].to(per_step.dtype)).mean()


def qwnet_loss(output: torch.Tensor, reference: torch.Tensor, motion: torch.Tensor, history_valid: torch.Tensor,
               transform: str, spatial_weight: float = 0.3, temporal_weight: float = 0.7) -> dict[str, torch.Tensor]:
    """Loss terms for (B,T,3,H,W) linear output and reference: {'spatial', 'temporal', 'loss'}."""
    out_c = compress(output.float(), transform)
    ref_c = compress(reference.float(), transform)
    spatial = (out_c - ref_c).abs().mean()
    temporal = temporal_l1(out_c, ref_c, motion, history_valid) if output.shape[1] > 1 else spatial.new_zeros(())
    return {"spatial": spatial, "temporal": temporal, "loss": spatial_weight * spatial + temporal_weight * temporal}

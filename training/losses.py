"""QW-Net's loss, L = 0.3·L_s + 0.7·L_t, in the range-compressed domain (qw.training.model.hdr) or, with
``train.loss_domain: display``, in the display tone map the metrics use (qw.training.evaluation.metrics.display).

L_s = L1(out_t, ref_t) over all T steps; L_t = L1(out_t − warp(out_{t−1}), ref_t − warp(ref_{t−1})) over the
steps whose history is valid (an invalid step contributes zero). Both are means over frames, so the loss of a
batch is the mean of per-block losses: what DDP's gradient averaging assumes.
Warping happens on the compressed images (the difference to warping linear colour and then compressing is
second order, and it saves two transforms per step).

With ``temporal_reset_term`` (the public sample's convention) a step without history — a block's first step, a
step after a cut — is not skipped: the network saw its own input as history there, so its temporal term is
L1(out_t − in_t, ref_t − ref_t) = |out_t − in_t|, and L_t is the mean over all T steps.
"""

from __future__ import annotations

import torch

from qw.training.config import LossSpec
from qw.training.model.hdr import compress
from qw.training.evaluation.metrics import display
from qw.training.model.warp import warp

DISPLAY_FLOOR = 1e-4  # Reinhard value below which the display loss has no gradient (see metrics.display)
RMSE_EPS = 1e-8  # keeps the RMSE's gradient finite on a frame that is matched exactly


def loss_domain(x: torch.Tensor, transform: str) -> torch.Tensor:
    """Linear colour in the loss's domain: ``display`` (the metrics' tone map) or a `qw.training.model.hdr` transform."""
    return display(x, DISPLAY_FLOOR) if transform == "display" else compress(x, transform)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B,T,C,H,W) -> (B·T,C,H,W)."""
    return x.reshape(-1, *x.shape[2:])


def _per_frame_l1(x: torch.Tensor) -> torch.Tensor:
    """(B,T,C,H,W) -> (B,T) mean absolute value per frame."""
    return x.abs().mean(dim=(2, 3, 4))


def temporal_l1(out: torch.Tensor, ref: torch.Tensor, motion: torch.Tensor, history_valid: torch.Tensor,
                inputs: torch.Tensor | None = None, warp_padding: str = "border") -> torch.Tensor:
    """Mean over blocks and steps of the L1 between output and reference temporal differences.

    Without `inputs`: the mean over steps ≥ 1, invalid steps 0. With `inputs` (the compressed input colour), steps
    without history contribute |out_t − in_t| and the mean runs over all T steps.
    """
    b, t = out.shape[:2]
    valid = history_valid.to(device=out.device, dtype=out.dtype).clone()
    valid[:, 0] = 0  # a block's first step never has a history
    moving = out.new_zeros(b, 1)
    if t > 1:
        warped_out = warp(_frames(out[:, :-1]), _frames(motion[:, 1:]), warp_padding).view(b, t - 1, *out.shape[2:])
        warped_ref = warp(_frames(ref[:, :-1]), _frames(motion[:, 1:]), warp_padding).view(b, t - 1, *ref.shape[2:])
        moving = torch.cat([moving, _per_frame_l1((out[:, 1:] - warped_out) - (ref[:, 1:] - warped_ref))], dim=1)
    if inputs is None:
        return (moving[:, 1:] * valid[:, 1:]).mean() if t > 1 else out.new_zeros(())
    return (moving * valid + _per_frame_l1(out - inputs) * (1 - valid)).mean()


def spatial_error(diff: torch.Tensor, norm: str) -> torch.Tensor:
    """The spatial term of (B,T,C,H,W) differences: their mean absolute value (``l1``), or the mean over frames of
    each frame's root mean square (``rmse``), whose optimum is each pixel's conditional mean, as for PSNR, where L1's
    is the median."""
    if norm == "l1":
        return diff.abs().mean()
    return (diff.square().mean(dim=(2, 3, 4)) + RMSE_EPS).sqrt().mean()


def qwnet_loss(output: torch.Tensor, reference: torch.Tensor, motion: torch.Tensor, history_valid: torch.Tensor,
               loss: LossSpec = LossSpec(), *, color: torch.Tensor | None = None,
               warp_padding: str = "border") -> dict[str, torch.Tensor]:
    """Loss terms for (B,T,3,H,W) linear output and reference: {'spatial', 'temporal', 'loss'}, with `loss`'s
    domain, weights and per-frame norm (`spatial_error`); the default is the paper's loss in log1p.

    `color` (the linear input) switches on the temporal term of steps without history (see the module doc).
    """
    out_c = loss_domain(output.float(), loss.transform)
    ref_c = loss_domain(reference.float(), loss.transform)
    inputs = None if color is None else loss_domain(color.float(), loss.transform)
    spatial = spatial_error(out_c - ref_c, loss.spatial_norm)
    temporal = temporal_l1(out_c, ref_c, motion, history_valid, inputs, warp_padding)
    return {"spatial": spatial, "temporal": temporal,
            "loss": loss.spatial_weight * spatial + loss.temporal_weight * temporal}

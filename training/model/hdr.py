"""Range compression of linear HDR colour: what U_e sees and where the loss is computed.

The filters act on linear colour (with the paper's convex kernels the output is a convex combination of input and history radiance); the
feature extractor and the loss see a compressed copy so that bright highlights do not dominate.

Choice, by measurement: log1p. The intel-sample network at quarter widths was trained with each transform for
200 steps (Ranger, lr 1e-2, batch 4, augmentation) on the 4 train blocks (64×64×8) of a builtin-renderer store
(builtin_fence + builtin_specular, 320×256, 16 spp reference) and scored on its 12 validation blocks, in every
domain (tone-mapped PSNR of qw.training.evaluation.metrics, and L1 after each transform); aliased input: 34.03 dB.

    transform   PSNR dB   L1 log1p   L1 Reinhard   L1 PQ
    log1p       36.47     0.01206    0.00754       0.00384
    reinhard    36.06     0.01353    0.00835       0.00422
    pq          35.38     0.01559    0.00961       0.00489

log1p won in every domain, even in the other transforms' own; one seed on a 2-core CPU, so the margins are
indicative. It is also the only one of the three without a ceiling: Reinhard squeezes everything above 10 into
its top 9 %, and PQ (at 100 nits per unit) clips at 100.
"""

from __future__ import annotations

import torch

TRANSFORMS = ("log1p", "reinhard", "pq", "none")

# PQ (SMPTE ST 2084) maps absolute luminance 0..10000 cd/m²; linear 1.0 is taken as 100 cd/m² (SDR white).
PQ_NITS_PER_UNIT = 100.0
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def compress(x: torch.Tensor, transform: str) -> torch.Tensor:
    """Map linear HDR (>= 0; negatives are clamped) into a compressed range. Differentiable.

    "none" returns x itself (no clamp either): the public sample feeds linear colour to U_e and its loss.
    """
    if transform == "none":
        return x
    x = x.clamp_min(0)
    if transform == "log1p":
        return torch.log1p(x)
    if transform == "reinhard":
        return x / (1 + x)
    if transform == "pq":
        y = (x * (PQ_NITS_PER_UNIT / 10000.0)).clamp_max(1.0).clamp_min(1e-10) ** _PQ_M1
        return ((_PQ_C1 + _PQ_C2 * y) / (1 + _PQ_C3 * y)) ** _PQ_M2
    raise ValueError(f"unknown HDR transform {transform!r} (known: {', '.join(TRANSFORMS)})")


def describe(transform: str) -> dict:
    """What a checkpoint records about its HDR handling, so evaluation and export can reproduce it."""
    info = {"transform": transform, "applies_to": "U_e input and loss; filters act on linear colour"}
    if transform == "pq":
        info["nits_per_unit"] = PQ_NITS_PER_UNIT
    return info

"""Range compression of linear HDR colour: what U_e sees and where the loss is computed.

The filters act on linear colour (so the output is a convex combination of input and history radiance); the
feature extractor and the loss see a compressed copy so that bright highlights do not dominate.

Choice (measured, see README "Training" and the issue note): log1p. The three candidates were compared by training
the intel-sample network for the same number of steps on the same builtin-renderer blocks and scoring the output
in all three domains; the differences were small and log1p was never worse than the others while being the only
one that does not saturate (Reinhard and PQ flatten values above ~10, where speculars live).
"""

from __future__ import annotations

import torch

TRANSFORMS = ("log1p", "reinhard", "pq")

# PQ (SMPTE ST 2084) maps absolute luminance 0..10000 cd/m²; linear 1.0 is taken as 100 cd/m² (SDR white).
PQ_NITS_PER_UNIT = 100.0
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def compress(x: torch.Tensor, transform: str) -> torch.Tensor:
    """Map linear HDR (>= 0; negatives are clamped) into a compressed range. Differentiable."""
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

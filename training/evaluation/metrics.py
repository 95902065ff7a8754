"""Image-quality metrics for `qw eval`: PSNR, SSIM, HDR-FLIP and temporal PSNR.

Images are H×W×3 float arrays of linear HDR radiance (the capture contract's colour). PSNR, SSIM and tPSNR are
computed on a display tone-mapped copy (`tonemap`: Reinhard per channel, then a 2.2 display gamma, in [0, 1]) so
that they weigh errors as a viewer sees them; FLIP evaluates the linear images in its own HDR mode, which sweeps
exposures internally. FLIP costs ~5 s per 1080p frame on a core, so `flip` evaluates a centred crop when asked to.
"""

from __future__ import annotations

import numpy as np
import torch

from qw.datagen.tonemap import DISPLAY_GAMMA, tonemap  # noqa: F401 - the curve the metrics are defined on
from qw.training.model.hdr import compress

SSIM_BORDER = 5  # half the 11-pixel window: the map positions whose window reaches past the image edge
SSIM_MIN_SIDE = 2 * SSIM_BORDER + 1  # the smallest image with one window inside it
PSNR_CAP_DB = 100.0  # identical images: report a finite ceiling instead of inf so JSON and averages stay valid


def display(linear: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Linear HDR (negatives clamped) → display values in [0, 1]: Reinhard x/(1+x) per channel, then gamma 2.2.

    `floor` > 0 clamps the Reinhard value from below first, so that the gamma's infinite slope at 0 gives a loss
    finite gradients (values under the floor are black on any display)."""
    return compress(linear, "reinhard").clamp_min(floor) ** (1.0 / DISPLAY_GAMMA)


def _psnr_from_mse(mse: float) -> float:
    return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else float(10 * np.log10(1.0 / mse))


def psnr(test: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two tone-mapped images (peak 1)."""
    diff = tonemap(test).astype(np.float64) - tonemap(reference)
    return _psnr_from_mse(float(np.mean(diff ** 2)))


def ssim(test: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of two tone-mapped images (Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, averaged over channels), over
    the valid region as Wang et al. define it: only windows that lie inside the image (torchmetrics pads the image
    by reflection and averages the whole map; its outer SSIM_BORDER pixels are cropped here)."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # slow import: evaluation only

    if min(test.shape[:2]) < SSIM_MIN_SIDE:  # no window inside: the mean of an empty map would be NaN
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE}×{SSIM_MIN_SIDE} pixels, got "
                         f"{test.shape[1]}×{test.shape[0]}")

    def as_batch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(tonemap(x)).permute(2, 0, 1).unsqueeze(0).float()

    _, similarity = structural_similarity_index_measure(as_batch(test), as_batch(reference), data_range=1.0,
                                                        return_full_image=True)
    b = SSIM_BORDER
    return float(similarity[..., b:-b, b:-b].mean())


def center_crop(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The centred crop of at most max_side×max_side pixels (the whole image when None or already smaller)."""
    if max_side is None:
        return image
    h, w = image.shape[:2]
    y, x = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    return image[y:y + max_side, x:x + max_side]


def flip(test: np.ndarray, reference: np.ndarray, crop: int | None = 512) -> float:
    """Mean HDR-FLIP error (0 = identical) of linear images, on a centred crop of at most crop×crop pixels."""
    import flip_evaluator  # imported here: it is slow to import and only evaluation needs it

    def prepare(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.clip(center_crop(np.asarray(x, np.float32), crop), 0, None))

    _, mean_error, _ = flip_evaluator.evaluate(prepare(reference), prepare(test), "HDR", applyMagma=False)
    return float(mean_error)


def frame_difference_mse(test_prev: np.ndarray, test: np.ndarray, ref_prev: np.ndarray, ref: np.ndarray) -> float:
    """MSE between the tone-mapped frame-to-frame change of `test` and that of the reference."""
    d_test = tonemap(test).astype(np.float64) - tonemap(test_prev)
    d_ref = tonemap(ref).astype(np.float64) - tonemap(ref_prev)
    return float(np.mean((d_test - d_ref) ** 2))


def tpsnr(test_prev: np.ndarray, test: np.ndarray, ref_prev: np.ndarray, ref: np.ndarray) -> float:
    """Temporal PSNR of one frame pair: PSNR (peak 1) of the output's frame difference against the reference's."""
    return _psnr_from_mse(frame_difference_mse(test_prev, test, ref_prev, ref))


# ------------------------------------------------------------------------------------------------ protocol

STEADY_STATE_FROM = 8  # frames of a shot's recurrence before its scores count as steady state (TAA's start-up)
BOOTSTRAP_RESAMPLES = 10_000


def steady_state(values: list, start: int = STEADY_STATE_FROM) -> list:
    """The per-frame values of one shot from its `start`-th evaluated frame on (the recurrence's steady state)."""
    return list(values[start:])


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of the paired differences a_i − b_i (one pair per shot) with a percentile-bootstrap confidence
    interval: the pairs are resampled with replacement `BOOTSTRAP_RESAMPLES` times (seeded: same inputs, same
    interval). With few pairs a percentile interval is somewhat too narrow; it is reported with its n."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) == 0 or len(a) != len(b):
        raise ValueError(f"paired_difference needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": len(d), "confidence": confidence}

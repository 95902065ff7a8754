"""Each metric against a value computed by hand from its definition."""

import numpy as np
import pytest
import torch

from qw.training.evaluation import metrics


def linear_for_display(value: float) -> float:
    """The linear radiance that `tonemap` maps to `value` (inverse of gamma 2.2 then of Reinhard)."""
    r = value ** metrics.DISPLAY_GAMMA
    return r / (1 - r)


def constant(value: float, shape=(32, 40)) -> np.ndarray:
    return np.full(shape + (3,), value, np.float32)


def test_tonemap_is_reinhard_then_gamma():
    out = metrics.tonemap(np.array([[[0.0, 1.0, 3.0]]], np.float32))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5 ** (1 / 2.2), 0.75 ** (1 / 2.2)], rtol=1e-6)


def test_psnr_matches_hand_computed_value():
    # Tone-mapped 0.5 vs 0.6 everywhere: MSE 0.01 -> 20 dB. Half the pixels off by 0.2: MSE 0.02 -> 16.99 dB.
    ref = constant(linear_for_display(0.5))
    assert metrics.psnr(constant(linear_for_display(0.6)), ref) == pytest.approx(20.0, abs=1e-3)
    half = ref.copy()
    half[:16] = linear_for_display(0.7)
    assert metrics.psnr(half, ref) == pytest.approx(10 * np.log10(1 / 0.02), abs=1e-3)
    assert metrics.psnr(ref, ref) == metrics.PSNR_CAP_DB


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images have zero variance, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01·1)² = 0.7 here.
    # Dark values make C1 matter (C1 = 0.03² would give 0.763). SSIM runs in float32 (15× faster than float64 on
    # CPU); its variance E[x²] − E[x]² then carries ~1e-7 of cancellation, which shows up as ~1e-4 against C2.
    a, b = 0.02, 0.05
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert expected == pytest.approx(0.7)
    got = metrics.ssim(constant(linear_for_display(a)), constant(linear_for_display(b)))
    assert got == pytest.approx(expected, abs=1e-3)


def wang_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM from its definition (Wang et al. 2004) on display values: Gaussian 11×11 window (σ 1.5), only windows
    entirely inside the image, averaged over positions and channels."""
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for y in range(5, a.shape[0] - 5):
        for x in range(5, a.shape[1] - 5):
            for c in range(3):
                u, v = a[y - 5:y + 6, x - 5:x + 6, c], b[y - 5:y + 6, x - 5:x + 6, c]
                mu, mv = (g * u).sum(), (g * v).sum()
                su, sv, cov = (g * u * u).sum() - mu ** 2, (g * v * v).sum() - mv ** 2, (g * u * v).sum() - mu * mv
                values.append((2 * mu * mv + c1) * (2 * cov + c2) / ((mu ** 2 + mv ** 2 + c1) * (su + sv + c2)))
    return float(np.mean(values))


def test_ssim_is_wangs_mean_over_windows_inside_the_image():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 3, (18, 22, 3)).astype(np.float32)
    test = ref * rng.uniform(0.6, 1.4, ref.shape).astype(np.float32)
    test[:3] = 0.0  # a damaged border: padded windows would weigh it more than Wang's valid windows do
    expected = wang_ssim(metrics.tonemap(test).astype(np.float64), metrics.tonemap(ref).astype(np.float64))
    assert metrics.ssim(test, ref) == pytest.approx(expected, abs=2e-4)


def test_ssim_drops_for_noise_and_is_one_for_identity():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 4, (48, 48, 3)).astype(np.float32)
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    assert metrics.ssim(img + rng.normal(0, 0.5, img.shape).astype(np.float32), img) < 0.95


def test_tpsnr_matches_hand_computed_value():
    # Static reference; the output flickers from 0.5 to 0.6 (tone-mapped): the difference error is 0.1 -> 20 dB.
    ref = constant(linear_for_display(0.3))
    prev, cur = constant(linear_for_display(0.5)), constant(linear_for_display(0.6))
    assert metrics.tpsnr(prev, cur, ref, ref) == pytest.approx(20.0, abs=1e-3)
    # A steady output that is wrong but does not flicker is temporally perfect.
    assert metrics.tpsnr(prev, prev, ref, ref) == metrics.PSNR_CAP_DB


def test_flip_is_zero_for_identical_images_and_grows_with_error():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 2, (64, 64, 3)).astype(np.float32)
    assert metrics.flip(ref, ref) == 0.0
    small = metrics.flip(ref * 1.05, ref)
    large = metrics.flip(ref * 1.5, ref)
    assert 0 < small < large


def test_flip_crops_the_centre():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 2, (80, 100, 3)).astype(np.float32)
    test = ref.copy()
    test[:10] = 0  # damage only rows outside the centred 32×32 crop
    assert metrics.flip(test, ref, crop=32) == 0.0
    assert metrics.flip(test, ref, crop=None) > 0.0
    assert metrics.center_crop(ref, 32).shape == (32, 32, 3)
    np.testing.assert_array_equal(metrics.center_crop(ref, 32), ref[24:56, 34:66])


def test_steady_state_keeps_the_frames_from_the_eighth_on():
    values = list(range(12))
    assert metrics.STEADY_STATE_FROM == 8
    assert metrics.steady_state(values) == [8, 9, 10, 11]
    assert metrics.steady_state(values[:8]) == []


def test_display_is_the_tonemap_and_its_floor_only_clamps_the_darkest_values():
    x = np.array([[[0.0, 1e-6, 0.2]]], np.float32)
    t = torch.from_numpy(x)
    # the torch curve (for the loss) and datagen's numpy one (for torch-free previews) agree to float32 rounding
    np.testing.assert_allclose(metrics.display(t).numpy(), metrics.tonemap(x), rtol=1e-6)
    floored = metrics.display(t, floor=1e-4).numpy()[0, 0]
    assert floored[0] == floored[1] == pytest.approx(1e-4 ** (1 / 2.2))
    assert floored[2] == pytest.approx(metrics.tonemap(x)[0, 0, 2])
    t.requires_grad_()
    metrics.display(t, floor=1e-4).sum().backward()
    assert torch.isfinite(t.grad).all()


def test_paired_difference_of_a_constant_shift_is_that_shift_with_a_zero_width_interval():
    b = [30.0, 31.5, 29.0, 33.0]
    d = metrics.paired_difference([v + 0.7 for v in b], b)
    assert d["mean"] == pytest.approx(0.7) and d["low"] == pytest.approx(0.7) and d["high"] == pytest.approx(0.7)
    assert d["n"] == 4


def test_paired_difference_interval_matches_the_sampling_spread_of_the_mean():
    # Differences 0, 1, ..., 9: the bootstrap distribution of the mean is centred on 4.5 with standard deviation
    # ≈ σ/√n = 2.87/√10 = 0.91, so a 95 % percentile interval is about 4.5 ± 1.78; it is seeded (same bytes twice).
    b = [0.0] * 10
    a = [float(i) for i in range(10)]
    d = metrics.paired_difference(a, b)
    assert d["mean"] == pytest.approx(4.5)
    assert 4.5 - 2.1 < d["low"] < 4.5 - 1.5 and 4.5 + 1.5 < d["high"] < 4.5 + 2.1
    assert metrics.paired_difference(a, b) == d
    assert metrics.paired_difference(b, a)["high"] == pytest.approx(-d["low"])  # the sign follows a − b
    with pytest.raises(ValueError):
        metrics.paired_difference([1.0], [1.0, 2.0])

"""Unreal encodings → contract units: each decodes known ground-truth motion back within 1e-3 px."""

from __future__ import annotations

import numpy as np
import pytest
from ue_formats import (
    analytic_motion,
    counts_to_ndc,
    mrq_material,
    pixels_to_ndc,
    sign_bits,
    unorm16_counts,
)

from qw.datagen.errors import QwError
from qw.ue_capture.convert import (
    decode_motion,
    depth_to_scene_units,
    mrq_reference_filter,
    mrq_sample_offsets,
    ndc_to_pixels,
    unpack_unorm16,
)

W, H = 48, 20  # non-square on purpose: a W/H swap changes every value
TOL = 1e-3


@pytest.fixture
def truth() -> np.ndarray:
    d = analytic_motion(W, H)
    assert (d[..., 0] < 0).any() and (d[..., 0] > 0).any() and (d[..., 1] < 0).any() and (d[..., 1] > 0).any()
    return d


def test_ndc_anchor_values():
    # V = +0.01 NDC at 1920×1080: +9.6 px right; V.y = +0.01 (up in NDC) is 5.4 px UP, i.e. −5.4 in image y.
    assert ndc_to_pixels(np.array([0.01, 0.01]), 1920, 1080) == pytest.approx([9.6, -5.4])


def test_float_ndc_decodes_to_truth(truth):
    motion, written = decode_motion(pixels_to_ndc(truth, W, H).astype(np.float32), "ndc", (W, H))
    assert written.all()
    np.testing.assert_allclose(motion, truth, atol=TOL)


def test_tile_uses_full_frame_size():
    full_w, full_h = 160, 90
    tile_truth = analytic_motion(32, 16, x0=64, y0=40)
    v = pixels_to_ndc(tile_truth, full_w, full_h).astype(np.float32)
    motion, _ = decode_motion(v, "ndc", (full_w, full_h))
    np.testing.assert_allclose(motion, tile_truth, atol=TOL)
    wrong, _ = decode_motion(v, "ndc", (32, 16))  # the tile's own size would be a scale error
    assert np.abs(wrong - tile_truth).max() > 1.0


@pytest.mark.parametrize("ue5", [False, True], ids=["ue4-unorm16", "ue5-sqrt"])
def test_packed_velocity_on_grid_decodes_exactly(truth, ue5):
    counts = unorm16_counts(pixels_to_ndc(truth, W, H), ue5=ue5)
    snapped = counts_to_ndc(counts, ue5=ue5)  # the value each stored count stands for
    snapped_px = np.stack([snapped[..., 0] * W / 2, -snapped[..., 1] * H / 2], axis=-1)
    for encoded in (counts, counts.astype(np.float32) / 65535.0):  # raw counts, or UNORM read back as float
        motion, written = decode_motion(encoded, "unorm16-ue5" if ue5 else "unorm16", (W, H))
        assert written.all()
        np.testing.assert_allclose(motion, snapped_px, atol=TOL)


@pytest.mark.parametrize("ue5", [False, True], ids=["ue4-unorm16", "ue5-sqrt"])
def test_packed_velocity_error_within_quantization(truth, ue5):
    counts = unorm16_counts(pixels_to_ndc(truth, W, H), ue5=ue5)
    motion, _ = decode_motion(counts, "unorm16-ue5" if ue5 else "unorm16", (W, H))
    step_ndc = 1.0 / (65535 * 0.2495)
    if ue5:  # d|V|/ds = |s|, and |s| ≤ sqrt(2·max|V|)
        step_ndc *= np.sqrt(2 * np.abs(pixels_to_ndc(truth, W, H)).max()) + step_ndc
    bound = 0.5 * step_ndc * max(W, H) / 2 + 1e-6
    assert np.abs(motion - truth).max() <= bound


def test_packed_zero_means_unwritten():
    counts = unorm16_counts(np.full((2, 3, 2), 0.1))
    counts[0, 1, 0] = 0
    v, written = unpack_unorm16(counts)
    assert written.tolist() == [[True, False, True], [True, True, True]]
    motion, _ = decode_motion(counts, "unorm16", (W, H))
    assert motion[0, 1].tolist() == [0.0, 0.0]


def test_sign_bits_decode_to_truth(truth):
    motion, _ = decode_motion(sign_bits(pixels_to_ndc(truth, W, H)).astype(np.float32), "sign-bits", (W, H))
    np.testing.assert_allclose(motion, truth, atol=TOL)


@pytest.mark.parametrize("scale", [(1.0, -1.0), (2.0, 2.0), (-2.0, -2.0)])
def test_mrq_material_decodes_to_truth(truth, scale):
    encoded = mrq_material(truth, W, H, scale).astype(np.float32)
    motion, _ = decode_motion(encoded, "mrq-material", (W, H), mrq_scale=scale)
    np.testing.assert_allclose(motion, truth, atol=TOL)


def test_mrq_material_default_agrees_with_ndc_over_two(truth):
    # Default calibration: the material holds V/2 + 0.5 with NDC's y up (Epic's Nuke recipe, ×W).
    v = pixels_to_ndc(truth, W, H)
    motion, _ = decode_motion((v / 2 + 0.5).astype(np.float32), "mrq-material", (W, H))
    np.testing.assert_allclose(motion, truth, atol=TOL)


def test_depth_units():
    assert depth_to_scene_units(np.array([150.0, 2500.0])).tolist() == pytest.approx([1.5, 25.0])


def test_mrq_gaussian_sample_offsets_on_known_values():
    """UE 4.27/5.3 (MoviePipelineRendering.cpp): Halton(k+1; 2, 3) through a Box-Muller windowed to 0.5 px with
    sigma 0.47·r.TemporalAAFilterSize. k=0: u=1/2, v=1/3, window e^(-0.5·(0.5/0.47)²)=0.56788, r=0.32791 at
    120°, so MRQ shifts the image by (-0.16396, 0.28398) px and each pixel samples the scene at centre − shift."""
    offsets = mrq_sample_offsets(4, "4.27.2-18319896+++UE4+Release-4.27")
    expected_shifts = [(-0.16397, 0.28401), (-0.20800, -0.36027), (0.17216, 0.14446), (-0.43047, 0.15668)]
    assert offsets == [pytest.approx((-x, -y), abs=1e-4) for x, y in expected_shifts]
    assert mrq_sample_offsets(4, "5.3") == offsets
    wide = mrq_sample_offsets(64, "4.27", filter_size=2.0)
    assert max(np.hypot(*o) for o in wide) <= 0.5 + 1e-9  # the window keeps every sample inside ±0.5 px
    assert max(np.hypot(*o) for o in wide) > max(np.hypot(*o) for o in mrq_sample_offsets(64, "4.27"))


def test_mrq_uniform_sample_offsets_from_5_5_and_none_at_one_sample():
    """UE 5.5 (MoviePipelineUtils.cpp GetSubPixelJitter): Halton − 0.5, no Gaussian."""
    assert mrq_sample_offsets(2, "5.5.4-40574608+++UE5+Release-5.5") == [
        pytest.approx((0.0, 1 / 6)), pytest.approx((0.25, -1 / 6))]
    assert mrq_sample_offsets(1, "4.27") == [(0.0, 0.0)]  # bAllowSpatialJitter is false at 1×1 samples
    assert mrq_reference_filter(64, "4.27").startswith("gaussian(sigma=0.47px")
    assert mrq_reference_filter(64, "5.5").startswith("box(1px)")


def test_bad_encoding_and_channel_count_are_user_errors():
    with pytest.raises(QwError, match="unknown motion encoding 'rgb'"):
        decode_motion(np.zeros((2, 2, 3)), "rgb", (2, 2))
    with pytest.raises(QwError, match="needs 3 channels"):
        decode_motion(np.zeros((2, 2, 2)), "sign-bits", (2, 2))

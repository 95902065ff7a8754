"""benchmarks/quality_ceiling.py: the oracle accumulator moves its history the right way, restarts it exactly where
the reference changed, starts up as a running mean, and measures the changed share along the exact motion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality_ceiling  # noqa: E402

from qw.datagen.builtin.renderer import stratified_offsets  # noqa: E402
from qw.datagen.capture_format import load_meta  # noqa: E402
from qw.training.evaluation.taa import TaaFrame, compress_luma, expand_luma  # noqa: E402

H, W = 8, 12


def _moving_pattern(frames: int) -> quality_ceiling.Shot:
    """A random texture moving one pixel right per frame: motion +1 in x (pixel p was at p − 1)."""
    texture = torch.rand(1, 3, H, W + frames, generator=torch.Generator().manual_seed(0)) + 0.1
    references = [texture[..., frames - t:frames - t + W].contiguous() for t in range(frames)]
    motion = torch.zeros(1, 2, H, W)
    motion[:, 0] = 1.0
    return quality_ceiling.Shot([TaaFrame(r, motion, t > 0) for t, r in enumerate(references)], references)


def test_the_reference_fed_back_along_the_exact_motion_is_kept() -> None:
    shot = _moving_pattern(5)
    oracle = quality_ceiling.OracleTAA(alpha=0.1, threshold=None)
    for frame, reference in zip(shot.frames, shot.references):
        output = oracle.step_with_reference(frame, reference)
    # whole-pixel motion: Catmull-Rom moves the history exactly; the columns that came in at the left border are new
    assert torch.allclose(output[..., 4:], shot.references[-1][..., 4:], atol=1e-5)
    assert quality_ceiling.changed_share([shot], 0.001) == 0.0


def test_a_reference_change_restarts_the_history_only_there() -> None:
    still = torch.zeros(1, 2, H, W)
    before = torch.full((1, 3, H, W), 0.5)
    after = before.clone()
    after[..., :4, :4] = 2.0
    for threshold, restarted in ((None, False), (0.03, True)):
        oracle = quality_ceiling.OracleTAA(alpha=0.1, threshold=threshold)
        for reference in (before, before, after):
            output = oracle.step_with_reference(TaaFrame(reference, still, True), reference)
        assert torch.allclose(output[..., 4:, :], after[..., 4:, :], atol=1e-5)  # unchanged: kept as it was
        assert torch.allclose(output[..., :4, :4], after[..., :4, :4], atol=1e-5) == restarted
        assert (oracle.length[0, 0, :4, :4] == 1).all() == restarted


def test_the_history_starts_as_a_running_mean() -> None:
    still = torch.zeros(1, 2, H, W)
    frames = [torch.full((1, 3, H, W), v) for v in (0.2, 1.0, 3.0)]
    oracle = quality_ceiling.OracleTAA(alpha=0.1, threshold=None)
    for color in frames:
        output = oracle.step_with_reference(TaaFrame(color, still, True), color)
    mean = sum(compress_luma(c) for c in frames) / 3  # 1/n weights, not alpha's 0.1
    assert torch.allclose(output, expand_luma(mean), atol=1e-5)
    assert oracle.length.max().item() == pytest.approx(3.0)


def test_a_frozen_frame_at_the_reference_samples_is_the_reference(builtin_captures) -> None:
    # A moving shot: rendering another frame than the reference's, or another scene than the captured one, would
    # score far below the cap.
    shot = builtin_captures / "builtin_fence" / "rise"
    settings = load_meta(shot).backend.settings
    scores = quality_ceiling.frozen_frame_psnr(shot, stratified_offsets(settings["reference_grid"][0]),
                                               settings["reference_mip_bias"], frames=3)
    assert len(scores) == 3 and min(scores) > 80


def test_the_frozen_estimates_see_the_1spp_texture_detail(tmp_path) -> None:
    from qw.capture import capture_scene

    capture_scene("builtin_courtyard", tmp_path, shots=["walk"], frames=(0, 2), resolution=(96, 64),
                  reference_spp=16, progress=False)
    shot = tmp_path / "builtin_courtyard" / "walk"
    limits = dict(quality_ceiling.frozen_limits([shot], frames=2))
    # the reference's own positions with the 1-spp frames' coarser mips: close, but not the reference
    assert 30 < limits["the reference's 4×4 positions at the 1-spp texture detail"] < 80
    # eight jittered samples estimate the 16-sample box worse than sixteen do
    assert (limits["mean of the 1-spp samples at the jitter cycle's 8 positions"]
            < limits["mean of the 1-spp samples at 16 jitter positions"])

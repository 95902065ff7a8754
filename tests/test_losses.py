"""QW-Net's loss pinned by hand-computed cases: the temporal warp's direction and step, the validity mask, the
0.3/0.7 weights, the compressed domain and the public sample's reset-step term."""

import math

import pytest
import torch

from qw.training.config import LossSpec, load_config
from qw.training.losses import qwnet_loss


def row(*values: float) -> torch.Tensor:
    """One 1-pixel-high, 1-channel frame."""
    return torch.tensor(values).view(1, 1, len(values))


def clip(*frames: torch.Tensor) -> torch.Tensor:
    """(1,T,1,1,W) from T frames."""
    return torch.stack(frames).unsqueeze(0)


def shift_x(*pixels: float) -> torch.Tensor:
    """(1,T,2,1,W) motion: step t moves everything pixels[t] to the right (+x); W = 4."""
    motion = torch.zeros(1, len(pixels), 2, 1, 4)
    for t, px in enumerate(pixels):
        motion[0, t, 0] = px
    return motion


# out_1 − warp(out_0) with motion +1 (pixel p saw what was at p − 1; the left border clamps):
#   warp([0,1,2,3]) = [0,0,1,2],  [5,0,1,2] − [0,0,1,2] = [5,0,0,0]                      → mean 5/4
# ref_1 − warp(ref_0): warp([0,0,0,4]) = [0,0,0,0], so 0 (a reversed warp would give [0,0,4,4]).
# Step 0's motion (−1) is never used: the history of step t is warped by step t's motion.
OUT = clip(row(0, 1, 2, 3), row(5, 0, 1, 2), row(9, 9, 9, 9))
REF = clip(row(0, 0, 0, 4), row(0, 0, 0, 0), row(0, 0, 0, 0))
MOTION = shift_x(-1, 1, 0)


def test_two_steps_by_hand():
    terms = qwnet_loss(OUT[:, :2], REF[:, :2], MOTION[:, :2], torch.tensor([[False, True]]), LossSpec("none"))
    assert terms["spatial"].item() == pytest.approx((4 + 8) / 8)  # mean |out − ref| over both frames
    assert terms["temporal"].item() == pytest.approx(5 / 4)
    assert terms["loss"].item() == pytest.approx(0.3 * 12 / 8 + 0.7 * 5 / 4)


def test_an_invalid_history_step_contributes_nothing():
    # Step 2 (after a cut) would add |[9,9,9,9] − [5,0,1,2]| = 7 per pixel if its history counted.
    terms = qwnet_loss(OUT, REF, MOTION, torch.tensor([[False, True, False]]), LossSpec("none"))
    assert terms["temporal"].item() == pytest.approx((5 / 4 + 0) / 2)
    valid = qwnet_loss(OUT, REF, MOTION, torch.tensor([[False, True, True]]), LossSpec("none"))
    assert valid["temporal"].item() == pytest.approx((5 / 4 + 7) / 2)


def test_reset_steps_compare_the_output_with_its_input_when_asked():
    # The public sample's step-0 term: a step without history has |out_t − in_t| (its history was its input).
    color = clip(row(1, 1, 1, 1), row(0, 0, 0, 0), row(9, 9, 9, 5))
    terms = qwnet_loss(OUT, REF, MOTION, torch.tensor([[False, True, False]]), LossSpec("none"), color=color)
    assert terms["temporal"].item() == pytest.approx((4 / 4 + 5 / 4 + 4 / 4) / 3)


def test_weights_are_the_papers_in_the_loss_and_in_the_configs():
    terms = qwnet_loss(OUT[:, :2], REF[:, :2], MOTION[:, :2], torch.tensor([[False, True]]), LossSpec("none"))
    assert terms["loss"].item() == pytest.approx(0.3 * terms["spatial"].item() + 0.7 * terms["temporal"].item())
    for preset in ("paper", "intel-sample"):
        train = load_config(preset).train
        assert (train.spatial_weight, train.temporal_weight) == (0.3, 0.7)


def test_the_loss_is_taken_in_the_compressed_domain():
    e = math.e - 1  # log1p(e − 1) = 1
    out, ref = clip(row(e, e, 0, 0)), clip(row(0, 0, 0, 0))
    terms = qwnet_loss(out, ref, shift_x(0), torch.tensor([[False]]), LossSpec("log1p"))
    assert terms["spatial"].item() == pytest.approx(0.5) and terms["temporal"].item() == 0.0


def test_the_display_loss_domain_is_the_metrics_tone_map():
    from qw.training.losses import DISPLAY_FLOOR
    from qw.datagen.tonemap import DISPLAY_GAMMA

    out, ref = clip(row(1.0, 1.0, 3.0, 3.0)), clip(row(0, 0, 0, 0))  # Reinhard 0.5 and 0.75; black below the floor
    terms = qwnet_loss(out, ref, shift_x(0), torch.tensor([[False]]), LossSpec("display"))
    black = DISPLAY_FLOOR ** (1 / DISPLAY_GAMMA)
    expected = ((0.5 ** (1 / DISPLAY_GAMMA) - black) + (0.75 ** (1 / DISPLAY_GAMMA) - black)) / 2
    assert terms["spatial"].item() == pytest.approx(expected, rel=1e-5)
    cfg = load_config("paper", {"train": {"loss_domain": "display"}})
    assert cfg.loss_transform == "display" and load_config("paper").loss_transform == "log1p"


def test_the_rmse_term_is_each_frames_rmse_and_its_optimum_is_the_mean() -> None:
    # two frames: errors (3, 4, 0, 0) -> RMSE 2.5, and (1, 1, 1, 1) -> 1; the term is their mean
    out, ref = clip(row(3, 4, 0, 0), row(1, 1, 1, 1)), clip(row(0, 0, 0, 0), row(0, 0, 0, 0))
    terms = qwnet_loss(out, ref, shift_x(0, 0), torch.tensor([[False, False]]), LossSpec("none", spatial_norm="rmse"))
    assert terms["spatial"].item() == pytest.approx(1.75, rel=1e-6)
    # a constant output against a reference that is 1 on a quarter of the frame (an edge's coverage): L1 is lowest
    # at the median (0), the RMSE at the mean (0.25), which is what PSNR rewards
    reference = clip(row(0, 0, 0, 1))
    levels = torch.linspace(0, 1, 101)

    def best(norm: str) -> float:
        losses = [qwnet_loss(clip(row(*[float(c)] * 4)), reference, shift_x(0), torch.tensor([[False]]),
                             LossSpec("none", spatial_norm=norm))["spatial"].item() for c in levels]
        return float(levels[int(torch.tensor(losses).argmin())])

    assert best("l1") == 0.0 and best("rmse") == pytest.approx(0.25)

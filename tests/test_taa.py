"""TAA baseline: Catmull-Rom sampling, reprojection direction, colour spaces, convergence on a static scene."""

import numpy as np
import torch

from datagen.builtin.renderer import halton_jitter, stratified_offsets
from training import taa


def analytic_scene(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A static HDR pattern with hard edges: a bright tilted disk and thin stripes over a ramp. (...,) -> (...,3)."""
    disk = ((x - 20.3) ** 2 + (y - 17.1) ** 2 < 11.5 ** 2) * 4.0
    stripes = (np.sin(0.9 * x + 0.4 * y) > 0.6) * 1.0
    ramp = 0.2 + 0.01 * x
    return np.stack([disk + ramp, stripes + ramp, 0.5 * disk + 0.5 * stripes + ramp], -1)


def render(h: int, w: int, offset: tuple[float, float]) -> torch.Tensor:
    """One sample per pixel at the pixel centre + offset, as (1,3,H,W)."""
    ys, xs = np.meshgrid(np.arange(h) + 0.5 + offset[1], np.arange(w) + 0.5 + offset[0], indexing="ij")
    return torch.from_numpy(analytic_scene(xs, ys)).permute(2, 0, 1).unsqueeze(0).float()


def box_reference(h: int, w: int, n: int = 16) -> torch.Tensor:
    return torch.stack([render(h, w, tuple(o)) for o in stratified_offsets(n)]).mean(0)


def tonemapped_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a / (1 + a) - b / (1 + b)) ** 2).mean())


def test_catmull_rom_reproduces_linear_ramps_and_integer_shifts():
    h, w = 12, 16
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    ramp = (2.0 * xs + 3.0 * ys).reshape(1, 1, h, w)
    pos = torch.stack((xs + 0.37, ys - 0.61)).unsqueeze(0)
    out = taa.sample_catmull_rom(ramp, pos)
    # Catmull-Rom is exact on linear functions away from the clamped border.
    torch.testing.assert_close(out[..., 2:-2, 2:-2], (ramp + 2 * 0.37 - 3 * 0.61)[..., 2:-2, 2:-2])
    weights = torch.stack(taa.catmull_rom_weights(torch.rand(100)))
    torch.testing.assert_close(weights.sum(0), torch.ones(100))


def test_reprojection_follows_the_motion_contract():
    # Content moves 3 px right and 2 px down: current(p) = previous(p − (3, 2)), and the motion is m = (+3, +2).
    previous = torch.rand(1, 3, 20, 24)
    current = torch.roll(previous, shifts=(2, 3), dims=(2, 3))
    motion = torch.tensor([3.0, 2.0]).reshape(1, 2, 1, 1).expand(1, 2, 20, 24)
    torch.testing.assert_close(taa.reproject(previous, motion)[..., 2:, 3:], current[..., 2:, 3:])


def test_colour_space_round_trips():
    rgb = torch.rand(2, 3, 5, 7) * 10
    torch.testing.assert_close(taa.ycocg_to_rgb(taa.rgb_to_ycocg(rgb)), rgb)
    torch.testing.assert_close(taa.expand_luma(taa.compress_luma(rgb)), rgb, rtol=1e-5, atol=1e-5)


def test_neighbourhood_clamp_keeps_history_inside_the_current_box():
    current = torch.zeros(1, 3, 8, 8)
    current[..., 4, 4] = 1.0
    history = torch.full((1, 3, 8, 8), 2.0)
    clamped = taa.neighbourhood_clamp(history, current)
    assert clamped[..., 3:6, 3:6].eq(1.0).all() and clamped[..., 0, 0].eq(0.0).all()


def test_static_scene_converges_to_the_supersampled_reference():
    h, w = 40, 48
    reference = box_reference(h, w)
    jitter = [halton_jitter(i, cycle=16) for i in range(48)]
    still = torch.zeros(1, 2, h, w)
    frames = [(render(h, w, j), still, i > 0) for i, j in enumerate(jitter)]
    outputs = list(taa.run_taa(frames))
    aliased = np.mean([tonemapped_mse(c, reference) for c, _, _ in frames])
    errors = [tonemapped_mse(o, reference) for o in outputs]
    # The first frame is the aliased input; accumulation then removes most of the aliasing error.
    assert errors[0] == tonemapped_mse(frames[0][0], reference)
    assert errors[-1] < 0.3 * aliased
    assert np.mean(errors[-8:]) < np.mean(errors[8:16])

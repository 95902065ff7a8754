"""TAA baselines: Catmull-Rom sampling, reprojection direction, colour spaces, variance clipping, motion dilation,
1/n start-up and history resets, convergence on a static scene, and the scores on every moving builtin val/test shot.
"""

import numpy as np
import pytest
import torch

from qw.datagen.builtin.renderer import halton_jitter, stratified_offsets
from qw.training.evaluation import taa


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
    assert max(errors[8:]) < 0.5 * aliased  # and stays there: the history does not drift


def test_variance_clip_moves_history_toward_the_mean_onto_the_box():
    current = torch.rand(1, 3, 6, 6)
    near = taa._neighbours(current)
    mean, sigma = near.mean(2), near.std(2, unbiased=False)
    inside = mean + 0.5 * sigma * torch.tensor([1.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(taa.variance_clip(inside, current, 1.0), inside)
    direction = torch.tensor([3.0, -1.0, 2.0]).reshape(1, 3, 1, 1)
    outside = mean + direction  # far outside the box (σ < 1)
    clipped = taa.variance_clip(outside, current, 1.0)
    offset = clipped - mean
    # on the line from the mean to the history (same direction, shorter), and on the box surface
    torch.testing.assert_close(offset / offset[:, :1], (direction / direction[:, :1]).expand_as(offset))
    torch.testing.assert_close((offset.abs() / sigma).amax(1), torch.ones(1, 6, 6), atol=1e-4, rtol=1e-4)
    assert (taa.variance_clip(outside, current, 2.0) - mean).abs().amax() > offset.abs().amax()


def test_motion_dilation_takes_the_nearest_surfaces_motion():
    depth = torch.full((1, 1, 7, 7), 10.0)
    depth[..., 3, 3] = 1.0  # a near object one pixel wide
    motion = torch.zeros(1, 2, 7, 7)
    motion[:, :, 3, 3] = torch.tensor([4.0, -2.0])
    dilated = taa.dilate_motion(motion, depth)
    assert dilated[0, :, 2:5, 2:5].permute(1, 2, 0).eq(torch.tensor([4.0, -2.0])).all()
    assert dilated[0, :, 0, 0].eq(0).all() and dilated[0, :, 5:, :].eq(0).all()


def still_frames(values: list[float], h: int = 6, w: int = 8, **extra) -> list[taa.TaaFrame]:
    """Frame i is values[i] times a fixed textured image (a textured neighbourhood has σ > 0), without motion."""
    texture = 0.5 + torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    still = torch.zeros(1, 2, h, w)
    return [taa.TaaFrame(v * texture, still, i > 0, **extra) for i, v in enumerate(values)]


def test_start_up_is_a_running_mean_of_the_first_frames():
    values = [0.2, 1.5, 0.7, 3.0, 0.1]
    frames = still_frames(values)
    # no clipping, no floor on the weight, no luminance feedback
    params = taa.TaaParams(gamma=1e6, alpha=1e-4, max_history=100, flicker_weight=0)
    outputs = list(taa.run_taa(frames, params))
    for n, out in enumerate(outputs, 1):  # the blend is a mean in the luminance-compressed space
        mean = torch.stack([taa.compress_luma(f.color) for f in frames[:n]]).mean(0)
        torch.testing.assert_close(out, taa.expand_luma(mean))
    # saturated history: the new frame's weight never falls below alpha
    floor = list(taa.run_taa(frames, taa.TaaParams(gamma=1e6, alpha=0.5, flicker_weight=0)))
    expected = taa.expand_luma(torch.lerp(taa.compress_luma(floor[-2]), taa.compress_luma(frames[-1].color), 0.5))
    torch.testing.assert_close(floor[-1], expected)


def test_luminance_feedback_trusts_a_new_frame_that_disagrees_with_the_history():
    frames = still_frames([1.0] * 10 + [3.0, 1.0])

    def outputs(flicker_weight):
        params = taa.TaaParams(gamma=1e6, alpha=0.01, max_history=100, flicker_weight=flicker_weight)
        return list(taa.run_taa(frames, params))

    plain, feedback = outputs(0.0), outputs(1.0)
    torch.testing.assert_close(feedback[9], plain[9])  # agreeing frames: the 1/n weight alone
    assert (feedback[10] > plain[10] + 0.05).all()  # the bright frame gets more weight


def test_history_resets_on_cuts_disocclusions_and_off_screen_sources():
    params = taa.TaaParams(gamma=1e6, alpha=1e-4, max_history=100, flicker_weight=0)
    depth = torch.full((1, 1, 6, 8), 5.0)
    frames = still_frames([1.0, 2.0], depth=depth)
    current = frames[1].color

    def last(sequence):
        return list(taa.run_taa(sequence, params))[-1]

    torch.testing.assert_close(last(frames[:1] + [frames[1]._replace(history_valid=False)]), current)  # cut
    nearer_before = [frames[0]._replace(depth=torch.full_like(depth, 2.0)), frames[1]]
    torch.testing.assert_close(last(nearer_before), current)  # the history held an occluder: reset
    farther_before = [frames[0]._replace(depth=torch.full_like(depth, 9.0)), frames[1]]
    assert last(farther_before).lt(current).all()  # nothing was in front: the history is kept
    moving = torch.zeros(1, 2, 6, 8)
    moving[:, 0] = 3.0  # content moved 3 px right: the three left columns were off screen
    out = last([frames[0], frames[1]._replace(motion=moving)])
    torch.testing.assert_close(out[..., :3], current[..., :3])
    assert (out[..., 4:] - current[..., 4:]).abs().amin() > 1e-3  # the rest blends the (shifted) history


def test_unjittering_refilters_the_sample_at_the_pixel_centre():
    h, w = 10, 12
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    jitter = (0.4, -0.3)
    sampled = (0.3 * (xs + jitter[0]) + 0.1 * (ys + jitter[1])).expand(1, 3, h, w)  # a ramp sampled off-centre
    centred = (0.3 * xs + 0.1 * ys).expand(1, 3, h, w)
    inner = (..., slice(1, -1), slice(1, -1))
    before = (sampled - centred)[inner].abs().mean()
    after = (taa.unjitter(sampled, jitter) - centred)[inner].abs().mean()
    assert after < 0.5 * before
    torch.testing.assert_close(taa.unjitter(torch.ones(1, 3, 4, 4), jitter), torch.ones(1, 3, 4, 4))


# ------------------------------------------------------------------------------ moving builtin val/test shots

MOVING = {"frames": (0, 12), "resolution": (96, 64), "reference_spp": 16}


def held_out_builtin_shots() -> list[tuple[str, str]]:
    """(scene, shot) of every 'val' or 'test' shot of every builtin scene manifest."""
    from qw.datagen.manifests import load_scene_manifest, scene_paths

    manifests = [load_scene_manifest(p) for p in scene_paths().values()]
    return sorted((m.name, s.name) for m in manifests if m.backend == "builtin" for s in m.shots
                  if s.split in ("val", "test"))


def test_evaluation_doc_counts_the_held_out_shots():
    """docs/evaluation.md states how many shots the moving-shot test below scores."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    stated = re.search(r"every val and test shot of every builtin manifest \((\d+) shots", doc)
    assert stated and int(stated[1]) == len(held_out_builtin_shots())


def test_evaluation_doc_states_the_default_luminance_feedback():
    """docs/evaluation.md gives the engine-style TAA's luminance feedback weight; it said 0.75 after the default
    became 0.25."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    stated = re.search(r"weight ≥ ([\d.]+) × the relative difference", doc)
    assert stated and float(stated[1]) == taa.TaaParams().flicker_weight


@pytest.fixture(scope="module")
def moving_scores(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Mean PSNR (and mean motion) per held-out builtin shot for the input, TAA and taa-clamp."""
    from qw.capture import capture_scene
    from qw.datagen.capture_format import load_meta
    from qw.training.evaluation import metrics
    from qw.training.evaluation.evaluate import passthrough, shot_frames
    from qw.training.infer import frame_range, read_reference, to_image

    root = tmp_path_factory.mktemp("moving")
    scores = {}
    for scene, shot in held_out_builtin_shots():
        (path,) = capture_scene(scene, root, shots=[shot], progress=False, **MOVING)
        meta = load_meta(path)
        frames = frame_range(meta)
        references = [read_reference(path, i) for i in frames]
        methods = {"input": passthrough, "taa": taa.run_taa, "taa-clamp": taa.run_taa_clamp}
        row = {name: float(np.mean([metrics.psnr(to_image(o), r) for o, r in
                                    zip(run(shot_frames(path, meta, frames)), references)]))
               for name, run in methods.items()}
        motion = torch.cat([f.motion.norm(dim=1) for f in shot_frames(path, meta, frames) if f.history_valid])
        row["motion"], row["moving"] = float(motion.mean()), float((motion > 0.01).float().mean())
        scores[f"{scene}/{shot}"] = row
    for name, row in scores.items():
        print(f"{name}: motion {row['motion']:.2f} px/frame on average, {row['moving']:.0%} of pixels moving, "
              f"PSNR input {row['input']:.2f}, TAA {row['taa']:.2f}, taa-clamp {row['taa-clamp']:.2f}")
    return scores


def test_every_held_out_builtin_shot_moves(moving_scores):
    assert len(moving_scores) >= 16  # the held-out instances' shots, and the training scenes' own val/test shots
    for name, row in moving_scores.items():  # the camera moves: nearly every pixel moves in every frame
        assert row["motion"] > 0.05 and row["moving"] > 0.9, (name, row)


def test_taa_beats_the_aliased_input_and_taa_clamp_on_every_moving_shot(moving_scores):
    for name, row in moving_scores.items():
        assert row["taa"] > row["input"] + 0.5, (name, row)
        assert row["taa"] > row["taa-clamp"], (name, row)

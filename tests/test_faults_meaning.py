"""What the stored numbers mean, each array of a capture and of a training crop against an independent oracle.

* colour: the stored frame is re-rendered at the jitter capture.json records and compared byte for byte;
* reference: re-made as the mean of N×N single-sample renders at stratum centres computed here (N² = the samples
  capture.json records), byte for byte; and, for a white box on black, each edge pixel equals the coverage a
  numpy ray caster gives at those sample positions;
* motion and depth: re-rendered from the recorded frames, byte for byte, zero motion at a camera cut;
* channels and pixel types read raw from each EXR header;
* a training crop's motion still warps its previous reference onto its current one after any augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import OpenEXR
import pytest
import torch
from test_renderer import H, W, WHITE, box_scene, ray_cast

from qw.datagen import capture_format as cf
from qw.datagen.builtin.renderer import Renderer
from qw.datagen.builtin.scene import Scene, box, scale, translate
from qw.datagen.builtin.scenes import build_scene
from qw.training.data import BlockDataset
from qw.training.model.warp import warp

SHOT = ("builtin_fence", "low_cut")  # a camera cut at stored frame 6 (see conftest.BUILTIN_CAPTURE)
FRAMES = (0, 5, 6)


def stratum_centres(n: int) -> list[tuple[float, float]]:
    """Offsets from the pixel centre of the centres of an n×n grid of equal cells over the pixel."""
    return [((i + 0.5) / n - 0.5, (j + 0.5) / n - 0.5) for j in range(n) for i in range(n)]


@pytest.fixture(scope="module")
def rerendered(builtin_captures):
    """The shot's metadata, stored frames, and the same frames rendered again here from capture.json alone."""
    shot = cf.shot_dir(builtin_captures, *SHOT)
    meta = cf.load_meta(shot)
    s = meta.backend.settings
    scene = build_scene(s["builder"], s["params"], meta.seed)
    n = math.isqrt(meta.reference.samples)
    assert n * n == meta.reference.samples and s["reference_grid"] == [n, n]
    stored, fresh = {}, {}
    color_renderer = Renderer(scene, meta.width, meta.height, mip_bias=s["mip_bias"])
    reference_renderer = Renderer(scene, meta.width, meta.height, mip_bias=s["reference_mip_bias"])
    try:
        for i in FRAMES:
            frame, jitter = meta.source_frames[i], meta.jitter.offsets[i]
            previous = frame if i in meta.camera_cuts else meta.source_frames[i - 1] if i else frame - 1
            stored[i] = {p: cf.read_frame(shot, p, i) for p in cf.PASSES}
            motion, depth = color_renderer.render_gbuffer(frame, previous)
            total = np.zeros((meta.height, meta.width, 3), np.float64)
            for offset in stratum_centres(n):
                total += reference_renderer.render_color(frame, offset)
            fresh[i] = {"color": color_renderer.render_color(frame, jitter),
                        "reference": (total / (n * n)).astype(np.float32),  # renders are float32, as stored
                        "motion": motion, "depth": depth[..., None]}
    finally:
        color_renderer.release()
        reference_renderer.release()
    return {"shot": shot, "meta": meta, "stored": stored, "fresh": fresh}


@pytest.mark.parametrize("pass_name", list(cf.PASSES))
def test_each_stored_pass_equals_a_rerender_from_capture_json(rerendered, pass_name):
    for i in FRAMES:
        want = rerendered["fresh"][i][pass_name].astype(cf.PASSES[pass_name].dtype)
        got = rerendered["stored"][i][pass_name]
        assert got.tobytes() == want.tobytes(), (pass_name, i, float(np.abs(got.astype(float) - want).max()))


def test_the_colour_is_not_drawn_at_another_frames_jitter(rerendered):
    """The byte comparison above means something: the jitters of the shot differ enough to change the colour."""
    meta, i = rerendered["meta"], FRAMES[1]
    assert len({tuple(o) for o in meta.jitter.offsets[:8]}) == 8
    s = meta.backend.settings
    renderer = Renderer(build_scene(s["builder"], s["params"], meta.seed), meta.width, meta.height,
                        mip_bias=s["mip_bias"])
    try:
        other = renderer.render_color(meta.source_frames[i], meta.jitter.offsets[i - 1]).astype(np.float16)
    finally:
        renderer.release()
    assert (other != rerendered["stored"][i]["color"]).mean() > 0.05


def test_motion_at_a_camera_cut_is_zero(rerendered):
    cut = rerendered["meta"].camera_cuts
    assert cut == [6] and not rerendered["stored"][6]["motion"].any() and rerendered["stored"][5]["motion"].any()


def test_channels_and_pixel_types_read_raw_from_the_exr_headers(rerendered):
    want = {"color": ({"R", "G", "B"}, OpenEXR.HALF), "reference": ({"R", "G", "B"}, OpenEXR.HALF),
            "motion": ({"X", "Y"}, OpenEXR.FLOAT), "depth": ({"Z"}, OpenEXR.FLOAT)}
    for pass_name, (names, pixel_type) in want.items():
        with OpenEXR.File(str(cf.frame_path(rerendered["shot"], pass_name, 0)), separate_channels=True) as exr:
            channels = exr.channels()
            header = exr.header()
            assert set(channels) == names, pass_name
            assert {c.type() for c in channels.values()} == {pixel_type}, pass_name
            assert header["compression"] == OpenEXR.ZIP_COMPRESSION
            assert header["dataWindow"][1].tolist() == [rerendered["meta"].width - 1, rerendered["meta"].height - 1]


def test_reference_edge_pixels_equal_the_ray_cast_coverage():
    """A white emissive box on black, no other light: a reference pixel is exactly the fraction of its samples
    that hit the box. The ray caster shoots through the 4×4 stratum centres computed here."""
    scene = Scene([], [], box_scene().camera, sun_color=(0, 0, 0), ambient=(0, 0, 0))
    scene.add(box(), WHITE, translate((0.1, 0.5, 0)) @ scale((1.5, 1.1, 1.0)))
    renderer = Renderer(scene, W, H)
    try:
        reference = renderer.render_reference(4, 4)[..., 0]
    finally:
        renderer.release()
    coverage = np.mean([ray_cast(scene, 4, offset)[0] >= 0 for offset in stratum_centres(4)], axis=0)
    edge = (coverage > 0) & (coverage < 1)
    assert edge.sum() > 50
    wrong = np.abs(reference - coverage) > 1e-6
    assert wrong.sum() <= 3, (wrong.sum(), np.argwhere(wrong)[:5])


def test_a_training_crop_motion_warps_its_previous_reference_onto_the_current_one(tmp_path):
    """Under every flip and quarter turn the augmentation picks, the crop's motion stays the motion of its images:
    backward-warping frame k−1's reference by frame k's motion gives frame k's reference (a smooth translating
    texture, so bilinear warping is accurate away from the border)."""
    from train_helpers import make_store

    url = make_store(tmp_path / "s.zarr", n_train=2, n_val=0, t=4, tile=48)
    data = BlockDataset(url, crop=40, augment=True)
    errors, wrong_sign = [], []
    for seed in range(12):
        sample = data[(0, seed)]
        ref, motion = sample["reference"].float(), sample["motion"].float()
        inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
        for k in range(1, 4):
            moved = warp(ref[k - 1:k], motion[k:k + 1])
            backwards = warp(ref[k - 1:k], -motion[k:k + 1])
            errors.append(float((moved - ref[k:k + 1])[inner].abs().mean()))
            wrong_sign.append(float((backwards - ref[k:k + 1])[inner].abs().mean()))
    assert max(errors) < 0.03 < min(wrong_sign), (max(errors), min(wrong_sign))  # measured: 0.0104, 0.11
    assert torch.equal(sample["history_valid"], torch.tensor([False, True, True, True]))

"""Builtin renderer against an independent numpy ray caster, end-to-end warping, and real aliasing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.builtin.renderer import Renderer, halton_jitter
from datagen.builtin.scene import CameraKey, CameraPath, Limb, Material, RigidMotion, Scene, box, translate, scale
from datagen.builtin.scenes import build_scene
from datagen.manifests import find_scene
from datagen.validate import reprojected_motion
from training.metrics import psnr, tonemap
from training.warp import warp as training_warp

W, H = 128, 96
WHITE = Material(color=(1.0, 1.0, 1.0), emissive=1.0)

# ------------------------------------------------------------------------------------------------ oracle


def camera_rays(scene: Scene, frame: float, offset=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(world origin, H×W×3 world directions) of the rays through every pixel centre (+offset pixels, +y down)."""
    view = scene.camera.view(frame)
    proj = scene.camera.projection(W / H)
    px = np.arange(W) + 0.5 + offset[0]
    py = np.arange(H) + 0.5 + offset[1]
    xn, yn = np.meshgrid(2 * px / W - 1, 1 - 2 * py / H)
    cam_dir = np.stack([xn / proj[0, 0], yn / proj[1, 1], -np.ones_like(xn)], -1)
    cam_to_world = np.linalg.inv(view)
    return cam_to_world[:3, 3], cam_dir @ cam_to_world[:3, :3].T


def slab_hits(model: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit of the unit cube placed by `model` (inf where missed or behind)."""
    inv = np.linalg.inv(model)
    o = inv[:3, :3] @ origin + inv[:3, 3] if origin.ndim == 1 else origin @ inv[:3, :3].T + inv[:3, 3]
    d = dirs @ inv[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (-0.5 - o) / d, (0.5 - o) / d
    t_near = np.minimum(t0, t1).max(-1)
    t_far = np.maximum(t0, t1).min(-1)
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)


def ray_cast(scene: Scene, frame: float, offset=(0.0, 0.0)):
    """Nearest box hit through every pixel centre (+offset pixels, +y down) of the scene's camera at `frame`.

    Every instance must be the unit cube placed by its model matrix: the hit is found by slab intersection in the
    box's local frame. Returns (instance index or −1, world hit points) per pixel.
    """
    origin, dirs = camera_rays(scene, frame, offset)
    best_t = np.full((H, W), np.inf)
    ids = np.full((H, W), -1)
    for k, inst in enumerate(scene.instances):
        t = slab_hits(inst.model(frame), origin, dirs)
        hit = t < best_t
        best_t[hit], ids[hit] = t[hit], k
    return ids, origin + np.where(ids >= 0, best_t, 0.0)[..., None] * dirs


def screen_position(scene: Scene, frame: float, world: np.ndarray) -> np.ndarray:
    """Image position (pixels, +y down) of world points seen by the unjittered camera at `frame`."""
    proj = scene.camera.projection(W / H)
    clip = np.c_[world.reshape(-1, 3), np.ones(world[..., 0].size)] @ (proj @ scene.camera.view(frame)).T
    ndc = clip[:, :2] / clip[:, 3:]
    return np.stack([(ndc[:, 0] + 1) * W / 2, (1 - ndc[:, 1]) * H / 2], -1).reshape(*world.shape[:-1], 2)


def oracle_motion(scene: Scene, ids: np.ndarray, hits: np.ndarray, frame: float, prev: float) -> np.ndarray:
    """Motion (pixels, current − previous) of the surface points `hits` of instances `ids` (rigidly attached)."""
    prev_world = np.zeros_like(hits)
    for k, inst in enumerate(scene.instances):
        sel = ids == k
        local = (np.c_[hits[sel], np.ones(sel.sum())] @ np.linalg.inv(inst.model(frame)).T)
        prev_world[sel] = (local @ inst.model(prev).T)[:, :3]
    cur_px = np.stack(np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5), -1)
    return cur_px - screen_position(scene, prev, prev_world), prev_world


def planar_depth(scene: Scene, frame: float, world: np.ndarray) -> np.ndarray:
    view = scene.camera.view(frame)
    return -(world @ view[2, :3] + view[2, 3])


def oracle_motion_depth(scene: Scene, frame: float, prev: float, with_prev_depth: bool = False):
    """Motion (pixels, current − previous, +y down) and planar depth of the ray-cast surfaces (and, optionally,
    the planar depth each surface point had in the previous frame)."""
    ids, hits = ray_cast(scene, frame)
    motion, prev_world = oracle_motion(scene, ids, hits, frame, prev)
    depth = planar_depth(scene, frame, hits)
    if with_prev_depth:
        return ids, motion, depth, planar_depth(scene, prev, prev_world)
    return ids, motion, depth


def interior(ids: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood sees the same box (edges are where sampling conventions could differ)."""
    pad = np.pad(ids, 1, mode="edge")
    same = np.ones_like(ids, bool)
    for dy in range(3):
        for dx in range(3):
            same &= pad[dy:dy + H, dx:dx + W] == ids
    return same & (ids >= 0)


def box_scene(camera_step=(0.0, 0.0, 0.0), object_step=(0.0, 0.0, 0.0), spin=0.0, textured=False,
              eye=(0.5, 2.0, 7.0), swing=0.0) -> Scene:
    """A floor, a static box and a moving box; the camera translates by `camera_step` per frame.

    `textured` gives every surface a diffuse checker coarse enough for an 8×8 reference to resolve; `swing`
    (degrees) hangs the moving box as a limb swinging about a pivot above it (a walker's leg, a crane's hook).
    """
    eye, target, step = np.asarray(eye, float), np.array([0.0, 0.5, 0.0]), np.asarray(camera_step)
    cam = CameraPath((CameraKey(0, tuple(eye), tuple(target)), CameraKey(10, tuple(eye + 10 * step),
                                                                            tuple(target + 10 * step))), fov_y=50)

    def look(color, checks):
        return Material(color=color, color2=(0.1, 0.1, 0.1), pattern="checker" if textured else "solid",
                        pattern_scale=checks)

    s = Scene([], [], cam)
    s.add(box(), look((0.5, 0.5, 0.5), 30), translate((0, -0.1, 0)) @ scale((30, 0.2, 30)))
    s.add(box(), look((0.8, 0.3, 0.3), 3), translate((-2.0, 0.6, -1.0)) @ scale((1.0, 1.2, 1.0)))
    motion = RigidMotion(position=(1.0, 0.8, 0.5), size=(1.2, 1.0, 0.8), velocity=object_step, axis=(0.2, 1, 0.1),
                         angle=20, spin=spin)
    if swing:
        body = RigidMotion(position=(1.0, 1.8, 0.5), velocity=object_step, angle=20)
        motion = Limb(body, (0, 0, 0), (0, -1.0, 0), (1.2, 1.0, 0.8), amplitude=swing, rate=25, axis=(0.3, 0.2, 1))
    s.add(box(), look((0.3, 0.3, 0.8), 4), motion)
    return s


CASES = {
    "camera +x": dict(camera_step=(0.12, 0, 0)), "camera -x": dict(camera_step=(-0.12, 0, 0)),
    "camera +y": dict(camera_step=(0, 0.1, 0)), "camera -y": dict(camera_step=(0, -0.1, 0)),
    "camera forward": dict(camera_step=(0, 0, -0.2)),
    "object +x": dict(object_step=(0.15, 0, 0)), "object -x": dict(object_step=(-0.15, 0, 0)),
    "object +y": dict(object_step=(0, 0.12, 0)), "object -y": dict(object_step=(0, -0.12, 0)),
    "object spin + camera": dict(camera_step=(0.05, -0.03, 0.05), spin=6.0),
    "swinging limb + walking body + camera": dict(camera_step=(0.05, 0.02, 0), object_step=(0.08, 0, 0), swing=30),
}


@pytest.mark.parametrize("case", list(CASES))
def test_motion_and_depth_match_ray_casting_oracle(case):
    scene = box_scene(**CASES[case])
    renderer = Renderer(scene, W, H)
    try:
        motion, depth = renderer.render_gbuffer(4, 3)
    finally:
        renderer.release()
    ids, want_motion, want_depth = oracle_motion_depth(scene, 4, 3)
    mask = interior(ids)
    assert mask.mean() > 0.5
    moving_box = mask & (ids == 2)
    err = np.abs(motion[mask] - want_motion[mask]).mean(0)
    box_err = np.abs(motion[moving_box] - want_motion[moving_box]).mean(0)
    moving = np.abs(want_motion[moving_box]).mean(0)
    print(f"{case}: mean |error| x {err[0]:.2e} px, y {err[1]:.2e} px (moving box: {box_err[0]:.2e}, "
          f"{box_err[1]:.2e}); moving box mean |motion| x {moving[0]:.2f} px, y {moving[1]:.2f} px")
    assert (err < 0.01).all() and (box_err < 0.01).all(), (err, box_err)
    assert moving.max() > 0.3  # the case really moves the box
    np.testing.assert_allclose(depth[mask], want_depth[mask], rtol=1e-4)


def test_motion_signs_follow_the_contract():
    """Camera moving right ⇒ static content moves left (−x); object rising ⇒ it moves up the image (−y)."""
    expectations = [(dict(camera_step=(0.12, 0, 0)), 0, -1, 0), (dict(camera_step=(-0.12, 0, 0)), 0, 1, 0),
                    (dict(object_step=(0, 0.12, 0)), 1, -1, 2), (dict(object_step=(0, -0.12, 0)), 1, 1, 2)]
    for kwargs, axis, sign, who in expectations:  # `who`: the box whose pixels are checked (0 floor, 2 moving box)
        scene = box_scene(**kwargs)
        renderer = Renderer(scene, W, H)
        motion, _ = renderer.render_gbuffer(4, 3)
        renderer.release()
        ids, _, _ = oracle_motion_depth(scene, 4, 3)
        assert np.sign(np.median(motion[interior(ids) & (ids == who)][:, axis])) == sign, kwargs


def test_motion_agrees_with_validator_reprojection():
    scene = box_scene(camera_step=(0.1, 0.05, -0.1))  # moving camera; the blue box is static here
    renderer = Renderer(scene, W, H)
    motion, depth = renderer.render_gbuffer(4, 3)
    cams = [renderer.camera(f) for f in (3, 4)]
    renderer.release()
    expected = reprojected_motion(depth, cams[0], cams[1], W, H)
    ids, _, _ = oracle_motion_depth(scene, 4, 3)
    mask = interior(ids)
    assert np.abs(motion[mask] - expected[mask]).max() < 0.01


@pytest.mark.parametrize("jitter", [(0.4, 0.0), (0.0, -0.35), (-0.3, 0.25)])
def test_jitter_moves_the_sample_right_and_down(jitter):
    """Coverage of a white box at pixel centre + jitter equals the oracle's; the opposite sign does not."""
    scene = Scene([], [], box_scene().camera)
    scene.add(box(), WHITE, translate((0.1, 0.5, 0)) @ scale((1.5, 1.1, 1.0)))
    renderer = Renderer(scene, W, H)
    covered = renderer.render_color(4, jitter)[..., 0] > 0.5
    renderer.release()
    want = ray_cast(scene, 4, jitter)[0] >= 0
    wrong = ray_cast(scene, 4, (-jitter[0], -jitter[1]))[0] >= 0
    assert (covered != want).sum() <= 1
    assert (covered != wrong).sum() > 20


def test_halton_jitter_cycle():
    offsets = np.array([halton_jitter(i, 8) for i in range(16)])
    assert np.allclose(offsets[0], (0.0, 1 / 3 - 0.5)) and np.allclose(offsets[1], (-0.25, 2 / 3 - 0.5))
    assert np.array_equal(offsets[:8], offsets[8:]) and (np.abs(offsets) < 0.5).all()
    assert len({tuple(o) for o in offsets[:8]}) == 8


# ------------------------------------------------------------------------------------------------ builtin scenes

SCENES = ["builtin_fence", "builtin_street", "builtin_specular", "builtin_crossing", "builtin_courtyard",
          "builtin_machinery"]
SMALL = (192, 112)


def scene_renderer(name: str) -> Renderer:
    m = find_scene(name)
    return Renderer(build_scene(m.builtin.builder, m.builtin.params, m.seed), *SMALL)


def warp(image: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """`training.warp.warp` (out(p) = image(p − m(p))) on H×W×C numpy arrays."""
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    return training_warp(chw(image), chw(motion))[0].permute(1, 2, 0).numpy()


def test_warping_the_previous_reference_by_motion_gives_the_current_reference():
    """End to end: out(p) = ref_prev(p − m(p)) reproduces ref_cur where nothing was disoccluded.

    Diffuse checkers only, so a surface point keeps its colour along its trajectory (specular highlights and
    textures finer than the 8×8 reference resolves would not); camera and object both move.
    """
    scene = box_scene(camera_step=(0.25, 0.08, -0.12), object_step=(-0.3, 0.1, 0.2), textured=True,
                      eye=(0.5, 4.0, 6.0))
    renderer = Renderer(scene, W, H)
    frame = 4
    refs = [renderer.render_reference(f, 8) for f in (frame - 1, frame)]
    motion, _ = renderer.render_gbuffer(frame, frame - 1)
    _, prev_depth = renderer.render_gbuffer(frame - 1, frame - 2)
    renderer.release()
    ids, _, _, want_prev_depth = oracle_motion_depth(scene, frame, frame - 1, with_prev_depth=True)
    # disoccluded: the previous frame saw another surface (another depth) where this point was; edges are left out
    # because the box-filtered reference mixes surfaces that move differently there
    visible_before = np.abs(warp(prev_depth[..., None], motion)[..., 0] / want_prev_depth - 1) < 0.01
    mask = visible_before & interior(ids)
    disoccluded = interior(ids) & ~visible_before

    def error(offset=(0.0, 0.0)):
        return np.abs(warp(refs[0], motion + np.asarray(offset)) - refs[1])[mask].mean()

    frame_difference = np.abs(refs[0] - refs[1])[mask].mean()
    shifted = {o: error(o) for o in ((0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25))}
    print(f"warp error {error():.4f}, frame difference {frame_difference:.4f}, negated motion "
          f"{error(-2 * motion):.4f}, motion + quarter-pixel shifts {[round(float(e), 4) for e in shifted.values()]}; "
          f"{mask.mean():.0%} of pixels compared, {disoccluded.mean():.1%} disoccluded; moving box "
          f"{(mask & (ids == 2)).sum()} px")
    assert mask.mean() > 0.5 and disoccluded.sum() > 20 and (mask & (ids == 2)).sum() > 100
    assert error() < 0.2 * frame_difference
    assert error(-2 * motion) > frame_difference
    assert min(shifted.values()) > error()  # the convention is exact: any quarter-pixel bias is worse


@pytest.mark.parametrize("name", SCENES)
def test_aliasing_is_real(name):
    """1 spp colour is far from the reference; a reference from another random sample set is close to it."""
    renderer = scene_renderer(name)
    frame = 30
    reference = renderer.render_reference(frame, 8)
    other = renderer.render_reference(frame, 8, rng=np.random.default_rng(1))
    color = renderer.render_color(frame, halton_jitter(frame))
    renderer.release()
    aliased, converged = psnr(color, reference), psnr(other, reference)
    print(f"{name}: PSNR(color, reference) {aliased:.1f} dB; PSNR(other 8x8 sample set, reference) {converged:.1f} dB;"
          f" max colour {color.max():.1f}")
    assert aliased < converged - 8


def test_specular_scene_has_hdr_highlights():
    renderer = scene_renderer("builtin_specular")
    color = renderer.render_color(30)
    renderer.release()
    assert color.max() > 10 and (color > 5).any(-1).mean() < 0.05  # sharp: few pixels far above 1


@pytest.mark.parametrize("name", ["builtin_street", "builtin_machinery"])  # text; tread-plate normal map
def test_negative_mip_bias_keeps_more_texture_detail(name):
    """The configured mip bias reaches the texture sampler: a negative bias picks finer (busier) mip levels."""
    m = find_scene(name)
    scene = build_scene(m.builtin.builder, m.builtin.params, m.seed)

    def detail(bias: float) -> float:
        renderer = Renderer(scene, *SMALL, mip_bias=bias)
        image = tonemap(renderer.render_color(30))
        renderer.release()
        return float(np.abs(np.diff(image, axis=1)).mean())

    sharp, default, blurry = detail(-2.0), detail(0.0), detail(2.0)
    print(f"mean |horizontal gradient|: bias -2 {sharp:.4f}, 0 {default:.4f}, +2 {blurry:.4f}")
    assert sharp > default > blurry

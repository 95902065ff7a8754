"""The game-like features of the builtin renderer against independent numpy oracles: alpha-tested cut-outs
(motion of the surface that was hit, no coverage blending), sun shadow maps, normal maps, the reference's
definition with all of them on, and determinism of the game-like scenes."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.builtin.renderer import Renderer, halton_jitter, stratified_offsets
from datagen.builtin.scene import (CameraKey, CameraPath, Material, RigidMotion, Scene, SunShadow, box, quad, rotate,
                                   scale, translate)
from datagen.builtin.scenes import build_scene
from datagen.builtin.textures import bricks_texture
from datagen.manifests import find_scene
from test_renderer import H, W, camera_rays, interior, oracle_motion, planar_depth, slab_hits

# ------------------------------------------------------------------------------------------------ alpha test

CARD_UV = (3.0, 12.0)  # grate bars at u = 0, 1, 2, 3; cross bars at v = 0, 4, 8, 12


def grate_kept(uv: np.ndarray) -> np.ndarray:
    """numpy twin of the shader's `grate` cut-out: True where the card is solid."""
    d = np.abs((uv * (1.0, 0.25) + 0.5) % 1.0 - 0.5)
    return (d[..., 0] <= 0.12) | (d[..., 1] <= 0.03)


def card_scene(card_look: Material, wall_look: Material) -> Scene:
    """A static wall (unit cube) behind a 2×2 m alpha-tested grate card moving left and up; the camera trucks
    right."""
    cam = CameraPath((CameraKey(0, (0.0, 1.0, 6.0), (0.0, 1.0, 0.0)), CameraKey(10, (0.5, 1.0, 6.0), (0.5, 1.0, 0.0))),
                     fov_y=40)
    s = Scene([], [], cam)
    s.add(box(), wall_look, translate((0, 1, -2)) @ scale((12, 8, 0.2)))
    s.add(quad(2, 2, CARD_UV), card_look, RigidMotion(position=(0, 1, 1), velocity=(-0.15, 0.05, 0), axis=(0, 1, 0),
                                                      angle=15))
    return s


def card_hits(model: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ray parameter of the hit of the 2×2 card's plane, whether that hit is on the quad) for rays from `origin`
    (one point or one per ray)."""
    inv = np.linalg.inv(model)
    o = origin @ inv[:3, :3].T + inv[:3, 3]
    d = dirs @ inv[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -o[..., 2] / d[..., 2]
    local = o + t[..., None] * d
    on_quad = (np.abs(local[..., :2]) <= 1).all(-1) & (t > 0)
    return t, on_quad, on_quad & grate_kept((local[..., :2] + 1) / 2 * CARD_UV)


def card_oracle(scene: Scene, frame: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids: 0 wall, 1 card, −1 nothing; world hits; pixels whose ray crosses the card quad) by ray casting,
    with the card's holes from `grate_kept`."""
    origin, dirs = camera_rays(scene, frame)
    wall, card = scene.instances
    t_wall = slab_hits(wall.model(frame), origin, dirs)
    t_card, on_quad, kept = card_hits(card.model(frame), origin, dirs)
    solid = kept & (t_card < t_wall)
    ids = np.where(solid, 1, np.where(np.isfinite(t_wall), 0, -1))
    t = np.where(solid, t_card, np.where(np.isfinite(t_wall), t_wall, 0))
    return ids, origin + t[..., None] * dirs, on_quad


def test_alpha_tested_pixels_carry_the_motion_of_the_surface_that_was_hit():
    """Through the grate's holes the motion and depth are the static wall's; on its bars, the moving card's."""
    look = Material(color=(0.7, 0.7, 0.7), pattern="grate", pattern_scale=1.0)
    scene = card_scene(look, Material(color=(0.3, 0.3, 0.3)))
    renderer = Renderer(scene, W, H)
    motion, depth = renderer.render_gbuffer(4, 3)
    renderer.release()
    ids, hits, on_quad = card_oracle(scene, 4)
    want, _ = oracle_motion(scene, ids, hits, 4, 3)
    mask = interior(ids)
    holes, bars = mask & on_quad & (ids == 0), mask & (ids == 1)
    card_motion, wall_motion = want[bars].mean(0), want[holes].mean(0)
    print(f"{holes.sum()} hole and {bars.sum()} bar pixels; card motion {card_motion}, wall motion {wall_motion}")
    assert holes.sum() > 300 and bars.sum() > 100
    assert np.abs(card_motion - wall_motion).max() > 1.0  # the two surfaces move differently: the check can fail
    for region in (holes, bars):
        assert np.abs(motion[region] - want[region]).mean() < 0.01
        np.testing.assert_allclose(depth[region], planar_depth(scene, 4, hits)[region], rtol=1e-4)


def test_alpha_test_cuts_without_coverage_blending():
    """No alpha-to-coverage: at 1 spp a pixel is either the bright card or the dark wall, never between; the box
    filtered reference has the in-between values along every bar (the aliasing the network must remove)."""
    scene = card_scene(Material(color=(1.0, 1.0, 1.0), pattern="grate", pattern_scale=1.0, emissive=50.0),
                       Material(color=(0.01, 0.01, 0.01)))
    renderer = Renderer(scene, W, H)
    color = renderer.render_color(4, halton_jitter(4))[..., 0]
    reference = renderer.render_reference(4, 4)[..., 0]
    renderer.release()
    between = lambda image: ((image > 2) & (image < 40)).mean()  # noqa: E731
    print(f"pixels between wall and card: colour {between(color):.2%}, reference {between(reference):.2%}; "
          f"card pixels {(color > 40).mean():.1%}")
    assert (color > 40).mean() > 0.02 and between(color) == 0
    assert between(reference) > 0.02


# ------------------------------------------------------------------------------------------------ shadows

SUN = (1.0, 1.0, 0.4)


def shadow_scene(occluder_step=(0.0, 0.0, 0.0)) -> Scene:
    """A diffuse floor under a floating slab (moving by `occluder_step` per frame) and a horizontal alpha-tested
    grate card; sun from `SUN`, camera above."""
    cam = CameraPath((CameraKey(0, (0.5, 6.0, 5.0), (0.5, 0.0, 0.0)),), fov_y=50)
    s = Scene([], [], cam, sun_direction=SUN, shadow=SunShadow(center=(0, 0, 0), extent=5, resolution=512))
    s.add(box(), Material(color=(0.5, 0.5, 0.5)), translate((0, -0.1, 0)) @ scale((30, 0.2, 30)))
    s.add(box(), Material(color=(0.8, 0.2, 0.2)), RigidMotion(position=(0, 1.5, 0), size=(3.0, 0.3, 2.0),
                                                              velocity=occluder_step, axis=(0, 1, 0), angle=25))
    s.add(quad(2, 2, CARD_UV), Material(color=(0.2, 0.8, 0.2), pattern="grate", pattern_scale=1.0),
          translate((3.0, 1.8, 1.5)) @ rotate((0, 1, 0), 20) @ rotate((1, 0, 0), -90))
    return s


def oracle_shadow(scene: Scene, frame: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(floor pixels, floor pixels whose point sees the slab or the card's bars towards the sun, floor pixels
    whose sun ray crosses the card) by ray casting."""
    floor_box, slab, card = scene.instances
    origin, dirs = camera_rays(scene, frame)
    t_floor, t_slab = slab_hits(floor_box.model(frame), origin, dirs), slab_hits(slab.model(frame), origin, dirs)
    t_card, _, on_card = card_hits(card.model(frame), origin, dirs)
    floor = (t_floor < t_slab) & ~(on_card & (t_card < t_floor)) & np.isfinite(t_floor)
    hits = origin + np.where(floor, t_floor, 0)[..., None] * dirs
    sun = np.broadcast_to(np.asarray(SUN) / np.linalg.norm(SUN), hits.shape)
    _, under_card, bars = card_hits(card.model(frame), hits, sun)
    blocked = np.isfinite(slab_hits(slab.model(frame), hits + 1e-4 * sun, sun)) | bars
    return floor, floor & blocked, floor & under_card


def away_from_edges(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Pixels whose (2·radius+1)² neighbourhood has the same value of `mask`."""
    pad = np.pad(mask, radius, mode="edge")
    same = np.ones_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad[dy:dy + H, dx:dx + W] == mask
    return same


def test_shadow_map_matches_ray_cast_shadows_of_a_moving_occluder():
    """Floor pixels are dark exactly where a ray towards the sun hits the slab or a bar of the grate (its holes
    let the sun through), at two frames of the slab's motion (the map is redrawn per frame); without the shadow
    map nothing on the floor is dark."""
    scene = shadow_scene(occluder_step=(0.25, 0.0, -0.1))
    renderer = Renderer(scene, W, H)
    frames = {f: renderer.render_color(f)[..., 0] for f in (0, 4)}
    renderer.release()
    for frame, red in frames.items():
        floor, shadowed, under_card = oracle_shadow(scene, frame)
        lit_value = 0.5 * (scene.ambient[0] + scene.sun_color[0] * SUN[1] / np.linalg.norm(SUN))
        dark = red < (0.5 * scene.ambient[0] + lit_value) / 2
        compared = floor & away_from_edges(shadowed)
        agree = (dark == shadowed)[compared].mean()
        holes = (compared & under_card & ~shadowed).sum()
        print(f"frame {frame}: {shadowed[compared].mean():.1%} of {compared.sum()} floor pixels in shadow, "
              f"{holes} lit through the grate's holes; agreement {agree:.2%}")
        assert shadowed[compared].sum() > 100 and holes > 50 and agree > 0.995
    assert not np.array_equal(oracle_shadow(scene, 0)[1], oracle_shadow(scene, 4)[1])
    unshadowed = Scene(scene.materials, scene.instances, scene.camera, sun_direction=SUN)
    renderer = Renderer(unshadowed, W, H)
    red = renderer.render_color(4)[..., 0]
    renderer.release()
    floor = oracle_shadow(scene, 4)[0]
    assert (red[floor & away_from_edges(floor)] > 0.5 * scene.ambient[0] * 1.5).all()


# ------------------------------------------------------------------------------------------------ normal maps


def floor_scene(bump: float) -> Scene:
    """A glossy brick floor seen at a grazing angle under a low sun (highlights on the bevels)."""
    cam = CameraPath((CameraKey(0, (0.0, 1.2, 3.0), (0.0, 0.0, -2.0)), CameraKey(10, (1.0, 1.2, 3.0),
                                                                                 (1.0, 0.0, -2.0))), fov_y=50)
    s = Scene([], [], cam, sun_direction=(0.2, 0.5, -1.0))
    bricks = Material(color=(0.5, 0.3, 0.2), color2=(0.2, 0.2, 0.2), pattern="bricks", pattern_scale=0.5,
                      specular=1.0, shininess=200, bump=bump)
    s.add(quad(20, 20, (20, 20)), bricks, rotate((1, 0, 0), -90))
    return s


def test_normal_maps_change_shading_and_nothing_else():
    """The bumps add shading detail (bright bevel highlights and shaded joints); motion and depth stay the flat
    surface's."""
    images, gbuffers = {}, {}
    for bump in (0.0, 1.0):
        renderer = Renderer(floor_scene(bump), W, H)
        images[bump] = renderer.render_color(4)
        gbuffers[bump] = renderer.render_gbuffer(4, 3)
        renderer.release()
    flat, bumpy = images[0.0], images[1.0]
    detail = {b: float(np.abs(np.diff(np.log1p(img), axis=1)).mean()) for b, img in images.items()}
    changed = (np.abs(bumpy - flat).max(-1) > 0.1 * flat.max(-1)).mean()
    print(f"mean |log horizontal gradient|: flat {detail[0.0]:.4f}, bumpy {detail[1.0]:.4f}; "
          f"{changed:.0%} of pixels changed by > 10%")
    assert detail[1.0] > 1.5 * detail[0.0] and changed > 0.2
    for a, b in zip(gbuffers[0.0], gbuffers[1.0]):
        np.testing.assert_array_equal(a, b)


def bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """OpenGL's LINEAR magnification with REPEAT wrapping: texel centres at (i + 0.5) / size, row 0 at v = 0."""
    size = texture.shape[0]
    x, y = uv[..., 0] * size - 0.5, uv[..., 1] * size - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    at = lambda i, j: texture[j % size, i % size].astype(np.float64)  # noqa: E731
    return ((1 - fy) * ((1 - fx) * at(x0, y0) + fx * at(x0 + 1, y0)) +
            fy * ((1 - fx) * at(x0, y0 + 1) + fx * at(x0 + 1, y0 + 1)))


def test_normal_map_shading_matches_the_bumps_of_the_texture():
    """Diffuse bricks seen from above, magnified (mip level 0): each pixel's brightness is the albedo times the
    sun's cosine on the texture's tangent-space normal, with tangent +u = world +x and bitangent +v = world −z
    (the floor quad's uv axes). A flipped slope, swapped axes or a missing bump would all miss."""
    cam = CameraPath((CameraKey(0, (0.0, 1.5, 0.3), (0.0, 0.0, 0.0)),), fov_y=50)
    sun = np.array([0.8, 0.6, -0.5])
    s = Scene([], [], cam, sun_direction=tuple(sun), ambient=(0.0, 0.0, 0.0), sun_color=(1.0, 1.0, 1.0))
    bump, scale_ = 1.5, 0.1
    s.add(quad(40, 40, (40, 40)), Material(color=(0.8, 0.8, 0.8), color2=(0.2, 0.2, 0.2), pattern="bricks",
                                            pattern_scale=scale_, bump=bump), rotate((1, 0, 0), -90))
    renderer = Renderer(s, W, H)
    red = renderer.render_color(0)[..., 0]
    renderer.release()
    origin, dirs = camera_rays(s, 0)
    hits = origin + (-origin[1] / dirs[..., 1])[..., None] * dirs
    uv = np.stack([hits[..., 0] + 20, -hits[..., 2] + 20], -1) * scale_  # quad corner (−20, 0, 20) is uv (0, 0)
    texel = bilinear(bricks_texture(s.texture_seed), uv) / 255
    slope = texel[..., :2] * 2 - 1
    z = np.sqrt(np.clip(1 - (slope ** 2).sum(-1), 0, None))
    normal = np.stack([slope[..., 0] * bump, z, -slope[..., 1] * bump], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = sun / np.linalg.norm(sun)
    albedo = 0.8 + (0.2 - 0.8) * texel[..., 2]
    want = albedo * np.clip(normal @ light, 0, None)
    flat = albedo * light[1]
    error, flat_error = np.abs(red - want), np.abs(red - flat)
    print(f"|rendered - oracle| median {np.median(error):.4f}, 99th pct {np.percentile(error, 99):.4f}; "
          f"flat shading would be off by median {np.median(flat_error):.4f}")
    assert np.median(flat_error) > 0.03
    assert np.median(error) < 0.1 * np.median(flat_error) and np.percentile(error, 99) < 0.1


# ------------------------------------------------------------------------------------------------ game-like scenes


def game_scene(name: str, seed: int | None = None) -> Scene:
    m = find_scene(name)
    return build_scene(m.builtin.builder, m.builtin.params, m.seed if seed is None else seed)


def test_reference_is_the_box_mean_of_the_shaded_samples_with_shadows_normal_maps_and_cut_outs():
    """The reference is the mean of N×N colour samples (same shadow map, normal maps, alpha tests), each taken with
    the texture detail of N× the resolution (mip bias − log2 N)."""
    scene = game_scene("builtin_courtyard")
    n, size, frame = 2, (64, 40), 30
    reference_renderer = Renderer(scene, *size, mip_bias=1.0)  # − log2(2) → the samples' bias is 0
    reference = reference_renderer.render_reference(frame, n)
    reference_renderer.release()
    renderer = Renderer(scene, *size)
    samples = [renderer.render_color(frame, offset) for offset in stratified_offsets(n)]
    renderer.release()
    np.testing.assert_allclose(reference, np.mean(np.asarray(samples, np.float64), 0), rtol=1e-6, atol=1e-7)
    assert np.abs(samples[0] - samples[-1]).mean() > 0.01  # the sub-pixel samples really differ


@pytest.mark.parametrize("name", ["builtin_courtyard", "builtin_machinery"])
def test_game_like_scenes_are_deterministic_per_seed(name):
    """Same seed, same bytes (colour, motion, depth); another seed, another image."""

    def passes(seed=None):
        renderer = Renderer(game_scene(name, seed), 48, 32)
        out = [renderer.render_color(20, halton_jitter(20)), *renderer.render_gbuffer(20, 19)]
        renderer.release()
        return [a.tobytes() for a in out]

    first = passes()
    assert passes() == first
    assert passes(seed=find_scene(name).seed + 1)[0] != first[0]

"""Scene builders: small functions that turn a manifest's `builtin: {builder, params}` and seed into a `Scene`.

Each builder provokes one kind of aliasing that QW-Net must learn to remove:

* ``fence``     thin geometry: fence slats, wires, alpha-tested grass and leaf cards;
* ``street``    high-frequency, minified textures: checkers and text on receding planes;
* ``specular``  sharp HDR highlights (≫ 1) on glossy spheres under bright lights, emissive panels;
* ``crossing``  disocclusions: pillars and objects crossing the view at different depths.

Every builder takes the camera keys from its params (``camera: [{frame, eye, target, cut?}, ...]``; the camera
moves linearly between keys and jumps at a key with ``cut: true``, which the shot must list in ``camera_cuts``)
and draws everything else from ``numpy.random.default_rng(seed)``: the seed is a scene *instance*. It changes the
layout (positions, counts, spacing), the geometry (sizes, heights, widths), the materials (colours, pattern scales,
gloss) and the procedural textures, so two seeds of one builder are two different scenes of the same kind; a
manifest still fully determines the pixels. Held-out instances (other seeds) are what evaluation runs on.
A new builder is a keyword-only function decorated with ``@builder``; its parameters are the manifest's params.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from qw.datagen.builtin.scene import (CameraKey, CameraPath, Material, PointLight, RigidMotion, Scene, box, quad,
                                   rotate, scale, sphere, translate)
from qw.datagen.errors import QwError

Builder = Callable[..., Scene]
BUILDERS: dict[str, Builder] = {}

SKY = Material(color=(0.9, 1.0, 1.2), color2=(0.25, 0.45, 1.0), pattern="sky")


def builder(fn: Builder) -> Builder:
    BUILDERS[fn.__name__] = fn
    return fn


def camera_path(keys: list[dict[str, Any]], fov: float = 60.0) -> CameraPath:
    """A `CameraPath` from manifest keys like ``{frame: 0, eye: [x, y, z], target: [x, y, z], cut: false}``."""
    return CameraPath(tuple(CameraKey(float(k["frame"]), tuple(k["eye"]), tuple(k["target"]), bool(k.get("cut")))
                            for k in keys), fov_y=fov)


def environment(scene: Scene, ground: Material, ground_size: float = 200.0, uv_repeat: float = 1.0) -> None:
    """Sky box and a ground quad in the XZ plane: every pixel sees geometry, so depth and motion are defined."""
    scene.add(box(), SKY, scale(300.0))
    ground_quad = quad(ground_size, ground_size, (ground_size * uv_repeat,) * 2)
    scene.add(ground_quad, ground, rotate((1, 0, 0), -90))


def camera_track(camera: CameraPath) -> np.ndarray:
    """(F, 3) camera positions at every frame from the first to the last key."""
    frames = np.arange(camera.keys[0].frame, camera.keys[-1].frame + 1)
    return np.array([camera.eye_target(f)[0] for f in frames])


def place(rng: np.random.Generator, low: tuple[float, float, float], high: tuple[float, float, float],
          track: np.ndarray, clearance: float) -> np.ndarray:
    """A uniform random point in the box [low, high] at least `clearance` away from every camera position.

    Keeps the camera from flying through (or grazing) scattered objects, which would put geometry at the near
    plane and give meaningless motion there.
    """
    for _ in range(1000):
        point = rng.uniform(low, high)
        if np.min(np.linalg.norm(track - point, axis=1)) >= clearance:
            return point
    raise ValueError(f"no room for an object in {low}..{high} at {clearance} from the camera path")


def vary(rng: np.random.Generator, value: float, spread: float) -> float:
    """`value` scaled by a random factor in [1 − spread, 1 + spread]: a per-instance variation of a nominal size."""
    return float(value * rng.uniform(1 - spread, 1 + spread))


def tint(rng: np.random.Generator, base: tuple[float, float, float], spread: float = 0.35) -> tuple[float, ...]:
    """`base` colour with each channel scaled independently: a per-instance material variation."""
    return tuple(float(c * rng.uniform(1 - spread, 1 + spread)) for c in base)


def count(rng: np.random.Generator, nominal: int, spread: float = 0.3) -> int:
    return max(1, int(round(vary(rng, nominal, spread))))


def build_scene(builder_name: str, params: dict[str, Any], seed: int, where: str = "manifest") -> Scene:
    """Run builder `builder_name` with `params`; errors name `where` (the manifest) and the problem."""
    if builder_name not in BUILDERS:
        raise QwError(f"{where}: unknown builtin builder {builder_name!r}; builders are {', '.join(BUILDERS)}")
    fn = BUILDERS[builder_name]
    accepted = set(inspect.signature(fn).parameters) - {"seed"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise QwError(f"{where}: builder {builder_name!r} has no parameter(s) {unknown}; it takes {sorted(accepted)}")
    try:
        return fn(seed=seed, **params)
    except (KeyError, TypeError, ValueError) as exc:
        raise QwError(f"{where}: builder {builder_name!r} failed on its params: {exc}") from None


# ------------------------------------------------------------------------------------------------ builders


@builder
def fence(*, seed: int, camera: list[dict], fov: float = 55.0, slats: int = 60, slat_width: float = 0.035,
          wires: int = 4, grass_cards: int = 260, bushes: int = 6) -> Scene:
    """A picket fence with thin wires, a field of alpha-tested grass cards, leafy bushes and a rolling ball."""
    rng = np.random.default_rng(seed)
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed)
    environment(s, Material(color=tint(rng, (0.22, 0.3, 0.12)), color2=tint(rng, (0.3, 0.24, 0.14)),
                            pattern="checker", pattern_scale=vary(rng, 0.5, 0.5)))
    wood = Material(color=tint(rng, (0.75, 0.62, 0.45)), specular=0.2, shininess=16)
    slat_width, fence_z, lean = vary(rng, slat_width, 0.4), rng.uniform(-0.8, 0.5), rng.uniform(-8, 8)
    base_height = vary(rng, 1.2, 0.25)
    for x in np.linspace(-12, 12, count(rng, slats)):
        height = base_height + 0.1 * rng.standard_normal()
        s.add(box(), wood, rotate((0, 1, 0), lean) @ translate((x, height / 2, fence_z))
              @ scale((slat_width, height, slat_width)))
    wire = Material(color=tint(rng, (0.6, 0.6, 0.65), 0.2), specular=1.0, shininess=120)
    wire_width = vary(rng, 0.012, 0.4)
    for y in np.linspace(0.25, base_height - 0.15, count(rng, wires, 0.5)):
        s.add(box(), wire, rotate((0, 1, 0), lean) @ translate((0, y, fence_z + 0.03))
              @ scale((24, wire_width, wire_width)))
    grass = Material(color=tint(rng, (0.12, 0.35, 0.05)), color2=tint(rng, (0.5, 0.75, 0.2)), pattern="blades",
                     pattern_scale=vary(rng, 6, 0.4))
    track = camera_track(s.camera)
    for _ in range(count(rng, grass_cards)):
        centre = place(rng, (-12, 0.25, -6), (12, 0.25, 8), track, clearance=0.8)
        s.add(quad(0.8, 0.5), grass, translate(centre) @ rotate((0, 1, 0), rng.uniform(0, 180)))
    leaves = Material(color=tint(rng, (0.08, 0.3, 0.06)), color2=tint(rng, (0.3, 0.55, 0.12)), pattern="leaf",
                      pattern_scale=vary(rng, 5, 0.4))
    for _ in range(count(rng, bushes, 0.5)):
        centre = place(rng, (-10, 0.9, -5), (10, 0.9, -1), track, clearance=1.5)
        for angle in (0, 60, 120):
            s.add(quad(1.6, 1.6), leaves, translate(centre) @ rotate((0, 1, 0), angle + rng.uniform(0, 30)))
    ball = Material(color=tuple(rng.uniform(0.1, 0.9, 3)), specular=0.8, shininess=200)
    speed = rng.uniform(0.05, 0.12)
    s.add(sphere(), ball, RigidMotion(position=(-8, 0.35, rng.uniform(-3, -1.5)), size=(0.7,) * 3,
                                      velocity=(speed, 0, 0), axis=(0, 0, 1), spin=-np.degrees(speed / 0.35)))
    return s


@builder
def street(*, seed: int, camera: list[dict], fov: float = 60.0, length: float = 120.0, buildings: int = 14,
           checker_scale: float = 1.0, signs: int = 8) -> Scene:
    """A long street: checkered road, text-covered façades and signs receding into the distance, a moving van."""
    rng = np.random.default_rng(seed)
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed)
    environment(s, Material(color=tint(rng, (0.85, 0.85, 0.85), 0.15), color2=tint(rng, (0.05, 0.05, 0.06)),
                            pattern="checker", pattern_scale=vary(rng, checker_scale, 0.5)))
    half_width = vary(rng, 9.0, 0.2)
    for side in (-1, 1):
        z = 0.0
        for _ in range(count(rng, buildings)):
            depth, height = rng.uniform(5, 10), rng.uniform(6, 18)
            facade = Material(color=tint(rng, (0.5, 0.47, 0.42)), color2=tuple(rng.uniform(0.01, 0.08, 3)),
                              pattern=str(rng.choice(["text", "text", "stripes", "checker"])),
                              pattern_scale=float(rng.choice([0.5, 1.0, 2.0])), specular=0.1, shininess=32)
            centre = (side * half_width, height / 2, -z - depth / 2)
            s.add(box(uv_scale=2.0), facade, translate(centre) @ scale((6, height, depth)))
            z += depth + rng.uniform(0.2, 1.5)
            if z > length:
                break
        railing = Material(color=(0.9, 0.9, 0.9), color2=tint(rng, (0.1, 0.1, 0.1)), pattern="stripes",
                           pattern_scale=vary(rng, 40, 0.4))
        s.add(quad(length, 1.0, (length / 10, 1)), railing,
              translate((side * (half_width - 3.5), 0.5, -length / 2)) @ rotate((0, 1, 0), 90))
    sign = Material(color=(1.0, 1.0, 1.0), color2=(0.0, 0.0, 0.0), pattern="text", pattern_scale=1.0, emissive=1.5)
    signs = count(rng, signs)
    for k in range(signs):
        side = 1 if k % 2 else -1
        s.add(quad(3.0, 1.2, (3, 1.2)), sign,
              translate((side * (half_width - 4.5), rng.uniform(2.5, 4.5), -8.0 - k * length / signs))
              @ rotate((0, 1, 0), -side * rng.uniform(55, 85)))
    van = Material(color=tuple(rng.uniform(0.1, 0.9, 3)), color2=(0.1, 0.1, 0.1), pattern="checker",
                   pattern_scale=float(rng.choice([4, 8, 16])), specular=0.6, shininess=80)
    s.add(box(), van, RigidMotion(position=(rng.uniform(-3, -1), 1.0, -60), size=(2, 2, 4.5),
                                  velocity=(0, 0, rng.uniform(0.2, 0.5))))
    return s


@builder
def specular(*, seed: int, camera: list[dict], fov: float = 50.0, spheres: int = 12, lights: int = 3,
             light_power: float = 40.0, panel_emission: float = 12.0) -> Scene:
    """Glossy spheres and a spinning chrome-like box under bright point lights, with emissive panels."""
    rng = np.random.default_rng(seed)
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed, sun_color=(0.6, 0.6, 0.7),
              ambient=(0.05, 0.05, 0.07))
    environment(s, Material(color=tint(rng, (0.3, 0.3, 0.32)), color2=tint(rng, (0.12, 0.12, 0.13)),
                            pattern="checker", pattern_scale=vary(rng, 1.0, 0.5), specular=0.5, shininess=60))
    track = camera_track(s.camera)
    closest = float(np.hypot(track[:, 0], track[:, 2]).min())
    for k in range(lights):
        a = 2 * np.pi * k / lights
        color = np.array([1.0, 0.9, 0.8]) * light_power * rng.uniform(0.7, 1.3)
        s.lights.append(PointLight((4 * np.cos(a), 3.5, 4 * np.sin(a)), tuple(color)))
    for k in range(count(rng, spheres)):
        gloss = Material(color=tuple(rng.uniform(0.05, 0.8, 3)), specular=float(rng.uniform(0.5, 2.0)),
                         shininess=float(rng.choice([200, 800, 2000])))
        radius = rng.uniform(0.3, 0.8)
        position = place(rng, (-5, radius, -5), (5, radius, 5), track, clearance=radius + 0.6)
        motion = RigidMotion(position=position, size=(2 * radius,) * 3)
        if k % 3 == 0:  # some spheres orbit the centre: object motion with highlights sliding over them
            # between the metal box in the centre and the closest the camera comes to the centre
            inner, outer = 1.2 + radius, closest - radius - 0.6
            motion = RigidMotion(position=(0, radius, 0), size=(2 * radius,) * 3,
                                 orbit=(rng.uniform(inner, max(inner, outer)), rng.uniform(0.8, 2.0),
                                        rng.uniform(0, 360)))
        s.add(sphere(), gloss, motion)
    metal = Material(color=tint(rng, (0.7, 0.7, 0.75), 0.2), specular=3.0, shininess=3000)
    side = vary(rng, 1.2, 0.2)
    s.add(box(), metal, RigidMotion(position=(0, 0.8, 0), size=(side,) * 3, axis=tuple(rng.uniform(-1, 1, 3)),
                                    spin=rng.uniform(0.8, 2.5)))
    for k in range(4):
        a = np.pi / 2 * k + np.pi / 4
        panel = Material(color=tuple(rng.uniform(0.3, 1.0, 3)), emissive=panel_emission)
        s.add(box(), panel, translate((7 * np.cos(a), 1.5, 7 * np.sin(a))) @ rotate((0, 1, 0), -np.degrees(a))
              @ scale((vary(rng, 0.08, 0.5), vary(rng, 2.5, 0.3), vary(rng, 0.6, 0.5))))
    return s


@builder
def crossing(*, seed: int, camera: list[dict], fov: float = 60.0, pillars: int = 10, movers: int = 6) -> Scene:
    """Pillars in front of a text-covered wall while boxes and balls cross the view: disocclusions everywhere."""
    rng = np.random.default_rng(seed)
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed)
    environment(s, Material(color=tint(rng, (0.5, 0.45, 0.4)), color2=tint(rng, (0.3, 0.27, 0.25)),
                            pattern="checker", pattern_scale=vary(rng, 0.5, 0.5)))
    wall = Material(color=tint(rng, (0.55, 0.52, 0.48)), color2=(0.02, 0.02, 0.05), pattern="text",
                    pattern_scale=float(rng.choice([0.5, 1.0, 2.0])))
    s.add(quad(60, 12, (8, 1.6)), wall, translate((0, 6, rng.uniform(-14, -10))))
    stone = Material(color=tint(rng, (0.6, 0.6, 0.6)), color2=tint(rng, (0.4, 0.4, 0.42)), pattern="stripes",
                     pattern_scale=vary(rng, 4, 0.5), specular=0.2, shininess=20)
    pillar_width, pillar_z = vary(rng, 0.5, 0.5), rng.uniform(-4, -2.5)
    for x in np.linspace(-15, 15, count(rng, pillars)):
        s.add(box(), stone, translate((x + rng.uniform(-0.5, 0.5), 2.5, pillar_z))
              @ scale((pillar_width, 5, pillar_width)))
    for k in range(count(rng, movers)):
        direction = 1 if k % 2 else -1
        depth = rng.uniform(-10, 2)
        size = rng.uniform(0.6, 1.6)
        look = Material(color=tuple(rng.uniform(0.1, 0.9, 3)), color2=(0.05, 0.05, 0.05), pattern="checker",
                        pattern_scale=float(rng.choice([2, 4, 8])), specular=0.5, shininess=100)
        mesh = sphere() if k % 3 == 0 else box()
        s.add(mesh, look, RigidMotion(position=(-direction * 16 + rng.uniform(-4, 4), size / 2, depth),
                                      size=(size,) * 3, velocity=(direction * rng.uniform(0.08, 0.2), 0, 0),
                                      spin=rng.uniform(-3, 3)))
    return s

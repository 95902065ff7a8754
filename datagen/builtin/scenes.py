"""Scene builders: small functions that turn a manifest's `builtin: {builder, params}` and seed into a `Scene`.

Each builder provokes one kind of aliasing that QW-Net must learn to remove:

* ``fence``     thin geometry: fence slats, wires, alpha-tested grass and leaf cards;
* ``street``    high-frequency, minified textures: checkers and text on receding planes;
* ``specular``  sharp HDR highlights (≫ 1) on glossy spheres under bright lights, emissive panels;
* ``crossing``  disocclusions: pillars and objects crossing the view at different depths;
* ``courtyard`` a game-like mix: wet normal-mapped paving and brick walls (specular shimmer), the sun's shadow map
                (texel-stepped shadow edges, dappled leaf shadows), alpha-tested trees and hedges, a chain-link
                fence and overhead wires, people walking across (per-limb motion, disocclusion, moving shadows);
* ``machinery`` an industrial yard: glossy tread-plate floor (normal-mapped), pipes with thin highlight lines,
                an alpha-tested grate catwalk and its striped shadows, cables, fans spinning behind chain-link
                guards, a crane trolley with a swinging hook, workers walking (disocclusion and ghosting).

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

from qw.datagen.builtin.renderer import undrawable
from qw.datagen.builtin.scene import (CameraKey, CameraPath, Limb, Material, PointLight, RigidMotion, Scene, SunShadow,
                                   box, cylinder, quad, rotate, scale, sphere, translate)
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
        scene = fn(seed=seed, **params)
    except (KeyError, TypeError, ValueError) as exc:
        raise QwError(f"{where}: builder {builder_name!r} failed on its params: {exc}") from None
    problem = undrawable(scene)  # refused here, naming the manifest, not once the renderer starts
    if problem:
        raise QwError(f"{where}: builder {builder_name!r} made {problem}")
    return scene


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


# ------------------------------------------------------------------------------------------------ game-like parts


def walker(s: Scene, rng: np.random.Generator, start: tuple[float, float, float], velocity: tuple[float, float, float],
           height: float = 1.75) -> None:
    """A person of boxes walking from `start` (feet) with `velocity` per frame: legs and arms swing in opposition
    at a stride matched to the speed, so every limb has its own motion."""
    heading = float(np.degrees(np.arctan2(velocity[0], velocity[2])))
    body = RigidMotion(position=start, velocity=velocity, angle=heading)
    leg, torso = 0.47 * height, 0.33 * height
    stride = 0.7 * height * 0.45  # step length
    rate = float(np.degrees(np.pi * np.linalg.norm(velocity) / stride))  # one half swing per step
    phase = rng.uniform(0, 360)
    shirt = Material(color=tuple(rng.uniform(0.05, 0.8, 3)), specular=0.1, shininess=16)
    trousers = Material(color=tuple(rng.uniform(0.03, 0.4, 3)), color2=tuple(rng.uniform(0.03, 0.4, 3)),
                        pattern="checker", pattern_scale=float(rng.choice([3, 6])))
    skin = Material(color=tint(rng, (0.7, 0.5, 0.4), 0.4), specular=0.3, shininess=40)
    s.add(box(), shirt, Limb(body, (0, leg + torso / 2, 0), (0, 0, 0), (0.42 * height / 1.75, torso, 0.22)))
    s.add(box(), skin, Limb(body, (0, leg + torso + 0.13, 0), (0, 0, 0), (0.18, 0.24, 0.2)))
    for side in (-1, 1):
        s.add(box(), trousers, Limb(body, (side * 0.1, leg, 0), (0, -leg / 2, 0), (0.15, leg, 0.16), 28, rate,
                                    phase + 90 * (1 + side)))
        s.add(box(), shirt, Limb(body, (side * 0.27, leg + torso - 0.05, 0), (0, -0.3, 0), (0.1, 0.6, 0.1), 22,
                                 rate, phase + 90 * (1 - side)))


def tree(s: Scene, rng: np.random.Generator, base: np.ndarray, bark: Material, leaves: Material) -> None:
    """A trunk and a crown of crossed, tilted alpha-tested leaf cards (leaf-shaped holes, dappled shadows)."""
    height = rng.uniform(2.5, 3.8)
    radius = rng.uniform(0.1, 0.2)
    s.add(cylinder(), bark, translate((base[0], height / 2, base[2])) @ scale((2 * radius, height, 2 * radius)))
    crown = rng.uniform(1.6, 2.6)
    for k in range(count(rng, 7)):
        centre = (base[0], height + rng.uniform(-0.3, 0.6), base[2]) + rng.normal(0, 0.35 * crown, 3) * (1, 0.5, 1)
        s.add(quad(crown, crown, (1, 1)), leaves, translate(centre) @ rotate((0, 1, 0), 180 * k / 7 +
                                                                             rng.uniform(0, 25))
              @ rotate((1, 0, 0), rng.uniform(-35, 35)))


def span(s: Scene, material: Material, a: tuple[float, float, float], b: tuple[float, float, float],
         radius: float) -> None:
    """A static cylinder (wire, cable, pipe, rail) of `radius` from point `a` to point `b`."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    d = b_ - a_
    length = float(np.linalg.norm(d))
    axis = np.cross((0, 1, 0), d / length)
    angle = float(np.degrees(np.arccos(np.clip(d[1] / length, -1, 1))))
    turn = rotate(axis, angle) if np.linalg.norm(axis) > 1e-9 else np.eye(4)
    s.add(cylinder(), material, translate((a_ + b_) / 2) @ turn @ scale((2 * radius, length, 2 * radius)))


def chain_link_fence(s: Scene, rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float],
                     height: float, post: Material) -> None:
    """An alpha-tested chain-link fence (diamond cells of ~6–10 cm, sub-pixel wires at a distance) on posts."""
    mesh = Material(color=tint(rng, (0.55, 0.56, 0.6), 0.2), pattern="chainlink",
                    pattern_scale=vary(rng, 12, 0.25), specular=0.8, shininess=60)
    (x0, z0), (x1, z1) = start, end
    length = float(np.hypot(x1 - x0, z1 - z0))
    facing = float(np.degrees(np.arctan2(-(z1 - z0), x1 - x0)))
    s.add(quad(length, height, (length, height)), mesh,
          translate(((x0 + x1) / 2, height / 2, (z0 + z1) / 2)) @ rotate((0, 1, 0), facing))
    for t in np.linspace(0, 1, max(2, int(length / 3) + 1)):
        x, z = x0 + t * (x1 - x0), z0 + t * (z1 - z0)
        span(s, post, (x, 0, z), (x, height + 0.05, z), 0.03)
    span(s, post, (x0, height, z0), (x1, height, z1), 0.02)


@builder
def courtyard(*, seed: int, camera: list[dict], fov: float = 60.0, trees: int = 5, walkers: int = 4,
              hedges: int = 3, wires: int = 4, shadow_resolution: int = 1024) -> Scene:
    """A paved courtyard in low sun: wet bricks, brick walls, trees, hedges, a chain-link fence, overhead wires,
    people walking across; the sun casts shadow-mapped shadows."""
    rng = np.random.default_rng(seed)
    sun = (rng.uniform(-0.7, 0.7), rng.uniform(0.55, 0.9), rng.uniform(0.2, 0.6))
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed, sun_direction=sun,
              shadow=SunShadow(center=(0, 0, -2), extent=16, resolution=shadow_resolution))
    track = camera_track(s.camera)
    paving = Material(color=tint(rng, (0.42, 0.3, 0.24)), color2=tint(rng, (0.16, 0.15, 0.14)), pattern="bricks",
                      pattern_scale=vary(rng, 0.5, 0.2), specular=vary(rng, 0.6, 0.3),
                      shininess=float(rng.choice([150, 300, 600])), bump=vary(rng, 1.0, 0.3))
    environment(s, paving)
    wall = Material(color=tint(rng, (0.5, 0.25, 0.18)), color2=tint(rng, (0.55, 0.53, 0.5)), pattern="bricks",
                    pattern_scale=vary(rng, 1.0, 0.2), specular=0.15, shininess=40, bump=vary(rng, 1.2, 0.3))
    back, side = rng.uniform(-12, -9), rng.uniform(11, 13)
    wall_height = rng.uniform(5, 8)
    s.add(quad(2 * side, wall_height, (2 * side, wall_height)), wall, translate((0, wall_height / 2, back)))
    for x in (-side, side):
        s.add(quad(20, wall_height, (20, wall_height)), wall,
              translate((x, wall_height / 2, back + 10)) @ rotate((0, 1, 0), 90))
    poster = Material(color=(1.0, 0.95, 0.85), color2=(0.02, 0.02, 0.03), pattern="text", pattern_scale=1.0,
                      emissive=vary(rng, 2.0, 0.3))
    s.add(quad(3.0, 1.6, (3, 1.6)), poster, translate((rng.uniform(-6, 6), 2.6, back + 0.02)))
    bark = Material(color=tint(rng, (0.3, 0.22, 0.15)), specular=0.05)
    leaves = Material(color=tint(rng, (0.1, 0.3, 0.06)), color2=tint(rng, (0.35, 0.6, 0.15)), pattern="foliage",
                      pattern_scale=vary(rng, 9, 0.3), specular=0.3, shininess=30)
    for _ in range(count(rng, trees)):
        tree(s, rng, place(rng, (-9, 0, back + 1.5), (9, 0, 1.5), track, clearance=2.5), bark, leaves)
    hedge = Material(color=tint(rng, (0.06, 0.25, 0.05)), color2=tint(rng, (0.2, 0.45, 0.1)), pattern="foliage",
                     pattern_scale=vary(rng, 10, 0.3))
    for _ in range(count(rng, hedges, 0.4)):
        centre = place(rng, (-side + 1, 0.6, back + 1), (side - 1, 0.6, back + 3), track, clearance=2.0)
        for angle in (0, 60, 120):
            s.add(quad(1.6, 1.4), hedge, translate(centre) @ rotate((0, 1, 0), angle + rng.uniform(0, 20)))
    metal = Material(color=tint(rng, (0.35, 0.36, 0.38), 0.2), specular=1.0, shininess=200)
    fence_z = rng.uniform(back + 3.5, back + 5.5)
    chain_link_fence(s, rng, (-side + 0.5, fence_z), (rng.uniform(-2, 4), fence_z), rng.uniform(2.0, 3.0), metal)
    cable = Material(color=(0.05, 0.05, 0.05), specular=0.6, shininess=100)
    pole_x = side - 1.0
    span(s, metal, (-pole_x, 0, back + 1), (-pole_x, 7, back + 1), 0.08)
    span(s, metal, (pole_x, 0, 2), (pole_x, 7, 2), 0.08)
    for k in range(count(rng, wires, 0.4)):
        drop = rng.uniform(0, 1.0)
        span(s, cable, (-pole_x, 6.8 - 0.35 * k, back + 1), (pole_x, 6.8 - 0.35 * k - drop, 2),
             vary(rng, 0.012, 0.4))
    for k in range(count(rng, walkers, 0.4)):
        direction = 1 if k % 2 else -1
        speed = rng.uniform(0.03, 0.06)
        walker(s, rng, (-direction * rng.uniform(5, 10), 0, rng.uniform(back + 2.5, 3.0)),
               (direction * speed, 0, rng.uniform(-0.2, 0.2) * speed), height=rng.uniform(1.55, 1.9))
    return s


@builder
def machinery(*, seed: int, camera: list[dict], fov: float = 60.0, pipes: int = 6, cables: int = 8, fans: int = 2,
              walkers: int = 2, lamps: int = 3, shadow_resolution: int = 1024) -> Scene:
    """An industrial yard at dusk: tread-plate floor, pipes, a grate catwalk with railings, cables, guarded fans,
    a crane trolley with a swinging hook, workers; sun shadows and warm lamps."""
    rng = np.random.default_rng(seed)
    sun = (rng.uniform(-0.8, 0.8), rng.uniform(0.35, 0.6), rng.uniform(0.1, 0.5))
    s = Scene([], [], camera_path(camera, fov), texture_seed=seed, sun_direction=sun,
              sun_color=tint(rng, (2.4, 1.9, 1.4), 0.15), ambient=(0.1, 0.11, 0.14),
              shadow=SunShadow(center=(0, 0, -2), extent=14, resolution=shadow_resolution))
    track = camera_track(s.camera)
    floor = Material(color=tint(rng, (0.45, 0.45, 0.48), 0.15), color2=tint(rng, (0.12, 0.1, 0.08)),
                     pattern="plates", pattern_scale=vary(rng, 0.5, 0.2), specular=vary(rng, 1.2, 0.3),
                     shininess=float(rng.choice([200, 400, 800])), bump=vary(rng, 1.0, 0.3))
    environment(s, floor)
    steel = Material(color=tint(rng, (0.3, 0.3, 0.32), 0.2), specular=1.0, shininess=150)
    painted = Material(color=tuple(rng.uniform(0.2, 0.8, 3)), specular=0.5, shininess=60)
    # catwalk: a grate floor on posts with two railings
    deck_y, deck_z, deck_w = rng.uniform(2.6, 3.4), rng.uniform(-3.0, -1.5), vary(rng, 1.4, 0.2)
    grate = Material(color=tint(rng, (0.4, 0.4, 0.42), 0.2), pattern="grate", pattern_scale=vary(rng, 25, 0.2),
                     specular=0.8, shininess=100)
    s.add(quad(18, deck_w, (18, deck_w)), grate, translate((0, deck_y, deck_z)) @ rotate((1, 0, 0), -90))
    for x in np.linspace(-9, 9, 7):
        span(s, painted, (x, 0, deck_z - deck_w / 2), (x, deck_y, deck_z - deck_w / 2), 0.06)
        span(s, steel, (x, deck_y, deck_z + deck_w / 2), (x, deck_y + 1.0, deck_z + deck_w / 2), 0.025)
    for h in (0.5, 1.0):
        span(s, steel, (-9, deck_y + h, deck_z + deck_w / 2), (9, deck_y + h, deck_z + deck_w / 2), 0.02)
    # pipes along the back, with highlight lines
    pipe_z = rng.uniform(-7, -5)
    for k in range(count(rng, pipes, 0.3)):
        radius = rng.uniform(0.06, 0.35)
        y = rng.uniform(0.4, 4.5)
        look = Material(color=tuple(rng.uniform(0.1, 0.8, 3)), specular=vary(rng, 1.5, 0.3),
                        shininess=float(rng.choice([300, 800, 2000])))
        span(s, look, (-12, y, pipe_z - 0.5 * k), (12, y + rng.uniform(-0.3, 0.3), pipe_z - 0.5 * k), radius)
    pylon_z = pipe_z - 3.5
    for x in (-11, 11):
        s.add(box(), painted, translate((x, 3.5, pylon_z)) @ scale((0.5, 7, 0.5)))
    cable = Material(color=(0.04, 0.04, 0.045), specular=0.8, shininess=200)
    for _ in range(count(rng, cables, 0.3)):
        y0, y1 = rng.uniform(4.5, 7), rng.uniform(4.5, 7)
        span(s, cable, (-11, y0, pylon_z + rng.uniform(-0.2, 0.2)), (11, y1, pylon_z + rng.uniform(3, 8)),
             vary(rng, 0.015, 0.4))
    # fans spinning behind chain-link guards on a wall of brick
    wall = Material(color=tint(rng, (0.35, 0.33, 0.3)), color2=tint(rng, (0.5, 0.5, 0.48)), pattern="bricks",
                    pattern_scale=vary(rng, 1.0, 0.2), specular=0.2, shininess=50, bump=vary(rng, 1.0, 0.3))
    wall_z = pylon_z - 1.0
    s.add(quad(30, 9, (30, 9)), wall, translate((0, 4.5, wall_z)))
    guard = Material(color=tint(rng, (0.6, 0.6, 0.62), 0.1), pattern="chainlink", pattern_scale=vary(rng, 14, 0.2),
                     specular=1.0, shininess=80)
    blade = Material(color=tint(rng, (0.7, 0.7, 0.72), 0.2), specular=1.5, shininess=300)
    for _ in range(count(rng, fans, 0.3)):
        centre = np.array([rng.uniform(-8, 8), rng.uniform(1.5, 3.0), wall_z + 0.3])
        size, spin = rng.uniform(1.0, 1.8), rng.uniform(6, 14) * rng.choice([-1, 1])
        for angle in (0, 90):
            s.add(box(), blade, RigidMotion(position=tuple(centre), size=(0.15, size, 0.02), axis=(0, 0, 1),
                                            angle=angle + rng.uniform(0, 90), spin=spin))
        s.add(quad(size * 1.15, size * 1.15, (size * 1.15, size * 1.15)), guard, translate(centre + (0, 0, 0.15)))
    # lamps: warm point lights and their emissive housings
    for _ in range(count(rng, lamps, 0.3)):
        position = (rng.uniform(-8, 8), deck_y + 1.6, deck_z + rng.uniform(-1, 1))
        s.lights.append(PointLight(position, tuple(np.array([1.0, 0.75, 0.45]) * vary(rng, 12, 0.3))))
        s.add(box(), Material(color=(1.0, 0.8, 0.5), emissive=8.0), translate(position) @ scale((0.3, 0.08, 0.15)))
    sign = Material(color=(1.0, 1.0, 1.0), color2=(0.0, 0.0, 0.0), pattern="text", pattern_scale=1.0, emissive=1.5)
    s.add(quad(2.5, 1.0, (2.5, 1.0)), sign, translate((rng.uniform(-6, 6), 1.8, wall_z + 0.02)))
    # crane trolley on a beam above the yard, with a hook swinging below it
    beam_y = rng.uniform(6.0, 7.0)
    span(s, steel, (-12, beam_y, -1), (12, beam_y, -1), 0.12)
    speed = rng.uniform(0.04, 0.09) * rng.choice([-1, 1])
    trolley = RigidMotion(position=(-8 * np.sign(speed), beam_y - 0.3, -1), velocity=(speed, 0, 0))
    s.add(box(), painted, Limb(trolley, (0, 0, 0), (0, 0, 0), (1.0, 0.4, 0.8)))
    rope = rng.uniform(1.5, 2.5)
    swing = dict(amplitude=rng.uniform(8, 20), rate=rng.uniform(3, 6), phase=rng.uniform(0, 360), axis=(0, 0, 1))
    s.add(box(), cable, Limb(trolley, (0, -0.2, 0), (0, -rope / 2, 0), (0.03, rope, 0.03), **swing))
    s.add(box(), Material(color=(0.8, 0.6, 0.1), specular=0.8, shininess=100),
          Limb(trolley, (0, -0.2, 0), (0, -rope - 0.2, 0), (0.5, 0.4, 0.5), **swing))
    for k in range(count(rng, walkers, 0.5)):
        direction = 1 if k % 2 else -1
        speed = rng.uniform(0.03, 0.05)
        walker(s, rng, (-direction * rng.uniform(5, 9), 0, rng.uniform(deck_z - 0.5, 2.0)), (direction * speed, 0, 0),
               height=rng.uniform(1.6, 1.9))
    return s

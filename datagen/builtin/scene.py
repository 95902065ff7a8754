"""Scene description for the builtin renderer: meshes, materials, rigid motions, camera paths.

Conventions follow `qw.datagen.capture_format`: matrices are row-major numpy arrays applied to column vectors, OpenGL
camera axes (camera looks down −Z, +Y up). A scene is pure data plus small callables that give each object's model
matrix and the camera at a (fractional) source frame, so the renderer can evaluate any frame and its predecessor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------ matrices


def translate(t: Sequence[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def scale(s: Sequence[float] | float) -> np.ndarray:
    return np.diag([*np.broadcast_to(np.asarray(s, float), 3), 1.0])


def rotate(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation about `axis` by `degrees` (right-handed)."""
    a = np.asarray(axis, float)
    x, y, z = a / np.linalg.norm(a)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    r = np.array([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                  [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                  [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])
    m = np.eye(4)
    m[:3, :3] = r
    return m


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 1, 0)) -> np.ndarray:
    """World→camera matrix of a camera at `eye` looking at `target`."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = r, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def perspective(fov_y_degrees: float, aspect: float, near: float, far: float) -> np.ndarray:
    """OpenGL perspective projection (camera space → clip space, NDC z in [−1, 1])."""
    f = 1.0 / math.tan(math.radians(fov_y_degrees) / 2)
    return np.array([[f / aspect, 0, 0, 0],
                     [0, f, 0, 0],
                     [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                     [0, 0, -1, 0]])


def orthographic(half_width: float, half_height: float, near: float, far: float) -> np.ndarray:
    """OpenGL orthographic projection of the box |x| ≤ half_width, |y| ≤ half_height, near ≤ −z ≤ far."""
    return np.array([[1 / half_width, 0, 0, 0],
                     [0, 1 / half_height, 0, 0],
                     [0, 0, -2 / (far - near), -(far + near) / (far - near)],
                     [0, 0, 0, 1]])


# ------------------------------------------------------------------------------------------------ materials

# Pattern ids understood by the fragment shader (renderer.FRAGMENT_SHADER). `bricks` and `plates` sample a
# mip-mapped surface texture (albedo mix + normal map); the alpha-tested ones cut holes with `discard`.
PATTERNS = {"solid": 0, "checker": 1, "text": 2, "blades": 3, "stripes": 4, "sky": 5, "leaf": 6, "bricks": 7,
            "plates": 8, "chainlink": 9, "grate": 10, "foliage": 11}
ALPHA_TESTED = ("blades", "leaf", "chainlink", "grate", "foliage")
NORMAL_MAPPED = ("bricks", "plates")


@dataclass(frozen=True)
class Material:
    """Shading parameters; colours are linear RGB. `emissive` multiplies `color` (HDR panels use ≫ 1).

    `bump` scales the slopes of the normal map of the `bricks` and `plates` patterns (0: flat).
    """

    color: tuple[float, float, float] = (0.6, 0.6, 0.6)
    color2: tuple[float, float, float] = (0.1, 0.1, 0.1)
    pattern: str = "solid"
    pattern_scale: float = 1.0
    specular: float = 0.0
    shininess: float = 32.0
    emissive: float = 0.0
    bump: float = 0.0

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown material pattern {self.pattern!r}; patterns are {list(PATTERNS)}")
        if self.bump and self.pattern not in NORMAL_MAPPED:
            raise ValueError(f"bump needs a normal-mapped pattern {NORMAL_MAPPED}, not {self.pattern!r}")

    @property
    def alpha_tested(self) -> bool:
        return self.pattern in ALPHA_TESTED


# ------------------------------------------------------------------------------------------------ meshes


@dataclass
class Mesh:
    """Triangle list: per-vertex position (3), normal (3), uv (2); `material` indexes `Scene.materials`."""

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    material: int = 0

    def transformed(self, model: np.ndarray) -> "Mesh":
        p = np.c_[self.positions, np.ones(len(self.positions))] @ model.T
        n = self.normals @ np.linalg.inv(model[:3, :3])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return Mesh(p[:, :3], n, self.uvs, self.material)

    def vertex_data(self) -> np.ndarray:
        """(V, 9) float32 interleaved: position, normal, uv, material id."""
        mat = np.full((len(self.positions), 1), self.material, np.float64)
        return np.hstack([self.positions, self.normals, self.uvs, mat]).astype(np.float32)


def merge(meshes: Sequence[Mesh]) -> np.ndarray:
    """Interleaved vertex data of several meshes (static geometry is drawn in one call)."""
    return np.concatenate([m.vertex_data() for m in meshes]) if meshes else np.zeros((0, 9), np.float32)


def _quad_triangles(corners: np.ndarray, normal: np.ndarray, uv_scale: tuple[float, float]) -> Mesh:
    """Two triangles of the quad corners (c0, c1, c2, c3) counter-clockwise, uv (0,0)→(su,sv)."""
    su, sv = uv_scale
    uv = np.array([[0, 0], [su, 0], [su, sv], [0, sv]], float)
    idx = [0, 1, 2, 0, 2, 3]
    return Mesh(corners[idx], np.repeat(normal[None], 6, 0), uv[idx])


def quad(width: float = 1.0, height: float = 1.0, uv_scale: tuple[float, float] = (1, 1), material: int = 0) -> Mesh:
    """A quad in the local XY plane centred on the origin, facing +Z; uv spans (0,0)–uv_scale."""
    w, h = width / 2, height / 2
    c = np.array([[-w, -h, 0], [w, -h, 0], [w, h, 0], [-w, h, 0]], float)
    m = _quad_triangles(c, np.array([0, 0, 1.0]), uv_scale)
    m.material = material
    return m


def box(material: int = 0, uv_scale: float = 1.0) -> Mesh:
    """The unit cube [−0.5, 0.5]³ with outward normals; scale it with the model matrix."""
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            u, v = np.eye(3)[(axis + 1) % 3], np.eye(3)[(axis + 2) % 3]  # u × v = +normal
            if sign < 0:
                u, v = v, u  # keep counter-clockwise winding seen from outside
            c = np.array([0.5 * n + 0.5 * (su * u + sv * v) for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
            faces.append(_quad_triangles(c, n, (uv_scale, uv_scale)))
    return Mesh(np.concatenate([f.positions for f in faces]), np.concatenate([f.normals for f in faces]),
                np.concatenate([f.uvs for f in faces]), material)


def sphere(material: int = 0, segments: int = 32, rings: int = 16) -> Mesh:
    """A UV sphere of radius 0.5 centred on the origin (32×16 quads: silhouettes within ~0.5% of the radius;
    llvmpipe's cost grows with the triangle count)."""
    th = np.linspace(0, math.pi, rings + 1)
    ph = np.linspace(0, 2 * math.pi, segments + 1)
    t, p = np.meshgrid(th, ph, indexing="ij")
    pts = np.stack([np.sin(t) * np.cos(p), np.cos(t), -np.sin(t) * np.sin(p)], -1)
    uv = np.stack([p / (2 * math.pi), 1 - t / math.pi], -1)
    a, b = pts[:-1, :-1], pts[:-1, 1:]
    c, d = pts[1:, 1:], pts[1:, :-1]
    ua, ub, uc, ud = uv[:-1, :-1], uv[:-1, 1:], uv[1:, 1:], uv[1:, :-1]
    tri = np.stack([a, d, c, a, c, b], 2).reshape(-1, 3)
    tuv = np.stack([ua, ud, uc, ua, uc, ub], 2).reshape(-1, 2)
    return Mesh(0.5 * tri, tri.copy(), tuv, material)


def cylinder(material: int = 0, segments: int = 12) -> Mesh:
    """An open cylinder of radius 0.5 and height 1 along Y centred on the origin (pipes, trunks, poles)."""
    a = np.linspace(0, 2 * math.pi, segments + 1)
    ring = np.stack([0.5 * np.cos(a), np.zeros_like(a), -0.5 * np.sin(a)], -1)
    lo, hi = ring + (0, -0.5, 0), ring + (0, 0.5, 0)
    normals = ring / 0.5
    u = a / (2 * math.pi)
    corners = [(lo[:-1], normals[:-1], u[:-1], 0), (lo[1:], normals[1:], u[1:], 0), (hi[1:], normals[1:], u[1:], 1),
               (hi[:-1], normals[:-1], u[:-1], 1)]
    order = [0, 1, 2, 0, 2, 3]
    pos = np.stack([corners[k][0] for k in order], 1).reshape(-1, 3)
    nrm = np.stack([corners[k][1] for k in order], 1).reshape(-1, 3)
    uv = np.stack([np.stack([corners[k][2], np.full(segments, corners[k][3])], -1) for k in order], 1).reshape(-1, 2)
    return Mesh(pos, nrm, uv, material)


# ------------------------------------------------------------------------------------------------ motion


@dataclass(frozen=True)
class RigidMotion:
    """Model matrix at frame f: translate(position + velocity·f + orbit) · rotate(axis, spin·f) · scale(size).

    `orbit` = (radius, degrees per frame, phase degrees) moves the object on a horizontal circle around
    `position`; everything is a pure function of the frame so any frame and its predecessor can be evaluated.
    """

    position: tuple[float, float, float] = (0, 0, 0)
    size: tuple[float, float, float] = (1, 1, 1)
    velocity: tuple[float, float, float] = (0, 0, 0)
    axis: tuple[float, float, float] = (0, 1, 0)
    angle: float = 0.0
    spin: float = 0.0
    orbit: tuple[float, float, float] = (0, 0, 0)

    def __call__(self, frame: float) -> np.ndarray:
        radius, rate, phase = self.orbit
        a = math.radians(phase + rate * frame)
        pos = np.asarray(self.position) + np.asarray(self.velocity) * frame + radius * np.array(
            [math.cos(a), 0, math.sin(a)])
        return translate(pos) @ rotate(self.axis, self.angle + self.spin * frame) @ scale(self.size)

    @property
    def is_static(self) -> bool:
        return not any(self.velocity) and not self.spin and not self.orbit[0]


@dataclass(frozen=True)
class Limb:
    """A swinging part of an articulated body (walkers' legs and arms, a crane's hook):

    model(f) = body(f) · translate(pivot) · rotate(axis, amplitude · sin(rate·f + phase)) · translate(offset) ·
    scale(size), angles in degrees. Each part moves differently from its body, so motion is per part, not per body.
    """

    body: RigidMotion
    pivot: tuple[float, float, float]
    offset: tuple[float, float, float]
    size: tuple[float, float, float]
    amplitude: float = 0.0
    rate: float = 0.0
    phase: float = 0.0
    axis: tuple[float, float, float] = (1, 0, 0)

    def __call__(self, frame: float) -> np.ndarray:
        swing = self.amplitude * math.sin(math.radians(self.rate * frame + self.phase))
        return (self.body(frame) @ translate(self.pivot) @ rotate(self.axis, swing) @ translate(self.offset)
                @ scale(self.size))

    @property
    def is_static(self) -> bool:
        return self.body.is_static and not (self.amplitude and self.rate)


@dataclass
class Instance:
    """A mesh placed by `model(frame) -> 4×4`; static instances are baked into one vertex buffer."""

    mesh: Mesh
    model: Callable[[float], np.ndarray]
    static: bool = False


# ------------------------------------------------------------------------------------------------ camera


@dataclass(frozen=True)
class CameraKey:
    frame: float
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    cut: bool = False  # the camera jumps here: no interpolation from the previous key


@dataclass(frozen=True)
class CameraPath:
    """Keyframed look-at camera, linear between keys (constant speed within a segment), held past the ends."""

    keys: tuple[CameraKey, ...]
    fov_y: float = 60.0
    near: float = 0.05
    far: float = 400.0

    def __post_init__(self):
        if not self.keys:
            raise ValueError("a camera path needs at least one key")
        frames = [k.frame for k in self.keys]
        if frames != sorted(frames):
            raise ValueError(f"camera keys must be in frame order, got {frames}")
        if not 0 < self.fov_y < 180:
            raise ValueError(f"fov {self.fov_y:g} must be between 0 and 180 degrees")
        for k in self.keys:
            # `cuts` names whole frames: a cut between two frames would mark the wrong frame's history invalid
            if k.cut and k.frame != int(k.frame):
                raise ValueError(f"camera cut at frame {k.frame:g}: a cut must be at a whole frame")
            eye, target = np.asarray(k.eye, float), np.asarray(k.target, float)
            if eye.shape != (3,) or target.shape != (3,) or not np.isfinite([*eye, *target]).all():
                raise ValueError(f"camera key at frame {k.frame:g}: eye and target must be 3 finite numbers each")
            # look_at has no view direction for eye == target and no right axis looking straight up or down
            forward = target - eye
            if np.linalg.norm(np.cross(forward, (0.0, 1.0, 0.0))) <= 1e-9 * max(np.linalg.norm(forward), 1.0):
                raise ValueError(f"camera key at frame {k.frame:g}: eye {k.eye} and target {k.target} are the same "
                                 "point or straight above each other (the camera's up is +y)")

    @property
    def cuts(self) -> list[int]:
        return [int(k.frame) for k in self.keys if k.cut]

    def eye_target(self, frame: float) -> tuple[np.ndarray, np.ndarray]:
        keys = self.keys
        i = max((j for j, k in enumerate(keys) if k.frame <= frame), default=0)
        a = keys[i]
        b = keys[i + 1] if i + 1 < len(keys) and not keys[i + 1].cut else a
        s = 0.0 if b.frame == a.frame else float(np.clip((frame - a.frame) / (b.frame - a.frame), 0, 1))
        lerp = lambda p, q: (1 - s) * np.asarray(p, float) + s * np.asarray(q, float)  # noqa: E731
        return lerp(a.eye, b.eye), lerp(a.target, b.target)

    def view(self, frame: float) -> np.ndarray:
        return look_at(*self.eye_target(frame))

    def projection(self, aspect: float) -> np.ndarray:
        return perspective(self.fov_y, aspect, self.near, self.far)


# ------------------------------------------------------------------------------------------------ scene


@dataclass(frozen=True)
class PointLight:
    position: tuple[float, float, float]
    color: tuple[float, float, float]  # linear RGB × intensity; falls off with 1/d²


@dataclass(frozen=True)
class SunShadow:
    """A shadow map of the sun: an orthographic depth image of the square of half-size `extent` (metres) around
    `center`, `resolution`² texels, looked up unfiltered (one texel per shading sample, like an engine's hard
    shadows: texel-stepped, aliased edges). Re-rendered every frame, so moving objects cast moving shadows."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extent: float = 15.0
    resolution: int = 1024

    @property
    def texel(self) -> float:
        return 2 * self.extent / self.resolution

    @property
    def depth_range(self) -> float:
        return 8 * self.extent

    def matrix(self, sun_direction: Sequence[float]) -> np.ndarray:
        """World → light clip space: looking along −`sun_direction` at `center`, depth spanning `depth_range`."""
        d = np.asarray(sun_direction, float) / np.linalg.norm(sun_direction)
        up = (0, 1, 0) if abs(d[1]) < 0.99 else (0, 0, 1)
        centre = np.asarray(self.center, float)
        view = look_at(centre + d * self.depth_range / 2, centre, up)
        return orthographic(self.extent, self.extent, 0.0, self.depth_range) @ view


@dataclass
class Scene:
    """Everything the renderer needs to draw any frame of a scene."""

    materials: list[Material]
    instances: list[Instance]
    camera: CameraPath
    sun_direction: tuple[float, float, float] = (0.4, 1.0, 0.3)  # towards the sun
    sun_color: tuple[float, float, float] = (3.0, 2.9, 2.7)
    ambient: tuple[float, float, float] = (0.25, 0.28, 0.33)
    lights: list[PointLight] = field(default_factory=list)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture_seed: int = 0
    shadow: SunShadow | None = None

    def add(self, mesh: Mesh, material: Material, model: Callable[[float], np.ndarray] | np.ndarray) -> Instance:
        """Add `mesh` with `material` (materials are deduplicated) and a model matrix or motion."""
        if material not in self.materials:
            self.materials.append(material)
        mesh = Mesh(mesh.positions, mesh.normals, mesh.uvs, self.materials.index(material))
        if isinstance(model, np.ndarray):
            matrix = model
            inst = Instance(mesh, lambda f: matrix, static=True)
        else:
            inst = Instance(mesh, model, static=getattr(model, "is_static", False))
        self.instances.append(inst)
        return inst

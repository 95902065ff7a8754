"""The builtin rasterizer: moderngl on a headless EGL context (Mesa llvmpipe on CPUs, a GPU's EGL where present).

Per frame it produces the four passes of the capture contract in float32:

* ``color``: one sample per pixel at the jittered pixel centre; the jitter shifts the projection matrix, so the
  sample of pixel ``p`` lies at ``p + 0.5 + j`` in image coordinates (+x right, +y down);
* ``motion``: current minus previous screen position in pixels, from per-vertex current and previous clip
  positions of the *unjittered* camera (camera and object motion), evaluated at pixel centres;
* ``depth``: planar view depth of the surface at the pixel centre;
* ``reference``: the mean of N×N stratified sub-pixel samples (a box filter over the pixel), unjittered camera.

Textures sampled from mip maps use the configured mip bias; the reference passes add −log2(N) so they see the
texture detail a render at N× the resolution would see.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from qw.datagen.builtin.scene import PATTERNS, Instance, Scene, merge
from qw.datagen.errors import QwError

MAX_MATERIALS = 64
MAX_LIGHTS = 8
TEXT_TEXTURE_SIZE = 512


class RendererUnavailable(QwError):
    """No OpenGL context could be created (exit status 2)."""


VERTEX_SHADER = """
#version 330
uniform mat4 u_model;
uniform mat4 u_prev_model;
uniform mat3 u_normal_matrix;
uniform mat4 u_view;
uniform mat4 u_raster;          // jittered projection · view: where the sample is taken
uniform mat4 u_viewproj;        // unjittered, current frame
uniform mat4 u_prev_viewproj;   // unjittered, previous frame
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in float in_mat;
out vec3 v_world;
out vec3 v_normal;
out vec2 v_uv;
flat out int v_mat;
out vec4 v_clip;
out vec4 v_prev_clip;
out float v_depth;
void main() {
    vec4 world = u_model * vec4(in_pos, 1.0);
    v_world = world.xyz;
    v_normal = u_normal_matrix * in_normal;
    v_uv = in_uv;
    v_mat = int(in_mat + 0.5);
    v_clip = u_viewproj * world;
    v_prev_clip = u_prev_viewproj * (u_prev_model * vec4(in_pos, 1.0));
    v_depth = -(u_view * world).z;
    gl_Position = u_raster * world;
}
"""

FRAGMENT_SHADER = """
#version 330
%(ALPHA_TEST)s
in vec3 v_world;
in vec3 v_normal;
in vec2 v_uv;
flat in int v_mat;
in vec4 v_clip;
in vec4 v_prev_clip;
in float v_depth;
uniform vec4 u_mat_a[%(MAXM)d];  // colour rgb, pattern id
uniform vec4 u_mat_b[%(MAXM)d];  // second colour rgb, pattern scale
uniform vec4 u_mat_c[%(MAXM)d];  // specular, shininess, emissive, unused
uniform vec3 u_eye;
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_ambient;
uniform int u_num_lights;
uniform vec3 u_light_pos[%(MAXL)d];
uniform vec3 u_light_color[%(MAXL)d];
uniform sampler2D u_text;
uniform float u_mip_bias;
uniform vec2 u_half_size;
layout(location = 0) out vec4 o_color;
layout(location = 1) out vec2 o_motion;
layout(location = 2) out float o_depth;

vec3 specular_term(vec3 n, vec3 l, vec3 v, float shininess) {
    // normalized Blinn-Phong: narrow lobes give the HDR highlights (values >> 1) that alias
    return vec3((shininess + 8.0) / 25.1327 * pow(max(dot(n, normalize(l + v)), 0.0), shininess));
}

void main() {
    vec4 A = u_mat_a[v_mat];
    vec4 B = u_mat_b[v_mat];
    vec4 C = u_mat_c[v_mat];
    int pattern = int(A.w + 0.5);
    vec2 uv = v_uv * B.w;
    float t = 0.0;
    if (pattern == %(checker)d) {
        vec2 c = floor(uv);
        t = mod(c.x + c.y, 2.0);
    } else if (pattern == %(text)d) {
        // v_mat is flat, so this branch is uniform over each primitive and the implicit derivatives are defined
        t = texture(u_text, uv, u_mip_bias).r;
    } else if (pattern == %(stripes)d) {
        t = step(fract(uv.x), 0.12);
    }
#ifdef ALPHA_TEST
    if (pattern == %(blades)d) {
        float halfwidth = 0.42 * (1.0 - v_uv.y);
        if (abs(fract(uv.x) - 0.5) > halfwidth) discard;
        t = v_uv.y;
    } else if (pattern == %(leaf)d) {
        vec2 c = (fract(uv) - 0.5) * vec2(1.0, 1.7);
        if (dot(c, c) > 0.2) discard;
        t = fract(uv.y);
    }
#endif
    vec3 albedo = mix(A.rgb, B.rgb, t);
    vec3 color;
    if (pattern == %(sky)d) {
        vec3 d = normalize(v_world - u_eye);
        color = mix(A.rgb, B.rgb, clamp(1.5 * d.y, 0.0, 1.0));
    } else {
        vec3 n = normalize(v_normal);
        vec3 v = normalize(u_eye - v_world);
        if (dot(n, v) < 0.0) n = -n;  // two-sided: cards and thin geometry are seen from both sides
        vec3 l = normalize(u_sun_dir);
        color = albedo * (u_ambient + u_sun_color * max(dot(n, l), 0.0));
        color += C.x * u_sun_color * specular_term(n, l, v, C.y);
        for (int i = 0; i < u_num_lights; i++) {
            vec3 d = u_light_pos[i] - v_world;
            vec3 e = u_light_color[i] / dot(d, d);
            vec3 ld = normalize(d);
            color += albedo * e * max(dot(n, ld), 0.0) + C.x * e * specular_term(n, ld, v, C.y);
        }
        color += albedo * C.z;
    }
    o_color = vec4(color, 1.0);
    o_motion = (v_clip.xy / v_clip.w - v_prev_clip.xy / v_prev_clip.w) * u_half_size * vec2(1.0, -1.0);
    o_depth = v_depth;
}
"""


def fragment_shader(alpha_test: bool) -> str:
    """The fragment shader; only the alpha-tested variant can `discard`, so opaque draws keep early depth tests
    (a large saving on llvmpipe, which otherwise shades every covered fragment)."""
    return FRAGMENT_SHADER % dict(MAXM=MAX_MATERIALS, MAXL=MAX_LIGHTS, ALPHA_TEST="#define ALPHA_TEST" * alpha_test,
                                  **PATTERNS)


# ------------------------------------------------------------------------------------------------ sampling


def halton(index: int, base: int) -> float:
    """Radical inverse of `index` (≥ 1) in `base`: the Halton sequence engines use for TAA jitter."""
    f, r = 1.0, 0.0
    while index > 0:
        f /= base
        r += f * (index % base)
        index //= base
    return r


def halton_jitter(frame: int, cycle: int = 8) -> tuple[float, float]:
    """Sample offset from the pixel centre (pixels, +x right, +y down) of `frame`: Halton(2,3), indices 1..cycle."""
    i = frame % cycle + 1
    return halton(i, 2) - 0.5, halton(i, 3) - 0.5


def stratified_offsets(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n², 2) sub-pixel offsets from the pixel centre: stratum centres, or one random point per stratum."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    cell = np.stack([j.ravel(), i.ravel()], 1).astype(np.float64)
    inside = 0.5 if rng is None else rng.random(cell.shape)
    return (cell + inside) / n - 0.5


def jitter_matrix(offset: Sequence[float], width: int, height: int) -> np.ndarray:
    """Clip-space shift that moves the sample of every pixel by `offset` pixels (+x right, +y down).

    Sampling at p + j is the same as drawing the image shifted by −j: −2j_x/W in NDC x, +2j_y/H in NDC y (NDC y
    points up while image y points down).
    """
    m = np.eye(4)
    m[0, 3] = -2.0 * offset[0] / width
    m[1, 3] = 2.0 * offset[1] / height
    return m


# ------------------------------------------------------------------------------------------------ context


@lru_cache(maxsize=1)
def gl_context():
    """The process's headless OpenGL context (EGL); a `RendererUnavailable` naming what to install otherwise."""
    try:
        import moderngl
    except ImportError as exc:  # pragma: no cover - moderngl is a dependency
        raise RendererUnavailable(f"the builtin renderer needs moderngl ({exc}); pip install moderngl") from None
    try:
        return moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as exc:
        raise RendererUnavailable(
            f"cannot create a headless OpenGL 3.3 context through EGL ({exc}). Install Mesa's EGL and OpenGL "
            "drivers (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri) or a GPU driver that provides EGL."
        ) from None


def text_texture(seed: int, size: int = TEXT_TEXTURE_SIZE) -> np.ndarray:
    """(size, size) uint8 'printed page': rows of random 3×5 glyphs in 16-pixel cells, ink = 255."""
    rng = np.random.default_rng(seed)
    cells = size // 16
    glyphs = rng.random((cells, cells, 5, 3)) < 0.45
    glyphs &= rng.random((cells, cells, 1, 1)) < 0.85  # some blank cells: word gaps
    cell = np.zeros((cells, cells, 16, 16), bool)
    cell[:, :, 3:13, 4:10] = glyphs.repeat(2, 2).repeat(2, 3)
    return (cell.transpose(0, 2, 1, 3).reshape(size, size) * 255).astype(np.uint8)


def gl_matrix(m: np.ndarray) -> bytes:
    """Row-major numpy matrix → bytes of the column-major float32 matrix GLSL expects."""
    return np.ascontiguousarray(np.asarray(m, np.float64).T, np.float32).tobytes()


# ------------------------------------------------------------------------------------------------ renderer


class Renderer:
    """Draws one `Scene` at a fixed resolution; every method returns top-row-first float32 arrays."""

    def __init__(self, scene: Scene, width: int, height: int, *, mip_bias: float = 0.0):
        if len(scene.materials) > MAX_MATERIALS or len(scene.lights) > MAX_LIGHTS:
            raise ValueError(f"at most {MAX_MATERIALS} materials and {MAX_LIGHTS} lights per scene")
        self.scene, self.width, self.height, self.mip_bias = scene, width, height, mip_bias
        ctx = self.ctx = gl_context()
        self.programs = {alpha: ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=fragment_shader(alpha))
                         for alpha in (False, True)}
        self.targets = [ctx.texture((width, height), c, dtype="f4") for c in (4, 2, 1)]
        self.depth_buffer = ctx.depth_renderbuffer((width, height))
        self.fbo = ctx.framebuffer(color_attachments=self.targets, depth_attachment=self.depth_buffer)
        # colour-only target for the colour and reference passes: motion and depth writes are skipped there
        self.fbo_color = ctx.framebuffer(color_attachments=self.targets[:1], depth_attachment=self.depth_buffer)
        self.text = ctx.texture((TEXT_TEXTURE_SIZE,) * 2, 1, text_texture(scene.texture_seed).tobytes())
        self.text.build_mipmaps()
        self.text.filter = (ctx.LINEAR_MIPMAP_LINEAR, ctx.LINEAR)
        self.buffers: list = []
        self.draws = self._draw_list()
        for prog in self.programs.values():
            self._set_scene_uniforms(prog)

    def _draw_list(self) -> list[tuple[Any, Instance | None]]:
        """(vertex array, dynamic instance or None) in drawing order: opaque, alpha-tested, sky last.

        Static instances of one group share a vertex buffer (pre-transformed); drawing the opaque geometry
        first and the sky last lets the depth test reject hidden fragments before they are shaded.
        """
        materials = self.scene.materials

        def group(inst: Instance) -> int:
            m = materials[inst.mesh.material]
            return 2 if m.pattern == "sky" else int(m.alpha_tested)

        draws = []
        for g in range(3):
            members = [i for i in self.scene.instances if group(i) == g]
            static = merge([i.mesh.transformed(i.model(0)) for i in members if i.static])
            if len(static):
                draws.append((self._vertex_array(static, g == 1), None))
            draws += [(self._vertex_array(i.mesh.vertex_data(), g == 1), i) for i in members if not i.static]
        return draws

    def _vertex_array(self, data: np.ndarray, alpha_test: bool):
        """Indexed vertex array of a triangle list: shared corners are shaded once (vertex-bound on llvmpipe)."""
        vertices, index = np.unique(np.asarray(data, np.float32), axis=0, return_inverse=True)
        vbo = self.ctx.buffer(np.ascontiguousarray(vertices).tobytes())
        ibo = self.ctx.buffer(index.astype(np.uint32).ravel().tobytes())
        self.buffers += [vbo, ibo]
        return self.ctx.vertex_array(self.programs[alpha_test],
                                     [(vbo, "3f 3f 2f 1f", "in_pos", "in_normal", "in_uv", "in_mat")],
                                     index_buffer=ibo, index_element_size=4)

    def _set_scene_uniforms(self, prog) -> None:
        s = self.scene
        table = np.zeros((3, MAX_MATERIALS, 4), np.float32)
        for k, m in enumerate(s.materials):
            table[0, k] = (*m.color, PATTERNS[m.pattern])
            table[1, k] = (*m.color2, m.pattern_scale)
            table[2, k] = (m.specular, m.shininess, m.emissive, 0)
        for name, rows in zip(("u_mat_a", "u_mat_b", "u_mat_c"), table):
            prog[name].write(rows.tobytes())
        lights = np.zeros((2, MAX_LIGHTS, 3), np.float32)
        for k, light in enumerate(s.lights):
            lights[:, k] = light.position, light.color
        prog["u_light_pos"].write(lights[0].tobytes())
        prog["u_light_color"].write(lights[1].tobytes())
        prog["u_num_lights"].value = len(s.lights)
        prog["u_sun_dir"].value = tuple(s.sun_direction)
        prog["u_sun_color"].value = tuple(s.sun_color)
        prog["u_ambient"].value = tuple(s.ambient)
        prog["u_half_size"].value = (self.width / 2, self.height / 2)
        prog["u_text"].value = 0

    # -------------------------------------------------------------------------------------- camera

    def projection(self) -> np.ndarray:
        """Unjittered camera→clip matrix of this renderer's aspect ratio."""
        return self.scene.camera.projection(self.width / self.height)

    def camera(self, frame: float) -> tuple[np.ndarray, np.ndarray]:
        """(view, unjittered projection) at `frame`, as recorded in capture.json."""
        return self.scene.camera.view(frame), self.projection()

    # -------------------------------------------------------------------------------------- drawing

    def _draw(self, frame: float, prev_frame: float, offset: Sequence[float], mip_bias: float, fbo) -> None:
        view, proj = self.camera(frame)
        prev_view = self.scene.camera.view(prev_frame)
        frame_uniforms = {"u_view": view, "u_raster": jitter_matrix(offset, self.width, self.height) @ proj @ view,
                          "u_viewproj": proj @ view, "u_prev_viewproj": proj @ prev_view}
        for prog in self.programs.values():
            for name, matrix in frame_uniforms.items():
                prog[name].write(gl_matrix(matrix))
            prog["u_eye"].value = tuple(np.linalg.inv(view)[:3, 3])
            prog["u_mip_bias"].value = mip_bias
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        self.text.use(0)
        for vao, inst in self.draws:
            model, prev_model = (np.eye(4), np.eye(4)) if inst is None else (inst.model(frame), inst.model(prev_frame))
            vao.program["u_model"].write(gl_matrix(model))
            vao.program["u_prev_model"].write(gl_matrix(prev_model))
            vao.program["u_normal_matrix"].write(gl_matrix(np.linalg.inv(model[:3, :3]).T))
            vao.render()

    def _read(self, target: int) -> np.ndarray:
        tex = self.targets[target]
        data = np.frombuffer(self.fbo.read(components=tex.components, dtype="f4", attachment=target), np.float32)
        return data.reshape(self.height, self.width, tex.components)[::-1].copy()  # GL rows start at the bottom

    def render_color(self, frame: float, jitter: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        """H×W×3 linear HDR colour, one sample per pixel at pixel centre + `jitter` (pixels, +y down)."""
        self._draw(frame, frame, jitter, self.mip_bias, self.fbo_color)
        return self._read(0)[..., :3]

    def render_gbuffer(self, frame: float, prev_frame: float) -> tuple[np.ndarray, np.ndarray]:
        """(H×W×2 motion in pixels from `prev_frame` to `frame`, H×W planar depth) at unjittered pixel centres."""
        self._draw(frame, prev_frame, (0.0, 0.0), self.mip_bias, self.fbo)
        return self._read(1), self._read(2)[..., 0]

    def render_reference(self, frame: float, samples_per_axis: int = 8,
                         rng: np.random.Generator | None = None) -> np.ndarray:
        """H×W×3 box-filtered mean of samples_per_axis² stratified sub-pixel samples, unjittered camera.

        `rng` draws one random point per stratum instead of stratum centres (a second, independent sample set).
        """
        bias = self.mip_bias - math.log2(samples_per_axis)
        total = np.zeros((self.height, self.width, 3), np.float64)
        offsets = stratified_offsets(samples_per_axis, rng)
        for offset in offsets:
            self._draw(frame, frame, offset, bias, self.fbo_color)
            total += self._read(0)[..., :3]
        return (total / len(offsets)).astype(np.float32)

    def release(self) -> None:
        """Free this renderer's GL objects (the context itself is shared by the process)."""
        for vao, _ in self.draws:
            vao.release()
        for obj in (*self.buffers, *self.targets, self.depth_buffer, self.fbo, self.fbo_color, self.text,
                    *self.programs.values()):
            obj.release()

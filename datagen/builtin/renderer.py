"""The builtin rasterizer: moderngl on a headless EGL context (Mesa llvmpipe on CPUs, a GPU's EGL where present).

Per frame it produces the four passes of the capture contract in float32:

* ``color``: one sample per pixel at the jittered pixel centre; the jitter shifts the projection matrix, so the
  sample of pixel ``p`` lies at ``p + 0.5 + j`` in image coordinates (+x right, +y down);
* ``motion``: current minus previous screen position in pixels, from per-vertex current and previous clip
  positions of the *unjittered* camera (camera and object motion), evaluated at pixel centres;
* ``depth``: planar view depth of the surface at the pixel centre;
* ``reference``: the mean of N×N stratified sub-pixel samples (a box filter over the pixel), unjittered camera.

Textures sampled from mip maps use the configured mip bias; the reference passes add −log2(N) so they see the
texture detail a render at N× the resolution would see. Everything else a sample sees is the same function of the
sample position in every pass: the normal maps of `bricks`/`plates`, the alpha tests (no alpha-to-coverage), and
the sun's shadow map, rendered once per frame at a fixed world-space resolution.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from qw.datagen.builtin.scene import PATTERNS, Instance, Scene, merge
from qw.datagen.builtin.textures import SURFACE_TEXTURES, TEXT_TEXTURE_SIZE, text_texture
from qw.datagen.errors import QwError

MAX_MATERIALS = 64
MAX_LIGHTS = 8
# texture units: the text page, the surface textures (in SURFACE_TEXTURES order), the sun's shadow map
TEXT_UNIT, SHADOW_UNIT = 0, 1 + len(SURFACE_TEXTURES)
SURFACE_UNITS = {name: 1 + k for k, name in enumerate(SURFACE_TEXTURES)}


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

# The alpha-tested patterns' holes, shared by the shading and the shadow passes (leaves cast leaf-shaped shadows).
CUT_OUT = """
uvec3 cell_hash(vec2 cell) {
    // integer hash (PCG-style) of a pattern cell: the same bits on every OpenGL device
    uvec3 v = uvec3(ivec3(int(cell.x), int(cell.y), 7919)) * 1664525u + 1013904223u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    v ^= v >> 16u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    return v;
}

vec3 cell_random(vec2 cell) {  // three numbers in [0, 1) per cell
    return vec3(cell_hash(cell) >> 8u) / 16777216.0;
}

bool cut_out(int pattern, vec2 uv, vec2 card_uv) {
    if (pattern == %(blades)d) return abs(fract(uv.x) - 0.5) > 0.42 * (1.0 - card_uv.y);
    if (pattern == %(leaf)d) {
        vec2 c = (fract(uv) - 0.5) * vec2(1.0, 1.7);
        return dot(c, c) > 0.2;
    }
    if (pattern == %(chainlink)d) {  // diamond mesh: wires along both diagonals of each cell
        vec2 d = abs(fract(vec2(uv.x + uv.y, uv.x - uv.y) + 0.5) - 0.5);
        return min(d.x, d.y) > 0.06;
    }
    if (pattern == %(grate)d) {  // bars along v at every integer u, thin cross bars every 4 units of v
        vec2 d = abs(fract(uv * vec2(1.0, 0.25) + 0.5) - 0.5);
        return d.x > 0.12 && d.y > 0.03;
    }
    if (pattern == %(foliage)d) {  // a round cluster of leaves, one per cell, each shifted, turned and sized at random
        if (length(card_uv - 0.5) > 0.5) return true;
        vec3 r = cell_random(floor(uv));
        if (r.z < 0.12) return true;  // gaps
        float a = 6.2832 * r.x;
        vec2 c = mat2(cos(a), sin(a), -sin(a), cos(a)) * (fract(uv) - 0.5 - 0.25 * (r.yz - 0.5));
        return dot(c * vec2(1.0, 1.9), c * vec2(1.0, 1.9)) > 0.09 + 0.12 * r.y;
    }
    return false;
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
uniform vec4 u_mat_c[%(MAXM)d];  // specular, shininess, emissive, bump
uniform vec3 u_eye;
uniform vec3 u_sun_dir;
uniform vec3 u_sun_color;
uniform vec3 u_ambient;
uniform int u_num_lights;
uniform vec3 u_light_pos[%(MAXL)d];
uniform vec3 u_light_color[%(MAXL)d];
uniform sampler2D u_text;
uniform sampler2D u_bricks;
uniform sampler2D u_plates;
uniform sampler2D u_shadow_map;
uniform mat4 u_light;            // world -> the sun's shadow-map clip space
uniform int u_shadow_on;
uniform vec2 u_shadow_bias;      // normal offset (world units), depth bias (shadow-map depth units)
uniform float u_mip_bias;
uniform vec2 u_half_size;
layout(location = 0) out vec4 o_color;
layout(location = 1) out vec2 o_motion;
layout(location = 2) out float o_depth;
%(CUT_OUT)s
vec3 perturbed_normal(vec3 n, vec3 p, vec2 uv, vec2 slope, float bump) {
    // tangent frame from screen-space derivatives (cotangent frame): no tangent attribute needed
    vec3 dp1 = dFdx(p), dp2 = dFdy(p);
    vec2 duv1 = dFdx(uv), duv2 = dFdy(uv);
    vec3 dp2perp = cross(dp2, n), dp1perp = cross(n, dp1);
    vec3 t = dp2perp * duv1.x + dp1perp * duv2.x;
    vec3 b = dp2perp * duv1.y + dp1perp * duv2.y;
    float unit = inversesqrt(max(max(dot(t, t), dot(b, b)), 1e-30));
    float z = sqrt(max(1.0 - dot(slope, slope), 0.0));
    return normalize((t * slope.x + b * slope.y) * unit * bump + n * z);
}

float sun_visibility(vec3 world, vec3 n) {
    // one unfiltered shadow-map texel per sample: hard, texel-stepped edges
    if (u_shadow_on == 0) return 1.0;
    vec4 c = u_light * vec4(world + n * u_shadow_bias.x, 1.0);
    vec3 s = c.xyz / c.w * 0.5 + 0.5;
    if (any(lessThan(s, vec3(0.0))) || any(greaterThan(s, vec3(1.0)))) return 1.0;
    return s.z - u_shadow_bias.y > texture(u_shadow_map, s.xy).r ? 0.0 : 1.0;
}

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
    vec4 surface = vec4(0.5, 0.5, 0.0, 1.0);  // flat normal
    if (pattern == %(bricks)d) surface = texture(u_bricks, uv, u_mip_bias);
    else if (pattern == %(plates)d) surface = texture(u_plates, uv, u_mip_bias);
    if (pattern == %(bricks)d || pattern == %(plates)d) t = surface.b;
#ifdef ALPHA_TEST
    if (cut_out(pattern, uv, v_uv)) discard;
    if (pattern == %(blades)d) t = v_uv.y;
    else if (pattern == %(leaf)d) t = fract(uv.y);
    else if (pattern == %(foliage)d) t = cell_random(floor(uv)).y;
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
        float sun = sun_visibility(v_world, n);
        if (C.w > 0.0) n = perturbed_normal(n, v_world, uv, surface.rg * 2.0 - 1.0, C.w);
        vec3 l = normalize(u_sun_dir);
        color = albedo * (u_ambient + sun * u_sun_color * max(dot(n, l), 0.0));
        color += sun * C.x * u_sun_color * specular_term(n, l, v, C.y);
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


SHADOW_VERTEX_SHADER = """
#version 330
uniform mat4 u_model;
uniform mat4 u_light;
in vec3 in_pos;
in vec2 in_uv;
in float in_mat;
out vec2 v_uv;
flat out int v_mat;
void main() {
    v_uv = in_uv;
    v_mat = int(in_mat + 0.5);
    gl_Position = u_light * (u_model * vec4(in_pos, 1.0));
}
"""

SHADOW_FRAGMENT_SHADER = """
#version 330
%(ALPHA_TEST)s
in vec2 v_uv;
flat in int v_mat;
uniform vec4 u_mat_a[%(MAXM)d];
uniform vec4 u_mat_b[%(MAXM)d];
%(CUT_OUT)s
void main() {
#ifdef ALPHA_TEST
    if (cut_out(int(u_mat_a[v_mat].w + 0.5), v_uv * u_mat_b[v_mat].w, v_uv)) discard;
#endif
}
"""


def fragment_shader(alpha_test: bool, source: str = FRAGMENT_SHADER) -> str:
    """A fragment shader; only the alpha-tested variant can `discard`, so opaque draws keep early depth tests
    (a large saving on llvmpipe, which otherwise shades every covered fragment)."""
    constants = dict(MAXM=MAX_MATERIALS, MAXL=MAX_LIGHTS, ALPHA_TEST="#define ALPHA_TEST" * alpha_test, **PATTERNS)
    return source % dict(constants, CUT_OUT=CUT_OUT % PATTERNS)


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


def gl_matrix(m: np.ndarray) -> bytes:
    """Row-major numpy matrix → bytes of the column-major float32 matrix GLSL expects."""
    return np.ascontiguousarray(np.asarray(m, np.float64).T, np.float32).tobytes()


# ------------------------------------------------------------------------------------------------ renderer


def undrawable(scene: Scene) -> str | None:
    """Why the shaders cannot draw `scene` (their material and light tables have fixed sizes), or None."""
    if len(scene.materials) > MAX_MATERIALS or len(scene.lights) > MAX_LIGHTS:
        return (f"{len(scene.materials)} materials and {len(scene.lights)} point lights; the builtin renderer draws "
                f"at most {MAX_MATERIALS} materials and {MAX_LIGHTS} lights")
    return None


class Renderer:
    """Draws one `Scene` at a fixed resolution; every method returns top-row-first float32 arrays."""

    def __init__(self, scene: Scene, width: int, height: int, *, mip_bias: float = 0.0):
        problem = undrawable(scene)
        if problem:
            raise ValueError(problem)
        self.scene, self.width, self.height, self.mip_bias = scene, width, height, mip_bias
        ctx = self.ctx = gl_context()
        self.programs = {alpha: ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=fragment_shader(alpha))
                         for alpha in (False, True)}
        self.targets = [ctx.texture((width, height), c, dtype="f4") for c in (4, 2, 1)]
        self.depth_buffer = ctx.depth_renderbuffer((width, height))
        self.fbo = ctx.framebuffer(color_attachments=self.targets, depth_attachment=self.depth_buffer)
        # colour-only target for the colour and reference passes: motion and depth writes are skipped there
        self.fbo_color = ctx.framebuffer(color_attachments=self.targets[:1], depth_attachment=self.depth_buffer)
        self.textures = [self._mipmapped(TEXT_TEXTURE_SIZE, 1, text_texture(scene.texture_seed))]
        self.textures += [self._mipmapped(len(image), 4, image)
                          for image in (make(scene.texture_seed) for make in SURFACE_TEXTURES.values())]
        self._init_shadow_map()
        self.buffers: list = []
        self.draws = self._draw_list()
        self._set_scene_uniforms()

    def _mipmapped(self, size: int, components: int, data: np.ndarray):
        tex = self.ctx.texture((size, size), components, np.ascontiguousarray(data).tobytes())
        tex.build_mipmaps()
        tex.filter = (self.ctx.LINEAR_MIPMAP_LINEAR, self.ctx.LINEAR)
        return tex

    def _init_shadow_map(self) -> None:
        """The sun's depth map (1 texel when the scene has no shadows) and the programs that draw into it."""
        ctx, shadow = self.ctx, self.scene.shadow
        self.shadow_map = ctx.depth_texture((shadow.resolution,) * 2 if shadow else (1, 1))
        self.shadow_map.compare_func = ""  # read raw depths; the shader compares
        self.shadow_map.filter = (ctx.NEAREST, ctx.NEAREST)
        self.shadow_map.repeat_x = self.shadow_map.repeat_y = False
        self.shadow_fbo = ctx.framebuffer(depth_attachment=self.shadow_map)
        self.shadow_programs = {alpha: ctx.program(vertex_shader=SHADOW_VERTEX_SHADER,
                                                   fragment_shader=fragment_shader(alpha, SHADOW_FRAGMENT_SHADER))
                                for alpha in (False, True)}
        self.shadow_frame: float | None = None  # the frame the map holds

    def _draw_list(self) -> list[tuple[Any, Any, Instance | None]]:
        """(vertex array, shadow-pass vertex array or None, dynamic instance or None) in drawing order: opaque,
        alpha-tested, sky last (the sky casts no shadow).

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
                draws.append((*self._vertex_arrays(static, g), None))
            draws += [(*self._vertex_arrays(i.mesh.vertex_data(), g), i) for i in members if not i.static]
        return draws

    def _vertex_arrays(self, data: np.ndarray, group: int) -> tuple[Any, Any]:
        """Indexed vertex arrays of a triangle list for the shading and (with shadows, not for the sky) the shadow
        pass: shared corners are shaded once (vertex-bound on llvmpipe)."""
        vertices, index = np.unique(np.asarray(data, np.float32), axis=0, return_inverse=True)
        vbo = self.ctx.buffer(np.ascontiguousarray(vertices).tobytes())
        ibo = self.ctx.buffer(index.astype(np.uint32).ravel().tobytes())
        self.buffers += [vbo, ibo]
        alpha_test = group == 1
        shading = self.ctx.vertex_array(self.programs[alpha_test],
                                        [(vbo, "3f 3f 2f 1f", "in_pos", "in_normal", "in_uv", "in_mat")],
                                        index_buffer=ibo, index_element_size=4)
        if self.scene.shadow is None or group == 2:
            return shading, None
        # the opaque shadow pass reads positions only (its shader has no cut-outs)
        layout = (vbo, "3f 12x 2f 1f", "in_pos", "in_uv", "in_mat") if alpha_test else (vbo, "3f 24x", "in_pos")
        shadow = self.ctx.vertex_array(self.shadow_programs[alpha_test], [layout], index_buffer=ibo,
                                       index_element_size=4)
        return shading, shadow

    def _material_table(self) -> np.ndarray:
        """(3, MAX_MATERIALS, 4) rows of u_mat_a, u_mat_b, u_mat_c."""
        table = np.zeros((3, MAX_MATERIALS, 4), np.float32)
        for k, m in enumerate(self.scene.materials):
            table[0, k] = (*m.color, PATTERNS[m.pattern])
            table[1, k] = (*m.color2, m.pattern_scale)
            table[2, k] = (m.specular, m.shininess, m.emissive, m.bump)
        return table

    def _set_scene_uniforms(self) -> None:
        s, table = self.scene, self._material_table()
        light = None if s.shadow is None else gl_matrix(s.shadow.matrix(s.sun_direction))
        for prog in self.programs.values():
            for name, rows in zip(("u_mat_a", "u_mat_b", "u_mat_c"), table):
                prog[name].write(rows.tobytes())
            lights = np.zeros((2, MAX_LIGHTS, 3), np.float32)
            for k, point in enumerate(s.lights):
                lights[:, k] = point.position, point.color
            prog["u_light_pos"].write(lights[0].tobytes())
            prog["u_light_color"].write(lights[1].tobytes())
            prog["u_num_lights"].value = len(s.lights)
            prog["u_sun_dir"].value = tuple(s.sun_direction)
            prog["u_sun_color"].value = tuple(s.sun_color)
            prog["u_ambient"].value = tuple(s.ambient)
            prog["u_half_size"].value = (self.width / 2, self.height / 2)
            prog["u_text"].value = TEXT_UNIT
            prog["u_bricks"].value = SURFACE_UNITS["bricks"]
            prog["u_plates"].value = SURFACE_UNITS["plates"]
            prog["u_shadow_map"].value = SHADOW_UNIT
            prog["u_shadow_on"].value = int(light is not None)
            if light is not None:
                prog["u_light"].write(light)
                # 1.5 texels along the normal and half a texel in depth: no self-shadowing acne on flat ground
                prog["u_shadow_bias"].value = (1.5 * s.shadow.texel, 0.5 * s.shadow.texel / s.shadow.depth_range)
        for prog in self.shadow_programs.values():
            for name, rows in zip(("u_mat_a", "u_mat_b"), table):
                uniform = prog.get(name, None)  # the opaque variant has no cut-outs and no material uniforms
                if uniform is not None:
                    uniform.write(rows.tobytes())
            if light is not None:
                prog["u_light"].write(light)

    # -------------------------------------------------------------------------------------- camera

    def projection(self) -> np.ndarray:
        """Unjittered camera→clip matrix of this renderer's aspect ratio."""
        return self.scene.camera.projection(self.width / self.height)

    def camera(self, frame: float) -> tuple[np.ndarray, np.ndarray]:
        """(view, unjittered projection) at `frame`, as recorded in capture.json."""
        return self.scene.camera.view(frame), self.projection()

    # -------------------------------------------------------------------------------------- drawing

    def _draw(self, frame: float, prev_frame: float, offset: Sequence[float], mip_bias: float, fbo) -> None:
        if self.scene.shadow is not None and self.shadow_frame != frame:
            self._draw_shadow_map(frame)
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
        for unit, texture in enumerate(self.textures):
            texture.use(unit)
        self.shadow_map.use(SHADOW_UNIT)
        for vao, _, inst in self.draws:
            model, prev_model = (np.eye(4), np.eye(4)) if inst is None else (inst.model(frame), inst.model(prev_frame))
            vao.program["u_model"].write(gl_matrix(model))
            vao.program["u_prev_model"].write(gl_matrix(prev_model))
            vao.program["u_normal_matrix"].write(gl_matrix(np.linalg.inv(model[:3, :3]).T))
            vao.render()

    def _draw_shadow_map(self, frame: float) -> None:
        """The sun's depth map of every shadow caster at `frame` (shared by all the passes of that frame)."""
        self.shadow_fbo.use()
        self.shadow_fbo.clear(depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        for _, vao, inst in self.draws:
            if vao is not None:
                vao.program["u_model"].write(gl_matrix(np.eye(4) if inst is None else inst.model(frame)))
                vao.render()
        self.shadow_frame = frame

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
        for vao, shadow_vao, _ in self.draws:
            vao.release()
            if shadow_vao is not None:
                shadow_vao.release()
        for obj in (*self.buffers, *self.targets, self.depth_buffer, self.fbo, self.fbo_color, *self.textures,
                    self.shadow_map, self.shadow_fbo, *self.programs.values(), *self.shadow_programs.values()):
            obj.release()

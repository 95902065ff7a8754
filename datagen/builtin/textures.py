"""Procedural textures of the builtin renderer, drawn from a scene's texture seed (same seed, same bytes).

The surface textures (`bricks`, `plates`) are RGBA8: R, G the tangent-space normal's x, y (−1..1 mapped to
0..255; +x along u, +y along v), B the albedo mix between a material's two colours, A unused. Their rows start
at v = 0 (the row order OpenGL uploads). Mip maps average the encoded normals, so distant bumps flatten the way an
engine's mip-mapped normal maps do, while close ones keep the sharp slopes that make glossy highlights shimmer.
"""

from __future__ import annotations

import numpy as np

TEXT_TEXTURE_SIZE = 512
SURFACE_TEXTURE_SIZE = 256


def text_texture(seed: int, size: int = TEXT_TEXTURE_SIZE) -> np.ndarray:
    """(size, size) uint8 'printed page': rows of random 3×5 glyphs in 16-pixel cells, ink = 255."""
    rng = np.random.default_rng(seed)
    cells = size // 16
    glyphs = rng.random((cells, cells, 5, 3)) < 0.45
    glyphs &= rng.random((cells, cells, 1, 1)) < 0.85  # some blank cells: word gaps
    cell = np.zeros((cells, cells, 16, 16), bool)
    cell[:, :, 3:13, 4:10] = glyphs.repeat(2, 2).repeat(2, 3)
    return (cell.transpose(0, 2, 1, 3).reshape(size, size) * 255).astype(np.uint8)


def encode_surface(height: np.ndarray, albedo_mix: np.ndarray, slope_scale: float) -> np.ndarray:
    """RGBA8 surface texture of a (periodic) height field in texels and an albedo mix in [0, 1]."""
    dh_dv, dh_du = np.gradient(np.pad(height, 1, mode="wrap"))
    normal = np.stack([-dh_du[1:-1, 1:-1] * slope_scale, -dh_dv[1:-1, 1:-1] * slope_scale,
                       np.ones_like(height)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    rgba = np.zeros((*height.shape, 4), np.uint8)
    rgba[..., :2] = np.round((normal[..., :2] * 0.5 + 0.5) * 255)
    rgba[..., 2] = np.round(np.clip(albedo_mix, 0, 1) * 255)
    rgba[..., 3] = 255
    return rgba


def bricks_texture(seed: int, size: int = SURFACE_TEXTURE_SIZE, rows: int = 8, per_row: int = 4) -> np.ndarray:
    """Running-bond bricks: bevelled bricks with rough faces between sunken mortar joints; B = 1 in the mortar,
    a per-brick shade elsewhere."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    brick_h, brick_w = size / rows, size / per_row
    row = (v // brick_h).astype(int)
    shifted = (u + (row % 2) * brick_w / 2) % size
    col = (shifted // brick_w).astype(int)
    # distance (texels) to the nearest joint, for the bevel
    edge = np.minimum.reduce([v % brick_h, brick_h - v % brick_h, shifted % brick_w, brick_w - shifted % brick_w])
    mortar = edge < 1.5
    shade = rng.uniform(0.0, 0.3, (rows, per_row))[row, col]
    height = np.clip(edge / 3.0, 0, 1) + 0.15 * rng.standard_normal((size, size))
    height[mortar] = -0.2
    return encode_surface(height, np.where(mortar, 1.0, shade), slope_scale=1.5)


def plates_texture(seed: int, size: int = SURFACE_TEXTURE_SIZE, panels: int = 2, lugs: int = 16) -> np.ndarray:
    """Diamond tread plate: rows of raised lugs at alternating ±45°, seams between `panels`² panels, rivets at
    the panel corners; B marks seams, rivets and random wear."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    cell = size / lugs
    i, j = u // cell, v // cell
    cu, cv = (u % cell) / cell - 0.5, (v % cell) / cell - 0.5
    flip = np.where((i + j) % 2 == 0, 1.0, -1.0)
    along, across = (cu + flip * cv) / np.sqrt(2), (cu - flip * cv) / np.sqrt(2)
    lug = np.clip(1 - (along / 0.42) ** 2 - (across / 0.1) ** 2, 0, 1) ** 0.5  # elongated dome
    panel = size / panels
    seam_distance = np.minimum.reduce([u % panel, panel - u % panel, v % panel, panel - v % panel])
    seam = seam_distance < 1.5
    corner = np.hypot(np.minimum(u % panel, panel - u % panel) - 6, np.minimum(v % panel, panel - v % panel) - 6)
    rivet = np.clip(1 - (corner / 3.0) ** 2, 0, 1) ** 0.5
    height = 1.2 * lug + 1.5 * rivet
    height[seam] = -0.5
    wear = rng.random((size // 8, size // 8)).repeat(8, 0).repeat(8, 1) < 0.15
    return encode_surface(height, np.where(seam | (rivet > 0), 1.0, 0.35 * wear), slope_scale=2.0)


SURFACE_TEXTURES = {"bricks": bricks_texture, "plates": plates_texture}

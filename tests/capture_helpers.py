"""Synthetic captures for tests: a camera flying over a fronto-parallel plane, with motion derived analytically.

The motion here is computed from the pinhole geometry directly (no matrix inversion), so it checks
`qw.datagen.validate.reprojected_motion` instead of repeating it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qw.datagen.builtin.scene import perspective as builtin_perspective
from qw.datagen.capture_format import (
    BackendInfo,
    CameraFrame,
    CaptureMeta,
    JitterInfo,
    ReferenceInfo,
    finish_capture,
    write_frame,
)

WIDTH, HEIGHT, FRAMES = 40, 24, 4
PLANE_DISTANCE = 10.0  # depth of the plane from the first camera
STEP = np.array([0.3, -0.2, -0.5])  # camera move per frame: right, down, forward (towards the plane, −Z)


def perspective(aspect: float = WIDTH / HEIGHT) -> np.ndarray:
    return builtin_perspective(60.0, aspect, 0.1, 100.0)


def translation_view(position: np.ndarray) -> np.ndarray:
    view = np.eye(4)
    view[:3, 3] = -position
    return view


def ndc_grid(width: int = WIDTH, height: int = HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    xs = 2 * (np.arange(width) + 0.5) / width - 1
    ys = 1 - 2 * (np.arange(height) + 0.5) / height
    return np.meshgrid(xs, ys)


def plane_depth(frame: int) -> float:
    return PLANE_DISTANCE + STEP[2] * frame  # STEP[2] < 0: the camera approaches the plane


def analytic_motion(frame: int, proj: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Motion (H, W, 2) of the plane between frame−1 and frame for a translating camera.

    Current camera-space point: X = n_x·d/P00, Y = n_y·d/P11, depth d. In the previous camera it sits at
    (X + s_x, Y + s_y) with depth d − s_z, so its previous NDC is (X + s_x)·P00/(d − s_z) and likewise for y.
    """
    nx, ny = ndc_grid(width, height)
    d = plane_depth(frame)
    x, y = nx * d / proj[0, 0], ny * d / proj[1, 1]
    d_prev = d - STEP[2]
    nx_prev = (x + STEP[0]) * proj[0, 0] / d_prev
    ny_prev = (y + STEP[1]) * proj[1, 1] / d_prev
    return np.stack([(nx - nx_prev) * width / 2, -(ny - ny_prev) * height / 2], axis=-1)


def plane_texture(frame: int, proj: np.ndarray, width: int, height: int, phases: np.ndarray) -> np.ndarray:
    """(H, W, 3) HDR reference of a smooth texture fixed to the plane, as the camera of `frame` sees it: warping it
    by `analytic_motion` gives the next frame (up to interpolation)."""
    nx, ny = ndc_grid(width, height)
    d = plane_depth(frame)
    wx, wy = nx * d / proj[0, 0] + STEP[0] * frame, ny * d / proj[1, 1] + STEP[1] * frame  # world x, y on the plane
    return np.stack([1 + 0.8 * np.sin(1.7 * wx + p) * np.cos(1.3 * wy - p) for p in phases], axis=-1)


def make_capture(shot: Path, frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0,
                 cameras: bool = True, motion_sign: float = 1.0) -> CaptureMeta:
    """Write a complete synthetic shot (every pass, capture.json last) and return its metadata. The reference is a
    texture on the plane that moves with the camera; the input adds a pixel checkerboard (aliasing)."""
    rng = np.random.default_rng(seed)
    proj = perspective(aspect=width / height)
    phases = rng.uniform(0, 2 * np.pi, 3)
    checker = 0.5 * (np.add.outer(np.arange(height), np.arange(width)) % 2)[..., None]
    for i in range(frames):
        reference = plane_texture(i, proj, width, height, phases)
        write_frame(shot, "color", i, reference + checker)
        write_frame(shot, "reference", i, reference)
        motion = analytic_motion(i, proj, width, height) if i else np.zeros((height, width, 2))
        write_frame(shot, "motion", i, motion_sign * motion)
        write_frame(shot, "depth", i, np.full((height, width, 1), plane_depth(i)))
    camera_frames = [CameraFrame(view=translation_view(STEP * i).tolist(), projection=proj.tolist())
                     for i in range(frames)]
    meta = CaptureMeta(
        scene="synthetic", shot=shot.name, backend=BackendInfo(name="test", settings={"seed": seed}),
        width=width, height=height, fps=30, frame_count=frames, source_frames=list(range(frames)),
        jitter=JitterInfo(sequence="none"), reference=ReferenceInfo(samples=1, filter="box"),
        cameras=camera_frames if cameras else None, seed=seed,
    )
    return finish_capture(shot, meta)

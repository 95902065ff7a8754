"""Unreal-format test inputs built from known ground truth: encoders written from the published formulas.

These are the inverse of qw.ue_capture.convert, written independently from the engine's and the sample's own code
(Common.ush velocity packing, the Intel sample's sign bits, MRQ's 0.5-centred material, MRQ's sample jitter in
MoviePipelineRendering.cpp / MoviePipelineUtils.cpp), so a wrong sign, scale, bias or W/H swap in the decoders
shows up as a mismatch. Used by the conversion/importer tests and by the fake editor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenEXR

HEADER = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}


def analytic_motion(width: int, height: int, phase: float = 0.0, x0: int = 0, y0: int = 0) -> np.ndarray:
    """(H, W, 2) float64 motion in pixels with both signs in x and y, smooth and non-separable."""
    y, x = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float64)
    dx = 6.5 * np.sin(2 * np.pi * x / 37.0 + phase) + 0.05 * y - 1.0
    dy = -4.25 * np.cos(2 * np.pi * y / 23.0 + phase) + 0.03 * x - 0.5
    return np.stack([dx, dy], axis=-1)


def pixels_to_ndc(d: np.ndarray, full_w: int, full_h: int) -> np.ndarray:
    """Pixels (+y down) → UE NDC velocity (+y up) of the full frame."""
    return np.stack([d[..., 0] * 2.0 / full_w, -d[..., 1] * 2.0 / full_h], axis=-1)


def unorm16_counts(v: np.ndarray, ue5: bool = False) -> np.ndarray:
    """UE velocity texture counts round(65535·(V·0.2495 + 32767/65535)); UE5 first maps V → sign·sqrt|V|·√2."""
    if ue5:
        v = np.sign(v) * np.sqrt(np.abs(v)) * np.sqrt(2.0)
    return np.rint(65535.0 * (v * 0.2495 + 32767.0 / 65535.0)).astype(np.uint16)


def counts_to_ndc(counts: np.ndarray, ue5: bool = False) -> np.ndarray:
    """The exact NDC value a count stands for (spec formula), the ground truth after snapping."""
    s = (counts.astype(np.float64) - 32767.0) / (65535.0 * 0.2495)
    return s * np.abs(s) / 2.0 if ue5 else s


def sign_bits(v: np.ndarray) -> np.ndarray:
    """The Intel sample's velocity image: |V.x|, |V.y|, code (1: x < 0, 2: y < 0)."""
    code = (v[..., 0] < 0) * 1.0 + (v[..., 1] < 0) * 2.0
    return np.stack([np.abs(v[..., 0]), np.abs(v[..., 1]), code], axis=-1)


def mrq_material(d: np.ndarray, width: int, height: int, scale=(1.0, -1.0)) -> np.ndarray:
    """MRQ's 0.5-centred motion material for pixel motion `d` under the per-axis calibration `scale`."""
    return np.stack([d[..., 0] / (width * scale[0]) + 0.5, d[..., 1] / (height * scale[1]) + 0.5,
                     np.zeros(d.shape[:2])], axis=-1)


def velocity_image(d: np.ndarray, width: int, height: int) -> np.ndarray:
    """qw's velocity material output for pixel motion `d`: NDC V.x, V.y in R,G and 0 in B."""
    v = pixels_to_ndc(d, width, height)
    return np.concatenate([v, 0 * v[..., :1]], -1)


def mrq_spatial_shift(k: int, samples: int, gaussian: bool, filter_size: float = 1.0) -> tuple[float, float]:
    """MRQ's SpatialShiftX/Y in pixels for spatial sample k of `samples` (one temporal sample), as the engine
    computes it: Halton(k+1) in bases 2 and 3; up to 5.3 through a windowed Box-Muller (sigma 0.47·filter size),
    from 5.5 as Halton − 0.5. The projection moves by (2·sx/W, −2·sy/H), so the image content moves by +s."""
    def radical_inverse(i: int, base: int) -> float:
        result, fraction = 0.0, 1.0 / base
        while i:
            result += (i % base) * fraction
            i //= base
            fraction /= base
        return result

    u, v = radical_inverse(k % samples + 1, 2), radical_inverse(k % samples + 1, 3)
    if not gaussian:
        return u - 0.5, v - 0.5
    sigma = 0.47 * filter_size
    in_window = np.exp(-0.5 * (0.5 / sigma) ** 2)
    r = sigma * np.sqrt(-2.0 * np.log((1.0 - u) * in_window + u))
    return float(r * np.cos(2 * np.pi * v)), float(r * np.sin(2 * np.pi * v))


def scene_colour(px: np.ndarray, py: np.ndarray, frame: int) -> np.ndarray:
    """A smooth analytic HDR image at continuous pixel positions (x right, y down): what a jittered sample sees."""
    return np.stack([0.6 + 0.4 * np.sin(px / 2.3 + 0.2 * frame), 0.5 + 0.3 * np.cos(py / 1.7),
                     1.0 + 0.5 * np.sin((px + py) / 3.1)], axis=-1)


def write_exr(path: Path, image: np.ndarray, channels=("R", "G", "B"), dtype=np.float32, layer: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    planes = {(f"{layer}.{c}" if layer else c): np.ascontiguousarray(image[..., i], dtype=dtype)
              for i, c in enumerate(channels)}
    OpenEXR.File(dict(HEADER), planes).write(str(path))  # File() adds the data window to the dict it gets


def colour(width: int, height: int, frame: int, spp_noise: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([0.5 + 0.4 * np.sin(x / 5 + frame), 0.3 + 0.2 * np.cos(y / 3), 2.0 + 0 * x], axis=-1)
    return base + spp_noise * ((x + y + frame) % 2)[..., None]


def write_intel_sample(root: Path, width: int, height: int, frames: list[int], stem: str = "VIS_ArtDemo_P",
                       offsets: dict[int, tuple[float, float]] | None = None) -> dict[int, np.ndarray]:
    """noaa/ ssaa/ vel/ folders like the public sample; returns ground-truth motion in pixels per frame."""
    truth = {}
    for n in frames:
        name = f"{stem}_PreTonemapHDRColor_{n:04d}.exr"
        d = analytic_motion(width, height, phase=0.3 * n)
        truth[n] = d
        noaa = colour(width, height, n, 0.1)
        if offsets:
            noaa[0, 0] = sign_bits(np.asarray(offsets[n], np.float64)[None, None])[0, 0]
        write_exr(root / "noaa" / name, noaa, dtype=np.float16)
        write_exr(root / "ssaa" / name, colour(width, height, n), dtype=np.float16)
        write_exr(root / "vel" / name, sign_bits(pixels_to_ndc(d, width, height)))
    return truth


def write_mrq_frame(folder: Path, seq: str, frame: int, width: int, height: int, *, motion: np.ndarray | None = None,
                    motion_pass: str = "FinalImageM_QW_Velocity", depth_cm: np.ndarray | None = None,
                    depth_pass: str = "FinalImageM_QW_Depth", colour_only: bool = False) -> None:
    """One frame of MRQ output with separate files per pass, named {seq}.{pass}.{frame:04d}.exr."""
    aliasing = 0.0 if colour_only else 0.1  # the aliased render differs from the reference (colour_only)
    write_exr(folder / f"{seq}.FinalImage.{frame:04d}.exr", colour(width, height, frame, aliasing), dtype=np.float16)
    if colour_only:
        return
    if motion is not None:
        write_exr(folder / f"{seq}.{motion_pass}.{frame:04d}.exr", velocity_image(motion, width, height))
    if depth_cm is not None:
        write_exr(folder / f"{seq}.{depth_pass}.{frame:04d}.exr", depth_cm[..., None], channels=("R",))


# ----------------------------------------------------------------------------------------------- an Unreal camera
# A static test world seen through Unreal's camera conventions, written from the engine's own definitions (not from
# qw's converter): FRotationMatrix rows are the forward (X), right (Y) and up (Z) axes of a rotator; a camera's FOV is
# horizontal (MaintainXFOV) and its NDC has y up; velocity is ScreenPos − PrevScreenPos, both unjittered.
GROUND_Z_CM = 0.0  # a ground plane
SKY_RADIUS_CM = 70000.0  # and a sky sphere around the world origin: 700 m, past float16's 65504 in cm


def rotator_axes(pitch: float, yaw: float, roll: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) world vectors of an Unreal rotator in degrees (FRotationTranslationMatrix rows)."""
    sp, cp = np.sin(np.radians(pitch)), np.cos(np.radians(pitch))
    sy, cy = np.sin(np.radians(yaw)), np.cos(np.radians(yaw))
    sr, cr = np.sin(np.radians(roll)), np.cos(np.radians(roll))
    return (np.array([cp * cy, cp * sy, sp]), np.array([sr * sp * cy - cr * sy, sr * sp * sy + cr * cy, -sr * cp]),
            np.array([-(cr * sp * cy + sr * sy), cy * sr - cr * sp * sy, cr * cp]))


def screen_position(pose: tuple[float, ...], fov: float, width: int, height: int, points: np.ndarray) -> np.ndarray:
    """(…, 2) unjittered NDC (y up) of world `points` (cm) seen from `pose` (x, y, z, roll, pitch, yaw)."""
    forward, right, up = rotator_axes(pose[4], pose[5], pose[3])
    rel = points - np.asarray(pose[:3])
    t = np.tan(np.radians(fov) / 2)
    ahead = rel @ forward
    return np.stack([(rel @ right) / ahead / t, (rel @ up) / ahead / t * (width / height)], axis=-1)


def trace_world(pose: tuple[float, ...], fov: float, width: int, height: int,
                shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(world points (H, W, 3) in cm, planar depth (H, W) in cm) seen through each pixel centre − `shift`."""
    forward, right, up = rotator_axes(pose[4], pose[5], pose[3])
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    nx, ny = 2 * (x + 0.5 - shift[0]) / width - 1, 1 - 2 * (y + 0.5 - shift[1]) / height
    t = np.tan(np.radians(fov) / 2)
    ray = forward + (nx * t)[..., None] * right + (ny * t * height / width)[..., None] * up  # ray·forward = 1
    eye = np.asarray(pose[:3], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(ray[..., 2] < 0, (GROUND_Z_CM - eye[2]) / ray[..., 2], np.inf)
    a, b, c = (ray * ray).sum(-1), 2 * ray @ eye, eye @ eye - SKY_RADIUS_CM ** 2
    sky = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    depth = np.minimum(ground, sky)  # planar: the distance along `forward`, as ray·forward = 1
    return eye + depth[..., None] * ray, depth


def camera_velocity(prev: tuple[float, ...], cur: tuple[float, ...], fov: float, width: int, height: int,
                    shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(velocity NDC (H, W, 2), planar depth cm (H, W)) a jittered sample of the static world shows at `cur`."""
    points, depth = trace_world(cur, fov, width, height, shift)
    velocity = screen_position(cur, fov, width, height, points) - screen_position(prev, fov, width, height, points)
    return velocity, depth

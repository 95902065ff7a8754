"""Decoders from Unreal's motion, jitter and depth encodings into the capture contract's units.

Contract units (datagen/capture_format.py): motion in pixels, +x right, +y down, current minus previous; jitter in
pixels from the pixel centre; depth planar, in scene units.

Unreal's velocity ``V`` is ``ScreenPos − PrevScreenPos`` in NDC (y up), TAA jitter removed, so
``dx = V.x·W/2`` and ``dy = −V.y·H/2`` with the FULL frame's W,H, also for crops and tiles (the engine's
VelocityCommon.ush and the Intel sample's ``decode_vel``; docs/unreal.md). The encodings:

=================  ===========================================================================================
``ndc``            float V.x, V.y in R,G (a post-process material writing SceneTexture:Velocity at 32 bit)
``unorm16``        the UE4 velocity texture: ``E = V·0.2495 + 32767/65535`` in 16-bit UNORM; E.x = 0: unwritten
``unorm16-ue5``    UE5: the same packing of ``sign(V)·sqrt(|V|)·√2`` (decode ``s·|s|/2``)
``sign-bits``      the Intel sample: ``|V.x|, |V.y|`` in R,G; B holds bit 1 = x negative, bit 2 = y negative
``mrq-material``   MRQ's stock MovieRenderQueue_MotionVectors: 0.5-centred, normalized to the frame:
                   ``d = (C − 0.5)·size·scale``. [U] scale and sign disagree between sources (×1 or ×2, y sign);
                   default (1, −1) follows Epic's Nuke recipe (×W) with NDC's y up; calibrate with a known pan.
=================  ===========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qw.datagen.builtin.renderer import halton, halton_jitter
from qw.datagen.errors import QwError

VELOCITY_SCALE = 0.499 * 0.5  # EncodeVelocityToTexture: V·(0.499·0.5) + 32767/65535 ([C] UE4.26 Common.ush)
VELOCITY_BIAS = 32767.0 / 65535.0
UE5_GAMMA_GAIN = np.sqrt(2.0)  # UE5 VELOCITY_ENCODE_GAMMA: sign(V)·sqrt(|V|)·(2/√2) before packing
MRQ_MATERIAL_SCALE = (1.0, -1.0)  # [U] see the module docstring
UNREAL_UNITS_PER_METRE = 100.0  # Unreal world units are centimetres
FLOAT16_MAX = float(np.finfo(np.float16).max)
FILTER_SIZE_CVAR = "r.TemporalAAFilterSize"  # width of MRQ's Gaussian sample distribution (UE <= 5.3)
MRQ_SIGMA_PER_FILTER_SIZE = 0.47  # MRQ's Gaussian sample sigma in px per unit of FILTER_SIZE_CVAR (UE <= 5.3)


def ndc_to_pixels(v: np.ndarray, width: int, height: int) -> np.ndarray:
    """(…, 2) NDC velocity (y up) → pixels (+y down), using the full frame's width and height."""
    v = np.asarray(v)
    out = np.empty(v.shape[:-1] + (2,), np.float32)
    np.multiply(v[..., 0], width / 2.0, out=out[..., 0], casting="unsafe")
    np.multiply(v[..., 1], -height / 2.0, out=out[..., 1], casting="unsafe")
    return out


def _normalized(encoded: np.ndarray) -> np.ndarray:
    """UNORM values as floats in [0, 1]: integer counts are divided by 65535, floats are taken as read."""
    encoded = np.asarray(encoded)
    if np.issubdtype(encoded.dtype, np.integer):
        return encoded.astype(np.float64) / 65535.0
    return encoded.astype(np.float64)


def unpack_unorm16(encoded: np.ndarray, *, ue5_gamma: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(…, ≥2) packed velocity texture → (NDC V (…, 2), written mask); E.x == 0 means nothing wrote velocity."""
    e = _normalized(encoded)[..., :2]
    written = e[..., 0] > 0
    v = (e - VELOCITY_BIAS) / VELOCITY_SCALE
    if ue5_gamma:
        v = v * np.abs(v) * 0.5
    return np.where(written[..., None], v, 0.0), written


def sign_bits_to_ndc(image: np.ndarray) -> np.ndarray:
    """(…, 3) |V.x|, |V.y|, sign code → signed (…, 2) float32: code bit 1 negates x, bit 2 negates y."""
    image = np.asarray(image)
    code = np.rint(np.nan_to_num(image[..., 2])).astype(np.int32)
    v = image[..., :2].astype(np.float32)  # a copy: the signs are applied in place
    for axis, bit in ((0, 1), (1, 2)):
        np.negative(v[..., axis], out=v[..., axis], where=(code & bit) != 0)
    return v


def mrq_material_to_pixels(image: np.ndarray, width: int, height: int,
                           scale: tuple[float, float] = MRQ_MATERIAL_SCALE) -> np.ndarray:
    """(…, ≥2) MRQ MotionVectors material values (0.5 = still) → pixels with per-axis `scale` (see docstring)."""
    c = np.asarray(image, np.float64)[..., :2] - 0.5
    return np.stack([c[..., 0] * (width * scale[0]), c[..., 1] * (height * scale[1])], axis=-1).astype(np.float32)


def _packed_to_pixels(image: np.ndarray, width: int, height: int, *, ue5_gamma: bool):
    v, written = unpack_unorm16(image, ue5_gamma=ue5_gamma)
    return ndc_to_pixels(v, width, height), written


def _all_written(shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape[:-1], dtype=bool)


MotionDecoder = Callable[[np.ndarray, int, int, tuple[float, float]], tuple[np.ndarray, np.ndarray]]

MOTION_DECODERS: dict[str, MotionDecoder] = {
    "ndc": lambda img, w, h, s: (ndc_to_pixels(np.asarray(img)[..., :2], w, h), _all_written(np.shape(img))),
    "unorm16": lambda img, w, h, s: _packed_to_pixels(img, w, h, ue5_gamma=False),
    "unorm16-ue5": lambda img, w, h, s: _packed_to_pixels(img, w, h, ue5_gamma=True),
    "sign-bits": lambda img, w, h, s: (ndc_to_pixels(sign_bits_to_ndc(img), w, h), _all_written(np.shape(img))),
    "mrq-material": lambda img, w, h, s: (mrq_material_to_pixels(img, w, h, s), _all_written(np.shape(img))),
}
MOTION_CHANNELS = {"ndc": 2, "unorm16": 2, "unorm16-ue5": 2, "sign-bits": 3, "mrq-material": 2}


def decode_motion(image: np.ndarray, encoding: str, full_size: tuple[int, int],
                  mrq_scale: tuple[float, float] = MRQ_MATERIAL_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Any supported Unreal encoding (H, W, C) → (motion in pixels (H, W, 2) float32, written mask (H, W)).

    `full_size` is the full frame's (width, height), which NDC is relative to, also when `image` is a tile.
    Unwritten pixels (packed value 0) get zero motion (`unpack_unorm16`); the caller records how many.
    """
    if encoding not in MOTION_DECODERS:
        raise QwError(f"unknown motion encoding {encoding!r}; known: {', '.join(MOTION_DECODERS)}")
    if image.shape[-1] < MOTION_CHANNELS[encoding]:
        raise QwError(f"motion encoding {encoding!r} needs {MOTION_CHANNELS[encoding]} channels, "
                      f"got {image.shape[-1]}")
    return MOTION_DECODERS[encoding](image, full_size[0], full_size[1], mrq_scale)


def engine_version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of '4.27', '5.5.4-43139311+++UE5+Release-5.5' …; errors name the bad value."""
    parts = version.strip().split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise QwError(f"unreadable Unreal engine version {version!r}; expected e.g. '4.27' or '5.5'") from None


def mrq_uses_gaussian_jitter(version: str) -> bool:
    """Movie Render Queue's spatial-sample distribution: a windowed Gaussian up to 5.3, uniform from 5.5.

    Read from the engine sources (4.27 and 5.3 MoviePipelineRendering.cpp: Box-Muller with sigma 0.47·filter size;
    5.5 MoviePipelineUtils.cpp ``GetSubPixelJitter``: Halton − 0.5). Versions between them are refused upstream.
    """
    return engine_version_tuple(version) < (5, 5)


def mrq_sample_offsets(samples: int, version: str, filter_size: float = 1.0) -> list[tuple[float, float]]:
    """Sample offsets (contract units: pixels from the pixel centre, +x right, +y down) of MRQ's spatial samples.

    With one temporal sample, spatial sample ``k`` of every output frame uses Halton index ``k + 1`` (bases 2, 3):
    the pattern restarts each frame. MRQ shifts the projection by ``(2·sx/W, −2·sy/H)`` in NDC, which moves the
    image by ``s`` pixels (x right, y down), so each pixel samples the scene at ``centre − s``. At one sample MRQ
    does not jitter at all (``bAllowSpatialJitter``).
    """
    if samples == 1:
        return [(0.0, 0.0)]
    gaussian = mrq_uses_gaussian_jitter(version)
    sigma = MRQ_SIGMA_PER_FILTER_SIZE * filter_size
    window = np.exp(-0.5 * (0.5 / sigma) ** 2)  # keeps the Box-Muller radius inside ±0.5 px
    offsets = []
    for k in range(samples):
        if gaussian:
            u, v = halton(k + 1, 2), halton(k + 1, 3)
            r = sigma * np.sqrt(-2.0 * np.log((1.0 - u) * window + u))
            shift = (r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v))
        else:
            shift = halton_jitter(k, samples)  # Halton index k + 1, minus 0.5
        offsets.append((-float(shift[0]), -float(shift[1])))
    return offsets


def mrq_reference_filter(samples: int, version: str, filter_size: float = 1.0) -> str:
    """How qw's Unreal reference weights the scene: the equal-weight mean, taken by qw, of MRQ's samples at
    `mrq_sample_offsets` (MRQ's own accumulated frame is not used: its accumulator splats each sample bilinearly,
    a wider footprint than the samples' distribution)."""
    if samples == 1:
        return "none (1 sample at the pixel centre)"
    if mrq_uses_gaussian_jitter(version):
        sigma = MRQ_SIGMA_PER_FILTER_SIZE * filter_size
        return (f"gaussian(sigma={sigma:g}px, window=0.5px): {samples} Halton(2,3) samples through "
                f"Box-Muller, equal weights, mean taken by qw (r.TemporalAAFilterSize={filter_size:g})")
    return f"box(1px): {samples} Halton(2,3) samples in [-0.5, 0.5) px, equal weights, mean taken by qw"


def unreal_camera(pose: tuple[float, ...] | list[float], fov: float, width: int, height: int) -> dict[str, list]:
    """A `CameraFrame` (view and projection in OpenGL axes, metres) of an Unreal camera at `pose` = (x, y, z in cm,
    roll, pitch, yaw in degrees) with horizontal field of view `fov`, rendering width×height.

    The rotator's axes are the rows of Unreal's FRotationMatrix (forward X, right Y, up Z); OpenGL's camera looks
    down −z with +x right and +y up, so the view's rows are right, up and −forward. Unreal keeps the horizontal FOV
    (MaintainXFOV) and the aspect sets the vertical extent."""
    sp, cp = np.sin(np.radians(pose[4])), np.cos(np.radians(pose[4]))
    sy, cy = np.sin(np.radians(pose[5])), np.cos(np.radians(pose[5]))
    sr, cr = np.sin(np.radians(pose[3])), np.cos(np.radians(pose[3]))
    forward = np.array([cp * cy, cp * sy, sp])
    right = np.array([sr * sp * cy - cr * sy, sr * sp * sy + cr * cy, -sr * cp])
    up = np.array([-(cr * sp * cy + sr * sy), cy * sr - cr * sp * sy, cr * cp])
    eye = np.asarray(pose[:3], np.float64) / UNREAL_UNITS_PER_METRE
    rotation = np.stack([right, up, -forward])
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = rotation, -rotation @ eye
    near, far = 0.1, 1.0e5  # metres; only the x, y and w rows matter for reprojection
    focal = 1.0 / np.tan(np.radians(fov) / 2)
    projection = np.array([[focal, 0, 0, 0], [0, focal * width / height, 0, 0],
                           [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])
    return {"view": view.tolist(), "projection": projection.tolist()}


def depth_to_scene_units(depth: np.ndarray, units_per_scene_unit: float = UNREAL_UNITS_PER_METRE) -> np.ndarray:
    """Unreal world-unit depth (cm) → scene units (metres by default): divide by Unreal units per scene unit."""
    return (np.asarray(depth, np.float64) / units_per_scene_unit).astype(np.float32)


def color_to_half_range(color: np.ndarray) -> tuple[np.ndarray, int]:
    """Clamp linear HDR colour into float16's finite range (the contract stores half); returns (colour, #clamped)."""
    color = np.asarray(color, np.float32)
    over = color > FLOAT16_MAX
    return np.minimum(color, FLOAT16_MAX), int(over.sum())

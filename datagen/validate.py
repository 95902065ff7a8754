"""Check a capture directory against contract 1 (`qw-capture/1`) and report every violation found.

`validate_capture` never raises for a broken capture: it returns a `ShotReport` whose checks list the problems,
each naming the file and what is wrong, so one run reports everything instead of stopping at the first error.

Checks, in order (later ones need ``capture.json``):

==============  ===========================================================================================
capture.json    present, valid JSON, a format version this qw reads, schema-valid
files           every pass has exactly frames ``000000 … frame_count−1``: no missing, extra or stray files
checksums       each frame file's sha256 equals the one recorded in ``capture.json``
readable        each file decodes as EXR with the pass's channels and dtypes (half colour, float motion/depth)
resolution      every frame is ``width × height`` from ``capture.json``
finite          no NaN or Inf pixel in any pass
motion range    ``|m| < max(width, height)`` everywhere: larger motion cannot come from the previous frame
sequence        source frame numbers increase
depth           (unless ``depth_units`` says the source has none) no negative depth, some positive depth in
                every frame (a constant depth is left alone: a wall facing the camera has one)
aliasing        the input is not the reference: 0.1 % of some frame's pixels differ visibly (tone-mapped grey, > 1/255)
motion warp     warping the previous reference by the motion predicts the current reference better than no
                motion and than the reversed motion, see below
reprojection    (when ``cameras`` are recorded) motion agrees with a depth + camera reprojection, see below
==============  ===========================================================================================

These are the invariants a shot's own data can prove or refute; a check that cannot decide (no cameras, no depth,
a static or featureless shot) is reported SKIPPED with its reason, never as passed.

Motion-warp criterion: for each frame with valid history, the tone-mapped grey reference of the previous frame is
sampled (bilinearly, on a grid of about 65536 pixels, every pixel of a small frame) at ``p − m(p)``, at ``p`` and at ``p + m(p)``
(motion, none, reversed), over the pixels that move at least half a pixel. The frame passes when the motion's mean
error is at least 10 % below both others. It fails when the reversed motion's error is at most half the motion's
(frames swapped or in reverse order), or when the frame repeats its predecessor (no-motion error below 0.001) though
its motion moves it: on real renders (builtin scenes, 320×256) intact frames gave ratios min(none, reversed) /
motion of 1.7–7.6, and frames swapped, reversed or repeated 0.0–0.39. A frame that merely changes less than its
motion says is not failed (content animated in place, or a test scene that is not a render), nor one whose content
cannot tell the candidates apart: those decide nothing. The reference is unjittered, so jitter cannot pass for
motion.

Reprojection criterion: for each frame with valid history, `reprojected_motion` gives the motion every pixel would
have if the scene were static (evaluated on a grid of about 65536 pixels, every pixel of a small frame: a share of
agreeing pixels within ±0.4 %). A pixel *agrees* when ``|m_stored − m_expected| ≤ abs_tol + rel_tol·|m_expected|``
with ``abs_tol`` = 0.25 px at a 1920-pixel frame, scaled with the frame's larger side (velocity encodings are
fractions of the frame, so their error in pixels scales with it; a fixed 0.25 px would swallow the whole motion of
a low-resolution shot), and ``rel_tol`` = 2 % (depth sampled at the jittered position). Moving objects
legitimately disagree, so a frame passes when at least ``min_agree`` (default 50 %) of its pixels agree, i.e. when
its median pixel is static-consistent. A frame *tells the sign* when at least ``min_agree`` of its pixels move more
than the tolerance, so that reversed motion would fail; a shot none of whose frames does is reported SKIPPED (a
sign or scale error would pass it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qw.datagen.capture_format import (
    META_FILE,
    PASSES,
    CaptureMeta,
    checksum_problem,
    frame_path,
    load_meta,
    read_frame,
    shot_folders,
)
from qw.datagen.errors import CaptureError, QwError

log = logging.getLogger(__name__)

CHECKS = ("capture.json", "files", "checksums", "readable", "resolution", "finite", "motion range", "sequence",
          "depth", "aliasing", "motion warp", "reprojection")
TOLERANCE_FRAME_SIZE = 1920  # the frame size at which ReprojectionTolerance.abs_px is given
VISIBLE = 1 / 255  # a tone-mapped difference an 8-bit display shows
MIN_ALIASED = 1e-3  # share of pixels that must differ visibly from the reference in some frame
WARP_MIN_MOTION = 0.5  # px: smaller motion barely changes a bilinear warp of the reference
WARP_PASS = 1.1  # the motion's error must be 10 % below both others to confirm it
WARP_FAIL = 2.0  # and another's at most half the motion's to refute it: a real capture's motion is imperfect
REPEATED = 1e-3  # mean tone-mapped change below which a frame repeats its predecessor
WARP_MIN_PIXELS = 64
SAMPLES = 1 << 16  # points per frame the reprojection and meaning checks sample (`sample_stride`)


@dataclass(frozen=True)
class ReprojectionTolerance:
    abs_px: float = 0.25  # at a TOLERANCE_FRAME_SIZE frame; scaled with the frame's larger side
    rel: float = 0.02
    min_agree: float = 0.5

    def abs_for(self, width: int, height: int) -> float:
        """The absolute tolerance in pixels of a `width` × `height` frame."""
        return self.abs_px * max(width, height) / TOLERANCE_FRAME_SIZE


@dataclass
class Check:
    """The outcome of one check over a whole shot: failed when it has problems, skipped when it could not run."""

    name: str
    problems: list[str] = field(default_factory=list)
    skipped: str = ""  # why the check did not run
    note: str = ""  # a summary worth showing even when it passed

    @property
    def status(self) -> str:
        return "fail" if self.problems else ("skip" if self.skipped else "pass")


@dataclass
class ShotReport:
    shot_dir: Path
    meta: CaptureMeta | None
    checks: dict[str, Check]
    lowest_agreement: float | None = None  # reprojection: the worst frame's fraction of agreeing pixels

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks.values())

    @property
    def problems(self) -> list[str]:
        return [p for c in self.checks.values() for p in c.problems]

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks.values() if c.status == "fail"]

    @property
    def skipped_checks(self) -> list[Check]:
        return [c for c in self.checks.values() if c.status == "skip"]

    @property
    def result(self) -> str:
        """PASS, FAIL, or SKIPPED: passed, but some checks could not run."""
        return "FAIL" if not self.ok else ("SKIPPED" if self.skipped_checks else "PASS")

    @property
    def verdict(self) -> str:
        """FAIL with the failed checks; else SKIPPED with the checks that did not run; PASS only when all ran."""
        if not self.ok:
            return "FAIL: " + ", ".join(self.failed_checks)
        skipped = self.skipped_checks
        return "SKIPPED " + ", ".join(c.name for c in skipped) + " (others pass)" if skipped else "PASS"

    def as_dict(self) -> dict[str, Any]:
        """The shot's result as plain data, for `qw datagen validate --json`."""
        meta = self.meta
        return {"shot": str(self.shot_dir), "result": self.result,
                "frames": meta.frame_count if meta else None, "width": meta.width if meta else None,
                "height": meta.height if meta else None, "lowest_agreement": self.lowest_agreement,
                "checks": {c.name: {"status": c.status, "problems": c.problems, "skipped": c.skipped or None,
                                    "note": c.note or None} for c in self.checks.values()}}


# ----------------------------------------------------------------------------------------------- reprojection


def _matrices(cam: Any) -> tuple[np.ndarray, np.ndarray]:
    """(view, projection) as float64 4×4 from a `CameraFrame`, a mapping with those keys, or a (view, proj) pair."""
    if isinstance(cam, Mapping):
        view, proj = cam["view"], cam["projection"]
    elif hasattr(cam, "view"):
        view, proj = cam.view, cam.projection
    else:
        view, proj = cam
    return np.asarray(view, np.float64).reshape(4, 4), np.asarray(proj, np.float64).reshape(4, 4)


def _pixel_ndc(width: int, height: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """NDC of the centres of every `stride`-th pixel as a (1, W) row of x and an (H, 1) column of y."""
    nx = 2.0 * (np.arange(0, width, stride) + 0.5) / width - 1.0
    ny = 1.0 - 2.0 * (np.arange(0, height, stride) + 0.5) / height
    return nx[None, :], ny[:, None]


def _camera_xy(z: np.ndarray, proj: np.ndarray, width: int, height: int,
               stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space x, y (H, W) of the points seen through each pixel centre at camera-space depth `z`.

    For NDC ``n``, clip = P·(x, y, z, 1) gives two linear equations in x and y: ``(P₀ − n_x P₃)·X = 0`` and
    ``(P₁ − n_y P₃)·X = 0``; solved per pixel by Cramer's rule, which holds for any OpenGL-style perspective or
    orthographic projection, off-centre ones included. The z-free coefficients depend only on the row or column.
    """
    nx, ny = _pixel_ndc(width, height, stride)
    a, b = proj[0, 0] - nx * proj[3, 0], proj[0, 1] - nx * proj[3, 1]  # (1, W)
    c, d = proj[1, 0] - ny * proj[3, 0], proj[1, 1] - ny * proj[3, 1]  # (H, 1)
    e = -((proj[0, 2] - nx * proj[3, 2]) * z + (proj[0, 3] - nx * proj[3, 3]))
    f = -((proj[1, 2] - ny * proj[3, 2]) * z + (proj[1, 3] - ny * proj[3, 3]))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_det = 1.0 / (a * d - b * c)
        return (e * d - b * f) * inv_det, (a * f - e * c) * inv_det


def reprojected_motion(depth: np.ndarray, cam_prev: Any, cam_cur: Any, width: int, height: int,
                       stride: int = 1) -> np.ndarray:
    """Motion (H, W, 2) in pixels that a static scene would show, from current depth and both cameras.

    Each pixel centre is unprojected with the current camera at its planar depth, projected with the previous
    camera, and the motion is ``p − p_prev`` (contract 1: +x right, +y down, current minus previous). Cameras are
    `CameraFrame`s (or mappings / (view, projection) pairs) in the conventions of `qw.datagen.capture_format`.
    Pixels without a valid answer (depth ≤ 0 or not finite, behind the previous camera) are NaN. With `stride`,
    `depth` is ``depth[::stride, ::stride]`` of the frame and the motion is that of those pixels.
    """
    depth = np.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.shape != (-(-height // stride), -(-width // stride)):
        raise ValueError(f"depth has shape {depth.shape}, expected ({height}, {width}) at stride {stride}")
    view_prev, proj_prev = _matrices(cam_prev)
    view_cur, proj_cur = _matrices(cam_cur)
    m = proj_prev @ view_prev @ np.linalg.inv(view_cur)  # current camera space → previous clip space
    z = -depth.astype(np.float64)
    x, y = _camera_xy(z, proj_cur, width, height, stride)
    nx, ny = _pixel_ndc(width, height, stride)
    with np.errstate(divide="ignore", invalid="ignore"):  # invalid depths give inf/NaN here, masked below
        clip_x, clip_y, w = (m[k, 0] * x + m[k, 1] * y + m[k, 2] * z + m[k, 3] for k in (0, 1, 3))
        # p − p_prev in pixels = (n − n_prev) · (W/2, −H/2)
        motion = np.stack([(nx - clip_x / w) * (0.5 * width), (clip_y / w - ny) * (0.5 * height)], axis=-1)
    motion[~(np.isfinite(depth) & (depth > 0) & (w > 1e-12))] = np.nan
    return motion


def reprojection_agreement(motion: np.ndarray, expected: np.ndarray, tol: ReprojectionTolerance = ReprojectionTolerance(),
                           frame: tuple[int, int] | None = None) -> tuple[float, float, int, float]:
    """(fraction of pixels that agree, median error in px, pixels compared, fraction of pixels whose expected motion
    a sign flip would move outside the tolerance); NaN pixels on either side are left out. `frame`: the width and
    height of the frame the pixels come from (default: the arrays' own)."""
    err = np.hypot(motion[..., 0] - expected[..., 0], motion[..., 1] - expected[..., 1])
    valid = np.isfinite(err)
    pixels = int(valid.sum())
    if not pixels:
        return float("nan"), float("nan"), 0, 0.0
    length = np.hypot(expected[..., 0], expected[..., 1])
    with np.errstate(invalid="ignore"):
        allowed = tol.abs_for(*(frame or (motion.shape[1], motion.shape[0]))) + tol.rel * length
        agree, signed = err <= allowed, 2 * length > allowed  # a flip is off by 2|m|
    return float(agree.sum() / pixels), float(np.median(err[valid])), pixels, float(signed.sum() / pixels)


# ----------------------------------------------------------------------------------------------- meaning


def sample_stride(height: int, width: int) -> int:
    """Stride of the pixel grid the reprojection and meaning checks sample: about SAMPLES points per frame at any
    resolution (every pixel of a small frame), so their cost does not grow with the frame."""
    return max(1, math.isqrt(height * width // SAMPLES))


def _tone_map(linear: np.ndarray) -> np.ndarray:
    """x / (1 + x), negatives as 0: edges count, highlights do not dominate."""
    g = np.maximum(linear, 0)
    return g / (1 + g)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Tone-mapped grey (channel mean) of linear RGB (..., 3), float32."""
    return _tone_map((rgb[..., 0].astype(np.float32) + rgb[..., 1] + rgb[..., 2]) / 3)


def _bilinear_grey(rgb: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tone-mapped grey of `rgb` (H, W, 3) interpolated bilinearly at continuous pixel coordinates (pixel centres at
    +0.5; callers keep them inside the frame). Only the four neighbours of each point are read."""
    height, width = rgb.shape[:2]
    u, v = x - 0.5, y - 0.5
    x0 = np.clip(np.floor(u).astype(np.int64), 0, width - 2)
    y0 = np.clip(np.floor(v).astype(np.int64), 0, height - 2)
    fx, fy = u - x0, v - y0
    flat, i = rgb.reshape(-1, 3), y0 * width + x0

    def linear_grey(k: np.ndarray) -> np.ndarray:  # np.take: ~7x faster than fancy indexing of rows
        values = np.take(flat, k, axis=0).astype(np.float32)
        return (values[:, 0] + values[:, 1] + values[:, 2]) / 3

    a, b, c, d = (linear_grey(k) for k in (i, i + 1, i + width, i + width + 1))
    return _tone_map((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy)


def warp_errors(prev_reference: np.ndarray, reference: np.ndarray, motion: np.ndarray) -> tuple[float, float, float,
                                                                                                   int]:
    """Mean tone-mapped error of predicting `reference` from `prev_reference` warped by the motion, by no motion
    and by the reversed motion: (motion, none, reversed, pixels compared), on the `sample_stride` grid. Pixels
    moving less than WARP_MIN_MOTION or whose source (either way) falls outside the frame are left out."""
    height, width = reference.shape[:2]
    if min(height, width) < 2:
        return float("nan"), float("nan"), float("nan"), 0
    s = sample_stride(height, width)
    cur, m = _grey(reference[::s, ::s]), motion[::s, ::s].astype(np.float32)
    ys, xs = np.mgrid[0:height:s, 0:width:s].astype(np.float32) + 0.5
    inside = np.ones(cur.shape, bool)
    for sign in (-1, 1):
        sx, sy = xs + sign * m[..., 0], ys + sign * m[..., 1]
        inside &= (sx >= 0.5) & (sx <= width - 0.5) & (sy >= 0.5) & (sy <= height - 0.5)
    keep = inside & (np.hypot(m[..., 0], m[..., 1]) >= WARP_MIN_MOTION)
    if keep.sum() < WARP_MIN_PIXELS:
        return float("nan"), float("nan"), float("nan"), int(keep.sum())
    xs, ys, mx, my, target = xs[keep], ys[keep], m[keep, 0], m[keep, 1], cur[keep]
    moved, reversed_ = (float(np.abs(target - _bilinear_grey(prev_reference, xs - sign * mx, ys - sign * my)).mean())
                        for sign in (1, -1))
    still = float(np.abs(target - _grey(prev_reference[::s, ::s])[keep]).mean())
    return moved, still, reversed_, len(target)


def aliased_share(color: np.ndarray, reference: np.ndarray) -> float:
    """Share of the `sample_stride` grid's pixels where the input's tone-mapped grey differs visibly from the
    reference's."""
    s = sample_stride(*color.shape[:2])
    return float((np.abs(_grey(color[::s, ::s]) - _grey(reference[::s, ::s])) > VISIBLE).mean())


def _warp_verdict(errors: tuple[float, float, float, int]) -> str:
    """'pass', 'fail' or '' (undecided) for one frame's warp errors (motion, none, reversed, pixels)."""
    motion, *others, pixels = errors
    if pixels < WARP_MIN_PIXELS:
        return ""
    still, reversed_ = others
    if motion * WARP_PASS <= min(others):
        return "pass"
    refuted = reversed_ * WARP_FAIL <= motion or (still < REPEATED and still * WARP_FAIL <= motion)
    return "fail" if refuted else ""


# ----------------------------------------------------------------------------------------------- per-frame checks


@dataclass
class _FrameResult:
    problems: dict[str, list[str]] = field(default_factory=dict)
    agreement: tuple[float, float, int, float] | None = None  # `reprojection_agreement`, when reprojected
    warp: tuple[float, float, float, int] | None = None  # `warp_errors`, when the frame has history
    aliased: float | None = None  # share of pixels where the input differs visibly from the reference
    depth_range: tuple[float, float] | None = None  # finite min and max of the depth

    def add(self, check: str, message: str) -> None:
        self.problems.setdefault(check, []).append(message)


def _first_pixel(mask: np.ndarray) -> str:
    y, x = np.argwhere(mask)[0][:2]
    return f"first at x={x}, y={y}"


def _check_pixels(result: _FrameResult, path: Path, image: np.ndarray, meta: CaptureMeta, pass_name: str) -> bool:
    """Resolution, finiteness and motion range of one decoded frame; True when its pixels are usable."""
    if image.shape[:2] != (meta.height, meta.width):
        result.add("resolution", f"{path}: resolution {image.shape[1]}x{image.shape[0]}, "
                                 f"capture.json says {meta.width}x{meta.height}")
        return False
    if not np.isfinite(image).all():
        for bad, what in ((np.isnan(image), "NaN"), (np.isinf(image), "Inf")):
            if bad.any():
                pixels = np.any(bad, axis=-1)
                result.add("finite", f"{path}: {int(pixels.sum())} pixel(s) with {what} values, "
                                     f"{_first_pixel(pixels)}")
        return False
    if pass_name == "motion":
        limit = max(meta.width, meta.height)
        magnitude = np.hypot(image[..., 0], image[..., 1])
        if magnitude.max() >= limit:
            result.add("motion range", f"{path}: implausible motion of {magnitude.max():.1f} px "
                                       f"({_first_pixel(magnitude >= limit)}); limit is max(width, height) = {limit}")
            return False
    return True


def _check_frame(shot: Path, meta: CaptureMeta, index: int, present: set[str],
                 tol: ReprojectionTolerance) -> _FrameResult:
    result = _FrameResult()
    images: dict[str, np.ndarray] = {}
    for pass_name in PASSES:
        path = frame_path(shot, pass_name, index)
        rel = path.relative_to(shot).as_posix()
        if rel not in present:
            continue  # reported by the files check
        try:
            problem = checksum_problem(path, meta.checksums.get(rel))
            if problem:
                result.add("checksums", problem)
            image = read_frame(shot, pass_name, index)
        except OSError as exc:  # unreadable, a link loop: reported, and the other frames and shots still checked
            result.add("readable", f"{path}: cannot read ({exc.strerror or exc})")
            continue
        except CaptureError as exc:
            result.add("readable", str(exc))
            continue
        if _check_pixels(result, path, image, meta, pass_name):
            images[pass_name] = image
    _check_meaning(result, shot, meta, index, images)
    if meta.cameras is not None and index > 0 and meta.history_valid()[index] and {"depth", "motion"} <= images.keys():
        s = sample_stride(meta.height, meta.width)  # the agreement of ~65536 pixels: a share within ±0.4 %
        expected = reprojected_motion(images["depth"][::s, ::s], meta.cameras[index - 1], meta.cameras[index],
                                      meta.width, meta.height, s)
        result.agreement = reprojection_agreement(images["motion"][::s, ::s], expected, tol, (meta.width, meta.height))
        fraction, median, pixels, _ = result.agreement
        if pixels and fraction < tol.min_agree:
            result.add("reprojection", f"{frame_path(shot, 'motion', index)}: only {fraction:.0%} of pixels agree "
                                       f"with the depth + camera reprojection (median error {median:.3g} px, "
                                       f"need {tol.min_agree:.0%} within {tol.abs_for(meta.width, meta.height):.3g} "
                                       f"px + {tol.rel:.0%})")
    return result


def has_depth(meta: CaptureMeta) -> bool:
    """False when the capture says its source had no depth (importers then store zeros)."""
    return not meta.depth_units.startswith("none")


def _check_meaning(result: _FrameResult, shot: Path, meta: CaptureMeta, index: int,
                   images: dict[str, np.ndarray]) -> None:
    """Per-frame evidence for the depth, aliasing and motion-warp checks (decided per shot, `_meaning_checks`)."""
    if "depth" in images and has_depth(meta):
        depth = images["depth"][..., 0]
        path = frame_path(shot, "depth", index)
        if (depth < 0).any():
            result.add("depth", f"{path}: {int((depth < 0).sum())} pixel(s) with negative depth, "
                                f"{_first_pixel(depth < 0)}; planar depth of a visible surface is positive")
        if not (depth > 0).any():
            result.add("depth", f"{path}: no pixel has a positive depth (all {float(depth.max()):g})")
        finite = depth[np.isfinite(depth)]
        result.depth_range = (float(finite.min()), float(finite.max())) if finite.size else None
    if {"color", "reference"} <= images.keys():
        result.aliased = aliased_share(images["color"], images["reference"])
    if index > 0 and meta.history_valid()[index] and {"reference", "motion"} <= images.keys():
        try:
            previous = read_frame(shot, "reference", index - 1)
        except (OSError, CaptureError):
            return  # reported by that frame's own checks
        if previous.shape == images["reference"].shape and np.isfinite(previous).all():
            result.warp = warp_errors(previous, images["reference"], images["motion"])
            if _warp_verdict(result.warp) == "fail":
                moved, still, reversed_, pixels = result.warp
                result.add("motion warp", f"{frame_path(shot, 'motion', index)}: the previous reference warped by "
                                          f"this motion predicts the frame worse ({moved:.4f}) than "
                                          f"{'no motion' if still <= reversed_ else 'the reversed motion'} "
                                          f"({min(still, reversed_):.4f}; mean tone-mapped error over {pixels} "
                                          f"moving pixels): frames out of order, or motion of other frames")


# ----------------------------------------------------------------------------------------------- whole shot


def _check_files(shot: Path, meta: CaptureMeta) -> tuple[list[str], set[str]]:
    """Problems with the set of files (missing/extra/stray) and the relative paths of frame files present."""
    problems, present = [], set()
    expected = {f"{i:06d}.exr" for i in range(meta.frame_count)}
    for pass_name in PASSES:
        folder = shot / pass_name
        if not folder.is_dir():
            problems.append(f"{folder}: missing pass folder")
            continue
        try:
            names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}  # hidden: temp files, locks
        except OSError as exc:
            problems.append(f"{folder}: cannot list ({exc.strerror or exc})")
            continue
        present |= {f"{pass_name}/{n}" for n in names & expected}
        problems += [f"{folder / n}: missing frame" for n in sorted(expected - names)]
        problems += [f"{folder / n}: unexpected file (capture.json has frame_count {meta.frame_count})"
                     for n in sorted(names - expected)]
    return problems, present


def _reprojection_summary(meta: CaptureMeta, frames: list[_FrameResult], tol: ReprojectionTolerance,
                          check: Check) -> float | None:
    """Fill the reprojection check's note (or why it was skipped); returns the lowest agreeing fraction."""
    if meta.cameras is None:
        check.skipped = "capture.json has no camera matrices"
        return None
    stats = [(i, r.agreement) for i, r in enumerate(frames) if r.agreement and r.agreement[2]]
    if not stats:
        check.skipped = "no frame with valid history, depth and motion to compare"
        return None
    worst, (fraction, median, _, _) = min(stats, key=lambda s: s[1][0])
    signed = sum(a[3] >= tol.min_agree for _, a in stats)
    if not signed and not check.problems:
        check.skipped = f"the camera moves within the tolerance ({tol.abs_for(meta.width, meta.height):.3g} px " \
                        f"+ {tol.rel:.0%}) in every frame: reversed or scaled motion would pass too"
        return None
    check.note = f"{len(stats)} frames compared, {signed} telling the sign; lowest agreement {fraction:.1%} " \
                 f"(frame {worst}, median error {median:.3g} px)"
    return fraction


def _sequence_problems(shot: Path, meta: CaptureMeta) -> list[str]:
    """What capture.json itself says wrong about time. (Jitter offsets are not bounded: Movie Render Queue's
    Gaussian filter places samples beyond half a pixel.)"""
    where, problems = shot / META_FILE, []
    frames = meta.source_frames
    back = next((k for k in range(1, len(frames)) if frames[k] <= frames[k - 1]), None)
    if back is not None:
        problems.append(f"{where}: source_frames do not increase (stored frame {back} is source frame "
                        f"{frames[back]}, after {frames[back - 1]}): frames out of temporal order")
    return problems


def _depth_summary(meta: CaptureMeta, frames: list[_FrameResult], check: Check) -> None:
    if not has_depth(meta):
        check.skipped = f"capture.json says the source has no depth (depth_units {meta.depth_units!r})"
        return
    ranges = [r.depth_range for r in frames if r.depth_range]
    if ranges:
        check.note = f"depth from {min(r[0] for r in ranges):g} to {max(r[1] for r in ranges):g} {meta.depth_units}"


def _aliasing_summary(shot: Path, frames: list[_FrameResult], check: Check) -> None:
    shares = [r.aliased for r in frames if r.aliased is not None]
    if not shares:
        check.skipped = "no frame with both color and reference readable"
    elif max(shares) < MIN_ALIASED:
        check.problems.append(f"{shot / 'color'}: the input is the reference (at most {max(shares):.2%} of a "
                              f"frame's pixels differ visibly from it, need {MIN_ALIASED:.1%}): no aliasing to learn")
    else:
        check.note = f"up to {max(shares):.1%} of a frame's pixels differ visibly from the reference"


def _warp_summary(frames: list[_FrameResult], check: Check) -> None:
    verdicts = [_warp_verdict(r.warp) for r in frames if r.warp]
    decided = sum(v in ("pass", "fail") for v in verdicts)
    if not decided:
        check.skipped = f"no frame where the reference tells the motion from none and from its reverse (static " \
                        f"or featureless frames, or motion under {WARP_MIN_MOTION} px)"
    else:
        check.note = f"{verdicts.count('pass')} of {len(verdicts)} frames with history confirm the motion, " \
                     f"{len(verdicts) - decided} undecided"


def validate_capture(shot_dir: str | os.PathLike, tol: ReprojectionTolerance = ReprojectionTolerance(),
                     workers: int | None = None, progress: bool = True) -> ShotReport:
    """Run every check on one shot directory; contract violations become problems in the report, never raise."""
    shot = Path(shot_dir)
    checks = {name: Check(name) for name in CHECKS}
    try:
        meta = load_meta(shot)
    except CaptureError as exc:
        checks["capture.json"].problems.append(str(exc))
        for name in CHECKS[1:]:
            checks[name].skipped = "needs a valid capture.json"
        return ShotReport(shot, None, checks)

    checks["files"].problems, present = _check_files(shot, meta)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # EXR decode, hashing and numpy release the GIL for large buffers
        frames = list(tqdm(pool.map(lambda i: _check_frame(shot, meta, i, present, tol), range(meta.frame_count)),
                           total=meta.frame_count, desc=f"validate {shot.name}", unit="frame", leave=False,
                           disable=None if progress else True))
    for result in frames:
        for name, problems in result.problems.items():
            checks[name].problems += problems
    checks["sequence"].problems += _sequence_problems(shot, meta)
    _depth_summary(meta, frames, checks["depth"])
    _aliasing_summary(shot, frames, checks["aliasing"])
    _warp_summary(frames, checks["motion warp"])
    lowest = _reprojection_summary(meta, frames, tol, checks["reprojection"])
    return ShotReport(shot, meta, checks, lowest)


# ----------------------------------------------------------------------------------------------- CLI entry


def _summary_line(report: ShotReport, width: int) -> str:
    meta = report.meta
    frames = str(meta.frame_count) if meta else "-"
    size = f"{meta.width}x{meta.height}" if meta else "-"
    reproj = "-" if report.lowest_agreement is None else f"{report.lowest_agreement:.1%}"
    return f"{str(report.shot_dir):<{width}}  {frames:>6}  {size:>10}  {reproj:>8}  {report.verdict}"


def _shots_under(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The shot folders at or below `paths`, each once, and the folders that could not be read."""
    shots: dict[Path, Path] = {}  # resolved → as given: a shot named twice (itself, via its root) is checked once
    unreadable: list[str] = []
    for path in paths:
        found = shot_folders(path, lambda exc: unreadable.append(f"{exc.filename}: cannot read ({exc.strerror})"))
        if not found:
            raise QwError(f"{path}: no capture here (no {META_FILE} or pass folders {list(PASSES)} at or below it)")
        for shot in found:
            shots.setdefault(shot.resolve(), shot)
    return list(shots.values()), unreadable


def _echo_report(report: ShotReport, width: int, max_problems: int, echo: Callable[[str], Any]) -> None:
    echo(_summary_line(report, width))
    problems = report.problems
    for problem in problems[:max_problems]:
        echo(f"    {problem}")
    if len(problems) > max_problems:
        echo(f"    … and {len(problems) - max_problems} more problems")
    for check in report.skipped_checks if report.ok else ():
        echo(f"    SKIPPED {check.name}: {check.skipped}")


def validate_paths(paths: Iterable[str | os.PathLike], tol: ReprojectionTolerance = ReprojectionTolerance(),
                   max_problems: int = 20, echo: Callable[[str], Any] = print, as_json: bool = False,
                   progress: bool = True) -> bool:
    """`qw datagen validate`: validate every shot under `paths`, print a summary table (or, with `as_json`, one
    JSON document with every shot's result and all its problems); True when all pass."""
    shots, unreadable = _shots_under(paths)
    width = max(len(str(s)) for s in shots)
    if not as_json:
        echo(f"{'shot':<{width}}  {'frames':>6}  {'size':>10}  {'reproj':>8}  result")
    reports = []
    for shot in shots:  # one line as each shot finishes: long runs show results as they go
        report = validate_capture(shot, tol, progress=progress)
        reports.append(report)
        if not as_json:
            _echo_report(report, width, max_problems, echo)
        for check in report.checks.values():
            if check.note:
                log.info("%s: %s: %s", report.shot_dir, check.name, check.note)
    failed = sum(not r.ok for r in reports)
    partly = sum(r.ok and bool(r.skipped_checks) for r in reports)
    ok = failed == 0 and not unreadable
    if as_json:
        echo(json.dumps({"shots": [r.as_dict() for r in reports], "unreadable": unreadable,
                         "passed": len(reports) - failed - partly, "failed": failed, "skipped": partly, "ok": ok},
                        indent=2))
        return ok
    for problem in unreadable:
        echo(f"FAIL: {problem}; shots below it were not checked")
    echo(f"{len(reports)} shot(s): {len(reports) - failed - partly} passed, {failed} failed"
         + (f", {partly} with checks SKIPPED (the others pass)" if partly else "")
         + (f"; {len(unreadable)} folder(s) unreadable" if unreadable else ""))
    return ok

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
reprojection    (when ``cameras`` are recorded) motion agrees with a depth + camera reprojection, see below
==============  ===========================================================================================

Reprojection criterion: for each frame with valid history, `reprojected_motion` gives the motion every pixel would
have if the scene were static. A pixel *agrees* when ``|m_stored − m_expected| ≤ abs_tol + rel_tol·|m_expected|``
(defaults 0.25 px and 2 %: room for 16-bit velocity encodings and depth sampled at the jittered position). Moving
objects legitimately disagree, so a frame passes when at least ``min_agree`` (default 50 %) of its pixels agree,
i.e. when its median pixel is static-consistent. A sign flip, a wrong scale or a one-frame offset fails nearly all
pixels of any frame with camera motion.
"""

from __future__ import annotations

import logging
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
    frame_path,
    load_meta,
    read_frame,
    sha256_file,
    shot_folders,
)
from qw.datagen.errors import CaptureError, QwError

log = logging.getLogger(__name__)

CHECKS = ("capture.json", "files", "checksums", "readable", "resolution", "finite", "motion range", "reprojection")


@dataclass(frozen=True)
class ReprojectionTolerance:
    abs_px: float = 0.25
    rel: float = 0.02
    min_agree: float = 0.5


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


def _pixel_ndc(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC of the pixel centres as a (1, W) row of x and an (H, 1) column of y, for broadcasting."""
    nx = 2.0 * (np.arange(width) + 0.5) / width - 1.0
    ny = 1.0 - 2.0 * (np.arange(height) + 0.5) / height
    return nx[None, :], ny[:, None]


def _camera_xy(z: np.ndarray, proj: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space x, y (H, W) of the points seen through each pixel centre at camera-space depth `z`.

    For NDC ``n``, clip = P·(x, y, z, 1) gives two linear equations in x and y: ``(P₀ − n_x P₃)·X = 0`` and
    ``(P₁ − n_y P₃)·X = 0``; solved per pixel by Cramer's rule, which holds for any OpenGL-style perspective or
    orthographic projection, off-centre ones included. The z-free coefficients depend only on the row or column.
    """
    nx, ny = _pixel_ndc(width, height)
    a, b = proj[0, 0] - nx * proj[3, 0], proj[0, 1] - nx * proj[3, 1]  # (1, W)
    c, d = proj[1, 0] - ny * proj[3, 0], proj[1, 1] - ny * proj[3, 1]  # (H, 1)
    e = -((proj[0, 2] - nx * proj[3, 2]) * z + (proj[0, 3] - nx * proj[3, 3]))
    f = -((proj[1, 2] - ny * proj[3, 2]) * z + (proj[1, 3] - ny * proj[3, 3]))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_det = 1.0 / (a * d - b * c)
        return (e * d - b * f) * inv_det, (a * f - e * c) * inv_det


def reprojected_motion(depth: np.ndarray, cam_prev: Any, cam_cur: Any, width: int, height: int) -> np.ndarray:
    """Motion (H, W, 2) in pixels that a static scene would show, from current depth and both cameras.

    Each pixel centre is unprojected with the current camera at its planar depth, projected with the previous
    camera, and the motion is ``p − p_prev`` (contract 1: +x right, +y down, current minus previous). Cameras are
    `CameraFrame`s (or mappings / (view, projection) pairs) in the conventions of `qw.datagen.capture_format`.
    Pixels without a valid answer (depth ≤ 0 or not finite, behind the previous camera) are NaN.
    """
    depth = np.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.shape != (height, width):
        raise ValueError(f"depth has shape {depth.shape}, expected ({height}, {width})")
    view_prev, proj_prev = _matrices(cam_prev)
    view_cur, proj_cur = _matrices(cam_cur)
    m = proj_prev @ view_prev @ np.linalg.inv(view_cur)  # current camera space → previous clip space
    z = -depth.astype(np.float64)
    x, y = _camera_xy(z, proj_cur, width, height)
    nx, ny = _pixel_ndc(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):  # invalid depths give inf/NaN here, masked below
        clip_x, clip_y, w = (m[k, 0] * x + m[k, 1] * y + m[k, 2] * z + m[k, 3] for k in (0, 1, 3))
        # p − p_prev in pixels = (n − n_prev) · (W/2, −H/2)
        motion = np.stack([(nx - clip_x / w) * (0.5 * width), (clip_y / w - ny) * (0.5 * height)], axis=-1)
    motion[~(np.isfinite(depth) & (depth > 0) & (w > 1e-12))] = np.nan
    return motion


def reprojection_agreement(motion: np.ndarray, expected: np.ndarray,
                           tol: ReprojectionTolerance = ReprojectionTolerance()) -> tuple[float, float, int]:
    """(fraction of pixels that agree, median error in px, pixels compared); NaN pixels on either side are left out."""
    err = np.hypot(motion[..., 0] - expected[..., 0], motion[..., 1] - expected[..., 1])
    valid = np.isfinite(err)
    pixels = int(valid.sum())
    if not pixels:
        return float("nan"), float("nan"), 0
    with np.errstate(invalid="ignore"):
        agree = err <= tol.abs_px + tol.rel * np.hypot(expected[..., 0], expected[..., 1])
    return float(agree.sum() / pixels), float(np.median(err[valid])), pixels


# ----------------------------------------------------------------------------------------------- per-frame checks


@dataclass
class _FrameResult:
    problems: dict[str, list[str]] = field(default_factory=dict)
    agreement: tuple[float, float, int] | None = None  # (fraction, median error, pixels) when reprojected

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
        expected_sum = meta.checksums.get(rel)
        try:
            if expected_sum is None:
                result.add("checksums", f"{path}: no checksum recorded in {META_FILE}")
            elif sha256_file(path) != expected_sum:
                result.add("checksums", f"{path}: sha256 does not match {META_FILE} (file changed after capture)")
            image = read_frame(shot, pass_name, index)
        except OSError as exc:  # unreadable, a link loop: reported, and the other frames and shots still checked
            result.add("readable", f"{path}: cannot read ({exc.strerror or exc})")
            continue
        except CaptureError as exc:
            result.add("readable", str(exc))
            continue
        if _check_pixels(result, path, image, meta, pass_name):
            images[pass_name] = image
    if meta.cameras is not None and index > 0 and meta.history_valid()[index] and {"depth", "motion"} <= images.keys():
        expected = reprojected_motion(images["depth"], meta.cameras[index - 1], meta.cameras[index],
                                      meta.width, meta.height)
        result.agreement = reprojection_agreement(images["motion"], expected, tol)
        fraction, median, pixels = result.agreement
        if pixels and fraction < tol.min_agree:
            result.add("reprojection", f"{frame_path(shot, 'motion', index)}: only {fraction:.0%} of pixels agree "
                                       f"with the depth + camera reprojection (median error {median:.3g} px, "
                                       f"need {tol.min_agree:.0%} within {tol.abs_px} px + {tol.rel:.0%})")
    return result


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


def _reprojection_summary(meta: CaptureMeta, frames: list[_FrameResult], check: Check) -> float | None:
    """Fill the reprojection check's note (or why it was skipped); returns the lowest agreeing fraction."""
    if meta.cameras is None:
        check.skipped = "capture.json has no camera matrices"
        return None
    stats = [(i, r.agreement) for i, r in enumerate(frames) if r.agreement and r.agreement[2]]
    if not stats:
        check.skipped = "no frame with valid history, depth and motion to compare"
        return None
    worst, (fraction, median, _) = min(stats, key=lambda s: s[1][0])
    check.note = f"{len(stats)} frames compared; lowest agreement {fraction:.1%} (frame {worst}, median error " \
                 f"{median:.3g} px)"
    return fraction


def validate_capture(shot_dir: str | os.PathLike, tol: ReprojectionTolerance = ReprojectionTolerance(),
                     workers: int | None = None) -> ShotReport:
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
                           disable=None))
    for result in frames:
        for name, problems in result.problems.items():
            checks[name].problems += problems
    lowest = _reprojection_summary(meta, frames, checks["reprojection"])
    return ShotReport(shot, meta, checks, lowest)


# ----------------------------------------------------------------------------------------------- CLI entry


def _summary_line(report: ShotReport, width: int) -> str:
    meta = report.meta
    frames = str(meta.frame_count) if meta else "-"
    size = f"{meta.width}x{meta.height}" if meta else "-"
    reproj = "-" if report.lowest_agreement is None else f"{report.lowest_agreement:.1%}"
    verdict = "PASS" if report.ok else "FAIL: " + ", ".join(report.failed_checks)
    return f"{str(report.shot_dir):<{width}}  {frames:>6}  {size:>10}  {reproj:>8}  {verdict}"


def validate_paths(paths: Iterable[str | os.PathLike], tol: ReprojectionTolerance = ReprojectionTolerance(),
                   max_problems: int = 20, echo: Callable[[str], Any] = print) -> bool:
    """`qw datagen validate`: validate every shot under `paths`, print a summary table; True when all pass."""
    shots: dict[Path, Path] = {}  # resolved → as given: a shot named twice (itself, via its root) is checked once
    unreadable: list[str] = []
    for path in paths:
        found = shot_folders(path, lambda exc: unreadable.append(f"{exc.filename}: cannot read ({exc.strerror})"))
        if not found:
            raise QwError(f"{path}: no capture here (no {META_FILE} or pass folders {list(PASSES)} at or below it)")
        for shot in found:
            shots.setdefault(shot.resolve(), shot)
    width = max(len(str(s)) for s in shots.values())
    echo(f"{'shot':<{width}}  {'frames':>6}  {'size':>10}  {'reproj':>8}  result")
    reports = []
    for shot in shots.values():  # one line as each shot finishes: long runs show results as they go
        report = validate_capture(shot, tol)
        reports.append(report)
        echo(_summary_line(report, width))
        problems = report.problems
        for problem in problems[:max_problems]:
            echo(f"    {problem}")
        if len(problems) > max_problems:
            echo(f"    … and {len(problems) - max_problems} more problems")
        for check in report.checks.values():
            if check.note or check.skipped:
                log.info("%s: %s: %s", report.shot_dir, check.name, check.note or f"skipped ({check.skipped})")
    for problem in unreadable:
        echo(f"FAIL: {problem}; shots below it were not checked")
    failed = sum(not r.ok for r in reports)
    echo(f"{len(reports)} shot(s): {len(reports) - failed} passed, {failed} failed"
         + (f"; {len(unreadable)} folder(s) unreadable" if unreadable else ""))
    return failed == 0 and not unreadable

"""Importers: existing Unreal dumps → one capture (contract 1), written through datagen.capture_format.

Layouts
-------
``intel-sample``  the public QW-Net sample's data: ``noaa/`` (aliased), ``ssaa/`` (reference) and ``vel/`` (or
                  ``velocity/``) with matching names ``<Map>_PreTonemapHDRColor_####.exr``. Velocity uses the
                  ``sign-bits`` encoding. Files whose height is a multiple T>1 of their width are vertically stacked
                  T-frame blocks: they are split, each block starts a camera cut, and ``full_size`` (the frame the
                  block was cut from) must be given because NDC velocity is relative to the full frame.
                  Per the sample's ``decode_sample``, pixel (0,0) of each noaa frame holds that frame's sample offset
                  in the same sign-bit code; it is recorded as the jitter. [U] its unit (taken as pixels) and y
                  sign (taken as stored) are not documented by the sample.
``mrq``           Movie Render Queue output folders: the aliased render (``aliased/`` or SRC itself) and the
                  reference render (``reference/`` or ``--reference``). Passes are found by name in file names or
                  in multi-layer EXR layer names: FinalImage/PreTonemapHDRColor → colour, MotionVectors/Velocity
                  → motion, WorldDepth/SceneDepth → depth (Unreal cm → metres), Jitter → per-frame jitter.

The Unreal launcher normalizes its own raw output with `normalize_unreal_shot` (the ``mrq`` importer with the
qw velocity material's ``ndc`` encoding). A finished import is validated; if validation fails, ``capture.json``
is moved aside (the shot stays incomplete) and a CaptureError lists the problems.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import OpenEXR
from tqdm import tqdm

from datagen.capture_format import (
    META_FILE,
    BackendInfo,
    CaptureMeta,
    JitterInfo,
    ReferenceInfo,
    finish_capture,
    is_complete,
    read_exr,
    write_frame,
)
from datagen.errors import CaptureError, QwError
from datagen.manifests import SceneManifest
from ue_capture.convert import (
    MRQ_MATERIAL_SCALE,
    UNREAL_UNITS_PER_METRE,
    color_to_half_range,
    decode_motion,
    depth_to_scene_units,
    jitter_ndc_to_pixels,
    sign_bits_to_ndc,
)

log = logging.getLogger(__name__)

LAYOUTS = ("intel-sample", "mrq")
NUMBERED_EXR = re.compile(r"^(?P<base>.*?)[._]?(?P<frame>\d+)\.exr$", re.IGNORECASE)
SAMPLE_FOLDERS = {"color": ("noaa",), "reference": ("ssaa",), "motion": ("vel", "velocity")}
# Checked in this order: an MRQ pass name like FinalImageMovieRenderQueue_MotionVectors is motion, not colour.
PASS_KEYWORDS = (("jitter", ("jitter",)), ("motion", ("motionvectors", "velocity")),
                 ("depth", ("worlddepth", "scenedepth")), ("color", ("finalimage", "pretonemaphdrcolor")))
RGB = ("R", "G", "B")
IMPORT_WORKERS = min(4, os.cpu_count() or 1)  # source files converted at once (memory: ~5 full frames each)


@dataclass
class DecodedFrame:
    """One frame in contract units; depth None when the source has none, jitter None when unjittered."""

    source_frame: int
    color: np.ndarray
    reference: np.ndarray
    motion: np.ndarray
    depth: np.ndarray | None
    jitter: tuple[float, float] | None
    unwritten_motion: int = 0
    cut: bool = False  # history invalid: first frame after a gap or of a stacked block


Loader = Callable[[], list[DecodedFrame]]  # reads and decodes one source file (one frame, or a stacked block)


# ----------------------------------------------------------------------------------------------- files


def numbered_exrs(folder: Path) -> dict[str, dict[int, Path]]:
    """EXR files of a folder grouped by name stem: stem → {frame number → path}."""
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.glob("*.exr")):
        match = NUMBERED_EXR.match(path.name)
        if match:
            groups.setdefault(match["base"], {})[int(match["frame"])] = path
    return groups


def _single_sequence(folder: Path) -> dict[int, Path]:
    groups = numbered_exrs(folder)
    if len(groups) != 1:
        found = ", ".join(sorted(groups)) or "no numbered .exr files"
        raise CaptureError(f"{folder}: expected one numbered EXR sequence, found: {found}")
    return next(iter(groups.values()))


def _find_folder(src: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (src / name).is_dir():
            return src / name
    raise CaptureError(f"{src}: no {' or '.join(n + '/' for n in names)} folder (layout intel-sample)")


def _classify(text: str) -> str | None:
    lowered = text.lower()
    for kind, words in PASS_KEYWORDS:
        if any(w in lowered for w in words):
            return kind
    return None


def _exr_header(path: Path) -> dict[str, Any]:
    """An EXR's header without its pixels; an unreadable file is a CaptureError naming it."""
    try:
        with OpenEXR.File(str(path), header_only=True) as exr:
            return dict(exr.header())  # a copy: closing the file empties its header
    except Exception as exc:  # OpenEXR raises RuntimeError for truncated and non-EXR files
        raise CaptureError(f"{path}: not a readable EXR file ({exc})") from None


def exr_layers(path: Path) -> dict[str, list[str]]:
    """Channel names of an EXR grouped by layer ('' for unlayered R,G,B,A), in R,G,B,A order."""
    names = [c.name for c in _exr_header(path)["channels"]]
    layers: dict[str, list[str]] = {}
    order = {c: i for i, c in enumerate("RGBAXYZ")}
    for name in names:
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    for layer, chans in layers.items():
        chans.sort(key=lambda n: order.get(n.rpartition(".")[2], 99))
    return layers


def mrq_passes(folder: Path) -> dict[str, dict[int, tuple[Path, list[str]]]]:
    """kind (color/motion/depth/jitter) → {frame → (file, channel names)} for an MRQ output folder."""
    if not folder.is_dir():
        raise CaptureError(f"{folder}: Movie Render Queue output folder not found")
    passes: dict[str, dict[int, tuple[Path, list[str]]]] = {}
    for base, frames in numbered_exrs(folder).items():
        for frame, path in frames.items():
            for layer, chans in exr_layers(path).items():
                kind = _classify(f"{base} {layer}") if layer else (_classify(base) or "color")
                if kind:
                    passes.setdefault(kind, {})[frame] = (path, chans)
    return passes


def _require_frames(where: Path, what: str, have: dict[int, Any], want: list[int]) -> None:
    missing = sorted(set(want) - set(have))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")
        raise CaptureError(f"{where}: {what} missing for frame(s) {shown} ({len(missing)} of {len(want)})")


def _read(path: Path, channels: list[str] | tuple[str, ...], count: int) -> np.ndarray:
    if len(channels) < count:
        raise CaptureError(f"{path}: needs {count} channels, has {list(channels)}")
    return read_exr(path, tuple(channels[:count])).astype(np.float32)


def _gap_cuts(frames: list[int]) -> set[int]:
    """Stored indices that follow a gap in the source frame numbers (their history is not the previous frame)."""
    return {i for i in range(1, len(frames)) if frames[i] != frames[i - 1] + 1}


# ----------------------------------------------------------------------------------------------- intel-sample


def _frames_per_stack(width: int, height: int) -> int:
    """T for a vertically stacked block (height = T·width, T > 1), else 1."""
    return height // width if height > width and height % width == 0 else 1


def _split_stack(image: np.ndarray) -> list[np.ndarray]:
    """A vertically stacked block → its T frames; any other image → [image]."""
    w = image.shape[1]
    return [image[t * w:(t + 1) * w] for t in range(_frames_per_stack(w, image.shape[0]))]


def exr_size(path: Path) -> tuple[int, int]:
    """(width, height) of an EXR from its header."""
    (x0, y0), (x1, y1) = _exr_header(path)["dataWindow"]
    return int(x1 - x0 + 1), int(y1 - y0 + 1)


def _intel_sample_frames(src: Path, full_size: tuple[int, int] | None,
                         sample_offsets: bool) -> tuple[list[Loader], int]:
    """One loader per source file, each giving its frame (or the T frames of a stacked block)."""
    folders = {kind: _find_folder(src, names) for kind, names in SAMPLE_FOLDERS.items()}
    files = {kind: _single_sequence(folder) for kind, folder in folders.items()}
    numbers = sorted(files["color"])
    for kind in ("reference", "motion"):
        _require_frames(folders[kind], kind, files[kind], numbers)
    gap_cuts = _gap_cuts(numbers)
    first = files["color"][numbers[0]]
    per_file = _frames_per_stack(*exr_size(first))
    if per_file > 1 and full_size is None:
        raise QwError(f"{first}: a stacked {per_file}-frame block; pass the full frame size it was cut from "
                      "(--full-resolution WxH), since NDC velocity is relative to it")

    def load(k: int, number: int) -> list[DecodedFrame]:
        color, ref, vel = (_read(files[kind][number], RGB, 3) for kind in ("color", "reference", "motion"))
        if not color.shape == ref.shape == vel.shape:
            raise CaptureError(f"{files['color'][number]}: noaa/ssaa/vel sizes differ "
                               f"({color.shape[:2]}, {ref.shape[:2]}, {vel.shape[:2]})")
        size = full_size or (color.shape[1], color.shape[0])
        frames = []
        for t, (c, r, v) in enumerate(zip(_split_stack(color), _split_stack(ref), _split_stack(vel))):
            motion, written = decode_motion(v, "sign-bits", size)
            jitter = tuple(float(x) for x in sign_bits_to_ndc(c[0, 0])) if sample_offsets else None
            frames.append(DecodedFrame(number * per_file + t, c, r, motion, None, jitter, int((~written).sum()),
                                       cut=(t == 0 and (per_file > 1 or k in gap_cuts))))
        return frames

    return [partial(load, k, n) for k, n in enumerate(numbers)], per_file


# ----------------------------------------------------------------------------------------------- mrq


def _mrq_frames(aliased: Path, reference: Path, encoding: str, mrq_scale: tuple[float, float],
                depth_units_per_scene_unit: float, full_size: tuple[int, int] | None
                ) -> tuple[list[Loader], bool]:
    """One loader per frame of an MRQ render (aliased passes + reference colour); and whether depth exists."""
    passes = mrq_passes(aliased)
    ref_color = mrq_passes(reference).get("color", {})
    for kind in ("color", "motion"):
        if kind not in passes:
            raise CaptureError(f"{aliased}: no {kind} pass found (looked for "
                               f"{'/'.join(dict(PASS_KEYWORDS)[kind])} in file and layer names)")
    numbers = sorted(passes["color"])
    _require_frames(aliased, "motion", passes["motion"], numbers)
    _require_frames(reference, "reference colour", ref_color, numbers)
    for kind in ("depth", "jitter"):
        if kind in passes:
            _require_frames(aliased, kind, passes[kind], numbers)
    gap_cuts = _gap_cuts(numbers)

    def load(k: int, n: int) -> list[DecodedFrame]:
        color = _read(*passes["color"][n], 3)
        size = full_size or (color.shape[1], color.shape[0])
        motion, written = decode_motion(_read(*passes["motion"][n], 3 if encoding == "sign-bits" else 2),
                                        encoding, size, mrq_scale)
        depth = (depth_to_scene_units(_read(*passes["depth"][n], 1)[..., 0], depth_units_per_scene_unit)
                 if "depth" in passes else None)
        jitter = (jitter_ndc_to_pixels(tuple(np.median(_read(*passes["jitter"][n], 2), axis=(0, 1))), *size)
                  if "jitter" in passes else None)
        return [DecodedFrame(n, color, _read(*ref_color[n], 3), motion, depth, jitter, int((~written).sum()),
                             cut=k in gap_cuts)]

    return [partial(load, k, n) for k, n in enumerate(numbers)], "depth" in passes


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Written:
    """What capture.json needs from one written frame."""

    source_frame: int
    size: tuple[int, int]
    jitter: tuple[float, float] | None
    cut: bool
    unwritten_motion: int
    clamped: int


def _write_frame(target: Path, index: int, f: DecodedFrame) -> _Written:
    shapes = {f.color.shape[:2], f.reference.shape[:2], f.motion.shape[:2]}
    if len(shapes) != 1:
        raise CaptureError(f"{target}: frame {f.source_frame}: pass sizes differ {sorted(shapes)}")
    size = shapes.pop()
    color, c1 = color_to_half_range(f.color)
    reference, c2 = color_to_half_range(f.reference)
    write_frame(target, "color", index, color)
    write_frame(target, "reference", index, reference)
    write_frame(target, "motion", index, f.motion)
    write_frame(target, "depth", index, f.depth if f.depth is not None else np.zeros(size, np.float32))
    return _Written(f.source_frame, size, f.jitter, f.cut, f.unwritten_motion, c1 + c2)


def _write(target: Path, loaders: list[Loader], per_loader: int, progress: bool,
           mark_cuts: Collection[int] = ()) -> list[_Written]:
    """Load, convert and write every frame through the contract, several source files at once (EXR coding
    releases the GIL); returns the per-frame summaries in order. `mark_cuts`: more source frames that are cuts."""

    def run(k: int) -> list[_Written]:
        frames = loaders[k]()
        if len(frames) != per_loader:
            raise CaptureError(f"{target}: source file {k} holds {len(frames)} frames, the first held {per_loader}")
        return [_write_frame(target, k * per_loader + t, f) for t, f in enumerate(frames)]

    with ThreadPoolExecutor(IMPORT_WORKERS) as pool:
        done = list(tqdm(pool.map(run, range(len(loaders))), total=len(loaders), desc=f"import {target.name}",
                         unit="file", disable=not progress))
    written = [w for group in done for w in group]
    sizes = sorted({w.size for w in written})
    if len(sizes) != 1:
        raise CaptureError(f"{target}: frames have different sizes {sizes}")
    return [replace(w, cut=w.cut or w.source_frame in mark_cuts) for w in written]


def _jitter_info(jitters: list[tuple[float, float] | None]) -> JitterInfo:
    if all(j is None for j in jitters):
        return JitterInfo(sequence="none")
    if any(j is None for j in jitters):
        raise CaptureError("jitter recorded for some frames only")
    return JitterInfo(sequence="engine", offsets=[tuple(j) for j in jitters])  # type: ignore[arg-type]


def _finish_and_validate(target: Path, meta: CaptureMeta) -> Path:
    from datagen.validate import validate_capture

    finish_capture(target, meta)
    report = validate_capture(target)
    if not report.ok:
        os.replace(target / META_FILE, target / f"{META_FILE}.invalid")
        raise CaptureError(f"{target}: imported capture failed validation ({', '.join(report.failed_checks)}): "
                           + "; ".join(report.problems[:3]))
    return target


def _store(target: Path, written: list[_Written], *, scene: str, shot: str, backend: BackendInfo, fps: float,
           reference: ReferenceInfo, depth_units: str, extra: dict[str, Any]) -> Path:
    height, width = written[0].size
    meta = CaptureMeta(scene=scene, shot=shot, backend=backend, width=width, height=height, fps=fps,
                       frame_count=len(written), source_frames=[w.source_frame for w in written],
                       jitter=_jitter_info([w.jitter for w in written]), reference=reference,
                       camera_cuts=[i for i, w in enumerate(written) if w.cut and i > 0], depth_units=depth_units,
                       extra={**extra, "motion_unwritten_pixels": sum(w.unwritten_motion for w in written),
                              "color_pixels_clamped_to_half": sum(w.clamped for w in written)})
    return _finish_and_validate(target, meta)


# ----------------------------------------------------------------------------------------------- entry points


def import_capture(layout: str, src: str | os.PathLike, *, scene: str, shot: str, out: str | os.PathLike,
                   fps: float = 30.0, reference: str | os.PathLike | None = None,
                   full_size: tuple[int, int] | None = None, motion_encoding: str | None = None,
                   mrq_scale: tuple[float, float] = MRQ_MATERIAL_SCALE, reference_samples: int | None = None,
                   sample_offsets: bool = True, force: bool = False, progress: bool = True) -> Path:
    """Convert an existing Unreal dump at `src` into ``out/<scene>/<shot>/``; returns the shot directory.

    A complete target is left alone unless `force`. `motion_encoding` defaults to the layout's own
    (``sign-bits`` for intel-sample, ``mrq-material`` for mrq).
    """
    if layout not in LAYOUTS:
        raise QwError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    src = Path(src)
    if not src.is_dir():
        raise QwError(f"{src}: source folder not found")
    target = Path(out) / scene / shot
    if is_complete(target) and not force:
        log.info("%s: already complete; pass force=True to import again", target)
        return target
    ref_info = ReferenceInfo(samples=reference_samples or 1,
                             filter="as rendered by the source" if reference_samples else "unknown (not recorded)")
    common = dict(scene=scene, shot=shot, fps=fps, reference=ref_info)
    if layout == "intel-sample":
        loaders, per_file = _intel_sample_frames(src, full_size, sample_offsets)
        backend = BackendInfo(name="import:intel-sample", settings={
            "motion_encoding": "sign-bits", "full_size": full_size, "sample_offsets_from_pixel_00": sample_offsets})
        return _store(target, _write(target, loaders, per_file, progress), backend=backend,
                      depth_units="none (the source has no depth; zeros)", extra={"source": str(src.resolve())},
                      **common)
    aliased = src / "aliased" if (src / "aliased").is_dir() else src
    ref_dir = Path(reference) if reference else src / "reference"
    encoding = motion_encoding or "mrq-material"
    loaders, has_depth = _mrq_frames(aliased, ref_dir, encoding, mrq_scale, UNREAL_UNITS_PER_METRE, full_size)
    backend = BackendInfo(name="import:mrq", settings={"motion_encoding": encoding, "mrq_scale": list(mrq_scale),
                                                       "full_size": full_size})
    return _store(target, _write(target, loaders, 1, progress), backend=backend,
                  depth_units="m" if has_depth else "none (the source has no depth; zeros)",
                  extra={"source": str(aliased.resolve()), "reference_source": str(ref_dir.resolve())}, **common)


RAW_PASSES = {"mrq": ("color", "motion", "depth"), "bufvis": ("color", "motion", "depth", "jitter")}


def raw_problems(spec: dict[str, Any], raw: Path) -> str | None:
    """Why the editor's raw output of a shot is incomplete (None when every pass has every frame)."""
    expected = list(range(spec["start_frame"], spec["end_frame"]))
    try:
        aliased = mrq_passes(raw / "aliased")
        reference = mrq_passes(raw / "reference").get("color", {})
        for kind in RAW_PASSES[spec["mode"]]:
            _require_frames(raw / "aliased", kind, aliased.get(kind, {}), expected)
        _require_frames(raw / "reference", "reference colour", reference, expected)
    except CaptureError as exc:
        return str(exc)
    return None


def normalize_unreal_shot(spec: dict[str, Any], raw: Path, target: Path, manifest: SceneManifest) -> Path:
    """The launcher's last step: the editor's raw MRQ/bufvis output of one shot → the capture at `target`."""
    problem = raw_problems(spec, raw)
    if problem:
        raise CaptureError(f"{target}: raw Unreal output incomplete: {problem}")
    loaders, _ = _mrq_frames(raw / "aliased", raw / "reference", "ndc", MRQ_MATERIAL_SCALE, UNREAL_UNITS_PER_METRE,
                             None)
    major = spec["engine_version"].split(".")[0]
    backend = BackendInfo(name=f"ue{major}", version=spec["engine_version"],
                          settings={k: v for k, v in spec.items() if k not in ("output_dir", "status_file")})
    ref_info = ReferenceInfo(samples=spec["reference_samples"],
                             filter="MRQ spatial samples: Gaussian, sigma 0.47·r.TemporalAAFilterSize px, "
                                    "window ±0.5 px (notes/unreal.md §1.4)")
    written = _write(target, loaders, 1, progress=False, mark_cuts=set(manifest.shot(spec["shot"]).camera_cuts))
    return _store(target, written, scene=spec["scene"], shot=spec["shot"], backend=backend, fps=spec["fps"],
                  reference=ref_info, depth_units="m", extra={"mode": spec["mode"], "raw": str(raw.resolve())})

"""Importers: existing Unreal dumps → one capture (contract 1), written through qw.datagen.capture_format.

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
                  reference render (``reference/`` or ``--reference``). Files are named ``<…>.<pass>.<frame>.exr``
                  (MRQ's ``{render_pass}.{frame_number}`` tokens) or are multi-layer EXRs whose layers are passes;
                  a pass name must be one of `PASS_NAMES` exactly (``SceneDepth`` is not ``SceneDepthWorldUnits``);
                  other passes, as files or as layers, are ignored with a warning that names them. Depth is Unreal
                  cm → metres.

The Unreal launcher normalizes its own raw output with `normalize_unreal_shot`: per-sample files that Movie Render
Queue writes with ``write_all_samples`` (``<pass>_SS_<s>_TS_<t>_TileX_<x>_TileY_<y>.<n>.exr``, n counting output
frames from 0) for jittered input, or per-frame files without jitter, and the reference job's samples, whose mean it
takes; it records the cameras the prepare stage keyed and the colour space. A finished import is validated; if validation fails, ``capture.json`` is moved aside (the shot stays incomplete) and a CaptureError
lists the problems.
"""

from __future__ import annotations

import json
import logging
import math
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

from qw.datagen.capture_format import (
    META_FILE,
    BackendInfo,
    CaptureMeta,
    EngineInfo,
    JitterInfo,
    ReferenceInfo,
    finish_capture,
    is_complete,
    read_exr,
    shot_dir,
    write_frame,
)
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import SceneManifest
from qw.ue_capture.convert import (
    MRQ_MATERIAL_SCALE,
    FILTER_SIZE_CVAR,
    color_to_half_range,
    decode_motion,
    depth_to_scene_units,
    mrq_reference_filter,
    mrq_sample_offsets,
    sign_bits_to_ndc,
    unreal_camera,
)

log = logging.getLogger(__name__)

LAYOUTS = ("intel-sample", "mrq")
NUMBERED_EXR = re.compile(r"^(?P<base>.*?)[._]?(?P<frame>\d+)\.exr$", re.IGNORECASE)
SAMPLE_FOLDERS = {"color": ("noaa",), "reference": ("ssaa",), "motion": ("vel", "velocity")}
# Movie Render Queue pass names qw reads (file-name token or EXR layer, matched exactly) → (kind, motion encoding).
PASS_NAMES: dict[str, tuple[str, str | None]] = {
    "FinalImage": ("color", None),
    "PreTonemapHDRColor": ("color", None),
    "FinalImageM_QW_Velocity": ("motion", "ndc"),  # qw's material: SceneTexture:Velocity
    "FinalImageMovieRenderQueue_MotionVectors": ("motion", "mrq-material"),  # MRQ's stock material
    "FinalImageM_QW_Depth": ("depth", None),  # qw's material: SceneTexture:SceneDepth, cm
    "FinalImageMovieRenderQueue_WorldDepth": ("depth", None),  # MRQ's stock material, world units (cm)
}
FRAME_FILE = re.compile(r"^(?:.*\.)?(?P<name>[^.]+)\.(?P<frame>\d+)\.exr$", re.IGNORECASE)
SAMPLE_FILE = re.compile(r"^(?P<name>.+)_SS_(?P<s>\d+)_TS_(?P<t>\d+)_TileX_(?P<x>\d+)_TileY_(?P<y>\d+)"
                         r"\.(?P<n>\d+)\.exr$", re.IGNORECASE)
RGB = ("R", "G", "B")
# Colour spaces recorded in capture.json: MRQ's FinalImage with the tone curve disabled is linear HDR after
# exposure and grading; PreTonemapHDRColor (the Intel sample's) is scene colour before them.
MRQ_COLOR_SPACE = "ue-linear-final-hdr"
PRETONEMAP_COLOR_SPACE = "ue-linear-pretonemap-hdr"
PASS_COLOR_SPACES = {"FinalImage": MRQ_COLOR_SPACE, "PreTonemapHDRColor": PRETONEMAP_COLOR_SPACE}
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


def _ignored_passes(path: Path, names: Collection[str]) -> None:
    """Passes qw does not read (another material, a stock pass) are skipped, in a separate file or a layer alike,
    and named, so that a misnamed pass is seen (never guessed: 'SceneDepthWorldUnits' is not 'SceneDepth')."""
    if names:
        log.warning("%s: ignoring pass(es) %s: qw reads only %s", path, ", ".join(map(repr, sorted(names))),
                    ", ".join(PASS_NAMES))


def _file_passes(path: Path, name: str) -> dict[str, tuple[str, list[str]]]:
    """kind → (pass name, channels) of one MRQ file: its layers if it has known ones, else its name; {} when it
    holds no pass qw reads."""
    layers = exr_layers(path)
    known = {layer: chans for layer, chans in layers.items() if layer in PASS_NAMES}
    if known:  # a multi-layer EXR: MRQ writes the first pass (FinalImage) without a layer prefix
        _ignored_passes(path, set(layers) - set(known) - {""})
        found = {PASS_NAMES[layer][0]: (layer, chans) for layer, chans in known.items()}
        if "" in layers:
            found.setdefault("color", ("FinalImage", layers[""]))
        return found
    if name not in PASS_NAMES:
        _ignored_passes(path, {name})
        return {}
    return {PASS_NAMES[name][0]: (name, layers.get("") or next(iter(layers.values())))}


Passes = dict[str, dict[Any, tuple[Path, list[str], str]]]  # kind → {frame or (frame, sample) → file, chans, pass}


def mrq_passes(folder: Path) -> Passes:
    """kind (color/motion/depth) → {frame → (file, channel names, pass name)} of an MRQ output folder."""
    if not folder.is_dir():
        raise CaptureError(f"{folder}: Movie Render Queue output folder not found")
    passes: Passes = {}
    for path in sorted(folder.glob("*.exr")):
        match = FRAME_FILE.match(path.name)
        if not match or SAMPLE_FILE.match(path.name):
            raise CaptureError(f"{path}: not a per-frame Movie Render Queue file (<…>.<pass>.<frame>.exr)")
        for kind, (name, chans) in _file_passes(path, match["name"]).items():
            passes.setdefault(kind, {})[int(match["frame"])] = (path, chans, name)
    return passes


def mrq_samples(folder: Path) -> Passes:
    """kind → {(output frame n, spatial sample s) → (file, channels, pass)} of ``write_all_samples`` files."""
    passes: Passes = {}
    for path in sorted(folder.glob("*.exr")):
        match = SAMPLE_FILE.match(path.name)
        if not match:
            raise CaptureError(f"{path}: not a Movie Render Queue sample file (<pass>_SS_<s>_TS_<t>_…<n>.exr)")
        if (match["t"], match["x"], match["y"]) != ("0", "0", "0"):
            raise CaptureError(f"{path}: temporal samples and tiles are not used by qw's capture")
        for kind, (name, chans) in _file_passes(path, match["name"]).items():
            passes.setdefault(kind, {})[(int(match["n"]), int(match["s"]))] = (path, chans, name)
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
            if jitter is not None and not all(map(math.isfinite, jitter)):  # capture.json holds finite numbers only
                raise CaptureError(f"{files['color'][number]}: the sample offset at pixel (0,0) is {jitter}, not "
                                   f"finite; import with --no-sample-offsets if the sample has none")
            frames.append(DecodedFrame(number * per_file + t, c, r, motion, None, jitter, int((~written).sum()),
                                       cut=(t == 0 and (per_file > 1 or k in gap_cuts))))
        return frames

    return [partial(load, k, n) for k, n in enumerate(numbers)], per_file


# ----------------------------------------------------------------------------------------------- mrq


Entry = tuple[Path, list[str], str]  # file, channel names, pass name


def _decode_mrq(number: int, color: Entry, motion: Entry, depth: Entry | None, reference: list[Entry],
                encoding: str | None, mrq_scale: tuple[float, float], full_size: tuple[int, int] | None,
                jitter: tuple[float, float] | None = None, cut: bool = False) -> DecodedFrame:
    """One frame from MRQ pass files; the motion encoding follows the pass unless `encoding` overrides it. The
    reference is the equal-weight mean of its files (one accumulated frame, or the samples qw averages itself)."""
    c = _read(color[0], color[1], 3)
    size = full_size or (c.shape[1], c.shape[0])
    enc = encoding or PASS_NAMES[motion[2]][1]
    m, written = decode_motion(_read(motion[0], motion[1], 3 if enc == "sign-bits" else 2), enc, size, mrq_scale)
    d = depth_to_scene_units(_read(depth[0], depth[1], 1)[..., 0]) if depth else None
    ref = np.mean([_read(path, chans, 3) for path, chans, _ in reference], axis=0, dtype=np.float64)
    return DecodedFrame(number, c, ref.astype(np.float32), m, d, jitter, int((~written).sum()), cut=cut)


def _mrq_frames(aliased: Path, reference: Path, encoding: str | None, mrq_scale: tuple[float, float],
                full_size: tuple[int, int] | None) -> tuple[list[Loader], bool, str, str]:
    """One loader per frame of an MRQ render (aliased passes + reference colour), whether depth exists, the
    motion encoding used and the colour pass."""
    passes = mrq_passes(aliased)
    ref_color = mrq_passes(reference).get("color", {})
    for kind in ("color", "motion"):
        if kind not in passes:
            known = [name for name, (k, _) in PASS_NAMES.items() if k == kind]
            raise CaptureError(f"{aliased}: no {kind} pass found (looked for {', '.join(known)})")
    numbers = sorted(passes["color"])
    _require_frames(aliased, "motion", passes["motion"], numbers)
    _require_frames(reference, "reference colour", ref_color, numbers)
    depth = passes.get("depth")
    if depth is not None:
        _require_frames(aliased, "depth", depth, numbers)
    gap_cuts = _gap_cuts(numbers)

    def load(k: int, n: int) -> list[DecodedFrame]:
        return [_decode_mrq(n, passes["color"][n], passes["motion"][n], depth[n] if depth else None, [ref_color[n]],
                            encoding, mrq_scale, full_size, cut=k in gap_cuts)]

    used = encoding or ",".join(sorted({PASS_NAMES[entry[2]][1] for entry in passes["motion"].values()}))
    color_passes = {entry[2] for entry in passes["color"].values()}
    if len(color_passes) != 1:
        raise CaptureError(f"{aliased}: colour comes from several passes ({', '.join(sorted(color_passes))}); "
                           "keep one")
    return [partial(load, k, n) for k, n in enumerate(numbers)], depth is not None, used, color_passes.pop()


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
                         unit="file", disable=None if progress else True))
    written = [w for group in done for w in group]
    sizes = sorted({w.size for w in written})
    if len(sizes) != 1:
        raise CaptureError(f"{target}: frames have different sizes {sizes}")
    return [replace(w, cut=w.cut or w.source_frame in mark_cuts) for w in written]


def _jitter_info(jitters: list[tuple[float, float] | None], cycle: int = 0) -> JitterInfo:
    if all(j is None for j in jitters):
        return JitterInfo(sequence="none")
    if any(j is None for j in jitters):
        raise CaptureError("jitter recorded for some frames only")
    return JitterInfo(sequence="engine", cycle=cycle, offsets=[tuple(j) for j in jitters])  # type: ignore[misc]


def _finish_and_validate(target: Path, meta: CaptureMeta) -> Path:
    from qw.datagen.validate import validate_capture

    finish_capture(target, meta)
    report = validate_capture(target)
    if not report.ok:
        os.replace(target / META_FILE, target / f"{META_FILE}.invalid")
        raise CaptureError(f"{target}: imported capture failed validation ({', '.join(report.failed_checks)}): "
                           + "; ".join(report.problems[:3]))
    return target


def _store(target: Path, written: list[_Written], *, scene: str, shot: str, backend: BackendInfo, fps: float,
           reference: ReferenceInfo, depth_units: str, extra: dict[str, Any], color_space: str,
           engine: EngineInfo | None = None, jitter_cycle: int = 0, cameras: list[dict] | None = None) -> Path:
    height, width = written[0].size
    meta = CaptureMeta(scene=scene, shot=shot, backend=backend, width=width, height=height, fps=fps,
                       frame_count=len(written), source_frames=[w.source_frame for w in written],
                       jitter=_jitter_info([w.jitter for w in written], jitter_cycle), reference=reference,
                       engine=engine, color_space=color_space, cameras=cameras,
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

    A complete target is left alone unless `force`. `motion_encoding` defaults to the layout's own: ``sign-bits``
    for intel-sample; for mrq the motion pass's (``ndc`` for qw's velocity material, ``mrq-material`` for MRQ's).
    """
    if layout not in LAYOUTS:
        raise QwError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    src = Path(src)
    if not src.is_dir():
        raise QwError(f"{src}: source folder not found")
    target = shot_dir(out, scene, shot)  # single folder names: '..' or '/etc' would write outside `out`
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
                      color_space=PRETONEMAP_COLOR_SPACE, **common)
    aliased = src / "aliased" if (src / "aliased").is_dir() else src
    ref_dir = Path(reference) if reference else src / "reference"
    loaders, has_depth, encoding, color_pass = _mrq_frames(aliased, ref_dir, motion_encoding, mrq_scale, full_size)
    backend = BackendInfo(name="import:mrq", settings={"motion_encoding": encoding, "mrq_scale": list(mrq_scale),
                                                       "full_size": full_size})
    return _store(target, _write(target, loaders, 1, progress), backend=backend,
                  depth_units="m" if has_depth else "none (the source has no depth; zeros)",
                  extra={"source": str(aliased.resolve()), "reference_source": str(ref_dir.resolve())},
                  color_space=PASS_COLOR_SPACES[color_pass], **common)


RAW_KINDS = ("color", "motion", "depth")
EXPOSURE_CVARS = ("r.EyeAdaptationQuality", "r.DefaultFeature.AutoExposure")  # what fixes both jobs' exposure


def _sample_keys(frames: int, samples: int) -> list[tuple[int, int]]:
    return [(n, s) for n in range(frames) for s in range(samples)]


def _missing(folder: Path, found: Passes, kind: str, keys: list, what: str) -> None:
    missing = [k for k in keys if k not in found.get(kind, {})]
    if missing:
        shown = ", ".join(map(str, missing[:4])) + (" …" if len(missing) > 4 else "")
        raise CaptureError(f"{folder}: {kind} missing for {what} {shown} ({len(missing)} of {len(keys)})")


def _raw_entries(spec: dict[str, Any], raw: Path) -> tuple[dict[str, list[Entry]], list[list[Entry]]]:
    """One scan of Movie Render Queue's raw output of a shot: the aliased pass files per kind, one per stored frame,
    and each frame's reference colour files (its samples, or its one frame when unjittered); a CaptureError says
    what is missing.

    With N > 1 spatial samples aliased frame i is sample i mod N of output frame i; without, the per-frame files."""
    start, end = spec["start_frame"], spec["end_frame"]
    folder = raw / "aliased"
    samples = spec["passes"]["aliased"]["spatial_samples"]
    if samples > 1:
        found = mrq_samples(folder)
        keys: list = [(i, i % samples) for i in range(end - start)]
        what = "sample (output frame, sample index)"
    else:
        found, keys, what = mrq_passes(folder), list(range(start, end)), "frame"
    for kind in RAW_KINDS:
        _missing(folder, found, kind, keys, what)
    aliased = {kind: [found[kind][k] for k in keys] for kind in RAW_KINDS}
    ref_samples = spec["passes"]["reference"]["spatial_samples"]
    if ref_samples > 1:
        ref_found = mrq_samples(raw / "reference")
        ref_keys: list = _sample_keys(end - start, ref_samples)
        _missing(raw / "reference", ref_found, "color", ref_keys, "sample (output frame, sample index)")
        entries = ref_found["color"]
        return aliased, [[entries[(n, s)] for s in range(ref_samples)] for n in range(end - start)]
    reference = mrq_passes(raw / "reference").get("color", {})
    _require_frames(raw / "reference", "reference colour", reference, list(range(start, end)))
    return aliased, [[reference[n]] for n in range(start, end)]


def pixel_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A job spec without where its files go (the working area moves with --out, the queue with the project), as
    JSON reads it back: what two renders must share for their pixels to be interchangeable, and what capture.json
    records of them."""
    kept = {k: v for k, v in spec.items() if k not in ("status_file", "queue_manifest")}
    if isinstance(kept.get("passes"), dict):
        kept["passes"] = {name: {k: v for k, v in p.items() if k != "output_dir"} if isinstance(p, dict) else p
                          for name, p in kept["passes"].items()}
    return json.loads(json.dumps(kept))


def raw_problems(spec: dict[str, Any], raw: Path) -> str | None:
    """Why Movie Render Queue's raw output of a shot is incomplete (None when every pass has every frame)."""
    try:
        _raw_entries(spec, raw)
    except CaptureError as exc:
        return str(exc)
    return None


def normalize_unreal_shot(spec: dict[str, Any], prepared: dict[str, Any], raw: Path, target: Path,
                          manifest: SceneManifest) -> Path:
    """The launcher's last step: Movie Render Queue's raw output of one shot → the capture at `target`.

    `prepared` is the editor script's report (engine version, cvars it read). The reference is built here as the
    equal-weight mean of the reference job's samples (``write_all_samples``), not taken from MRQ's accumulator,
    which splats every sample bilinearly and so filters wider than its samples: qw's reference then means what the
    builtin renderer's does, the mean of samples at recorded offsets. Frame 0's motion is written as zero: MRQ
    fakes the first frame's previous position (no camera-cut warm-up), and frame 0 has no history anyway."""
    try:
        aliased, reference = _raw_entries(spec, raw)
    except CaptureError as exc:
        raise CaptureError(f"{target}: raw Unreal output incomplete: {exc}") from None
    version = prepared["engine_version"]
    ref_pass, samples = spec["passes"]["reference"], spec["passes"]["aliased"]["spatial_samples"]
    filter_size = float(ref_pass["cvars"][FILTER_SIZE_CVAR])
    offsets = mrq_sample_offsets(samples, version, filter_size)

    def load(i: int) -> list[DecodedFrame]:
        frame = _decode_mrq(spec["start_frame"] + i, aliased["color"][i], aliased["motion"][i], aliased["depth"][i],
                            reference[i], None, MRQ_MATERIAL_SCALE, None,
                            jitter=offsets[i % samples] if samples > 1 else None)
        if i == 0:
            frame.motion[:] = 0.0
        return [frame]

    written = _write(target, [partial(load, i) for i in range(len(reference))], 1, progress=False,
                     mark_cuts=set(manifest.shot(spec["shot"]).camera_cuts))
    backend = BackendInfo(name=f"ue{version.split('.')[0]}", version=version,
                          settings=pixel_settings(spec))
    samples_ref = ref_pass["spatial_samples"]
    ref_info = ReferenceInfo(samples=samples_ref, filter=mrq_reference_filter(samples_ref, version, filter_size),
                             offsets=mrq_sample_offsets(samples_ref, version, filter_size))
    engine = EngineInfo(version=version, cvars={**prepared.get("cvars_read", {}), **ref_pass["cvars"]})
    camera = prepared.get("camera")  # the poses the script keyed (None for a project's own sequence)
    cameras = [unreal_camera(camera["poses"][str(w.source_frame)], camera["fov"], spec["width"], spec["height"])
               for w in written] if camera else None
    return _store(target, written, scene=spec["scene"], shot=spec["shot"], backend=backend, fps=spec["fps"],
                  reference=ref_info, depth_units="m", engine=engine, jitter_cycle=samples if samples > 1 else 0,
                  cameras=cameras,
                  color_space=MRQ_COLOR_SPACE,
                  extra={"raw": str(raw.resolve()), "level_sequence": prepared.get("level_sequence"),
                         "motion_zeroed_frames": [0],
                         "motion_zeroed_why": "MRQ emulates the first frame's previous position without camera-cut "
                                              "warm-up; frame 0 has no valid history",
                         "exposure": {name: ref_pass["cvars"].get(name) for name in EXPOSURE_CVARS}})

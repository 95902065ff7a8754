"""Contract 1, `qw-capture/1`: one shot of rendered frames on disk.

Every capture backend (builtin renderer, Unreal, importers) writes through this module and the tiler reads
through it, so the layout, EXR encoding and metadata schema are defined here only::

    <captures>/<scene>/<shot>/
        color/000000.exr       R,G,B half   aliased 1 spp, linear HDR, jittered by meta.jitter.offsets[i]
        reference/000000.exr   R,G,B half   supersampled linear HDR, unjittered camera
        motion/000000.exr      X,Y float    pixels, +x right +y down, current minus previous, jitter removed
        depth/000000.exr       Z float      planar view depth, scene units
        capture.json           written last (atomic rename): the shot is complete only when it exists

Conventions shared with the validator and the tiler:

* Pixel ``(x, y)`` has its centre at ``(x + 0.5, y + 0.5)``; NDC is ``x_ndc = 2·px/W − 1``, ``y_ndc = 1 − 2·py/H``.
* Motion ``m(p)``: the surface seen at ``p`` was at ``p − m(p)`` in the previous frame.
* Camera matrices (when known) are OpenGL style, row-major, applied to column vectors: ``view`` maps world to
  camera space (camera looks down −Z, +Y up), ``projection`` maps camera space to clip space *without* jitter.
  Planar depth is ``−z_camera``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import OpenEXR
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datagen import __version__
from datagen.errors import CaptureError

FORMAT_NAME = "qw-capture"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
META_FILE = "capture.json"


@dataclass(frozen=True)
class PassSpec:
    """One per-frame image pass: its folder name, EXR channel names and pixel dtype."""

    name: str
    channels: tuple[str, ...]
    dtype: type

    @property
    def num_channels(self) -> int:
        return len(self.channels)


PASSES: dict[str, PassSpec] = {
    p.name: p
    for p in (
        PassSpec("color", ("R", "G", "B"), np.float16),
        PassSpec("reference", ("R", "G", "B"), np.float16),
        PassSpec("motion", ("X", "Y"), np.float32),
        PassSpec("depth", ("Z",), np.float32),
    )
}

# ZIP is lossless; DWA/B44 are lossy (DWA even on a channel named Y), so they are never used.
EXR_COMPRESSION = OpenEXR.ZIP_COMPRESSION


# ----------------------------------------------------------------------------------------------- metadata


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendInfo(_Strict):
    name: str = Field(description="builtin, ue4, ue5, import:intel-sample, import:mrq …")
    version: str = ""
    settings: dict[str, Any] = Field(default_factory=dict, description="every setting that affects pixels")


class JitterInfo(_Strict):
    sequence: str = Field(description="'halton23', 'engine' (recorded per frame) or 'none'")
    cycle: int = 0
    offsets: list[tuple[float, float]] = Field(
        default_factory=list, description="per-frame sample offset from the pixel centre, pixels, +x right +y down"
    )


class ReferenceInfo(_Strict):
    samples: int = Field(ge=1)
    filter: str = Field(description="e.g. 'box' or 'gaussian(sigma=0.47px)'")
    offsets: list[tuple[float, float]] = Field(
        default_factory=list, description="sub-pixel offsets of the averaged samples, when known (as jitter offsets)")


class EngineInfo(_Strict):
    """The engine that rendered a capture and the settings of it that change pixels (optional; Unreal captures)."""

    version: str = Field(description="as the engine reports it, e.g. '4.27.2-18319896+++UE4+Release-4.27'")
    cvars: dict[str, Any] = Field(
        default_factory=dict, description="console variables that change pixels: as read from the engine or as set")


class CameraFrame(_Strict):
    view: list[list[float]] = Field(description="4×4 world→camera, row-major, OpenGL axes")
    projection: list[list[float]] = Field(description="4×4 camera→clip, unjittered")


class CaptureMeta(_Strict):
    """Schema of `capture.json`."""

    format: str = FORMAT
    scene: str
    shot: str
    backend: BackendInfo
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: float = Field(gt=0)
    frame_count: int = Field(gt=0)
    source_frames: list[int] = Field(description="frame number in the source sequence of each stored frame")
    jitter: JitterInfo
    reference: ReferenceInfo
    camera_cuts: list[int] = Field(default_factory=list, description="stored frames whose history is invalid")
    cameras: list[CameraFrame] | None = None
    engine: EngineInfo | None = None
    depth_units: str = "scene units"
    seed: int | None = None
    qw_version: str = __version__
    checksums: dict[str, str] = Field(default_factory=dict, description="relative path → sha256")
    extra: dict[str, Any] = Field(default_factory=dict, description="backend-specific provenance")

    @model_validator(mode="after")
    def _consistent(self) -> "CaptureMeta":
        n = self.frame_count
        if len(self.source_frames) != n:
            raise ValueError(f"source_frames has {len(self.source_frames)} entries, frame_count is {n}")
        if self.jitter.offsets and len(self.jitter.offsets) != n:
            raise ValueError(f"jitter.offsets has {len(self.jitter.offsets)} entries, frame_count is {n}")
        if self.cameras is not None and len(self.cameras) != n:
            raise ValueError(f"cameras has {len(self.cameras)} entries, frame_count is {n}")
        bad = [c for c in self.camera_cuts if not 0 <= c < n]
        if bad:
            raise ValueError(f"camera_cuts {bad} outside 0..{n - 1}")
        return self

    def history_valid(self) -> np.ndarray:
        """(frame_count,) bool: False on frame 0 and on every camera cut."""
        valid = np.ones(self.frame_count, dtype=bool)
        valid[0] = False
        valid[self.camera_cuts] = False
        return valid

    def jitter_array(self) -> np.ndarray:
        """(frame_count, 2) float32 jitter offsets in pixels (zeros when the capture is unjittered)."""
        if not self.jitter.offsets:
            return np.zeros((self.frame_count, 2), np.float32)
        return np.asarray(self.jitter.offsets, np.float32)


# ----------------------------------------------------------------------------------------------- paths


def frame_path(shot_dir: str | os.PathLike, pass_name: str, index: int) -> Path:
    """Path of stored frame `index` of `pass_name` inside a shot directory."""
    if pass_name not in PASSES:
        raise KeyError(f"unknown pass {pass_name!r}; passes are {list(PASSES)}")
    return Path(shot_dir) / f"{pass_name}/{index:06d}.exr"


def shot_dir(captures_root: str | os.PathLike, scene: str, shot: str) -> Path:
    return Path(captures_root) / scene / shot


def is_complete(shot: str | os.PathLike) -> bool:
    return (Path(shot) / META_FILE).is_file()


def find_captures(root: str | os.PathLike) -> list[Path]:
    """Every complete shot directory at or below `root`, sorted."""
    root = Path(root)
    if is_complete(root):
        return [root]
    return sorted(p.parent for p in root.rglob(META_FILE))


# ----------------------------------------------------------------------------------------------- EXR I/O


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block exits cleanly it is renamed over `path`.

    Readers therefore see either the old file or the complete new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_exr(path: str | os.PathLike, image: np.ndarray, channels: tuple[str, ...], dtype: type,
              attributes: dict[str, Any] | None = None) -> None:
    """Write an H×W×C array as a ZIP-compressed scanline EXR, atomically (temp file + rename)."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != len(channels):
        raise ValueError(f"{path}: expected H×W×{len(channels)} for channels {channels}, got {image.shape}")
    header = {"compression": EXR_COMPRESSION, "type": OpenEXR.scanlineimage, **(attributes or {})}
    planes = {c: np.ascontiguousarray(image[..., i], dtype=dtype) for i, c in enumerate(channels)}
    with atomic_path(path) as tmp:
        OpenEXR.File(header, planes).write(str(tmp))


def read_exr(path: str | os.PathLike, channels: tuple[str, ...], dtype: type | None = None) -> np.ndarray:
    """Read the named channels of an EXR into an H×W×C array; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path}: missing file")
    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            stored = exr.channels()
            missing = [c for c in channels if c not in stored]
            if missing:
                raise CaptureError(f"{path}: missing channel(s) {missing}; file has {sorted(stored)}")
            planes = [stored[c].pixels for c in channels]
    except CaptureError:
        raise
    except Exception:  # OpenEXR raises RuntimeError("Unable to open") for truncated and non-EXR files alike
        raise CaptureError(f"{path}: {_unreadable_reason(path)}") from None
    image = np.stack(planes, axis=-1)
    if dtype is not None and image.dtype != dtype:
        raise CaptureError(f"{path}: channels stored as {image.dtype}, expected {np.dtype(dtype)}")
    return image


EXR_MAGIC = b"\x76\x2f\x31\x01"


def _unreadable_reason(path: Path) -> str:
    """Tell a file that is not an EXR at all from an EXR that is truncated or corrupt (by its magic number)."""
    with open(path, "rb") as f:
        head = f.read(len(EXR_MAGIC))
    return "truncated or corrupt EXR file" if head == EXR_MAGIC else "not an EXR file (no OpenEXR magic number)"


def write_frame(shot: str | os.PathLike, pass_name: str, index: int, image: np.ndarray) -> Path:
    """Write frame `index` of a pass with the contract's channels and dtype; returns its path."""
    spec = PASSES[pass_name]
    path = frame_path(shot, pass_name, index)
    write_exr(path, image, spec.channels, spec.dtype)
    return path


def read_frame(shot: str | os.PathLike, pass_name: str, index: int) -> np.ndarray:
    """Read frame `index` of a pass as H×W×C in the contract's dtype."""
    spec = PASSES[pass_name]
    return read_exr(frame_path(shot, pass_name, index), spec.channels, spec.dtype)


def frame_exists(shot: str | os.PathLike, index: int, passes: tuple[str, ...] = tuple(PASSES)) -> bool:
    """True when every pass of frame `index` is on disk (used to resume interrupted captures)."""
    return all(frame_path(shot, p, index).is_file() for p in passes)


# ----------------------------------------------------------------------------------------------- metadata I/O


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_files(shot: str | os.PathLike, frame_count: int) -> list[str]:
    """Relative paths of every frame file a complete shot must contain."""
    return [f"{p}/{i:06d}.exr" for p in PASSES for i in range(frame_count)]


def finish_capture(shot: str | os.PathLike, meta: CaptureMeta) -> CaptureMeta:
    """Checksum every frame file and write `capture.json` last, atomically: the shot becomes complete."""
    shot = Path(shot)
    checksums = {}
    for rel in frame_files(shot, meta.frame_count):
        path = shot / rel
        if not path.is_file():
            raise CaptureError(f"{path}: missing file; cannot complete the capture")
        checksums[rel] = sha256_file(path)
    meta = meta.model_copy(update={"checksums": checksums, "qw_version": __version__})
    text = json.dumps(meta.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    with atomic_path(shot / META_FILE) as tmp:
        tmp.write_text(text)
    return meta


def load_meta(shot: str | os.PathLike) -> CaptureMeta:
    """Parse and check `capture.json`: present, JSON, a known format version, schema-valid."""
    path = Path(shot) / META_FILE
    if not path.is_file():
        raise CaptureError(f"{path}: missing (the capture is incomplete or was interrupted)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}: not valid JSON ({exc})") from None
    fmt = str(raw.get("format", "")) if isinstance(raw, dict) else ""
    name, _, ver = fmt.partition("/")
    if name != FORMAT_NAME or not ver.isdigit():
        raise CaptureError(f"{path}: format {fmt!r} is not {FORMAT_NAME}/<version>")
    if int(ver) > FORMAT_VERSION:
        raise CaptureError(f"{path}: format {fmt} is newer than this qw reads ({FORMAT}); upgrade qw")
    try:
        return CaptureMeta.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise CaptureError(f"{path}: field {where}: {err['msg']}") from None

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

import errno
import fcntl
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import OpenEXR
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qw.datagen import __version__
from qw.datagen.errors import CaptureError, QwError

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
    # NaN and ±Inf are refused in every float field: json.loads reads them from capture.json, and a NaN jitter
    # offset or camera matrix would otherwise travel silently into the store and the checks.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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

    @model_validator(mode="after")
    def _matrices(self) -> "CameraFrame":
        # the reprojection check inverts the view and reshapes both to 4×4: anything else is a broken capture.json
        for name in ("view", "projection"):
            rows = getattr(self, name)
            if len(rows) != 4 or any(len(row) != 4 for row in rows):
                raise ValueError(f"{name} is not a 4×4 matrix (rows of lengths {[len(row) for row in rows]})")
        if abs(np.linalg.det(np.asarray(self.view, np.float64))) < 1e-12:
            raise ValueError("view matrix is singular (a world→camera transform is invertible)")
        return self


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
    color_space: str = Field("scene-linear", description="what colour/reference hold: 'scene-linear' (builtin), "
                             "'ue-linear-final-hdr' (after exposure and grading), 'ue-linear-pretonemap-hdr'")
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


def path_component_problem(name: str) -> str | None:
    """Why `name` (a scene or shot name) cannot be one folder name inside the captures root; None when it can.

    Names become folders: they must not climb out (``..``), be absolute, hold a separator, or be hidden (hidden
    folders are working areas that the validator and the planner do not look into).
    """
    if not name or name.strip() != name:
        return "is empty or starts/ends with white space"
    if "/" in name or "\\" in name or "\0" in name:
        return "contains a path separator or NUL"
    if name.startswith("."):
        return "starts with '.' ('.', '..' and hidden folders are not allowed)"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
    return None


def check_path_component(name: str, what: str) -> str:
    """`name` unchanged when it is a valid folder name, else a QwError naming it."""
    problem = path_component_problem(name)
    if problem:
        raise QwError(f"{what} {name!r} {problem}: names must be single folder names")
    return name


def shot_dir(captures_root: str | os.PathLike, scene: str, shot: str) -> Path:
    """``<captures_root>/<scene>/<shot>``; the names must be single folder names (never paths)."""
    return Path(captures_root) / check_path_component(scene, "scene") / check_path_component(shot, "shot")


def is_complete(shot: str | os.PathLike) -> bool:
    return (Path(shot) / META_FILE).is_file()


def shot_folders(root: str | os.PathLike, on_error=None) -> list[Path]:
    """Every shot folder at or below `root` (one holding capture.json or a pass folder, finished or not), sorted.

    The one rule for symlinks, shared by validate, plan and build: symbolic links to folders are followed (a
    captures tree may be assembled from several disks); each real folder counts once, so a link loop ends the walk
    there; hidden folders and the pass folders themselves are not searched. Unreadable folders are passed to
    `on_error(OSError)` (default: ignored) and skipped.
    """
    root = Path(root)

    def is_shot(d: Path) -> bool:
        return is_complete(d) or any((d / p).is_dir() for p in PASSES)

    if is_shot(root):
        return [root]
    found, seen = [], set()
    for folder, subfolders, _ in os.walk(root, followlinks=True, onerror=on_error):
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already walked (a loop, or the same shot twice)
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in PASSES)
        if folder != str(root) and is_shot(Path(folder)):
            found.append(Path(folder))
    return sorted(found)


def find_captures(root: str | os.PathLike) -> list[Path]:
    """Every complete shot directory at or below `root`, sorted (symlinks as `shot_folders` follows them)."""
    return [d for d in shot_folders(root) if is_complete(d)]


@contextmanager
def shot_lock(shot: str | os.PathLike) -> Iterator[None]:
    """Hold the writer lock of a shot (an flock on ``<scene>/.<shot>.qw-lock``, beside the shot folder so the
    folder holds only the contract's files): a second writer of the same shot is refused at once instead of racing
    the first. The kernel drops the lock when its process dies, so a killed capture never blocks its resume."""
    shot = Path(shot)
    lock = shot.parent / f".{shot.name}.qw-lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            # a conflict, not a broken capture: the bad-input exit status (QwError), as for a store in use
            raise QwError(f"{shot}: another process is writing this shot; wait for it to finish") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break  # the file we locked is still the lock file (not one its last holder just removed)
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: a waiting opener then sees a stale inode and retries
        os.close(fd)


def frame_intact(shot: str | os.PathLike, index: int, width: int, height: int) -> bool:
    """True when every pass of frame `index` is on disk, decodes with the contract's channels and dtype, and is
    `width` × `height`: what a resumed capture may keep (a truncated or foreign file is rendered again)."""
    for pass_name in PASSES:
        try:
            image = read_frame(shot, pass_name, index)
        except (CaptureError, OSError):
            return False
        if image.shape[:2] != (height, width):
            return False
    return True


# ----------------------------------------------------------------------------------------------- EXR I/O


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block exits cleanly it is renamed over `path`.

    Readers therefore see either the old file or the complete new one, never a half-written file.
    The temporary file is created with mode 0666 minus the umask, as a plain open() would, so the renamed file
    has the permissions the user's umask asks for (a mkstemp file would be 0600 whatever the umask). A full disk
    or any other OSError becomes a one-line error naming the file, and no partial file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
            raise QwError(f"{path}: cannot write ({exc.strerror})") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


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
        try:
            OpenEXR.File(header, planes).write(str(tmp))
        except RuntimeError as exc:  # OpenEXR reports I/O failures (disk full, size limit) as RuntimeError
            reason = str(exc).rstrip(".").rpartition(". ")[2] or str(exc)
            raise QwError(f"{path}: cannot write the EXR ({reason})") from None


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
    stored_types = sorted({p.dtype.name for p in planes})  # per channel: np.stack would upcast a mix (to float64)
    if dtype is not None and stored_types != [np.dtype(dtype).name]:
        raise CaptureError(f"{path}: channels stored as {' and '.join(stored_types)}, expected {np.dtype(dtype)}")
    return np.stack(planes, axis=-1)


EXR_MAGIC = b"\x76\x2f\x31\x01"


def _unreadable_reason(path: Path) -> str:
    """Tell a file that is not an EXR at all from an EXR that is truncated or corrupt (by its magic number)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(EXR_MAGIC))
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return "truncated or corrupt EXR file" if head == EXR_MAGIC else "not an EXR file (no OpenEXR magic number)"


def write_frame(shot: str | os.PathLike, pass_name: str, index: int, image: np.ndarray) -> Path:
    """Write frame `index` of a pass with the contract's channels and dtype; returns its path."""
    spec = PASSES[pass_name]
    path = frame_path(shot, pass_name, index)
    write_exr(path, image, spec.channels, spec.dtype)
    return path


def read_frame(shot: str | os.PathLike, pass_name: str, index: int, size: tuple[int, int] | None = None
               ) -> np.ndarray:
    """Read frame `index` of a pass as H×W×C in the contract's dtype; with `size` (width, height, what
    capture.json says), a frame of another size is refused naming the file."""
    spec = PASSES[pass_name]
    path = frame_path(shot, pass_name, index)
    image = read_exr(path, spec.channels, spec.dtype)
    if size is not None and image.shape[:2] != (size[1], size[0]):
        raise CaptureError(f"{path}: frame is {image.shape[1]}×{image.shape[0]}, capture.json says "
                           f"{size[0]}×{size[1]}")
    return image


# ----------------------------------------------------------------------------------------------- metadata I/O


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_problem(path: str | os.PathLike, expected: str | None) -> str | None:
    """Why frame file `path` is not the file capture.json recorded (`expected`: its sha256 there), or None."""
    if expected is None:
        return f"{path}: no checksum recorded in {META_FILE}"
    if sha256_file(path) != expected:
        return f"{path}: sha256 does not match {META_FILE} (file changed after capture)"
    return None


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
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CaptureError(f"{path}: not valid JSON (nested too deeply)") from None
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

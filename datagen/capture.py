"""The capture stage: render or capture every shot of a scene manifest into `<out>/<scene>/<shot>/` (qw-capture/1).

``builtin`` scenes are drawn by `qw.datagen.builtin.renderer`; ``ue4`` scenes are handed to
`qw.ue_capture.launcher.capture_scene`. Builtin shots are resumable: every finished frame is kept (its four EXRs are
written atomically), an interrupted shot continues where it stopped, and the shot is complete only when
``capture.json`` lands (written last by `capture_format.finish_capture`). With a Dask scheduler address each
shot is one task.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qw.datagen import capture_format as cf
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import SceneManifest, Shot

log = logging.getLogger(__name__)

BACKEND = "builtin"
PROGRESS_FILE = ".qw-capture-settings.json"  # settings of an unfinished shot; resuming requires the same ones
# GL_MAX_TEXTURE_SIZE and GL_MAX_RENDERBUFFER_SIZE are at least 16384 in any OpenGL 4.5 context (the renderer's
# targets are textures and a depth renderbuffer of the frame's size): the largest frame every context can draw.
MAX_SIDE = 16384
_GL_LOCK = threading.Lock()  # one GL context per process: threads of a Dask worker take turns


# ------------------------------------------------------------------------------------------------ options


def parse_frames(frames: str | tuple[int, int] | None, shot: Shot) -> tuple[int, int]:
    """Stored-frame range [a, b) of `shot` from 'A:B' ('A:' = to the end), counted from the shot's first frame."""
    if frames is None:
        return 0, shot.frame_count
    if isinstance(frames, str):
        a, sep, b = frames.partition(":")
        try:
            a_i, b_i = int(a or 0), int(b) if b else shot.frame_count
        except ValueError:
            a_i, b_i, sep = 0, 0, ""
        if not sep:
            raise QwError(f"--frames {frames!r}: expected A:B (frames A..B-1 of each shot, counted from 0)")
        frames = (a_i, b_i)
    a, b = frames
    if not 0 <= a < b <= shot.frame_count:
        raise QwError(f"frames {a}:{b} outside shot {shot.name!r}, which has {shot.frame_count} frames "
                      f"(0:{shot.frame_count})")
    return a, b


def parse_resolution(resolution: str | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if resolution is None:
        return tuple(default)
    if isinstance(resolution, str):
        w, sep, h = resolution.lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit()):
            raise QwError(f"--resolution {resolution!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
        resolution = int(w), int(h)
    if min(resolution) < 1:
        raise QwError(f"resolution {resolution} must be positive")
    if max(resolution) > MAX_SIDE:
        raise QwError(f"resolution {resolution[0]}x{resolution[1]}: the builtin renderer draws at most {MAX_SIDE} "
                      f"pixels per side (the largest render target every OpenGL 4.5 context supports)")
    return tuple(resolution)


def reference_grid(samples: int) -> int:
    """Samples per axis of the N×N stratified reference; `samples` must be a square."""
    n = math.isqrt(samples)
    if samples < 1 or n * n != samples:
        raise QwError(f"reference samples {samples}: the builtin renderer takes a square number (16, 64, 256 …)")
    return n


# ------------------------------------------------------------------------------------------------ one shot


@dataclass(frozen=True)
class ShotJob:
    """Everything one builtin shot needs; plain data so it can travel to a Dask worker."""

    manifest: SceneManifest
    shot: str
    out: str
    first: int  # stored-frame range [first, last) within the shot
    last: int
    width: int
    height: int
    reference_spp: int

    @property
    def path(self) -> Path:
        return cf.shot_dir(self.out, self.manifest.name, self.shot)

    @property
    def source_frames(self) -> list[int]:
        start = self.manifest.shot(self.shot).start
        return list(range(start + self.first, start + self.last))

    def settings(self) -> dict[str, Any]:
        """Every setting that affects pixels, as JSON values (recorded in capture.json; a resume must match it)."""
        m, cap = self.manifest, self.manifest.capture
        assert m.builtin is not None
        n = reference_grid(self.reference_spp)
        settings = {"builder": m.builtin.builder, "params": m.builtin.params, "seed": m.seed,
                    "resolution": [self.width, self.height],
                    "source_frames": [self.source_frames[0], self.source_frames[-1] + 1],
                    "jitter": cap.jitter, "jitter_cycle": cap.jitter_cycle, "mip_bias": cap.mip_bias,
                    "reference_grid": [n, n], "reference_mip_bias": cap.mip_bias - math.log2(n),
                    "motion_depth_sampling": "unjittered pixel centres", "targets": "RGBA32F/RG32F/R32F"}
        return json.loads(json.dumps(settings))  # tuples → lists: compares equal to what was read back


def _jitter(job: ShotJob, source_frame: int) -> tuple[float, float]:
    from qw.datagen.builtin.renderer import halton_jitter

    cap = job.manifest.capture
    if cap.jitter == "none":
        return 0.0, 0.0
    if cap.jitter != "halton23":
        raise QwError(f"scene {job.manifest.name!r}: jitter {cap.jitter!r} is not available in the builtin renderer "
                      "(use halton23 or none)")
    return halton_jitter(source_frame, cap.jitter_cycle)


def _stored_cuts(job: ShotJob, path_cuts: list[int]) -> list[int]:
    """Stored indices of the shot's camera cuts; the manifest and the camera path must agree on them."""
    shot = job.manifest.shot(job.shot)
    in_shot = sorted(c for c in path_cuts if shot.start < c < shot.end)
    listed = sorted(c for c in shot.camera_cuts if c != shot.start)
    if in_shot != listed:
        raise QwError(f"scene {job.manifest.name!r} shot {shot.name!r}: camera_cuts {listed} differ from the cuts "
                      f"of the builder's camera path {in_shot}; list exactly the path's cut frames")
    return [c - shot.start - job.first for c in in_shot if shot.start + job.first < c < shot.start + job.last]


def _recorded_settings(marker: Path) -> Any:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None  # unreadable or damaged: not our settings


def resume_record(job: ShotJob, backend_version: str) -> dict[str, Any]:
    """What an unfinished shot records for its resume: the settings, and the renderer that drew its frames (another
    OpenGL driver or qw version may round pixels differently, and one shot must not mix them)."""
    return {**job.settings(), "backend_version": backend_version}


def _check_resumable(job: ShotJob, backend_version: str) -> None:
    """Never mix frames rendered with other settings or by another renderer into this shot; record ours for the
    next resume.

    The unfinished frames of an earlier run with another record (in PROGRESS_FILE) are removed: the shot was never
    complete, so nothing finished is lost, and a failed run does not block a retry with other settings. Frames
    without that record are not ours to delete: refused.
    """
    path, record = job.path, resume_record(job, backend_version)
    marker = path / PROGRESS_FILE
    frames = [f for p in cf.PASSES if (path / p).is_dir() for f in (path / p).glob("*.exr")]
    if marker.is_file():
        if _recorded_settings(marker) != record:
            log.warning("%s: discarding %d unfinished frame file(s) rendered with other settings or by another "
                        "renderer", path, len(frames))
            for frame in frames:
                frame.unlink()
    elif frames:
        raise CaptureError(f"{path}: holds frames but no {PROGRESS_FILE}; delete the directory or use another --out")
    for stale in [*path.glob(".*.tmp"), *path.glob("*/.*.tmp")]:  # a killed writer's temp files
        stale.unlink()
    with cf.atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))


def _already_complete(job: ShotJob) -> bool:
    if not cf.is_complete(job.path):
        return False
    meta = cf.load_meta(job.path)
    if meta.backend.settings != job.settings():
        raise QwError(f"{job.path}: already complete with other settings; delete it or use another --out")
    return True


def render_shot(job: ShotJob, progress: bool = True) -> Path:
    """Render (or finish) one builtin shot; returns its directory. Safe to call again after an interruption; a
    second writer of the same shot at the same time is refused (`capture_format.shot_lock`)."""
    with cf.shot_lock(job.path):
        return _render_shot(job, progress)


def _render_shot(job: ShotJob, progress: bool) -> Path:
    if _already_complete(job):
        log.info("%s: already complete", job.path)
        return job.path
    from qw.datagen.builtin.renderer import Renderer
    from qw.datagen.builtin.scenes import build_scene

    m = job.manifest
    assert m.builtin is not None
    scene = build_scene(m.builtin.builder, m.builtin.params, m.seed, where=f"scene {m.name!r}")
    cuts = _stored_cuts(job, scene.camera.cuts)
    offsets = [_jitter(job, f) for f in job.source_frames]
    n = reference_grid(job.reference_spp)
    with _GL_LOCK:
        renderer = Renderer(scene, job.width, job.height, mip_bias=m.capture.mip_bias)
        try:
            version = _backend_version(renderer)
            _check_resumable(job, version)
            cameras = _render_frames(job, renderer, offsets, set(scene.camera.cuts), n, progress)
        finally:
            renderer.release()
    meta = cf.CaptureMeta(
        scene=m.name, shot=job.shot,
        backend=cf.BackendInfo(name=BACKEND, version=version, settings=job.settings()),
        width=job.width, height=job.height, fps=m.capture.fps, frame_count=len(job.source_frames),
        source_frames=job.source_frames,
        jitter=cf.JitterInfo(sequence=m.capture.jitter, cycle=m.capture.jitter_cycle,
                             offsets=offsets),
        reference=cf.ReferenceInfo(samples=n * n, filter=f"box ({n}x{n} stratified sub-pixel samples)"),
        camera_cuts=cuts, cameras=cameras, seed=m.seed, extra={"split": m.shot(job.shot).split})
    cf.finish_capture(job.path, meta)
    (job.path / PROGRESS_FILE).unlink()
    return job.path


def _render_frames(job: ShotJob, renderer, offsets: list[tuple[float, float]], path_cuts: set[int], n: int,
                   progress: bool) -> list[cf.CameraFrame]:
    """Render every missing frame of the shot; returns the camera of every stored frame."""
    cameras = []
    for i, frame in enumerate(tqdm(job.source_frames, desc=f"{job.manifest.name}/{job.shot}", unit="frame",
                                   disable=None if progress else True)):
        view, proj = renderer.camera(frame)
        cameras.append(cf.CameraFrame(view=view.tolist(), projection=proj.tolist()))
        if cf.frame_intact(job.path, i, job.width, job.height):  # decoded, not only present: truncation is caught
            continue
        # at a camera cut the history is invalid: motion is taken against the frame itself (zero)
        motion, depth = renderer.render_gbuffer(frame, frame if frame in path_cuts else frame - 1)
        cf.write_frame(job.path, "color", i, renderer.render_color(frame, offsets[i]))
        cf.write_frame(job.path, "motion", i, motion)
        cf.write_frame(job.path, "depth", i, depth)
        cf.write_frame(job.path, "reference", i, renderer.render_reference(frame, n))
    return cameras


def _backend_version(renderer) -> str:
    from qw.datagen import __version__

    info = renderer.ctx.info
    return f"qw {__version__}; {info['GL_RENDERER']}; OpenGL {info['GL_VERSION']}"


# ------------------------------------------------------------------------------------------------ scene


def select_shots(manifest: SceneManifest, shots: list[str] | str | None) -> list[Shot]:
    if isinstance(shots, str):
        shots = [shots]
    if shots is None:
        return list(manifest.shots)
    if not shots:  # an empty selection (a filter that matched nothing) must not mean every shot
        raise QwError(f"scene {manifest.name!r}: the list of shots is empty; pass None for every shot")
    # a shot named twice is one shot: two jobs for it would race for its lock on a cluster
    return [manifest.shot(name) for name in dict.fromkeys(shots)]


def _run_on_dask(jobs: list[ShotJob], client, progress: bool) -> list[Path]:
    """One task per shot on the client's cluster; tqdm is driven from as_completed. A lost cluster is one line;
    finished frames are kept and the same command resumes."""
    from distributed import as_completed

    from qw.datagen.cluster import cluster_failures

    futures = [client.submit(render_shot, job, False, pure=False) for job in jobs]
    with cluster_failures("finished frames are kept and the same command resumes the capture"):
        for future in tqdm(as_completed(futures), total=len(futures), desc="shots", unit="shot",
                           disable=None if progress else True):
            future.result()  # re-raises a worker's error here
    return [job.path for job in jobs]


def capture_builtin(manifest: SceneManifest, out: Path, *, shots: list[str] | str | None = None,
                    frames: str | tuple[int, int] | None = None, resolution: str | tuple[int, int] | None = None,
                    reference_spp: int | None = None, scheduler: str | None = None, cluster: str | None = None,
                    workers: int | None = None, progress: bool = True) -> list[Path]:
    """Render every (or the named) shot of a builtin scene into ``<out>/<scene>/<shot>/`` (see `qw.capture_scene`)."""
    width, height = parse_resolution(resolution, manifest.capture.resolution)
    # `is None`, not `or`: 0 is a bad value to refuse, not a request for the manifest's
    spp = manifest.capture.reference_samples if reference_spp is None else reference_spp
    reference_grid(spp)
    if workers and not cluster:
        raise QwError(f"--workers {workers} sizes a new Dask cluster: give --cluster local or slurm with it"
                      + (" (--scheduler uses an existing cluster's workers)" if scheduler else ""))
    jobs = [ShotJob(manifest, s.name, str(out), *parse_frames(frames, s), width, height, spp)
            for s in select_shots(manifest, shots)]
    if scheduler or cluster:
        from qw.datagen.cluster import dask_client

        with dask_client(cluster or "local", workers, scheduler) as client:
            return _run_on_dask(jobs, client, progress)
    return [render_shot(job, progress) for job in jobs]

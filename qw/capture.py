"""`qw capture`: one entry for both backends. Builtin scenes are rendered by `qw.datagen.capture`; Unreal scenes are
captured by `qw.ue_capture.launcher`. The dispatch lives here, above both, so the data layer never imports a backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qw.datagen.capture import BACKEND, capture_builtin, select_shots
from qw.datagen.errors import QwError
from qw.datagen.manifests import SceneManifest, find_scene
from qw.ue_capture.launcher import capture_scene as capture_unreal


def _capture_unreal(manifest: SceneManifest, out: Path, shots, scheduler, progress, unsupported: dict,
                    backend_options: dict) -> list[Path]:
    given = [k for k, v in unsupported.items() if v is not None]
    if given:
        raise QwError(f"scene {manifest.name!r} is an Unreal scene: {', '.join(given)} apply only to builtin scenes "
                      "(the manifest sets what Unreal renders)")
    return capture_unreal(manifest, out, shots=[s.name for s in select_shots(manifest, shots)],
                          scheduler=scheduler, progress=progress, **backend_options)


def capture_scene(scene: str | SceneManifest, out: str | Path, *, shots: list[str] | str | None = None,
                  frames: str | tuple[int, int] | None = None, resolution: str | tuple[int, int] | None = None,
                  reference_spp: int | None = None, scheduler: str | None = None, cluster: str | None = None,
                  workers: int | None = None, progress: bool = True, **backend_options: Any) -> list[Path]:
    """Capture every (or the named) shot of `scene` into ``<out>/<scene>/<shot>/``; returns the shot directories.

    `scene` is a manifest name (``builtin_fence``, ``kite`` …), a manifest path or a `SceneManifest`. `frames`
    ('A:B') selects stored frames A..B-1 of every shot, `resolution` ('WxH') and `reference_spp` (a square)
    override the manifest. With `scheduler` (a Dask scheduler address) or `cluster` (builtin scenes: a new 'local'
    or 'slurm' cluster of `workers` worker processes, see `qw.datagen.cluster`) shots become tasks.
    `backend_options` (dry_run, editor, project, timeout, retries) go to the Unreal backend.
    """
    manifest = scene if isinstance(scene, SceneManifest) else find_scene(scene)
    out = Path(out)
    if manifest.backend != BACKEND:
        if cluster or workers:
            option = "--cluster" if cluster else "--workers"
            raise QwError(f"scene {manifest.name!r} is an Unreal scene: {option} applies to builtin scenes; run "
                          "Unreal shots on an existing Dask cluster with --scheduler")
        return _capture_unreal(manifest, out, shots, scheduler, progress,
                               {"frames": frames, "resolution": resolution, "reference_spp": reference_spp},
                               backend_options)
    given = sorted(k for k, v in backend_options.items() if v not in (None, False))
    if given:
        raise QwError(f"scene {manifest.name!r} is a builtin scene: {', '.join(given)} apply only to Unreal scenes")
    return capture_builtin(manifest, out, shots=shots, frames=frames, resolution=resolution,
                           reference_spp=reference_spp, scheduler=scheduler, cluster=cluster, workers=workers,
                           progress=progress)

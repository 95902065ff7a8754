"""`qw scenes`: every scene manifest with its size and whether it can be captured on this machine, and why not."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qw.datagen.errors import QwError
from qw.datagen.manifests import MANIFEST_ROOT, SPLITS, ManifestError, SceneManifest, find_dataset, \
    load_scene_manifest, scene_manifest_path, scene_paths


@dataclass
class SceneStatus:
    manifest: SceneManifest
    path: Path
    blockers: list[str]  # why it cannot run here; empty when it can
    budget: int | None = None  # blocks in the chosen dataset, when one was given

    @property
    def runnable(self) -> bool:
        return not self.blockers

    def split_counts(self) -> str:
        shots = self.manifest.shots
        return "/".join(str(sum(s.split == split for s in shots)) for split in SPLITS)


@functools.cache
def opengl_blocker() -> str | None:
    """Why the builtin renderer cannot get its OpenGL context (EGL) here; None when it can."""
    from qw.datagen.builtin.renderer import gl_context

    try:
        gl_context()
    except QwError as exc:
        return str(exc)
    return None


def unreal_blockers(manifest: SceneManifest) -> list[str]:
    """What is missing to capture an Unreal scene: the editor ($QW_UE4_EDITOR), the project file, its map (given or
    the project's default), the camera (authored keys or an existing sequence), a supported engine version."""
    from qw.ue_capture.launcher import check_sequence_filled, engine_major, resolve_editor, resolve_map, resolve_project

    assert manifest.unreal is not None
    checks: list[Callable[[], Any]] = [lambda: resolve_editor(None),
                                       lambda: resolve_map(manifest, resolve_project(manifest, None, must_exist=True)),
                                       lambda: check_sequence_filled(manifest),
                                       lambda: engine_major(manifest.unreal.engine_version)]
    blockers = []
    for check in checks:
        try:
            check()
        except QwError as exc:
            blockers.append(str(exc))
    return blockers


def scene_blockers(manifest: SceneManifest) -> list[str]:
    if manifest.backend == "builtin":
        blocker = opengl_blocker()
        return [blocker] if blocker else []
    return unreal_blockers(manifest)


def scene_statuses(root: str | os.PathLike = MANIFEST_ROOT, dataset: str | None = None) -> list[SceneStatus]:
    """Every scene manifest under `root`/scenes (or only a dataset's scenes, with their block budgets)."""
    root = Path(root)
    paths = scene_paths(root)
    budgets: dict[str, int] = {}
    if dataset is not None:
        spec = find_dataset(dataset, root)
        paths, unknown = {}, []
        for s in spec.scenes:  # the same name lookup as `qw datagen build`, so both accept the same manifests
            try:
                paths[s.scene] = scene_manifest_path(s.scene, root)
            except ManifestError:
                unknown.append(s.scene)
        if unknown:
            raise ManifestError(f"dataset {spec.name!r}: no scene manifest for {unknown} in {root / 'scenes'}")
        budgets = {s.scene: s.budget for s in spec.scenes}
    statuses = []
    for name, path in paths.items():
        manifest = load_scene_manifest(path)
        statuses.append(SceneStatus(manifest, path, scene_blockers(manifest), budgets.get(name)))
    return statuses


def scenes_json(root: str | os.PathLike = MANIFEST_ROOT, dataset: str | None = None) -> list[dict[str, Any]]:
    """`qw scenes --json`: one object per scene manifest, the same facts as the table."""
    return [{"name": s.manifest.name, "backend": s.manifest.backend, "path": str(s.path),
             "shots": len(s.manifest.shots), "frames": sum(shot.frame_count for shot in s.manifest.shots),
             "splits": dict(zip(SPLITS, map(int, s.split_counts().split("/")))),
             "budget": s.budget, "runnable": s.runnable, "blockers": s.blockers}
            for s in scene_statuses(root, dataset)]


def print_scenes(root: str | os.PathLike = MANIFEST_ROOT, dataset: str | None = None,
                 echo: Callable[[str], Any] = print) -> None:
    """The `qw scenes` table: name, backend, shots, frames, splits, (budget), whether it runs here and why not."""
    statuses = scene_statuses(root, dataset)
    if not statuses:
        raise QwError(f"{Path(root) / 'scenes'}: no scene manifests (*.yaml) found")
    width = max(len("scene"), *(len(s.manifest.name) for s in statuses))
    budget_head = f"  {'budget':>6}" if dataset else ""
    echo(f"{'scene':<{width}}  {'backend':<7}  {'shots':>5}  {'frames':>6}  {'train/val/test':>14}{budget_head}  runs here")
    for status in statuses:
        m = status.manifest
        frames = sum(s.frame_count for s in m.shots)
        budget = f"  {status.budget:>6}" if dataset else ""
        echo(f"{m.name:<{width}}  {m.backend:<7}  {len(m.shots):>5}  {frames:>6}  {status.split_counts():>14}{budget}"
             f"  {'yes' if status.runnable else 'no'}")
        for blocker in status.blockers:
            echo(f"    - {blocker}")

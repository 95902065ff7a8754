"""Synthetic captures and manifests for the planner, builder and block-store tests.

Pixels are random but reproducible (seeded per shot and frame), different in every pass, so a crop taken from
the wrong frame, pass, position or block is caught. Scene manifests go to a temporary manifests root.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

from qw.datagen.capture_format import (BackendInfo, CaptureMeta, JitterInfo, ReferenceInfo, finish_capture,
                                    read_frame, write_frame)
from qw.datagen.manifests import DatasetManifest
from qw.datagen.tile import MARKERS

TILE = 32


def capture_meta(scene: str, shot: str, frames: int, width: int, height: int, cuts: list[int] = ()) -> CaptureMeta:
    """Metadata of a shot (no pixels): Halton-like jitter that differs per frame, cuts as given."""
    offsets = [((i * 0.37) % 1 - 0.5, (i * 0.61) % 1 - 0.5) for i in range(frames)]
    return CaptureMeta(scene=scene, shot=shot, backend=BackendInfo(name="test"), width=width, height=height,
                       fps=30, frame_count=frames, source_frames=list(range(100, 100 + frames)),
                       jitter=JitterInfo(sequence="engine", offsets=offsets),
                       reference=ReferenceInfo(samples=4, filter="box"), camera_cuts=list(cuts))


def write_shot(root: Path, meta: CaptureMeta, finish: bool = True) -> Path:
    """Write every frame of every pass (random but seeded) and, if `finish`, capture.json."""
    shot = root / meta.scene / meta.shot
    seed = int(hashlib.sha256(f"{meta.scene}/{meta.shot}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    h, w = meta.height, meta.width
    for i in range(meta.frame_count):
        write_frame(shot, "color", i, rng.uniform(0, 8, (h, w, 3)))
        write_frame(shot, "reference", i, rng.uniform(0, 8, (h, w, 3)))
        write_frame(shot, "motion", i, rng.normal(0, 30, (h, w, 2)))
        depth = rng.uniform(1, 1000, (h, w, 1))
        depth[0, 0] = 1e6  # beyond float16: stored clipped
        write_frame(shot, "depth", i, depth)
    if finish:
        finish_capture(shot, meta)
    return shot


def write_scene_manifest(manifests: Path, scene: str, shots: dict[str, tuple[int, str]],
                         resolution: tuple[int, int] = (96, 64)) -> Path:
    """A builtin-backend scene manifest listing `shots` (name → (frames, split))."""
    path = manifests / "scenes" / f"{scene.lower()}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    starts = np.cumsum([0, *(f for f, _ in shots.values())]).tolist()  # one after the other: shots never overlap
    path.write_text(yaml.safe_dump({
        "name": scene, "backend": "builtin", "builtin": {"builder": "synthetic"},
        "capture": {"resolution": list(resolution), "fps": 30},
        "shots": [{"name": n, "start": a, "end": a + f, "split": split}
                  for a, (n, (f, split)) in zip(starts, shots.items())],
    }))
    return path


def dataset(budgets: dict[str, int], *, seed: int = 0, tile: int = TILE, candidates: int | None = None,
            name: str = "test") -> DatasetManifest:
    return DatasetManifest(name=name, seed=seed, frames=8, tile=tile, total_blocks=sum(budgets.values()),
                           scenes=[{"scene": s, "budget": b} for s, b in budgets.items()],
                           content_filter={"candidates": candidates} if candidates else None)


def write_dataset(path: Path, manifest: DatasetManifest) -> Path:
    path.write_text(yaml.safe_dump(manifest.model_dump(mode="json")))
    return path


def small_captures(root: Path, manifests: Path) -> dict[str, CaptureMeta]:
    """Two scenes, three shots (one with a camera cut), 96×64 frames: a store of tens of 32×32×8 blocks."""
    metas = {
        "alpha/s1": capture_meta("alpha", "s1", 20, 96, 64, cuts=[9]),
        "alpha/s2": capture_meta("alpha", "s2", 12, 96, 64),
        "beta/s1": capture_meta("beta", "s1", 17, 80, 48),
    }
    write_scene_manifest(manifests, "alpha", {"s1": (20, "train"), "s2": (12, "val")})
    write_scene_manifest(manifests, "beta", {"s1": (17, "train")}, (80, 48))
    for meta in metas.values():
        write_shot(root, meta)
    return metas


def expected_crop(shot: Path, pass_name: str, first: int, frames: int, y: int, x: int, tile: int) -> np.ndarray:
    """The source crop of a block, (T, C, tile, tile) float16, computed independently of the builder."""
    out = []
    for i in range(first, first + frames):
        img = read_frame(shot, pass_name, i)[y:y + tile, x:x + tile].astype(np.float32)
        if pass_name == "depth":
            img = np.minimum(img, 65504.0)
        out.append(img.astype(np.float16).transpose(2, 0, 1))
    return np.stack(out)


def marker_chunks(store: Path) -> list[Path]:
    """The build's completion markers written so far. zarr writes a chunk as a `.partial` file, then renames it:
    one caught before the rename is not written yet (and is gone a moment later)."""
    folder = store / MARKERS
    return [p for p in folder.glob("c.*") if not p.name.endswith(".partial")] if folder.is_dir() else []

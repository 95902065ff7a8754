"""The planner: which blocks a store holds, as a pure function of (dataset manifest, capture metadata, seed).

A *task* is one window of T consecutive stored frames of one shot plus every block cut from it, so the executor
decodes each source frame once. Windows

* never contain a camera cut except at their first frame (whose history is invalid in every block anyway),
  unless a shot has no cut-free stretch of T frames: then its windows cross cuts, with the history marked;
* never overlap: each cut-free segment of a shot is divided into disjoint windows, behind a random phase;
* share each scene's block budget evenly (counts differ by at most one; the extra blocks go to random windows).

Each block gets ``candidates`` tile positions (distinct where the frame allows). Without a content filter
there is one; with one the executor keeps the candidate whose crop differs most from the reference (it needs
pixels, so it runs there), and the plan stays a pure function of its inputs. Splits come from the scene
manifests, per shot, so a shot never spans two splits; only shots of the dataset's ``splits`` (default: train)
contribute blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qw.datagen.capture_format import META_FILE, PASSES, CaptureMeta, frame_files, is_complete, \
    load_meta, sha256_file, shot_folders
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import MANIFEST_ROOT, DatasetManifest, ManifestError, find_dataset, find_scene, name_key

PLAN_FORMAT = "qw-plan/1"
log = logging.getLogger(__name__)


def candidates(dataset: DatasetManifest) -> int:
    """Tile positions tried per block: the content filter's count, 1 without a filter."""
    return dataset.content_filter.candidates if dataset.content_filter else 1


@dataclass(frozen=True)
class CaptureInfo:
    """One complete shot as the planner sees it: metadata only, no pixels."""

    path: str  # relative to the captures root, e.g. "Kite/shot01"
    meta: CaptureMeta
    sha256: str  # of capture.json, which holds the checksum of every frame file
    split: str


@dataclass(frozen=True)
class Task:
    """One window of `frames` consecutive frames of shot `shot`, and the blocks cut from it."""

    index: int
    shot: int
    start: int
    first_block: int
    positions: np.ndarray  # (blocks, candidates, 2) int32: top-left y, x of each candidate tile

    @property
    def num_blocks(self) -> int:
        return len(self.positions)

    @property
    def block_indices(self) -> range:
        return range(self.first_block, self.first_block + self.num_blocks)


@dataclass(frozen=True)
class Plan:
    dataset: DatasetManifest
    seed: int
    shots: list[CaptureInfo]
    tasks: list[Task]

    @property
    def frames(self) -> int:
        return self.dataset.frames

    @property
    def tile(self) -> int:
        return self.dataset.tile

    @property
    def candidates(self) -> int:
        return candidates(self.dataset)

    @property
    def num_blocks(self) -> int:
        return sum(t.num_blocks for t in self.tasks)

    def shot_table(self) -> list[dict]:
        return [{"scene": c.meta.scene, "shot": c.meta.shot, "split": c.split, "path": c.path,
                 "width": c.meta.width, "height": c.meta.height, "frame_count": c.meta.frame_count,
                 "capture_sha256": c.sha256} for c in self.shots]

    def scene_table(self) -> list[dict]:
        return [{"name": s.scene, "budget": s.budget} for s in self.dataset.scenes]

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT, "dataset": self.dataset.model_dump(mode="json"), "seed": self.seed,
            "scenes": self.scene_table(), "shots": self.shot_table(),
            "tasks": [{"shot": t.shot, "start": t.start, "first_block": t.first_block,
                       "positions": t.positions.tolist()} for t in self.tasks],
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of the plan: same inputs and seed ⇒ same digest."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def blocks_by(self, key: str) -> Counter:
        """Block counts per 'scene', 'shot' ("scene/shot") or 'split'."""
        counts: Counter = Counter()
        for t in self.tasks:
            c = self.shots[t.shot]
            counts[{"scene": c.meta.scene, "shot": c.path, "split": c.split}[key]] += t.num_blocks
        return counts

    def summary_data(self) -> dict[str, Any]:
        """The plan's summary as plain data: what `summary` prints and `qw datagen plan --json` writes."""
        d = self.dataset
        by_scene, windows = self.blocks_by("scene"), Counter(self.shots[t.shot].meta.scene for t in self.tasks)
        return {
            "dataset": d.name, "blocks": self.num_blocks, "frames": d.frames, "tile": d.tile,
            "windows": len(self.tasks), "shots": len(self.shots), "seed": self.seed, "candidates": self.candidates,
            "scenes": [{"scene": s.scene, "budget": s.budget, "blocks": by_scene[s.scene],
                        "shots": sum(c.meta.scene == s.scene for c in self.shots), "windows": windows[s.scene]}
                       for s in d.scenes],
            "splits": dict(sorted(self.blocks_by("split").items())),
            "windows_crossing_cut": sum(crosses_cut(self.shots[t.shot].meta, t.start, self.frames)
                                        for t in self.tasks),
            "digest": self.digest(),
        }

    def summary(self) -> str:
        s = self.summary_data()
        lines = [f"plan for dataset {s['dataset']!r}: {s['blocks']} blocks of {s['frames']}×{s['tile']}×{s['tile']}, "
                 f"{s['windows']} windows, {s['shots']} shots, seed {s['seed']}, "
                 f"{s['candidates']} candidate position(s) per block",
                 f"{'scene':<20} {'budget':>7} {'blocks':>7} {'shots':>6} {'windows':>8}"]
        lines += [f"{r['scene']:<20} {r['budget']:>7} {r['blocks']:>7} {r['shots']:>6} {r['windows']:>8}"
                  for r in s["scenes"]]
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
        if s["windows_crossing_cut"]:
            lines.append(f"{s['windows_crossing_cut']} window(s) cross a camera cut (shots too short between cuts); "
                         f"their blocks mark the cut frame's history invalid")
        lines.append(f"digest: {s['digest']}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- inputs


def _incomplete_shots(folders: list[Path]) -> list[Path]:
    """Of the shot folders `folders`, those with frames but no capture.json: interrupted or still-running
    captures."""
    return [d for d in folders if not is_complete(d) and any((d / next(iter(PASSES))).glob("*.exr"))]


def shot_splits(scenes: set[str], manifests_root: Path | None = None) -> dict[tuple[str, str], str]:
    """(scene, shot) → split, from the scene manifests."""
    splits = {}
    for scene in sorted(scenes):
        try:
            manifest = find_scene(scene, Path(manifests_root or MANIFEST_ROOT))
        except ManifestError as exc:
            raise QwError(f"{exc} (the split of each shot comes from its scene manifest)") from None
        splits.update({(scene, s.name): s.split for s in manifest.shots})
    return splits


def load_captures(captures_root: str | Path, scenes: list[str] | None = None,
                  manifests_root: Path | None = None) -> list[CaptureInfo]:
    """Read the capture.json of every shot under `captures_root` (of `scenes`, when given); no pixels.
    Incomplete shots are an error, not silently skipped."""
    root = Path(captures_root)
    if not root.is_dir():
        raise CaptureError(f"{root}: captures directory not found")
    folders = shot_folders(root)  # one walk of the tree: both the incomplete and the complete shots come from it
    incomplete = _incomplete_shots(folders)
    if incomplete:
        raise CaptureError(f"{incomplete[0] / META_FILE}: missing: the capture is incomplete or was interrupted "
                           f"({len(incomplete)} incomplete shot(s) under {root})")
    metas = [(shot, load_meta(shot)) for shot in folders if is_complete(shot)]
    keys = None if scenes is None else {name_key(s) for s in scenes}
    metas = [(shot, m) for shot, m in metas if keys is None or name_key(m.scene) in keys]
    splits = shot_splits({m.scene for _, m in metas}, manifests_root)
    infos = []
    for shot, meta in metas:
        if (meta.scene, meta.shot) not in splits:
            raise QwError(f"{shot / META_FILE}: shot {meta.shot!r} is not in the manifest of scene {meta.scene!r}")
        infos.append(CaptureInfo(shot.relative_to(root).as_posix() if shot != root else shot.name, meta,
                                 sha256_file(shot / META_FILE), splits[meta.scene, meta.shot]))
    return infos


# ----------------------------------------------------------------------------------------------- planning


def _check_scene_shots(scene: str, shots: list[CaptureInfo], tile: int) -> None:
    if not shots:
        raise QwError(f"scene {scene!r}: the dataset gives it a budget but no capture of a shot of it in the "
                      f"dataset's splits was found")
    sizes = {(c.meta.width, c.meta.height): c.path for c in shots}
    if len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise CaptureError(f"resolution mismatch between shots of scene {scene!r}: {pa} is {a[0]}×{a[1]}, "
                           f"{pb} is {b[0]}×{b[1]}")
    (w, h), path = next(iter(sizes.items()))
    if min(w, h) < tile:
        raise QwError(f"{path}: frames are {w}×{h}, smaller than the {tile}-pixel tile")


def _disjoint_windows(bounds: list[int], frames: int, rng: np.random.Generator) -> list[int]:
    starts: list[int] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = (b - a) // frames
        if n:
            phase = int(rng.integers(0, b - a - n * frames + 1))
            starts.extend(int(s) for s in a + phase + frames * np.arange(n))
    return starts


def window_starts(meta: CaptureMeta, frames: int, rng: np.random.Generator) -> list[int]:
    """Disjoint windows of `frames` frames inside each cut-free segment, behind a random phase per segment.

    A shot whose cuts leave no segment that long still contributes: its windows then cross cuts, and the
    blocks mark the history of each cut frame invalid (``history_valid``), as the contract allows.
    """
    starts = _disjoint_windows(sorted({0, *meta.camera_cuts}) + [meta.frame_count], frames, rng)
    if not starts and meta.camera_cuts:
        log.info("%s/%s: no %d frames without a camera cut; its windows cross cuts", meta.scene, meta.shot, frames)
        starts = _disjoint_windows([0, meta.frame_count], frames, rng)
    return starts


def crosses_cut(meta: CaptureMeta, start: int, frames: int) -> bool:
    return any(start < c < start + frames for c in meta.camera_cuts)


def _positions(count: int, meta: CaptureMeta, tile: int, rng: np.random.Generator) -> np.ndarray:
    """`count` tile positions inside the frame, distinct when the frame has that many."""
    nx, ny = meta.width - tile + 1, meta.height - tile + 1
    idx = rng.choice(nx * ny, size=count, replace=count > nx * ny)
    return np.stack([idx // nx, idx % nx], axis=-1).astype(np.int32)


def _check_budget(scene: str, budget: int, windows: int, meta: CaptureMeta, dataset: DatasetManifest) -> None:
    """Refuse a budget that must repeat blocks; warn about one whose blocks must overlap.

    A window of a W×H shot has (W − tile + 1)(H − tile + 1) tile positions, and each block takes `candidates` of
    them, all distinct: past ``windows × ⌊positions / candidates⌋`` blocks (the budget is spread evenly over the
    windows) some block would repeat another's pixels exactly, which only duplicates data. Below that, blocks stop
    being disjoint once the budget exceeds ``windows × ⌊W/tile⌋ × ⌊H/tile⌋``: still distinct crops, but shifted
    copies of the same pixels, worth a warning (the paper's store takes about one block per disjoint tile).
    """
    tile = dataset.tile
    distinct = windows * ((meta.width - tile + 1) * (meta.height - tile + 1) // candidates(dataset))
    disjoint = windows * (meta.width // tile) * (meta.height // tile)
    source = f"{windows} window(s) of {dataset.frames} frames at {meta.width}×{meta.height}"
    if budget > distinct:
        raise QwError(f"scene {scene!r}: budget {budget} is more than the {distinct} distinct blocks its captures "
                      f"can give ({source}, {candidates(dataset)} candidate position(s) per block); lower the "
                      f"budget or capture more frames")
    if budget > disjoint:
        log.warning("scene %r: budget %d is more than the %d blocks that share no pixel (%s): blocks overlap, "
                    "each pixel is in %.1f blocks on average", scene, budget, disjoint, source,
                    budget * tile * tile / (windows * meta.width * meta.height))


def _block_counts(budget: int, n_windows: int, rng: np.random.Generator) -> np.ndarray:
    """Split `budget` blocks over windows as evenly as possible; the remainder goes to random windows."""
    counts = np.full(n_windows, budget // n_windows)
    counts[rng.choice(n_windows, size=budget % n_windows, replace=False)] += 1
    return counts


def make_plan(dataset: DatasetManifest, captures: list[CaptureInfo], seed: int | None = None) -> Plan:
    """The blocks of a store. Pure: same manifest, capture metadata and seed ⇒ same plan (and digest)."""
    seed = dataset.seed if seed is None else seed
    # Scene names match as manifest names do (ignoring case, spaces, underscores): a shot imported with
    # `--scene Infiltrator` belongs to the dataset's 'infiltrator'. It is planned under the dataset's spelling.
    spelling = {name_key(s.scene): s.scene for s in dataset.scenes}
    captures = [replace(c, meta=c.meta.model_copy(update={"scene": spelling[name_key(c.meta.scene)]}))
                if name_key(c.meta.scene) in spelling else c for c in captures]
    scene_names = {s.scene for s in dataset.scenes}
    shots = sorted((c for c in captures if c.meta.scene in scene_names and c.split in dataset.splits),
                   key=lambda c: ([s.scene for s in dataset.scenes].index(c.meta.scene), c.meta.shot))
    dup = [k for k, n in Counter((c.meta.scene, c.meta.shot) for c in shots).items() if n > 1]
    if dup:
        raise QwError(f"shot {dup[0][1]!r} of scene {dup[0][0]!r} was captured more than once under the captures "
                      f"root: {[c.path for c in shots if (c.meta.scene, c.meta.shot) == dup[0]]}")
    spaces = {c.meta.color_space: c.path for c in shots}
    if len(spaces) > 1:
        (a, pa), (b, pb) = list(spaces.items())[:2]
        raise CaptureError(f"colour space mismatch: {pa} holds {a!r}, {pb} holds {b!r}; one store holds one space")
    k, tasks, next_block = candidates(dataset), [], 0
    for scene in dataset.scenes:
        if not scene.budget:
            continue
        scene_shots = [i for i, c in enumerate(shots) if c.meta.scene == scene.scene]
        _check_scene_shots(scene.scene, [shots[i] for i in scene_shots], dataset.tile)
        # One generator per scene (seeded by its name) so editing one scene's budget leaves the others alone.
        rng = np.random.default_rng([seed, zlib.crc32(scene.scene.encode())])
        windows = [(i, s) for i in scene_shots for s in window_starts(shots[i].meta, dataset.frames, rng)]
        if not windows:
            raise QwError(f"scene {scene.scene!r}: no shot of the dataset's splits has {dataset.frames} frames")
        _check_budget(scene.scene, scene.budget, len(windows), shots[scene_shots[0]].meta, dataset)
        for (shot, start), count in zip(windows, _block_counts(scene.budget, len(windows), rng)):
            if count:
                pos = _positions(int(count) * k, shots[shot].meta, dataset.tile, rng).reshape(int(count), k, 2)
                tasks.append(Task(len(tasks), shot, start, next_block, pos))
                next_block += int(count)
    return Plan(dataset, seed, shots, tasks)


def plan_from_files(dataset: DatasetManifest, captures_root: str | Path, seed: int | None = None,
                    manifests_root: Path | None = None) -> Plan:
    """Load the capture metadata of the dataset's scenes and plan the store."""
    return make_plan(dataset, load_captures(captures_root, [s.scene for s in dataset.scenes], manifests_root), seed)


def check_frames(plan: Plan, captures_root: str | Path) -> None:
    """Every frame file of every planned shot exists (a missing one fails before any work starts)."""
    for c in plan.shots:
        shot = Path(captures_root) / c.path
        for rel in frame_files(shot, c.meta.frame_count):
            if not (shot / rel).is_file():
                raise CaptureError(f"{shot / rel}: missing frame ({META_FILE} lists {c.meta.frame_count} frames)")


def write_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps({**plan.to_dict(), "digest": plan.digest()}, indent=1) + "\n")


def print_plan(dataset_file: str | Path, captures_root: str | Path, *, seed: int | None = None,
               out: str | Path | None = None, echo=print, as_json: bool = False) -> Plan:
    """`qw datagen plan`: plan from files, print the summary (as JSON with `as_json`), optionally write the plan."""
    plan = plan_from_files(find_dataset(str(dataset_file)), captures_root, seed)
    if out:
        write_plan(plan, out)
    if as_json:
        echo(json.dumps({**plan.summary_data(), "written_to": str(out) if out else None}, indent=2))
        return plan
    echo(plan.summary())
    if out:
        echo(f"plan written to {out}")
    return plan

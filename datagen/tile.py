"""The builder: cut the planned blocks out of the captures and write them into a `qw-blocks/2` store with Dask.

One Dask task per window (see `qw.datagen.plan`): it decodes each of the window's source frames once, pass by pass,
crops every block of the window and writes whole chunks (one block per chunk, so no two tasks share a chunk; the
store is not sharded). Only file names and tile positions travel through the scheduler, never pixels.

Resumable: a task writes the checksums of its blocks (one row of ``_task_checksums``, computed from the crops it
writes) and then its completion marker (one row of the ``_tasks`` array, which also records the content filter's
choices) after its blocks; a rerun skips marked tasks. The small per-block arrays are written from the
plan and the markers when every task is done, and ``complete`` is set last. Everything written is a function of
the plan and the pixels, so a build killed at any moment and rerun gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import zarr
from tqdm import tqdm

from qw.datagen.block_store import ARRAYS, IMAGE_ARRAYS, BlockStore, checksum, create_array, create_store, inner_chunk, \
    open_array, open_store, read_array, seal, store_filesystem
from qw.datagen.capture_format import PASSES, checksum_problem, frame_path, read_frame
from qw.datagen.cluster import check_cluster, cluster_failures, dask_client
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import DatasetManifest, find_dataset
from qw.datagen.plan import Plan, check_frames, plan_from_files

log = logging.getLogger(__name__)

MARKERS = "_tasks"  # (tasks, max blocks per task) int16: chosen candidate per block, -1 padding; unwritten = todo
TASK_CHECKSUMS = "_task_checksums"  # (tasks, max blocks per task, image arrays) uint32: checksums of written blocks
NOT_DONE = -2
FLOAT16_MAX = float(np.finfo(np.float16).max)


# ----------------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class TaskSpec:
    """Everything one task needs; small (no pixels), sent through the scheduler."""

    store_url: str
    storage_options: dict | None
    plan_digest: str  # part of the worker's store-handle cache key: a rebuilt store at the same URL is reopened
    index: int
    shot_dir: str
    width: int
    height: int
    start: int
    frames: int
    tile: int
    first_block: int
    positions: np.ndarray  # (blocks, candidates, 2)
    marker_width: int
    inner_chunk: int | None = None  # the store's layout (sharded inner chunk size), also part of the cache key
    checksums: dict[str, str] = field(default_factory=dict)  # the window's frames: path in the shot → sha256


@functools.lru_cache(maxsize=4)
def _open_arrays(url: str, options_json: str, plan_digest: str, inner: int | None) -> dict[str, zarr.Array]:
    """The store's arrays, opened once per worker process (per store URL, plan and layout: a handle holds the
    array's chunking and codecs, so one kept from a store since rebuilt in another layout would write chunks the
    new store cannot decode)."""
    store = open_store(url, mode="r+", require_complete=False, storage_options=json.loads(options_json))
    return {name: store.array(name) for name in (*IMAGE_ARRAYS, MARKERS, TASK_CHECKSUMS)}


def _nonfinite_count(image: np.ndarray, allow_inf: bool) -> int:
    """NaN and −inf (and, unless allowed, +inf) values in a frame. float16 fast path: a value is finite iff its
    exponent bits are not all ones, one integer max instead of np.isfinite (8× cheaper, measured)."""
    if image.dtype == np.float16 and (image.view(np.uint16) & 0x7FFF).max() < 0x7C00:
        return 0
    return int((np.isnan(image) | np.isneginf(image) if allow_inf else ~np.isfinite(image)).sum())


def _decode_window(spec: TaskSpec, pass_name: str) -> np.ndarray:
    """(T, H, W, C) frames of one pass, each checked for size, finite values and its capture.json sha256."""
    frames = None
    for k, i in enumerate(range(spec.start, spec.start + spec.frames)):
        path = frame_path(spec.shot_dir, pass_name, i)
        image = read_frame(spec.shot_dir, pass_name, i, (spec.width, spec.height))
        # Depth may be +inf (sky); anything else non-finite (−inf too) is a broken render.
        bad = _nonfinite_count(image, allow_inf=pass_name == "depth")
        if bad:
            raise CaptureError(f"{path}: {bad} NaN/inf value(s) in the frame")
        # A frame edited after capture can still decode: only its checksum tells. Hashed after the decode, so
        # the file comes from the page cache (measured: ~1/5 of the frame's decode, ~2 % of a block's build CPU).
        problem = checksum_problem(path, spec.checksums.get(path.relative_to(spec.shot_dir).as_posix()))
        if problem:
            raise CaptureError(problem)
        if frames is None:  # filled in place: np.stack of a list would hold the window twice
            frames = np.empty((spec.frames, *image.shape), image.dtype)
        frames[k] = image
    return frames


def _crop(frames: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    """(T, C, tile, tile) float16 crop; float32 passes are rounded to float16, depth clipped to its range."""
    crop = frames[:, y:y + tile, x:x + tile, :].transpose(0, 3, 1, 2)
    if crop.dtype != np.float16:
        crop = np.clip(crop, -FLOAT16_MAX, FLOAT16_MAX)
    return np.ascontiguousarray(crop, dtype=np.float16)


ALIASING_STRIDE = 2  # the content filter scores every 2nd pixel of every 2nd row: 4× less work, unbiased


def aliasing_map(color: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Sum over frames and channels of |tm(color) − tm(reference)|, tm(x) = x / (1 + x) (Reinhard, on values
    clipped at 0), so edges count and HDR highlights do not dominate; at the pixels (y, x) with y and x multiples
    of ALIASING_STRIDE. Computed frame by frame as |c − r| / ((1 + c)(1 + r)), the same value in fewer passes."""
    s = ALIASING_STRIDE
    total = np.zeros(color[0, ::s, ::s, 0].shape, np.float32)
    for c, r in zip(color[:, ::s, ::s], reference[:, ::s, ::s]):
        c, r = np.maximum(c, 0, dtype=np.float32), np.maximum(r, 0, dtype=np.float32)
        diff = np.abs(c - r)
        c += 1
        r += 1
        c *= r
        diff /= c
        for channel in range(diff.shape[-1]):  # faster than a sum over the short, strided last axis
            total += diff[..., channel]
    return total


def choose_candidates(spec: TaskSpec, color: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index of the kept candidate of every block: the most aliased one (the first when there is one).

    Tile sums come from an integral image of the aliasing map: O(1) per candidate after one pass over the window.
    """
    if spec.positions.shape[1] == 1:
        return np.zeros(len(spec.positions), np.int16)
    integral = np.pad(aliasing_map(color, reference).cumsum(0, dtype=np.float64).cumsum(1), ((1, 0), (1, 0)))
    # map rows/columns k cover pixels k·stride; those inside [p, p + tile) are k in [ceil(p/s), ceil((p+tile)/s))
    s = ALIASING_STRIDE
    y0, x0 = -(-spec.positions[..., 0] // s), -(-spec.positions[..., 1] // s)
    y1, x1 = -(-(spec.positions[..., 0] + spec.tile) // s), -(-(spec.positions[..., 1] + spec.tile) // s)
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.argmax(sums, axis=1).astype(np.int16)


def run_task(spec: TaskSpec) -> int:
    """Write every block of one window, then its blocks' checksums, then its completion marker. Returns the number
    of blocks."""
    try:
        arrays = _open_arrays(spec.store_url, json.dumps(spec.storage_options or {}, sort_keys=True),
                              spec.plan_digest, spec.inner_chunk)
    except QwError as exc:  # the store was created by the client: a worker that cannot open it does not see it
        raise QwError(f"a Dask worker on {socket.gethostname()} cannot open the store: {exc}; every worker must "
                      f"reach the store at the path or URL the build was given") from None
    try:
        return _write_task(spec, arrays)
    except OSError as exc:  # disk full, quota, lost mount: one line; the task stays unmarked and a rerun redoes it
        raise QwError(f"{spec.store_url}: cannot write the blocks of window {spec.index} "
                      f"({exc.strerror or exc})") from None


def _write_task(spec: TaskSpec, arrays: dict[str, zarr.Array]) -> int:
    decoded = {name: _decode_window(spec, name) for name in ("color", "reference")}
    chosen = choose_candidates(spec, decoded["color"], decoded["reference"])
    origins = spec.positions[np.arange(len(chosen)), chosen]
    sums = np.zeros((1, spec.marker_width, len(IMAGE_ARRAYS)), np.uint32)
    for k, name in enumerate(IMAGE_ARRAYS):  # at most two passes of the window in memory (colour and reference first)
        frames = decoded.pop(name) if name in decoded else _decode_window(spec, name)
        for block, (y, x) in enumerate(origins):
            crop = _crop(frames, int(y), int(x), spec.tile)
            sums[0, block, k] = checksum(crop)
            arrays[name][spec.first_block + block] = crop
        del frames
    arrays[TASK_CHECKSUMS][spec.index:spec.index + 1] = sums
    marker = np.full((1, spec.marker_width), -1, np.int16)
    marker[0, :len(chosen)] = chosen
    arrays[MARKERS][spec.index:spec.index + 1] = marker
    return len(chosen)


# ----------------------------------------------------------------------------------------------- the store


def _location_in_use(url: str, storage_options: dict | None) -> bool:
    """True when something is at `url`: a file, or a folder with entries."""
    fs, path = store_filesystem(url, storage_options)
    try:
        return fs.exists(path) and (not fs.isdir(path) or bool(fs.ls(path, detail=False)))
    except PermissionError as exc:
        raise QwError(f"{url}: cannot read the store location ({exc})") from None


def store_attrs(plan: Plan) -> dict:
    return {
        "dataset": plan.dataset.model_dump(mode="json"), "seed": plan.seed, "plan_digest": plan.digest(),
        "scenes": plan.scene_table(), "shots": plan.shot_table(),
        "split": {"unit": "shot", "blocks": dict(sorted(plan.blocks_by("split").items()))},
        "content_filter": plan.dataset.content_filter.model_dump() if plan.dataset.content_filter else None,
    }


def _expected_shapes(plan: Plan) -> dict[str, tuple[int, ...]]:
    shapes = {name: spec.shape(plan.num_blocks, plan.frames, plan.tile) for name, spec in ARRAYS.items()}
    return {**shapes, MARKERS: (len(plan.tasks), _marker_width(plan)),
            TASK_CHECKSUMS: (len(plan.tasks), _marker_width(plan), len(IMAGE_ARRAYS))}


def _marker_width(plan: Plan) -> int:
    return max(t.num_blocks for t in plan.tasks)


def _resumable(store: BlockStore, plan: Plan, overwrite: bool) -> bool:
    """True when `store` is this plan's store with every array in place (an interrupted or finished build)."""
    digest = store.attrs.get("plan_digest")
    if digest != plan.digest():
        if not overwrite and store.complete:  # an unfinished build of another plan is not kept: a retry may differ
            raise QwError(f"{store.url}: block store was built from another plan (digest {str(digest)[:12]}…, this "
                          f"plan {plan.digest()[:12]}…); use a new --store or pass --overwrite")
        return False
    try:
        shapes = {name: tuple(open_array(store.group, name, store.url).shape) for name in _expected_shapes(plan)}
    except KeyError:
        return False  # creation was interrupted before every array existed: no task ran yet
    return shapes == _expected_shapes(plan)


def _remove_partial_writes(url: str) -> None:
    """zarr's local store writes each file as ``<name>.<uuid>.partial`` and renames it; a build killed mid-write
    leaves that temporary file behind. Remove them so a resumed store holds exactly the files of a clean one.
    (Object stores write whole objects: nothing to clean.)"""
    if "://" not in url:
        for leftover in Path(url).rglob("*.partial"):
            leftover.unlink(missing_ok=True)


def _abandoned_creation(url: str, storage_options: dict | None) -> bool:
    """True for a zarr group without attributes that holds nothing but a block store's own arrays: what a store
    creation raced by another build left (before builds took a lock). It holds no finished store, so it is
    recreated like an interrupted build of another plan, rather than refused as a foreign folder."""
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options if "://" in url else None)
        return not dict(group.attrs) and set(group.keys()) <= {*ARRAYS, MARKERS, TASK_CHECKSUMS}
    except Exception:  # not a zarr group (or unreadable): not ours to recreate
        return False


def _check_layout(store: BlockStore, inner: int | None) -> None:
    """A resumed build keeps its store's layout: asking for another one is refused, not silently ignored."""
    stored = inner_chunk(store.array("color"))
    if stored != inner:
        def name(size: int | None) -> str:
            return f"sharded, {size}² inner chunks" if size else "one chunk per block"
        raise QwError(f"{store.url}: the unfinished store's layout is {name(stored)}, this build asks for "
                      f"{name(inner)}; rerun with the same --inner-chunk or pass --overwrite")


def prepare_store(plan: Plan, url: str, storage_options: dict | None = None, overwrite: bool = False,
                  inner: int | None = None) -> BlockStore:
    """Open this plan's store to resume it, or create it (`inner`: the sharded layout's inner chunk size). Never
    overwrites anything that is not a qw store."""
    if _location_in_use(url, storage_options) and not _abandoned_creation(url, storage_options):
        store = open_store(url, mode="r+", require_complete=False, storage_options=storage_options)
        if _resumable(store, plan, overwrite) and (not overwrite or inner_chunk(store.array("color")) == inner):
            _check_layout(store, inner)
            _remove_partial_writes(url)
            return store
    try:
        group = create_store(url, plan.num_blocks, store_attrs(plan), t=plan.frames, tile=plan.tile,
                             inner_chunk=inner, storage_options=storage_options)
        shapes = _expected_shapes(plan)
        create_array(group, TASK_CHECKSUMS, shape=shapes[TASK_CHECKSUMS], chunks=(1, *shapes[TASK_CHECKSUMS][1:]),
                     dtype="uint32", fill_value=0)
        create_array(group, MARKERS, shape=shapes[MARKERS], chunks=(1, _marker_width(plan)), dtype="int16",
                     fill_value=NOT_DONE)
    except OSError as exc:
        raise QwError(f"{url}: cannot create the block store ({exc.strerror or exc})") from None
    return BlockStore(url, group, storage_options)


def done_tasks(store: BlockStore) -> np.ndarray:
    """(tasks,) bool: tasks whose completion marker is written."""
    return _read_build_record(store, MARKERS, "the build's progress", (slice(None), 0)) != NOT_DONE


def _read_build_record(store: BlockStore, name: str, role: str, selection: Any = slice(None)) -> np.ndarray:
    """Read one of the arrays an unfinished build keeps. One that cannot be read (a damaged copy of an unfinished
    store) is a QwError naming the array, as zarr's and the codecs' errors would be a traceback."""
    array = store.array(name)
    try:
        return read_array(array, selection)
    except Exception as exc:
        raise QwError(f"{store.url}: array {name!r} ({role}) cannot be read ({type(exc).__name__}: {exc}); "
                      "remove the store and build it again") from None


def finalize(store: BlockStore, plan: Plan) -> None:
    """Write the per-block arrays from the plan and the markers, then seal the store with the checksums the tasks
    recorded (marking it complete, last)."""
    chosen = _read_build_record(store, MARKERS, "the build's progress")
    task_sums = _read_build_record(store, TASK_CHECKSUMS, "the tasks' checksums")
    sums = np.zeros((plan.num_blocks, len(IMAGE_ARRAYS)), np.uint32)
    origin = np.zeros((plan.num_blocks, 5), np.int32)
    jitter = np.zeros((plan.num_blocks, plan.frames, 2), np.float32)
    history = np.zeros((plan.num_blocks, plan.frames), bool)
    for task in plan.tasks:
        meta, blocks = plan.shots[task.shot].meta, task.block_indices
        window = slice(task.start, task.start + plan.frames)
        yx = task.positions[np.arange(task.num_blocks), chosen[task.index, :task.num_blocks]]
        scene = [s.scene for s in plan.dataset.scenes].index(meta.scene)
        origin[blocks] = np.column_stack([np.full((task.num_blocks, 3), (scene, task.shot, task.start)), yx])
        jitter[blocks] = meta.jitter_array()[window]
        valid = meta.history_valid()[window]
        valid[0] = False  # a block's first frame has no history inside the block
        history[blocks] = valid
        sums[blocks] = task_sums[task.index, :task.num_blocks]
    for name, values in (("origin", origin), ("jitter", jitter), ("history_valid", history)):
        store.group[name][:] = values
    seal(store.group, sums)


# ----------------------------------------------------------------------------------------------- Dask


def task_specs(plan: Plan, captures_root: str | Path, url: str, storage_options: dict | None,
               inner: int | None = None) -> list[TaskSpec]:
    """One spec per task. Local paths are made absolute: a worker resolves a relative one against its own working
    directory, which on a cluster started elsewhere is not the client's."""
    root, digest, width = Path(captures_root).resolve(), plan.digest(), _marker_width(plan)
    url = url if "://" in url else os.path.abspath(url)
    specs = []
    for t in plan.tasks:
        shot = plan.shots[t.shot]
        recorded = shot.meta.checksums
        window = (frame_path("", p, i).as_posix() for p in PASSES for i in range(t.start, t.start + plan.frames))
        sums = {rel: recorded[rel] for rel in window if rel in recorded}
        specs.append(TaskSpec(url, storage_options, digest, t.index, str(root / shot.path), shot.meta.width,
                              shot.meta.height, t.start, plan.frames, plan.tile, t.first_block, t.positions, width,
                              inner, sums))
    return specs


def run_tasks(client, specs: list[TaskSpec], progress: tqdm) -> None:
    """Submit the tasks and advance the progress bar by blocks as they finish; the first error cancels the rest."""
    from distributed import as_completed

    futures = [client.submit(run_task, s, key=f"qw-block-task-{s.index}", pure=False) for s in specs]
    try:
        with cluster_failures("finished windows are kept and the same command resumes the build"):
            for future in as_completed(futures):
                progress.update(future.result())
    except BaseException:
        try:
            client.cancel(futures)
        except OSError:  # the scheduler is gone: nothing left to cancel
            pass
        raise


def build_store(dataset: DatasetManifest | str | Path, captures_root: str | Path, store_url: str, *,
                cluster: str = "local", workers: int | None = None, scheduler: str | None = None,
                storage_options: dict | None = None,
                progress: bool = True, seed: int | None = None, overwrite: bool = False,
                manifests_root: Path | None = None, inner_chunk: int | None = None) -> BlockStore:
    """Plan and build (or resume) the block store for `dataset` from the captures under `captures_root`, on a new
    Dask cluster of kind `cluster` ('local', 'slurm'; see `qw.datagen.cluster`) or the one at `scheduler`.
    `inner_chunk`: the sharded layout (one shard per block, so still one writer per file) with inner chunks of
    that many pixels square, for crops that read part of a block."""
    if not isinstance(dataset, DatasetManifest):
        dataset = find_dataset(str(dataset))
    url = str(store_url)
    check_cluster(cluster, scheduler, workers)
    plan = plan_from_files(dataset, captures_root, seed, manifests_root)
    check_frames(plan, captures_root)
    with build_lock(url):
        return _build(plan, captures_root, url, cluster, workers, scheduler, storage_options, progress, overwrite,
                      inner_chunk)


@contextlib.contextmanager
def build_lock(url: str):
    """Hold the writer lock of a local store (``.<name>.qw-lock`` beside it, an flock via `filelock`): a second build
    of the same path is refused at once instead of racing the first (two `--overwrite` builds deleted each other's
    arrays). The kernel drops the lock when its process dies, so a killed build never blocks its resume. Object
    stores have no locks: one build per URL is the user's to ensure."""
    if "://" in url and not url.startswith("file://"):
        yield
        return
    path = Path(url.removeprefix("file://")).absolute()
    lock = filelock.FileLock(path.parent / f".{path.name}.qw-lock", timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except filelock.Timeout:
        raise QwError(f"{url}: another build is writing this store; wait for it to finish") from None
    except OSError as exc:  # the parent is a file, read-only, ...
        raise QwError(f"{url}: cannot create the block store ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        lock.release()


def _build(plan: Plan, captures_root: str | Path, url: str, cluster: str, workers: int | None, scheduler: str | None,
           storage_options: dict | None, progress: bool, overwrite: bool, inner_chunk: int | None) -> BlockStore:
    store = prepare_store(plan, url, storage_options, overwrite, inner_chunk)
    if store.complete:
        log.info("%s: already complete (%d blocks)", url, plan.num_blocks)
        return store
    done = done_tasks(store)
    todo = [s for s, d in zip(task_specs(plan, captures_root, url, storage_options, inner_chunk), done) if not d]
    initial = sum(t.num_blocks for t, d in zip(plan.tasks, done) if d)
    with tqdm(total=plan.num_blocks, initial=initial, unit="block", desc="build", disable=None if progress else True) as bar:
        if todo:
            with dask_client(cluster, workers, scheduler) as client:
                run_tasks(client, todo, bar)
    finalize(store, plan)
    return store

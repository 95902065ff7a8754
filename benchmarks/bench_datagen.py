"""Block-store build speed: the Dask pipeline with 1 and 2 workers next to the floor measured in the same run.

The floor is the work no builder can skip, in a plain loop on one core: decode every planned source frame once,
then compress and write every block once (same codec, same chunks). The pipeline is `build_store` end to end
(planning, LocalCluster start, tasks, finalize). Reported: blocks/s, CPU seconds per block (the CPU time of all
processes, robust on a shared machine), ratio to the floor per core, 1→2 worker speed-up, peak RSS of a worker
(at two store sizes, to show it does not grow with the number of blocks) and projected CPU time for 13712 blocks.

Synthetic captures (smooth textures + noise, so they compress like renders) are written once to --workdir.
Default: 1280×720 frames with 12 blocks per 8-frame window, the paper plan's block density (1920×1080 with ~27).

    .venv/bin/python benchmarks/bench_datagen.py [--shots 4] [--frames 32] [--candidates 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from qw.datagen.block_store import IMAGE_ARRAYS, create_store
from qw.datagen.capture_format import BackendInfo, CaptureMeta, JitterInfo, ReferenceInfo, finish_capture, read_frame, \
    write_frame
from qw.datagen.manifests import DatasetManifest
from qw.datagen.plan import Plan, plan_from_files
from qw.datagen.tile import build_store, prepare_store, run_task, task_specs

PAPER_BLOCKS = 13712


def smooth_frames(rng: np.random.Generator, h: int, w: int, channels: int, scale: float) -> np.ndarray:
    """Sum of random sinusoids plus a little noise: compresses about like a rendered frame."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, channels), np.float32)
    for c in range(channels):
        for _ in range(4):
            fx, fy, phase = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0, 6.3)
            out[..., c] += np.sin(fx * xs + fy * ys + phase)
    return scale * (1.2 + 0.3 * out + rng.normal(0, 0.05, out.shape).astype(np.float32))


def write_captures(root: Path, shots: int, frames: int, width: int, height: int) -> None:
    manifest = {"name": "bench", "backend": "builtin", "builtin": {"builder": "bench"},
                "capture": {"resolution": [width, height], "fps": 30},
                # one shot after another: a scene manifest refuses shots that share source frames
                "shots": [{"name": f"s{i}", "start": i * frames, "end": (i + 1) * frames, "split": "train"}
                          for i in range(shots)]}
    (root / "manifests" / "scenes").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / "scenes" / "bench.yaml").write_text(yaml.safe_dump(manifest))
    rng = np.random.default_rng(0)
    for s in range(shots):
        shot = root / "captures" / "bench" / f"s{s}"
        if (shot / "capture.json").is_file():
            continue
        for i in range(frames):
            write_frame(shot, "color", i, smooth_frames(rng, height, width, 3, 2.0))
            write_frame(shot, "reference", i, smooth_frames(rng, height, width, 3, 2.0))
            write_frame(shot, "motion", i, smooth_frames(rng, height, width, 2, 5.0))
            write_frame(shot, "depth", i, smooth_frames(rng, height, width, 1, 300.0))
        finish_capture(shot, CaptureMeta(
            scene="bench", shot=f"s{s}", backend=BackendInfo(name="bench"), width=width, height=height, fps=30,
            frame_count=frames, source_frames=list(range(frames)), jitter=JitterInfo(sequence="none"),
            reference=ReferenceInfo(samples=1, filter="box")))


def dataset_for(shots: int, windows_per_shot: int, blocks_per_window: int, candidates: int) -> DatasetManifest:
    budget = shots * windows_per_shot * blocks_per_window
    return DatasetManifest(name="bench", seed=1, total_blocks=budget, scenes=[{"scene": "bench", "budget": budget}],
                           content_filter={"candidates": candidates} if candidates > 1 else None)


def floor(plan: Plan, captures: Path, url: str, tasks: int | None = None,
          blocks_per_task: int | None = None) -> tuple[float, float, float]:
    """The work no builder can skip, in a plain loop on one core, for the first `tasks` windows of the plan (all by
    default): decode each planned frame once, compress + write each block once (only the first `blocks_per_task`
    of each window, to sample a dense plan quickly). Returns (wall s, CPU s per block, of which decoding) where a
    window's decoding is shared by all its planned blocks."""
    group = create_store(url, plan.num_blocks, {}, t=plan.frames, tile=plan.tile)
    arrays = {name: group[name] for name in IMAGE_ARRAYS}
    wall, decode_cpu, encode_cpu, planned, written = time.perf_counter(), 0.0, 0.0, 0, 0
    t = plan.tile
    for task in plan.tasks[:tasks]:
        shot = captures / plan.shots[task.shot].path
        positions = task.positions[:blocks_per_task, 0]
        for name in IMAGE_ARRAYS:
            cpu = time.process_time()
            frames = np.stack([read_frame(shot, name, i) for i in range(task.start, task.start + plan.frames)])
            decode_cpu += time.process_time() - cpu
            cpu = time.process_time()
            for b, (y, x) in enumerate(positions):
                arrays[name][task.first_block + b] = np.ascontiguousarray(
                    frames[:, y:y + t, x:x + t].transpose(0, 3, 1, 2), dtype=np.float16)
            encode_cpu += time.process_time() - cpu
        planned, written = planned + task.num_blocks, written + len(positions)
    return time.perf_counter() - wall, decode_cpu / planned + encode_cpu / written, decode_cpu / planned


def tasks_in_process(ds: DatasetManifest, root: Path, url: str) -> tuple[float, float]:
    """The builder's tasks run one after the other in this process, without Dask: (wall s, CPU s). The gap to
    the floor is the builder's own overhead (checks, content filter); the gap to the pipeline is Dask's."""
    plan = plan_from_files(ds, root / "captures", manifests_root=root / "manifests")
    prepare_store(plan, url)
    specs = task_specs(plan, root / "captures", url, None)
    wall, cpu = time.perf_counter(), time.process_time()
    for spec in specs:
        run_task(spec)
    return time.perf_counter() - wall, time.process_time() - cpu


class PeakWorkerRSS:
    """Largest resident set size of any child process (the Dask workers) while the block runs."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        me = psutil.Process()
        while not self._stop.wait(0.05):
            for child in me.children(recursive=True):
                try:
                    self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def busy_fraction(stream: list[dict]) -> float:
    """Share of the task phase (first task start to last task end) the workers spent computing, averaged over
    workers: near 100% means the pipeline never starves a worker; a shared machine then limits the speed-up."""
    computes = [(t["worker"], s["start"], s["stop"]) for t in stream for s in t["startstops"]
                if s["action"] == "compute"]
    span = max(c[2] for c in computes) - min(c[1] for c in computes)
    workers = {c[0] for c in computes}
    return sum(c[2] - c[1] for c in computes) / (span * len(workers))


def pipeline(ds: DatasetManifest, root: Path, url: str, workers: int) -> tuple[float, float, int, float]:
    """build_store end to end on a LocalCluster made as the builder makes it: (wall s, CPU s of this process and its
    workers, peak worker RSS bytes, worker busy fraction)."""
    from distributed import get_task_stream

    from qw.datagen.cluster import dask_client

    cpu0, kids0, wall = time.process_time(), children_cpu(), time.perf_counter()
    with PeakWorkerRSS() as rss, dask_client(workers=workers) as client, get_task_stream(client) as stream:
        build_store(ds, root / "captures", url, scheduler=client.scheduler.address, progress=False,
                    manifests_root=root / "manifests")
    wall = time.perf_counter() - wall
    return wall, (time.process_time() - cpu0) + (children_cpu() - kids0), rss.peak, busy_fraction(stream.data)


def cluster_fixed_cost(workers: int) -> tuple[float, float]:
    """Start a LocalCluster as the builder does, import the builder in every worker, stop it: (wall s, CPU s)."""
    import importlib

    from qw.datagen.cluster import dask_client

    cpu0, kids0, wall = time.process_time(), children_cpu(), time.perf_counter()
    with dask_client(workers=workers) as client:
        client.run(importlib.import_module, "qw.datagen.tile")
    return time.perf_counter() - wall, (time.process_time() - cpu0) + (children_cpu() - kids0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--frames", type=int, default=32, help="frames per shot (windows per shot = frames // 8)")
    ap.add_argument("--resolution", default="1280x720")
    ap.add_argument("--blocks-per-window", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=1, help="content-filter candidates (paper manifest: 4)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "qw-bench-datagen")
    args = ap.parse_args()
    width, height = map(int, args.resolution.split("x"))

    root = args.workdir
    t0 = time.perf_counter()
    write_captures(root, args.shots, args.frames, width, height)
    print(f"captures: {args.shots} shots × {args.frames} frames at {width}×{height} in {root} "
          f"({time.perf_counter() - t0:.0f} s to write or reuse)")
    windows = args.frames // 8
    ds = dataset_for(args.shots, windows, args.blocks_per_window, args.candidates)
    half = dataset_for(max(args.shots // 2, 1), windows, args.blocks_per_window, args.candidates)
    n = ds.total_blocks

    rows = []
    stores = root / "stores"
    shutil.rmtree(stores, ignore_errors=True)
    plan = plan_from_files(ds, root / "captures", manifests_root=root / "manifests")
    wall, cpu_per_block, _ = floor(plan, root / "captures", str(stores / "floor.zarr"))
    cpu = cpu_per_block * n
    rows.append(("floor (plain loop, 1 core)", 1, wall, cpu, 0, 1.0))
    in_process = tasks_in_process(ds, root, str(stores / "in-process.zarr"))
    for workers in (1, 2):
        rows.append((f"pipeline, {workers} worker(s)", workers, *pipeline(ds, root, str(stores / f"w{workers}.zarr"),
                                                                          workers)))
    half_rss = pipeline(half, root, str(stores / "half.zarr"), 1)[2]

    floor_bps = n / rows[0][2]
    print(f"\n{n} blocks of 8×256×256, {args.blocks_per_window} per window, {args.candidates} candidate(s); "
          f"{os.cpu_count()} CPU cores, SHARED machine: wall times are noisy, CPU s/block less so")
    print(f"{'':<28} {'wall s':>7} {'blocks/s':>9} {'CPU s/blk':>10} {'vs floor/core':>14} {'peak worker RSS':>16} "
          f"{'workers busy':>13}")
    for name, workers, wall, cpu, rss, busy in rows:
        bps = n / wall
        print(f"{name:<28} {wall:>7.1f} {bps:>9.2f} {cpu / n:>10.3f} {bps / workers / floor_bps:>13.0%} "
              f"{(f'{rss / 2**20:.0f} MiB' if rss else '-'):>16} {busy:>12.0%}")
    print(f"{'builder tasks, no Dask':<28} {in_process[0]:>7.1f} {n / in_process[0]:>9.2f} {in_process[1] / n:>10.3f} "
          f"{n / in_process[0] / floor_bps:>13.0%}")
    speedup = rows[1][2] / rows[2][2]
    print(f"1 → 2 workers speed-up: {speedup:.2f}×")
    print(f"peak worker RSS: {rows[1][4] / 2**20:.0f} MiB for {n} blocks, {half_rss / 2**20:.0f} MiB for "
          f"{half.total_blocks} blocks")
    # The cluster's fixed cost (worker start-up, imports, shutdown) is paid once per build; what is left is the
    # cost per block that a 13712-block build pays.
    fixed_wall, fixed_cpu = cluster_fixed_cost(1)
    marginal_cpu, marginal_wall = (rows[1][3] - fixed_cpu) / n, (rows[1][2] - fixed_wall) / n
    print(f"fixed cost of a 1-worker cluster (start, imports, stop): {fixed_wall:.1f} s wall, {fixed_cpu:.1f} CPU s")
    print(f"floor / pipeline, 1 worker: CPU {rows[0][3] / rows[1][3]:.0%} whole build, "
          f"{rows[0][3] / n / marginal_cpu:.0%} without the fixed cost; wall {rows[0][2] / rows[1][2]:.0%} whole "
          f"build, {rows[0][2] / n / marginal_wall:.0%} without the fixed cost")
    per_block = marginal_cpu
    print(f"projected CPU time for {PAPER_BLOCKS} blocks at this block density: {per_block * PAPER_BLOCKS / 3600:.2f} "
          f"CPU hours ({per_block * PAPER_BLOCKS / 60:.0f} CPU minutes; floor: "
          f"{rows[0][3] / n * PAPER_BLOCKS / 60:.0f})")
    shutil.rmtree(stores, ignore_errors=True)


if __name__ == "__main__":
    main()

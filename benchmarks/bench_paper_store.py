"""One paper-size block store built for real from 1920×1080 captures, and what it costs to build and to read.

Measures, on captures that already exist (e.g. the builtin scenes rendered at 1920×1080, see the README section
"Building the block store"):

* planning time; the build (`build_store` on a LocalCluster, as `qw datagen build` runs it): wall time, CPU time of
  this process and every worker, CPU ms per block, peak worker RSS;
* the floor in the same run (decode each planned frame once + compress and write each block once, plain loop,
  one core) on the first `--floor-tasks` windows, and the build's CPU per block as a multiple of it;
* the store: bytes, file count, `qw datagen inspect` time, `qw datagen verify` time (every chunk of every image
  array read, decompressed and checked against its recorded crc32c) and random-read speed, one process and through
  the training DataLoader (`benchmarks/bench_train.py`'s: `BlockDataset` with augmentation + `BlockSampler`,
  `--loader-workers` workers, whole blocks);
* for a store smaller than `--extrapolate-to` blocks, the build numbers scaled per block to that size.

The store is deleted at the end unless --keep.

    .venv/bin/python benchmarks/bench_paper_store.py --dataset manifests/datasets/builtin-paper.yaml \\
        --captures /data/captures-1080p --store /data/paper.zarr [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from bench_datagen import PeakWorkerRSS, children_cpu, floor
from bench_train import bench_loader
from qw.datagen.block_store import open_store
from qw.datagen.inspect_store import inspect_report, verify_store
from qw.datagen.manifests import load_dataset_manifest
from qw.datagen.plan import plan_from_files
from qw.datagen.tile import build_store

PAPER_BLOCKS = 13712


def cpu_now() -> float:
    """CPU seconds of this process and of its finished children (the Dask workers once the cluster stops)."""
    return time.process_time() + children_cpu()


def store_files(path: Path) -> tuple[int, int]:
    """(files, bytes) under a local store."""
    files = size = 0
    for folder, _, names in os.walk(path):
        files += len(names)
        size += sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    return files, size


def random_reads(url: str, blocks: int, seed: int = 0) -> float:
    """Blocks/s of `BlockStore.read_block` (what training reads) at random indices, one process."""
    store = open_store(url)
    order = np.random.default_rng(seed).integers(0, store.num_blocks, blocks)
    start = time.perf_counter()
    for i in order:
        store.read_block(int(i))
    return blocks / (time.perf_counter() - start)


Row = tuple[str, str, str]


def build_rows(args: argparse.Namespace) -> tuple[list[Row], int, float, float]:
    """Plan, build and the floor: (rows, blocks, build wall s, build CPU s)."""
    ds = load_dataset_manifest(args.dataset)
    start = time.perf_counter()
    plan = plan_from_files(ds, args.captures)
    plan_s = time.perf_counter() - start
    n = plan.num_blocks
    frames = sum(c.meta.frame_count for c in plan.shots)
    rows = [("plan", f"{plan_s:.2f} s", f"{n} blocks of {plan.frames}×{plan.tile}², {len(plan.tasks)} windows "
                                        f"({n / len(plan.tasks):.0f} blocks each), {len(plan.shots)} shots, "
                                        f"{frames} frames")]
    cpu, start = cpu_now(), time.perf_counter()
    with PeakWorkerRSS() as rss:
        build_store(ds, args.captures, str(args.store), workers=args.workers, progress=False)
    wall, cpu = time.perf_counter() - start, cpu_now() - cpu
    rows.append(("build: wall", f"{wall:.0f} s", f"{args.workers} worker process(es), {n / wall:.2f} blocks/s"))
    rows.append(("build: CPU", f"{cpu:.0f} s", f"{cpu / n * 1e3:.0f} ms per block (all processes)"))
    rows.append(("build: peak worker RSS", f"{rss.peak / 2**20:.0f} MiB", ""))

    scratch = args.store.with_name(args.store.name + ".floor")
    _, floor_cpu, floor_decode = floor(plan, args.captures, str(scratch), args.floor_tasks, args.floor_blocks)
    shutil.rmtree(scratch)
    rows.append(("floor (plain loop, 1 core)", f"{floor_cpu * 1e3:.0f} ms/block",
                 f"{floor_decode * 1e3:.0f} ms of it decoding; {args.floor_blocks} blocks of {args.floor_tasks} "
                 f"window(s) compressed; build CPU = {cpu / n / floor_cpu:.2f}× the floor"))
    return rows, n, wall, cpu


def read_rows(args: argparse.Namespace) -> tuple[list[Row], int, int]:
    """The store on disk and reading it: (rows, files, bytes)."""
    url = str(args.store)
    n = open_store(url).num_blocks
    files, size = store_files(args.store)
    rows = [("store", f"{size / 1e9:.2f} GB", f"{n} blocks, {files} files, {size / n / 1e6:.2f} MB per block")]
    start = time.perf_counter()
    inspect_report(url)
    rows.append(("qw datagen inspect", f"{time.perf_counter() - start:.2f} s", ""))
    if not args.skip_verify:
        start = time.perf_counter()
        if not verify_store(url, workers=args.workers, echo=lambda line: None):
            raise SystemExit(f"{url}: qw datagen verify found problems")
        verify_s = time.perf_counter() - start
        rows.append(("qw datagen verify", f"{verify_s:.0f} s", f"{n / verify_s:.1f} blocks/s: every chunk read, "
                                                                 f"decompressed and checksummed, {args.workers} threads"))
    rows.append(("random read_block, 1 process", f"{random_reads(url, args.random_blocks):.1f} blocks/s",
                 "color, reference, motion, jitter, history_valid"))
    loader = bench_loader(url, args.loader_workers, 4, args.loader_batches)
    rows.append(("training DataLoader, random blocks", f"{loader:.1f} blocks/s",
                 f"{args.loader_workers} workers, batch 4, whole blocks, augmented"))
    return rows, files, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--captures", type=Path)
    ap.add_argument("--store", required=True, type=Path, help="local path; must not exist unless --read-only")
    ap.add_argument("--read-only", action="store_true", help="measure an existing store's read side only")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--floor-tasks", type=int, default=1, help="windows the floor is measured on")
    ap.add_argument("--floor-blocks", type=int, default=50, help="blocks compressed per floor window")
    ap.add_argument("--random-blocks", type=int, default=200)
    ap.add_argument("--loader-batches", type=int, default=50)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--extrapolate-to", type=int, default=PAPER_BLOCKS)
    ap.add_argument("--skip-verify", action="store_true", help="skip `qw datagen verify` (reads every chunk)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    args = ap.parse_args()
    if args.read_only:
        rows, _, _ = read_rows(args)
    else:
        if args.store.exists() or not (args.dataset and args.captures):
            raise SystemExit("give --dataset, --captures and a new --store (or --read-only)")
        rows, n, wall, cpu = build_rows(args)
        more, files, size = read_rows(args)
        rows += more
        if n < args.extrapolate_to:
            scale = args.extrapolate_to / n
            rows.append((f"extrapolated to {args.extrapolate_to} blocks", f"{wall * scale / 60:.0f} min wall",
                         f"{cpu * scale / 60:.0f} CPU min, {size * scale / 1e9:.1f} GB, {files * scale:.0f} files"))
        if not args.keep:
            shutil.rmtree(args.store)

    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.store}; {os.cpu_count()} CPU cores, shared machine (wall times are noisy, CPU times less so); "
          f"this process peaked at {peak_self:.0f} MiB\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'':<{width}} | {'value':>16} | notes |\n|{'-' * (width + 2)}|{'-' * 17}:|---|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>16} | {note} |")


if __name__ == "__main__":
    main()

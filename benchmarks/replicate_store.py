"""A full-size store assembled from a built fraction by hard links, to measure the read side at full size.

Building 13712 blocks takes hours on a small machine; the read side (file count, `qw datagen inspect`, listing,
random reads, the training loader) only needs the files. This script plans `--dataset` on `--captures` (timed),
creates its store (every array, provenance and plan digest, as the builder does), hard-links the image chunks of
the built fraction `--source` into it in turn (block i gets the chunks of source block i mod N: no disk space),
writes the completion markers (first candidate of each block) and each block's checksums (those the source
recorded for the block it was linked from, so every block reads back verified), finalizes it and marks it complete.
Pixels repeat every N blocks and do not match the plan's tile positions: for timing only, never for training.

    .venv/bin/python benchmarks/replicate_store.py --source frac.zarr --dataset manifests/datasets/builtin-paper.yaml \\
        --captures captures --out full.zarr
then  .venv/bin/python benchmarks/bench_paper_store.py --read-only --store full.zarr
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from datagen.block_store import CHECKSUMS, IMAGE_ARRAYS, BlockStore, open_store
from datagen.manifests import load_dataset_manifest
from datagen.plan import Plan, plan_from_files
from datagen.tile import MARKERS, TASK_CHECKSUMS, finalize, prepare_store


def replicate(source: BlockStore, plan: Plan, store: BlockStore) -> None:
    """Fill `plan`'s new local store `store` (from `prepare_store`) from the complete local store `source` by hard
    links (block i gets the chunks and the recorded checksums of source block i mod N); finalize it (complete)."""
    source_blocks, source_sums = source.num_blocks, source.small_array(CHECKSUMS)
    src, out = Path(source.url), Path(store.url)
    for name in IMAGE_ARRAYS:
        for block in range(plan.num_blocks):
            target = out / store.chunk_key(name, block)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src / source.chunk_key(name, block % source_blocks), target)
    markers = np.zeros(store.group[MARKERS].shape, np.int16)
    task_sums = np.zeros(store.group[TASK_CHECKSUMS].shape, np.uint32)
    for task in plan.tasks:
        markers[task.index, task.num_blocks:] = -1
        task_sums[task.index, :task.num_blocks] = source_sums[np.asarray(task.block_indices) % source_blocks]
    store.group[TASK_CHECKSUMS][:] = task_sums  # finalize copies these into the blocks' recorded checksums
    store.group[MARKERS][:] = markers
    finalize(store, plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, type=Path, help="a complete store built by qw (the fraction)")
    ap.add_argument("--dataset", required=True, type=Path)
    ap.add_argument("--captures", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="must not exist; same filesystem as --source")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; give a new path")
    source = open_store(str(args.source))
    start = time.perf_counter()
    plan = plan_from_files(load_dataset_manifest(args.dataset), args.captures)
    print(f"plan: {plan.num_blocks} blocks, {len(plan.tasks)} windows, {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    store = prepare_store(plan, str(args.out))
    print(f"create the store: {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    replicate(source, plan, store)
    print(f"link {len(IMAGE_ARRAYS) * plan.num_blocks} chunks, markers, checksums, finalize: "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

"""What one loader core delivers: the decode floor, `read_block`, the augmented item, the DataLoader and crop reads.

    .venv/bin/python benchmarks/bench_loader.py [--blocks 48] [--rounds 5] [--crop 128] [--inner-chunk 64]

Builds two synthetic stores of the same 256×256×8 blocks in a temp dir (`bench_train.synthetic_store`): today's
layout (one chunk per block) and the sharded one (one shard per block, `--inner-chunk`² inner chunks). Single-core
rows run pinned to one CPU (blosc single-threaded, torch 1 thread, as in a DataLoader worker):

* floor: read the three chunk files training reads (color, reference, motion), blosc-decode, crc32c the result;
* `BlockStore.read_block` (what the reader does: zarr, checksum check);
* `BlockDataset[(i, seed)]`, augmented, whole blocks and `--crop` crops (unsharded: a crop decodes the block);
  and with ``augment_on_device`` (the worker reads and draws; flips, turns and exposure run on the GPU batch);
* the same crop from the sharded store (reads and decodes only the inner chunks it overlaps), with bytes read
  (the read syscalls' byte count of this process, /proc/self/io rchar);
* the DataLoader alone, over items already in memory (`CachedItems`): what it adds per block to the item
  (collating each batch into new shared memory in the worker, the transfer);
* the DataLoader (BlockSampler, batch 4) with 1 and 2 workers, not pinned, augmenting in the workers or leaving
  it to the device (`train.augment_on: device`).

Rates are blocks per CPU-second (CPU time of this process, all threads; for the DataLoader rows, of this process
and its workers), which is what one dedicated core would deliver and is far less disturbed by other processes on a
shared machine than wall time (the DataLoader rows also show wall blocks/s). Each single-core row is measured in
every round, rows interleaved, and each DataLoader row twice after the rounds; the table shows each row's median and
range and its ratio to the floor of the same round (median of ratios; the DataLoader rows: of the first two rounds).
Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import google_crc32c
import numcodecs
import numpy as np
import psutil
import torch
import zarr
from torch.utils.data import DataLoader

from bench_train import synthetic_store
from qw.datagen.block_store import open_store
from qw.training.data import IMAGES, BlockDataset, BlockSampler, augmentation_seed

Measure = Callable[[list[int]], float]  # blocks per CPU second over the given block indices


def cpu_seconds() -> float:
    """CPU time of this process (all its threads: zarr decodes in a thread pool)."""
    return time.process_time()


def floor(url: str) -> Measure:
    store = open_store(url)
    paths = {name: [os.path.join(url, store.chunk_key(name, i)) for i in range(store.num_blocks)] for name in IMAGES}

    def run(order: list[int]) -> float:
        start = cpu_seconds()
        for i in order:
            for name in IMAGES:
                with open(paths[name][i], "rb") as f:
                    decoded = numcodecs.blosc.decompress(f.read())
                google_crc32c.value(decoded)
        return len(order) / (cpu_seconds() - start)
    return run


def read_block(url: str, window: tuple[int, int, int] | None = None) -> Measure:
    store = open_store(url)

    def run(order: list[int]) -> float:
        start = cpu_seconds()
        for i in order:
            store.read_block(i, ("color", "reference", "motion", "history_valid"), window=window)
        return len(order) / (cpu_seconds() - start)
    return run


def item(url: str, crop: int | None, on_device: bool = False) -> Measure:
    dataset = BlockDataset(url, crop=crop, augment=True, augment_on_device=on_device)
    dataset[(0, 0)]  # open once

    def run(order: list[int]) -> float:
        start = cpu_seconds()
        for i in order:
            dataset[(i, augmentation_seed(0, 0, i))]
        return len(order) / (cpu_seconds() - start)
    return run


class CachedItems(torch.utils.data.Dataset):
    """The same few augmented items over and over, already in memory: a DataLoader over it costs only what it adds
    to an item (default_collate stacking each array into a new shared-memory tensor in the worker, the transfer)."""

    def __init__(self, url: str, count: int = 4):
        dataset = BlockDataset(url, augment=True)
        self.items = [dataset[(i, augmentation_seed(0, 0, i))] for i in range(count)]

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, item: tuple[int, int]) -> dict:
        return self.items[item[0] % len(self.items)]  # BlockSampler's (block, seed)


def read_bytes(run: Measure, order: list[int]) -> float:
    """Bytes read per block by one pass of `run` (read syscalls of this process)."""
    def rchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar")).split()[1])
    before = rchar()
    run(order)
    return (rchar() - before) / len(order)


def loader(url: str, workers: int, crop: int | None, batches: int, batch: int = 4, on_device: bool = False,
           cached: bool = False) -> tuple[float, float]:
    """(blocks/s wall, blocks per CPU second of this process and its workers) of the training DataLoader (over
    `CachedItems` when `cached`: its own cost)."""
    store = open_store(url)
    dataset = CachedItems(url) if cached else BlockDataset(url, crop=crop, augment=True, augment_on_device=on_device)
    data = DataLoader(dataset, batch_size=batch, num_workers=workers,
                      sampler=BlockSampler(store.split_indices("train"), seed=0), persistent_workers=True,
                      prefetch_factor=4)
    it = iter(data)
    next(it)  # worker start-up and the first open are not throughput
    processes = [psutil.Process(), *psutil.Process().children()]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)
    start, start_cpu = time.perf_counter(), cpu()
    for _ in range(batches):
        next(it)
    wall, used = time.perf_counter() - start, cpu() - start_cpu
    del it, data
    return batch * batches / wall, batch * batches / used


def sharded_copy(url: str, inner: int) -> str:
    """The same blocks in the sharded layout (one shard per block, inner chunks of `inner`²)."""
    from qw.datagen.block_store import create_store, seal

    source = open_store(url)
    path = url + f".sharded{inner}"
    group = create_store(path, source.num_blocks, {k: source.attrs[k] for k in ("scenes", "shots", "split")},
                         inner_chunk=inner)
    for name in (*IMAGES, "history_valid", "origin"):
        group[name][:] = zarr.open_group(url)[name][:]
    seal(group)
    return path


def summarize(rates: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    """Median and range of each row; ratio: median over rounds of row / floor of the same round (the loader
    rows, measured after the single-core rounds, against the floor of the first rounds)."""
    floors = next(iter(rates.values()))
    rows = []
    for name, values in rates.items():
        ratio = statistics.median(v / f for v, f in zip(values, floors))
        rows.append((name, f"{statistics.median(values):6.1f} ({min(values):.1f}–{max(values):.1f})", f"{ratio:.2f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--inner-chunk", type=int, default=64)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--core", type=int, default=0, help="CPU the single-core rows are pinned to")
    args = parser.parse_args()
    numcodecs.blosc.use_threads = False
    with tempfile.TemporaryDirectory() as tmp:
        url = synthetic_store(Path(tmp) / "blocks.zarr", args.blocks)
        sharded = sharded_copy(url, args.inner_chunk)
        tile = open_store(url).array("color").shape[-1]
        window = ((tile - args.crop) // 2 - 1, (tile - args.crop) // 2 + 1, args.crop)  # unaligned, as random crops
        all_cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {args.core})
        torch.set_num_threads(1)
        single = {
            "floor: files + blosc + crc32c": floor(url),
            "read_block, whole": read_block(url),
            "read_block, whole, sharded": read_block(sharded),
            f"read_block, {args.crop}² crop, sharded": read_block(sharded, window),
            "item, augmented, whole": item(url, None),
            "item, whole, augmentation left to the GPU": item(url, None, on_device=True),
            f"item, augmented, {args.crop}² crop": item(url, args.crop),
            f"item, augmented, {args.crop}² crop, sharded": item(sharded, args.crop),
        }
        rates: dict[str, list[float]] = {name: [] for name in single}
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):
            order = rng.permutation(args.blocks).tolist()
            for name, run in single.items():
                rates[name].append(run(order))
        bytes_read = {"whole": read_bytes(single["read_block, whole"], order),
                      "sharded whole": read_bytes(single["read_block, whole, sharded"], order),
                      "sharded crop": read_bytes(single[f"read_block, {args.crop}² crop, sharded"], order)}
        os.sched_setaffinity(0, all_cores)
        walls = {}
        for workers in (1, 2):
            for crop, on_device, what in ((None, False, "whole"), (None, True, "whole, augmentation on GPU"),
                                          (args.crop, False, f"{args.crop}² crop, sharded")):
                runs = [loader(sharded if crop else url, workers, crop, args.loader_batches, on_device=on_device)
                        for _ in range(2)]
                name = f"DataLoader, {workers} worker(s), {what}"
                rates[name], walls[name] = [r[1] for r in runs], [r[0] for r in runs]
        runs = [loader(url, 1, None, args.loader_batches, cached=True) for _ in range(2)]
        name = "DataLoader alone (items cached), 1 worker"
        rates[name], walls[name] = [r[1] for r in runs], [r[0] for r in runs]
    print(f"\n{args.blocks} synthetic 256×256×8 blocks, {args.rounds} rounds (loader rows: 2); "
          f"{os.cpu_count()} CPUs, shared machine; single-core rows pinned to CPU {args.core}\n")
    width = max(map(len, rates))
    print(f"| {'what':<{width}} | {'blocks per CPU-second':>26} | ratio to floor | {'wall blocks/s':>13} |")
    print(f"|{'-' * (width + 2)}|{'-' * 27}:|---------------:|{'-' * 14}:|")
    for name, value, ratio in summarize(rates):
        wall = f"{statistics.median(walls[name]):.1f}" if name in walls else ""
        print(f"| {name:<{width}} | {value:>26} | {ratio:>14} | {wall:>13} |")
    print(f"\nbytes read per block (color+reference+motion, files + metadata): whole {bytes_read['whole'] / 1e6:.2f} MB, "
          f"sharded whole {bytes_read['sharded whole'] / 1e6:.2f} MB, sharded {args.crop}² crop "
          f"{bytes_read['sharded crop'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

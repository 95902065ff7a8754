"""Section loader: the real DataLoader on a block store of random data."""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qw.training.model import fast

from gpu_bench.harness import Case, Harness, Sizes, cpu_cores


def _random_store(url: str, sizes: Sizes, threads: int) -> None:
    """A complete `qw-blocks/2` store of random blocks (all one 'train' shot), written by several threads."""
    from qw.datagen.block_store import create_store, seal, synthetic_attrs

    n, t, tile = sizes.loader_blocks, sizes.frames, sizes.tile
    group = create_store(url, n, synthetic_attrs([("random", "s0", "train")]), t=t, tile=tile)
    valid = np.ones((n, t), bool)
    valid[:, 0] = False
    group["history_valid"][:] = valid
    group["origin"][:] = np.zeros((n, 5), np.int32)

    def write(i: int) -> None:
        rng = np.random.default_rng(i)
        group["color"][i] = (rng.random((t, 3, tile, tile), np.float32) ** 2 * 4).astype(np.float16)
        group["reference"][i] = (rng.random((t, 3, tile, tile), np.float32) ** 2 * 4).astype(np.float16)
        group["motion"][i] = (rng.standard_normal((t, 2, tile, tile), np.float32) * 3).astype(np.float16)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(n)))
    seal(group)


class Loader(Harness):
    def loader(self) -> None:
        workers = cpu_cores()

        def build() -> Case:
            from torch.utils.data import DataLoader

            from qw.training.data import BlockDataset, BlockSampler

            tmp = tempfile.mkdtemp(prefix="qw-gpu-bench-")
            self.temporary.append(tmp)
            url = str(Path(tmp) / "random.zarr")
            t0 = time.perf_counter()
            _random_store(url, self.sizes, workers)
            built_s = time.perf_counter() - t0
            dataset = BlockDataset(url, augment=True)
            sampler = BlockSampler(np.arange(self.sizes.loader_blocks), seed=0)
            per_batch = self.sizes.batch
            loader = DataLoader(dataset, batch_size=per_batch, sampler=sampler, num_workers=workers,
                                pin_memory=self.cuda, persistent_workers=True, prefetch_factor=2)
            batches = fast.DevicePrefetcher(loader, self.device, channels_last=True)
            next(batches)  # workers started, first batches in flight
            rounds = 2 * workers  # two batches per worker: each worker assembles whole batches

            def fn() -> None:
                for _ in range(rounds):
                    next(batches)
                self.sync()

            shm = shutil.disk_usage("/dev/shm").free / 2 ** 30 if Path("/dev/shm").exists() else float("nan")
            note = (f"{workers} workers, batch {per_batch}, {rounds} batches per timing, store of "
                    f"{self.sizes.loader_blocks} random blocks built in {built_s:.0f} s (random data compresses "
                    f"~1.1x vs ~3.3x real); /dev/shm free {shm:.0f} GiB")
            return Case(fn, None, note, blocks=rounds * per_batch, profile=False)

        self.row("loader", "DataLoader + augment + pinned copy", build, unit="blocks/s", warmup=0, reps=2, max_s=20,
                 need_s=30, limit_s=150)

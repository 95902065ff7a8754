"""Training data from a `qw-blocks/2` store: a Dataset of (augmented) blocks and a deterministic sampler.

* The store is opened lazily in each DataLoader worker (a zarr handle is not shared across processes) and only
  the arrays QW-Net needs are read; images stay float16 until the device. Every block read is checked against
  the checksums the builder recorded, so a missing or damaged chunk stops training with an error naming the
  block instead of feeding it fill values. The check is one crc32c pass over the decoded block: ~1 ms of a ~12 ms
  read of a 256×256×8 block on one CPU core (+6 %, benchmarks/bench_verify.py), so every block is checked.
* `BlockSampler` yields ``(block index, augmentation seed)`` pairs forever: a `DistributedSampler` permutation
  per epoch (so ranks see disjoint blocks and the union of the ranks' k-th batches is the single-process k-th
  batch), a seed derived from (seed, epoch, block) so that augmentation does not depend on workers, and a start
  offset so that a resumed run continues with exactly the blocks it would have seen.
* Augmentation keeps the motion field consistent with the images: flips negate a component, 90° rotations swap
  components; exposure scaling multiplies colour and reference alike.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from datagen.block_store import BlockStore, open_store
from datagen.errors import QwError

ARRAYS = ("color", "reference", "motion", "history_valid", "jitter")
IMAGES = ("color", "reference", "motion")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def open_training_store(url: str, storage_options: dict | None = None) -> BlockStore:
    """Open a complete store and check it has what training reads (clear errors for anything missing)."""
    store = open_store(url, storage_options=storage_options)
    for name in ARRAYS:
        store.array(name)
    if store.num_blocks == 0:
        raise QwError(f"{url}: block store holds no blocks")
    return store


def augmentation_seed(seed: int, epoch: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, block]).generate_state(1)[0])


def rotate90(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rotate images a quarter turn (np.rot90 on H,W): new (x, y) = (y, W − x), so motion (mx, my) -> (my, −mx),
    and so does the jitter offset (T,2) when the block has one."""
    out = {k: np.rot90(block[k], 1, axes=(-2, -1)) for k in IMAGES}
    out["motion"] = np.stack([out["motion"][:, 1], -out["motion"][:, 0]], axis=1)
    if "jitter" in block:
        out["jitter"] = np.stack([block["jitter"][:, 1], -block["jitter"][:, 0]], axis=1)
    return {**block, **out}


def flip(block: dict[str, np.ndarray], axis: int) -> dict[str, np.ndarray]:
    """Mirror along W (axis=-1, negates motion x and jitter x) or H (axis=-2, negates motion y and jitter y)."""
    out = {k: np.flip(block[k], axis) for k in IMAGES}
    if "jitter" in block:
        out["jitter"] = block["jitter"]
    component = 0 if axis == -1 else 1
    for k in ("motion", "jitter"):
        if k in out:
            out[k] = out[k].copy()
            out[k][:, component] *= -1
    return {**block, **out}


def crop(block: dict[str, np.ndarray], y: int, x: int, size: int) -> dict[str, np.ndarray]:
    return {**block, **{k: block[k][..., y:y + size, x:x + size] for k in IMAGES}}


def augment(block: dict[str, np.ndarray], rng: np.random.Generator,
            exposure_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """Random flips, quarter turns and exposure; the motion field is transformed with the images."""
    if rng.random() < 0.5:
        block = flip(block, -1)
    if rng.random() < 0.5:
        block = flip(block, -2)
    for _ in range(int(rng.integers(4))):
        block = rotate90(block)
    lo, hi = exposure_range
    exposure = np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    scaled = {k: np.minimum(block[k] * exposure, FLOAT16_MAX).astype(np.float16) for k in ("color", "reference")}
    return {**block, **scaled}


class BlockDataset(Dataset):
    """Blocks of a store as dicts of tensors: color/reference/motion (T,C,h,w) float16, history_valid (T,) bool.

    Items are addressed by ``(block index, augmentation seed)`` (what `BlockSampler` yields) or a plain block
    index; a seed of None, a plain index or ``augment=False`` gives the centre crop, unaugmented.
    """

    def __init__(self, url: str, crop: int | None = None, augment: bool = False,
                 exposure_range: tuple[float, float] = (0.5, 2.0), storage_options: dict | None = None):
        self.url, self.crop, self.augment = url, crop, augment
        self.exposure_range, self.storage_options = exposure_range, storage_options
        self._store: BlockStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # each worker opens its own handle

    @property
    def store(self) -> BlockStore:
        if self._store is None:
            self._store = open_training_store(self.url, self.storage_options)
        return self._store

    def __len__(self) -> int:
        return self.store.num_blocks

    def __getitem__(self, item: int | tuple[int, int | None]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        block = self.store.read_block(index, ARRAYS)  # checked against the block's checksums; errors name it
        rng = np.random.default_rng(seed)
        tile = block["color"].shape[-1]
        size = self.crop or tile
        if size > tile:
            raise QwError(f"{self.url}: crop {size} is larger than the store's {tile}x{tile} tiles")
        if seed is None or not self.augment:
            y = x = (tile - size) // 2
        else:
            y, x = (int(v) for v in rng.integers(0, tile - size + 1, size=2))
        block = crop(block, y, x, size)
        if seed is not None and self.augment:
            block = augment(block, rng, self.exposure_range)
        sample: dict[str, torch.Tensor | int] = {k: torch.from_numpy(np.ascontiguousarray(block[k])) for k in ARRAYS}
        sample["index"] = index
        return sample


class BlockSampler(Sampler):
    """Endless ``(block, augmentation seed)`` stream of one rank, starting after `start` samples of that rank."""

    def __init__(self, indices: Sequence[int], rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True):
        if len(indices) < world_size:
            raise QwError(f"{len(indices)} training blocks cannot be split over {world_size} processes")
        self.indices = np.asarray(indices)
        self.rank, self.world_size, self.seed, self.start, self.shuffle = rank, world_size, seed, start, shuffle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        positions = DistributedSampler(range(len(self.indices)), num_replicas=self.world_size, rank=self.rank,
                                       shuffle=self.shuffle, seed=self.seed, drop_last=True)
        epoch, skip = divmod(self.start, len(positions))
        while True:
            positions.set_epoch(epoch)
            for pos in islice(iter(positions), skip, None):
                block = int(self.indices[pos])
                yield block, augmentation_seed(self.seed, epoch, block)
            epoch, skip = epoch + 1, 0

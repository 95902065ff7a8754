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
  components; exposure scaling multiplies colour and reference alike. It costs one copy per array (torch, see
  `Transform.reversal_and_swap`), in the worker or, with ``augment_on_device``, on the GPU batch
  (`augment_batch`): bit-identical either way (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from qw.datagen.block_store import BlockStore, open_store
from qw.datagen.errors import QwError

ARRAYS = ("color", "reference", "motion", "history_valid", "jitter")
IMAGES = ("color", "reference", "motion")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def open_training_store(url: str, storage_options: dict | None = None, check_chunks: bool = True) -> BlockStore:
    """Open a complete store and check it has what training reads (clear errors for anything missing).

    With `check_chunks`, a store with a missing chunk of an array training reads is refused now, not when a
    sampler first draws that block hours into a run: one listing per array (a 13712-block store: see
    docs/performance.md), no chunk reads. Altered chunks are still found by the per-block check on read.
    """
    store = open_store(url, storage_options=storage_options)
    for name in ARRAYS:
        store.array(name)
    if store.num_blocks == 0:
        raise QwError(f"{url}: block store holds no blocks")
    if check_chunks and store.verified:
        _refuse_missing_chunks(store)
    return store


def _refuse_missing_chunks(store: BlockStore) -> None:
    missing = store.missing_blocks(IMAGES)
    if missing:
        name, blocks = next(iter(missing.items()))
        others = sum(len(b) for b in missing.values()) - 1
        raise QwError(f"{store.url}: block {blocks[0]}: {name} chunk {store.chunk_key(name, blocks[0])} is missing"
                      f"{f' (and {others} more chunk(s) of the training arrays)' if others else ''}; "
                      f"run `qw datagen verify {store.url}`")


def augmentation_seed(seed: int, epoch: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, block]).generate_state(1)[0])


@dataclass(frozen=True)
class Transform:
    """A flip/quarter-turn of the dihedral group and an exposure: mirror along W (`flip_x`), then along H
    (`flip_y`), then `turns` quarter turns (np.rot90 on H,W), then colour and reference scaled by `exposure`."""

    flip_x: bool = False
    flip_y: bool = False
    turns: int = 0
    exposure: float = 1.0

    @classmethod
    def draw(cls, rng: np.random.Generator, exposure_range: tuple[float, float]) -> "Transform":
        flip_x, flip_y, turns = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
        lo, hi = exposure_range
        return cls(flip_x, flip_y, turns, float(np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))))

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.flip_x, self.flip_y, self.turns, self.exposure], dtype=torch.float32)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "Transform":
        flip_x, flip_y, turns, exposure = values.tolist()
        return cls(bool(flip_x), bool(flip_y), int(turns), exposure)

    def motion_components(self) -> tuple[tuple[int, int], tuple[bool, bool]]:
        """For each output motion component, the input component it comes from and whether it is negated.

        A flip negates the component along its axis; a quarter turn maps (x, y) to (y, W − x), so motion
        (mx, my) becomes (my, −mx)."""
        source, negate = [0, 1], [self.flip_x, self.flip_y]
        for _ in range(self.turns % 4):
            source, negate = [source[1], source[0]], [negate[1], not negate[0]]
        return (source[0], source[1]), (negate[0], negate[1])

    def reversal_and_swap(self) -> tuple[tuple[int, ...], bool]:
        """The same geometry as one reversal of axes (-1: W, -2: H) followed by an optional H/W swap, so that it
        costs one copy. np.rot90 reverses W, then swaps; after a swap, reversing W reverses the source's H."""
        reverse_x, reverse_y, swap = self.flip_x, self.flip_y, False
        for _ in range(self.turns % 4):
            reverse_x, reverse_y = (reverse_x, not reverse_y) if swap else (not reverse_x, reverse_y)
            swap = not swap
        return tuple(axis for axis, r in ((-1, reverse_x), (-2, reverse_y)) if r), swap


BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> an integer type of that size


def _geometry(image: torch.Tensor, t: Transform) -> torch.Tensor:
    """`image` (..., H, W) flipped and turned: reversed as integer bits (torch's float16 flip is not vectorised
    on CPU, its int16 flip is; bits move unchanged), swapped as a view."""
    axes, swap = t.reversal_and_swap()
    bits = image.view(BITS[image.element_size()])
    if axes:
        bits = torch.flip(bits, axes)
    return (bits.transpose(-2, -1) if swap else bits).view(image.dtype)


def scale_exposure(image: torch.Tensor, exposure: float) -> torch.Tensor:
    """float16 image × exposure as a new contiguous tensor, clipped to the float16 range: float16 × a Python float
    computes in float32 and rounds once (bit-identical to converting first), and an overflow to inf is clipped back
    to the largest float16, as clipping before the rounding would. Works on a CPU tensor or a device batch alike."""
    out = torch.mul(image, exposure, out=torch.empty(image.shape, dtype=image.dtype, device=image.device))
    return out.clamp_(max=FLOAT16_MAX) if exposure > 1 else out  # a finite x times <= 1 cannot overflow


def _remap_components(vectors: torch.Tensor, t: Transform) -> torch.Tensor:
    """(T, 2, ...) screen vectors already in the output's geometry: x/y taken from where the transform sends them
    and negated where it mirrors them (motion fields, and the per-frame jitter offsets (T, 2))."""
    out = torch.empty(vectors.shape, dtype=vectors.dtype, device=vectors.device)
    sources, negate = t.motion_components()
    for component, (source, negated) in enumerate(zip(sources, negate)):
        out[:, component] = vectors[:, source]
        if negated:
            out[:, component].neg_()
    return out


def apply_transform(images: dict[str, torch.Tensor], t: Transform) -> dict[str, torch.Tensor]:
    """Flips, quarter turns and exposure of float16 (T, C, H, W) images (colour, reference, motion; CPU or
    device), motion (and the jitter offsets, when given) transformed with them; each output is one new
    contiguous tensor."""
    out = {k: scale_exposure(_geometry(images[k], t), t.exposure) for k in ("color", "reference")}
    out["motion"] = _remap_components(_geometry(images["motion"], t), t)
    if "jitter" in images:
        out["jitter"] = _remap_components(images["jitter"], t)
    return out


def _numpy_transform(block: dict[str, np.ndarray], t: Transform) -> dict[str, np.ndarray]:
    out = apply_transform({k: torch.from_numpy(block[k]) for k in (*IMAGES, "jitter") if k in block}, t)
    return {**block, **{k: v.numpy() for k, v in out.items()}}


def flip(block: dict[str, np.ndarray], axis: int) -> dict[str, np.ndarray]:
    """Mirror along W (axis=-1, negates motion x and jitter x) or H (axis=-2, negates motion y and jitter y)."""
    return _numpy_transform(block, Transform(flip_x=axis == -1, flip_y=axis == -2))


def rotate90(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rotate images a quarter turn (np.rot90 on H,W): new (x, y) = (y, W − x), so motion (mx, my) -> (my, −mx),
    and so does the jitter offset (T,2) when the block has one."""
    return _numpy_transform(block, Transform(turns=1))


def augment(block: dict[str, np.ndarray], rng: np.random.Generator,
            exposure_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """Random flips, quarter turns and exposure; the motion field is transformed with the images."""
    return _numpy_transform(block, Transform.draw(rng, exposure_range))


class BlockDataset(Dataset):
    """Blocks of a store as dicts of tensors: color/reference/motion (T,C,h,w) float16, history_valid (T,) bool.

    Items are addressed by ``(block index, augmentation seed)`` (what `BlockSampler` yields) or a plain block
    index; a seed of None, a plain index or ``augment=False`` gives the centre crop, unaugmented.

    With ``augment_on_device=True`` the worker draws the same crop and transform but leaves the flips, turns and
    exposure to `augment_batch`, run on the collated batch where it is (the GPU): items then carry the drawn
    transform as ``transform`` (4,) float32 (`Transform.as_tensor`), and the result is bit-identical.
    """

    def __init__(self, url: str, crop: int | None = None, augment: bool = False,
                 exposure_range: tuple[float, float] = (0.5, 2.0), storage_options: dict | None = None,
                 augment_on_device: bool = False):
        if crop is not None and crop < 1:  # 0 read as the whole tile, a negative crop as an empty image
            raise QwError(f"{url}: crop {crop}: must be at least 1 pixel (None: the whole tile)")
        self.url, self.crop, self.augment, self.augment_on_device = url, crop, augment, augment_on_device
        self.exposure_range, self.storage_options = exposure_range, storage_options
        self._store: BlockStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # each worker opens its own handle

    @property
    def store(self) -> BlockStore:
        if self._store is None:
            # per worker; the run's chunk listing is done once, by whoever opens the run's store (train, quantize)
            self._store = open_training_store(self.url, self.storage_options, check_chunks=False)
        return self._store

    def __len__(self) -> int:
        return self.store.num_blocks

    def __getitem__(self, item: int | tuple[int, int | None]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed)
        tile = self.store.array("color").shape[-1]
        size = self.crop or tile
        check_crop_fits(self.url, size, tile)
        if seed is None or not self.augment:
            y = x = (tile - size) // 2
        else:
            y, x = (int(v) for v in rng.integers(0, tile - size + 1, size=2))
        # checked against the block's checksums (see BlockStore.image_block); errors name the block. A sharded
        # store reads only the inner chunks the crop overlaps.
        block = self.store.read_block(index, ARRAYS, window=(y, x, size) if size < tile else None)
        transform = Transform.draw(rng, self.exposure_range) if seed is not None and self.augment else Transform()
        if not self.augment_on_device and transform != Transform():
            block = _numpy_transform(block, transform)
        sample: dict[str, torch.Tensor | int] = {k: torch.from_numpy(np.ascontiguousarray(block[k])) for k in ARRAYS}
        sample["index"] = index
        if self.augment_on_device:
            sample["transform"] = transform.as_tensor()
        return sample


def augment_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply each item's drawn ``transform`` (see `BlockDataset`'s ``augment_on_device``) to a collated batch, on
    the batch's device; the ``transform`` entry is consumed."""
    transforms = [Transform.from_tensor(row) for row in batch["transform"].cpu()]
    moved = [k for k in (*IMAGES, "jitter") if k in batch]
    items = [apply_transform({k: batch[k][i] for k in moved}, t) for i, t in enumerate(transforms)]
    rest = {k: v for k, v in batch.items() if k not in (*moved, "transform")}
    return {**rest, **{k: torch.stack([item[k] for item in items]) for k in moved}}


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


def check_crop_fits(url: str, crop: int | None, tile: int) -> None:
    """Refuse a crop larger than the store's tiles (checked by the run before it writes anything, and on read)."""
    if crop is not None and crop > tile:
        raise QwError(f"{url}: crop {crop} is larger than the store's {tile}x{tile} tiles")


def check_batch_fits(url: str, train_blocks: int, batch_size: int, world_size: int = 1) -> None:
    """Refuse a micro-batch larger than one process's share of the 'train' blocks: the loader would collect a batch
    that one pass over the store cannot fill (train.batch_size=100000000 grew memory until the machine gave out)."""
    share = train_blocks // world_size
    if batch_size > share:
        per_process = f" ({share} per process over {world_size} processes)" if world_size > 1 else ""
        raise QwError(f"{url}: train.batch_size {batch_size} is more than the store's {train_blocks} 'train' "
                      f"blocks{per_process} can fill; lower train.batch_size")

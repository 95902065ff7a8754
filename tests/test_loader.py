"""The training reader: refused stores at open, index errors, augmentation (CPU and device) and the fast paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_store

from qw.datagen.block_store import open_store
from qw.datagen.errors import QwError
from qw.training.data import BlockDataset, open_training_store


def chunk_path(url: str, name: str, index: int) -> Path:
    return Path(url) / open_store(url).chunk_key(name, index)


# ----------------------------------------------------------------------------------------------- refused at open


def test_a_missing_chunk_is_refused_at_open_not_when_first_drawn(tmp_path):
    url = make_store(tmp_path / "s.zarr", n_train=6, n_val=1)
    open_training_store(url)  # intact
    chunk_path(url, "reference", 5).unlink()
    with pytest.raises(QwError, match=r"s\.zarr: block 5: reference chunk reference/c\.5\.0\.0\.0\.0 is missing; "
                                      r"run `qw datagen verify"):
        open_training_store(url)
    chunk_path(url, "motion", 2).unlink()
    with pytest.raises(QwError, match=r"block 5: reference chunk .* is missing \(and 1 more chunk"):
        open_training_store(url)
    # a worker's reopen does not list again (the run's open did); blocks read intact until the damaged one
    data = BlockDataset(url)
    assert data[0]["color"].shape[0] == 4
    with pytest.raises(QwError, match="block 5: reference chunk .* is missing"):
        data[5]


def test_an_all_zero_block_without_a_chunk_is_not_refused(tmp_path):
    """zarr stores no chunk for a block equal to the fill value; its recorded checksum says that is right."""
    url = make_store(tmp_path / "s.zarr", n_train=3, n_val=1, complete=False)
    import zarr

    from qw.datagen.block_store import seal

    group = zarr.open_group(url, mode="r+")
    group["motion"][1] = np.zeros(group["motion"].shape[1:], np.float16)  # a static camera: no motion at all
    seal(group)
    assert not chunk_path(url, "motion", 1).exists()
    open_training_store(url)


def test_a_missing_chunk_on_s3_is_refused_at_open(s3_options, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(make_store(tmp_path / "s.zarr", n_train=4, n_val=1), "bucket/s.zarr", recursive=True)
    url = "s3://bucket/s.zarr"
    open_training_store(url, s3_options)
    fs.rm("bucket/s.zarr/color/c.3.0.0.0.0")
    fs.invalidate_cache()
    with pytest.raises(QwError, match=r"block 3: color chunk color/c\.3\.0\.0\.0\.0 is missing"):
        open_training_store(url, s3_options)


@pytest.mark.parametrize("index", [7, 100, -1])
def test_an_index_outside_the_store_is_an_index_error_not_damage(tmp_path, index):
    url = make_store(tmp_path / "s.zarr", n_train=6, n_val=1)
    with pytest.raises(IndexError, match=rf"block index {index} is out of range \(the store holds 7 blocks, 0\.\.6\)"):
        BlockDataset(url)[index]
    with pytest.raises(IndexError, match="out of range"):
        open_store(url).read_block(index)


@pytest.mark.parametrize("crop", [0, -5])
def test_a_crop_below_one_pixel_is_refused(tmp_path, crop):
    """crop=0 gave whole tiles and a negative crop empty images, silently."""
    url = make_store(tmp_path / "s.zarr", n_train=2, n_val=1)
    with pytest.raises(QwError, match=rf"crop {crop}: must be at least 1 pixel"):
        BlockDataset(url, crop=crop)


# ----------------------------------------------------------------------------------------------- augmentation


def reference_augment(block: dict[str, np.ndarray], rng: np.random.Generator,
                      exposure_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """The augmentation as first written (numpy, one step at a time): flips, quarter turns, exposure in float32."""
    def flip(b, axis):
        out = {k: np.flip(b[k], axis) for k in ("color", "reference", "motion")}
        out["motion"] = out["motion"].copy()
        out["motion"][:, 0 if axis == -1 else 1] *= -1
        return {**b, **out}

    def rotate90(b):
        out = {k: np.rot90(b[k], 1, axes=(-2, -1)) for k in ("color", "reference", "motion")}
        out["motion"] = np.stack([out["motion"][:, 1], -out["motion"][:, 0]], axis=1)
        return {**b, **out}

    if rng.random() < 0.5:
        block = flip(block, -1)
    if rng.random() < 0.5:
        block = flip(block, -2)
    for _ in range(int(rng.integers(4))):
        block = rotate90(block)
    lo, hi = exposure_range
    exposure = np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    with np.errstate(over="ignore"):
        scaled = {k: np.minimum(block[k] * exposure, np.float32(65504)).astype(np.float16) for k in ("color", "reference")}
    return {**block, **scaled}


def float16_block(rng: np.random.Generator, h: int = 24, w: int = 24) -> dict[str, np.ndarray]:
    """Non-square, with signed zeros, float16 extremes and values that overflow when scaled up."""
    block = {k: rng.normal(0, 300, (3, c, h, w)).astype(np.float16)
             for k, c in (("color", 3), ("reference", 3), ("motion", 2))}
    block["color"][0, 0, 0, :6] = [0.0, -0.0, 65504, -65504, 40000, 6e-8]
    block["motion"][1, :, 2, :3] = [[0.0, -0.0, 1.5], [-0.0, 0.0, -2.5]]
    return {**block, "history_valid": np.array([False, True, True])}


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.uint16)


def test_augmentation_is_bitwise_the_step_by_step_numpy_result_for_every_flip_and_turn():
    from qw.training.data import augment

    rng = np.random.default_rng(1)
    for block in (float16_block(rng), float16_block(rng, 16, 40)):
        seen = set()
        for seed in range(64):  # exposures above and below 1
            draw = np.random.default_rng(seed)
            seen.add((draw.random() < 0.5, draw.random() < 0.5, int(draw.integers(4))))
            got = augment(block, np.random.default_rng(seed), (0.5, 2.0))
            want = reference_augment(block, np.random.default_rng(seed), (0.5, 2.0))
            for name in ("color", "reference", "motion"):
                assert got[name].shape == want[name].shape and got[name].dtype == np.float16
                np.testing.assert_array_equal(bits(got[name]), bits(want[name]), err_msg=f"seed {seed} {name}")
            assert got["history_valid"] is block["history_valid"]
        assert len(seen) == 16  # every (flip x, flip y, turns) drawn: all 8 elements of the group, twice


def test_a_crop_of_a_sharded_store_is_the_crop_of_the_same_unsharded_block(tmp_path):
    """Same blocks, same seeds: the item (crop position, flips, exposure) does not depend on the layout."""
    from qw.datagen.block_store import create_store, seal
    import zarr

    url = make_store(tmp_path / "flat.zarr", n_train=4, n_val=1, tile=32)
    source = open_store(url)
    group = create_store(str(tmp_path / "sharded.zarr"), source.num_blocks,
                         {k: source.attrs[k] for k in ("scenes", "shots", "split")}, t=4, tile=32, inner_chunk=8)
    for name in ("color", "reference", "motion", "history_valid", "origin"):
        group[name][:] = zarr.open_group(url)[name][:]
    seal(group)
    flat, sharded = BlockDataset(url, crop=16, augment=True), BlockDataset(str(tmp_path / "sharded.zarr"), crop=16,
                                                                             augment=True)
    for item in [(0, 3), (2, 11), (4, 12345), 1]:
        a, b = flat[item], sharded[item]
        for name in ("color", "reference", "motion"):
            assert torch.equal(a[name].view(torch.int16), b[name].view(torch.int16)), (item, name)
        assert torch.equal(a["history_valid"], b["history_valid"])


def test_augmentation_on_the_batch_equals_augmentation_in_the_worker(tmp_path):
    """`augment_on_device`: the worker draws, `augment_batch` applies where the batch is (here the CPU)."""
    from qw.training.data import augment_batch

    url = make_store(tmp_path / "s.zarr", n_train=6, n_val=1, tile=32)
    items = [(i, 1000 + 7 * i) for i in range(6)]
    in_worker = torch.utils.data.DataLoader(BlockDataset(url, crop=16, augment=True), batch_size=6,
                                            sampler=items)
    on_batch = torch.utils.data.DataLoader(BlockDataset(url, crop=16, augment=True, augment_on_device=True),
                                           batch_size=6, sampler=items)
    expected, raw = next(iter(in_worker)), next(iter(on_batch))
    assert raw["transform"].shape == (6, 4) and len({tuple(r[:3].tolist()) for r in raw["transform"]}) > 1
    assert not torch.equal(raw["color"], expected["color"])  # the worker left the flips and exposure undone
    got = augment_batch(raw)
    assert set(got) == set(expected)
    for name in ("color", "reference", "motion"):
        assert torch.equal(got[name].view(torch.int16), expected[name].view(torch.int16)), name  # bitwise
    assert torch.equal(got["history_valid"], expected["history_valid"]) and got["index"].tolist() == list(range(6))


def test_a_crop_of_a_sharded_store_reads_only_the_inner_chunks_it_overlaps(tmp_path):
    """The first inner chunk of block 0's colour is damaged: the centre crop never touches it (so it was never
    read), a crop over it fails naming the block, and a whole block fails too."""
    from qw.datagen.block_store import create_store, seal, synthetic_attrs

    group = create_store(str(tmp_path / "s.zarr"), 2, synthetic_attrs([("a", "s", "train")]), t=2, tile=32,
                         inner_chunk=8)
    rng = np.random.default_rng(0)
    for name in ("color", "reference", "motion"):
        group[name][:] = rng.normal(0, 1, group[name].shape).astype(np.float16)
    seal(group)
    expected = group["color"][0][..., 8:24, 8:24]
    path = tmp_path / "s.zarr" / "color" / "c.0.0.0.0.0"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # inner chunks are stored in order: byte 10 is in chunk (0, 0), pixels [0, 8)²
    path.write_bytes(bytes(data))
    centre = BlockDataset(str(tmp_path / "s.zarr"), crop=16)[0]["color"]  # pixels [8, 24)²
    np.testing.assert_array_equal(centre.numpy(), expected)
    with pytest.raises(QwError, match="block 0: color chunk .* cannot be read"):
        open_store(str(tmp_path / "s.zarr")).read_block(0, ("color",), window=(0, 0, 16))
    with pytest.raises(QwError, match="block 0: color chunk .* cannot be read"):
        BlockDataset(str(tmp_path / "s.zarr"))[0]

"""The training reader: refused stores at open, index errors, augmentation (CPU and device) and the fast paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_store

from cli_helpers import free_port
from datagen.block_store import open_store
from datagen.errors import QwError
from training.data import BlockDataset, open_training_store


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

    from datagen.block_store import seal

    group = zarr.open_group(url, mode="r+")
    group["motion"][1] = np.zeros(group["motion"].shape[1:], np.float16)  # a static camera: no motion at all
    seal(group)
    assert not chunk_path(url, "motion", 1).exists()
    open_training_store(url)


def test_a_missing_chunk_on_s3_is_refused_at_open():
    from moto.server import ThreadedMotoServer
    import s3fs
    import tempfile

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test",
                   "client_kwargs": {"region_name": "eu-west-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bucket")
        with tempfile.TemporaryDirectory() as tmp:
            local = make_store(Path(tmp) / "s.zarr", n_train=4, n_val=1)
            fs.put(local, "bucket/s.zarr", recursive=True)
        url = "s3://bucket/s.zarr"
        open_training_store(url, options)
        fs.rm("bucket/s.zarr/color/c.3.0.0.0.0")
        fs.invalidate_cache()
        with pytest.raises(QwError, match=r"block 3: color chunk color/c\.3\.0\.0\.0\.0 is missing"):
            open_training_store(url, options)
    finally:
        server.stop()


@pytest.mark.parametrize("index", [7, 100, -1])
def test_an_index_outside_the_store_is_an_index_error_not_damage(tmp_path, index):
    url = make_store(tmp_path / "s.zarr", n_train=6, n_val=1)
    with pytest.raises(IndexError, match=rf"block index {index} is out of range \(the store holds 7 blocks, 0\.\.6\)"):
        BlockDataset(url)[index]
    with pytest.raises(IndexError, match="out of range"):
        open_store(url).read_block(index)

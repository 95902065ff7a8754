"""The paper-store benchmark tools (benchmarks/): what they make must read back like a built store."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from blocks_helpers import dataset, small_captures
from datagen.block_store import IMAGE_ARRAYS, open_store
from datagen.plan import plan_from_files
from datagen.tile import finalize, prepare_store, run_task, task_specs

ROOT = Path(__file__).resolve().parent.parent


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_replicated_store_reads_back_verified(tmp_path):
    """A store replicated from a built fraction opens complete and every block of it reads back verified (its
    recorded checksums are those of the source blocks it links)."""
    captures, manifests = tmp_path / "captures", tmp_path / "manifests"
    small_captures(captures, manifests)
    small = plan_from_files(dataset({"alpha": 3, "beta": 2}), captures, manifests_root=manifests)
    source = prepare_store(small, str(tmp_path / "frac.zarr"))
    for spec in task_specs(small, captures, source.url, None):  # the builder's tasks, without a Dask cluster
        run_task(spec)
    finalize(source, small)

    large = plan_from_files(dataset({"alpha": 8, "beta": 5}), captures, manifests_root=manifests)
    out = tmp_path / "full.zarr"
    benchmark_module("replicate_store").replicate(open_store(source.url), large, prepare_store(large, str(out)))

    full, frac = open_store(str(out)), open_store(source.url)
    assert full.num_blocks == large.num_blocks > frac.num_blocks
    for i in range(full.num_blocks):
        block = full.read_block(i, IMAGE_ARRAYS)
        for name in IMAGE_ARRAYS:
            np.testing.assert_array_equal(block[name], frac.read_block(i % frac.num_blocks, (name,))[name])

"""What refusing a store with a missing chunk at open costs: `open_training_store` with and without its listing.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_open.py [--blocks 13712] [--repeats 3] [--no-s3]

The listing's cost is a matter of keys, not bytes: the store is written with the paper's block count but 8×16×16
blocks (the same number of files as a 256×256 store: one per block per image array), locally and on a local S3
server (moto, as the tests use; a real object store adds its round-trip latency per listing page of 1000 keys).
Prints the open time with `check_chunks` (one listing of color, reference and motion) and without, median of
`--repeats` (each open a fresh handle; s3fs's listing cache is cleared). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from qw.datagen.block_store import IMAGE_ARRAYS, checksum, create_store, seal, synthetic_attrs
from qw.training.data import open_training_store

ATTRS = synthetic_attrs([("bench", "s", "train")])


def small_block_store(path: Path, blocks: int) -> str:
    """A complete store of `blocks` random 8×16×16 blocks (every chunk stored)."""
    group = create_store(str(path), blocks, ATTRS, tile=16)
    rng = np.random.default_rng(0)
    sums = np.zeros((blocks, len(IMAGE_ARRAYS)), np.uint32)
    for k, name in enumerate(IMAGE_ARRAYS):
        values = rng.normal(0, 1, group[name].shape).astype(np.float16)
        group[name][:] = values
        sums[:, k] = [checksum(v) for v in values]
    seal(group, sums)
    return str(path)


def open_seconds(url: str, options: dict | None, check: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if options:
            import s3fs
            s3fs.S3FileSystem.clear_instance_cache()
        start = time.perf_counter()
        open_training_store(url, options, check_chunks=check)
        times.append(time.perf_counter() - start)
    return times


def rows_for(where: str, url: str, options: dict | None, repeats: int) -> list[tuple[str, str]]:
    rows = []
    for check in (False, True):  # interleaving is not needed: each open is seconds, drift is small against it
        times = open_seconds(url, options, check, repeats)
        rows.append((f"{where}: open {'with' if check else 'without'} the chunk listing",
                     f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f})"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=13712)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        local = small_block_store(Path(tmp) / "blocks.zarr", args.blocks)
        print(f"wrote {args.blocks} blocks in {time.perf_counter() - start:.0f} s")
        rows = rows_for("local", local, None, args.repeats)
        if not args.no_s3:
            rows += s3_rows(local, args.repeats)
    print(f"\n{args.blocks} blocks ({args.blocks * 3} chunk files in the listed arrays)\n")
    print(f"| {'what':<44} | {'seconds, median (range)':>24} |\n|{'-' * 46}|{'-' * 25}:|")
    for name, value in rows:
        print(f"| {name:<44} | {value:>24} |")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_rows(local: str, repeats: int) -> list[tuple[str, str]]:
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test",
                   "client_kwargs": {"region_name": "eu-west-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bucket")
        start = time.perf_counter()
        fs.put(local, "bucket/blocks.zarr", recursive=True)
        print(f"uploaded to moto in {time.perf_counter() - start:.0f} s")
        return rows_for("S3 (moto, local)", "s3://bucket/blocks.zarr", options, repeats)
    finally:
        server.stop()


if __name__ == "__main__":
    main()

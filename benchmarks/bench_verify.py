"""Cost of checking blocks against their checksums: the training reader's per-block check, and `qw datagen verify`.

    .venv/bin/python benchmarks/bench_verify.py [--blocks 24] [--repeats 3] [--store blocks.zarr]

Reads every block of a store (default: a synthetic 256×256×8 store in a temp dir, as benchmarks/bench_train.py
makes it) the way the training reader does (color, reference, motion, history_valid), unchecked and checked, in one
process, and prints ms per block and their ratio; then the time of a full `verify_store` (all four image arrays).
The check is one crc32c over each decoded block (google-crc32c, hardware instruction where there is one). Numbers
on a shared machine are noisy; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from qw.datagen.block_store import checksum, open_store
from qw.datagen.inspect_store import verify_store
from qw.training.data import ARRAYS


def read_ms(url: str, verify: bool) -> float:
    """Mean ms to read every block of a freshly opened store (no handle or cache reuse)."""
    store = open_store(url)
    start = time.perf_counter()
    for i in range(store.num_blocks):
        store.read_block(i, ARRAYS, verify=verify)
    return (time.perf_counter() - start) / store.num_blocks * 1e3


def per_block_ms(url: str, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` (unchecked, checked) ms per block, the two alternating so that load drifts hit both."""
    runs = [(read_ms(url, False), read_ms(url, True)) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def crc_ms(url: str, repeats: int) -> float:
    """Best-of-`repeats` ms of the checksums alone over one block's training arrays (already decoded)."""
    block = open_store(url).read_block(0, ARRAYS[:3], verify=False)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for values in block.values():
            checksum(values)
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", help="An existing complete store instead of a synthetic one.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            url = args.store
        else:
            from bench_train import synthetic_store

            url = synthetic_store(Path(tmp) / "blocks.zarr", args.blocks)
        n = open_store(url).num_blocks
        unchecked, checked = per_block_ms(url, args.repeats)
        start = time.perf_counter()
        assert verify_store(url, echo=lambda line: None)
        full = time.perf_counter() - start
        raw_mb = sum(np.prod(open_store(url).array(a).shape[1:]) * 2 for a in ARRAYS[:3]) / 1e6
        print(f"store: {url} ({n} blocks, {raw_mb:.1f} MB raw per block in color+reference+motion)")
        print(f"{'read (training arrays)':<34} {'ms/block':>9} {'ratio':>7}")
        print(f"{'unchecked (verify=False)':<34} {unchecked:>9.2f} {1:>7.3f}")
        print(f"{'checked (crc32c per block)':<34} {checked:>9.2f} {checked / unchecked:>7.3f}")
        print(f"{'crc32c alone, 3 arrays':<34} {crc_ms(url, args.repeats):>9.2f} {'':>7}")
        print(f"qw datagen verify (4 arrays, 4 threads): {full:.2f} s, {n / full:.1f} blocks/s")


if __name__ == "__main__":
    main()

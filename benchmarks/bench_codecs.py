"""What the block store's codec costs: encode/decode CPU per block and ratio of blosc settings on real blocks.

Compression is most of a build's CPU time, so this compares blosc settings (the store's: zstd level 1, byte shuffle)
with each other on the first `--blocks` blocks of an existing store (every image array of a block, encoded
whole as the builder writes it). CPU time of this process, blosc single-threaded as in the builder.

    .venv/bin/python benchmarks/bench_codecs.py STORE [--blocks 10]
"""

from __future__ import annotations

import argparse
import time

import numcodecs.blosc
from numcodecs import Blosc

from qw.datagen.block_store import IMAGE_ARRAYS, open_store

SETTINGS = [("zstd", 5, Blosc.BITSHUFFLE), ("zstd", 3, Blosc.BITSHUFFLE), ("zstd", 1, Blosc.BITSHUFFLE),
            ("zstd", 1, Blosc.SHUFFLE), ("lz4", 5, Blosc.BITSHUFFLE)]
SHUFFLES = {Blosc.SHUFFLE: "byte shuffle", Blosc.BITSHUFFLE: "bit shuffle"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--blocks", type=int, default=10)
    args = ap.parse_args()
    numcodecs.blosc.use_threads = False  # as in the builder, where zarr runs codecs off the main thread
    store = open_store(args.store, require_complete=False)  # the first blocks of a build in progress will do
    blocks = [[store.array(name)[i] for name in IMAGE_ARRAYS] for i in range(min(args.blocks, store.num_blocks))]
    raw = sum(a.nbytes for block in blocks for a in block)
    print(f"{len(blocks)} blocks of {args.store}, {raw / len(blocks) / 1e6:.1f} MB raw each\n")
    print("| codec | encode ms/block | decode ms/block | ratio |\n|---|---:|---:|---:|")
    for cname, level, shuffle in SETTINGS:
        codec = Blosc(cname=cname, clevel=level, shuffle=shuffle, typesize=2)
        start = time.process_time()
        encoded = [codec.encode(a) for block in blocks for a in block]
        encode = time.process_time() - start
        start = time.process_time()
        for data in encoded:
            codec.decode(data)
        decode = time.process_time() - start
        print(f"| blosc {cname} level {level}, {SHUFFLES[shuffle]} | {encode / len(blocks) * 1e3:.0f} | "
              f"{decode / len(blocks) * 1e3:.0f} | {raw / sum(len(d) for d in encoded):.2f} |")


if __name__ == "__main__":
    main()

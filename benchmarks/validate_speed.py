"""Speed of `qw datagen validate` on a synthetic 1080p shot (decode, checksums, pixel checks, reprojection).

    .venv/bin/python benchmarks/validate_speed.py [--frames 8] [--width 1920 --height 1080]

Prints one row per worker count: wall seconds, frames/s, uncompressed MB/s, CPU seconds and the CPU time as a ratio
to a floor measured in the same run: decoding every EXR of the shot once, which no validation can skip. Wall
times on shared machines are noisy; the CPU ratio much less so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from capture_helpers import make_capture  # noqa: E402  (the tests' synthetic capture: a camera over a plane)

from qw.datagen.capture_format import PASSES, read_frame  # noqa: E402
from qw.datagen.validate import validate_capture  # noqa: E402


def decode_floor(shot: Path, frames: int) -> float:
    """CPU seconds to decode every frame of every pass once."""
    start = time.process_time()
    for i in range(frames):
        for pass_name in PASSES:
            read_frame(shot, pass_name, i)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    bytes_per_frame = args.width * args.height * sum(p.num_channels * p.dtype(0).itemsize for p in PASSES.values())
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "bench" / "shot"
        make_capture(shot, frames=args.frames, width=args.width, height=args.height)
        floor = decode_floor(shot, args.frames)
        print(f"decode floor: {floor:.2f} CPU s")
        print(f"{'resolution':>10}  {'frames':>6}  {'workers':>7}  {'seconds':>7}  {'frames/s':>8}  {'MB/s':>6}  "
              f"{'CPU s':>6}  {'÷ floor':>7}  result")
        for workers in args.workers:
            start, cpu = time.perf_counter(), time.process_time()
            report = validate_capture(shot, workers=workers)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            mb_s = args.frames * bytes_per_frame / seconds / 1e6
            print(f"{args.width}x{args.height:<5}  {args.frames:>6}  {workers:>7}  {seconds:>7.2f}  "
                  f"{args.frames / seconds:>8.2f}  {mb_s:>6.0f}  {cpu:>6.2f}  {cpu / floor:>7.2f}  {report.verdict}")


if __name__ == "__main__":
    main()

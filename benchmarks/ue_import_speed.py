"""Speed of `qw datagen import --layout intel-sample` on synthetic 1080p frames, and of its velocity decoder.

    .venv/bin/python benchmarks/ue_import_speed.py [--frames 8] [--size 1920x1080]

Writes Intel-sample-shaped folders (noaa/ ssaa/ vel/ with the sign-bit velocity encoding, built by the test
helpers from analytic motion) into a temporary directory, imports them (decode, convert, write the contract's
EXRs, checksum, validate) and prints a table. Timings on a shared machine are noisy: run it a few times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ue_formats import analytic_motion, pixels_to_ndc, sign_bits, write_intel_sample  # noqa: E402

from qw.datagen.validate import validate_capture  # noqa: E402
from qw.ue_capture.convert import decode_motion  # noqa: E402
from qw.ue_capture.importers import import_capture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    encoded = sign_bits(pixels_to_ndc(analytic_motion(width, height), width, height)).astype(np.float32)
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        decode_motion(encoded, "sign-bits", (width, height))
    decode_s = (time.perf_counter() - start) / repeats

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        write_intel_sample(src, width, height, list(range(args.frames)))
        start = time.perf_counter()
        shot = import_capture("intel-sample", src, scene="bench", shot="s", out=Path(tmp) / "out", progress=False)
        import_s = time.perf_counter() - start
        start = time.perf_counter()
        validate_capture(shot)
        validate_s = time.perf_counter() - start

    print(f"| what ({width}x{height}) | time | rate |")
    print("|---|---|---|")
    print(f"| decode sign-bit velocity, one frame | {decode_s * 1e3:.1f} ms | {1 / decode_s:.1f} frames/s |")
    print(f"| import + validate, {args.frames} frames | {import_s:.2f} s | {args.frames / import_s:.2f} frames/s |")
    print(f"| of which validate (timed again alone) | {validate_s:.2f} s | {args.frames / validate_s:.2f} frames/s |")


if __name__ == "__main__":
    main()

"""Builtin renderer speed: frames per second of the 1 spp passes and of the supersampled reference.

    .venv/bin/python benchmarks/bench_render.py [--scenes builtin_fence ...] [--sizes 256x256 1920x1080]

Per scene and size it times, on the current GL device (llvmpipe on CPUs):
  * 1 spp: the jittered colour pass plus the motion/depth pass, read back to numpy (what a captured frame needs
    besides its reference);
  * reference: the N×N stratified passes averaged (default 8×8 = 64 spp);
  * capture: one whole captured frame, i.e. both of the above plus the four ZIP-compressed EXR writes.
Each number is the best of --repeat runs (the machine may be shared; the best run is the least disturbed).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from datagen import capture_format as cf
from datagen.builtin.renderer import Renderer, halton_jitter
from datagen.builtin.scenes import build_scene
from datagen.manifests import find_scene

SCENES = ["builtin_fence", "builtin_street", "builtin_specular", "builtin_crossing", "builtin_courtyard",
          "builtin_machinery"]


def best_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(scene_name: str, width: int, height: int, grid: int, repeat: int, frame: int = 30) -> dict[str, float]:
    m = find_scene(scene_name)
    renderer = Renderer(build_scene(m.builtin.builder, m.builtin.params, m.seed), width, height)
    with tempfile.TemporaryDirectory() as shot:

        def one_spp():
            return renderer.render_color(frame, halton_jitter(frame)), *renderer.render_gbuffer(frame, frame - 1)

        def capture_frame():
            color, motion, depth = one_spp()
            reference = renderer.render_reference(frame, grid)
            for name, image in (("color", color), ("motion", motion), ("depth", depth), ("reference", reference)):
                cf.write_frame(shot, name, 0, image)

        one_spp()  # warm-up: shader compilation, first-touch allocations
        result = {"1 spp fps": 1 / best_seconds(one_spp, repeat),
                  f"reference {grid}x{grid} fps": 1 / best_seconds(lambda: renderer.render_reference(frame, grid),
                                                                   repeat),
                  "capture fps": 1 / best_seconds(capture_frame, repeat)}
    renderer.release()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=SCENES)
    parser.add_argument("--sizes", nargs="+", default=["256x256", "1920x1080"], help="WIDTHxHEIGHT …")
    parser.add_argument("--grid", type=int, default=8, help="reference samples per axis (8 = 64 spp)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    args = parser.parse_args()
    from datagen.builtin.renderer import gl_context

    info = gl_context().info
    print(f"device: {info['GL_RENDERER']} (OpenGL {info['GL_VERSION']})")
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        for scene in args.scenes:
            rows.append((scene, f"{width}x{height}", bench(scene, width, height, args.grid, args.repeat)))
    columns = list(rows[0][2])
    print(f"{'scene':<18} {'size':>10} " + " ".join(f"{c:>18}" for c in columns))
    for scene, size, result in rows:
        print(f"{scene:<18} {size:>10} " + " ".join(f"{result[c]:>18.2f}" for c in columns))


if __name__ == "__main__":
    main()

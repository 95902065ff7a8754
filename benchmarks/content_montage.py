"""Before/after picture of the builtin content: older generators' frames beside the game-like ones.

    .venv/bin/python benchmarks/content_montage.py [--out results/content_montage.png] [--scenes ...]

One row per scene (its held-out test instance, at the quality protocol's 256×160 and 16 spp reference): the whole
aliased 1 spp frame, then its worst 64×64 region (the window where the tone-mapped input is furthest from the
reference) as the aliased input and as the reference, magnified 2.5× without filtering. It prints a table of the
input's PSNR against the reference over the frame and over that region. The picture in the docs is
`docs/images/content_montage.png`, written by this script with its defaults and `--out docs/images/...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.builtin.renderer import Renderer, halton_jitter  # noqa: E402
from datagen.builtin.scenes import build_scene  # noqa: E402
from datagen.manifests import find_scene  # noqa: E402
from training.metrics import psnr, tonemap  # noqa: E402

BEFORE = ["builtin_fence_test", "builtin_crossing_test"]
AFTER = ["builtin_courtyard_test", "builtin_machinery_test"]
CROP, ZOOM = 64, 2.5


def worst_window(error: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left (y, x) of the size×size window with the largest summed error (integral image)."""
    table = np.pad(error, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    y, x = np.unravel_index(np.argmax(sums), sums.shape)
    return int(y), int(x)


def render(name: str, frame: int, size: tuple[int, int], spp_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(aliased 1 spp colour with the frame's jitter, box-filtered reference) of shot-source `frame`."""
    m = find_scene(name)
    renderer = Renderer(build_scene(m.builtin.builder, m.builtin.params, m.seed), *size)
    try:
        return renderer.render_color(frame, halton_jitter(frame)), renderer.render_reference(frame, spp_axis)
    finally:
        renderer.release()


def to_pixels(linear: np.ndarray, zoom: float = 1.0) -> Image.Image:
    image = Image.fromarray(np.round(np.clip(tonemap(linear), 0, 1) * 255).astype(np.uint8))
    if zoom != 1.0:
        image = image.resize((round(image.width * zoom), round(image.height * zoom)), Image.NEAREST)
    return image


def scene_row(name: str, frame: int, size: tuple[int, int], spp_axis: int) -> tuple[Image.Image, dict]:
    color, reference = render(name, frame, size, spp_axis)
    error = np.abs(tonemap(color) - tonemap(reference)).mean(-1)
    y, x = worst_window(error, CROP)
    crop = (slice(y, y + CROP), slice(x, x + CROP))
    whole = to_pixels(color)
    ImageDraw.Draw(whole).rectangle((x, y, x + CROP - 1, y + CROP - 1), outline=(255, 40, 40))
    tiles = [whole, to_pixels(color[crop], ZOOM), to_pixels(reference[crop], ZOOM)]
    row = Image.new("RGB", (sum(t.width for t in tiles) + 2 * 4, max(t.height for t in tiles)), (255, 255, 255))
    left = 0
    for tile in tiles:
        row.paste(tile, (left, 0))
        left += tile.width + 4
    ImageDraw.Draw(row).text((4, 2), name, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    stats = {"scene": name, "frame": psnr(color, reference), "region": psnr(color[crop], reference[crop])}
    return row, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/content_montage.png"))
    parser.add_argument("--scenes", nargs="+", default=BEFORE + AFTER)
    parser.add_argument("--frame", type=int, default=40, help="source frame of every scene")
    parser.add_argument("--size", default="256x160")
    parser.add_argument("--spp-axis", type=int, default=4, help="reference samples per axis (4: 16 spp)")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    rows, stats = zip(*(scene_row(name, args.frame, size, args.spp_axis) for name in args.scenes))
    header = 16
    montage = Image.new("RGB", (max(r.width for r in rows), header + sum(r.height + 4 for r in rows) - 4),
                        (255, 255, 255))
    crop_left, crop_width = size[0] + 4, round(CROP * ZOOM) + 4
    for left, title in ((0, "aliased input, 1 spp (red: worst region)"), (crop_left, "worst region: input"),
                        (crop_left + crop_width, f"reference ({args.spp_axis ** 2} spp box)")):
        ImageDraw.Draw(montage).text((left + 2, 2), title, fill=(0, 0, 0))
    top = header
    for row in rows:
        montage.paste(row, (0, top))
        top += row.height + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    montage.save(args.out, optimize=True)
    print(f"| scene | PSNR input vs reference, frame (dB) | worst {CROP}x{CROP} region (dB) |")
    print("|---|---|---|")
    for s in stats:
        print(f"| {s['scene']} | {s['frame']:.2f} | {s['region']:.2f} |")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

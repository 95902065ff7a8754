"""How far reusing the history can go on the quality content: an accumulator with an oracle history test, on val.

    .venv/bin/python benchmarks/quality_ceiling.py --out results/quality

TAA and QW-Net both build each frame from the current 1-spp frame and the previous output moved along the motion
vectors. This script measures what that structure allows on the val shots of a quality run (rendering any
missing capture), with everything a method could get wrong replaced by the truth:

* the history test is an oracle: the history restarts off screen and wherever the *reference* changed by more than
  `threshold` (display value, any channel) from the previous reference moved along the exact motion: shading that
  moves over a surface, disocclusions, and sub-pixel detail that no resampling filter moves exactly;
* no variance clipping: the kept history is trusted as it is;
* the rest is qw's TAA itself (`TemporalAA`: 1/n start-up, then at least `alpha` for the new frame, in
  compressed-luma YCoCg, Catmull-Rom reprojection), with the exact motion undilated and no flicker weighting, over
  a grid of `alpha` and `threshold`;
* the input is either the 1-spp frame, unjittered as TAA does, or the reference itself: then the only loss is what
  the reprojection loses, and its score bounds any method that keeps that much history.

A second table renders every val frame again with the scene frozen there, so that nothing moves and no history
is lost: the mean of the 1-spp samples at the jitter cycle's positions (what a perfect accumulator of the shot's
frames would converge to on a still image), at twice as many positions, and at the reference's own positions but
with the 1-spp frames' texture detail (their mip level: the reference sees finer mips).

Writes `<out>/ceiling.md`: PSNR over all frames and over the steady state per setting, TAA's, the share of
pixels per frame whose reference changes by more than each threshold, and the frozen-frame scores.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qw.training.evaluation.taa import TaaFrame, TaaParams, TemporalAA

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import PLANS, capture, held_out_shots, run_folder_parser, set_threads, val_summary  # noqa: E402

ALPHAS = (0.1, 0.2, 0.3, 0.5)
THRESHOLDS: tuple[float | None, ...] = (0.03, 0.1, 0.3, None)  # None: the history is never rejected
REFERENCE_INPUT = ((0.2, None), (0.2, 0.1), (0.2, 0.03))  # (alpha, threshold) with the reference as the input


def reference_change(reference: torch.Tensor, previous: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W): the largest change of any channel's display value between `reference` and the `previous`
    reference moved to this frame along the exact `motion`."""
    from qw.training.evaluation.metrics import display
    from qw.training.evaluation.taa import reproject

    return (display(reference) - display(reproject(previous, motion))).abs().amax(1, keepdim=True)


class OracleTAA(TemporalAA):
    """`TemporalAA` without clipping, motion dilation, depth test or flicker weighting, whose history also restarts
    where the reference changed by more than `threshold` (never when None): TAA told where its history is stale."""

    def __init__(self, alpha: float, threshold: float | None):
        super().__init__(TaaParams(gamma=None, alpha=alpha, max_history=math.inf, flicker_weight=0.0, dilate=False,
                                   depth_tolerance=0.0))
        self.threshold = threshold
        self.reference: torch.Tensor | None = None
        self.previous_reference: torch.Tensor | None = None

    def history_reset(self, motion: torch.Tensor, depth: torch.Tensor | None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        reset = super().history_reset(motion, depth, positions)
        if self.threshold is not None:
            reset |= reference_change(self.reference, self.previous_reference, motion) > self.threshold
        return reset

    def step_with_reference(self, frame: TaaFrame, reference: torch.Tensor) -> torch.Tensor:
        """`step` on `frame` (unjittered when it carries its jitter), whose reference (1,3,H,W) is `reference`."""
        self.reference = reference
        output = self.step(frame)
        self.previous_reference = reference
        return output


@dataclass
class Shot:
    frames: list[TaaFrame]          # the methods' inputs, frame by frame
    references: list[torch.Tensor]  # (1,3,H,W) float32


def load_shots(shots: list[Path], frames: int) -> list[Shot]:
    from qw.datagen.capture_format import load_meta
    from qw.training.evaluation.evaluate import shot_frames
    from qw.training.infer import frame_range, read_reference

    loaded = []
    for shot in shots:
        meta = load_meta(shot)
        indices = frame_range(meta, 0, frames)
        references = [torch.from_numpy(read_reference(shot, i)).permute(2, 0, 1)[None] for i in indices]
        loaded.append(Shot(list(shot_frames(shot, meta, indices)), references))
    return loaded


def accumulate(shots: list[Shot], alpha: float, threshold: float | None, reference_input: bool) -> dict[str, float]:
    """PSNR over every frame and over the steady state of the oracle accumulator on `shots`."""
    from qw.training.evaluation import metrics
    from qw.training.infer import to_image

    scores: dict[str, list[float]] = {"psnr": [], "psnr_steady": []}
    for shot in shots:
        oracle = OracleTAA(alpha, threshold)
        for i, (frame, reference) in enumerate(zip(shot.frames, shot.references)):
            if reference_input:
                frame = frame._replace(color=reference, jitter=None)
            output = oracle.step_with_reference(frame, reference)
            psnr = metrics.psnr(to_image(output), to_image(reference))
            scores["psnr"].append(psnr)
            if i >= metrics.STEADY_STATE_FROM:
                scores["psnr_steady"].append(psnr)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def changed_share(shots: list[Shot], threshold: float) -> float:
    """The mean share, over frames with a history, of on-screen pixels whose reference changes by > `threshold`."""
    from qw.training.evaluation.taa import off_screen, source_positions

    shares = []
    for shot in shots:
        for k in range(1, len(shot.frames)):
            motion = shot.frames[k].motion.float()
            change = reference_change(shot.references[k], shot.references[k - 1], motion)
            on_screen = ~off_screen(source_positions(motion))
            shares.append(float((change > threshold)[on_screen].float().mean()))
    return float(np.mean(shares))


def frozen_frame_psnr(shot: Path, offsets: np.ndarray, texture_bias: float, frames: int) -> list[float]:
    """Per frame of the first `frames` of the builtin capture `shot`, the PSNR against its reference of that frame
    rendered again with the scene frozen: the mean of one-sample renders at `offsets` ((N,2) pixels from the pixel
    centre, +y down), textures sampled at mip bias `texture_bias`."""
    from qw.datagen.builtin.renderer import Renderer
    from qw.datagen.builtin.scenes import build_scene
    from qw.datagen.capture_format import load_meta, read_frame
    from qw.training.evaluation.metrics import psnr

    meta = load_meta(shot)
    settings = meta.backend.settings  # the scene as captured, not as its manifest reads today
    scene = build_scene(settings["builder"], settings["params"], meta.seed, where=str(shot))
    renderer = Renderer(scene, meta.width, meta.height, mip_bias=texture_bias)
    try:
        scores = []
        for i, frame in enumerate(meta.source_frames[:frames]):
            mean = np.mean([renderer.render_color(frame, offset) for offset in offsets], axis=0, dtype=np.float64)
            scores.append(psnr(mean.astype(np.float32), read_frame(shot, "reference", i)))
        return scores
    finally:
        renderer.release()


def frozen_limits(shots: list[Path], frames: int) -> list[tuple[str, float]]:
    """(estimate, mean PSNR over the frames of `shots`) for each frozen-frame estimate of the module docstring."""
    from qw.datagen.builtin.renderer import halton_jitter, stratified_offsets
    from qw.datagen.capture_format import load_meta

    settings = load_meta(shots[0]).backend.settings
    cycle, bias, grid = settings["jitter_cycle"], settings["mip_bias"], settings["reference_grid"][0]
    estimates = {
        f"mean of the 1-spp samples at the jitter cycle's {cycle} positions": [halton_jitter(k, cycle)
                                                                              for k in range(cycle)],
        f"mean of the 1-spp samples at {2 * cycle} jitter positions": [halton_jitter(k, 2 * cycle)
                                                                       for k in range(2 * cycle)],
        f"the reference's {grid}×{grid} positions at the 1-spp texture detail": stratified_offsets(grid),
    }
    return [(label, float(np.mean([p for shot in shots
                                   for p in frozen_frame_psnr(shot, np.asarray(offsets), bias, frames)])))
            for label, offsets in estimates.items()]


def ceiling_report(shots: list[Shot], taa: dict[str, float], frames: int, frozen: list[tuple[str, float]]) -> str:
    rows = [f"| TAA (tuned on val) | 1-spp | – | – | {taa['psnr']:.2f} | {taa['psnr_steady']:.2f} |"]
    settings = [(False, a, t) for a, t in itertools.product(ALPHAS, THRESHOLDS)]
    settings += [(True, a, t) for a, t in REFERENCE_INPUT]
    for reference_input, alpha, threshold in settings:
        score = accumulate(shots, alpha, threshold, reference_input)
        rows.append(f"| oracle accumulator | {'reference' if reference_input else '1-spp'} | {alpha} | "
                    f"{'never' if threshold is None else threshold} | {score['psnr']:.2f} | "
                    f"{score['psnr_steady']:.2f} |")
        print(rows[-1], flush=True)
    changes = [f"| {t} | {changed_share(shots, t):.3f} |" for t in THRESHOLDS if t is not None]
    return "\n".join([
        "# How far reusing the history can go", "",
        f"Val shots ({len(shots)} × {frames} frames). α: the new frame's least weight; τ: the reference change "
        "(display value) above which the oracle restarts the history.", "",
        "| method | input | α | τ | PSNR dB | PSNR frames ≥ 8 |", "|---|---|---:|---:|---:|---:|", *rows, "",
        "Share of on-screen pixels per frame whose reference changes by more than τ along the exact motion:", "",
        "| τ | share |", "|---:|---:|", *changes, "",
        "Every val frame rendered again with the scene frozen there (no motion, no history lost):", "",
        "| estimate | PSNR dB |", "|---|---:|", *(f"| {label} | {score:.2f} |" for label, score in frozen)])


def main(argv: list[str] | None = None) -> None:
    args = run_folder_parser(__doc__.splitlines()[0]).parse_args(argv)
    from qw.training.evaluation.taa import run_taa

    set_threads(args.threads)
    plan = PLANS[args.plan]
    val = capture(plan, args.out / "captures", held_out_shots(plan, "val"), plan.val_frames)
    taa = val_summary(run_taa, val, plan.val_frames)
    with torch.no_grad():
        report = ceiling_report(load_shots(val, plan.val_frames), taa, plan.val_frames,
                                frozen_limits(val, plan.val_frames))
    (args.out / "ceiling.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()

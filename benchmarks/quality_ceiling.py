"""How far reusing the history can go on the quality content: an accumulator with an oracle history test, on val.

    .venv/bin/python benchmarks/quality_ceiling.py --out results/quality

TAA and QW-Net both build each frame from the current 1-spp frame and the previous output moved along the motion
vectors. This script measures what that structure allows on the val shots of a quality run (rendering any
missing capture), with everything a method could get wrong replaced by the truth:

* the history test is an oracle: the history restarts off screen and wherever the *reference* changed by more than
  `threshold` (display value, any channel) from the previous reference moved along the exact motion: shading that
  moves over a surface, disocclusions, and sub-pixel detail that no resampling filter moves exactly;
* no variance clipping: the kept history is trusted as it is;
* the blend is TAA's (1/n start-up, then at least `alpha` for the new frame, in compressed-luma YCoCg, Catmull-Rom
  reprojection with the undilated exact motion), over a grid of `alpha` and `threshold`;
* the input is either the 1-spp frame, unjittered as TAA does, or the reference itself: then the only loss is what
  the reprojection loses, and its score bounds any method that keeps that much history.

Writes `<out>/ceiling.md`: PSNR over all frames and over the steady state per setting, TAA's, and the share of
pixels per frame whose reference changes by more than each threshold.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from qw.training.evaluation.taa import TaaFrame

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


@dataclass
class OracleAccumulator:
    """TAA's blend without clipping, whose history restarts where the reference says it is stale."""

    alpha: float
    threshold: float | None
    output: torch.Tensor | None = None
    length: torch.Tensor | None = None
    reference: torch.Tensor | None = None

    def step(self, color: torch.Tensor, motion: torch.Tensor, history_valid: bool, reference: torch.Tensor,
             jitter: tuple[float, float] | None = None) -> torch.Tensor:
        """One frame: `color` (1,3,H,W) linear, unjittered first when `jitter` is given; `reference` (1,3,H,W)."""
        from qw.training.evaluation.taa import (compress_luma, expand_luma, off_screen, reproject, rgb_to_ycocg,
                                                source_positions, unjitter, ycocg_to_rgb)
        from qw.training.model.warp import warp

        sample = rgb_to_ycocg(compress_luma(color.float().clamp_min(0)))
        if jitter is not None:
            sample = unjitter(sample, jitter)
        if self.output is None or not history_valid:
            self.length, blended = torch.ones_like(sample[:, :1]), sample
        else:
            positions = source_positions(motion)
            reset = off_screen(positions)
            if self.threshold is not None:
                reset |= reference_change(reference, self.reference, motion) > self.threshold
            self.length = torch.where(reset, 1.0, warp(self.length, motion) + 1.0)
            history = rgb_to_ycocg(compress_luma(reproject(self.output, motion, positions).clamp_min(0)))
            blended = torch.lerp(history, sample, (1.0 / self.length).clamp_min(self.alpha))
        self.output, self.reference = expand_luma(ycocg_to_rgb(blended)).clamp_min(0), reference
        return self.output


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
        oracle = OracleAccumulator(alpha, threshold)
        for i, (frame, reference) in enumerate(zip(shot.frames, shot.references)):
            color = reference if reference_input else frame.color
            output = oracle.step(color, frame.motion.float(), frame.history_valid, reference,
                                 None if reference_input else frame.jitter)
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


def ceiling_report(shots: list[Shot], taa: dict[str, float], frames: int) -> str:
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
        "| τ | share |", "|---:|---:|", *changes])


def main(argv: list[str] | None = None) -> None:
    args = run_folder_parser(__doc__.splitlines()[0]).parse_args(argv)
    from qw.training.evaluation.taa import run_taa

    set_threads(args.threads)
    plan = PLANS[args.plan]
    val = capture(plan, args.out / "captures", held_out_shots(plan, "val"), plan.val_frames)
    taa = val_summary(run_taa, val, plan.val_frames)
    with torch.no_grad():
        report = ceiling_report(load_shots(val, plan.val_frames), taa, plan.val_frames)
    (args.out / "ceiling.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()

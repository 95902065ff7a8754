"""What limits QW-Net against the engine-style TAA, measured on checkpoints of a quality run.

    .venv/bin/python benchmarks/quality_diagnose.py --out results/quality CHECKPOINT [CHECKPOINT ...]

Reads the quality run's captures (rendering any that are missing) and writes `<out>/diagnosis.md`:

1. **fit**: PSNR of each checkpoint and of TAA on the shots it *trained* on (their first `val_frames` frames) and
   on the val shots. A network that trails TAA on its own training shots is limited by its fit (capacity,
   optimisation, loss), not by how it generalises;
2. **where the error is**: on the val shots' steady state (frames ≥ `STEADY_STATE_FROM`), each method's squared
   display error per pixel class: where TAA restarts its history (off-screen or disoccluded), edges (the top
   decile of the reference's display-luma gradient, per frame), and the rest;
3. **how far the network trusts its history**: the sum of its full-resolution history kernel weights, per class
   (TAA's steady-state blend gives the history at most 1 − alpha).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import (PLANS, QualityPlan, capture, held_out_shots, run_folder_parser, set_threads,  # noqa: E402
                     training_shots, val_summary)

EDGE_QUANTILE = 0.9
CLASSES = ("TAA history reset", "edges", "rest")


class HistoryWeightProbe:
    """A forward hook on U_f that keeps the last frame's per-pixel history weight: the sum of the
    full-resolution kernel weights applied to the warped history."""

    def __init__(self, model):
        from qw.training.model.qwnet import normalize_weights

        def hook(module, inputs, _output):
            raw = [p(f) for p, f in zip(module.predictors, inputs[0])]
            taps = module.input_kernel ** 2
            self.weight = normalize_weights(raw, module.input_kernel, module.lobe)[0][0][0, taps:].sum(0).detach()

        self.weight = None
        model.filter.register_forward_hook(hook)


def pixel_classes(reference: np.ndarray, taa_reset: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean H×W masks of `CLASSES` for one frame; edges and rest exclude the reset pixels."""
    from qw.datagen.tonemap import tonemap

    luma = tonemap(reference).mean(-1)
    gy, gx = np.gradient(luma)
    gradient = np.hypot(gx, gy)
    edges = (gradient > np.quantile(gradient, EDGE_QUANTILE)) & ~taa_reset
    return dict(zip(CLASSES, (taa_reset, edges, ~taa_reset & ~edges)))


@dataclass
class ValFrame:
    """One val frame as every checkpoint is scored against it: the reference, and from the steady state on, the
    pixel classes and TAA's per-pixel squared display error (TAA runs once, not once per checkpoint)."""

    reference: np.ndarray
    classes: dict[str, np.ndarray] | None = None
    taa_error: np.ndarray | None = None


def squared_error(output, reference: np.ndarray) -> np.ndarray:
    """H×W squared display error (mean over channels) of a (1,3,H,W) output."""
    from qw.datagen.tonemap import tonemap
    from qw.training.infer import to_image

    return ((tonemap(to_image(output)).astype(np.float64) - tonemap(reference)) ** 2).mean(-1)


def val_frames_with_taa(shots: list[Path], frames: int) -> tuple[list[list[ValFrame]], float]:
    """Every val shot's frames (`ValFrame`), and TAA's PSNR over all of them."""
    from qw.datagen.capture_format import load_meta
    from qw.training.evaluation import metrics
    from qw.training.evaluation.evaluate import shot_frames
    from qw.training.evaluation.taa import TemporalAA
    from qw.training.infer import frame_range, read_reference, to_image

    per_shot, psnrs = [], []
    for shot in shots:
        meta = load_meta(shot)
        indices = frame_range(meta, 0, frames)
        taa, shot_truth = TemporalAA(), []
        for i, frame in enumerate(shot_frames(shot, meta, indices)):
            output, reference = taa.step(frame), read_reference(shot, indices[i])
            psnrs.append(metrics.psnr(to_image(output), reference))
            truth = ValFrame(reference)
            if i >= metrics.STEADY_STATE_FROM:
                truth.classes = pixel_classes(reference, taa.length[0, 0].numpy() == 1)
                truth.taa_error = squared_error(output, reference)
            shot_truth.append(truth)
        per_shot.append(shot_truth)
    return per_shot, float(np.mean(psnrs))


def score_on_val(model, shots: list[Path], truth: list[list[ValFrame]]) -> tuple[float, dict[str, dict[str, float]]]:
    """QW-Net's PSNR over every val frame, and per pixel class of the steady state: share of pixels, mean squared
    display error of QW-Net and of TAA, QW-Net's history weight."""
    import torch

    from qw.datagen.capture_format import load_meta
    from qw.training.evaluation import metrics
    from qw.training.evaluation.evaluate import shot_frames
    from qw.training.infer import frame_range, run_qwnet, to_image

    probe = HistoryWeightProbe(model)
    sums = {c: np.zeros(4) for c in CLASSES}  # pixels, QW-Net squared error, TAA squared error, history weight
    psnrs = []
    for shot, shot_truth in zip(shots, truth):
        meta = load_meta(shot)
        feed = shot_frames(shot, meta, frame_range(meta, 0, len(shot_truth)))
        with torch.no_grad():
            for output, t in zip(run_qwnet(model, feed), shot_truth):
                psnrs.append(metrics.psnr(to_image(output), t.reference))
                if t.classes is None:
                    continue
                error = squared_error(output, t.reference)
                weight = probe.weight[:error.shape[0], :error.shape[1]].numpy()
                for name, mask in t.classes.items():
                    sums[name] += (mask.sum(), error[mask].sum(), t.taa_error[mask].sum(), weight[mask].sum())
    total = sum(s[0] for s in sums.values())
    return float(np.mean(psnrs)), {
        c: {"share": s[0] / total, "qwnet_mse": s[1] / max(s[0], 1), "taa_mse": s[2] / max(s[0], 1),
            "history_weight": s[3] / max(s[0], 1)} for c, s in sums.items()}


def diagnose(plan: QualityPlan, captures: Path, checkpoints: list[Path]) -> str:
    from qw.training.evaluation.evaluate import _qwnet
    from qw.training.evaluation.metrics import STEADY_STATE_FROM
    from qw.training.evaluation.taa import TaaParams, run_taa
    from qw.training.quantization.qat import model_from_any_checkpoint

    frames = plan.val_frames
    train = capture(plan, captures, training_shots(plan), plan.train_frames)  # complete captures are kept
    val = capture(plan, captures, held_out_shots(plan, "val"), frames)
    truth, taa_val = val_frames_with_taa(val, frames)
    taa_train = val_summary(run_taa, train, frames)["psnr"]
    fit = ["| method | PSNR on its training shots | PSNR on val |", "|---|---:|---:|",
           f"| TAA | {taa_train:.2f} | {taa_val:.2f} |"]
    where = ["| checkpoint | pixels | share | QW-Net MSE | TAA MSE | QW-Net / TAA | QW-Net history weight |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for checkpoint in checkpoints:
        model, _, _ = model_from_any_checkpoint(str(checkpoint))
        model.eval()
        label = "/".join(checkpoint.parts[-3:])
        on_train = val_summary(_qwnet(model, "cpu"), train, frames)["psnr"]
        on_val, classes = score_on_val(model, val, truth)
        fit.append(f"| {label} | {on_train:.2f} ({on_train - taa_train:+.2f}) | {on_val:.2f} ({on_val - taa_val:+.2f}) |")
        for name, c in classes.items():
            where.append(f"| {label} | {name} | {c['share']:.3f} | {c['qwnet_mse']:.2e} | {c['taa_mse']:.2e} | "
                         f"{c['qwnet_mse'] / c['taa_mse']:.2f} | {c['history_weight']:.3f} |")
    return "\n".join([
        "# What limits QW-Net against TAA", "",
        f"## Fit: PSNR (dB) over the first {frames} frames of {len(train)} training and {len(val)} val shots", "",
        *fit, "",
        f"## Where the error is: val shots, frames ≥ {STEADY_STATE_FROM}, squared display error per pixel class", "",
        f"Edges: the top {1 - EDGE_QUANTILE:.0%} of the reference's display-luma gradient per frame. TAA gives "
        f"the history at most {1 - TaaParams().alpha:.2f} of each pixel in the steady state.", "", *where])


def main(argv: list[str] | None = None) -> None:
    parser = run_folder_parser(__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="FP32 or QAT checkpoints (e.g. seed0/fp32_step750.pt)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    for checkpoint in args.checkpoints:
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: no such checkpoint")
    report = diagnose(PLANS[args.plan], args.out / "captures", args.checkpoints)
    (args.out / "diagnosis.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()

"""What limits QW-Net against the engine-style TAA, measured on checkpoints of a quality run.

    .venv/bin/python benchmarks/quality_diagnose.py --out results/quality CHECKPOINT [CHECKPOINT ...]

Reads the quality run's captures (`benchmarks/quality.py` makes them) and writes `<out>/diagnosis.md`:

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

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import PLANS, QualityPlan, held_out_shots, training_shots, val_summary  # noqa: E402

EDGE_QUANTILE = 0.9
CLASSES = ("TAA history reset", "edges", "rest")


def shot_paths(captures: Path, shots: dict[str, list[str]]) -> list[Path]:
    paths = [captures / scene / shot for scene, names in shots.items() for shot in names]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise SystemExit(f"no capture at {', '.join(missing)}: run benchmarks/quality.py with this --out first")
    return paths


class HistoryWeightProbe:
    """A forward hook on U_f that keeps the last frame's per-pixel history weight: the sum of the nine
    full-resolution kernel weights applied to the warped history."""

    def __init__(self, model):
        from qw.training.model.qwnet import KERNEL, normalize_weights

        def hook(module, inputs, _output):
            raw = [p(f) for p, f in zip(module.predictors, inputs[0])]
            self.weight = normalize_weights(raw)[0][0][0, KERNEL:].sum(0).detach()

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


def error_by_class(model, shots: list[Path], frames: int) -> dict[str, dict[str, float]]:
    """Per class: share of pixels, mean squared display error of QW-Net and of TAA, QW-Net's history weight."""
    import torch

    from qw.datagen.capture_format import load_meta
    from qw.datagen.tonemap import tonemap
    from qw.training.evaluation.evaluate import shot_frames
    from qw.training.evaluation.metrics import STEADY_STATE_FROM
    from qw.training.evaluation.taa import TemporalAA
    from qw.training.infer import frame_range, read_reference, run_qwnet, to_image

    probe = HistoryWeightProbe(model)
    sums = {c: np.zeros(4) for c in CLASSES}  # pixels, QW-Net squared error, TAA squared error, history weight
    for shot in shots:
        meta = load_meta(shot)
        indices = frame_range(meta, 0, frames)
        taa = TemporalAA()
        feed, taa_feed = itertools.tee(shot_frames(shot, meta, indices))
        with torch.no_grad():
            for i, (frame, output) in enumerate(zip(taa_feed, run_qwnet(model, feed))):
                taa_output = taa.step(frame)
                if i < STEADY_STATE_FROM:
                    continue
                h, w = frame.color.shape[-2:]
                reference = read_reference(shot, indices[i])
                errors = [((tonemap(to_image(x)).astype(np.float64) - tonemap(reference)) ** 2).mean(-1)
                          for x in (output, taa_output)]
                weight = probe.weight[:h, :w].numpy()
                for name, mask in pixel_classes(reference, taa.length[0, 0].numpy() == 1).items():
                    sums[name] += (mask.sum(), errors[0][mask].sum(), errors[1][mask].sum(), weight[mask].sum())
    total = sum(s[0] for s in sums.values())
    return {c: {"share": s[0] / total, "qwnet_mse": s[1] / max(s[0], 1), "taa_mse": s[2] / max(s[0], 1),
                "history_weight": s[3] / max(s[0], 1)} for c, s in sums.items()}


def diagnose(plan: QualityPlan, captures: Path, checkpoints: list[Path]) -> str:
    from qw.training.evaluation.evaluate import _qwnet
    from qw.training.evaluation.metrics import STEADY_STATE_FROM
    from qw.training.evaluation.taa import TaaParams, run_taa
    from qw.training.quantization.qat import model_from_any_checkpoint

    train = shot_paths(captures, training_shots(plan))
    val = shot_paths(captures, held_out_shots(plan, "val"))
    frames = plan.val_frames
    taa = {split: val_summary(run_taa, shots, frames)["psnr"] for split, shots in (("train", train), ("val", val))}
    fit = ["| method | PSNR on its training shots | PSNR on val |", "|---|---:|---:|",
           f"| TAA | {taa['train']:.2f} | {taa['val']:.2f} |"]
    where = ["| checkpoint | pixels | share | QW-Net MSE | TAA MSE | QW-Net / TAA | QW-Net history weight |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for checkpoint in checkpoints:
        model, _, _ = model_from_any_checkpoint(str(checkpoint))
        model.eval()
        label = "/".join(checkpoint.parts[-3:])
        scores = {split: val_summary(_qwnet(model, "cpu"), shots, frames)["psnr"]
                  for split, shots in (("train", train), ("val", val))}
        fit.append(f"| {label} | {scores['train']:.2f} ({scores['train'] - taa['train']:+.2f}) | "
                   f"{scores['val']:.2f} ({scores['val'] - taa['val']:+.2f}) |")
        for name, c in error_by_class(model, val, frames).items():
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="FP32 or QAT checkpoints (e.g. seed0/fp32_step750.pt)")
    parser.add_argument("--out", default="results/quality", type=Path, help="the quality run's folder")
    parser.add_argument("--plan", choices=sorted(PLANS), default="full")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: no such checkpoint")
    report = diagnose(PLANS[args.plan], args.out / "captures", args.checkpoints)
    (args.out / "diagnosis.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()

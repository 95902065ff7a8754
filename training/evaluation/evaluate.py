"""`qw eval`: QW-Net (full precision and quantized) against TAA and the aliased input, on held-out captured shots.

The baselines are the engine-style TAA (`taa`, the default) and the simpler min/max-clamp TAA (`taa-clamp`);
TAA also reads each frame's depth and jitter, as an engine would.

Every method reconstructs each shot at full resolution from the same jittered frames and motion vectors; each
output frame is scored against the supersampled reference with PSNR and SSIM (tone-mapped), HDR-FLIP (centred
crop, see `qw.training.evaluation.metrics`) and tPSNR (frame differences; frames after a cut are skipped). Writes into `out/`:

* ``report.md``: overall and per-shot tables, with links to the images below;
* ``metrics.json``: every per-frame value, per-shot and overall means, and what was evaluated;
* ``<scene>_<shot>_crops.png``: side-by-side crops of one frame (the region where the input aliases most);
* ``<scene>_<shot>_metrics.png``: the four metrics per frame, one line per method.
"""

from __future__ import annotations

import logging
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from qw.datagen import __version__
from qw.datagen.capture_format import find_captures, load_meta
from qw.datagen.errors import QwError, missing_extra
from qw.training.evaluation import metrics
from qw.training.infer import default_device, frame_range, input_frames, read_pass, read_reference, run_qwnet, to_image
from qw.training.evaluation.taa import TaaFrame, run_taa, run_taa_clamp

METRICS = ("psnr", "ssim", "flip", "tpsnr")
METRIC_TITLES = {"psnr": "PSNR dB ↑", "ssim": "SSIM ↑", "flip": "FLIP ↓", "tpsnr": "tPSNR dB ↑"}
INPUT_LABEL = "aliased input"
BASELINES = {"taa": ("TAA", run_taa), "taa-clamp": ("TAA min/max clamp", run_taa_clamp)}
DEFAULT_BASELINES = ("taa",)

Frames = Iterator[TaaFrame]

log = logging.getLogger(__name__)


@dataclass
class Method:
    label: str
    run: Callable[[Frames], Iterator[torch.Tensor]]
    source: str = ""


def passthrough(frames: Frames) -> Iterator[torch.Tensor]:
    """The aliased input itself: each frame's colour."""
    for frame in frames:
        yield frame.color


def _qwnet(model: torch.nn.Module, device: torch.device | str) -> Callable[[Frames], Iterator[torch.Tensor]]:
    return lambda frames: run_qwnet(model, frames, device)


def shot_frames(shot: Path, meta, frames: range) -> Frames:
    """Every method's input: colour, motion and history validity as QW-Net reads them, plus depth and jitter."""
    jitter = meta.jitter_array()
    for index, (color, motion, valid) in zip(frames, input_frames(shot, meta, frames)):
        yield TaaFrame(color, motion, valid, read_pass(shot, "depth", index), tuple(map(float, jitter[index])))


def checkpoint_label(cfg, quantized: bool) -> str:
    if not quantized:
        return "QW-Net FP32"
    q = cfg.quant
    if q.extractor_weight_bits >= 16:
        return "QW-Net FP16"
    return f"QW-Net W{q.extractor_weight_bits}A{q.extractor_act_bits}"


def build_methods(checkpoints: list[str], qwq_files: list[str], baselines: Iterable[str],
                  device: torch.device) -> list[Method]:
    """Aliased input, the baselines (TAA variants) and one method per checkpoint / exported integer model."""
    from qw.training.export.integer_ref import load_integer_model
    from qw.training.quantization.qat import model_from_any_checkpoint

    methods = [Method(INPUT_LABEL, passthrough)]
    for name in baselines:
        if name not in BASELINES:
            raise QwError(f"--baseline {name!r}: baselines are {', '.join(BASELINES)} (or none)")
        methods.append(Method(*BASELINES[name]))
    for path in checkpoints:
        model, cfg, quantized = model_from_any_checkpoint(path)
        methods.append(Method(checkpoint_label(cfg, quantized), _qwnet(model.to(device), device), str(path)))
    for path in qwq_files:
        model, _ = load_integer_model(path)  # integer matmuls run on the CPU
        methods.append(Method("QW-Net integer (.qwq)", _qwnet(model, "cpu"), str(path)))
    distinguish_labels(methods)
    return methods


def distinguish_labels(methods: list[Method]) -> None:
    """Give methods of the same label (two checkpoints of one kind) distinct labels: the label plus the shortest tail
    of the source's folders that tells them apart (the run directory, usually), else of its path; the same file
    given twice is numbered. Labels key the metrics, the report and the plots, so two methods never share one."""
    counts = Counter(m.label for m in methods)
    for label in [k for k, n in counts.items() if n > 1]:
        group = [m for m in methods if m.label == label]
        parts = [Path(m.source).resolve().parts for m in group]
        distinct = len(set(parts))
        longest = max(len(p) for p in parts)
        candidates = ([["/".join(p[:-1][-d:]) for p in parts] for d in range(1, longest)]
                      + [["/".join(p[-d:]) for p in parts] for d in range(1, longest + 1)])
        tails = next(c for c in candidates if len(set(c)) == distinct)
        seen: Counter = Counter()
        for m, tail in zip(group, tails):
            seen[tail] += 1
            m.label = f"{label} ({tail})" + (f" #{seen[tail]}" if tails.count(tail) > 1 else "")


@dataclass
class ShotResult:
    name: str
    frames: list[int]
    per_frame: dict[str, dict[str, list[float | None]]]
    crops: dict[str, np.ndarray] = field(default_factory=dict)
    crop_box: tuple[int, int, int] = (0, 0, 0)

    def mean(self, method: str, metric: str) -> float | None:
        return mean_of_scored(self.per_frame[method][metric])


def mean_of_scored(values: Iterable[float | None]) -> float | None:
    """Mean over the frames that have a value (tPSNR has none without history); None if no frame has one."""
    scored = [v for v in values if v is not None]
    return float(np.mean(scored)) if scored else None


def most_aliased_window(color: np.ndarray, reference: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, size) of the size×size window where the input differs most from the reference (tone-mapped)."""
    h, w = reference.shape[:2]
    size = min(size, h, w)
    err = torch.from_numpy(np.abs(metrics.tonemap(color) - metrics.tonemap(reference)).mean(-1))[None, None]
    stride = max(1, size // 4)
    pooled = torch.nn.functional.avg_pool2d(err, size, stride=stride)[0, 0]
    iy, ix = divmod(int(pooled.argmax()), pooled.shape[1])
    return iy * stride, ix * stride, size


def evaluate_shot(shot: Path, methods: list[Method], count: int | None, flip_crop: int | None,
                  crop_size: int) -> ShotResult:
    meta = load_meta(shot)
    frames = frame_range(meta, 0, count)
    feeds = itertools.tee(shot_frames(shot, meta, frames), len(methods) + 1)
    outputs = [m.run(feed) for m, feed in zip(methods, feeds)]
    inputs = feeds[-1]
    per_frame = {m.label: {k: [] for k in METRICS} for m in methods}
    result = ShotResult(f"{meta.scene}/{meta.shot}", list(frames), per_frame)
    previous: dict[str, np.ndarray] = {}
    prev_ref = None
    for index in tqdm(frames, desc=f"eval {result.name}", unit="frame", leave=False, disable=None):
        color, _, valid, *_ = next(inputs)
        reference = read_reference(shot, index)
        images = {m.label: to_image(next(out)) for m, out in zip(methods, outputs)}
        for label, image in images.items():
            scores = per_frame[label]
            scores["psnr"].append(metrics.psnr(image, reference))
            scores["ssim"].append(metrics.ssim(image, reference))
            scores["flip"].append(metrics.flip(image, reference, flip_crop))
            scores["tpsnr"].append(metrics.tpsnr(previous[label], image, prev_ref, reference) if valid else None)
        if index == frames[-1]:
            y, x, s = most_aliased_window(to_image(color), reference, crop_size)
            result.crop_box = (y, x, s)
            result.crops = {**{k: v[y:y + s, x:x + s] for k, v in images.items()},
                            "reference": reference[y:y + s, x:x + s]}
        previous, prev_ref = images, reference
    return result


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if metric in ("ssim", "flip") else f"{value:.2f}"


def overall_means(results: list[ShotResult], labels: list[str]) -> dict[str, dict[str, float | None]]:
    """Frame-weighted means over all shots."""
    out = {}
    for label in labels:
        out[label] = {}
        for metric in METRICS:
            out[label][metric] = mean_of_scored(v for r in results for v in r.per_frame[label][metric])
    return out


def markdown_table(means: dict[str, dict[str, float | None]]) -> str:
    lines = ["| method | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for label, values in means.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(values[m], m) for m in METRICS) + " |")
    return "\n".join(lines)


def save_crops(result: ShotResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.crops)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9))
    for ax, (label, crop) in zip(np.atleast_1d(axes), result.crops.items()):
        ax.imshow(np.clip(metrics.tonemap(crop), 0, 1), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    y, x, s = result.crop_box
    fig.suptitle(f"{result.name} frame {result.frames[-1]}, crop {s}x{s} at x={x} y={y}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_metric_plot(result: ShotResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, metric in zip(axes.ravel(), METRICS):
        for label, scores in result.per_frame.items():
            values = [np.nan if v is None else v for v in scores[metric]]
            ax.plot(result.frames, values, label=label, marker=".", linewidth=1)
        ax.set_title(METRIC_TITLES[metric], fontsize=9)
        ax.grid(alpha=0.3)
    axes[1, 0].set_xlabel("frame")
    axes[1, 1].set_xlabel("frame")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(result.name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, results: list[ShotResult], methods: list[Method], settings: dict) -> dict:
    labels = [m.label for m in methods]
    overall = overall_means(results, labels)
    shots = {}
    crop = settings["flip_crop"]
    flip_area = f"a centred crop of at most {crop}x{crop} px" if crop else "the full frame"
    md = ["# qw eval report", "",
          f"{len(results)} shot(s), {sum(len(r.frames) for r in results)} frames, full resolution. "
          f"PSNR/SSIM/tPSNR on tone-mapped images (Reinhard + gamma 2.2); HDR-FLIP on {flip_area}; "
          "tPSNR skips frames without valid history.", "",
          "## Overall (frame-weighted mean)", "", markdown_table(overall), "",
          "Methods: " + "; ".join(f"**{m.label}**" + (f" = `{m.source}`" if m.source else "") for m in methods), ""]
    no_figures = missing_extra("matplotlib", "plot", "qw eval's crop and per-frame figures")
    if no_figures:
        log.warning("%s; the report has tables only", no_figures)
    for r in results:
        stem = r.name.replace("/", "_")
        means = {label: {m: r.mean(label, m) for m in METRICS} for label in labels}
        shots[r.name] = {"frames": r.frames, "mean": means, "per_frame": r.per_frame, "crop_box": list(r.crop_box)}
        md += [f"## {r.name} ({len(r.frames)} frames)", "", markdown_table(means), ""]
        if not no_figures:
            save_crops(r, out / f"{stem}_crops.png")
            save_metric_plot(r, out / f"{stem}_metrics.png")
            md += [f"![crops]({stem}_crops.png)", "", f"![per-frame metrics]({stem}_metrics.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    data = {"qw_version": __version__, "settings": settings, "methods": {m.label: m.source for m in methods},
            "overall": overall, "shots": shots}
    (out / "metrics.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


def evaluate_command(checkpoints: list[str], captures: list[str], out: str, *,
                     baselines: Iterable[str] = DEFAULT_BASELINES,
                     qwq_files: list[str] = (), frames: int | None = None, flip_crop: int | None = 512,
                     crop_size: int = 128, device: str | None = None) -> dict:
    """Evaluate on every complete shot under `captures`; returns metrics.json's content plus the report path."""
    shots = [s for root in captures for s in find_captures(root)]
    if not shots:
        raise QwError(f"no complete captured shots (capture.json) under {', '.join(map(str, captures))}")
    device_ = default_device(device)
    methods = build_methods(list(checkpoints), list(qwq_files), baselines, device_)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = [evaluate_shot(s, methods, frames, flip_crop, crop_size) for s in tqdm(shots, desc="shots", disable=None)]
    settings = {"captures": [str(s) for s in shots], "frames_per_shot": frames, "flip_crop": flip_crop,
                "crop_size": crop_size, "device": str(device_), "seconds": round(time.perf_counter() - start, 1)}
    data = write_report(out_dir, results, methods, settings)
    data["report"] = str(out_dir / "report.md")
    return data

"""`qw eval`: QW-Net (full precision and quantized) against TAA and the aliased input, on held-out captured shots.

The baselines are the engine-style TAA (`taa`, the default) and the simpler min/max-clamp TAA (`taa-clamp`);
TAA also reads each frame's depth and jitter, as an engine would.

Every method reconstructs each shot at full resolution from the same jittered frames and motion vectors; each
output frame is scored against the supersampled reference with PSNR and SSIM (tone-mapped), HDR-FLIP (centred
crop, see `qw.training.evaluation.metrics`) and tPSNR (frame differences; frames after a cut are skipped). Writes into `out/`:

* ``report.md``: overall tables over all frames and over the steady state (each shot's frames from the
  `metrics.STEADY_STATE_FROM`-th on, after the recurrences' start-up), paired per-shot differences of every method
  from TAA with bootstrap confidence intervals, per-shot tables, with links to the images below;
* ``metrics.json``: every per-frame value, per-shot and overall means, the paired differences, what was evaluated;
* ``<scene>_<shot>_crops.png``: side-by-side crops of one frame (the region where the input aliases most);
* ``<scene>_<shot>_worst.png``: per method, the region of its own largest error (tone-mapped, summed over the
  steady-state frames), shown for every method at the last frame;
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
from qw.datagen.capture_format import atomic_path, find_captures, load_meta
from qw.datagen.errors import QwError, missing_extra
from qw.training.evaluation import metrics
from qw.training.infer import default_device, frame_range, model_frames, read_pass, read_reference, run_qwnet, to_image
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
    """Every method's input: `model_frames` (colour, motion, history validity, jitter) with each frame's depth."""
    for index, frame in zip(frames, model_frames(shot, meta, frames)):
        yield frame._replace(depth=read_pass(shot, "depth", index, meta))


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
    worst: dict[str, tuple[tuple[int, int, int], dict[str, np.ndarray]]] = field(default_factory=dict)

    def mean(self, method: str, metric: str, start: int = 0) -> float | None:
        """Mean over the scored frames from the `start`-th evaluated frame on."""
        return mean_of_scored(self.per_frame[method][metric][start:])


def mean_of_scored(values: Iterable[float | None]) -> float | None:
    """Mean over the frames that have a value (tPSNR has none without history); None if no frame has one."""
    scored = [v for v in values if v is not None]
    return float(np.mean(scored)) if scored else None


def error_map(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel tone-mapped absolute error, averaged over the channels (H×W)."""
    return np.abs(metrics.tonemap(image) - metrics.tonemap(reference)).mean(-1)


def worst_window(error: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, size) of the size×size window (on a size/4 grid) with the largest summed `error` (H×W)."""
    size = min(size, *error.shape)
    stride = max(1, size // 4)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(error)[None, None].float(), size, stride=stride)[0, 0]
    iy, ix = divmod(int(pooled.argmax()), pooled.shape[1])
    return iy * stride, ix * stride, size


def most_aliased_window(color: np.ndarray, reference: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, size) of the size×size window where the input differs most from the reference (tone-mapped)."""
    return worst_window(error_map(color, reference), size)


def window(images: dict[str, np.ndarray], box: tuple[int, int, int]) -> dict[str, np.ndarray]:
    y, x, s = box
    return {k: v[y:y + s, x:x + s] for k, v in images.items()}


def evaluate_shot(shot: Path, methods: list[Method], count: int | None, flip_crop: int | None,
                  crop_size: int, flip_every: int = 1, progress: bool = True) -> ShotResult:
    meta = load_meta(shot)
    frames = frame_range(meta, 0, count)
    feeds = itertools.tee(shot_frames(shot, meta, frames), len(methods) + 1)
    outputs = [m.run(feed) for m, feed in zip(methods, feeds)]
    inputs = feeds[-1]
    per_frame = {m.label: {k: [] for k in METRICS} for m in methods}
    result = ShotResult(f"{meta.scene}/{meta.shot}", list(frames), per_frame)
    previous: dict[str, np.ndarray] = {}
    prev_ref = None
    # the worst regions are found over the steady state (over every frame of a shot too short to have one)
    steady_from = metrics.STEADY_STATE_FROM if len(frames) > metrics.STEADY_STATE_FROM else 0
    errors = {m.label: 0.0 for m in methods}
    for position, index in enumerate(tqdm(frames, desc=f"eval {result.name}", unit="frame", leave=False,
                                                 disable=None if progress else True)):
        color, _, valid, *_ = next(inputs)
        reference = read_reference(shot, index, meta)
        images = {m.label: to_image(next(out)) for m, out in zip(methods, outputs)}
        for label, image in images.items():
            scores = per_frame[label]
            scores["psnr"].append(metrics.psnr(image, reference))
            scores["ssim"].append(metrics.ssim(image, reference))
            scores["flip"].append(metrics.flip(image, reference, flip_crop) if position % flip_every == 0 else None)
            scores["tpsnr"].append(metrics.tpsnr(previous[label], image, prev_ref, reference) if valid else None)
            if position >= steady_from:
                errors[label] = errors[label] + error_map(image, reference)
        if index == frames[-1]:
            shown = {**images, "reference": reference}
            result.crop_box = most_aliased_window(to_image(color), reference, crop_size)
            result.crops = window(shown, result.crop_box)
            result.worst = {label: (box, window(shown, box))
                            for label, box in ((k, worst_window(e, crop_size)) for k, e in errors.items())}
        previous, prev_ref = images, reference
    return result


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if metric in ("ssim", "flip") else f"{value:.2f}"


def overall_means(results: list[ShotResult], labels: list[str], start: int = 0) -> dict[str, dict[str, float | None]]:
    """Frame-weighted means over all shots, of each shot's frames from its `start`-th evaluated frame on."""
    out = {}
    for label in labels:
        out[label] = {}
        for metric in METRICS:
            out[label][metric] = mean_of_scored(v for r in results for v in r.per_frame[label][metric][start:])
    return out


PAIRED_AGAINST = "TAA"


def paired_differences(results: list[ShotResult], labels: list[str], against: str = PAIRED_AGAINST
                       ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per method other than `against` and the input: the per-shot differences method − `against` of every metric,
    over all frames and over the steady state, as `metrics.paired_difference` (mean, bootstrap interval, n).
    Shots where a metric has no value (tPSNR of a one-frame shot) are left out of its pairs."""
    if against not in labels:
        return {}
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for label in labels:
        if label in (against, INPUT_LABEL):
            continue
        out[label] = {}
        for span, start in (("all", 0), ("steady", metrics.STEADY_STATE_FROM)):
            out[label][span] = {}
            for metric in METRICS:
                pairs = [(a, b) for a, b in ((r.mean(label, metric, start), r.mean(against, metric, start))
                                             for r in results) if a is not None and b is not None]
                if pairs:
                    out[label][span][metric] = metrics.paired_difference(*map(list, zip(*pairs)))
    return out


def paired_table(paired: dict, against: str = PAIRED_AGAINST) -> str:
    """Markdown: mean paired difference [95 % interval] per method, metric and span."""
    lines = [f"| method − {against} | span | shots | " + " | ".join(f"Δ {METRIC_TITLES[m]}" for m in METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(METRICS)]
    for label, spans in paired.items():
        for span, values in spans.items():
            n = max((v["n"] for v in values.values()), default=0)
            cells = [f"{_fmt(v['mean'], m)} [{_fmt(v['low'], m)}, {_fmt(v['high'], m)}]" if (v := values.get(m))
                     else "–" for m in METRICS]
            lines.append(f"| {label} | {span} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def save_worst_regions(result: ShotResult, path: Path) -> None:
    """One row per method: the region of its largest steady-state error, shown for every method and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result.worst.items())
    cols = len(rows[0][1][1])
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for ax_row, (label, ((y, x, s), crops)) in zip(axes, rows):
        for ax, (name, crop) in zip(ax_row, crops.items()):
            ax.imshow(np.clip(metrics.tonemap(crop), 0, 1), interpolation="nearest")
            ax.set_title(name, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"worst of\n{label}\nx={x} y={y}", fontsize=7)
    fig.suptitle(f"{result.name} frame {result.frames[-1]}: each method's worst {rows[0][1][0][2]}px region",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    steady = overall_means(results, labels, metrics.STEADY_STATE_FROM)
    paired = paired_differences(results, labels)
    shots = {}
    crop = settings["flip_crop"]
    flip_area = f"a centred crop of at most {crop}x{crop} px" if crop else "the full frame"
    every = settings.get("flip_every", 1)
    flip_area += f", every {every}th frame of a shot from its first" if every > 1 else ""
    md = ["# qw eval report", "",
          f"{len(results)} shot(s), {sum(len(r.frames) for r in results)} frames, full resolution. "
          f"PSNR/SSIM/tPSNR on tone-mapped images (Reinhard + gamma 2.2); HDR-FLIP on {flip_area}; "
          "tPSNR skips frames without valid history.", "",
          "## Overall (frame-weighted mean)", "", markdown_table(overall), "",
          f"## Steady state (frames ≥ {metrics.STEADY_STATE_FROM} of each shot)", "", markdown_table(steady), ""]
    if paired:
        md += [f"## Paired per-shot differences from {PAIRED_AGAINST}", "",
               "Mean over shots of (method − TAA) per shot, [95 % percentile-bootstrap interval, "
               f"{metrics.BOOTSTRAP_RESAMPLES} resamples of the shots].", "", paired_table(paired), ""]
    md += ["Methods: " + "; ".join(f"**{m.label}**" + (f" = `{m.source}`" if m.source else "") for m in methods), ""]
    no_figures = missing_extra("matplotlib", "plot", "qw eval's crop and per-frame figures")
    if no_figures:
        log.warning("%s; the report has tables only", no_figures)
    for r in results:
        stem = r.name.replace("/", "_")
        means = {label: {m: r.mean(label, m) for m in METRICS} for label in labels}
        shots[r.name] = {"frames": r.frames, "mean": means, "per_frame": r.per_frame, "crop_box": list(r.crop_box),
                         "worst_boxes": {label: list(box) for label, (box, _) in r.worst.items()}}
        md += [f"## {r.name} ({len(r.frames)} frames)", "", markdown_table(means), ""]
        if not no_figures:
            save_crops(r, out / f"{stem}_crops.png")
            save_worst_regions(r, out / f"{stem}_worst.png")
            save_metric_plot(r, out / f"{stem}_metrics.png")
            md += [f"![crops]({stem}_crops.png)", "", f"![worst regions]({stem}_worst.png)", "",
                   f"![per-frame metrics]({stem}_metrics.png)", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    data = {"qw_version": __version__, "settings": settings, "methods": {m.label: m.source for m in methods},
            "overall": overall, "overall_steady": steady, "steady_state_from": metrics.STEADY_STATE_FROM,
            "paired": paired, "shots": shots}
    with atomic_path(out / "metrics.json") as tmp:  # written last: its presence means the report is whole
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return data


def check_frame_sizes(shots: list[Path]) -> None:
    """Refuse, before anything is written, a shot whose frames are too small for SSIM's window."""
    for shot in shots:
        meta = load_meta(shot)
        if min(meta.width, meta.height) < metrics.SSIM_MIN_SIDE:
            raise QwError(f"{shot}: frames of {meta.width}×{meta.height} are smaller than SSIM's "
                          f"{metrics.SSIM_MIN_SIDE}-pixel window; qw eval needs at least "
                          f"{metrics.SSIM_MIN_SIDE}×{metrics.SSIM_MIN_SIDE}")


def evaluate_command(checkpoints: list[str], captures: list[str], out: str, *,
                     baselines: Iterable[str] = DEFAULT_BASELINES,
                     qwq_files: list[str] = (), frames: int | None = None, flip_crop: int | None = 512,
                     flip_every: int = 1, crop_size: int = 128, device: str | None = None,
                     progress: bool = True) -> dict:
    """Evaluate on every complete shot under `captures`; returns metrics.json's content plus the report path.

    HDR-FLIP (seconds per frame on a CPU core) is scored on every `flip_every`-th frame of each shot only."""
    shots = [s for root in captures for s in find_captures(root)]
    if not shots:
        raise QwError(f"no complete captured shots (capture.json) under {', '.join(map(str, captures))}")
    check_frame_sizes(shots)
    device_ = default_device(device)
    methods = build_methods(list(checkpoints), list(qwq_files), baselines, device_)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for previous in ("metrics.json", "report.md"):  # an interrupted run must not leave an earlier run's numbers
        (out_dir / previous).unlink(missing_ok=True)  # beside its own figures
    start = time.perf_counter()
    results = [evaluate_shot(s, methods, frames, flip_crop, crop_size, flip_every, progress)
               for s in tqdm(shots, desc="shots", disable=None if progress else True)]
    settings = {"captures": [str(s) for s in shots], "frames_per_shot": frames, "flip_crop": flip_crop,
                "flip_every": flip_every,
                "crop_size": crop_size, "device": str(device_), "seconds": round(time.perf_counter() - start, 1)}
    data = write_report(out_dir, results, methods, settings)
    data["report"] = str(out_dir / "report.md")
    return data

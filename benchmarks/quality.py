"""The quality run: QW-Net against the engine-style TAA on held-out builtin scene instances, over several seeds.

    nohup nice -n 5 .venv/bin/python benchmarks/quality.py --out results/quality --threads 1 \
        > results/quality.log 2>&1 &

Protocol (every stage resumes: rerun the same command after an interruption and finished work is kept):

1. capture (builtin renderer, 256×160, 16 spp references): the training shots of the training instances of the
   plan's dataset (`manifests/datasets/builtin-game-quality.yaml`: the game-like generators courtyard and
   machinery), the val shots and the test shots of the held-out `builtin_<kind>_val` / `builtin_<kind>_test`
   instances (other seeds of the same generators);
2. build the plan's block store (training instances only);
3. score the aliased input and both TAAs on test, once (they do not depend on the seed);
4. per training seed: train FP32, keeping a copy of the checkpoint at every step count of `select_steps` (and, with
   `--decay-steps`, the last one continued with the rate decaying to 0); pick the one with the best PSNR on the *val*
   instances; fine-tune it W4A4, keeping a copy at every length of `qat_select_steps`, and pick again on val; then
   score the two picks on the *test* instances, once;
5. `summary.md` / `summary.json`: every method over all frames and over the steady state (each shot's frames from
   `qw.training.evaluation.metrics.STEADY_STATE_FROM` on), QW-Net as mean ± sample std (and min..max) over the seeds; the paired
   per-shot differences QW-Net − TAA with percentile-bootstrap 95 % intervals over the shots; the val choices; and
   `learning_curves.png` (training loss and val PSNR per seed, against the val PSNR of the input and of TAA). Each
   test report (`seed*/test/`, `baselines/`) has every shot's worst region per method (`*_worst.png`).

`--part seeds|baselines` runs one part only (parts in parallel processes, once the captures and the store exist,
resume each other's finished work; a last plain run writes the summary). `--ablate` trains the recipe options of
`ABLATIONS` briefly and scores them on val only (`ablations/ablations.md`). `--tune-taa` scores TAA parameter
variants on the val instances only (`taa_tuning.md`). `--device cuda` (default when CUDA is present) runs the `gpu`
plan, the paper-scale network and batch; `--plan small` is a quick run of the same stages for checking the script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qw.demo import DemoPlan, demo_config, quantize_demo, train_demo  # noqa: E402
from qw.training.config import ModelConfig  # noqa: E402
from qw.training.evaluation.metrics import STEADY_STATE_FROM  # noqa: E402

DATASET = "builtin-game-quality"
KINDS = ("courtyard", "machinery")
METRIC_KEYS = ("psnr", "ssim", "flip", "tpsnr")
SPANS = {"all": 0, "steady": STEADY_STATE_FROM}  # every frame; each shot's frames from STEADY_STATE_FROM on


@dataclass(frozen=True)
class QualityPlan(DemoPlan):
    train_frames: int = 48                       # stored frames per training shot (6 windows of 8)
    val_frames: int = 48                         # frames per val shot (selection, TAA tuning, ablations)
    test_frames: int = 64                        # frames per test shot (scored once)
    widths: tuple[int, ...] = (20, 40, 60, 80, 100)   # 1.25× the demo's widths (the paper's: 32…160)
    train_steps: int = 600                       # the longest FP32 run; checkpoints at select_steps are kept
    select_steps: tuple[int, ...] = (300, 600)
    qat_select_steps: tuple[int, ...] = (100, 200)
    qat_steps: int = 200
    decay_steps: tuple[int, ...] = ()            # also select the last FP32 checkpoint continued with a
                                                 # linear decay of the rate to 0 over each of these many more
                                                 # steps
    seeds: tuple[int, ...] = (0, 1, 2)
    dataset: str = DATASET                       # the training store's dataset manifest
    kinds: tuple[str, ...] = KINDS               # generators whose builtin_<kind>_val/_test instances are held out
    store_tile: int | None = None                # block side, if not the dataset manifest's (same budgets)
    store_frames: int | None = None              # frames per block (the unrolled length), if not the manifest's
    device: str = "cpu"                          # training, selection and scoring
    flip_every: int = 16                         # HDR-FLIP on every n-th test frame (0.5–1 CPU-s a 256×160 frame)
    recipe: str = "plan"                         # the ABLATIONS entry the seeds train with (`--ablate` starts from
                                                 # the plan itself: the paper's recipe)


PAPER_WIDTHS = tuple(ModelConfig().widths)  # the paper's U_e widths, 32…160
# the loss weights chosen on val: the per-frame L1 0.7, the frame-to-frame term 0.3 (the paper's: 0.3 / 0.7)
_SPATIAL_07 = ("train.spatial_weight=0.7", "train.temporal_weight=0.3")
_JITTER_INPUT = "model.jitter_input=true"  # each frame's sample offset as two input channels
_WARP_BICUBIC = "model.warp_filter=bicubic"  # the history resampled with a cubic filter instead of bilinearly

PLANS = {
    # The seeds train without normalisation on one 128² block per step (the same pixels as four 64² blocks), with
    # the spatial loss term weighted 0.7 instead of 0.3, each frame's sample offset as two input channels and the
    # history resampled with a cubic filter: the combination that won the ablations on val (docs/quality.md).
    "full": QualityPlan(recipe="norm-none+crop-128+spatial-0.7+jitter-input+warp-bicubic"),
    # Paper scale on one GPU (untested on a GPU so far): the paper's widths, batch of 8 blocks of 8×256×256
    # (blocks cut at 256² from 640×360 captures), 4000 steps with a cosine decay, without normalisation and with
    # the loss weights, the sample offsets as input and the cubic history filter chosen on val; sized for
    # ≤ 10 minutes on an H100.
    "gpu": QualityPlan(resolution=(640, 360), train_frames=48, widths=PAPER_WIDTHS, store_tile=256,
                       batch_size=8, train_lr=1e-3, train_steps=4000, select_steps=(2000, 4000),
                       settings=("train.schedule=cosine", "train.warmup_steps=100", "train.final_lr_ratio=0.05",
                                 *_SPATIAL_07, _JITTER_INPUT, _WARP_BICUBIC),
                       qat_steps=400, qat_select_steps=(200, 400), device="cuda", recipe="norm-none"),
    # The earlier protocol's content: the four older generators (clean edges, one light) and 16-frame held-out shots.
    "classic": QualityPlan(dataset="builtin-quality", kinds=("fence", "specular", "street", "crossing"),
                           train_frames=24, val_frames=16, test_frames=16),
    "small": QualityPlan(resolution=(128, 80), reference_spp=4, train_frames=16, val_frames=10, test_frames=10,
                         widths=(8, 12, 16, 20, 24), train_steps=6, select_steps=(3, 6), qat_select_steps=(4,),
                         qat_steps=4, seeds=(0, 1)),
}


def run_folder_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options of the scripts that study a quality run's folder: --out, --plan, --threads
    (`set_threads` applies the last)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="results/quality", type=Path, help="the quality run's folder")
    parser.add_argument("--plan", choices=sorted(PLANS), default="full")
    parser.add_argument("--threads", type=int, help="torch threads")
    return parser


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def held_out_shots(plan: QualityPlan, split: str) -> dict[str, list[str]]:
    """Every shot of the held-out instances (`builtin_<kind>_<split>`) of `split` ('val' or 'test'), by scene."""
    from qw.datagen.manifests import find_scene

    scenes = {kind: find_scene(f"builtin_{kind}_{split}") for kind in plan.kinds}
    return {m.name: [s.name for s in m.shots if s.split == split] for m in scenes.values()}


def training_shots(plan: QualityPlan) -> dict[str, list[str]]:
    """The 'train' shots of every scene of the quality dataset."""
    from qw.datagen.manifests import find_dataset, find_scene

    return {s.scene: [shot.name for shot in find_scene(s.scene).shots if shot.split == "train"]
            for s in find_dataset(plan.dataset).scenes}


def store_changes(plan: QualityPlan) -> dict[str, int]:
    """The plan's changes to its dataset manifest's block shape: side (`store_tile`) and frames (`store_frames`)."""
    return {key: value for key, value in (("tile", plan.store_tile), ("frames", plan.store_frames)) if value}


def store_name(plan: QualityPlan) -> str:
    """The plan's store, one name per dataset and block shape: blocks.zarr, blocks-tile128.zarr,
    blocks-tile96-frames16.zarr, blocks-builtin-game-quality-8-tile128.zarr (any dataset but `DATASET` is named)."""
    dataset = f"-{plan.dataset}" if plan.dataset != DATASET else ""
    return "blocks" + dataset + "".join(f"-{key}{value}" for key, value in store_changes(plan).items()) + ".zarr"


def build_quality_store(plan: QualityPlan, captures: Path, out: Path) -> str:
    """Build (or resume; a complete store is kept) the plan's store `out`/`store_name(plan)`: its dataset manifest
    with the plan's block shape (the same budgets)."""
    from qw.datagen.manifests import DatasetManifest, find_dataset
    from qw.datagen.tile import build_store

    manifest = find_dataset(plan.dataset)
    manifest = DatasetManifest.model_validate({**manifest.model_dump(), **store_changes(plan)})
    store = out / store_name(plan)
    if not stored(store):  # a complete one is shared, not rebuilt: the builder's lock would refuse a second part
        build_store(manifest, captures, str(store), workers=2, progress=False)
    return str(store)


def stored(store: Path) -> bool:
    """Whether `store` is a complete block store (parts of the run in parallel processes share it as it is)."""
    from qw.datagen.block_store import open_store
    from qw.datagen.errors import QwError

    try:
        return open_store(str(store)).complete
    except QwError:
        return False


def capture(plan: QualityPlan, root: Path, shots: dict[str, list[str]], frames: int) -> list[Path]:
    """Capture the shots (<root>/<scene>/<shot>) that are not already complete with the plan's settings. Complete
    ones are not handed to the capturer, which takes each shot's writer lock even to find it complete: parts of
    the run in parallel processes then share finished captures instead of refusing each other."""
    from qw.capture import capture_scene

    for scene, names in shots.items():
        missing = [name for name in names if not captured(plan, root / scene / name, frames)]
        if missing:
            capture_scene(scene, root, shots=missing, frames=(0, frames), resolution=plan.resolution,
                          reference_spp=plan.reference_spp, progress=False)
    return [root / scene / name for scene, names in shots.items() for name in names]


def captured(plan: QualityPlan, shot: Path, frames: int) -> bool:
    """Whether `shot` is a complete capture of `frames` frames at the plan's resolution and reference samples."""
    from qw.datagen.capture_format import is_complete, load_meta

    if not is_complete(shot):
        return False
    meta = load_meta(shot)
    return ((meta.width, meta.height) == tuple(plan.resolution) and meta.frame_count == frames
            and meta.reference.samples == plan.reference_spp)


def evaluate_once(out: Path, checkpoints: list[Path], shots: list[Path], frames: int,
                  baselines: tuple[str, ...] = (), device: str = "cpu", flip_every: int = 1) -> dict:
    """`qw eval` into `out` unless its metrics.json already scores the same checkpoints on the same shots and frames
    (resumable); returns metrics.json's content. A rerun whose val selection picks other checkpoints (other
    `--select-steps`) or scores other frames (`--eval-frames`) is scored again, not given the old scores."""
    from qw.training.evaluation.evaluate import evaluate_command

    if not scored_as_asked(out / "metrics.json", checkpoints, shots, frames, flip_every):
        evaluate_command([str(c) for c in checkpoints], [str(s) for s in shots], str(out.with_suffix(".tmp")),
                         baselines=baselines, frames=frames, flip_crop=None, flip_every=flip_every, crop_size=64,
                         device=device)
        shutil.rmtree(out, ignore_errors=True)
        out.with_suffix(".tmp").rename(out)
    return json.loads((out / "metrics.json").read_text())


def scored_as_asked(metrics_json: Path, checkpoints: list[Path], shots: list[Path], frames: int,
                    flip_every: int) -> bool:
    """Whether `metrics_json` exists and holds the scores of exactly `checkpoints` on `shots` over `frames` frames,
    with FLIP on every `flip_every`-th frame."""
    if not metrics_json.is_file():
        return False
    data = json.loads(metrics_json.read_text())
    settings = data.get("settings", {})
    return (sorted(source for source in data.get("methods", {}).values() if source) == sorted(map(str, checkpoints))
            and settings.get("captures") == [str(s) for s in shots] and settings.get("frames_per_shot") == frames
            and settings.get("flip_every") == flip_every)


def frame_scores(run, shots: list[Path], frames: int) -> list[dict[str, list[float]]]:
    """Per shot, the PSNR of every one of the first `frames` frames of `run` (input frames → outputs) and the
    tPSNR of every frame with a valid history."""
    from qw.datagen.capture_format import load_meta
    from qw.training.evaluation import metrics
    from qw.training.evaluation.evaluate import shot_frames
    from qw.training.infer import frame_range, read_reference, to_image

    scores = []
    for shot in shots:
        meta = load_meta(shot)
        indices = frame_range(meta, 0, frames)
        shot_scores: dict[str, list[float]] = {"psnr": [], "tpsnr": []}
        previous = None
        inputs, feed = itertools.tee(shot_frames(shot, meta, indices))
        for i, (frame, output) in enumerate(zip(inputs, run(feed))):
            image, reference = to_image(output), read_reference(shot, indices[i])
            shot_scores["psnr"].append(metrics.psnr(image, reference))
            if previous is not None and frame.history_valid:
                shot_scores["tpsnr"].append(metrics.tpsnr(previous[0], image, previous[1], reference))
            previous = image, reference
        scores.append(shot_scores)
    return scores


def mean_psnr(run, shots: list[Path], frames: int) -> float:
    """PSNR of `run` over the first `frames` frames of every shot (frame-weighted)."""
    return float(np.mean([v for shot in frame_scores(run, shots, frames) for v in shot["psnr"]]))


def val_summary(run, shots: list[Path], frames: int) -> dict[str, float]:
    """An ablation's val scores: PSNR over all frames and over the steady state, tPSNR over all frames."""
    from qw.training.evaluation.metrics import steady_state

    scores = frame_scores(run, shots, frames)
    return {"psnr": float(np.mean([v for s in scores for v in s["psnr"]])),
            "psnr_steady": float(np.mean([v for s in scores for v in steady_state(s["psnr"])])),
            "tpsnr": float(np.mean([v for s in scores for v in s["tpsnr"]]))}


def val_psnr(checkpoint: Path, val: list[Path], frames: int, cache: Path, device: str = "cpu") -> float:
    """Model selection score: a checkpoint's PSNR on the val instances (cached in `cache`, JSON)."""
    from qw.training.evaluation.evaluate import _qwnet
    from qw.training.quantization.qat import model_from_any_checkpoint

    if not cache.is_file():
        model, _, _ = model_from_any_checkpoint(str(checkpoint))
        cache.write_text(json.dumps({"checkpoint": str(checkpoint),
                                     "psnr": mean_psnr(_qwnet(model.to(device), device), val, frames)}) + "\n")
    return json.loads(cache.read_text())["psnr"]


def val_baselines(val: list[Path], frames: int, cache: Path) -> dict[str, float]:
    """PSNR of the aliased input and of TAA on the val instances (the lines QW-Net's val curve must cross), cached."""
    from qw.training.evaluation.evaluate import passthrough
    from qw.training.evaluation.taa import run_taa

    if not cache.is_file():
        cache.write_text(json.dumps({"aliased input": mean_psnr(passthrough, val, frames),
                                     "TAA": mean_psnr(run_taa, val, frames)}) + "\n")
    return json.loads(cache.read_text())


def fp32_at(plan: QualityPlan, store: str, run: Path, steps: int, kept: Path, val: list[Path], cache: Path) -> float:
    """Train (or resume) the FP32 run `run` to `steps`, keep a copy of that checkpoint as `kept`, and return its val
    PSNR (cached in `cache`)."""
    if not kept.is_file():
        shutil.copyfile(train_demo(plan, store, run, steps), kept)
    return val_psnr(kept, val, plan.val_frames, cache, plan.device)


def decaying(plan: QualityPlan, decay: int) -> QualityPlan:
    """The plan whose run decays the rate over its last `decay` steps."""
    return replace(plan, settings=(*plan.settings, f"train.decay_steps={decay}"))


def check_decay(plan: QualityPlan) -> None:
    """Refuse a decay branch that the plan's schedule cannot take (cosine, step) before anything trains."""
    from qw.datagen.errors import QwError

    for decay in plan.decay_steps:
        try:
            demo_config(decaying(with_option(plan, plan.recipe), decay), plan.train_steps + decay)
        except QwError as exc:
            raise SystemExit(f"--decay-steps {decay}: {exc}") from None


def decay_name(start: int, decay: int) -> str:
    """A decay branch's name: its constant-rate steps + its decay steps ('4000+1000')."""
    return f"{start}+{decay}"


def decay_branch(runs: Path, start: int, decay: int) -> Path:
    """The run folder of a seed's decay branch in `runs`: `fp32_<start>+<decay>`."""
    return runs / f"fp32_{decay_name(start, decay)}"


def branch_from(checkpoint: Path, run: Path, branch: Path) -> None:
    """Make `branch` (unless it exists) a run folder that resumes `checkpoint` of `run`; `run`'s metrics log comes
    along for the curves (the trainer drops its events past the checkpoint's step on resuming)."""
    from qw.training.train.checkpoints import LAST

    if branch.is_dir():
        return
    staging = branch.with_name(branch.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(checkpoint, staging / LAST)
    shutil.copyfile(run / "metrics.jsonl", staging / "metrics.jsonl")
    staging.rename(branch)


def decayed_at(plan: QualityPlan, decay: int, store: str, runs: Path, val: list[Path]) -> tuple[str, float]:
    """The seed's constant-rate run continued from its last selection checkpoint with the rate decaying linearly to 0
    over `decay` more steps (warm-up, stable, decay), in its own folder: the candidate's name ('4000+1000':
    constant steps + decay steps) and its val PSNR."""
    name = decay_name(plan.train_steps, decay)
    branch = decay_branch(runs, plan.train_steps, decay)
    branch_from(runs / f"fp32_step{plan.train_steps}.pt", runs / "fp32", branch)
    return name, fp32_at(decaying(plan, decay), store, branch, plan.train_steps + decay, runs / f"fp32_step{name}.pt",
                         val, runs / f"val_fp32_step{name}.json")


def run_seed(plan: QualityPlan, seed: int, store: str, val: list[Path], test: list[Path], out: Path) -> dict:
    """Train, select on val, quantize, select on val, score on test: one seed's QW-Net rows of the table."""
    from qw.training.evaluation.evaluate import INPUT_LABEL

    plan = replace(plan, seed=seed)
    runs = out / f"seed{seed}"
    selection = {"fp32": {}, "w4a4": {}}
    for steps in plan.select_steps:
        selection["fp32"][steps] = fp32_at(plan, store, runs / "fp32", steps, runs / f"fp32_step{steps}.pt", val,
                                           runs / f"val_fp32_step{steps}.json")
    for decay in plan.decay_steps:
        name, selection["fp32"][name] = decayed_at(plan, decay, store, runs, val)
    best_steps = max(selection["fp32"], key=selection["fp32"].get)
    best_fp = runs / f"fp32_step{best_steps}.pt"
    for qat in plan.qat_select_steps:
        kept = runs / f"w4a4_fp{best_steps}_qat{qat}.pt"
        if not kept.is_file():
            # one fine-tuning run per FP32 source: a rerun with other --select-steps may pick another one
            qat_run = runs / f"w4a4_fp{best_steps}"
            shutil.copyfile(quantize_demo(replace(plan, qat_steps=qat), store, best_fp, qat_run), kept)
        selection["w4a4"][qat] = val_psnr(kept, val, plan.val_frames, runs / f"val_{kept.stem}.json", plan.device)
    best_qat = max(selection["w4a4"], key=selection["w4a4"].get)
    best_q = runs / f"w4a4_fp{best_steps}_qat{best_qat}.pt"
    scored = evaluate_once(runs / "test", [best_fp, best_q], test, plan.test_frames, (), plan.device,
                           plan.flip_every)
    return {"seed": seed, "fp32_steps": best_steps, "qat_steps": best_qat, "val_psnr": selection,
            **test_scores(scored, [m for m in scored["methods"] if m != INPUT_LABEL])}


def score_baselines(plan: QualityPlan, test: list[Path], out: Path) -> dict:
    """The aliased input and both TAAs on the test instances: deterministic, so scored once (not per seed)."""
    scored = evaluate_once(out / "baselines", [], test, plan.test_frames, ("taa", "taa-clamp"), plan.device,
                           plan.flip_every)
    return test_scores(scored, list(scored["methods"]))


def test_scores(scored: dict, methods: list[str]) -> dict:
    """From a metrics.json: `methods`' overall means over all frames and over the steady state, and per shot."""
    return {"test": {m: scored["overall"][m] for m in methods},
            "test_steady": {m: scored["overall_steady"][m] for m in methods},
            "test_shots": {span: shot_means(scored, methods, start) for span, start in SPANS.items()}}


def shot_means(scored: dict, methods: list[str], start: int) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per method and shot of a metrics.json: each metric's mean over the shot's frames from the `start`-th on."""
    from qw.training.evaluation.evaluate import mean_of_scored

    return {m: {name: {k: mean_of_scored(shot["per_frame"][m][k][start:]) for k in METRIC_KEYS}
                for name, shot in scored["shots"].items()} for m in methods}


def paired_over_seeds(rows: list[dict], baselines: dict, against: str = "TAA"
                      ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per QW-Net method, span and metric: the per-shot differences (method's mean over the seeds − `against`, a
    deterministic baseline) with `metrics.paired_difference`'s bootstrap interval over the shots."""
    from qw.training.evaluation.metrics import paired_difference

    out: dict = {}
    for method in rows[0]["test"]:
        out[method] = {}
        for span in SPANS:
            base = baselines["test_shots"][span][against]
            out[method][span] = {}
            for k in METRIC_KEYS:
                shots = [s for s in base if base[s][k] is not None
                         and all(r["test_shots"][span][method][s][k] is not None for r in rows)]
                ours = [float(np.mean([r["test_shots"][span][method][s][k] for r in rows])) for s in shots]
                if shots:  # none when the shots are shorter than the span's start
                    out[method][span][k] = paired_difference(ours, [base[s][k] for s in shots])
    return out


def extend_curve(plan: QualityPlan, store: str, val: list[Path], out: Path, steps: tuple[int, ...]) -> dict[int, float]:
    """The first seed's FP32 run continued, with the plan's settings, past the selection steps to each of `steps`
    (in its own folder, so the selected checkpoints stay as they are): val PSNR per step count. Learning-curve
    evidence only: these checkpoints are never selected and never scored on test."""
    runs = out / f"seed{plan.seeds[0]}"
    curve = runs / "fp32_curve"
    if not curve.is_dir():
        shutil.copytree(runs / "fp32", curve)
    seeded = replace(plan, seed=plan.seeds[0])
    return {n: fp32_at(seeded, store, curve, n, runs / f"fp32_curve_step{n}.pt", val,
                       runs / f"val_fp32_curve_step{n}.json") for n in sorted(steps)}


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean, sample std, min, max and count of the values that exist (FLIP is not scored on every frame)."""
    a = np.asarray([v for v in values if v is not None], float)
    if not len(a):
        return {"mean": None, "std": None, "min": None, "max": None, "runs": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "runs": len(a)}


def summarize(rows: list[dict], baselines: dict, key: str = "test") -> dict[str, dict[str, dict[str, float]]]:
    """Per method and metric of `key` (``test`` or ``test_steady``): the baselines' scores (one deterministic run
    each, no spread), then each QW-Net's mean, sample std, min and max over the seeds."""
    return {**{m: {k: spread([v[k]]) for k in METRIC_KEYS} for m, v in baselines[key].items()},
            **{m: {k: spread([r[key][m][k] for r in rows]) for k in METRIC_KEYS} for m in rows[0][key]}}


def summary_table(summary: dict) -> str:
    from qw.training.evaluation.evaluate import _fmt

    lines = ["| method | PSNR dB ↑ | SSIM ↑ | FLIP ↓ | tPSNR dB ↑ |", "|---|---:|---:|---:|---:|"]
    for method, values in summary.items():
        cells = []
        for k in METRIC_KEYS:
            v = values[k]
            spread_ = f" ± {_fmt(v['std'], k)}" if v["runs"] > 1 else ""  # a baseline: one deterministic run
            cells.append(f"{_fmt(v['mean'], k)}{spread_}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fp32_candidates(row: dict) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
    """A seed's val PSNR per FP32 candidate: the constant-rate checkpoints by step, and the decay branches (named by
    `decay_name`) by (constant steps, decay steps)."""
    constant, decayed = {}, {}
    for name, psnr in row["val_psnr"]["fp32"].items():
        start, _, decay = str(name).partition("+")
        if decay:
            decayed[int(start), int(decay)] = psnr
        else:
            constant[int(start)] = psnr
    return constant, decayed


def plot_training_loss(ax, run: Path, color: str, style: str, label: str | None, window: int | None = None,
                       after: int = 0) -> int:
    """A run's logged training loss after step `after`, as a moving mean over `window` logged steps (default: a
    sixth of them; the loss of one small batch is noisy); returns the window."""
    events = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    train = [e for e in events if e["event"] == "train" and "loss" in e and e["step"] > after]
    if not train:
        return window or 1
    steps = np.array([e["step"] for e in train])
    loss = np.array([e["loss"] for e in train])
    window = min(window or max(1, len(loss) // 6), len(loss))
    ax.plot(steps[window - 1:], np.convolve(loss, np.ones(window) / window, mode="valid"), color=color,
            linestyle=style, label=label)
    return window


def plot_learning_curves(out: Path, rows: list[dict], baselines: dict[str, float],
                         curve: dict[int, float] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [*baselines.values()]  # the val PSNRs drawn, for the axis range
    for i, row in enumerate(rows):
        runs = out / f"seed{row['seed']}"
        window = plot_training_loss(loss_ax, runs / "fp32", f"C{i}", "-", f"seed {row['seed']}")
        fp, decayed = fp32_candidates(row)
        val_ax.plot(sorted(fp), [fp[k] for k in sorted(fp)], marker="o", color=f"C{i}",
                    label=f"FP32 seed {row['seed']}")
        shown += [*fp.values(), *decayed.values()]
        for (start, decay), psnr in decayed.items():  # from its constant-rate checkpoint to its last step
            val_ax.plot([start, start + decay], [fp[start], psnr], marker="*", markersize=10, linestyle=":",
                        color=f"C{i}", label=f"FP32 seed {row['seed']}, rate decayed")
            plot_training_loss(loss_ax, decay_branch(runs, start, decay), f"C{i}", ":", None, window,
                               after=start)
    if curve:
        first = fp32_candidates(rows[0])[0]
        last = max(first)
        val_ax.plot([last, *curve], [first[last], *curve.values()], marker="s", linestyle="--", color="C0",
                    label=f"FP32 seed {rows[0]['seed']}, continued")
        shown += curve.values()
    for (name, psnr), style in zip(baselines.items(), (":", "--")):
        val_ax.axhline(psnr, color="gray", linestyle=style, label=f"{name} {psnr:.2f} dB")
    # the aliased input lies far below: the range of the networks and TAA, so that their differences show
    top = max(shown)
    val_ax.set_ylim(min(v for v in shown if v > top - 3) - 0.2, top + 0.2)
    loss_ax.set(xlabel="step", ylabel="training loss (moving mean)", yscale="log", title="QW-Net FP32 training")
    val_ax.set(xlabel="FP32 step", ylabel="val PSNR dB", title="val instances (model selection)")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(out: Path, plan: QualityPlan, rows: list[dict], tested: dict, baselines: dict[str, float],
                  seconds: float, curve: dict[int, float] | None = None) -> str:
    from qw.training.evaluation.evaluate import paired_table
    from qw.training.evaluation.metrics import BOOTSTRAP_RESAMPLES

    summary, steady = summarize(rows, tested), summarize(rows, tested, "test_steady")
    paired = paired_over_seeds(rows, tested)
    table = "\n\n".join([f"All frames:\n\n{summary_table(summary)}",
                         f"Steady state (frames ≥ {STEADY_STATE_FROM} of each shot):\n\n{summary_table(steady)}",
                         f"Paired per-shot differences from TAA (QW-Net: mean over the seeds per shot), "
                         f"[95 % percentile-bootstrap interval over the shots, {BOOTSTRAP_RESAMPLES} resamples]:"
                         f"\n\n{paired_table(paired)}"])
    choices = "; ".join(f"seed {r['seed']}: {r['fp32_steps']} FP32 steps, {r['qat_steps']} QAT steps" for r in rows)
    shots = len(tested["test_shots"]["all"]["TAA"])
    md = ["# Quality run", "", f"Test instances of `{plan.dataset}` ({shots} shots × {plan.test_frames} frames), "
          f"{len(rows)} training seeds, QW-Net rows mean ± sample std over the seeds:", "", table, "",
          f"Chosen on val only: {choices}. Each shot's worst region per method: `seed*/test/*_worst.png`.", "",
          f"Plan: `{json.dumps(asdict(plan))}`; {seconds / 60:.0f} min wall in this invocation.", ""]
    if curve:
        points = ", ".join(f"{n} steps {v:.2f} dB" for n, v in curve.items())
        md += [f"Seed {rows[0]['seed']}'s FP32 run continued (val PSNR, never selected or tested): {points}; "
               f"val PSNR of TAA {baselines['TAA']:.2f} dB.", ""]
    md += ["![learning curves](learning_curves.png)", ""]
    (out / "summary.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps({"plan": asdict(plan), "seeds": rows, "summary": summary,
                                                  "summary_steady": steady, "paired": paired, "baselines": tested,
                                                  "val_baselines": baselines, "continued": curve}, indent=1) + "\n")
    plot_learning_curves(out, rows, baselines, curve)
    return table


# The recipe options: each changes the plan's settings (config overrides) or plan fields; short runs scored on val
# only. `crop-128` keeps the pixels per step: 1 block of 128² against 4 of 64². `norm-none+crop-128` combines the
# two options that helped on their own, and the later options build on it.
_BASE = {"settings": ("model.norm=none",), "store_tile": 128, "batch_size": 1}


def _on_base(*settings: str, **changes) -> dict:
    """`norm-none+crop-128` with more settings and plan changes."""
    return {**_BASE, **changes, "settings": _BASE["settings"] + settings}


ABLATIONS: dict[str, dict] = {
    "plan": {},
    "jitter-input": {"settings": (_JITTER_INPUT,)},
    "norm-none": {"settings": ("model.norm=none",)},
    "norm-group": {"settings": ("model.norm=group",)},
    "bn-momentum-0.01": {"settings": ("model.bn_momentum=0.01",)},
    "loss-display": {"settings": ("train.loss_domain=display",)},
    "cosine": {"settings": ("train.schedule=cosine", "train.warmup_steps=20", "train.final_lr_ratio=0.1")},
    "crop-128": {"store_tile": 128, "batch_size": 1},
    "norm-none+crop-128": _on_base(),
    # optimisation: four times the pixels per step; half the learning rate
    "norm-none+crop-128-batch-4": _on_base(batch_size=4),
    "norm-none+crop-128+lr-1e-3": _on_base(train_lr=1e-3),
    # capacity: the paper's widths (2.5× the parameters)
    "norm-none+crop-128+paper-widths": _on_base(widths=PAPER_WIDTHS),
    "norm-none+crop-128+jitter-input": _on_base(_JITTER_INPUT),
    "norm-none+crop-128+ema": _on_base("train.ema_decay=0.99"),
    "norm-none+crop-128+warp-bicubic": _on_base(_WARP_BICUBIC),
    # the loss: more weight on the per-frame term, less on frame-to-frame changes
    "norm-none+crop-128+spatial-0.5": _on_base("train.spatial_weight=0.5", "train.temporal_weight=0.5"),
    "norm-none+crop-128+spatial-0.7": _on_base(*_SPATIAL_07),
    "norm-none+crop-128+spatial-0.7+lr-4e-3": _on_base(*_SPATIAL_07, train_lr=4e-3),
    "norm-none+crop-128+spatial-0.7+warp-bicubic": _on_base(*_SPATIAL_07, _WARP_BICUBIC),
    "norm-none+crop-128+spatial-0.7+paper-widths": _on_base(*_SPATIAL_07, widths=PAPER_WIDTHS),
    "norm-none+crop-128+spatial-0.7+rmse": _on_base(*_SPATIAL_07, "train.spatial_norm=rmse"),
    "norm-none+crop-128+spatial-0.7+rmse+loss-display": _on_base(*_SPATIAL_07, "train.spatial_norm=rmse",
                                                                 "train.loss_domain=display"),
    # the unrolled length: 16-frame blocks train on older histories, closer to a long shot's steady state; at 128²
    # (twice the pixels per step) and at 96² (about the same pixels per step)
    "norm-none+crop-128+spatial-0.7+frames-16": _on_base(*_SPATIAL_07, store_frames=16),
    "norm-none+crop-96+spatial-0.7+frames-16": _on_base(*_SPATIAL_07, store_tile=96, store_frames=16),
    # spatial reach: 5×5 full-resolution kernels on the frame and the history (edges hold most of the error)
    "norm-none+crop-128+spatial-0.7+kernel-5": _on_base(*_SPATIAL_07, "model.input_kernel=5"),
    # the sample offsets as input (TAA's unjitter) on the loss that reconstructs each frame, where edges lose
    "norm-none+crop-128+spatial-0.7+jitter-input": _on_base(*_SPATIAL_07, _JITTER_INPUT),
    # the training content: 4 and 8 training instances (seeds) of each generator instead of 2, 128 blocks each
    "norm-none+crop-128+spatial-0.7+instances-8": _on_base(*_SPATIAL_07, dataset="builtin-game-quality-8"),
    "norm-none+crop-128+spatial-0.7+instances-16": _on_base(*_SPATIAL_07, dataset="builtin-game-quality-16"),
    # the two levers that still gained past 6000 steps, together: the offsets and 4 training instances per generator
    "norm-none+crop-128+spatial-0.7+jitter-input+instances-8": _on_base(*_SPATIAL_07, _JITTER_INPUT,
                                                                       dataset="builtin-game-quality-8"),
    # gradient noise: the recipe with the offsets on two 128² blocks per step (the `gpu` plan's direction at a
    # CPU's scale), against one block at the same steps
    "norm-none+crop-128+spatial-0.7+jitter-input+batch-2": _on_base(*_SPATIAL_07, _JITTER_INPUT, batch_size=2),
    # the history's resampling: a cubic filter keeps the detail a bilinear one blurs away frame after frame (engine
    # TAA's reason for Catmull-Rom); within noise at 300 steps (`norm-none+crop-128+spatial-0.7+warp-bicubic`)
    "norm-none+crop-128+spatial-0.7+jitter-input+warp-bicubic": _on_base(*_SPATIAL_07, _JITTER_INPUT,
                                                                        _WARP_BICUBIC),
    # negative taps: the full-resolution kernels may sharpen (λ = 1: each tap down to −1/18), which convex kernels
    # cannot, to undo the blur the history's resampling still leaves
    "norm-none+crop-128+spatial-0.7+jitter-input+warp-bicubic+lobe-1": _on_base(
        *_SPATIAL_07, _JITTER_INPUT, _WARP_BICUBIC, "model.input_kernel_lobe=1.0"),
}


def _decayed(option: dict, steps: int) -> dict:
    """`option` with its constant rate decayed linearly to 0 over its last `steps` steps (`train.decay_steps`)."""
    return {**option, "settings": option.get("settings", ()) + (f"train.decay_steps={steps}",)}


# the schedule: these options with the rate decayed over their last 1000 steps (`+decay-1000`, at any
# --ablation-steps from 1000 on); such a run branches from the same seed's constant-rate run (`ablation_run`)
ABLATIONS |= {f"{name}+decay-1000": _decayed(ABLATIONS[name], 1000)
              for name in ("norm-none+crop-128+spatial-0.7", "norm-none+crop-128+spatial-0.7+jitter-input",
                           "norm-none+crop-128+spatial-0.7+instances-8", "norm-none+crop-128+spatial-0.7+instances-16",
                           "norm-none+crop-128+spatial-0.7+jitter-input+instances-8",
                           "norm-none+crop-128+spatial-0.7+jitter-input+batch-2",
                           "norm-none+crop-128+spatial-0.7+jitter-input+warp-bicubic",
                           "norm-none+crop-128+spatial-0.7+jitter-input+warp-bicubic+lobe-1")}
ABLATION_KEYS = ("psnr", "psnr_steady", "tpsnr")


def with_option(plan: QualityPlan, name: str, seed: int | None = None) -> QualityPlan:
    """`plan` with recipe option `name`'s changes (an `ABLATIONS` entry), trained with `seed` (default: the plan's);
    the option's settings are added to the plan's."""
    change = dict(ABLATIONS[name])
    settings = plan.settings + change.pop("settings", ())
    return replace(plan, seed=plan.seed if seed is None else seed, settings=settings, **change)


def describe_ablation(name: str) -> str:
    change = dict(ABLATIONS[name])
    parts = [f"`{s}`" for s in change.pop("settings", ())] + [f"plan `{k}={v}`" for k, v in change.items()]
    return ", ".join(parts) or "–"


def ablate(plan: QualityPlan, captures: Path, val: list[Path], out: Path, names: list[str], steps: int,
           seeds: tuple[int, ...]) -> str:
    """Train each named recipe option (capturing its dataset's missing training shots first) for `steps` steps with
    each of `seeds` and score it on the val instances (PSNR over all frames and the steady state, tPSNR); writes
    and returns `ablations.md`, which tables every option and seed scored so far (`<out>/<option>/seed<n>/`, with
    a copy of the scored checkpoint, `fp32_step<steps>.pt`). Resumable: finished runs are kept."""
    from qw.training.evaluation.evaluate import _qwnet, passthrough
    from qw.training.evaluation.taa import run_taa
    from qw.training.quantization.qat import model_from_any_checkpoint

    check_ablations(plan, names, steps)
    out.mkdir(parents=True, exist_ok=True)
    baselines: dict[str, dict[str, float]] = {}
    for label, run in (("aliased input", passthrough), ("TAA", run_taa)):
        cache = out / f"val_{label.replace(' ', '_')}.json"
        if not cache.is_file():
            cache.write_text(json.dumps(val_summary(run, val, plan.val_frames)) + "\n")
        baselines[label] = json.loads(cache.read_text())
    for name in names:
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            cache = run_dir / f"val_step{steps}.json"
            if cache.is_file():
                continue
            option = with_option(plan, name, seed)
            capture(option, captures, training_shots(option), option.train_frames)
            store = build_quality_store(option, captures, out.parent)
            run = ablation_run(name, seed, steps, out)
            start = time.perf_counter()
            checkpoint = train_demo(option, store, run, steps)
            seconds = time.perf_counter() - start
            shutil.copyfile(checkpoint, run_dir / f"fp32_step{steps}.pt")  # a decay option may branch from it
            model, _, _ = model_from_any_checkpoint(str(checkpoint))
            cache.write_text(json.dumps({**val_summary(_qwnet(model.to(plan.device), plan.device), val,
                                                       plan.val_frames), "train_s": seconds}) + "\n")
            print(f"[ablate] {name} seed {seed}: {cache.read_text().strip()}", flush=True)
    table = ablation_table(baselines, scored_ablations(out, steps), len(val), plan.val_frames, steps)
    (out / "ablations.md").write_text(table + "\n")
    return table


def decay_of(settings: tuple[str, ...]) -> int:
    """The steps over which a run with `settings` decays the rate to 0 at its end (`train.decay_steps`; 0: none)."""
    values = [s.partition("=")[2] for s in settings if s.startswith("train.decay_steps=")]
    return int(values[-1]) if values else 0


def constant_option(name: str) -> str | None:
    """The constant-rate option that option `name` decays (`...+decay-N` → `...`); None for a constant-rate one."""
    decay = decay_of(ABLATIONS[name].get("settings", ()))
    return name.removesuffix(f"+decay-{decay}") if decay else None


def check_ablations(plan: QualityPlan, names: list[str], steps: int) -> None:
    """Refuse, before anything trains, an option whose config is invalid at `steps` and a rate-decay option not
    named after an existing constant-rate option (`<option>+decay-N`)."""
    from qw.datagen.errors import QwError

    for name in names:
        try:
            demo_config(with_option(plan, name), steps)
        except QwError as exc:
            raise SystemExit(f"--ablate {name} at --ablation-steps {steps}: {exc}") from None
        constant = constant_option(name)
        if constant is not None and (constant == name or constant not in ABLATIONS):
            raise SystemExit(f"--ablate {name}: a rate-decay option is named <constant-rate option>+decay-<steps>")


def ablation_run(name: str, seed: int, steps: int, out: Path) -> Path:
    """The folder in which option `name` trains with `seed` to `steps`: `<out>/<name>/seed<n>/fp32`. An option
    that decays the rate over its last N steps is its constant-rate option up to `steps` − N, so its run is a
    branch, `fp32_<steps − N>+<N>`: it resumes the constant-rate run's checkpoint scored at `steps` − N
    (`fp32_step<steps − N>.pt`) and trains only the N steps; without that checkpoint it trains all of them."""
    runs = out / name / f"seed{seed}"
    constant = constant_option(name)
    if constant is None:
        return runs / "fp32"
    decay = decay_of(ABLATIONS[name]["settings"])
    start = steps - decay
    branch = decay_branch(runs, start, decay)
    kept = out / constant / f"seed{seed}" / f"fp32_step{start}.pt"
    if kept.is_file():
        branch_from(kept, kept.parent / "fp32", branch)
    return branch


def scored_ablations(out: Path, steps: int) -> dict[str, dict[int, dict[str, float]]]:
    """Every ablation run scored in `out` at `steps`: option -> seed -> val scores."""
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for name in ABLATIONS:
        for cache in sorted((out / name).glob(f"seed*/val_step{steps}.json")):
            runs.setdefault(name, {})[int(cache.parent.name.removeprefix("seed"))] = json.loads(cache.read_text())
    return runs


def ablation_table(baselines: dict[str, dict[str, float]], runs: dict[str, dict[int, dict[str, float]]],
                   shots: int, frames: int, steps: int) -> str:
    """Markdown: the baselines, then each option's mean over its seeds and its paired Δ against `plan` (the mean
    over the seeds both ran of option − plan)."""
    lines = [f"Val instances, {shots} shots × {frames} frames; QW-Net rows: {steps} FP32 steps, mean over the seeds "
             "listed, one change from the plan; Δ: paired against the `plan` run of the same seed.", "",
             "| run | change | seeds | PSNR dB | Δ | PSNR frames ≥ 8 | Δ | tPSNR dB | Δ | train s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in baselines.items():
        lines.append(f"| {label} | baseline | – | " + " | ".join(f"{r[k]:.2f} | " for k in ABLATION_KEYS) + " |")
    base = runs.get("plan", {})
    for name, by_seed in runs.items():
        paired = sorted(set(by_seed) & set(base))
        cells = []
        for k in ABLATION_KEYS:
            delta = (f"{np.mean([by_seed[s][k] - base[s][k] for s in paired]):+.2f}" if paired and name != "plan"
                     else "")
            cells.append(f"{np.mean([r[k] for r in by_seed.values()]):.2f} | {delta}")
        seconds = np.mean([r.get("train_s", 0) for r in by_seed.values()])
        lines.append(f"| {name} | {describe_ablation(name)} | {', '.join(map(str, sorted(by_seed)))} | "
                     + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def taa_variants() -> dict[str, object]:
    """The default parameters and one change of each from them."""
    from qw.training.evaluation.taa import TaaParams

    base = TaaParams()
    changes = {"gamma": (0.5, 0.75, 1.0, 1.25), "alpha": (0.1, 0.15, 0.2), "max_history": (8.0, 16.0, 32.0),
               "flicker_weight": (0.0, 0.25, 0.5, 0.75), "dilate": (not base.dilate,),
               "depth_tolerance": (0.0, 0.05, 0.1), "unjitter": (not base.unjitter,)}
    variants = {"defaults": base}
    for name, values in changes.items():
        for value in values:
            if value != getattr(base, name):
                variants[f"{name}={value}"] = replace(base, **{name: value})
    return variants


def tune_taa(plan: QualityPlan, out: Path) -> str:
    """PSNR (all frames and steady state) and tPSNR of TAA variants, taa-clamp and the input on the val instances."""
    from qw.training.evaluation.evaluate import passthrough
    from qw.training.evaluation.taa import run_taa, run_taa_clamp

    shots = capture(plan, out / "captures", held_out_shots(plan, "val"), plan.val_frames)
    methods = {"aliased input": passthrough, "taa-clamp": run_taa_clamp}
    methods.update({name: (lambda frames, p=p: run_taa(frames, p)) for name, p in taa_variants().items()})
    lines = [f"# TAA variants on the val instances ({len(shots)} shots, {plan.val_frames} frames each)", "",
             f"| variant | PSNR dB | PSNR frames ≥ {STEADY_STATE_FROM} | tPSNR dB |", "|---|---:|---:|---:|"]
    for name, run in methods.items():
        s = val_summary(run, shots, plan.val_frames)
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['psnr_steady']:.2f} | {s['tpsnr']:.2f} |")
        print(lines[-1], flush=True)
    (out / "taa_tuning.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def choose_plan(name: str | None, device: str) -> QualityPlan:
    """The named plan (default: `gpu` on CUDA, else `full`) on `device` ('auto': CUDA when present). On the CPU the
    GPUs are hidden, so that the trainer, which takes CUDA whenever it sees it, stays on the CPU too."""
    import torch

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything asks CUDA (the first query fixes the devices)
    elif device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return replace(PLANS[name or ("gpu" if device == "cuda" else "full")], device=device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/quality", type=Path)
    parser.add_argument("--plan", choices=sorted(PLANS), help="default: gpu on a CUDA device, else full")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where training, selection and scoring run (auto: CUDA when present)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the plan's training seeds")
    parser.add_argument("--tune-taa", action="store_true", help="only score TAA variants on the val instances")
    parser.add_argument("--continue-steps", type=int, nargs="+", default=(),
                        help="after the run, continue the first seed's FP32 training to these step counts and plot "
                             "their val PSNR (learning-curve evidence; never selected or tested)")
    parser.add_argument("--ablate", nargs="*", choices=sorted(ABLATIONS), metavar="OPTION",
                        help=f"only train and score recipe options on val, with the first seed or --seeds (none "
                             f"named: all of {', '.join(ABLATIONS)})")
    parser.add_argument("--ablation-steps", type=int, default=300, help="FP32 steps of each --ablate run")
    parser.add_argument("--select-steps", type=int, nargs="+",
                        help="override the plan's FP32 checkpoints kept for selection (the run trains to the last)")
    parser.add_argument("--qat-select-steps", type=int, nargs="+", help="override the plan's QAT lengths")
    parser.add_argument("--decay-steps", type=int, nargs="+",
                        help="also select, per seed, the last FP32 checkpoint continued with the rate decaying "
                             "linearly to 0 over each of these many more steps (needs a constant-rate plan)")
    parser.add_argument("--part", default="all", choices=("all", "seeds", "baselines"),
                        help="seeds: only train/select/quantize/test the --seeds; baselines: only score the input "
                             "and the TAAs; all: both, then the summary (parts run in parallel processes resume "
                             "each other's finished work)")
    parser.add_argument("--eval-frames", type=int, help="override the plan's frames per val and test shot")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a busy shared machine: no spinning)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    plan = choose_plan(args.plan, args.device)
    if args.seeds:
        plan = replace(plan, seeds=tuple(args.seeds))
    if args.select_steps:
        plan = replace(plan, select_steps=tuple(sorted(args.select_steps)), train_steps=max(args.select_steps))
    if args.qat_select_steps:
        plan = replace(plan, qat_select_steps=tuple(sorted(args.qat_select_steps)),
                       qat_steps=max(args.qat_select_steps))
    if args.decay_steps:
        plan = replace(plan, decay_steps=tuple(sorted(args.decay_steps)))
        check_decay(plan)
    if args.eval_frames:
        plan = replace(plan, val_frames=args.eval_frames, test_frames=args.eval_frames)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tune_taa:
        print(tune_taa(plan, args.out), flush=True)
        return
    start = time.perf_counter()
    captures = args.out / "captures"
    val = capture(plan, captures, held_out_shots(plan, "val"), plan.val_frames)
    if args.ablate is not None:
        print(ablate(plan, captures, val, args.out / "ablations", args.ablate or list(ABLATIONS),
                     args.ablation_steps, tuple(args.seeds) if args.seeds else plan.seeds[:1]))
        return
    test = capture(plan, captures, held_out_shots(plan, "test"), plan.test_frames)
    capture(plan, captures, training_shots(plan), plan.train_frames)
    print(f"[quality] captured in {time.perf_counter() - start:.0f}s", flush=True)
    plan = with_option(plan, plan.recipe)  # what the seeds train: the plan with the recipe options kept on val
    store = build_quality_store(plan, captures, args.out)  # a complete store is kept
    if args.part in ("all", "baselines"):
        baselines = val_baselines(val, plan.val_frames, args.out / "val_baselines.json")
        tested = score_baselines(plan, test, args.out)
        print(f"[quality] baselines scored at {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    rows = []
    for seed in plan.seeds if args.part in ("all", "seeds") else ():
        rows.append(run_seed(plan, seed, store, val, test, args.out))
        print(f"[quality] seed {seed} done at {(time.perf_counter() - start) / 60:.1f} min: "
              f"{json.dumps(rows[-1]['test'])}", flush=True)
    if args.part != "all":
        return
    print(write_summary(args.out, plan, rows, tested, baselines, time.perf_counter() - start), flush=True)
    if args.continue_steps:
        curve = extend_curve(plan, store, val, args.out, tuple(args.continue_steps))
        print(write_summary(args.out, plan, rows, tested, baselines, time.perf_counter() - start, curve), flush=True)
    print(f"[quality] complete: {args.out / 'summary.md'}", flush=True)


if __name__ == "__main__":
    main()

"""`qw demo` (`make demo`): the whole pipeline on the builtin scenes, small enough for 2 CPU cores in < 15 minutes.

capture (builtin renderer) → build a block store → train QW-Net briefly → quantize (W4A4 QAT) → export + check
the integer reference → evaluate against TAA on held-out shots → report. Every stage resumes: rerunning the
command after an interruption skips what is complete.

The demo network is the paper's architecture (input processing, BN + ELU, 5 scales, the same filter pyramid)
at a quarter of its widths, so that 1000 CPU steps finish in minutes. It shows that every stage runs end to end;
it trains far too briefly to say whether QW-Net beats TAA. `qw train` with the `paper` preset is the full-size run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from qw.datagen.errors import QwError

# The demo store (4 scenes × 48 blocks of 8×64×64 from each scene's first 'train' shot), and the held-out shots
# evaluated at the end: shots of held-out scene instances (other seeds of the generators: other layout, geometry,
# materials and textures), which no store draws from.
DATASET = "builtin-demo"
HELD_OUT_SHOTS = {"builtin_crossing_test": ["dolly"], "builtin_fence_test": ["rise"]}


@dataclass(frozen=True)
class DemoPlan:
    resolution: tuple[int, int] = (256, 160)   # width, height of every capture
    reference_spp: int = 16
    train_frames: int = 48                     # stored frames per training shot
    eval_frames: int = 24                      # stored frames per held-out shot
    widths: tuple[int, ...] = (16, 32, 48, 64, 80)
    train_steps: int = 1000
    train_lr: float = 2e-3
    batch_size: int = 4
    qat_steps: int = 150
    qat_lr: float = 2e-4
    seed: int = 0
    settings: tuple[str, ...] = ()             # config overrides (``train.lr=1e-3``) over the plan's FP32 config


def _stage(name: str) -> float:
    print(f"[demo] {name}", flush=True)
    return time.perf_counter()


def training_shots() -> dict[str, list[str]]:
    """The first 'train' shot of every scene of the demo dataset."""
    from qw.datagen.manifests import find_dataset, find_scene

    return {s.scene: [next(shot.name for shot in find_scene(s.scene).shots if shot.split == "train")]
            for s in find_dataset(DATASET).scenes}


def capture_all(plan: DemoPlan, root: Path) -> list[Path]:
    """Capture the training and held-out shots (resumable: complete shots are kept); returns the held-out ones."""
    from qw.capture import capture_scene

    held_out = []
    for shots, frames in ((training_shots(), plan.train_frames), (HELD_OUT_SHOTS, plan.eval_frames)):
        for scene, names in shots.items():
            paths = capture_scene(scene, root, shots=names, frames=(0, frames), resolution=plan.resolution,
                                  reference_spp=plan.reference_spp, progress=False)
            if shots is HELD_OUT_SHOTS:
                held_out += paths
    return held_out


def build_demo_store(captures: Path, store: Path, dataset: str = DATASET) -> str:
    """Build (or resume; a complete store is kept) the block store of `dataset` from the captures under `captures`."""
    from qw.datagen.manifests import find_dataset
    from qw.datagen.tile import build_store

    build_store(find_dataset(dataset), captures, str(store), workers=2, progress=False)
    return str(store)


def demo_config(plan: DemoPlan, steps: int):
    from qw.training.config import apply_overrides, load_config, parse_overrides

    cfg = load_config("paper", {
        "model": {"widths": list(plan.widths)},
        "train": {"steps": steps, "lr": plan.train_lr, "batch_size": plan.batch_size, "grad_accum": 1,
                  "crop": None, "num_workers": 0, "seed": plan.seed, "log_every": 20, "val_every": 10 ** 9,
                  "val_blocks": 0, "ckpt_every": 50}})
    return apply_overrides(cfg, parse_overrides(plan.settings), "the plan's settings")


def _finished(run: Path, steps: int) -> bool:
    from qw.training.train.checkpoints import LAST, load_checkpoint

    return (run / LAST).is_file() and int(load_checkpoint(run / LAST)["step"]) >= steps


def train_demo(plan: DemoPlan, store: str, run: Path, steps: int, progress: bool = True) -> Path:
    from qw.training.train.checkpoints import LAST
    from qw.training.train.loop import initial_model, train

    if not _finished(run, steps):
        cfg = demo_config(plan, steps)
        train(initial_model(cfg), cfg, store, run, resume=(run / LAST).is_file(), progress=progress)
    return run / LAST


def quantize_demo(plan: DemoPlan, store: str, checkpoint: Path, run: Path, progress: bool = True) -> Path:
    from qw.training.quantization.qat import quantize_command
    from qw.training.train.checkpoints import LAST

    if not _finished(run, plan.qat_steps):
        quantize_command(str(checkpoint), store, str(run), bits="w4a4", steps=plan.qat_steps, lr=plan.qat_lr,
                         resume=(run / LAST).is_file(), progress=progress)
    return run / LAST


def run_demo(out: str | Path, train_steps: int | None = None, qat_steps: int | None = None,
             plan: DemoPlan | None = None, progress: bool = True) -> tuple[str, str]:
    """Run (or resume) the demo in `out`; returns (report path, headline table as markdown). `progress`: the
    training, fine-tuning and evaluation bars (the stages print one line each either way)."""
    from qw.training.evaluation.evaluate import evaluate_command, markdown_table
    from qw.training.export.exporter import export_command

    plan = replace(plan or DemoPlan(), **{k: v for k, v in (("train_steps", train_steps), ("qat_steps", qat_steps))
                                          if v is not None})
    out = Path(out)
    start = time.perf_counter()
    t = _stage("1/6 capture builtin scenes")
    held_out = capture_all(plan, out / "captures")
    t = _stage(f"2/6 build block store ({time.perf_counter() - t:.0f}s for capture)")
    store = build_demo_store(out / "captures", out / "blocks.zarr")
    t = _stage(f"3/6 train QW-Net, {plan.train_steps} steps ({time.perf_counter() - t:.0f}s for the store)")
    fp = train_demo(plan, store, out / "runs" / "fp32", plan.train_steps, progress)
    t = _stage(f"4/6 quantize W4A4, {plan.qat_steps} QAT steps ({time.perf_counter() - t:.0f}s for training)")
    q = quantize_demo(plan, store, fp, out / "runs" / "w4a4", progress)
    t = _stage(f"5/6 export and check the integer reference ({time.perf_counter() - t:.0f}s for QAT)")
    exported = export_command(str(q), str(out / "model.qwq"), verify_shot=str(held_out[0]), verify_frames=4)
    if not exported["verify"]["max_abs_diff"] <= 1e-5 * max(1.0, exported["verify"]["max_output"]):
        raise QwError(f"{out / 'model.qwq'}: the integer reference differs from the fake-quantized model "
                      f"({exported['verify']})")
    t = _stage(f"6/6 evaluate against TAA on held-out shots ({time.perf_counter() - t:.0f}s for export)")
    data = evaluate_command([str(fp), str(q)], [str(p) for p in held_out], str(out / "report"),
                            frames=plan.eval_frames, flip_crop=None, crop_size=64, progress=progress)
    _stage(f"done in {(time.perf_counter() - start) / 60:.1f} min ({time.perf_counter() - t:.0f}s for eval); "
           f"integer reference max |diff| {exported['verify']['max_abs_diff']:.3g} on {held_out[0].name}")
    return data["report"], markdown_table(data["overall"])

"""benchmarks/quality.py's plans, recipe options and summary arithmetic (the heavy stages run in the script)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402

import torch  # noqa: E402

from qw.demo import demo_config  # noqa: E402
from qw.training.evaluation.metrics import STEADY_STATE_FROM  # noqa: E402


@pytest.mark.parametrize("name", sorted(quality.ABLATIONS))
def test_every_ablation_is_one_valid_change_of_the_plan(name: str) -> None:
    plan = replace(quality.PLANS["full"], settings=("train.lr=1e-3",))
    option = quality.with_option(plan, name, seed=5)
    cfg = demo_config(option, 2000)  # a typo in an override or an invalid value fails here (decay-1000: > 1000)
    assert option.seed == 5 and option.settings[:1] == ("train.lr=1e-3",) and cfg.train.lr == 1e-3
    changed = {k for k in quality.QualityPlan.__dataclass_fields__ if getattr(option, k) != getattr(plan, k)}
    assert changed <= {"seed", "settings", "store_tile", "store_frames", "batch_size", "widths", "train_lr",
                       "dataset"}
    assert quality.with_option(plan, "plan") == plan
    # the model changes an option's name announces are the ones it makes
    assert ("warp-bicubic" in name) == (cfg.model.warp_filter == "bicubic")
    assert ("jitter-input" in name) == cfg.model.jitter_input
    assert ("kernel-5" in name) == (cfg.model.input_kernel == 5)
    assert ("lobe-1" in name) == (cfg.model.input_kernel_lobe == 1)
    if "crop-128" in name:  # the same pixels per step as the plan (1 × 128² = 4 × 64²), or N× with batch-N
        batch = re.search(r"batch-(\d+)", name)
        factor = int(batch[1]) if batch else 1
        assert option.batch_size * option.store_tile ** 2 == factor * plan.batch_size * 64 ** 2


def test_each_block_shape_has_its_own_store() -> None:
    full = quality.PLANS["full"]
    names = {name: quality.store_name(quality.with_option(full, name))
             for name in ("plan", "norm-none+crop-128", "norm-none+crop-96+spatial-0.7+frames-16")}
    assert names == {"plan": "blocks.zarr", "norm-none+crop-128": "blocks-tile128.zarr",
                     "norm-none+crop-96+spatial-0.7+frames-16": "blocks-tile96-frames16.zarr"}
    option = quality.with_option(full, "norm-none+crop-128+spatial-0.7+frames-16")
    assert quality.store_changes(option) == {"tile": 128, "frames": 16}
    option = quality.with_option(full, "norm-none+crop-128+spatial-0.7+instances-8")  # another dataset
    assert quality.store_name(option) == "blocks-builtin-game-quality-8-tile128.zarr"
    assert quality.store_name(quality.PLANS["classic"]) == "blocks-builtin-quality.zarr"


@pytest.mark.parametrize("instances", [8, 16])
def test_instance_options_add_other_seeds_of_the_plan_generators_at_the_same_budget(instances: int) -> None:
    from qw.datagen.manifests import find_dataset, find_scene

    full = quality.PLANS["full"]
    option = quality.with_option(full, f"norm-none+crop-128+spatial-0.7+instances-{instances}")
    plan_scenes, option_scenes = quality.training_shots(full), quality.training_shots(option)
    assert plan_scenes.items() <= option_scenes.items() and len(option_scenes) == instances
    manifests = [find_scene(name) for name in option_scenes]
    assert len({m.seed for m in manifests}) == instances  # each instance its own scene
    assert {m.builtin.builder for m in manifests} == set(full.kinds)
    for kind in full.kinds:  # as many instances of each generator
        assert sum(m.builtin.builder == kind for m in manifests) == instances // len(full.kinds)
    budgets = {s.budget for dataset in (option.dataset, full.dataset) for s in find_dataset(dataset).scenes}
    assert budgets == {128}


def test_plans_fit_their_content() -> None:
    full, gpu = quality.PLANS["full"], quality.PLANS["gpu"]
    assert full.test_frames >= 64 and full.val_frames > STEADY_STATE_FROM and full.dataset == "builtin-game-quality"
    assert gpu.widths == (32, 64, 96, 128, 160) and gpu.batch_size == 8 and gpu.device == "cuda"
    assert gpu.store_tile <= min(gpu.resolution) and gpu.store_tile % 16 == 0
    assert max(gpu.select_steps) == gpu.train_steps and max(gpu.qat_select_steps) == gpu.qat_steps
    for plan in quality.PLANS.values():  # the recipe is an option that exists and yields a valid config
        demo_config(quality.with_option(plan, plan.recipe), plan.train_steps)


def test_gpu_plan_keeps_the_choices_made_on_val() -> None:
    full, gpu = quality.PLANS["full"], quality.PLANS["gpu"]
    def choices(plan: quality.QualityPlan) -> tuple:
        cfg = demo_config(quality.with_option(plan, plan.recipe), plan.train_steps)
        return (cfg.model.norm, cfg.model.jitter_input, cfg.model.warp_filter, cfg.train.spatial_weight,
                cfg.train.temporal_weight)

    assert choices(gpu) == choices(full)


def test_cpu_plan_hides_the_gpus_from_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    plan = quality.choose_plan(None, "cpu")
    assert plan.device == "cpu" and plan.widths == quality.PLANS["full"].widths
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def _scores(psnr: dict[str, float]) -> dict:
    return {shot: {"psnr": v, "ssim": None, "flip": None, "tpsnr": None} for shot, v in psnr.items()}


def test_summary_has_baselines_once_seeds_with_spread_and_pairs_per_shot() -> None:
    shots = {"a": 30.0, "b": 20.0, "c": 25.0}
    tested = {"test": {"TAA": {"psnr": 25.0, "ssim": 0.9, "flip": 0.1, "tpsnr": 24.0}},
              "test_steady": {"TAA": {"psnr": 25.0, "ssim": 0.9, "flip": 0.1, "tpsnr": 24.0}},
              "test_shots": {span: {"TAA": _scores(shots)} for span in quality.SPANS}}
    rows = []
    for offset in (1.0, 3.0):  # two seeds: QW-Net = TAA + offset on every shot
        ours = {k: v + offset for k, v in shots.items()}
        overall = {"psnr": 25.0 + offset, "ssim": 0.9, "flip": 0.1, "tpsnr": 24.0}
        rows.append({"test": {"QW-Net FP32": overall}, "test_steady": {"QW-Net FP32": overall},
                     "test_shots": {span: {"QW-Net FP32": _scores(ours)} for span in quality.SPANS}})
    summary = quality.summarize(rows, tested)
    assert list(summary) == ["TAA", "QW-Net FP32"]
    assert summary["TAA"]["psnr"] == {"mean": 25.0, "std": 0.0, "min": 25.0, "max": 25.0, "runs": 1}
    assert summary["QW-Net FP32"]["psnr"]["mean"] == 27.0 and summary["QW-Net FP32"]["psnr"]["runs"] == 2
    assert summary["QW-Net FP32"]["psnr"]["std"] == pytest.approx(2 ** 0.5)
    paired = quality.paired_over_seeds(rows, tested)
    for span in quality.SPANS:
        d = paired["QW-Net FP32"][span]["psnr"]  # per shot: the seeds' mean (+2) minus TAA
        assert d["mean"] == pytest.approx(2.0) and d["low"] == pytest.approx(2.0) and d["n"] == 3
        assert "flip" not in paired["QW-Net FP32"][span]  # no per-shot values: no pairs
    assert "| TAA |" in quality.summary_table(summary) and "± " in quality.summary_table(summary)


def test_ablation_table_pairs_each_option_with_the_plan_run_of_the_same_seed() -> None:
    def scores(psnr: float) -> dict[str, float]:
        return {"psnr": psnr, "psnr_steady": psnr + 0.5, "tpsnr": psnr - 1, "train_s": 10}
    runs = {"plan": {0: scores(29.0), 1: scores(30.0)},
            "norm-none": {0: scores(29.4), 1: scores(30.2), 2: scores(35.0)},  # seed 2 has no plan run to pair with
            "cosine": {1: scores(29.5)}}
    table = quality.ablation_table({"TAA": scores(31.0)}, runs, shots=4, frames=48, steps=300)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert rows["norm-none"][2:5] == ["0, 1, 2", "31.53", "+0.30"]  # mean of all three; Δ of the paired seeds 0, 1
    assert rows["cosine"][3:5] == ["29.50", "-0.50"] and rows["plan"][4] == ""
    assert rows["TAA"][3] == "31.00"


def test_test_scores_are_reused_only_for_the_same_checkpoints_and_frames(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from qw.training.evaluation import evaluate

    calls = []

    def fake_eval(checkpoints, captures, out, *, frames, flip_every, **_) -> dict:
        calls.append((list(checkpoints), frames))
        Path(out).mkdir(parents=True)
        data = {"methods": {"aliased input": "", **{f"QW-Net {i}": c for i, c in enumerate(checkpoints)}},
                "settings": {"captures": list(captures), "frames_per_shot": frames, "flip_every": flip_every}}
        (Path(out) / "metrics.json").write_text(json.dumps(data))
        return data

    monkeypatch.setattr(evaluate, "evaluate_command", fake_eval)
    shots, out = [tmp_path / "scene" / "shot"], tmp_path / "seed0" / "test"
    picked = [tmp_path / "fp32_step300.pt", tmp_path / "w4a4_fp300_qat100.pt"]
    quality.evaluate_once(out, picked, shots, 64, flip_every=16)
    quality.evaluate_once(out, picked, shots, 64, flip_every=16)  # resumed: the same scores, not scored again
    assert len(calls) == 1
    # a rerun whose val selection picked other checkpoints, or that scores other frames, is scored again
    repicked = [tmp_path / "fp32_step600.pt", tmp_path / "w4a4_fp600_qat100.pt"]
    assert quality.evaluate_once(out, repicked, shots, 64, flip_every=16)["methods"]["QW-Net 0"] == str(repicked[0])
    quality.evaluate_once(out, repicked, shots, 32, flip_every=16)
    assert calls[1:] == [([str(c) for c in repicked], 64), ([str(c) for c in repicked], 32)]


def test_decay_branch_starts_from_the_kept_checkpoint_and_is_plotted_beside_the_constant_rate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = replace(quality.PLANS["small"], train_steps=6, select_steps=(3, 6))
    runs = tmp_path / "seed0"
    (runs / "fp32").mkdir(parents=True)
    (runs / "fp32" / "last.pt").write_bytes(b"continued past the selection steps")
    (runs / "fp32" / "metrics.jsonl").write_text("".join(f'{{"event": "train", "step": {k}, "loss": 0.5}}\n'
                                                         for k in range(1, 7)))
    (runs / "fp32_step6.pt").write_bytes(b"the run at step 6")
    trained = []

    def fake_fp32_at(plan, store, run, steps, kept, val, cache) -> float:
        trained.append((demo_config(plan, steps).train, run, kept))
        return 31.5

    monkeypatch.setattr(quality, "fp32_at", fake_fp32_at)
    assert quality.decayed_at(plan, 2, "store", runs, []) == ("6+2", 31.5)
    (train, branch, kept), = trained
    assert (train.steps, train.decay_steps, train.schedule) == (8, 2, "constant")
    assert (branch / "last.pt").read_bytes() == b"the run at step 6" and kept == runs / "fp32_step6+2.pt"
    assert (branch / "metrics.jsonl").is_file() and not branch.with_name(branch.name + ".tmp").exists()

    row = {"seed": 0, "val_psnr": {"fp32": {"3": 30.0, "6": 31.0, "6+2": 31.5}}}
    assert quality.fp32_candidates(row) == ({3: 30.0, 6: 31.0}, {(6, 2): 31.5})
    with (runs / "fp32_6+2" / "metrics.jsonl").open("a") as log:  # the branch's own steps
        log.writelines(f'{{"event": "train", "step": {k}, "loss": 0.4}}\n' for k in (7, 8))
    assert quality.plot_learning_curves(tmp_path, [row], {"TAA": 31.2}).stat().st_size > 0


def test_a_decay_branch_is_refused_before_training_where_the_schedule_is_not_constant() -> None:
    quality.check_decay(replace(quality.PLANS["full"], decay_steps=(100, 200)))
    with pytest.raises(SystemExit, match="--decay-steps 100: .*decay_steps is a decay of the constant schedule, "
                                         "not of 'cosine'"):
        quality.check_decay(replace(quality.PLANS["gpu"], decay_steps=(100,)))


def fake_checkpoint(path: Path, step: int) -> Path:
    """A checkpoint file the loader accepts, at `step` (no weights: only where a run stands is read)."""
    import torch

    from qw.training.config import Config
    from qw.training.train.checkpoints import CHECKPOINT_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "config": Config().model_dump(mode="json"), "step": step},
               path)
    return path


def test_every_decay_option_is_its_constant_rate_option_plus_the_decay() -> None:
    decaying = [name for name in quality.ABLATIONS if quality.decay_of(quality.ABLATIONS[name].get("settings", ()))]
    assert decaying
    for name in decaying:
        decay = quality.decay_of(quality.ABLATIONS[name]["settings"])
        constant = dict(quality.ABLATIONS[name.removesuffix(f"+decay-{decay}")])
        option = dict(quality.ABLATIONS[name])
        settings = option.pop("settings")
        assert settings == (*constant.pop("settings"), f"train.decay_steps={decay}") and option == constant


def test_a_decay_option_resumes_its_constant_rate_run_scored_at_the_decay_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qw.training.evaluation import evaluate
    from qw.training.quantization import qat
    from qw.training.train.checkpoints import load_checkpoint

    constant, decayed = "norm-none+crop-128+spatial-0.7", "norm-none+crop-128+spatial-0.7+decay-1000"
    out, trained = tmp_path / "ablations", []

    def fake_train_demo(option, store, run, steps):  # where the run stood, then the run trained to `steps`
        start = load_checkpoint(run / "last.pt")["step"] if (run / "last.pt").is_file() else 0
        trained.append((run.relative_to(out), quality.decay_of(option.settings), start, steps))
        run.mkdir(parents=True, exist_ok=True)
        with (run / "metrics.jsonl").open("a") as log:
            log.write(f'{{"event": "train", "step": {steps}}}\n')
        return fake_checkpoint(run / "last.pt", steps)

    monkeypatch.setattr(quality, "train_demo", fake_train_demo)
    monkeypatch.setattr(quality, "capture", lambda *args: [])
    monkeypatch.setattr(quality, "build_quality_store", lambda *args: "store")
    monkeypatch.setattr(quality, "val_summary", lambda *args: {k: 30.0 for k in quality.ABLATION_KEYS})
    monkeypatch.setattr(qat, "model_from_any_checkpoint", lambda path: (torch.nn.Identity(), None, None))
    monkeypatch.setattr(evaluate, "_qwnet", lambda model, device: None)

    def ablate(name: str, steps: int) -> None:
        quality.ablate(quality.PLANS["small"], tmp_path, [], out, [name], steps, (0,))

    ablate(constant, 3)
    ablate(decayed, 1003)  # from the constant-rate run's checkpoint scored at 3 steps: only the decay trains
    ablate(constant, 5)
    ablate(decayed, 1004)  # no checkpoint scored at 4: the whole run trains in its own folder
    assert trained == [(Path(constant, "seed0", "fp32"), 0, 0, 3),
                       (Path(decayed, "seed0", "fp32_3+1000"), 1000, 3, 1003),
                       (Path(constant, "seed0", "fp32"), 0, 3, 5),
                       (Path(decayed, "seed0", "fp32_4+1000"), 1000, 0, 1004)]
    assert load_checkpoint(out / constant / "seed0" / "fp32_step3.pt")["step"] == 3
    assert (out / decayed / "seed0" / "val_step1003.json").is_file()
    branch_log = (out / decayed / "seed0" / "fp32_3+1000" / "metrics.jsonl").read_text().splitlines()
    assert branch_log == ['{"event": "train", "step": 3}', '{"event": "train", "step": 1003}']


def test_ablations_are_refused_before_anything_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = quality.PLANS["full"]
    quality.check_ablations(plan, list(quality.ABLATIONS), 2000)
    monkeypatch.setitem(quality.ABLATIONS, "norm-none+late-decay", {"settings": ("train.decay_steps=500",)})
    with pytest.raises(SystemExit, match=r"--ablate norm-none\+late-decay: a rate-decay option is named "
                                         r"<constant-rate option>\+decay-<steps>"):
        quality.check_ablations(plan, ["norm-none+late-decay"], 2000)
    with pytest.raises(SystemExit, match=r"--ablate norm-none\+crop-128\+spatial-0.7\+decay-1000 at "
                                         r"--ablation-steps 999: .*decay_steps \(0 \+ 1000\) exceed steps \(999\)"):
        quality.check_ablations(plan, ["plan", "norm-none+crop-128+spatial-0.7+decay-1000"], 999)
    assert quality.constant_option("norm-none+crop-128+spatial-0.7+decay-1000") == "norm-none+crop-128+spatial-0.7"
    assert quality.constant_option("norm-none+crop-128+spatial-0.7") is None

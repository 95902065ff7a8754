"""Training that refuses poison: config range checks, --set overrides, the non-finite guard, checkpoint retention,
and --resume that refuses what it cannot continue exactly."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train import read_log, write_config
from train_helpers import make_store

from qw.cli import main
from qw.datagen.errors import QwError
from qw.training.config import load_config
from qw.training.data import BlockSampler
from qw.training.model.qwnet import QWNet
from qw.training.train.checkpoints import (BEST, LAST, check_resumable, load_checkpoint, prune_checkpoints, publish,
    save_checkpoint, step_checkpoints)
from qw.training.train.ddp import Process, sync_batch_norm
from qw.training.train import loop
from qw.training.train.loop import initial_model, train
from qw.training.train.run_log import truncate_log


def qw(*args: str):
    return CliRunner().invoke(main, ["-q", *args])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("safety") / "blocks.zarr", n_train=8, n_val=2, t=4, tile=32)


# ---------------------------------------------------------------------------------------------- config at load


@pytest.mark.parametrize("setting, named", [
    ("train.lr=.nan", "train.lr: Input should be a finite number"),
    ("train.lr=-1e-3", "train.lr: Input should be greater than 0"),
    ("train.steps=0", "train.steps: Input should be greater than or equal to 1"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("train.warmup_steps=4", "warmup_steps (4) must be less than steps (4)"),
    ("train.exposure_range=[2, 1]", "exposure_range must satisfy"),
    ("train.crop=18", "train.crop 18 must be a multiple of 4"),
    ("train.global_batch=5", "global_batch 5 is not a multiple of batch_size 2"),
    ("train.schedule=step", "schedule 'step' needs milestones"),
    ("train.lr_max=1", "train.lr_max: Extra inputs are not permitted"),
    ("model.widths=[8, 0, 8]", "widths and decoder_convs must be positive"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_written(store: str, tmp_path: Path, setting: str,
                                                            named: str) -> None:
    config = write_config(tmp_path / "c.yaml")
    result = qw("train", "--store", store, "--out", str(tmp_path / "run"), "--config", str(config), "--set", setting)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_nan_in_a_yaml_file_is_refused_naming_the_file(store: str, tmp_path: Path) -> None:
    config = tmp_path / "nan.yaml"
    config.write_text(write_config(tmp_path / "c.yaml").read_text().replace("steps: 4", "steps: 4\n  lr: .nan"))
    result = qw("train", "--store", store, "--out", str(tmp_path / "run"), "--config", str(config))
    assert result.exit_code == 2 and str(config) in result.output and "train.lr" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting", ["train.lr", "train..lr=1", "train.lr=[1"])
def test_malformed_set_is_one_line(store: str, tmp_path: Path, setting: str) -> None:
    result = qw("train", "--store", store, "--out", str(tmp_path / "run"), "--set", setting)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--set" in result.output


def test_set_overrides_are_validated_applied_and_recorded(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", {"train": {"steps": 2}})
    sets = ["train.lr=2e-3", "model.widths=[8, 8, 16]", "train.global_batch=6"]
    result = qw("train", "--store", store, "--out", str(run), "--config", str(config),
                *itertools.chain.from_iterable(("--set", s) for s in sets))
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["train"]["lr"] == 2e-3 and recorded["model"]["widths"] == [8, 8, 16]
    assert recorded["train"]["grad_accum"] == 3  # global_batch 6 / batch_size 2 replaced the file's grad_accum 2
    assert load_checkpoint(run / LAST)["config"] == recorded
    start = [e for e in read_log(run) if e["event"] == "start"][0]
    assert start["overrides"] == sets and start["effective_batch"] == 6
    assert all(len(e["blocks"][0]) == 6 for e in read_log(run) if e["event"] == "train")


# ---------------------------------------------------------------------------------------------- non-finite guard


def _first_step_with(block: int, n_train: int, per_step: int, seed: int = 0) -> int:
    stream = itertools.islice(iter(BlockSampler(range(n_train), seed=seed)), 10 * n_train)
    return next(i // per_step + 1 for i, (b, _) in enumerate(stream) if b == block)


def test_a_nan_block_stops_the_run_naming_step_and_block_and_keeps_the_good_checkpoint(tmp_path: Path) -> None:
    n_train, per_step = 24, 4
    order = [b for b, _ in itertools.islice(iter(BlockSampler(range(n_train), seed=0)), n_train)]
    poison = order[4 * per_step + 1]  # first drawn at step 5: after the step-3 checkpoint, before step 6's
    assert _first_step_with(poison, n_train, per_step) == 5
    store = make_store(tmp_path / "nan.zarr", n_train=n_train, n_val=2, nan_block=poison)
    run = tmp_path / "run"
    # The guard is read at checkpoints only here (log/val every 1000): steps 4 and 5 run unchecked.
    config = write_config(tmp_path / "c.yaml", {"train": {"steps": 8, "batch_size": 1, "grad_accum": 4,
                                                          "ckpt_every": 3, "crop": None, "log_every": 1000}})
    result = qw("train", "--store", store, "--out", str(run), "--config", str(config))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert f"non-finite loss at step 5 in block(s) {poison};" in result.output
    assert [p.name for p in step_checkpoints(run)] == ["step-00000003.pt"]
    good = load_checkpoint(run / LAST)
    assert good["step"] == 3 and all(torch.isfinite(v).all() for v in good["model"].values())


class _NaNGradient(torch.autograd.Function):
    """Identity forward (finite loss), NaN backward: a poisoned gradient with a clean loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _PoisonedGradientNet(QWNet):
    def forward(self, color, motion, valid):
        return _NaNGradient.apply(super().forward(color, motion, valid))


def test_a_nan_gradient_with_a_finite_loss_stops_the_run_before_any_checkpoint(store: str, tmp_path: Path) -> None:
    cfg = load_config(str(write_config(tmp_path / "c.yaml", {"train": {"ckpt_every": 2}})))
    with pytest.raises(QwError, match=r"non-finite gradient at step 1 \(the loss was finite; the step's blocks: "):
        train(_PoisonedGradientNet(cfg.model), cfg, store, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.pt"))


# ---------------------------------------------------------------------------------------------- retention


def test_pruning_keeps_the_newest_and_never_the_best_or_last_name(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path / f"step-{step:08d}.pt", {"step": step})
    publish(tmp_path / "step-00000001.pt", tmp_path / BEST)
    publish(tmp_path / "step-00000005.pt", tmp_path / LAST)
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == [f"step-{s:08d}.pt" for s in (1, 2, 3)]
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-00000004.pt", "step-00000005.pt"]
    assert torch.load(tmp_path / BEST)["step"] == 1 and torch.load(tmp_path / LAST)["step"] == 5


def test_a_run_keeps_the_last_n_checkpoints_and_the_best_by_validation_loss(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Ranger's first steps (before its first Lookahead sync at step 6) make this tiny model's validation loss
    # worse, so the best model is the oldest one, which retention must not lose.
    config = write_config(tmp_path / "c.yaml", {"train": {"steps": 5, "lr": 0.3, "ckpt_every": 1, "val_every": 1,
                                                          "keep_last": 2, "val_images": 0}})
    assert qw("train", "--store", store, "--out", str(run), "--config", str(config)).exit_code == 0
    val = {e["step"]: e["loss"] for e in read_log(run) if e["event"] == "val"}
    best_step = min(val, key=val.get)
    assert best_step < 4, f"precondition: the best model must be older than the kept ones, val losses {val}"
    assert [p.name for p in step_checkpoints(run)] == ["step-00000004.pt", "step-00000005.pt"]
    best = load_checkpoint(run / BEST)
    assert best["step"] == best_step and best["best"] == {"step": best_step, "loss": val[best_step]}
    assert load_checkpoint(run / LAST)["step"] == 5
    flags = {e["step"]: e["best"] for e in read_log(run) if e["event"] == "val"}
    assert [s for s, improved in flags.items() if improved][-1] == best_step


# ---------------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def finished_run(store: str, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    config = write_config(run.parent / "c.yaml", {"train": {"steps": 2, "ckpt_every": 1}})
    assert qw("train", "--store", store, "--out", str(run), "--config", str(config)).exit_code == 0
    return run


def test_resume_refuses_another_store(finished_run: Path, tmp_path: Path) -> None:
    other = make_store(tmp_path / "other.zarr", n_train=10, n_val=2)
    result = qw("train", "--store", other, "--out", str(finished_run), "--resume", "--set", "train.steps=3")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "cannot continue this run exactly (store num_blocks 10 vs 12; store train_blocks 8 vs 10)" in result.output
    assert load_checkpoint(finished_run / LAST)["step"] == 2  # untouched


@pytest.mark.parametrize("setting, named", [("train.batch_size=1", "train.batch_size 2 vs 1"),
                                            ("train.grad_accum=4", "train.grad_accum 2 vs 4"),
                                            ("train.lr=1e-3", "train.lr 0.0005 vs 0.001"),
                                            ("train.ema_decay=0.9", "train.ema_decay None vs 0.9")])
def test_resume_refuses_another_batch_or_trajectory(store: str, finished_run: Path, setting: str, named: str) -> None:
    result = qw("train", "--store", store, "--out", str(finished_run), "--resume", "--set", "train.steps=3",
                "--set", setting)
    assert result.exit_code == 2 and named in result.output and result.output.count("\n") == 1, result.output


def test_resume_refuses_another_world_size_and_cosine_steps(finished_run: Path) -> None:
    ckpt = load_checkpoint(finished_run / LAST)
    cfg = load_config(str(finished_run / "config.yaml"))
    check_resumable(ckpt, finished_run / LAST, cfg, ckpt["data"], world_size=1)  # the same layout continues
    with pytest.raises(QwError, match="world size 1 vs 2"):
        check_resumable(ckpt, finished_run / LAST, cfg, ckpt["data"], world_size=2)
    cosine = cfg.model_copy(update={"train": cfg.train.model_copy(update={"schedule": "cosine"})})
    ckpt["config"]["train"]["schedule"] = "cosine"
    longer = cosine.model_copy(update={"train": cosine.train.model_copy(update={"steps": 5})})
    with pytest.raises(QwError, match="train.steps 2 vs 5"):  # cosine's decay is laid out over `steps`
        check_resumable(ckpt, finished_run / LAST, longer, ckpt["data"], world_size=1)


def test_truncate_log_keeps_events_up_to_the_step_and_drops_torn_lines(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    events = [("start", 0), ("train", 1), ("train", 2), ("checkpoint", 2), ("train", 3)]
    log.write_text("".join(f'{{"event": "{e}", "step": {s}}}\n' for e, s in events) + '{"event": "tr')
    truncate_log(log, 2)
    assert [(e["event"], e["step"]) for e in read_log(tmp_path)] == events[:4]


# ---------------------------------------------------------------------------------------------- batch and DDP


def test_global_batch_is_fixed_across_world_sizes_or_refused() -> None:
    train_cfg = load_config("paper", {"train": {"batch_size": 8, "global_batch": 64}}).train
    assert [train_cfg.accumulation(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(QwError, match=r"global batch 64 .* cannot be split over 3 processes"):
        train_cfg.accumulation(3)
    with pytest.raises(QwError, match="cannot be split over 16 processes"):
        train_cfg.accumulation(16)


def test_batch_norm_becomes_sync_batch_norm_under_ddp_on_gpus_only() -> None:
    def model() -> QWNet:
        return QWNet(load_config("paper", {"model": {"widths": [4, 4, 4], "decoder_convs": [1, 1]}}).model)

    def count(net: torch.nn.Module, kind: type) -> int:
        return sum(isinstance(m, kind) for m in net.modules())

    batch_norms, keys = count(model(), torch.nn.BatchNorm2d), list(model().state_dict())
    converted = sync_batch_norm(model(), Process(0, 2, torch.device("cuda", 0)))
    assert count(converted, torch.nn.SyncBatchNorm) == batch_norms > 0
    assert list(converted.state_dict()) == keys  # checkpoints still load into a plain QWNet
    for proc in (Process(0, 1, torch.device("cuda", 0)), Process(0, 2, torch.device("cpu"))):
        assert count(sync_batch_norm(model(), proc), torch.nn.SyncBatchNorm) == 0


def test_quantize_takes_validated_train_overrides_and_records_them(store: str, finished_run: Path,
                                                                   tmp_path: Path) -> None:
    # A source run with a schedule and an EMA, which a short fine-tuning must not inherit.
    source = load_checkpoint(finished_run / LAST)
    source["config"]["train"].update(schedule="cosine", warmup_steps=1, ema_decay=0.9)
    save_checkpoint(tmp_path / "source.pt", source)
    base = ("quantize", "--checkpoint", str(tmp_path / "source.pt"), "--store", store, "--calibration-blocks", "1",
            "--steps", "1")
    refused = qw(*base, "--out", str(tmp_path / "m"), "--set", "model.widths=[8, 8, 16]")
    assert refused.exit_code == 2 and "takes train.* overrides only" in refused.output
    assert qw(*base, "--out", str(tmp_path / "nan"), "--set", "train.lr=.nan").exit_code == 2
    assert not (tmp_path / "m").exists() and not (tmp_path / "nan").exists()
    result = qw(*base, "--out", str(tmp_path / "q"), "--set", "train.lr=3e-4", "--set", "train.warmup_steps=0")
    assert result.exit_code == 0, result.output
    train_cfg = load_checkpoint(tmp_path / "q" / LAST)["config"]["train"]
    assert train_cfg["lr"] == 3e-4 and train_cfg["steps"] == 1 and train_cfg["schedule"] == "constant"
    assert train_cfg["ema_decay"] is None
    assert yaml.safe_load((tmp_path / "q" / "quantize.json").read_text())["set"] == ["train.lr=3e-4",
                                                                                     "train.warmup_steps=0"]


def test_resume_never_replaces_a_best_checkpoint_newer_than_last(store: str, finished_run: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # As if the killed run had validated once more after its last checkpoint and found a much better model there:
    # last.pt's record of the best is beaten by any validation, best.pt's by none.
    last = load_checkpoint(run / LAST)
    save_checkpoint(run / BEST, {**last, "step": 3, "best": {"step": 3, "loss": 1e-9}})
    save_checkpoint(run / LAST, {**last, "best": {"step": 2, "loss": 1e9}})
    result = qw("train", "--store", store, "--out", str(run), "--resume", "--set", "train.steps=4",
                "--set", "train.val_every=1")
    assert result.exit_code == 0, result.output
    val = [e for e in read_log(run) if e["event"] == "val" and e["step"] > 2]
    assert [e["step"] for e in val] == [3, 4] and not any(e["best"] for e in val)
    assert load_checkpoint(run / BEST)["best"] == {"step": 3, "loss": 1e-9}


def test_resume_refuses_a_run_of_the_other_kind_in_one_line(store: str, finished_run: Path, tmp_path: Path) -> None:
    """`qw train --resume` on a `qw quantize` run (or the reverse) passed every config check and then crashed
    loading the other kind's weights, with a traceback listing every key."""
    quantized = tmp_path / "q"
    assert qw("quantize", "--checkpoint", str(finished_run / LAST), "--store", store, "--out", str(quantized),
              "--steps", "1", "--calibration-blocks", "1").exit_code == 0
    result = qw("train", "--store", store, "--out", str(quantized), "--resume", "--set", "train.steps=2")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output + repr(result.exception)
    assert result.output == (f"qw: error: {quantized / LAST}: a `qw quantize` run; continue it with "
                             "`qw quantize --resume`\n")
    full = tmp_path / "fp"
    shutil.copytree(finished_run, full)
    result = qw("quantize", "--checkpoint", str(finished_run / LAST), "--store", store, "--out", str(full), "--resume",
                "--steps", "3", "--lr", "5e-4")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output + repr(result.exception)
    assert result.output.startswith(f"qw: error: {full / LAST}: a full-precision `qw train` run; continue it with")
    assert load_checkpoint(quantized / LAST)["step"] == 1 and load_checkpoint(full / LAST)["step"] == 2  # untouched


class _Killed(BaseException):
    """A kill that lands inside the trainer (BaseException: nothing in the loop catches it)."""


def test_a_kill_between_publishing_last_and_best_leaves_them_consistent(store: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The final checkpoint improves on the best; the process dies after publishing the first of its two names.
    last.pt published first left best.pt an older, worse model than the one last.pt records as the best, and
    --resume (nothing left to train) kept it so."""
    run = tmp_path / "run"
    # Validations at steps 6 and 7 (Ranger's first steps barely move this tiny model; step 7 improves on 6).
    cfg = load_config(str(write_config(tmp_path / "c.yaml", {"train": {
        "steps": 7, "lr": 0.01, "val_every": 6, "ckpt_every": 6, "val_images": 0}})))
    published: list[str] = []

    def publish_then_die(source: Path, name: Path) -> None:
        if source.name == "step-00000007.pt" and published:
            raise _Killed
        publish(source, name)
        if source.name == "step-00000007.pt":
            published.append(name.name)

    monkeypatch.setattr(loop, "publish", publish_then_die)
    with pytest.raises(_Killed):
        train(initial_model(cfg), cfg, store, run)
    monkeypatch.undo()
    val = {e["step"]: e["loss"] for e in read_log(run) if e["event"] == "val"}
    assert val[7] < val[6], f"precondition: the second validation must improve, val losses {val}"
    last, best = load_checkpoint(run / LAST), load_checkpoint(run / BEST)
    assert best["best"] == {"step": best["step"], "loss": val[best["step"]]}
    assert best["best"]["loss"] <= last["best"]["loss"]  # best.pt holds the best model last.pt knows of
    result = qw("train", "--store", store, "--out", str(run), "--resume")
    assert result.exit_code == 0, result.output
    last, best = load_checkpoint(run / LAST), load_checkpoint(run / BEST)
    assert last["step"] == 7 and best["best"] == last["best"] == {"step": 7, "loss": val[7]}
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


def test_resume_drops_a_step_checkpoint_the_killed_run_never_published(store: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after writing step 4's checkpoint, before publishing it as last.pt: the run resumes from step 2, here
    with checkpoints every 3 steps. step-4.pt, a state of the killed run, was kept beside the resumed run's."""
    run = tmp_path / "run"
    cfg = load_config(str(write_config(tmp_path / "c.yaml", {"train": {"steps": 4, "ckpt_every": 2, "val_images": 0,
                                                                      "keep_last": 5}})))

    def die_at_step_4(source: Path, name: Path) -> None:
        if source.name == "step-00000004.pt":
            raise _Killed
        publish(source, name)

    monkeypatch.setattr(loop, "publish", die_at_step_4)
    with pytest.raises(_Killed):
        train(initial_model(cfg), cfg, store, run)
    monkeypatch.undo()
    assert load_checkpoint(run / LAST)["step"] == 2 and (run / "step-00000004.pt").is_file()
    result = qw("train", "--store", store, "--out", str(run), "--resume", "--set", "train.steps=6",
                "--set", "train.ckpt_every=3")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in run.glob("step-*.pt")) == [
        "step-00000002.pt", "step-00000003.pt", "step-00000006.pt"]


def _die_at_step(monkeypatch: pytest.MonkeyPatch, dead: int) -> None:
    """Kill the run as it starts optimizer step `dead`."""
    step_once = loop._optimizer_step

    def step_or_die(run, batches, step, guard):
        if step == dead:
            raise _Killed
        return step_once(run, batches, step, guard)

    monkeypatch.setattr(loop, "_optimizer_step", step_or_die)


def test_a_fresh_start_replaces_the_log_of_a_run_killed_before_its_first_checkpoint(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The killed run's start event (its config and overrides) stayed in metrics.jsonl above the new run's, and
    TensorBoard showed its steps next to the new run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, config = tmp_path / "run", write_config(tmp_path / "c.yaml")
    killed = load_config(str(config), {"train": {"lr": 0.1}})
    _die_at_step(monkeypatch, 3)
    with pytest.raises(_Killed):
        train(initial_model(killed), killed, store, run, run_info={"overrides": ["train.lr=0.1"]})
    monkeypatch.undo()
    assert not (run / LAST).exists() and [e["event"] for e in read_log(run)] == ["start", "train", "train"]
    result = qw("train", "--store", store, "--out", str(run), "--config", str(config))
    assert result.exit_code == 0, result.output
    events = read_log(run)
    assert [(e["event"], e["step"]) for e in events if e["event"] in ("start", "train")] == [
        ("start", 0), ("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    assert events[0]["overrides"] == []
    scalars = EventAccumulator(str(run / "tb"))
    scalars.Reload()
    logged = {e["step"]: e["loss"] for e in events if e["event"] == "train"}
    assert {s.step: s.value for s in scalars.Scalars("train/loss")} == pytest.approx(logged)
    assert [s.step for s in scalars.Scalars("train/loss")] == [1, 2, 3, 4]


def test_a_fresh_start_drops_the_best_checkpoint_of_a_run_killed_before_its_first_checkpoint(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt of the killed run (another model) stayed until the new run's first validation, and a --resume before
    that compared the new run against it, so it could stay best.pt for good."""
    run = tmp_path / "run"
    killed = load_config(str(write_config(tmp_path / "a.yaml", {"train": {"val_every": 1}})))
    _die_at_step(monkeypatch, 3)
    with pytest.raises(_Killed):
        train(initial_model(killed), killed, store, run)
    assert (run / BEST).is_file() and not (run / LAST).exists()
    config = write_config(tmp_path / "b.yaml", {"model": {"widths": [8, 8, 16]}, "train": {"ckpt_every": 2}})
    fresh = load_config(str(config))
    with pytest.raises(_Killed):  # validates at its last step only
        train(initial_model(fresh), fresh, store, run)
    monkeypatch.undo()
    assert load_checkpoint(run / LAST)["step"] == 2 and not (run / BEST).exists()
    result = qw("train", "--store", store, "--out", str(run), "--resume")
    assert result.exit_code == 0, result.output
    best = load_checkpoint(run / BEST)
    assert best["step"] == 4 and best["config"]["model"]["widths"] == [8, 8, 16]

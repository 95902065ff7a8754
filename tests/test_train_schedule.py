"""The training schedule: warm-up + cosine/step learning rates, gradient clipping, the EMA of the weights, and the
validation crops and FLIP written to TensorBoard."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_optimizer import Ranger
from torch.optim.optimizer import register_optimizer_step_pre_hook
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import read_log, write_config
from train_helpers import make_store

from qw.training.config import load_config
from qw.datagen.errors import QwError
from qw.training.data import BlockDataset, open_training_store
from qw.datagen.tonemap import tonemap
from qw.training.train.checkpoints import BEST, LAST, load_checkpoint, model_from_checkpoint
from qw.training.train.ddp import Process
from qw.training.train.loop import _validation_loader, train_command, validate
from qw.training.train.schedule import make_scheduler


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("schedule") / "blocks.zarr", n_train=8, n_val=2, t=4, tile=32)


def lrs(steps: int, **train) -> list[float]:
    """The learning rate each optimizer step 1..steps uses, read from a real Ranger after stepping it."""
    cfg = load_config("intel-sample", {"train": {"steps": steps, "lr": 1.0, **train}}).train
    optimizer = Ranger([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_linear_warm_up_then_constant() -> None:
    assert lrs(6, warmup_steps=4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lrs(3) == [1.0, 1.0, 1.0] == lrs(3, warmup_steps=1)


def test_warm_up_then_cosine_ends_at_the_final_ratio() -> None:
    used = lrs(9, warmup_steps=2, schedule="cosine", final_lr_ratio=0.1)
    cosine = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(7)]
    assert used == pytest.approx([0.5, 1.0] + cosine)
    assert used[-1] == pytest.approx(0.1)


def test_warm_up_then_step_decay_after_each_milestone() -> None:
    assert lrs(8, warmup_steps=2, schedule="step", milestones=[4, 6], gamma=0.5) == pytest.approx(
        [0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])  # "after step 4": step 5 uses lr·gamma


def test_constant_then_linear_decay_over_the_last_decay_steps() -> None:
    assert lrs(8, warmup_steps=2, decay_steps=4, final_lr_ratio=0.2) == pytest.approx(
        [0.5, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert lrs(3, decay_steps=3) == pytest.approx([2 / 3, 1 / 3, 0.0])


@pytest.mark.parametrize("train, problem", [
    ({"schedule": "cosine", "decay_steps": 2}, "decay_steps is a decay of the constant schedule, not of 'cosine'"),
    ({"warmup_steps": 3, "decay_steps": 2}, r"warmup_steps \+ decay_steps \(3 \+ 2\) exceed steps \(4\)")])
def test_decay_steps_is_refused_where_it_has_no_meaning(train: dict, problem: str) -> None:
    with pytest.raises(QwError, match=problem):
        load_config("intel-sample", {"train": {"steps": 4, **train}})


def test_a_constant_run_resumed_with_a_decay_is_the_run_trained_with_it(store: str, tmp_path: Path) -> None:
    """Warm-up, stable, decay: a constant-rate run continued from its checkpoint with a decay over new steps gives the
    bytes of a run trained with that decay from the start; a decay that would change a step already taken is
    refused in one line."""
    common = {"lr": 0.02, "val_images": 0, "ckpt_every": 2}
    straight = tmp_path / "straight"
    train_command(store, str(straight), str(write_config(tmp_path / "a.yaml", {"train": {
        "steps": 4, "decay_steps": 2, "final_lr_ratio": 0.25, **common}})))
    branched = tmp_path / "branched"
    train_command(store, str(branched), str(write_config(tmp_path / "b.yaml", {"train": {"steps": 2, **common}})))
    with pytest.raises(QwError, match="train.decay_steps 0 vs 3, train.steps 2 vs 4: changes the learning rate of "
                                      "step 2, already taken"):
        train_command(store, str(branched), resume=True, overrides=["train.steps=4", "train.decay_steps=3"])
    train_command(store, str(branched), resume=True,
                  overrides=["train.steps=4", "train.decay_steps=2", "train.final_lr_ratio=0.25"])
    assert [e["lr"] for e in read_log(branched) if e["event"] == "train"] == pytest.approx([0.02, 0.02, 0.0125, 0.005])
    assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(branched / LAST)["model"].values(),
                                                 load_checkpoint(straight / LAST)["model"].values()))


def test_logged_lr_is_the_one_each_step_used(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = {"steps": 5, "lr": 0.01, "warmup_steps": 2, "schedule": "cosine", "final_lr_ratio": 0.5,
                 "val_images": 0}
    train_command(store, str(run), str(write_config(tmp_path / "c.yaml", {"train": overrides})))
    logged = [e["lr"] for e in read_log(run) if e["event"] == "train"]
    assert logged == pytest.approx([0.01 * x for x in lrs(5, **{k: v for k, v in overrides.items()
                                                              if k not in ("steps", "lr", "val_images")})])


def test_gradients_are_clipped_to_the_configured_norm(store: str, tmp_path: Path) -> None:
    seen: list[float] = []

    def record(optimizer, args, kwargs):  # what the optimizer is handed, after clipping
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    clip = 1e-4
    handle = register_optimizer_step_pre_hook(record)
    try:
        train_command(store, str(tmp_path / "run"), str(write_config(tmp_path / "c.yaml", {"train": {
            "steps": 3, "grad_clip": clip, "val_images": 0}})))
    finally:
        handle.remove()
    before = [e["grad_norm"] for e in read_log(tmp_path / "run") if e["event"] == "train"]
    assert min(before) > 10 * clip  # the unclipped norms are far larger...
    assert len(seen) == 3 and max(seen) <= clip * (1 + 1e-4)  # ...the optimizer only saw clipped ones


def test_ema_weights_are_validated_checkpointed_and_resumed_exactly(store: str, tmp_path: Path) -> None:
    schedule = {"ema_decay": 0.5, "warmup_steps": 2, "schedule": "step", "milestones": [3], "gamma": 0.5, "lr": 0.05,
                "val_images": 0}
    straight = tmp_path / "straight"
    train_command(store, str(straight), str(write_config(tmp_path / "a.yaml", {"train": {"steps": 4, **schedule}})))
    ckpt = load_checkpoint(straight / LAST)
    assert ckpt["ema_updates"] == 4
    assert any(not torch.equal(ckpt["model"][k], ckpt["train_model"][k]) for k in ckpt["model"])

    # Validation scored the EMA weights (what "model" holds and what eval/infer/quantize load), not the raw ones.
    model, cfg = model_from_checkpoint(straight / LAST)
    logged = [e["loss"] for e in read_log(straight) if e["event"] == "val"][-1]
    assert _val_loss(model, cfg, store) == pytest.approx(logged, rel=1e-6)
    model.load_state_dict(ckpt["train_model"])
    assert _val_loss(model, cfg, store) != pytest.approx(logged, rel=1e-6)

    # Stopped at step 3 and resumed to 4: the same EMA, raw weights and schedule as the straight run.
    resumed = tmp_path / "resumed"
    config = str(write_config(tmp_path / "b.yaml", {"train": {"steps": 3, **schedule}}))
    train_command(store, str(resumed), config)
    train_command(store, str(resumed), resume=True, overrides=["train.steps=4"])
    again = load_checkpoint(resumed / LAST)
    for key in ("model", "train_model"):
        assert all(torch.allclose(again[key][k].float(), ckpt[key][k].float(), rtol=1e-6, atol=1e-7)
                   for k in ckpt[key]), key
    assert [e["lr"] for e in read_log(resumed) if e["event"] == "train"] == \
        [e["lr"] for e in read_log(straight) if e["event"] == "train"]


def _val_loss(model: torch.nn.Module, cfg, store: str) -> float:
    proc = Process(0, 1, torch.device("cpu"))
    loader = _validation_loader(store, open_training_store(store).split_indices("val"), cfg, proc, None)
    return validate(model, loader, cfg, proc, None)["loss"]


def test_tensorboard_gets_validation_crops_and_flip(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_command(store, str(run), str(write_config(tmp_path / "c.yaml", {"train": {"steps": 2, "val_every": 1,
                                                                                     "val_images": 2}})))
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == ["val/crops/0", "val/crops/1"]
    assert {"val/flip", "val/flip_taa", "val/loss"} <= set(events.Tags()["scalars"])
    val = [e for e in read_log(run) if e["event"] == "val"]
    assert [e["step"] for e in val] == [1, 2] and all(0 < e["flip"] < 1 and 0 < e["flip_taa"] < 1 for e in val)

    # The image of block 0: input | TAA | output | reference of its last frame, tone-mapped.
    image = events.Images("val/crops/0")[-1]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"), np.float32) / 255
    crop = 16
    assert pixels.shape == (crop, 4 * crop, 3)
    block = BlockDataset(store, crop=crop)[int(open_training_store(store).split_indices("val")[0])]
    for panel, name in ((0, "color"), (3, "reference")):
        expected = tonemap(block[name][-1].float().permute(1, 2, 0).numpy())
        assert np.abs(pixels[:, panel * crop:(panel + 1) * crop] - expected).max() <= 1 / 255 + 1e-6, name
    assert (run / BEST).is_file()

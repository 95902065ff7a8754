"""Trainer: data loading from the block store, errors, checkpoints, and kill/--resume continuity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from train_helpers import make_store

from qw.cli import main
from qw.datagen.errors import QwError
from qw.training.config import load_config
from qw.training.data import BlockDataset, BlockSampler, open_training_store
from qw.training.model.qwnet import QWNet
from qw.training.train.checkpoints import load_checkpoint, model_from_checkpoint
from qw.training.train.loop import initial_model, train, train_command

REPO = Path(__file__).resolve().parents[1]
TINY = {"preset": "intel-sample", "model": {"widths": [8, 8, 8], "decoder_convs": [1, 1]},
        "train": {"batch_size": 2, "grad_accum": 2, "crop": 16, "num_workers": 0, "log_every": 1, "val_every": 1000,
                  "ckpt_every": 1000, "val_blocks": 2, "steps": 4}}


def write_config(path: Path, overrides: dict | None = None) -> Path:
    data = json.loads(json.dumps(TINY))
    for section, values in (overrides or {}).items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(data))
    return path


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> dict[int, float]:
    """Loss per step (the later value of a step logged twice)."""
    return {e["step"]: e["loss"] for e in read_log(run) if e["event"] == "train"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("train") / "blocks.zarr", n_train=8, n_val=2, t=4, tile=32)


# ---------------------------------------------------------------------------------------------- data


def test_dataset_reads_only_what_training_needs_and_keeps_float16(store: str, tmp_path: Path) -> None:
    copy = tmp_path / "no_depth.zarr"
    shutil.copytree(store, copy)
    shutil.rmtree(copy / "depth")  # QW-Net never reads depth: a store without it still trains
    sample = BlockDataset(str(copy), crop=16, augment=True)[(3, 7)]
    assert sample["color"].shape == (4, 3, 16, 16) and sample["color"].dtype == torch.float16
    assert sample["motion"].shape == (4, 2, 16, 16) and sample["history_valid"].dtype == torch.bool
    assert set(sample) == {"color", "reference", "motion", "history_valid", "jitter", "index"}
    assert sample["jitter"].shape == (4, 2) and sample["jitter"].dtype == torch.float32


def test_dataset_is_deterministic_per_seed_and_centre_crops_without_one(store: str) -> None:
    ds = BlockDataset(store, crop=16, augment=True)
    a, b, c = ds[(2, 11)], ds[(2, 11)], ds[(2, 12)]
    assert torch.equal(a["color"], b["color"]) and not torch.equal(a["color"], c["color"])
    plain = BlockDataset(store)[2]["color"]
    assert torch.equal(BlockDataset(store, crop=16)[2]["color"], plain[..., 8:24, 8:24])


def test_sampler_ranks_are_disjoint_and_their_union_is_the_single_process_order() -> None:
    indices = list(range(10, 26))
    take = lambda s, n: [b for b, _ in __import__("itertools").islice(iter(s), n)]  # noqa: E731
    single = take(BlockSampler(indices, seed=5), 32)
    ranks = [take(BlockSampler(indices, rank=r, world_size=2, seed=5), 16) for r in range(2)]
    for step in range(8):  # global batch 4 = 2 per rank
        r0, r1 = ranks[0][2 * step:2 * step + 2], ranks[1][2 * step:2 * step + 2]
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(single[4 * step:4 * step + 4])
    resumed = take(BlockSampler(indices, seed=5, start=20), 12)
    assert resumed == single[20:32]  # resume continues the stream, across the epoch boundary at 16


@pytest.mark.parametrize("damage", ["incomplete", "missing_motion", "not_a_store", "corrupt_chunk"])
def test_bad_stores_give_clear_errors(store: str, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    if damage == "incomplete":
        meta["attributes"]["complete"] = False
        (bad / "zarr.json").write_text(json.dumps(meta))
        expected = "incomplete"
    elif damage == "missing_motion":
        shutil.rmtree(bad / "motion")
        expected = "no array 'motion'"
    elif damage == "not_a_store":
        meta["attributes"].pop("format")
        (bad / "zarr.json").write_text(json.dumps(meta))
        expected = "not a qw block store"
    else:
        (bad / "color" / "c.0.0.0.0.0").write_bytes(b"garbage")  # block 0's chunk
        expected = "cannot be read"
    with pytest.raises(QwError, match=expected) as info:
        open_training_store(str(bad))
        BlockDataset(str(bad))[0]
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_training_writes_logs_and_a_checkpoint_that_loads_back(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = train_command(store, str(run), str(write_config(tmp_path / "c.yaml", {"train": {"val_every": 2}})))
    assert set(metrics) == {"loss", "spatial", "temporal", "grad_norm"} and np.isfinite(metrics["loss"])
    events = read_log(run)
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in val] == [2, 4] and all(e["psnr_input"] > 0 for e in val)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 4 and ckpt["hdr"]["transform"] == "none" and ckpt["data"]["train_blocks"] == 8
    assert ckpt["config"]["model"]["widths"] == [8, 8, 8] and "torch" in ckpt["rng"] and ckpt["optimizer"]["state"]
    model, cfg = model_from_checkpoint(run / "last.pt")
    assert cfg.model.widths == [8, 8, 8] and isinstance(model, QWNet)


def test_a_run_from_before_a_model_option_existed_resumes(store: str, tmp_path: Path) -> None:
    # A checkpoint written before `input_kernel` was a config key has no such key; its default is what it trained.
    run = tmp_path / "run"
    train_command(store, str(run), str(write_config(tmp_path / "c.yaml", {"train": {"steps": 1}})))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    del ckpt["config"]["model"]["input_kernel"]
    torch.save(ckpt, run / "last.pt")
    train_command(store, str(run), None, overrides=["train.steps=2"], resume=True)
    assert load_checkpoint(run / "last.pt")["step"] == 2


def test_checkpoint_of_another_config_is_refused(store: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_command(store, str(run), str(write_config(tmp_path / "c.yaml", {"train": {"steps": 1}})))
    other = write_config(tmp_path / "other.yaml", {"model": {"widths": [8, 8, 16]}, "train": {"steps": 2}})
    with pytest.raises(QwError, match=r"another model config \(widths: checkpoint \[8, 8, 8\] vs requested"):
        train_command(store, str(run), str(other), resume=True)
    with pytest.raises(QwError, match="already holds a run"):
        train_command(store, str(run), str(other))
    with pytest.raises(QwError, match="nothing to resume"):
        train_command(store, str(tmp_path / "empty"), str(other), resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(QwError, match="junk.pt: not a qw checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_train_cli_reports_a_bad_store_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--store", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r"),
                                       "--config", "intel-sample"])
    assert result.exit_code == 2 and "nope.zarr" in result.output and "Traceback" not in result.output


def test_unreadable_block_in_a_loader_worker_is_one_clear_line(store: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    for chunk in (bad / "color").glob("c.*"):  # every block's colour chunk
        chunk.write_bytes(b"garbage")
    config = write_config(tmp_path / "c.yaml", {"train": {"num_workers": 1}})
    result = CliRunner().invoke(main, ["-q", "train", "--store", str(bad), "--out", str(tmp_path / "r"),
                                       "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "cannot be read" in result.output and str(bad) in result.output


def test_train_accepts_any_model_with_the_qwnet_interface(store: str, tmp_path: Path) -> None:
    """QAT reuses the loop with a wrapped model: anything with QWNet's forward trains and checkpoints."""
    cfg = load_config(str(write_config(tmp_path / "c.yaml", {"train": {"steps": 2}})))

    class Wrapped(QWNet):
        def forward(self, color, motion, valid):
            return super().forward(color, motion, valid) * 1.0

    model = Wrapped(cfg.model)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, cfg, store, tmp_path / "qat")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert load_checkpoint(tmp_path / "qat" / "last.pt", expected=cfg)["step"] == 2


# ---------------------------------------------------------------------------------------------- resume


def _launch(store: str, run: Path, config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "qw.cli", "-q", "train", "--store", store, "--out", str(run),
                             "--config", str(config), *extra], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and any(
                e["event"] == "checkpoint" and e["step"] >= step for e in read_log(run)):
            return
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint at step {step} in {run}")


def test_killed_run_resumes_with_the_identical_loss_curve(store: str, tmp_path: Path) -> None:
    steps = 40
    config = write_config(tmp_path / "c.yaml", {"train": {"steps": steps, "ckpt_every": 10, "num_workers": 1}})
    reference = _launch(store, tmp_path / "straight", config)
    crashed = _launch(store, tmp_path / "crashed", config)
    _wait_for_checkpoint(crashed, tmp_path / "crashed", 10)
    while max(train_losses(tmp_path / "crashed")) <= 10:  # a step logged past the checkpoint, for --resume to drop
        assert crashed.poll() is None
        time.sleep(0.02)
    os.killpg(crashed.pid, signal.SIGKILL)  # the trainer and its DataLoader worker, mid-run
    crashed.wait()
    logged_before = max(train_losses(tmp_path / "crashed"))
    assert logged_before < steps, "the run finished before it was killed"
    resumed = _launch(store, tmp_path / "crashed", config, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()

    starts = [e["step"] for e in read_log(tmp_path / "crashed") if e["event"] == "start"]
    assert starts[0] == 0 and 10 <= starts[1] < logged_before
    straight, continued = train_losses(tmp_path / "straight"), train_losses(tmp_path / "crashed")
    # --resume truncated what the killed run logged after its checkpoint: every step appears once, in order.
    assert [e["step"] for e in read_log(tmp_path / "crashed") if e["event"] == "train"] == list(range(1, steps + 1))
    np.testing.assert_allclose([continued[s] for s in range(1, steps + 1)],
                               [straight[s] for s in range(1, steps + 1)], rtol=1e-6, atol=0)
    final_a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    final_b = load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    assert all(torch.allclose(final_a[k], final_b[k], rtol=1e-6, atol=1e-7) for k in final_a)


def test_a_resumed_run_writes_the_same_checkpoint_bytes_as_an_uninterrupted_one(store: str, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """Starting the data loader drew from torch's global RNG after --resume restored it, so every checkpoint after
    a resume recorded another RNG state than the uninterrupted run's."""
    import qw.training.train.loop as loop

    config = str(write_config(tmp_path / "c.yaml", {"train": {"steps": 4, "ckpt_every": 2}}))
    train_command(store, str(tmp_path / "straight"), config, progress=False)
    save = loop._save

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt  # right after the step-2 checkpoint
    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_command(store, str(tmp_path / "resumed"), config, progress=False)
    monkeypatch.setattr(loop, "_save", save)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 2
    train_command(store, str(tmp_path / "resumed"), config, resume=True, progress=False)
    for name in ("step-00000004.pt", "last.pt"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_initial_weights_depend_only_on_the_configured_seed():
    """The demo once built its model from whatever torch's RNG held, so two runs trained different networks."""
    from qw.training.config import load_config
    from qw.training.train.loop import initial_model

    cfg = load_config("paper", {"model": {"widths": [4, 8, 8, 8, 8]}, "train": {"seed": 3}})
    first = initial_model(cfg).state_dict()
    torch.rand(100)  # an unrelated draw between the two must not matter
    second = initial_model(cfg).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = initial_model(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 4})})).state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_recipe_options_train_jitter_input_display_loss_and_each_norm(store: str, tmp_path: Path) -> None:
    """The recipe options run through the whole loop (data with jitter, loss domain, validation images)."""
    for norm in ("none", "group", "batch"):
        cfg = load_config(str(write_config(tmp_path / f"{norm}.yaml", {
            "model": {"norm": norm, "jitter_input": True, "bn_momentum": None},
            "train": {"loss_domain": "display", "steps": 2, "val_every": 2, "val_images": 1}})))
        assert cfg.loss_transform == "display"
        model = QWNet(cfg.model)
        assert model.extractor.first.conv.in_channels == 6 + 2
        train(model, cfg, store, tmp_path / norm)
        events = read_log(tmp_path / norm)
        assert np.isfinite([e["loss"] for e in events if e["event"] == "train"]).all()
        assert [e["step"] for e in events if e["event"] == "val"] == [2]


def test_the_rmse_spatial_term_reaches_the_training_step_and_validation(store: str, tmp_path: Path) -> None:
    """Same seed, weights and blocks: each frame's RMSE is at least its mean absolute error, and above it on real
    errors, in the logged training step and in validation alike."""
    spatial = {}
    for norm in ("l1", "rmse"):
        cfg = load_config(str(write_config(tmp_path / f"{norm}.yaml", {
            "train": {"spatial_norm": norm, "steps": 1, "val_every": 1, "val_images": 0}})))
        train(initial_model(cfg), cfg, store, tmp_path / norm)
        events = read_log(tmp_path / norm)
        spatial[norm] = [next(e["spatial"] for e in events if e["event"] == kind) for kind in ("train", "val")]
    assert all(rmse > l1 > 0 for l1, rmse in zip(spatial["l1"], spatial["rmse"]))


def test_augmentation_on_the_device_trains_the_same_weights_as_in_the_workers(store: str, tmp_path: Path) -> None:
    """`train.augment_on: device`: workers draw the transform, the prefetcher applies it to the batch (here on the
    CPU); the network must see the very same bits, so the trained weights are identical."""
    weights = {}
    for name, train_overrides in (("worker", {"augment_on": "worker", "num_workers": 1}),
                                  ("device", {"augment_on": "device", "num_workers": 1}),
                                  ("unaugmented", {"augment": False})):
        cfg = load_config(str(write_config(tmp_path / f"{name}.yaml", {"train": train_overrides})))
        train(initial_model(cfg), cfg, store, tmp_path / name, progress=False)
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    assert all(torch.equal(weights["worker"][k], weights["device"][k]) for k in weights["worker"])
    assert any(not torch.equal(weights["worker"][k], weights["unaugmented"][k]) for k in weights["worker"])

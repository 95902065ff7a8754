"""Two-process DDP (gloo on CPU, launched by torchrun) equals single-process training with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from test_train import read_log, write_config
from train_helpers import make_store

from training.config import load_config
from training.model import QWNet
from training.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # past Ranger's first 5 steps (RAdam takes plain momentum steps until its variance estimate is usable)


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_ddp_matches_single_process_training(tmp_path: Path) -> None:
    store = make_store(tmp_path / "blocks.zarr", n_train=12, n_val=2, t=4, tile=32)
    train = {"steps": STEPS, "lr": 0.01, "batch_size": 2, "grad_accum": 1, "ckpt_every": STEPS, "val_blocks": 2, "val_every": STEPS}
    ddp_config = write_config(tmp_path / "ddp.yaml", {"train": train})
    # One process, the same global batch of 4 as two micro-batches of 2 (gradient accumulation).
    single_config = write_config(tmp_path / "single.yaml", {"train": {**train, "grad_accum": 2}})
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cli", "-q", "train",
          "--store", store, "--out", str(tmp_path / "ddp"), "--config", str(ddp_config)])
    _run(["-m", "cli", "-q", "train", "--store", store, "--out", str(tmp_path / "single"), "--config",
          str(single_config)])

    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert [e["world_size"] for e in ddp_log if e["event"] == "start"] == [2]
    ddp_steps = [e for e in ddp_log if e["event"] == "train"]
    single_steps = [e for e in single_log if e["event"] == "train"]
    for ddp, single in zip(ddp_steps, single_steps, strict=True):
        rank0, rank1 = ddp["blocks"]
        assert len(rank0) == len(rank1) == 2 and not set(rank0) & set(rank1)  # ranks see disjoint blocks
        assert sorted(rank0 + rank1) == sorted(single["blocks"][0])  # ...that together make the global batch
        assert abs(ddp["loss"] - single["loss"]) <= 1e-5 * single["loss"]
    # Replicas were compared at the checkpoint (the trainer raises if they differ) and report no difference.
    assert [e["replica_max_diff"] for e in ddp_log if e["event"] == "checkpoint"] == [0.0]
    assert [e["step"] for e in ddp_log if e["event"] == "val"] == [STEPS]

    ddp_model = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    single_model = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    for name, value in single_model.items():
        assert torch.allclose(ddp_model[name], value, rtol=1e-5, atol=1e-6), name
    torch.manual_seed(0)  # the trainer's initial weights (seed 0): training really moved them
    initial = QWNet(load_config(str(ddp_config)).model).state_dict()
    assert max(float((initial[k] - v).abs().max()) for k, v in single_model.items()) > 100 * 1e-6

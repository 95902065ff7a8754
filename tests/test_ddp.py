"""DDP under torchrun (gloo on CPU): two "nodes" rendezvousing at an explicit c10d endpoint train exactly what one
process trains with the same config (the global batch stays fixed), and a stalled rank meets the configured
timeout instead of hanging the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from cli_helpers import free_port
from test_train import read_log, write_config
from train_helpers import make_store

from qw.training.config import load_config
from qw.training.model.qwnet import QWNet
from qw.training.train.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # past Ranger's first 5 steps (RAdam takes plain momentum steps until its variance estimate is usable)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def torchrun(nnodes: int, nproc: int, port: int, *train_args: str) -> list[str]:
    """What every node runs for a multi-node job: the same command, the same rendezvous id and endpoint."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "qw-test",
            "-m", "qw.cli", "-q", "train", *train_args]


def _check(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def test_two_nodes_train_what_one_process_trains_with_the_same_config(tmp_path: Path) -> None:
    store = make_store(tmp_path / "blocks.zarr", n_train=12, n_val=2, t=4, tile=32)
    # Global batch 4 = batch_size 2 × grad_accum 2: one process accumulates two micro-batches, each of the two
    # ranks runs one (grad_accum / world size).
    train = {"steps": STEPS, "lr": 0.01, "batch_size": 2, "grad_accum": 2, "ckpt_every": STEPS, "val_blocks": 2,
             "val_every": STEPS, "val_images": 0}
    config = str(write_config(tmp_path / "c.yaml", {"train": train}))
    # Two torchrun agents, one per "node", meeting at the endpoint (the one that can bind it hosts the store).
    port = free_port()
    nodes = [subprocess.Popen(torchrun(2, 1, port, "--store", store, "--out", str(tmp_path / "ddp"), "--config",
                                       config), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    single = subprocess.Popen([sys.executable, "-m", "qw.cli", "-q", "train", "--store", store, "--out",
                               str(tmp_path / "single"), "--config", config], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for proc in (*nodes, single):
        _check(proc)

    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    starts = [e for e in ddp_log if e["event"] == "start"]
    assert [(e["world_size"], e["effective_batch"], e["grad_accum_per_process"]) for e in starts] == [(2, 4, 1)]
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
    initial = QWNet(load_config(config).model).state_dict()
    assert max(float((initial[k] - v).abs().max()) for k, v in single_model.items()) > 100 * 1e-6


def test_a_stalled_rank_fails_the_run_after_the_configured_timeout(tmp_path: Path) -> None:
    store = make_store(tmp_path / "blocks.zarr", n_train=8, n_val=2, t=4, tile=32)
    timeout = 3
    config = str(write_config(tmp_path / "c.yaml", {"train": {"steps": 10_000, "ddp_timeout_s": timeout,
                                                              "ckpt_every": 10_000}}))
    run = tmp_path / "run"
    agent = subprocess.Popen(torchrun(1, 2, free_port(), "--store", store, "--out", str(run), "--config", config),
                             cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").exists() and any(e["event"] == "train" for e in read_log(run))):
            assert agent.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        workers = {int(p.environ()["RANK"]): p for p in psutil.Process(agent.pid).children(recursive=True)
                   if "RANK" in p.environ()}
        workers[1].suspend()  # SIGSTOP: alive, holding its sockets, never answering
        stalled = time.monotonic()
        workers[0].wait(timeout=60)
        waited = time.monotonic() - stalled
        workers[1].kill()
        out, _ = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert timeout - 0.5 <= waited < timeout + 30
    assert f"qw: error: rank 0: a DDP peer stalled or failed (train.ddp_timeout_s = {timeout}): Timed out" in out, out
    assert not list(run.glob("*.pt"))

"""Infrastructure faults: an object store that is unreachable, stalls or refuses the credentials, a lost chunk on
it, a Dask scheduler that cannot be reached, and output labels that must not collide. Real processes: the `qw`
command, a moto S3 server, a TCP peer that accepts and never answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from blocks_helpers import capture_meta, dataset, marker_chunks, write_dataset, write_scene_manifest, write_shot
from cli_helpers import free_port, one_line_error

from qw.datagen.block_store import open_store
from qw.datagen.tile import build_store
from qw.training.evaluation.evaluate import Method, distinguish_labels

QW = str(Path(sys.executable).with_name("qw"))
NO_AWS = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
FAST_FAIL = {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}


def qw(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([QW, *args], capture_output=True, text=True, timeout=180,
                          env={**NO_AWS, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
                               "/nonexistent", **(env or {})})


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("infra")
    captures, manifests = root / "captures", root / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train")}, (64, 48))
    write_shot(captures, capture_meta("gamma", "a", 16, 64, 48))
    build_store(dataset({"gamma": 4}), captures, str(root / "s.zarr"), workers=1, progress=False,
                manifests_root=manifests)
    return root, manifests


@pytest.fixture(scope="module")
def s3(local_store):
    """A moto S3 server holding a copy of the local store at s3://infra-bucket/s.zarr; yields its storage options."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test",
               "client_kwargs": {"region_name": "eu-west-1"}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("infra-bucket")  # moto keeps its buckets per process: test_tile has "bucket"
    fs.put(str(local_store[0] / "s.zarr"), "infra-bucket/s.zarr", recursive=True)
    try:
        yield options, fs
    finally:
        server.stop()


def test_a_store_on_s3_verifies_and_a_lost_chunk_is_named(s3):
    options, fs = s3
    url, opts = "s3://infra-bucket/s.zarr", json.dumps(options)
    assert qw("datagen", "verify", url, "--storage-options", opts).returncode == 0
    fs.rm(f"infra-bucket/s.zarr/{open_store(url, storage_options=options).chunk_key('reference', 2)}")
    result = qw("datagen", "verify", url, "--storage-options", opts)
    assert result.returncode == 1 and "block 2: reference chunk reference/c.2.0.0.0.0 is missing" in result.stdout
    assert "complete: NO (1 chunk(s) missing" in qw("datagen", "inspect", url, "--storage-options", opts).stdout


def test_missing_credentials_are_one_line(s3):
    options = {k: v for k, v in s3[0].items() if k not in ("key", "secret")}
    error = one_line_error(qw("datagen", "inspect", "s3://infra-bucket/s.zarr", "--storage-options", json.dumps(options)))
    assert "cannot reach the store" in error and "credentials" in error.lower()


def test_an_unreachable_object_store_is_one_line():
    options = {"endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s",
               "config_kwargs": FAST_FAIL}
    error = one_line_error(qw("datagen", "inspect", "s3://infra-bucket/s.zarr", "--storage-options", json.dumps(options)))
    assert "cannot reach the store" in error


def test_a_stalled_storage_peer_meets_the_configured_timeout(tmp_path):
    """A peer that accepts connections and never answers: the read timeout of --storage-options ends the wait."""
    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    peer.listen(64)
    held: list = []
    threading.Thread(target=lambda: [held.append(peer.accept()) for _ in range(64)], daemon=True).start()
    options = {"endpoint_url": f"http://127.0.0.1:{peer.getsockname()[1]}", "key": "k", "secret": "s",
               "config_kwargs": FAST_FAIL}
    start = time.monotonic()
    try:
        error = one_line_error(qw("-q", "train", "--store", "s3://infra-bucket/s.zarr", "--out", str(tmp_path / "run"),
                                  "--storage-options", json.dumps(options)))
    finally:
        peer.close()
    assert "cannot reach the store" in error and "timeout" in error.lower()
    assert time.monotonic() - start < 90 and held


def test_an_unreachable_scheduler_is_one_line_and_leaves_a_resumable_store(local_store, tmp_path):
    root, manifests = local_store
    ds = write_dataset(tmp_path / "ds.yaml", dataset({"gamma": 4}))
    store = tmp_path / "s.zarr"
    args = ["-q", "datagen", "build", "--dataset", str(ds), "--captures", str(root / "captures"), "--store",
            str(store)]
    env = {"QW_MANIFESTS": str(manifests), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    error = one_line_error(qw(*args, "--scheduler", f"tcp://127.0.0.1:{free_port()}", env=env))
    assert "cannot reach the Dask scheduler" in error
    assert qw(*args, "--workers", "1", env=env).returncode == 0  # the same command, locally, finishes the store
    assert qw("datagen", "verify", str(store)).returncode == 0


def test_method_labels_never_collide():
    sources = ["runs/a/fp/last.pt", "runs/b/fp/last.pt", "runs/b/fp/last.pt", "runs/b/fp/best.pt", None]
    methods = [Method("QW-Net FP32", None, s) for s in sources[:-1]] + [Method("TAA", None)]
    distinguish_labels(methods)
    labels = [m.label for m in methods]
    assert len(set(labels)) == len(labels), labels
    assert labels[0] == "QW-Net FP32 (a/fp/last.pt)" and labels[-1] == "TAA"
    two_runs = [Method("QW-Net W4A4", None, f"runs/{run}/last.pt") for run in ("x", "y")]
    distinguish_labels(two_runs)
    assert [m.label for m in two_runs] == ["QW-Net W4A4 (x)", "QW-Net W4A4 (y)"]


def test_a_lost_scheduler_is_one_line_and_the_build_resumes(tmp_path):
    """`qw datagen build --scheduler` on a real scheduler and worker; the scheduler is killed once the first window
    is written. The build stops with one line; the same command on a new cluster finishes the store."""
    captures, manifests = tmp_path / "captures", tmp_path / "manifests"
    write_scene_manifest(manifests, "gamma", {s: (48, "train") for s in ("a", "b", "c")}, (96, 64))
    for s in ("a", "b", "c"):
        write_shot(captures, capture_meta("gamma", s, 48, 96, 64))
    ds = write_dataset(tmp_path / "ds.yaml", dataset({"gamma": 54}))
    store = tmp_path / "s.zarr"
    args = ["-q", "datagen", "build", "--dataset", str(ds), "--captures", str(captures), "--store", str(store)]
    env = {**NO_AWS, "QW_MANIFESTS": str(manifests), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}
    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    scheduler = subprocess.Popen([dask, "scheduler", "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([dask, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        build = subprocess.Popen([QW, *args, "--scheduler", f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while not marker_chunks(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduler.kill()
        killed = time.monotonic()
        kept = {p: p.stat().st_mtime_ns for p in marker_chunks(store)}
        _, stderr = build.communicate(timeout=120)
        print(f"build stopped {time.monotonic() - killed:.1f} s after the scheduler was killed")
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait()
    assert build.returncode == 2 and stderr.startswith("qw: error: ") and stderr.count("\n") == 1, stderr
    assert kept, "no window was finished before the scheduler was killed"
    assert "finished windows are kept" in stderr, stderr
    assert "complete: NO" in qw("datagen", "inspect", str(store)).stdout
    start = time.monotonic()
    assert qw(*args, "--workers", "1", env=env).returncode == 0
    print(f"resumed build: {time.monotonic() - start:.1f} s")
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished windows were not built again
    assert qw("datagen", "verify", str(store)).returncode == 0


def test_capture_on_an_unreachable_scheduler_is_one_line(tmp_path):
    error = one_line_error(qw("datagen", "capture", "--scene", "builtin_street", "--shot", "fly", "--out",
                              str(tmp_path), "--frames", "0:2", "--resolution", "48x32", "--reference-spp", "1",
                              "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                              env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}))
    assert "cannot reach the Dask scheduler" in error

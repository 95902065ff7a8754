"""Dask clusters for the data stages: the SLURM job script built from the Dask configuration, and real builds and
captures through `--cluster slurm` with stand-in `sbatch`/`scancel` that run each job script on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask_jobqueue  # noqa: F401  (loads the jobqueue defaults before a test overrides some of them)
import pytest
from click.testing import CliRunner

from blocks_helpers import capture_meta, dataset, write_dataset, write_scene_manifest, write_shot
from qw.cli import main
from qw.datagen.capture_format import find_captures, read_frame
from qw.datagen.errors import QwError
from qw.datagen.cluster import WORKER_CONFIG, slurm_cluster, worker_config_exports
from test_tile import check_store_matches_sources

QW = str(Path(sys.executable).with_name("qw"))
FAKE_SLURM = Path(__file__).with_name("fake_slurm")
SLURM = {"jobqueue.slurm.cores": 4, "jobqueue.slurm.memory": "16GB", "jobqueue.slurm.queue": "render-long",
         "jobqueue.slurm.account": "vfx", "jobqueue.slurm.walltime": "03:30:00",
         "jobqueue.slurm.job-script-prologue": ["module load mesa"]}


def test_slurm_job_script_carries_the_configured_resources_and_qw_worker_settings():
    with dask.config.set(SLURM), slurm_cluster() as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    for directive in ("-p render-long", "-A vfx", "--cpus-per-task=4", "--mem=15G", "-t 03:30:00"):
        assert f"#SBATCH {directive}" in lines, directive
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line).split()
    assert worker[0] == sys.executable  # the workers run this installation of qw
    assert worker[worker.index("--nworkers") + 1] == "4" and worker[worker.index("--nthreads") + 1] == "1"
    # the user's prologue first, then qw's worker settings, all before the worker starts
    exports = worker_config_exports()
    assert lines.index("module load mesa") < lines.index(exports[0]) < lines.index(exports[-1]) < lines.index(
        " ".join(worker))


def test_configured_processes_are_kept():
    with dask.config.set({**SLURM, "jobqueue.slurm.processes": 2}), slurm_cluster() as cluster:
        worker = next(line for line in cluster.job_script().splitlines() if "dask_worker" in line).split()
    assert worker[worker.index("--nworkers") + 1] == "2" and worker[worker.index("--nthreads") + 1] == "2"


def test_worker_exports_reach_the_dask_configuration_of_a_fresh_process():
    """On the compute node the exports must give exactly WORKER_CONFIG (case of MALLOC_TRIM_THRESHOLD_ kept) and
    leave the other defaults of the same sections alone."""
    probe = ("import dask, distributed, json; print(json.dumps([dask.config.get(k, 'unset') for k in %r] + "
             "[dask.config.get('distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS')]))" % list(WORKER_CONFIG))
    script = "\n".join([*worker_config_exports(), f"{sys.executable} -c \"{probe}\""])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[null, false, 1]"


def test_slurm_without_cores_and_memory_is_refused_before_the_store_is_created(tmp_path):
    case = small_case(tmp_path)
    env = {**os.environ, "QW_MANIFESTS": str(case["manifests"]), "DASK_JOBQUEUE__SLURM__CORES": "2"}
    result = subprocess.run([QW, "datagen", "build", "--cluster", "slurm", "--dataset", str(case["dataset_file"]),
                             "--captures", str(case["captures"]), "--store", str(tmp_path / "blocks.zarr")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("qw: error: --cluster slurm: set the cores and memory")
    assert not (tmp_path / "blocks.zarr").exists()


def test_cluster_kind_and_scheduler_are_exclusive(tmp_path):
    result = CliRunner().invoke(main, ["datagen", "capture", "--scene", "builtin_fence", "--out", str(tmp_path),
                                       "--cluster", "slurm", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot be combined with --cluster slurm" in result.output


@pytest.mark.parametrize("args, message", [
    (["datagen", "build", "--dataset", "builtin-demo", "--captures", "CAPTURES", "--store", "STORE",
      "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers 2 sizes a new one"),
    (["datagen", "capture", "--scene", "builtin_fence", "--out", "CAPTURES", "--scheduler", "tcp://127.0.0.1:1",
      "--workers", "2"], "--workers 2 sizes a new Dask cluster"),
    (["datagen", "capture", "--scene", "builtin_fence", "--out", "CAPTURES", "--workers", "2"],
     "give --cluster local or slurm"),
    (["datagen", "capture", "--scene", "kite", "--out", "CAPTURES", "--workers", "2"],
     "--workers applies to builtin scenes"),
])
def test_workers_without_a_new_cluster_are_refused(tmp_path, args, message):
    """A worker count the run would ignore is an error, before anything is written."""
    args = [a.replace("CAPTURES", str(tmp_path / "captures")).replace("STORE", str(tmp_path / "blocks.zarr"))
            for a in args]
    (tmp_path / "captures").mkdir()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "blocks.zarr").exists() and not any((tmp_path / "captures").iterdir())


def test_cluster_is_refused_for_unreal_scenes(tmp_path):
    result = CliRunner().invoke(main, ["datagen", "capture", "--scene", "kite", "--out", str(tmp_path),
                                       "--cluster", "local"])
    assert result.exit_code == 2 and "--cluster applies to builtin scenes" in result.output


# ----------------------------------------------------------------------------------------------- fake SLURM


def small_case(root: Path) -> dict:
    captures, manifests = root / "captures", root / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train"), "b": (12, "train")})
    metas = [capture_meta("gamma", "a", 16, 96, 64), capture_meta("gamma", "b", 12, 96, 64)]
    for meta in metas:
        write_shot(captures, meta)
    ds = dataset({"gamma": 9}, candidates=2)
    return {"captures": captures, "manifests": manifests, "dataset": ds, "metas": {(m.scene, m.shot): m for m in metas},
            "dataset_file": write_dataset(root / "dataset.yaml", ds)}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """`sbatch` and `scancel` on PATH that run jobs on this machine; yields the folder of their records."""
    jobs = tmp_path / "slurm-jobs"
    jobs.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    yield jobs
    for script in jobs.glob("job-*.sh"):  # a failed test must not leave workers behind
        try:
            os.killpg(int(script.stem.removeprefix("job-")), 9)
        except ProcessLookupError:
            pass


def submitted_jobs(jobs: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("job-")) for p in jobs.glob("job-*.sh"))


def running_processes(job: int) -> list[int]:
    """Processes of a fake job's process group that are still running (zombies do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            if int(pgrp) == job and state != "Z":
                pids.append(int(stat.parent.name))
    return pids


def assert_jobs_ran_and_ended(jobs: Path, count: int) -> None:
    ids = submitted_jobs(jobs)
    assert len(ids) == count
    assert sorted(int(line) for line in (jobs / "cancelled").read_text().split()) == ids
    # Some job's workers joined the scheduler. Not every job's: the first to join may finish the work, and closing
    # the cluster cancels a job that is still starting.
    assert any("Registered to:" in (jobs / f"job-{job}.log").read_text() for job in ids)
    for job in ids:
        deadline = time.monotonic() + 30
        while running_processes(job) and time.monotonic() < deadline:  # the nannies stop their workers first
            time.sleep(0.2)
        assert not running_processes(job)


def test_build_with_cluster_slurm_end_to_end(tmp_path, fake_slurm):
    """`qw datagen build --cluster slurm` in a fresh process, configured only through DASK_JOBQUEUE__SLURM__*:
    the job script is submitted with sbatch, its workers build the store, the jobs are cancelled at the end."""
    case = small_case(tmp_path)
    store = tmp_path / "blocks.zarr"
    env = {**os.environ, "QW_MANIFESTS": str(case["manifests"]), "DASK_JOBQUEUE__SLURM__CORES": "2",
           "DASK_JOBQUEUE__SLURM__MEMORY": "2GB", "DASK_JOBQUEUE__SLURM__QUEUE": "cpu",
           "DASK_JOBQUEUE__SLURM__WALLTIME": "00:20:00"}
    result = subprocess.run([QW, "datagen", "build", "--cluster", "slurm", "--workers", "3", "--dataset",
                             str(case["dataset_file"]), "--captures", str(case["captures"]), "--store", str(store)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Dask dashboard: http://" in result.stderr
    assert result.stdout.startswith(f"{store}: 9 blocks, complete")
    check_store_matches_sources(str(store), case)
    assert_jobs_ran_and_ended(fake_slurm, 2)  # 3 workers in jobs of 2 processes: 2 jobs
    script = (fake_slurm / f"job-{submitted_jobs(fake_slurm)[0]}.sh").read_text().splitlines()
    assert {"#SBATCH -p cpu", "#SBATCH -t 00:20:00", "#SBATCH --cpus-per-task=2", *worker_config_exports()} <= set(
        script)


def test_slurm_without_sbatch_is_refused_before_the_store_is_created(tmp_path):
    """On a machine without SLURM the build once logged sbatch's FileNotFoundError and waited for workers forever."""
    case = small_case(tmp_path)
    env = {**os.environ, "QW_MANIFESTS": str(case["manifests"]), "DASK_JOBQUEUE__SLURM__CORES": "2",
           "DASK_JOBQUEUE__SLURM__MEMORY": "2GB", "PATH": str(Path(sys.executable).parent)}  # python, no sbatch
    result = subprocess.run([QW, "datagen", "build", "--cluster", "slurm", "--dataset", str(case["dataset_file"]),
                             "--captures", str(case["captures"]), "--store", str(tmp_path / "blocks.zarr")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("qw: error: --cluster slurm: SLURM's sbatch is not on PATH; "
                                                      "run qw where jobs can be submitted (a SLURM login node)")
    assert not (tmp_path / "blocks.zarr").exists()


def test_a_job_that_sbatch_refuses_fails_the_build_instead_of_waiting_for_workers(tmp_path, fake_slurm):
    """dask-jobqueue submits in the background and only logs sbatch's refusal (an unknown partition): the build
    must end with one line, the unfinished store kept for a rerun."""
    refusing = tmp_path / "refusing-slurm"
    refusing.mkdir()
    (refusing / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    (refusing / "sbatch").chmod(0o755)
    case = small_case(tmp_path)
    env = {**os.environ, "QW_MANIFESTS": str(case["manifests"]), "DASK_JOBQUEUE__SLURM__CORES": "2",
           "DASK_JOBQUEUE__SLURM__MEMORY": "2GB", "DASK_JOBQUEUE__SLURM__QUEUE": "gpu",
           "PATH": f"{refusing}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([QW, "datagen", "build", "--cluster", "slurm", "--workers", "3", "--dataset",
                             str(case["dataset_file"]), "--captures", str(case["captures"]), "--store",
                             str(tmp_path / "blocks.zarr")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "sbatch: error: invalid partition specified: gpu" in result.stderr  # sbatch's own reason is shown
    assert result.stderr.strip().splitlines()[-1] == (
        "qw: error: --cluster slurm: sbatch refused 2 of 2 job(s) (its message is logged above); check the "
        "jobqueue.slurm settings (queue, account, walltime …)")
    assert not submitted_jobs(fake_slurm)


def test_builtin_capture_with_cluster_slurm(tmp_path, fake_slurm, caplog):
    """Builtin shots rendered as tasks in SLURM jobs give the same pixels as rendered in this process."""
    options = ["--scene", "builtin_fence", "--shot", "low_cut", "--shot", "rise", "--frames", "0:2",
               "--resolution", "48x32", "--reference-spp", "4"]
    with dask.config.set({"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "2GB"}), caplog.at_level(logging.INFO):
        result = CliRunner().invoke(main, ["datagen", "capture", *options, "--out", str(tmp_path / "slurm"),
                                           "--cluster", "slurm", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert any(r.getMessage().startswith("Dask dashboard: http://") for r in caplog.records)
    assert_jobs_ran_and_ended(fake_slurm, 2)
    here = CliRunner().invoke(main, ["-q", "datagen", "capture", *options, "--out", str(tmp_path / "here")])
    assert here.exit_code == 0, here.output
    shots = find_captures(tmp_path / "slurm")
    assert [s.relative_to(tmp_path / "slurm") for s in shots] == [
        s.relative_to(tmp_path / "here") for s in find_captures(tmp_path / "here")] and len(shots) == 2
    for shot in shots:
        here = tmp_path / "here" / shot.relative_to(tmp_path / "slurm")
        for name in ("color", "reference", "motion", "depth"):
            for i in range(2):
                assert (read_frame(shot, name, i) == read_frame(here, name, i)).all()


def test_a_submission_that_never_returns_fails_the_build_after_the_deadline(monkeypatch):
    """A hanging sbatch (the SLURM controller down) never adds its job to the cluster's workers: the wait for the
    submissions ends at the deadline with one line instead of lasting forever."""
    from types import SimpleNamespace

    from qw.datagen import cluster as cluster_module

    monkeypatch.setattr(cluster_module, "SUBMIT_TIMEOUT_S", 0.2)
    hanging = SimpleNamespace(scale=lambda **kwargs: None, worker_spec={"job-0": {}}, workers={})
    with pytest.raises(QwError, match="sbatch did not return within 0.2 s"):
        cluster_module._scale_slurm(hanging, None)


def test_local_workers_leave_ctrl_c_to_the_client():
    """Ctrl-C reaches every process of the group: each local worker raised KeyboardInterrupt and printed its own
    traceback over the client's one-line message. The workers ignore SIGINT; the client closes them."""
    import signal

    from qw.datagen.cluster import dask_client

    with dask_client("local", workers=1) as client:
        handlers = client.run(lambda: signal.getsignal(signal.SIGINT))
    assert list(handlers.values()) == [signal.SIG_IGN]

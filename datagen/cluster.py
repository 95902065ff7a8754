"""Dask clusters for the data stages (`qw datagen build`, builtin `qw datagen capture`): local, SLURM or existing.

* ``local``: a `distributed.LocalCluster` of single-threaded worker processes on this machine.
* ``slurm``: a `dask_jobqueue.SLURMCluster` configured the dask-jobqueue way: queue, account, cores, memory,
  walltime, log directory, interface … come from the ``jobqueue.slurm`` section of the Dask configuration
  (``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__*`` environment variables). qw adds only what its
  tasks need: one single-threaded worker process per core unless ``processes`` is configured, its worker
  settings (below) exported in the job script, and a free dashboard port unless one is configured.
* an existing scheduler address (``tcp://host:8786``), e.g. a cluster started by hand.

Every kind logs the dashboard link as soon as the client is connected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, Iterator

from qw.datagen.errors import QwError

log = logging.getLogger(__name__)

CLUSTER_KINDS = ("local", "slurm")

# Worker settings for qw's tasks, on every kind of cluster qw starts. The nanny's MALLOC_TRIM_THRESHOLD_=65536 made
# the builder ~40% slower and the workers' statistical profiler (a stack sample every 10 ms) cost ~5% of the CPU
# (benchmarks/bench_datagen.py).
WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


def worker_config_exports(config: dict[str, Any] = WORKER_CONFIG) -> list[str]:
    """`WORKER_CONFIG` as shell exports that Dask reads on a compute node.

    Dask lower-cases the names of ``DASK_*`` variables, so each setting is exported as a one-entry mapping on its
    parent key (``DASK_A__B="{'KEY': value}"``, merged into the defaults): the case of ``KEY`` survives.
    """
    exports = []
    for dotted, value in config.items():
        parent, _, key = dotted.rpartition(".")
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in parent.split("."))
        exports.append(f'export {name}="{ {key: value}!r}"')
    return exports


def check_cluster(cluster: str = "local", scheduler: str | None = None, workers: int | None = None) -> None:
    """Refuse an unknown kind, a kind or a worker count combined with --scheduler, or a SLURM setup that cannot
    start, before any work is done (a build would otherwise create its store first)."""
    if cluster not in CLUSTER_KINDS:
        raise QwError(f"--cluster {cluster!r}: choose one of {', '.join(CLUSTER_KINDS)}")
    if scheduler and cluster != "local":
        raise QwError(f"--scheduler uses an existing cluster; it cannot be combined with --cluster {cluster}")
    if scheduler and workers:
        raise QwError(f"--scheduler uses an existing cluster, whose workers are its own; --workers {workers} sizes "
                      "a new one (drop one of them)")
    if cluster == "slurm":
        _slurm_config()
        from dask_jobqueue.slurm import SLURMJob

        if shutil.which(SLURMJob.submit_command) is None:  # dask-jobqueue would only log it and wait for workers
            raise QwError(f"--cluster slurm: SLURM's {SLURMJob.submit_command} is not on PATH; run qw where jobs can "
                          "be submitted (a SLURM login node)")


def _slurm_config() -> dict[str, Any]:
    """The ``jobqueue.slurm`` Dask configuration; dask-jobqueue must be installed and cores and memory set."""
    import dask

    try:
        import dask_jobqueue  # noqa: F401  (registers the jobqueue defaults with the Dask configuration)
    except ImportError:
        raise QwError("--cluster slurm needs dask-jobqueue: pip install 'qw[slurm]'") from None
    config = dask.config.get("jobqueue.slurm")
    if config.get("cores") is None or config.get("memory") is None:
        raise QwError("--cluster slurm: set the cores and memory of one SLURM job in the Dask configuration, e.g. "
                      "jobqueue: {slurm: {cores: 16, memory: 64GB, queue: cpu, walltime: '04:00:00'}} in "
                      "~/.config/dask/jobqueue.yaml, or DASK_JOBQUEUE__SLURM__CORES=16 "
                      "DASK_JOBQUEUE__SLURM__MEMORY=64GB")
    return config


def slurm_cluster() -> Any:
    """A `SLURMCluster` (no jobs submitted yet) from the ``jobqueue.slurm`` Dask configuration plus qw's settings.

    `cluster.job_script()` shows what each job will run. Raises `QwError` when dask-jobqueue is missing or the
    configuration lacks what SLURM needs (cores and memory per job) or holds a value it rejects.
    """
    from dask_jobqueue import SLURMCluster

    config = _slurm_config()
    options: dict[str, Any] = {
        "job_script_prologue": [*(config.get("job-script-prologue") or []), *worker_config_exports()],
        "scheduler_options": {"dashboard_address": ":0", **(config.get("scheduler-options") or {})},
    }
    if config.get("processes") is None:
        options["processes"] = int(config["cores"])  # single-threaded worker processes, as on the local cluster
    try:
        return SLURMCluster(**options)
    except ValueError as exc:  # dask-jobqueue's check of the configured values
        raise QwError(f"--cluster slurm: {str(exc).splitlines()[0]}") from None


def _local_cluster(workers: int | None, quiet: bool) -> Any:
    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_CONFIG):
        return LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                            dashboard_address=":0",  # any free port: never clash with another cluster
                            silence_logs=logging.CRITICAL if quiet else logging.DEBUG,
                            preload=[__name__])  # runs `dask_setup` in each worker process


def dask_setup(worker: Any) -> None:
    """Preload of the local workers: Ctrl-C reaches the whole process group, and the client closes the workers
    when it stops; a worker that took SIGINT itself printed a traceback, one per worker."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


SUBMIT_TIMEOUT_S = 300  # how long the job submissions may take before the build gives up on SLURM


def _scale_slurm(cluster: Any, workers: int | None) -> None:
    if workers:
        cluster.scale(n=workers)  # dask-jobqueue rounds up to whole jobs
    else:
        cluster.scale(jobs=1)
    # dask-jobqueue submits in the background and only logs a refused sbatch: the client would wait for workers
    # forever. A job joins `cluster.workers` once its submission was tried; one without a job id was refused.
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while not set(cluster.worker_spec) <= set(cluster.workers):
        if time.monotonic() > deadline:  # sbatch itself hangs (the SLURM controller does not answer)
            raise QwError(f"--cluster slurm: sbatch did not return within {SUBMIT_TIMEOUT_S} s; is the SLURM "
                          "controller up (`sinfo`)?")
        time.sleep(0.05)
    refused = [job for job in cluster.workers.values() if job.job_id is None]
    if refused:
        from distributed.core import Status

        for job in refused:  # never started: closing the cluster must not wait for them (it asserts they ended)
            job.status = Status.failed
        raise QwError(f"--cluster slurm: sbatch refused {len(refused)} of {len(cluster.workers)} job(s) (its message "
                      "is logged above); check the jobqueue.slurm settings (queue, account, walltime …)")
    log.info("SLURM: jobs for %s submitted; `squeue --me` lists them",
             f"{workers} worker processes" if workers else "one job's worker processes")


@contextlib.contextmanager
def dask_client(cluster: str = "local", workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """A `distributed.Client` on a new cluster of `cluster` kind with `workers` worker processes (local: one per
    CPU core; slurm: one job's worth), or on the existing cluster at `scheduler`. Closes what it started."""
    from distributed import Client

    check_cluster(cluster, scheduler, workers)
    # Cluster chatter is not the user's business unless they asked for debug output (-vv); task errors reach the
    # client as exceptions and are reported there, once.
    quiet = not log.isEnabledFor(logging.DEBUG)
    dask_logs = [logging.getLogger(name) for name in ("distributed", "distributed.client")]  # the client's level
    levels = [d.level for d in dask_logs]  # is set on its own by distributed's configuration
    if quiet:
        for dask_log in dask_logs:
            dask_log.setLevel(logging.CRITICAL)
    try:
        with contextlib.ExitStack() as stack:
            if scheduler:
                try:
                    client = stack.enter_context(Client(scheduler))
                except OSError as exc:  # connection refused or timed out (distributed.comm.timeouts.connect)
                    raise QwError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); what is written is kept "
                                  "and the same command resumes") from None
            else:
                started = stack.enter_context(_local_cluster(workers, quiet) if cluster == "local" else slurm_cluster())
                if cluster == "slurm":
                    _scale_slurm(started, workers)
                client = stack.enter_context(Client(started))
            log.info("Dask dashboard: %s", client.dashboard_link)
            yield client
    finally:
        for dask_log, level in zip(dask_logs, levels):
            dask_log.setLevel(level)


@contextlib.contextmanager
def cluster_failures(resume: str) -> Iterator[None]:
    """Turn a lost Dask scheduler or worker into one line that says how to resume (`resume`). A lost scheduler
    cancels the futures or closes the comms (CommClosedError is an OSError); a worker that keeps dying is a
    KilledWorker. Task errors (QwError and the like) pass unchanged."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        yield
    except (KilledWorker, FutureCancelledError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise QwError(f"the Dask cluster failed ({reason}); {resume}") from None

"""Host side of an Unreal capture: write a job spec per shot, run the editor on it, normalize what it wrote.

For each shot of a ``ue4`` scene manifest::

    <out>/<scene>/<shot>/            the capture (contract 1), written last through datagen.capture_format
    <out>/.unreal/<scene>/<shot>/    working area: job.json, editor-<attempt>.log, raw/ (Unreal's own files)

The editor runs ``ue_capture/editor_script.py`` inside its Python (see that file) from an argument list, never a
shell string, with a timeout; its log streams into ``editor-<attempt>.log``. A crashed, hung or incomplete run is
retried; a shot whose capture is complete is skipped, and a shot whose raw output is complete is only normalized
again, so an interrupted scene resumes where it stopped. With a Dask scheduler each shot is one task that needs
the worker resource ``ue=1`` (render nodes run ``dask worker ADDRESS --resources ue=1``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datagen.capture_format import atomic_path, is_complete, shot_dir
from datagen.errors import CaptureError, QwError
from datagen.manifests import FILL_IN, SceneManifest, Shot
from ue_capture.importers import normalize_unreal_shot, raw_problems

log = logging.getLogger(__name__)

EDITOR_ENV = "QW_UE4_EDITOR"
JOB_ENV = "QW_UE_JOB"  # the editor script reads its job spec path from here
JOB_FORMAT = "qw-ue-job/1"
EDITOR_SCRIPT = Path(__file__).resolve().parent / "editor_script.py"
STATUS_FILE = "status.json"  # written by the editor script when it finishes, ok or not
DEFAULT_TIMEOUT_S = 4 * 3600.0
DEFAULT_RETRIES = 2
WORK_DIR = ".unreal"

# Console variables that hold in both passes: no motion blur, no history-dependent or noisy effects, no eye
# adaptation (so both passes share one exposure), native resolution. Sources: notes/unreal.md §3 ([L] for the
# effect list).
COMMON_CVARS: dict[str, Any] = {
    "r.MotionBlurQuality": 0,
    "r.DefaultFeature.MotionBlur": 0,
    "r.DepthOfFieldQuality": 0,
    "r.SceneColorFringeQuality": 0,
    "r.Tonemapper.GrainQuantization": 0,
    "r.Tonemapper.Quality": 0,
    "r.SSR.Temporal": 0,
    "r.VolumetricFog.TemporalReprojection": 0,
    "r.ScreenPercentage": 100,
    "r.DefaultFeature.AutoExposure": 0,
}
# Force velocity for static geometry too (notes §2.3/§2.4). r.BasePassOutputsVelocity is read-only and must sit in
# the project's DefaultEngine.ini on UE4 (README); r.Velocity.ForceOutput replaces both on UE5.
VELOCITY_CVARS_UE4: dict[str, Any] = {"r.BasePassForceOutputsVelocity": 1}
VELOCITY_CVARS_UE5: dict[str, Any] = {"r.Velocity.ForceOutput": 1}
# Aliased pass: anti-aliasing off. UE4 and UE5 name the cvar differently (notes §3).
NO_AA_CVARS_UE4: dict[str, Any] = {"r.DefaultFeature.AntiAliasing": 0, "r.PostProcessAAQuality": 0}
NO_AA_CVARS_UE5: dict[str, Any] = {"r.AntiAliasingMethod": 0}
# bufvis pass: TAA on for its jitter, but its output is the current (jittered) sample only, and buffer
# visualization dumps the pre-tonemap HDR colour as EXR. [U] r.TemporalAACurrentFrameWeight=1 yielding the raw
# jittered frame is unverified on a real engine.
BUFVIS_CVARS_UE4: dict[str, Any] = {"r.DefaultFeature.AntiAliasing": 2, "r.TemporalAACurrentFrameWeight": 1,
                                    "r.TemporalAA.Upsampling": 0,
                                    "r.BufferVisualizationDumpFrames": 1, "r.BufferVisualizationDumpFramesAsHDR": 1}
BUFVIS_CVARS_UE5: dict[str, Any] = {**{k: v for k, v in BUFVIS_CVARS_UE4.items()
                                       if k != "r.DefaultFeature.AntiAliasing"}, "r.AntiAliasingMethod": 2}


def engine_major(engine_version: str) -> int:
    """4 or 5 from '4.27', '5.3' …; errors name the bad value."""
    major = engine_version.strip().split(".")[0]
    if major not in ("4", "5"):
        raise QwError(f"unsupported Unreal engine_version {engine_version!r}; expected 4.26, 4.27 or 5.x")
    return int(major)


def pass_cvars(engine_version: str, user_cvars: dict[str, Any], mode: str) -> dict[str, dict[str, Any]]:
    """Console variables of each pass ('aliased', 'reference'); user values from the manifest win."""
    ue5 = engine_major(engine_version) == 5
    common = {**COMMON_CVARS, **(VELOCITY_CVARS_UE5 if ue5 else VELOCITY_CVARS_UE4)}
    aliased = {**common, **((BUFVIS_CVARS_UE5 if ue5 else BUFVIS_CVARS_UE4) if mode == "bufvis"
                            else (NO_AA_CVARS_UE5 if ue5 else NO_AA_CVARS_UE4))}
    reference = {**common, **(NO_AA_CVARS_UE5 if ue5 else NO_AA_CVARS_UE4)}
    return {"aliased": {**aliased, **user_cvars}, "reference": {**reference, **user_cvars}}


def build_job_spec(manifest: SceneManifest, shot: Shot, raw_dir: Path) -> dict[str, Any]:
    """The JSON job the editor script executes for one shot (every setting that affects pixels is here)."""
    ue, cap = manifest.unreal, manifest.capture
    assert ue is not None
    mode = cap.mode if cap.mode in ("mrq", "bufvis") else "mrq"
    width, height = cap.resolution
    return {
        "format": JOB_FORMAT,
        "scene": manifest.name,
        "shot": shot.name,
        "mode": mode,
        "engine_version": ue.engine_version,
        "map": ue.map,
        "level_sequence": ue.level_sequence,
        "start_frame": shot.start,
        "end_frame": shot.end,
        "fps": cap.fps,
        "width": width,
        "height": height,
        "reference_samples": cap.reference_samples,
        "warm_up_frames": ue.warm_up_frames,
        "executor": ue.executor,
        "cvars": pass_cvars(ue.engine_version, dict(ue.cvars), mode),
        "output_dir": str(raw_dir.resolve()),
        "status_file": str((raw_dir / STATUS_FILE).resolve()),
    }


# ----------------------------------------------------------------------------------------------- locating


def resolve_editor(editor: str | os.PathLike | None) -> Path:
    """The editor executable from ``--editor`` or $QW_UE4_EDITOR; one clear QwError when neither is usable."""
    value = str(editor) if editor else os.environ.get(EDITOR_ENV, "")
    if not value:
        raise QwError(f"no Unreal editor configured: pass --editor PATH or set {EDITOR_ENV} to the editor "
                      "executable (UE4Editor-Cmd / UnrealEditor-Cmd); use --dry-run to see the command without it")
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise QwError(f"{path}: Unreal editor not found or not executable (from "
                      f"{'--editor' if editor else EDITOR_ENV})")
    return path


def resolve_project(manifest: SceneManifest, project: str | os.PathLike | None, *, must_exist: bool) -> Path:
    """The .uproject from ``--project`` or the manifest (environment variables expanded)."""
    assert manifest.unreal is not None
    value = str(project) if project else manifest.unreal.project
    expanded = os.path.expandvars(os.path.expanduser(value))
    if FILL_IN in expanded or "$" in expanded:
        raise QwError(f"scene {manifest.name!r}: project is {value!r}; pass --project PATH.uproject or set the "
                      "environment variable it names")
    path = Path(expanded)
    if must_exist and not path.is_file():
        raise QwError(f"{path}: Unreal project file not found (scene {manifest.name!r})")
    return path


def check_sequence_filled(manifest: SceneManifest) -> None:
    assert manifest.unreal is not None
    missing = [f for f in manifest.unreal.unfilled() if f != "project"]
    if missing:
        raise QwError(f"scene {manifest.name!r}: manifest field(s) unreal.{', unreal.'.join(missing)} still "
                      f"{FILL_IN}; set them to the /Game/... assets of your project")


def editor_argv(editor: Path, project: Path, log_path: Path | None = None) -> list[str]:
    """The editor command line: open the project and run the in-editor capture script (job from $QW_UE_JOB)."""
    argv = [str(editor), str(project), f"-ExecutePythonScript={EDITOR_SCRIPT}",
            "-unattended", "-nosplash", "-nosound", "-NoTextureStreaming", "-RenderOffScreen",
            "-stdout", "-FullStdOutLogOutput"]
    if log_path is not None:
        argv.append(f"-ABSLOG={log_path}")
    return argv


# ----------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ShotRun:
    """Everything one shot's capture needs; plain data so it can travel to a Dask worker."""

    manifest: SceneManifest
    shot: Shot
    out: Path
    editor: Path | None
    project: Path
    timeout: float
    retries: int

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR / self.manifest.name / self.shot.name

    @property
    def raw(self) -> Path:
        return self.work / "raw"

    @property
    def target(self) -> Path:
        return shot_dir(self.out, self.manifest.name, self.shot.name)


def run_editor(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int:
    """Run the editor, its stdout+stderr streaming into `log_path`; kill its whole process group on timeout.

    Raises subprocess.TimeoutExpired after killing it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=os.name == "posix")
        try:
            return proc.wait(timeout=timeout)
        finally:  # timed out, or the launcher itself was interrupted: no editor is left running
            if proc.poll() is None:
                kill_process_tree(proc)
                proc.wait()


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill the editor and whatever it started (shader compilers, a new-process render)."""
    if os.name == "posix":
        os.killpg(proc.pid, signal.SIGKILL)  # its own session, so its whole process group
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)


def read_status(raw: Path) -> dict[str, Any] | None:
    path = raw / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _attempt(run: ShotRun, spec: dict[str, Any], attempt: int) -> str | None:
    """One editor run; None when the raw output is complete, else why it is not."""
    if run.raw.exists():
        shutil.rmtree(run.raw)  # never mix files of a crashed attempt with a new one
    run.raw.mkdir(parents=True)
    log_path = run.work / f"editor-{attempt}.log"
    editor = run.editor or resolve_editor(None)  # on a farm worker: its own $QW_UE4_EDITOR
    env = {**os.environ, JOB_ENV: str((run.work / "job.json").resolve())}
    try:
        code = run_editor(editor_argv(editor, run.project), env, log_path, run.timeout)
    except subprocess.TimeoutExpired:
        return f"editor timed out after {run.timeout:g} s (log: {log_path})"
    status = read_status(run.raw)
    if code != 0:
        detail = f": {status['message']}" if status and status.get("message") else ""
        return f"editor exited with status {code}{detail} (log: {log_path})"
    if not status or not status.get("ok"):
        why = status.get("message") if status else f"no {STATUS_FILE} written"
        return f"editor finished but reported failure: {why} (log: {log_path})"
    missing = raw_problems(spec, run.raw)
    if missing:
        (run.raw / STATUS_FILE).unlink()  # incomplete output must not count as done on resume
        return f"editor reported success but its output is incomplete: {missing} (log: {log_path})"
    return None


def capture_shot(run: ShotRun) -> Path:
    """Capture one shot (resumable): skip if complete, else run the editor with retries, then normalize."""
    if is_complete(run.target):
        log.info("%s: complete, skipped", run.target)
        return run.target
    spec = build_job_spec(run.manifest, run.shot, run.raw)
    status = read_status(run.raw)
    if not (status and status.get("ok")):
        run.work.mkdir(parents=True, exist_ok=True)
        with atomic_path(run.work / "job.json") as tmp:
            tmp.write_text(json.dumps(spec, indent=1) + "\n")
        errors = []
        for attempt in range(run.retries + 1):
            why = _attempt(run, spec, attempt)
            if why is None:
                break
            errors.append(why)
            log.warning("%s/%s attempt %d failed: %s", run.manifest.name, run.shot.name, attempt + 1, why)
        else:
            raise CaptureError(f"{run.target}: Unreal capture failed after {run.retries + 1} attempt(s); "
                               f"last: {errors[-1]}")
    return normalize_unreal_shot(spec, run.raw, run.target, run.manifest)


def _select_shots(manifest: SceneManifest, shots: list[str] | None) -> list[Shot]:
    return [manifest.shot(name) for name in shots] if shots else list(manifest.shots)


def dry_run_text(manifest: SceneManifest, out: Path, shots: list[Shot], editor: Path | None,
                 project: Path) -> str:
    """The exact argv and job spec of every shot, as printed by ``--dry-run``."""
    lines = []
    for shot in shots:
        run = ShotRun(manifest, shot, out, editor, project, 0, 0)
        argv = editor_argv(editor or Path(f"${EDITOR_ENV}"), project)
        lines += [f"# {manifest.name}/{shot.name}", f"{JOB_ENV}={run.work / 'job.json'}",
                  "argv: " + json.dumps(argv), "job: " + json.dumps(build_job_spec(manifest, shot, run.raw),
                                                                     indent=1)]
    return "\n".join(lines)


def _run_on_scheduler(runs: list[ShotRun], scheduler: str, progress: bool) -> list[Path]:
    from distributed import Client, as_completed

    with Client(scheduler) as client:
        futures = [client.submit(capture_shot, run, resources={"ue": 1}, pure=False,
                                 key=f"ue-capture-{run.manifest.name}-{run.shot.name}") for run in runs]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="shots", unit="shot", disable=not progress):
            pass
        return [f.result() for f in futures]


def capture_scene(manifest: SceneManifest, out: Path, *, shots: list[str] | None = None, dry_run: bool = False,
                  editor: str | os.PathLike | None = None, project: str | os.PathLike | None = None,
                  scheduler: str | None = None, timeout: float | None = None, retries: int = DEFAULT_RETRIES,
                  progress: bool = True) -> list[Path]:
    """Capture every (or the named) shot of a ``ue4`` scene into ``out/<scene>/<shot>/``; returns the shot dirs.

    ``dry_run`` prints the editor argv and job spec of each shot and returns []. With ``scheduler`` (a Dask
    address) each shot is a task needing the worker resource ``ue=1``.
    """
    if manifest.backend != "ue4" or manifest.unreal is None:
        raise QwError(f"scene {manifest.name!r} is not an Unreal scene (backend {manifest.backend!r})")
    out = Path(out)
    selected = _select_shots(manifest, shots)
    engine_major(manifest.unreal.engine_version)
    if dry_run:
        configured = editor or os.environ.get(EDITOR_ENV)
        proj = Path(os.path.expandvars(str(project or manifest.unreal.project)))
        print(dry_run_text(manifest, out, selected, Path(configured) if configured else None, proj))
        return []
    exe = resolve_editor(editor) if scheduler is None or editor or os.environ.get(EDITOR_ENV) else None
    check_sequence_filled(manifest)
    proj = resolve_project(manifest, project, must_exist=scheduler is None)
    runs = [ShotRun(manifest, s, out, exe, proj, float(timeout or DEFAULT_TIMEOUT_S), retries) for s in selected]
    if scheduler:
        return _run_on_scheduler(runs, scheduler, progress)
    return [capture_shot(run) for run in tqdm(runs, desc="shots", unit="shot", disable=not progress)]


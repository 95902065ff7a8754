"""Host side of an Unreal capture: two editor runs per shot, then normalize what Movie Render Queue wrote.

For each shot of a ``ue4`` scene manifest::

    <out>/<scene>/<shot>/            the capture (contract 1), written last through qw.datagen.capture_format
    <out>/.unreal/<scene>/<shot>/    working area: job.json, prepare.json, editor logs, raw/
    <Project>/Saved/MovieRenderPipeline/QW_<scene>_<shot>.utxt    the saved queue (where the engine can load it)

1. **prepare**: ``<Editor-Cmd> <uproject> -ExecutePythonScript=ue_capture/editor_script.py`` with the job spec in
   $QW_UE_JOB. The script runs synchronously (materials, the Level Sequence, a saved Movie Render Queue manifest) and
   the editor quits on its next tick, as ``-ExecutePythonScript`` always does on UE 4.27.
2. **render**: ``<Editor-Cmd> <uproject> MoviePipelineEntryMap -game
   -MoviePipelineConfig=MovieRenderPipeline/QW_<scene>_<shot>.utxt …``, Movie Render Queue's own command-line route
   as its new-process executor uses it: the queue lies under the project's Saved folder and is passed relative to
   it, because the render loads it as a text package and only files that convert to a package name load. It
   exits 0 when the queue is done, also after errors, and may crash on shutdown after a complete render, so
   success is judged from the files, never from the exit status.

Both run from an argument list, never a shell string, with a timeout; their logs stream into
``editor-<stage>-<attempt>.log``. A crashed, hung or incomplete run is retried; a shot whose capture is complete is
skipped, and a shot whose raw output is complete is only normalized again, so an interrupted scene resumes where it
stopped; complete raw output is never deleted unless it was rendered with other settings (job.json says), and a
complete shot with other settings is refused. A project without the Python, Editor Scripting and Movie Render
Queue plugins is refused before any editor starts (without the first two the editor ignores -ExecutePythonScript
and never quits). With a Dask scheduler each shot is one task that needs the worker resource ``ue=1`` (render
nodes run ``dask worker ADDRESS --resources ue=1``). See docs/unreal.md for the engine facts behind each step.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import filelock
import numpy as np
from tqdm import tqdm

from qw.datagen.capture_format import PASSES, atomic_path, is_complete, load_meta, shot_dir, shot_lock
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import FILL_IN, PROJECT_DEFAULT_MAP, CameraPath, SceneManifest, Shot
from qw.ue_capture.convert import FILTER_SIZE_CVAR, engine_version_tuple
from qw.ue_capture.importers import normalize_unreal_shot, pixel_settings, raw_problems

log = logging.getLogger(__name__)

EDITOR_ENV = "QW_UE4_EDITOR"
JOB_ENV = "QW_UE_JOB"  # the editor script reads its job spec path from here
JOB_FORMAT = "qw-ue-job/3"  # /3: warm_up_frames also ticks (and renders) the world before each shot
EDITOR_SCRIPT = Path(__file__).resolve().parent / "editor_script.py"
ENGINE_SCRIPT_NAME = "qw_editor_script.py"  # its copy in <Project>/Content/Python when its path cannot be passed
PREPARE_STATUS = "prepare.json"  # written by the editor script when it finishes, ok or not
QUEUE_FOLDER = "MovieRenderPipeline"  # under <Project>/Saved, where MRQ's own executor writes its queue
ENTRY_MAP = "MoviePipelineEntryMap"  # MRQ's empty boot map: the job's map is loaded once, by the pipeline
PACKAGE_NAME_PART = re.compile(r"^[A-Za-z0-9_-]+$")  # no '.', ':' or '\\': the queue file must map to a package name
# -ExecutePythonScript, EditorAssetLibrary, Movie Render Queue: all three are "EnabledByDefault": false in their
# .uplugin (4.27 and 5.5), so a project must list them.
REQUIRED_PLUGINS = ("PythonScriptPlugin", "EditorScriptingUtilities", "MovieRenderPipeline")
RENDER_DONE = "render-done.json"  # written by the launcher once the render's raw output is complete
DEFAULT_TIMEOUT_S = 4 * 3600.0
DEFAULT_RETRIES = 2
WORK_DIR = ".unreal"
EXPOSURE_CVAR = "r.EyeAdaptationQuality"
QW_MATERIALS = ("/Game/QW/M_QW_Velocity.M_QW_Velocity", "/Game/QW/M_QW_Depth.M_QW_Depth")
SEQUENCE_FOLDER = "/Game/QW/Sequences"

# Console variables that hold in both passes: no motion blur, no history-dependent or noisy effects, eye adaptation
# off (r.DefaultFeature.AutoExposure only sets a default that a map's post-process volume overrides; quality 0 fixes
# the exposure of both jobs whatever the map says), native resolution, anti-aliasing off (MRQ jitters and accumulates
# the samples itself, and only when the AA method is not TAA), a known sample-distribution width.
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
    EXPOSURE_CVAR: 0,
    FILTER_SIZE_CVAR: 1.0,
}
# Velocity for static geometry too. UE4 also needs the read-only r.BasePassOutputsVelocity=1 in the project's
# DefaultEngine.ini (checked by the editor script); UE5's r.Velocity.ForceOutput replaces both.
VELOCITY_CVARS = {4: {"r.BasePassForceOutputsVelocity": 1}, 5: {"r.Velocity.ForceOutput": 1}}
REQUIRED_PROJECT_CVARS = {4: {"r.BasePassOutputsVelocity": 1}, 5: {}}
NO_AA_CVARS = {4: {"r.DefaultFeature.AntiAliasing": 0, "r.PostProcessAAQuality": 0}, 5: {"r.AntiAliasingMethod": 0}}


def engine_major(engine_version: str) -> int:
    """4 or 5 for a supported engine version; the API and sampling code qw follows were read for these only."""
    version = engine_version_tuple(engine_version)
    if version != (4, 27) and version < (5, 5):
        raise QwError(f"unsupported Unreal engine_version {engine_version!r}: qw supports 4.27 and 5.5 or later, "
                      "the versions whose Python API and Movie Render Queue sources it was checked against (5.0-5.4 "
                      "are unverified: no generated Python API of them was found to check the names against)")
    return version[0]


def pass_cvars(engine_version: str, user_cvars: dict[str, Any]) -> dict[str, Any]:
    """Console variables of both passes; user values from the manifest win."""
    major = engine_major(engine_version)
    return {**COMMON_CVARS, **VELOCITY_CVARS[major], **NO_AA_CVARS[major], **user_cvars}


def object_path(path: str) -> str:
    """'/Game/Maps/X' → '/Game/Maps/X.X' (asset paths as Movie Render Queue's soft references want them)."""
    if not path.startswith("/") or "." in path.rsplit("/", 1)[-1]:
        return path  # already an object path, or 'project-default' shown unresolved by --dry-run
    return f"{path}.{path.rsplit('/', 1)[-1]}"


def authored_sequence_path(manifest: SceneManifest) -> str:
    return object_path(f"{SEQUENCE_FOLDER}/QW_{manifest.name}")


def jitter_samples(manifest: SceneManifest) -> int:
    """Spatial samples of the aliased pass: its frame i is sample i mod N, so N is the jitter cycle (1: none)."""
    return 1 if manifest.capture.jitter == "none" else manifest.capture.jitter_cycle


def queue_config(scene: str, shot: str) -> str:
    """The ``-MoviePipelineConfig`` value of a shot: a .utxt path relative to the project's Saved folder.

    The render loads it with LoadPackage, which needs a file that converts to a long package name: under a mounted
    folder (Saved is one) and without '.', ':' or '\\' once the extension is dropped (docs/unreal.md)."""
    for what, name in (("scene", scene), ("shot", shot)):
        if not PACKAGE_NAME_PART.match(name):
            raise QwError(f"{what} name {name!r}: Unreal can only load a queue whose file name is letters, digits, "
                          "'_' and '-'; rename it")
    return f"{QUEUE_FOLDER}/QW_{scene}_{shot}.utxt"


def queue_file(project: Path, config: str) -> Path:
    """Where the editor script saves the queue that ``-MoviePipelineConfig=<config>`` names."""
    return project.parent / "Saved" / config


def prepare_lock(project: Path) -> Path:
    """The lock that one project's prepare stages take in turn. The editor saves every queue to one fixed file,
    Saved/MovieRenderPipeline/QueueManifest.utxt (SaveQueueToManifestFile, docs/unreal.md), before the script
    copies it to the shot's own queue file: two prepares of one project at once (two shots on one render node)
    could copy each other's queue and render the other shot. They also save the same project's assets."""
    return project.parent / "Saved" / QUEUE_FOLDER / ".qw-prepare.lock"


def build_job_spec(manifest: SceneManifest, shot: Shot, work: Path, map_path: str,
                   project: Path) -> dict[str, Any]:
    """The JSON job the editor script executes for one shot (every setting that affects pixels is here)."""
    ue, cap = manifest.unreal, manifest.capture
    assert ue is not None
    raw = (work / "raw").resolve()
    width, height = cap.resolution
    cvars = pass_cvars(ue.engine_version, dict(ue.cvars))
    samples = jitter_samples(manifest)
    return {
        "format": JOB_FORMAT,
        "scene": manifest.name,
        "shot": shot.name,
        "engine_version": ue.engine_version,
        "required_cvars": REQUIRED_PROJECT_CVARS[engine_major(ue.engine_version)],
        "map": object_path(map_path),
        "level_sequence": object_path(ue.level_sequence) if ue.level_sequence else authored_sequence_path(manifest),
        "camera": baked_camera(ue.camera) if ue.camera else None,
        "start_frame": shot.start,
        "end_frame": shot.end,
        "fps": cap.fps,
        "frame_rate": frame_rate(cap.fps),
        "width": width,
        "height": height,
        "warm_up_frames": ue.warm_up_frames,
        "passes": {
            "aliased": {"output_dir": str(raw / "aliased"), "spatial_samples": samples,
                        "write_all_samples": samples > 1, "materials": list(QW_MATERIALS), "cvars": cvars},
            "reference": {"output_dir": str(raw / "reference"), "spatial_samples": cap.reference_samples,
                          "write_all_samples": cap.reference_samples > 1, "materials": [], "cvars": cvars},
        },
        "queue_config": queue_config(manifest.name, shot.name),
        "queue_manifest": str(queue_file(project, queue_config(manifest.name, shot.name))),
        "status_file": str((work / PREPARE_STATUS).resolve()),
    }


def baked_camera(camera: CameraPath) -> dict[str, Any]:
    """The manifest's camera path with a key at every frame, linear between the manifest's keys (as the builtin
    renderer's paths). MRQ renders whole frames (one temporal sample), where a keyed channel plays its key exactly,
    so qw knows every frame's camera without evaluating the sequence in the engine."""
    keys = camera.keys
    frames = np.arange(keys[0].frame, keys[-1].frame + 1)
    at = [k.frame for k in keys]
    position = np.stack([np.interp(frames, at, [k.position[i] for k in keys]) for i in range(3)], axis=-1)
    rotation = np.stack([np.interp(frames, at, [k.rotation[i] for k in keys]) for i in range(3)], axis=-1)
    return {**camera.model_dump(mode="json"),
            "keys": [{"frame": int(f), "position": p.tolist(), "rotation": r.tolist()}
                     for f, p, r in zip(frames, position, rotation)]}


NTSC_TOLERANCE = 0.005  # fps written to 2-3 decimals: 23.976, 29.97, 59.94


def frame_rate(fps: float) -> list[int]:
    """fps as Unreal's FrameRate [numerator, denominator]: 30 → [30, 1], 23.976 → [24000, 1001] (the NTSC rates
    as the engine's presets and sequences hold them), 12.5 → [25, 2]."""
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
    if fps != round(fps) and abs(float(ntsc) - fps) < NTSC_TOLERANCE:
        return [ntsc.numerator, ntsc.denominator]
    exact = Fraction(fps).limit_denominator(1001)
    return [exact.numerator, exact.denominator]


# ----------------------------------------------------------------------------------------------- locating


def resolve_editor(editor: str | os.PathLike | None) -> Path:
    """The editor executable from ``--editor`` or $QW_UE4_EDITOR; one clear QwError when neither is usable."""
    value = str(editor) if editor else os.environ.get(EDITOR_ENV, "")
    if not value:
        raise QwError(f"no Unreal editor configured: pass --editor PATH or set {EDITOR_ENV} to the editor "
                      "executable (UE4Editor-Cmd / UnrealEditor-Cmd); use --dry-run to see the commands without it")
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
    # Absolute: the editor switches into its own Binaries folder before it opens the project, and the editor script
    # writes the queue under the project's folder, so a path relative to this directory would miss both.
    path = Path(os.path.abspath(expanded))
    if must_exist and not path.is_file():
        raise QwError(f"{path}: Unreal project file not found (scene {manifest.name!r})")
    return path


def resolve_map(manifest: SceneManifest, project: Path) -> str:
    """The manifest's map, or with 'project-default' the GameDefaultMap of the project's DefaultEngine.ini."""
    assert manifest.unreal is not None
    if manifest.unreal.map != PROJECT_DEFAULT_MAP:
        return manifest.unreal.map
    ini = project.parent / "Config" / "DefaultEngine.ini"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(ini.read_text(errors="replace"))
        value = parser.get("/Script/EngineSettings.GameMapsSettings", "GameDefaultMap", fallback="")
    except (OSError, configparser.Error) as exc:
        raise QwError(f"{ini}: cannot read the project's default map ({exc}); set unreal.map in the scene "
                      "manifest") from None
    if not value.startswith("/Game/"):
        raise QwError(f"{ini}: no GameDefaultMap=/Game/... under [/Script/EngineSettings.GameMapsSettings]; set "
                      f"unreal.map in scene {manifest.name!r}")
    return value.strip()


def check_sequence_filled(manifest: SceneManifest) -> None:
    assert manifest.unreal is not None
    missing = [f for f in manifest.unreal.unfilled() if f != "project"]
    if missing:
        raise QwError(f"scene {manifest.name!r}: manifest field(s) unreal.{', unreal.'.join(missing)} still "
                      f"{FILL_IN}; set them to the /Game/... assets of your project")


def engine_reads_intact(script: str) -> bool:
    """Whether the editor runs `script` given as ``-ExecutePythonScript=<script>``. UE 4.27 runs the value up to its
    first whitespace as the file; UE 5.5 reads a value with a space (which it quotes itself) with C escapes, so
    ``\\ue_capture`` in a Windows path becomes a control character, and ends the file at the first ".py"; 4.27 also
    ends an unquoted value at ',' or ')' (docs/unreal.md, "Engine behaviours"). No quoting by qw helps: the engine
    re-quotes each argument itself."""
    return not re.search(r'[\s",)]', script) and script.find(".py") == len(script) - len(".py")


def editor_script_argument(project: Path, *, install: bool) -> str:
    """The ``-ExecutePythonScript`` value: the editor script's path when the editor reads it intact, else the bare
    name of a copy in the project's Content/Python folder, which both engines put on Python's path and search for a
    bare name. `install` writes that copy (a dry run does not)."""
    if engine_reads_intact(str(EDITOR_SCRIPT)):
        return str(EDITOR_SCRIPT)
    if install:
        with atomic_path(project.parent / "Content" / "Python" / ENGINE_SCRIPT_NAME) as tmp:
            shutil.copyfile(EDITOR_SCRIPT, tmp)
    return ENGINE_SCRIPT_NAME


def prepare_argv(editor: Path, project: Path, script: str) -> list[str]:
    """Stage 1: open the project and run the synchronous editor script (job from $QW_UE_JOB); it quits after.
    `script` is `editor_script_argument`'s value; arguments go unquoted (the engine quotes those with spaces)."""
    return [str(editor), str(project), f"-ExecutePythonScript={script}", "-unattended", "-nosplash",
            "-nosound", "-RenderOffScreen", "-stdout", "-FullStdOutLogOutput"]


def render_argv(editor: Path, project: Path, job: dict[str, Any]) -> list[str]:
    """Stage 2: Movie Render Queue's command-line render of the saved queue in game mode; it exits when done."""
    return [str(editor), str(project), ENTRY_MAP, "-game", f"-MoviePipelineConfig={job['queue_config']}",
            "-windowed", f"-resx={job['width']}",
            f"-resy={job['height']}", "-RenderOffScreen", "-unattended", "-nosplash", "-nosound", "-nohmd",
            "-NoTextureStreaming", "-log", "-stdout", "-FullStdOutLogOutput"]


# ----------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ShotRun:
    """Everything one shot's capture needs; plain data so it can travel to a Dask worker."""

    manifest: SceneManifest
    shot: Shot
    out: Path
    editor: Path | None
    project: Path
    map_path: str
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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _run_stage(run: ShotRun, stage: str, argv: list[str], attempt: int) -> tuple[int | None, Path]:
    """One editor run of `stage`; (exit status or None on timeout, log path)."""
    log_path = run.work / f"editor-{stage}-{attempt}.log"
    env = {**os.environ, JOB_ENV: str((run.work / "job.json").resolve())}
    try:
        return run_editor(argv, env, log_path, run.timeout), log_path
    except subprocess.TimeoutExpired:
        return None, log_path


def _stage_failure(stage: str, code: int | None, log_path: Path, timeout: float) -> str:
    if code is None:
        return f"{stage}: editor timed out after {timeout:g} s (log: {log_path})"
    return f"{stage}: editor exited with status {code} (log: {log_path})"


class PrepareRefused(QwError):
    """The editor script found a problem the user has to fix (retrying cannot help)."""


def _prepare(run: ShotRun, spec: dict[str, Any], editor: Path, attempt: int) -> tuple[dict | None, str | None]:
    """Stage 1; (the script's status, None) when it saved the queue, else (None, why not). Judged by the files."""
    queue = Path(spec["queue_manifest"])
    for stale in (run.work / PREPARE_STATUS, queue):
        stale.unlink(missing_ok=True)
    with filelock.FileLock(prepare_lock(run.project)):
        argv = prepare_argv(editor, run.project, editor_script_argument(run.project, install=True))
        code, log_path = _run_stage(run, "prepare", argv, attempt)
    status = read_json(run.work / PREPARE_STATUS)
    if status and not status.get("ok"):  # the script's own diagnosis is the most useful message
        if status.get("user_error"):
            raise PrepareRefused(f"{run.target}: Unreal prepare refused: {status['message']} (log: {log_path})")
        return None, f"prepare: {status.get('message')} (log: {log_path})"
    if status and queue.is_file():
        if code != 0:
            log.warning("%s: prepare finished its work but the editor exited with %s (log: %s)", run.target, code,
                        log_path)
        return status, None
    if code != 0:
        return None, _stage_failure("prepare", code, log_path, run.timeout)
    return None, (f"prepare: the editor quit without the script's {PREPARE_STATUS} and {queue} "
                  f"(log: {log_path})")


def _render(run: ShotRun, spec: dict[str, Any], editor: Path, attempt: int) -> str | None:
    """Stage 2; None when the raw output is complete, whatever the exit status (MRQ exits 0 after errors, and an
    engine can crash on shutdown after writing everything), else why it is not."""
    if run.raw.exists() and raw_problems(spec, run.raw):
        shutil.rmtree(run.raw)  # never mix files of a failed attempt with a new one; complete output is kept
    run.raw.mkdir(parents=True, exist_ok=True)
    code, log_path = _run_stage(run, "render", render_argv(editor, run.project, spec), attempt)
    missing = raw_problems(spec, run.raw)
    if missing is None:
        if code != 0:
            log.warning("%s: render output complete although the editor %s (log: %s)", run.target,
                        "timed out" if code is None else f"exited with {code}", log_path)
        return None
    if code != 0:
        return _stage_failure("render", code, log_path, run.timeout)
    return f"render: the output is incomplete: {missing} (log: {log_path})"


def _attempt(run: ShotRun, spec: dict[str, Any], attempt: int) -> str | None:
    """Prepare, then render; None when the raw output is complete, else why it is not."""
    editor = run.editor or resolve_editor(None)  # on a farm worker: its own $QW_UE4_EDITOR
    status, why = _prepare(run, spec, editor, attempt)
    if status is None:
        return why
    why = _render(run, spec, editor, attempt)
    if why is None:
        with atomic_path(run.raw / RENDER_DONE) as tmp:
            tmp.write_text(json.dumps({"prepare": status}, indent=1) + "\n")
    return why


def _settings_changes(recorded: dict[str, Any], spec: dict[str, Any]) -> str:
    """The job settings that differ between a recorded render and `spec`, for messages: after an upgrade of qw only
    the job format may differ, which "other settings" alone does not tell the user."""
    old, new = pixel_settings(recorded), pixel_settings(spec)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            values = repr(old.get(key)), repr(new.get(key))
            changes.append(f"{key} {values[0]} → {values[1]}" if max(map(len, values)) <= 40 else key)
    return ", ".join(changes)


def _discard_other_settings(run: ShotRun, spec: dict[str, Any]) -> None:
    """Never normalize raw output rendered with other settings (job.json records the spec of the last render):
    it goes, with the unfinished shot's frames made from it, so that the shot renders again with these."""
    recorded = read_json(run.work / "job.json")
    if recorded is None or pixel_settings(recorded) == pixel_settings(spec):
        return
    frames = [f for p in PASSES if (run.target / p).is_dir() for f in (run.target / p).glob("*.exr")]
    log.warning("%s: discarding raw output and %d unfinished frame file(s) rendered with other settings (%s)",
                run.target, len(frames), _settings_changes(recorded, spec))
    shutil.rmtree(run.raw, ignore_errors=True)
    for frame in frames:
        frame.unlink()


def capture_shot(run: ShotRun) -> Path:
    """Capture one shot (resumable): skip if complete, else prepare and render with retries, then normalize. A
    second writer of the same shot at the same time is refused (`capture_format.shot_lock`)."""
    with shot_lock(run.target):
        return _capture_shot(run)


def _capture_shot(run: ShotRun) -> Path:
    spec = build_job_spec(run.manifest, run.shot, run.work, run.map_path, run.project)
    if is_complete(run.target):
        recorded = load_meta(run.target).backend.settings
        if pixel_settings(recorded) != pixel_settings(spec):
            raise QwError(f"{run.target}: already complete with other settings ({_settings_changes(recorded, spec)}); "
                          "delete it or use another --out")
        log.info("%s: complete, skipped", run.target)
        return run.target
    _discard_other_settings(run, spec)
    done = read_json(run.raw / RENDER_DONE) or _rendered_before(run, spec)
    if not done:
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
        done = read_json(run.raw / RENDER_DONE)
    assert done is not None
    return normalize_unreal_shot(spec, done["prepare"], run.raw, run.target, run.manifest)


def _rendered_before(run: ShotRun, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The render-done record of a shot whose raw output is complete but was never recorded (the launcher stopped
    between the render and its record): the files decide, the editor does not run again."""
    status = read_json(run.work / PREPARE_STATUS)
    if not (status and status.get("ok") and run.raw.is_dir()) or raw_problems(spec, run.raw):
        return None
    with atomic_path(run.raw / RENDER_DONE) as tmp:
        tmp.write_text(json.dumps({"prepare": status}, indent=1) + "\n")
    return {"prepare": status}


def check_project_plugins(project: Path) -> None:
    """Refuse at once a project whose .uproject does not enable the plugins a capture needs: without the one that
    reads -ExecutePythonScript the editor stays open until the timeout (hours), and without Movie Render Queue the
    prepare script cannot build the queue, however often it is retried."""
    try:
        plugins = json.loads(project.read_text()).get("Plugins", [])
        enabled = {p.get("Name") for p in plugins if isinstance(p, dict) and p.get("Enabled")}
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise QwError(f"{project}: not a readable .uproject ({exc})") from None
    missing = [name for name in REQUIRED_PLUGINS if name not in enabled]
    if missing:
        entries = ", ".join(f'{{"Name": "{name}", "Enabled": true}}' for name in missing)
        raise QwError(f"{project}: plugin(s) {', '.join(missing)} not enabled; add {entries} to its \"Plugins\" "
                      "list (or enable them in Edit > Plugins)")


def _select_shots(manifest: SceneManifest, shots: list[str] | None) -> list[Shot]:
    return [manifest.shot(name) for name in shots] if shots else list(manifest.shots)


def dry_run_text(manifest: SceneManifest, out: Path, shots: list[Shot], editor: Path, project: Path,
                 map_path: str) -> str:
    """Every stage's exact argv, and the job spec, of every shot, as printed by ``--dry-run``."""
    lines = []
    for shot in shots:
        run = ShotRun(manifest, shot, out, editor, project, map_path, 0, 0)
        spec = build_job_spec(manifest, shot, run.work, map_path, project)
        lines += [f"# {manifest.name}/{shot.name}", f"{JOB_ENV}={run.work / 'job.json'}",
                  f"queue: {spec['queue_manifest']} (loaded by the render as -MoviePipelineConfig="
                  f"{spec['queue_config']})",
                  "prepare: " + json.dumps(prepare_argv(editor, project, editor_script_argument(project,
                                                                                                install=False))),
                  "render: " + json.dumps(render_argv(editor, project, spec)),
                  "job: " + json.dumps(spec, indent=1)]
    return "\n".join(lines)


def _run_on_scheduler(runs: list[ShotRun], scheduler: str, progress: bool) -> list[Path]:
    from distributed import Client, as_completed

    with Client(scheduler) as client:
        futures = [client.submit(capture_shot, run, resources={"ue": 1}, pure=False,
                                 key=f"ue-capture-{run.manifest.name}-{run.shot.name}") for run in runs]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="shots", unit="shot", disable=None if progress else True):
            pass
        return [f.result() for f in futures]


def capture_scene(manifest: SceneManifest, out: Path, *, shots: list[str] | None = None, dry_run: bool = False,
                  editor: str | os.PathLike | None = None, project: str | os.PathLike | None = None,
                  scheduler: str | None = None, timeout: float | None = None, retries: int = DEFAULT_RETRIES,
                  progress: bool = True) -> list[Path]:
    """Capture every (or the named) shot of a ``ue4`` scene into ``out/<scene>/<shot>/``; returns the shot dirs.

    ``dry_run`` prints both stages' editor argv and the job spec of each shot and returns []. With ``scheduler``
    (a Dask address) each shot is a task needing the worker resource ``ue=1``.
    """
    if manifest.backend != "ue4" or manifest.unreal is None:
        raise QwError(f"scene {manifest.name!r} is not an Unreal scene (backend {manifest.backend!r})")
    out = Path(out)
    selected = _select_shots(manifest, shots)
    engine_major(manifest.unreal.engine_version)
    check_sequence_filled(manifest)
    if dry_run:
        configured = editor or os.environ.get(EDITOR_ENV)
        value = os.path.expandvars(str(project or manifest.unreal.project))
        proj = Path(value if "$" in value or FILL_IN in value else os.path.abspath(value))  # as a real run has it
        map_path = (manifest.unreal.map if manifest.unreal.map != PROJECT_DEFAULT_MAP or not proj.is_file()
                    else resolve_map(manifest, proj))
        print(dry_run_text(manifest, out, selected, Path(configured or f"${EDITOR_ENV}"), proj, map_path))
        return []
    exe = resolve_editor(editor) if scheduler is None or editor or os.environ.get(EDITOR_ENV) else None
    proj = resolve_project(manifest, project, must_exist=scheduler is None)
    if proj.is_file():
        check_project_plugins(proj)
    map_path = resolve_map(manifest, proj)
    runs = [ShotRun(manifest, s, out, exe, proj, map_path, float(timeout or DEFAULT_TIMEOUT_S), retries)
            for s in selected]
    if scheduler:
        return _run_on_scheduler(runs, scheduler, progress)
    return [capture_shot(run) for run in tqdm(runs, desc="shots", unit="shot", disable=None if progress else True)]

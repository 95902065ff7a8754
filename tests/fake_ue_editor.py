"""A FAKE Unreal editor executable for the launcher tests (it is not Unreal).

It answers the two command lines qw's launcher builds, as the engine sources say the real editor does:

* ``<project> -ExecutePythonScript=<script> …``: installs the `fake_unreal` stand-in of $FAKE_UE_VERSION (4.27 or
  5.5; default 4.27), runs the script (the file the engine's own reading of the flag finds: a path it splits or
  garbles runs as Python code and fails, see `execute_python_script`), and quits as soon as it returns (EditorPythonExecuter issues
  QUIT_EDITOR on the next tick: always on 4.27, on UE5 unless the script asked to be kept alive, in which case
  this fake, like the editor, keeps running until killed). Nothing the script left pending ever runs.
  Without the plugin that reads -ExecutePythonScript (EditorScriptingUtilities on 4.27, PythonScriptPlugin on UE5)
  the script never runs and the editor stays open; on 4.27 without PythonScriptPlugin the editor logs an error and
  quits; without EditorScriptingUtilities or MovieRenderPipeline the module lacks their classes.
* ``<project> <map> -game -MoviePipelineConfig=<queue manifest> …``: Movie Render Queue's command-line render.
  It loads the queue only from a path that converts to a package name (relative paths from the project's Saved
  folder), refuses jobs whose sequence or materials were never saved, and writes what MRQ writes
  for each job from analytic ground truth: per-frame files named by the job's file name format over
  [custom_start_frame, custom_end_frame), and with write_all_samples each sample as
  ``<pass>_SS_<s>_TS_0_TileX_0_TileY_0.<n>.exr``. Jittered samples see `ue_formats.scene_colour` at
  ``pixel centre − MRQ's shift``; passes are half floats unless 32-bit output was asked for (depth past 655 m then
  overflows, as on the engine). The quirks the sources show are acted out, each cited where it is modelled:
  emissive clamped at 0 unless the material was compiled allowing negative emissive, the accumulated frame
  splatted bilinearly, the first frame's velocity reversed without camera-cut warm-up, and eye adaptation from
  the map's post-process volume unless r.EyeAdaptationQuality is 0, and particle systems that settle only after
  enough world (game-thread) or rendered (GPU) ticks since the map loaded, which MRQ's warm-up frames give
  (`warm_up`). It exits 0 when done, as MRQ's command line does even after errors.

Like the engine, it first switches into its executable's folder, $FAKE_UE_BASE_DIR (`open_project`).
$FAKE_UE_CVARS (JSON) holds the editor's read-only console variables (default: UE4 velocity enabled) and
$FAKE_UE_PLAYER_START (JSON [[x, y, z], yaw]) the map's PlayerStart.
$FAKE_UE_BEHAVIOUR acts out a failure of the render stage:
  ok (default)   render everything, exit 0
  exit-nonzero   log an error and exit 3 before rendering
  hang           sleep until killed
  partial        render only the first half of the frames, exit 0
  crash-once     exit 139 on the first render (marker file in the project's Saved folder), succeed afterwards
  crash-on-exit  render everything, then exit 139 (a crash in shutdown)
$FAKE_UE_MAP_AUTO_EXPOSURE=0: the map has no post-process volume that turns eye adaptation on (default: it has).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import string
import sys
import time
import traceback
from pathlib import Path

import fake_unreal
import numpy as np
from ue_formats import analytic_motion, camera_velocity, mrq_spatial_shift, pixels_to_ndc, scene_colour, write_exr

DEPTH_CM = 70000.0  # 700 m: past float16's 65504, like Kite's landscape
DEFAULT_CVARS = {"r.BasePassOutputsVelocity": 1}
DEFAULT_PLAYER_START = [[1000.0, -500.0, 200.0], 30.0]  # location (cm), yaw (degrees)


def flag_value(argv: list[str], flag: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")), None)


def enabled_plugins(project: Path) -> set[str]:
    try:
        return {p["Name"] for p in json.loads(project.read_text()).get("Plugins", []) if p.get("Enabled")}
    except (OSError, ValueError, KeyError, AttributeError):
        return set()


# ------------------------------------------------------------------ -ExecutePythonScript, as the engines read it


def engine_command_line(argv: list[str]) -> str:
    """FCommandLine as the engine rebuilds it from its arguments: one holding a space is quoted again, after its '='
    when it is a -Key=value (4.27.2 UnixCommonStartup.cpp 212-231; on Windows LaunchWindows.cpp 161-189, from the
    CommandLineToArgvW split of the process's command line, which undoes subprocess.list2cmdline; 5.5.1
    UnixCommonStartup.cpp 263-282, LaunchWindows.cpp 147-175). A quote qw added itself would be kept and doubled."""
    line = ""
    for arg in argv:
        if " " in arg:
            quote = arg.index("=") + 1 if arg.startswith("-") and "=" in arg else 0
            arg = arg[:quote] + '"' + arg[quote:] + '"'
        line += " " + arg
    return line


def strifind(stream: str, match: str) -> int:
    """FCString::Strifind(Stream, Match, bSkipQuotedChars=true): case-insensitive, outside quotes, not right after
    an ASCII letter or digit (4.27.2 CString.h 515-548); -1 when absent."""
    quoted = alnum = False
    for i, c in enumerate(stream):
        if not quoted and not alnum and stream[i:i + len(match)].upper() == match.upper():
            return i
        alnum = c.isascii() and c.isalnum()
        quoted = quoted != (c == '"')
    return -1


def token(text: str) -> str:
    """FParse::Token(Str, Arg, UseEscape=false) (4.27.2 Parse.cpp 837-909; 5.5.1 the same): after whitespace, a
    quoted string without its quotes, else everything up to whitespace outside quotes (quotes kept)."""
    text = text.lstrip()
    if text.startswith('"'):
        return text[1:].split('"', 1)[0]
    out, quoted = "", False
    for c in text:
        if c.isspace() and not quoted:
            break
        quoted = quoted != (c == '"')
        out += c
    return out


def quoted_string(text: str) -> str | None:
    """FParse::QuotedString (5.5.1 Parse.cpp 366-496): the string between the quotes, with C escapes read:
    \\\\ \\" \\' \\n \\r \\t, octal, \\x hex, \\u (up to 4 hex digits), \\U (up to 8); any other backslash is kept."""
    if not text.startswith('"'):
        return None
    out, i = "", 1  # what was read stays the value even without a closing quote, as in the engine
    while i < len(text) and text[i] not in '"\n\r':
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out, i = out + c, i + 1
            continue
        e = text[i + 1]
        simple = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
        if e in simple:
            out, i = out + simple[e], i + 2
            continue
        digits, base, start = "", 0, i + 1
        if e in "01234567":
            digits, base = re.match(r"[0-7]{1,3}", text[start:])[0], 8
        elif e in "xuU" and i + 2 < len(text) and text[i + 2] in string.hexdigits:
            limit = {"x": "", "u": "{1,4}", "U": "{1,8}"}[e] or "+"
            digits, base, start = re.match(f"[0-9a-fA-F]{limit}", text[i + 2:])[0], 16, i + 2
        if base:
            out, i = out + chr(int(digits, base)), start + len(digits)
        else:
            out, i = out + "\\" + e, i + 2
    return out


def execute_python_script(argv: list[str], flavour: str) -> tuple[str, str | None]:
    """(the PY command the editor runs, the .py file that command runs or None when it runs it as Python code).

    4.27: FParse::Value(CommandLine, "ExecutePythonScript=") (EditorPythonExecuter.cpp 206): a value quoted right
    after the '=' up to the next quote, else up to a space, ',' or ')' (Parse.cpp 225-283); then "PY <value>"
    (line 167) takes the first token as the file if its extension is py (PythonScriptPlugin.cpp 469-488).
    5.5: the value after "-ExecutePythonScript=" is a token, or a quoted string with escapes when quoted
    (EditorPythonExecuter.cpp 142-178); the file is the command up to the first ".py", which must be followed by
    whitespace, the end, or a closing quote (PythonScriptPlugin.cpp 677-763)."""
    line = engine_command_line(argv)
    if flavour == "4.27":
        found = strifind(line, "ExecutePythonScript=")
        rest = line[found + len("ExecutePythonScript="):]
        if rest.startswith('"'):
            command = rest[1:].split('"', 1)[0]
        else:
            command = re.split(r"[ \r\n\t,)]", rest.lstrip(" \r\n\t"), maxsplit=1)[0]
        name = token(command)
        extension = re.split(r"[\\/]", name)[-1].rpartition(".")
        return command, name if extension[1] and extension[2].lower() == "py" else None
    rest = line[strifind(line, "-ExecutePythonScript=") + len("-ExecutePythonScript="):]
    command = (quoted_string(rest) if rest.startswith('"') else token(rest)) or ""
    end = command.find(".py") + len(".py")
    if end < len(".py"):
        return command, None
    name = command[:end]
    if name.startswith('"'):
        name = name[1:]
        after = command[end:]
        if not after or not re.match(r'\s*("|$)', after):
            return command, None
    elif end < len(command) and not command[end].isspace():
        return command, None
    return command, name


def python_file(name: str, project: Path, flavour: str) -> Path | None:
    """RunFile's lookup: the file relative to the working directory (the Binaries folder), then in each folder of
    sys.path (4.27.2 PythonScriptPlugin.cpp 1215-1241; 5.5.1 1602-1628), which holds the project's Content/Python
    (4.27.2 734-742 always; 5.5.1 1043-1049 with 1770-1786 when the folder exists at start-up)."""
    content_python = project.parent / "Content" / "Python"
    sys_path = [content_python] if flavour == "4.27" or content_python.is_dir() else []
    for candidate in [Path(name)] + [folder / name for folder in sys_path]:
        if candidate.is_file():
            return candidate.resolve()
    return None


def run_script(project: Path, argv: list[str]) -> int:
    flavour = os.environ.get("FAKE_UE_VERSION", "4.27")
    plugins = enabled_plugins(project)
    print(f"LogInit: fake editor {fake_unreal.VERSIONS[flavour]}", flush=True)
    # -ExecutePythonScript is read by the module that holds EditorPythonExecuter: EditorScriptingUtilities on 4.27
    # (4.27.2 EditorScriptingUtilities/Private/EditorPythonExecuter.cpp 206), PythonScriptPlugin on UE5 (5.5.1
    # PythonScriptPlugin/Private/EditorUtilities/EditorPythonExecuter.cpp). Both plugins are "EnabledByDefault":
    # false. Without that module nothing reads the flag and nothing asks the editor to quit: an unattended editor
    # sits open until it is killed.
    if ("EditorScriptingUtilities" if flavour == "4.27" else "PythonScriptPlugin") not in plugins:
        print("LogInit: nothing reads -ExecutePythonScript; the editor stays open", flush=True)
        time.sleep(3600)
    if "PythonScriptPlugin" not in plugins:
        # 4.27 only: the executer runs "PY <script>", which nothing handles; it logs the error (line 169) and quits
        # on its next tick (lines 148-153).
        print("LogEditorPythonExecuter: Error: -ExecutePythonScript cannot be used without a valid Python Script "
              "Plugin.", flush=True)
        print("LogEditorPythonExecuter: QUIT_EDITOR", flush=True)
        return 0
    ue = fake_unreal.install(flavour, project.parent, plugins=tuple(plugins))
    ue._state["cvars"] = json.loads(os.environ.get("FAKE_UE_CVARS", json.dumps(DEFAULT_CVARS)))
    ue._add_player_start(*json.loads(os.environ.get("FAKE_UE_PLAYER_START", json.dumps(DEFAULT_PLAYER_START))))
    command, name = execute_python_script(argv, flavour)
    script = python_file(name, project, flavour) if name else None
    try:
        if name is None:  # RunString: the command as Python code, which a path is not
            raise SyntaxError(f"invalid syntax: {command!r} ran as Python code")
        if script is None:
            raise FileNotFoundError(f"Could not load Python file '{name}'")
        runpy.run_path(str(script), run_name="__main__")
    except Exception:  # the editor logs a script's error and carries on to the quit
        print("LogPython: Error: " + traceback.format_exc(), flush=True)
    if ue._state["keep_alive"]:  # UE5 only: nothing quits the editor any more
        print("LogEditorPythonExecuter: script asked to be kept alive", flush=True)
        time.sleep(3600)
    print("LogEditorPythonExecuter: QUIT_EDITOR (the script returned)", flush=True)
    return 0


def fatal(message: str) -> None:
    """UE_LOG(..., Fatal, ...): the engine logs and crashes; the process ends non-zero."""
    sys.exit(f"LogMovieRenderPipeline: Fatal error: {message}")


def package_name(project: Path, path: Path) -> str | None:
    """FPackageName::TryConvertFilenameToLongPackageName (4.27.2 PackageName.cpp 336-472; 5.5.1 the same rule):
    the file, extension dropped, must lie under a mounted root (the project's Content → /Game/, Saved → /Temp/,
    Config → /Config/; a path outside them stays relative, with '..') and the result may hold no '.', '\\' or ':'."""
    base = os.path.normpath(os.path.splitext(str(path))[0])
    for folder, root in (("Content", "/Game/"), ("Saved", "/Temp/"), ("Config", "/Config/")):
        prefix = os.path.normpath(str(project.parent / folder)) + os.sep
        if base.startswith(prefix):
            rest = base[len(prefix):].replace(os.sep, "/")
            return None if any(c in rest for c in ".\\:") else root + rest
    return None


def load_queue(project: Path, value: str) -> dict:
    """-MoviePipelineConfig as Movie Render Queue's command line reads it (4.27.2
    MovieRenderPipelineCommandLine.cpp 283-309; 5.5.1 MoviePipelineBlueprintLibrary.cpp 323-346): a .utxt path,
    relative ones taken from the project's Saved folder, loaded with LoadPackage, which needs a package name;
    failure is a Fatal log. (/Game/ queue assets are not modelled.)"""
    if not value.endswith(".utxt"):
        fatal(f"Unknown Config Asset Path. Path: {value}")
    path = Path(value) if os.path.isabs(value) else project.parent / "Saved" / value
    if package_name(project, path) is None or not path.is_file():
        fatal("Could not parse text asset package.")
    return json.loads(path.read_text())


def pass_name(material_path: str) -> str:
    return "FinalImage" + material_path.split(".")[0].rsplit("/", 1)[-1]


def compiled_material(project: Path, material_path: str) -> tuple[str, bool]:
    """(scene texture, negative emissive kept) of a saved qw material, as its shader was last compiled."""
    file = project.parent / "Content" / (material_path.split(".")[0].removeprefix("/Game/") + ".uasset.json")
    if not file.is_file():
        fatal(f"material {material_path} was never saved")
    data = json.loads(file.read_text())
    [node] = data["expressions"]
    # The shader's MATERIAL_ALLOW_NEGATIVE_EMISSIVECOLOR is the material's bAllowNegativeEmissiveColor at compile
    # time (MaterialShared.cpp, FMaterial::SetupMaterialEnvironment).
    return node["scene_texture_id"], bool((data.get("compiled") or {}).get("allow_negative_emissive_color"))


def sequence_camera(project: Path, sequence: str) -> tuple[dict[int, tuple[float, ...]], float] | None:
    """({frame: (x, y, z, roll, pitch, yaw)}, horizontal fov) of a saved sequence's camera, or None when it has no
    transform keys (the fake does not interpolate: every rendered frame must be keyed, as qw bakes them)."""
    data = json.loads((project.parent / "Content" / (sequence.split(".")[0].removeprefix("/Game/")
                                                       + ".uasset.json")).read_text())
    if not data.get("keys"):
        return None
    channels = data["keys"][:6]  # location x, y, z, rotation roll, pitch, yaw
    poses = {int(frame): tuple(channel[k][1] for channel in channels) for k, (frame, _, _) in enumerate(channels[0])}
    return poses, data["camera"]["field_of_view"]


def pass_image(texture: str, unclamped: bool, frame: int, first: bool, width: int, height: int, hdr: bool,
               camera, shift: tuple[float, float]) -> tuple[np.ndarray, type]:
    """One sample of a post-process pass; with a keyed camera, of the static test world seen from it."""
    dtype = np.float32 if hdr else np.float16
    # Without camera-cut warm-up, MRQ emulates motion blur on the first frame by evaluating the sequence one
    # frame ahead as "previous" (4.27.2 MoviePipeline.cpp 841-854, MoviePipelineTiming.cpp 268-342): the
    # first frame's velocity is that of the next step, reversed.
    previous = frame + 1 if first else frame - 1
    if camera is not None:
        poses, fov = camera
        if frame not in poses or previous not in poses:
            fatal(f"fake render: frame {frame} or {previous} is not keyed")
        velocity, depth = camera_velocity(poses[previous], poses[frame], fov, width, height, shift)
    else:
        motion = analytic_motion(width, height, phase=0.1 * frame)
        velocity = pixels_to_ndc(-motion if first else motion, width, height)
        depth = np.full((height, width), DEPTH_CM)
    if texture == "SceneTextureId.PPI_VELOCITY":
        image = np.concatenate([velocity, np.zeros((height, width, 1))], axis=-1)
    elif texture == "SceneTextureId.PPI_SCENE_DEPTH":
        image = np.repeat(depth[..., None], 3, axis=-1)
    else:
        fatal(f"fake render does not model {texture}")
    # MaterialTemplate.ush GetMaterialEmissive (4.27.2 2079-2086, 5.5.1 3597-3604): max(Emissive, 0) unless the
    # material was compiled with MATERIAL_ALLOW_NEGATIVE_EMISSIVECOLOR.
    return (image if unclamped else np.maximum(image, 0.0)), dtype


# UMoviePipelineAntiAliasingSetting's constructor (4.27.2 and 5.5.1 MoviePipelineAntiAliasingSetting.h 15-23): what a
# queue that does not set a property renders with.
AA_DEFAULTS = {"render_warm_up_count": 32, "use_camera_cut_for_warm_up": False, "engine_warm_up_count": 0,
               "render_warm_up_frames": False}
# The fake map's particle systems reach their steady state this many ticks after the map loads: the left quarter
# of the image is simulated on the game thread (it runs on every world tick), the right quarter on the GPU (it
# runs only on ticks whose scene is rendered: MoviePipelineAntiAliasingSetting.h 100-106, both versions; Niagara
# would run ticks left unrendered for 10 frames with a dummy view and no depth collisions, 4.27.2
# NiagaraEmitterInstanceBatcher.cpp 91-108, 428-470, not modelled). Before that their colour is the scene's scaled
# by the fraction of ticks run; settled, it is the scene's.
SIMULATION_SETTLE_TICKS = 8


def warm_up(aa: dict) -> tuple[int, int, int]:
    """(world ticks, rendered ticks, rendered views) of a job after its map loads and before its first output
    frame. Each job opens its map (4.27.2 MoviePipelineInProcessExecutor.cpp 71-74; 5.5.1 80-83). Engine warm-up
    frames are max(EngineWarmUpCount, 1 if RenderWarmUpCount > 0) (4.27.2 MoviePipeline.cpp 849-851; 5.5.1
    979-980; the count camera-cut warm-up takes from the sequence, which qw never asks for, is not modelled); each
    ticks the world once with the sequence held at the shot's first frame (4.27.2 MoviePipelineTiming.cpp 190-199,
    224-265; 5.5.1 259-312). Only the last is rendered, with RenderWarmUpCount samples, unless bRenderWarmUpFrames
    renders every one, the others with one sample each (4.27.2 MoviePipelineTiming.cpp 237-243,
    MoviePipelineRendering.cpp 224-237, 262-283; 5.5.1 272-278, 274-287, 336-353). Without camera-cut warm-up one
    more tick renders the motion-blur frame with one sample (4.27.2 MoviePipelineTiming.cpp 306-342,
    MoviePipelineRendering.cpp 210-221; 5.5.1 354-389, 264-271)."""
    get = {**AA_DEFAULTS, **{k: v for k, v in aa.items() if v is not None}}.get
    samples, engine = get("render_warm_up_count"), get("engine_warm_up_count")
    engine = max(engine, 1 if samples > 0 else 0)
    single = engine - 1 if engine and get("render_warm_up_frames") else 0  # the one-sample ticks before the last
    last = 1 if engine and samples > 0 else 0  # the last warm-up tick renders its samples
    blur = 0 if get("use_camera_cut_for_warm_up") else 1
    return engine + blur, single + last + blur, single + (samples if last else 0) + blur


def simulated(colour: np.ndarray, world_ticks: int, rendered_ticks: int) -> np.ndarray:
    """`colour` with the fake map's particle systems as they are `world_ticks` (`rendered_ticks` rendered) after
    the map loaded (see SIMULATION_SETTLE_TICKS)."""
    quarter = colour.shape[1] // 4
    out = colour.copy()
    out[:, :quarter] *= min(1.0, world_ticks / SIMULATION_SETTLE_TICKS)
    out[:, colour.shape[1] - quarter:] *= min(1.0, rendered_ticks / SIMULATION_SETTLE_TICKS)
    return out


def sample_colour(frame: int, width: int, height: int, shift: tuple[float, float]) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return scene_colour(x + 0.5 - shift[0], y + 0.5 - shift[1], frame)


def accumulate(samples: list[np.ndarray], shifts: list[tuple[float, float]]) -> np.ndarray:
    """MRQ's accumulator: each jittered sample's pixel is splatted bilinearly onto the pixel grid at the position
    it saw (centre − shift) and the weights are normalized (4.27.2 MovieRenderOverlappedImage.cpp 46-84, 134-160;
    MoviePipelineRendering.cpp 385-387; 5.5.1 MoviePipelineUtils.cpp 1251-1253). The footprint is the sample
    distribution widened by a 1 px tent, not the equal-weight mean of the samples."""
    height, width = samples[0].shape[:2]
    total, weight = np.zeros((height + 2, width + 2, 3)), np.zeros((height + 2, width + 2, 1))
    for image, (sx, sy) in zip(samples, shifts):
        fx, fy = int(np.floor(-sx)), int(np.floor(-sy))
        ax, ay = -sx - fx, -sy - fy
        for dx, wx in ((fx, 1 - ax), (fx + 1, ax)):
            for dy, wy in ((fy, 1 - ay), (fy + 1, ay)):
                total[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] += wx * wy * image
                weight[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] += wx * wy
    return (total / np.maximum(weight, 1e-12))[1:-1, 1:-1]


def exposure(cvars: dict, views: int) -> float:
    """Scene colour scale after `views` rendered views of a job. r.DefaultFeature.AutoExposure only sets the
    default that a map's post-process volume overrides (4.27.2 SceneView.cpp 159-164); eye adaptation stays on
    unless r.EyeAdaptationQuality is 0 (4.27.2 ShowFlags.cpp 409-415, EngineShowFlagOverride, which MRQ calls in
    MoviePipelineImagePassBase.cpp 82; 5.5.1 ShowFlags.cpp 459), and then it adapts over the views a job renders,
    so jobs with different sample counts see different exposures. $FAKE_UE_MAP_AUTO_EXPOSURE=0: a map without
    such a volume."""
    if os.environ.get("FAKE_UE_MAP_AUTO_EXPOSURE", "1") != "1" or int(cvars.get("r.EyeAdaptationQuality", 2)) == 0:
        return 1.0
    return 1.0 + 0.5 * 0.8 ** views


def render_job(project: Path, job: dict, version: str, limit: int | None) -> None:
    settings = job["settings"]
    out, aa = settings["MoviePipelineOutputSetting"], settings["MoviePipelineAntiAliasingSetting"]
    deferred, debug = settings["MoviePipelineDeferredPassBase"], settings.get("MoviePipelineDebugSettings", {})
    cvars = settings["MoviePipelineConsoleVariableSetting"]["console_variables"]
    folder, fmt = Path(out["output_directory"]["path"]), out["file_name_format"]
    width, height = out["output_resolution"]["x"], out["output_resolution"]["y"]
    sequence = job["sequence"]["path"]
    if not (project.parent / "Content" / (sequence.split(".")[0].removeprefix("/Game/") + ".uasset.json")).is_file():
        fatal(f"sequence {sequence} not found")
    samples, gaussian = aa["spatial_sample_count"], version < "5.5"
    shifts = [mrq_spatial_shift(k, samples, gaussian, cvars["r.TemporalAAFilterSize"]) if samples > 1 else (0, 0)
              for k in range(samples)]
    passes = [(pass_name(p["material"]), *compiled_material(project, p["material"]),
               bool(p.get("high_precision_output") or deferred.get("use32_bit_post_process_materials")))
              for p in deferred.get("additional_post_process_materials") or [] if p["enabled"]]
    frames = list(range(out["custom_start_frame"], out["custom_end_frame"]))[:limit]  # the end is exclusive
    first_is_emulated = not aa.get("use_camera_cut_for_warm_up")
    camera = sequence_camera(project, sequence)
    world_ticks, rendered_ticks, views = warm_up(aa)
    for n, frame in enumerate(frames):  # one world tick per output frame (one temporal sample), each rendered
        scale = exposure(cvars, views + samples * (n + 1))
        colours = [simulated(sample_colour(frame, width, height, s), world_ticks + n + 1, rendered_ticks + n + 1)
                   for s in shifts]
        samples_of = {"FinalImage": ([scale * c for c in colours], np.float16)}
        for name, tex, unclamped, hdr in passes:
            images = [pass_image(tex, unclamped, frame, n == 0 and first_is_emulated, width, height, hdr, camera, s)
                      for s in shifts]
            samples_of[name] = ([image for image, _ in images], images[0][1])
        for name, (images, dtype) in samples_of.items():
            resolved = fmt.replace("{render_pass}", name).replace("{frame_number}", f"{frame:0{out['zero_pad_frame_numbers']}d}")
            write_exr(folder / f"{resolved}.exr", accumulate(images, shifts) if samples > 1 else images[0], dtype=dtype)
            if debug.get("write_all_samples"):
                for k, sample in enumerate(images):
                    write_exr(folder / f"{name}_SS_{k}_TS_0_TileX_0_TileY_0.{n}.exr", sample, dtype=dtype)


def render(project: Path, config: str, argv: list[str]) -> int:
    behaviour = os.environ.get("FAKE_UE_BEHAVIOUR", "ok")
    print(f"LogInit: fake -game render of {argv[1]}, behaviour {behaviour}", flush=True)
    queue = load_queue(project, config)
    marker = project.parent / "Saved" / "fake-crashed-once"
    if behaviour == "exit-nonzero":
        print("LogWindows: Error: === Critical error: === (fake)", flush=True)
        return 3
    if behaviour == "hang":
        (project.parent / "Saved" / "fake-hung.pid").write_text(str(os.getpid()))
        time.sleep(3600)
    if behaviour == "crash-once" and not marker.exists():
        marker.write_text("1")
        print("Segmentation fault (fake)", flush=True)
        return 139
    version = os.environ.get("FAKE_UE_VERSION", "4.27")
    for job in queue["jobs"]:
        frames = job["settings"]["MoviePipelineOutputSetting"]
        half = (frames["custom_end_frame"] - frames["custom_start_frame"]) // 2 if behaviour == "partial" else None
        render_job(project, job, version, half)
    if behaviour == "crash-on-exit":  # everything written, then the engine dies in shutdown
        print("Segmentation fault in shutdown (fake)", flush=True)
        return 139
    print("LogMovieRenderPipeline: render finished; RequestExitWithStatus(false, 0)", flush=True)
    return 0


def open_project(value: str) -> Path:
    """The project the engine opens from its first argument. It first switches into its executable's folder
    (SetCurrentWorkingDirectoryToBaseDir: 4.27.2 LaunchEngineLoop.cpp 1476, 1623; 5.5.1 1984, 2136), so a relative
    path is taken from there, as is any relative path its Python opens later. A project not found there is looked
    up by name in the engine's .uprojectdirs folders (4.27.2 1630-1652, 5.5.1 2143-2166), not modelled: the fake
    stops, as the editor would without a project."""
    os.chdir(os.environ["FAKE_UE_BASE_DIR"])  # the editor's Binaries/<Platform> folder
    if not os.path.isfile(value):
        sys.exit(f"LogInit: Display: Project file not found: {value}")
    return Path(os.path.abspath(value))


def main(argv: list[str]) -> int:
    project = open_project(argv[0])
    if flag_value(argv, "-ExecutePythonScript"):
        return run_script(project, argv)
    config = flag_value(argv, "-MoviePipelineConfig")
    if config and "-game" in argv:
        return render(project, config, argv)
    sys.exit(f"fake editor: no -ExecutePythonScript= and no -game -MoviePipelineConfig= in {argv}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A FAKE Unreal editor executable for the launcher tests (it is not Unreal).

It answers the two command lines qw's launcher builds, as the engine sources say the real editor does:

* ``<project> -ExecutePythonScript=<script> …``: installs the `fake_unreal` stand-in of $FAKE_UE_VERSION (4.27,
  5.3 or 5.5; default 4.27), runs the script, and quits as soon as it returns (EditorPythonExecuter issues
  QUIT_EDITOR on the next tick: always on 4.27, on UE5 unless the script asked to be kept alive, in which case
  this fake, like the editor, keeps running until killed). Nothing the script left pending ever runs.
* ``<project> <map> -game -MoviePipelineConfig=<queue manifest> …``: Movie Render Queue's command-line render.
  It reads the saved queue, refuses jobs whose sequence or materials were never saved, and writes what MRQ writes
  for each job from analytic ground truth: per-frame files named by the job's file name format over
  [custom_start_frame, custom_end_frame), and with write_all_samples each sample as
  ``<pass>_SS_<s>_TS_0_TileX_0_TileY_0.<n>.exr``. Jittered samples see `ue_formats.scene_colour` at
  ``pixel centre − MRQ's shift``; passes are half floats unless 32-bit output was asked for (depth past 655 m then
  overflows, as on the engine). It exits 0 when done, as MRQ's command line does even after errors.

$FAKE_UE_CVARS (JSON) holds the editor's read-only console variables (default: UE4 velocity enabled) and
$FAKE_UE_PLAYER_START (JSON [[x, y, z], yaw]) the map's PlayerStart.
$FAKE_UE_BEHAVIOUR acts out a failure of the render stage:
  ok (default)   render everything, exit 0
  exit-nonzero   log an error and exit 3 before rendering
  hang           sleep until killed
  partial        render only the first half of the frames, exit 0
  crash-once     exit 139 on the first render of a shot (marker file next to the manifest), succeed afterwards
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

import fake_unreal
import numpy as np
from ue_formats import analytic_motion, mrq_spatial_shift, scene_colour, velocity_image, write_exr

DEPTH_CM = 70000.0  # 700 m: past float16's 65504, like Kite's landscape
DEFAULT_CVARS = {"r.BasePassOutputsVelocity": 1}
DEFAULT_PLAYER_START = [[1000.0, -500.0, 200.0], 30.0]  # location (cm), yaw (degrees)


def flag_value(argv: list[str], flag: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")), None)


def run_script(project: Path, script: str) -> int:
    flavour = os.environ.get("FAKE_UE_VERSION", "4.27")
    ue = fake_unreal.install(flavour, project.parent)
    ue._state["cvars"] = json.loads(os.environ.get("FAKE_UE_CVARS", json.dumps(DEFAULT_CVARS)))
    ue._add_player_start(*json.loads(os.environ.get("FAKE_UE_PLAYER_START", json.dumps(DEFAULT_PLAYER_START))))
    print(f"LogInit: fake editor {fake_unreal.VERSIONS[flavour]}", flush=True)
    try:
        runpy.run_path(script, run_name="__main__")
    except Exception:  # the editor logs a script's error and carries on to the quit
        print("LogPython: Error: " + traceback.format_exc(), flush=True)
    if ue._state["keep_alive"]:  # UE5 only: nothing quits the editor any more
        print("LogEditorPythonExecuter: script asked to be kept alive", flush=True)
        time.sleep(3600)
    print("LogEditorPythonExecuter: QUIT_EDITOR (the script returned)", flush=True)
    return 0


def pass_name(material_path: str) -> str:
    return "FinalImage" + material_path.split(".")[0].rsplit("/", 1)[-1]


def material_texture(project: Path, material_path: str) -> str:
    """The scene texture a saved qw material reads (the fake renders only what the material asks for)."""
    file = project.parent / "Content" / (material_path.split(".")[0].removeprefix("/Game/") + ".uasset.json")
    if not file.is_file():
        sys.exit(f"LogMovieRenderPipeline: Fatal: material {material_path} was never saved")
    data = json.loads(file.read_text())
    [node] = data["expressions"]
    return node["scene_texture_id"]


def pass_image(texture: str, frame: int, width: int, height: int, hdr: bool) -> tuple[np.ndarray, type]:
    dtype = np.float32 if hdr else np.float16
    if texture == "SceneTextureId.PPI_VELOCITY":
        return velocity_image(analytic_motion(width, height, phase=0.1 * frame), width, height), dtype
    if texture == "SceneTextureId.PPI_SCENE_DEPTH":
        return np.full((height, width, 3), DEPTH_CM), dtype
    raise SystemExit(f"LogMovieRenderPipeline: Fatal: fake render does not model {texture}")


def sample_colour(frame: int, width: int, height: int, shift: tuple[float, float]) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return scene_colour(x + 0.5 - shift[0], y + 0.5 - shift[1], frame)


def render_job(project: Path, job: dict, version: str, limit: int | None) -> None:
    settings = job["settings"]
    out, aa = settings["MoviePipelineOutputSetting"], settings["MoviePipelineAntiAliasingSetting"]
    deferred, debug = settings["MoviePipelineDeferredPassBase"], settings.get("MoviePipelineDebugSettings", {})
    cvars = settings["MoviePipelineConsoleVariableSetting"]["console_variables"]
    folder, fmt = Path(out["output_directory"]["path"]), out["file_name_format"]
    width, height = out["output_resolution"]["x"], out["output_resolution"]["y"]
    sequence = job["sequence"]["path"]
    if not (project.parent / "Content" / (sequence.split(".")[0].removeprefix("/Game/") + ".uasset.json")).is_file():
        sys.exit(f"LogMovieRenderPipeline: Fatal: sequence {sequence} not found")
    samples, gaussian = aa["spatial_sample_count"], version < "5.5"
    shifts = [mrq_spatial_shift(k, samples, gaussian, cvars["r.TemporalAAFilterSize"]) if samples > 1 else (0, 0)
              for k in range(samples)]
    passes = [(pass_name(p["material"]), material_texture(project, p["material"]),
               bool(p.get("high_precision_output") or deferred.get("use32_bit_post_process_materials")))
              for p in deferred.get("additional_post_process_materials") or [] if p["enabled"]]
    frames = list(range(out["custom_start_frame"], out["custom_end_frame"]))[:limit]  # the end is exclusive
    for n, frame in enumerate(frames):
        colours = [sample_colour(frame, width, height, s) for s in shifts]
        images = {"FinalImage": (np.mean(colours, axis=0), np.float16)}
        images.update({name: pass_image(tex, frame, width, height, hdr) for name, tex, hdr in passes})
        for name, (image, dtype) in images.items():
            resolved = fmt.replace("{render_pass}", name).replace("{frame_number}", f"{frame:0{out['zero_pad_frame_numbers']}d}")
            write_exr(folder / f"{resolved}.exr", image, dtype=dtype)
            if debug.get("write_all_samples"):
                for k in range(samples):
                    sample = colours[k] if name == "FinalImage" else image
                    write_exr(folder / f"{name}_SS_{k}_TS_0_TileX_0_TileY_0.{n}.exr", sample, dtype=dtype)


def render(project: Path, manifest: Path) -> int:
    behaviour = os.environ.get("FAKE_UE_BEHAVIOUR", "ok")
    print(f"LogInit: fake -game render, behaviour {behaviour}", flush=True)
    if behaviour == "exit-nonzero":
        print("LogWindows: Error: === Critical error: === (fake)", flush=True)
        return 3
    if behaviour == "hang":
        manifest.with_name("fake-hung.pid").write_text(str(os.getpid()))
        time.sleep(3600)
    marker = manifest.with_name("fake-crashed-once")
    if behaviour == "crash-once" and not marker.exists():
        marker.write_text("1")
        print("Segmentation fault (fake)", flush=True)
        return 139
    queue = json.loads(manifest.read_text())
    version = os.environ.get("FAKE_UE_VERSION", "4.27")
    for job in queue["jobs"]:
        frames = job["settings"]["MoviePipelineOutputSetting"]
        half = (frames["custom_end_frame"] - frames["custom_start_frame"]) // 2 if behaviour == "partial" else None
        render_job(project, job, version, half)
    print("LogMovieRenderPipeline: render finished; RequestExitWithStatus(false, 0)", flush=True)
    return 0


def main(argv: list[str]) -> int:
    project = Path(argv[0])
    script = flag_value(argv, "-ExecutePythonScript")
    if script:
        return run_script(project, script)
    manifest = flag_value(argv, "-MoviePipelineConfig")
    if manifest and "-game" in argv:
        return render(project, Path(manifest))
    sys.exit(f"fake editor: no -ExecutePythonScript= and no -game -MoviePipelineConfig= in {argv}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

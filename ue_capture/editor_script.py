"""Runs INSIDE the Unreal editor's Python: executes one qw shot job, then quits the editor.

Started by ue_capture/launcher.py as ``<Editor> <Project>.uproject -ExecutePythonScript=<this file> …`` with the
job spec's path in $QW_UE_JOB (JSON written by the launcher; see `launcher.build_job_spec`). Only the standard
library and the ``unreal`` module are available here, so this file imports nothing from qw.

Passes (their files land under ``<output_dir>/aliased`` and ``<output_dir>/reference``):

* mode ``mrq``, aliased: a Movie Render Queue job with anti-aliasing None, 1 spatial × 1 temporal sample (MRQ does
  not jitter at 1×1), motion blur and other multi-sample effects off, linear output (tone curve disabled), and
  32-bit post-process passes: qw's velocity material (SceneTexture:Velocity, NDC) and MRQ's WorldDepth (cm).
* mode ``bufvis``, aliased: the Level Sequence is stepped frame by frame in the editor with TAA's jitter on and a
  high-resolution HDR screenshot per frame; buffer visualization dumps give PreTonemapHDRColor, Velocity and
  SceneDepth, and qw's jitter material (View.TemporalAAJitter) makes the screenshot itself carry the jitter.
* reference (both modes): the same camera and frames through MRQ with N spatial samples, no TAA, same cvars.

API names follow notes/unreal.md (UE 4.26/4.27 and UE5): MoviePipelineMasterConfig vs MoviePipelinePrimaryConfig,
the ``console_variables`` map vs ``add_or_update_console_variable``. Marked [U]/[L] where unverified on an engine.
Completion arrives through the executor's finish delegate; the callbacks, executor and queue are kept in module
globals because Epic notes that otherwise garbage collection silently drops them. The result is written to the
job's status file (ok/message/files) before the editor quits.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import traceback

import unreal

JOB_ENV = "QW_UE_JOB"
QW_PACKAGE = "/Game/QW"
VELOCITY_MATERIAL = "M_QW_Velocity"  # post-process: SceneTexture:Velocity → RG (NDC, y up, current − previous)
JITTER_MATERIAL = "M_QW_Jitter"  # post-process: View.TemporalAAJitter.xy → RG (bufvis only)
WORLD_DEPTH = "/MovieRenderPipeline/Materials/MovieRenderQueue_WorldDepth.MovieRenderQueue_WorldDepth"
FILE_NAME_FORMAT = "{sequence_name}.{render_pass}.{frame_number}"
BUFVIS_BUFFERS = ("PreTonemapHDRColor", "Velocity", "SceneDepth")
SCREENSHOT_WAIT_TICKS = 600  # editor ticks to wait for one screenshot and its buffer dumps

_STATE: dict = {}  # executor, queue, tick handle, job, progress: module globals keep them alive


# ----------------------------------------------------------------------------------------------- job + status


def load_job() -> dict:
    path = os.environ.get(JOB_ENV) or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not path:
        raise RuntimeError(f"no job spec: set {JOB_ENV} to the job JSON written by qw")
    with open(path) as f:
        return json.load(f)


def write_status(job: dict, ok: bool, message: str) -> None:
    files = sorted(os.path.relpath(p, job["output_dir"])
                   for p in glob.glob(os.path.join(job["output_dir"], "*", "*.exr")))
    tmp = job["status_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"ok": ok, "message": message, "files": files, "scene": job["scene"], "shot": job["shot"]}, f)
    os.replace(tmp, job["status_file"])


def finish(ok: bool, message: str) -> None:
    """Report the result and quit. quit_editor() has no exit code, so the status file carries success."""
    job = _STATE["job"]
    unreal.log(f"qw: {job['scene']}/{job['shot']} {'done' if ok else 'FAILED'}: {message}")
    write_status(job, ok, message)
    unreal.SystemLibrary.quit_editor()


def fail(message: str) -> None:
    unreal.log_error(f"qw: {message}")
    finish(False, message)


# ----------------------------------------------------------------------------------------------- materials


def ensure_post_process_material(name: str, build) -> object:
    """Load /Game/QW/<name>, or create it (Post Process domain, After Tonemapping) with `build(material)`."""
    path = f"{QW_PACKAGE}/{name}"
    if unreal.EditorAssetLibrary.does_asset_exist(path):
        return unreal.load_asset(path)
    tools = unreal.AssetToolsHelpers.get_asset_tools()
    material = tools.create_asset(name, QW_PACKAGE, unreal.Material, unreal.MaterialFactoryNew())
    material.set_editor_property("material_domain", unreal.MaterialDomain.MD_POST_PROCESS)
    material.set_editor_property("blendable_location", unreal.BlendableLocation.BL_AFTER_TONEMAPPING)
    build(material)
    unreal.MaterialEditingLibrary.recompile_material(material)
    unreal.EditorAssetLibrary.save_loaded_asset(material)
    return material


def _build_velocity(material) -> None:
    node = unreal.MaterialEditingLibrary.create_material_expression(material, unreal.MaterialExpressionSceneTexture,
                                                                    -400, 0)
    node.set_editor_property("scene_texture_id", unreal.SceneTextureId.PPI_VELOCITY)
    unreal.MaterialEditingLibrary.connect_material_property(node, "Color", unreal.MaterialProperty.MP_EMISSIVE_COLOR)


def _build_jitter(material) -> None:
    # [U] View.TemporalAAJitter.xy is the current frame's clip-space jitter; custom HLSL can read View in
    # post-process materials.
    node = unreal.MaterialEditingLibrary.create_material_expression(material, unreal.MaterialExpressionCustom,
                                                                    -400, 0)
    node.set_editor_property("code", "return float3(View.TemporalAAJitter.xy, 0);")
    node.set_editor_property("output_type", unreal.CustomMaterialOutputType.CMOT_FLOAT3)
    unreal.MaterialEditingLibrary.connect_material_property(node, "", unreal.MaterialProperty.MP_EMISSIVE_COLOR)


# ----------------------------------------------------------------------------------------------- MRQ jobs


def primary_config_class():
    """MoviePipelinePrimaryConfig (UE 5.2+) or MoviePipelineMasterConfig (4.26 to 5.1)."""
    return getattr(unreal, "MoviePipelinePrimaryConfig", None) or unreal.MoviePipelineMasterConfig


def set_console_variables(setting, cvars: dict) -> None:
    """UE ≤5.0: the console_variables map (old values restored by MRQ); later 5.x: add_or_update_console_variable."""
    if hasattr(setting, "add_or_update_console_variable"):
        for name, value in cvars.items():
            setting.add_or_update_console_variable(name, float(value))
    else:
        setting.console_variables = {name: float(value) for name, value in cvars.items()}


def post_process_pass(material) -> object:
    entry = unreal.MoviePipelinePostProcessPass()
    entry.enabled = True
    entry.material = material
    return entry


def configure_job(job, spec: dict, pass_name: str, spatial_samples: int, materials: list) -> None:
    """Give one MRQ executor job a fresh configuration: output, anti-aliasing, colour, deferred pass, cvars, EXR.

    A new config (not the job's default) keeps project presets from leaking settings into the capture.
    """
    config = primary_config_class()()
    add = config.find_or_add_setting_by_class

    output = add(unreal.MoviePipelineOutputSetting)
    output.output_directory = unreal.DirectoryPath(os.path.join(spec["output_dir"], pass_name))
    output.file_name_format = FILE_NAME_FORMAT
    output.output_resolution = unreal.IntPoint(spec["width"], spec["height"])
    output.use_custom_frame_rate = True
    output.output_frame_rate = unreal.FrameRate(round(spec["fps"] * 1000), 1000)
    output.use_custom_playback_range = True
    output.custom_start_frame = spec["start_frame"]
    output.custom_end_frame = spec["end_frame"]  # [U] end exclusive, as qw's shot end
    output.zero_pad_frame_numbers = 4
    output.override_existing_output = True
    output.flush_disk_writes_per_shot = True

    aa = add(unreal.MoviePipelineAntiAliasingSetting)
    aa.override_anti_aliasing = True
    aa.anti_aliasing_method = unreal.AntiAliasingMethod.AAM_NONE
    aa.spatial_sample_count = spatial_samples
    aa.temporal_sample_count = 1  # temporal samples would blend motion across sub-frames
    aa.render_warm_up_count = spec["warm_up_frames"]
    aa.use_camera_cut_for_warm_up = False

    add(unreal.MoviePipelineColorSetting).disable_tone_curve = True  # linear scene colour (SCS_FinalColorHDR)
    add(unreal.MoviePipelineGameOverrideSetting).cinematic_quality_settings = True

    deferred = add(unreal.MoviePipelineDeferredPassBase)
    deferred.disable_multisample_effects = True  # no DoF/motion blur/AA show flags: pixels of all passes align
    if materials:
        deferred.use32_bit_post_process_materials = True  # [L] Python spelling of bUse32BitPostProcessMaterials
        deferred.additional_post_process_materials = [post_process_pass(m) for m in materials]  # a new list

    add(unreal.MoviePipelineImageSequenceOutput_EXR).multilayer = False  # one file per pass: predictable names
    set_console_variables(add(unreal.MoviePipelineConsoleVariableSetting), spec["cvars"][pass_name])
    config.initialize_transient_settings()
    job.set_configuration(config)  # copies the config into the job


def new_job(queue, spec: dict, pass_name: str):
    job = queue.allocate_new_job(unreal.MoviePipelineExecutorJob)
    job.job_name = f"{spec['scene']}_{spec['shot']}_{pass_name}"
    job.map = unreal.SoftObjectPath(spec["map"])
    job.sequence = unreal.SoftObjectPath(spec["level_sequence"])
    return job


def build_queue(spec: dict, with_aliased: bool):
    """The MRQ queue: the aliased pass (mode mrq) and the reference pass."""
    subsystem = unreal.get_editor_subsystem(unreal.MoviePipelineQueueSubsystem)
    queue = subsystem.get_queue()
    queue.delete_all_jobs()
    if with_aliased:
        velocity = ensure_post_process_material(VELOCITY_MATERIAL, _build_velocity)
        configure_job(new_job(queue, spec, "aliased"), spec, "aliased", 1, [velocity, unreal.load_asset(WORLD_DEPTH)])
    configure_job(new_job(queue, spec, "reference"), spec, "reference", spec["reference_samples"], [])
    return queue


def on_executor_finished(executor, success) -> None:
    finish(bool(success), "Movie Render Queue finished" if success else "Movie Render Queue reported failure")


def render_queue(queue, spec: dict) -> None:
    """Start the queue with the PIE (default) or new-process executor; completion arrives via the delegate."""
    executor_class = (unreal.MoviePipelineNewProcessExecutor if spec["executor"] == "new-process"
                      else unreal.MoviePipelinePIEExecutor)
    executor = executor_class()
    executor.on_executor_finished_delegate.add_callable_unique(on_executor_finished)
    _STATE["executor"], _STATE["queue"] = executor, queue
    executor.execute(queue)


# ----------------------------------------------------------------------------------------------- bufvis


def apply_console_variables(cvars: dict) -> None:
    for name, value in cvars.items():
        unreal.SystemLibrary.execute_console_command(None, f"{name} {value}")


def add_jitter_blendable() -> None:
    """An unbound post-process volume whose blendable writes the jitter into the final (screenshot) image."""
    volume = unreal.EditorLevelLibrary.spawn_actor_from_class(unreal.PostProcessVolume, unreal.Vector(0, 0, 0))
    volume.unbound = True
    material = ensure_post_process_material(JITTER_MATERIAL, _build_jitter)
    settings = volume.settings
    settings.weighted_blendables = unreal.WeightedBlendables([unreal.WeightedBlendable(1.0, material)])
    volume.settings = settings
    _STATE["volume"] = volume


def start_bufvis(spec: dict) -> None:
    unreal.EditorLevelLibrary.load_level(spec["map"])
    unreal.LevelSequenceEditorBlueprintLibrary.open_level_sequence(unreal.load_asset(spec["level_sequence"]))
    apply_console_variables(spec["cvars"]["aliased"])
    add_jitter_blendable()
    os.makedirs(os.path.join(spec["output_dir"], "aliased"), exist_ok=True)
    _STATE["bufvis"] = {"frame": spec["start_frame"], "waited": 0, "shot_path": None,
                        "settle": spec["warm_up_frames"]}
    _STATE["tick"] = unreal.register_slate_post_tick_callback(bufvis_tick)


def _screenshot_base(spec: dict, frame: int) -> str:
    return os.path.join(spec["output_dir"], "bufvis_tmp", f"qw_{frame:06d}")


def collect_bufvis_dumps(spec: dict, frame: int) -> bool:
    """Move a finished screenshot and its buffer dumps to aliased/{seq}.{pass}.{frame}.exr; False if incomplete."""
    base = _screenshot_base(spec, frame)
    found = {b: [p for p in glob.glob(base + "*.exr") if b.lower() in os.path.basename(p).lower()]
             for b in BUFVIS_BUFFERS}
    final = base + ".exr"
    if not os.path.isfile(final) or not all(found.values()):
        return False
    seq = spec["level_sequence"].rsplit("/", 1)[-1].split(".")[0]
    out = os.path.join(spec["output_dir"], "aliased")
    shutil.move(final, os.path.join(out, f"{seq}.{JITTER_MATERIAL}.{frame:04d}.exr"))
    for buffer, paths in found.items():
        shutil.move(paths[0], os.path.join(out, f"{seq}.{buffer}.{frame:04d}.exr"))
    return True


def stop_ticking() -> None:
    handle = _STATE.pop("tick", None)
    if handle is not None:
        unreal.unregister_slate_post_tick_callback(handle)


def bufvis_tick(delta_seconds) -> None:
    """One editor tick of the bufvis state machine: settle, screenshot, wait for its dumps, next frame."""
    spec, st = _STATE["job"], _STATE["bufvis"]
    try:
        if st["settle"] > 0:  # TAA history and streaming settle on the first frame
            unreal.LevelSequenceEditorBlueprintLibrary.set_current_time(st["frame"])
            st["settle"] -= 1
        elif st["shot_path"] is None:
            unreal.LevelSequenceEditorBlueprintLibrary.set_current_time(st["frame"])
            st["shot_path"] = _screenshot_base(spec, st["frame"]) + ".exr"
            os.makedirs(os.path.dirname(st["shot_path"]), exist_ok=True)
            unreal.AutomationLibrary.take_high_res_screenshot(spec["width"], spec["height"], st["shot_path"],
                                                              capture_hdr=True)
        elif collect_bufvis_dumps(spec, st["frame"]):
            st.update(frame=st["frame"] + 1, waited=0, shot_path=None)
            if st["frame"] >= spec["end_frame"]:
                stop_ticking()
                render_queue(build_queue(spec, with_aliased=False), spec)
        else:
            st["waited"] += 1
            if st["waited"] > SCREENSHOT_WAIT_TICKS:
                stop_ticking()
                fail(f"frame {st['frame']}: screenshot or buffer dumps {BUFVIS_BUFFERS} did not appear at "
                     f"{st['shot_path']}")
    except Exception:  # a Python error inside a tick would otherwise repeat every frame
        stop_ticking()
        fail(traceback.format_exc())


# ----------------------------------------------------------------------------------------------- entry


def main() -> None:
    try:
        spec = load_job()
    except Exception as exc:  # no job, no status file to write: log and quit
        unreal.log_error(f"qw: cannot read the job spec: {exc}")
        unreal.SystemLibrary.quit_editor()
        return
    _STATE["job"] = spec
    try:
        if spec["mode"] == "bufvis":
            start_bufvis(spec)
        else:
            render_queue(build_queue(spec, with_aliased=True), spec)
    except Exception:
        fail(traceback.format_exc())


if __name__ == "__main__":
    main()

"""Runs INSIDE the Unreal editor's Python: stage 1 of a qw capture, which prepares one shot's render.

Started by ue_capture/launcher.py as ``<Editor-Cmd> <Project>.uproject -ExecutePythonScript=<this file> …`` with the
job spec's path in $QW_UE_JOB (JSON written by the launcher; see `launcher.build_job_spec`). The editor runs this
file once and quits on its next tick (UE 4.27 always; UE5 unless a script asks to stay alive, which this one never
does), so everything here is synchronous and nothing renders in this process. The script

1. checks the engine: its version against the manifest's, and on UE4 the read-only ``r.BasePassOutputsVelocity``
   that must be set in the project's DefaultEngine.ini;
2. creates qw's two post-process materials under /Game/QW if they are missing: ``SceneTexture:Velocity`` (NDC,
   y up, current minus previous) and ``SceneTexture:SceneDepth`` (planar depth, cm), both into Emissive;
3. authors the shot's Level Sequence from the camera keys qw baked for every frame (or checks the manifest's
   existing one), and reports each frame's world pose so that qw can record the cameras;
4. builds a Movie Render Queue with an aliased and a reference job and saves it as a queue manifest (.utxt)
   at the job's ``queue_manifest`` path (under the project's Saved folder), which stage 2 renders with
   ``-game -MoviePipelineConfig=<queue_config>`` (that path relative to Saved);

and writes the job's status file (ok, message, what it found) last. Only the standard library and ``unreal``
exist in the editor's Python, so this file imports nothing from qw.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import traceback

import unreal

JOB_ENV = "QW_UE_JOB"
QW_PACKAGE = "/Game/QW"
VELOCITY_MATERIAL = "M_QW_Velocity"
DEPTH_MATERIAL = "M_QW_Depth"
SAMPLES_DIR_FORMAT = "accumulated/{render_pass}.{frame_number}"  # the N-sample average, next to the samples
FRAMES_FORMAT = "{render_pass}.{frame_number}"

# Members that moved between engine versions, newest name first: the first one an object has is used.
# (owner class in 4.27 / 5.x, member) alternatives; tests check that every supported version has one of them.
MOVED = {
    "add_root_track": (("MovieSceneSequence", "add_track"), ("MovieSceneSequence", "add_master_track")),
    "section_channels": (("MovieSceneSection", "get_all_channels"), ("MovieSceneSection", "get_channels")),
    "binding_id": (("MovieSceneSequence", "get_binding_id"), ("SequencerBindingProxy", "get_binding_id")),
    "set_cvar": (("MoviePipelineConsoleVariableSetting", "add_or_update_console_variable"),
                 ("MoviePipelineConsoleVariableSetting", "console_variables")),
    "high_precision": (("MoviePipelinePostProcessPass", "high_precision_output"),
                       ("MoviePipelineDeferredPassBase", "use32_bit_post_process_materials")),
    "after_tonemapping": (("BlendableLocation", "BL_SCENE_COLOR_AFTER_TONEMAPPING"),
                          ("BlendableLocation", "BL_AFTER_TONEMAPPING")),
}


class PrepareError(Exception):
    """A problem the user has to fix; its message goes to the status file as is."""


# ----------------------------------------------------------------------------------------------- job + status


def load_job() -> dict:
    path = os.environ.get(JOB_ENV) or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not path:
        raise PrepareError(f"no job spec: set {JOB_ENV} to the job JSON written by qw")
    with open(path) as f:
        return json.load(f)


def write_status(job: dict, report: dict) -> None:
    tmp = job["status_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"scene": job["scene"], "shot": job["shot"], **report}, f, indent=1)
    os.replace(tmp, job["status_file"])


def has(obj, name: str) -> bool:
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- engine checks


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split("-")[0].split(".")[:2]
    return int(major), int(minor)


def check_engine(job: dict) -> dict:
    """The engine's version and the read-only cvars qw relies on; a PrepareError when they do not fit the job."""
    version = unreal.SystemLibrary.get_engine_version()
    if version_tuple(version) != version_tuple(job["engine_version"]):
        raise PrepareError(f"the editor is Unreal {version}, the manifest says engine_version "
                           f"{job['engine_version']!r}: set unreal.engine_version to match")
    found = {name: unreal.SystemLibrary.get_console_variable_int_value(name) for name in job["required_cvars"]}
    wrong = {name: value for name, value in found.items() if value != job["required_cvars"][name]}
    if wrong:
        lines = ", ".join(f"{name}={job['required_cvars'][name]}" for name in wrong)
        raise PrepareError(f"project setting missing: {wrong} in this editor; add {lines} under "
                           "[/Script/Engine.RendererSettings] in the project's Config/DefaultEngine.ini")
    return {"engine_version": version, "cvars_read": found}


# ----------------------------------------------------------------------------------------------- materials


def ensure_post_process_material(name: str, scene_texture) -> str:
    """/Game/QW/<name>: Post Process domain, After Tonemapping, one SceneTexture node into Emissive, negative
    emissive allowed (the compiled shader clamps Emissive at 0 otherwise, and velocity is signed). A material saved
    by an older qw without the flag is fixed and recompiled."""
    path = f"{QW_PACKAGE}/{name}"
    if unreal.EditorAssetLibrary.does_asset_exist(path):
        material = unreal.EditorAssetLibrary.load_asset(path)
        if material.get_editor_property("allow_negative_emissive_color"):
            return f"{path}.{name}"
    else:
        tools = unreal.AssetToolsHelpers.get_asset_tools()
        material = tools.create_asset(name, QW_PACKAGE, unreal.Material, unreal.MaterialFactoryNew())
        material.set_editor_property("material_domain", unreal.MaterialDomain.MD_POST_PROCESS)
        material.set_editor_property("blendable_location", getattr(
            unreal.BlendableLocation, moved_name(unreal.BlendableLocation, "after_tonemapping")))
        node = unreal.MaterialEditingLibrary.create_material_expression(
            material, unreal.MaterialExpressionSceneTexture, -400, 0)
        node.set_editor_property("scene_texture_id", scene_texture)
        unreal.MaterialEditingLibrary.connect_material_property(node, "Color",
                                                                unreal.MaterialProperty.MP_EMISSIVE_COLOR)
    material.set_editor_property("allow_negative_emissive_color", True)  # allowed: post-process is unlit
    unreal.MaterialEditingLibrary.recompile_material(material)
    unreal.EditorAssetLibrary.save_loaded_asset(material)
    return f"{path}.{name}"


# ----------------------------------------------------------------------------------------------- sequence


def split_object_path(path: str) -> tuple[str, str]:
    """'/Game/QW/Sequences/QW_kite.QW_kite' → ('/Game/QW/Sequences', 'QW_kite')."""
    package = path.split(".")[0]
    folder, _, name = package.rpartition("/")
    return folder, name


def rotate_yaw(x: float, y: float, yaw_degrees: float) -> tuple[float, float]:
    """Unreal's yaw turns +x (forward) towards +y (right)."""
    c, s = math.cos(math.radians(yaw_degrees)), math.sin(math.radians(yaw_degrees))
    return x * c - y * s, x * s + y * c


def key_pose(key: dict, origin: tuple[float, float, float, float]) -> tuple[float, ...]:
    """World (x, y, z, roll, pitch, yaw) of a camera key relative to `origin` (x, y, z, yaw)."""
    ox, oy, oz, oyaw = origin
    (px, py, pz), (pitch, yaw, roll) = key["position"], key["rotation"]
    dx, dy = rotate_yaw(px, py, oyaw)
    return ox + dx, oy + dy, oz + pz, roll, pitch, oyaw + yaw


def path_origin(job: dict) -> tuple[float, float, float, float]:
    """(x, y, z, yaw) of the map's PlayerStart (the first by position if there are several), or the origin."""
    if job["camera"]["origin"] == "world":
        return 0.0, 0.0, 0.0, 0.0
    if not unreal.EditorLevelLibrary.load_level(job["map"].split(".")[0]):
        raise PrepareError(f"map {job['map']} could not be loaded; set unreal.map to a /Game/... map of the project")
    poses = sorted(pose(a) for a in unreal.EditorLevelLibrary.get_all_level_actors()
                   if isinstance(a, unreal.PlayerStart))
    if not poses:
        raise PrepareError(f"map {job['map']} has no PlayerStart; set unreal.camera.origin: world")
    return poses[0]


def pose(actor) -> tuple[float, float, float, float]:
    location, rotation = actor.get_actor_location(), actor.get_actor_rotation()
    return location.x, location.y, location.z, rotation.yaw


def author_sequence(job: dict) -> tuple[str, dict]:
    """(Re)create the shot's Level Sequence: one spawned camera, one camera cut, keyed transform; returns its path
    and the world pose (x, y, z, roll, pitch, yaw) keyed at each frame."""
    camera, path = job["camera"], job["level_sequence"]
    folder, name = split_object_path(path)
    if unreal.EditorAssetLibrary.does_asset_exist(f"{folder}/{name}"):
        unreal.EditorAssetLibrary.delete_asset(f"{folder}/{name}")
    tools = unreal.AssetToolsHelpers.get_asset_tools()
    seq = tools.create_asset(name, folder, unreal.LevelSequence, unreal.LevelSequenceFactoryNew())
    first, end = camera["keys"][0]["frame"], camera["keys"][-1]["frame"] + 1
    seq.set_display_rate(unreal.FrameRate(*job["frame_rate"]))
    seq.set_playback_start(first)
    seq.set_playback_end(end)

    binding = seq.add_spawnable_from_class(unreal.CameraActor)
    component = binding.get_object_template().get_editor_property("camera_component")
    component.set_editor_property("field_of_view", float(camera["fov"]))
    component.set_editor_property("constrain_aspect_ratio", False)  # the output resolution sets the aspect

    add_root_track = getattr(seq, moved_name(seq, "add_root_track"))
    cut = add_root_track(unreal.MovieSceneCameraCutTrack).add_section()
    cut.set_range(first, end)
    cut.set_camera_binding_id(binding_id(seq, binding))

    transform = binding.add_track(unreal.MovieScene3DTransformTrack).add_section()
    transform.set_range(first, end)
    channels = getattr(transform, moved_name(transform, "section_channels"))()
    origin = path_origin(job)
    poses = {}
    for key in camera["keys"]:  # one per frame (qw bakes them), so every rendered frame plays a key exactly
        poses[key["frame"]] = key_pose(key, origin)
        # Transform channels: location x, y, z, rotation roll (x), pitch (y), yaw (z), then scale and weight.
        for channel, value in zip(channels[:6], poses[key["frame"]]):
            channel.add_key(unreal.FrameNumber(key["frame"]), value,  # at the display rate, the default
                            interpolation=unreal.MovieSceneKeyInterpolation.AUTO)
    unreal.EditorAssetLibrary.save_loaded_asset(seq)
    return path, poses


def binding_id(seq, binding):
    if has(seq, "get_binding_id"):
        return seq.get_binding_id(binding)
    return binding.get_binding_id()


def moved_name(obj, purpose: str) -> str:
    """The name `obj` has for a member that was renamed between engine versions (see MOVED)."""
    names = [member for _, member in MOVED[purpose]]
    for name in names:
        if has(obj, name):
            return name
    raise PrepareError(f"this engine's {type(obj).__name__} has none of {names}; qw supports UE 4.27 and 5.5+")


def check_existing_sequence(job: dict) -> str:
    seq = unreal.EditorAssetLibrary.load_asset(job["level_sequence"].split(".")[0])
    if seq is None:
        raise PrepareError(f"Level Sequence {job['level_sequence']} not found in the project")
    rate = seq.get_display_rate()
    if [rate.numerator, rate.denominator] != list(job["frame_rate"]):
        raise PrepareError(f"{job['level_sequence']} plays at {rate.numerator}/{rate.denominator} fps, the manifest "
                           f"at {job['fps']:g}: shot frames are read at the sequence's display rate, so they must "
                           "agree")
    return job["level_sequence"]


# ----------------------------------------------------------------------------------------------- MRQ queue


def set_console_variables(setting, cvars: dict) -> None:
    if moved_name(setting, "set_cvar") == "add_or_update_console_variable":
        for name, value in cvars.items():
            setting.add_or_update_console_variable(name, float(value))
    else:
        setting.set_editor_property("console_variables", {name: float(value) for name, value in cvars.items()})


def post_process_passes(materials: list, deferred) -> list:
    """Enabled passes for `materials` at 32 bit: per pass from 5.5, per deferred pass before."""
    passes = []
    for path in materials:
        entry = unreal.MoviePipelinePostProcessPass()
        entry.set_editor_property("enabled", True)
        entry.set_editor_property("material", unreal.EditorAssetLibrary.load_asset(path.split(".")[0]))
        passes.append(entry)
    per_pass = has(passes[0], "high_precision_output") if passes else False
    for entry in passes if per_pass else []:
        entry.set_editor_property("high_precision_output", True)
    if passes and not per_pass:
        deferred.set_editor_property(moved_name(deferred, "high_precision"), True)
    return passes


def configure(config, job: dict, pass_name: str) -> None:
    """One job's settings: frames, samples, linear colour, passes, cvars, EXR output."""
    spec = job["passes"][pass_name]
    add = config.find_or_add_setting_by_class
    samples = spec["spatial_samples"]

    output = add(unreal.MoviePipelineOutputSetting)
    output.set_editor_property("output_directory", unreal.DirectoryPath(spec["output_dir"]))
    output.set_editor_property("file_name_format", SAMPLES_DIR_FORMAT if spec["write_all_samples"]
                               else FRAMES_FORMAT)
    output.set_editor_property("output_resolution", unreal.IntPoint(job["width"], job["height"]))
    output.set_editor_property("use_custom_playback_range", True)
    output.set_editor_property("custom_start_frame", job["start_frame"])
    output.set_editor_property("custom_end_frame", job["end_frame"])  # exclusive, at the display rate
    output.set_editor_property("zero_pad_frame_numbers", 4)
    output.set_editor_property("override_existing_output", True)

    aa = add(unreal.MoviePipelineAntiAliasingSetting)
    aa.set_editor_property("override_anti_aliasing", True)
    aa.set_editor_property("anti_aliasing_method", unreal.AntiAliasingMethod.AAM_NONE)  # MRQ's jitter needs no TAA
    aa.set_editor_property("spatial_sample_count", samples)
    aa.set_editor_property("temporal_sample_count", 1)  # temporal samples would blend motion across sub-frames
    # Warm-up before each shot: MRQ holds the sequence at the shot's first frame and ticks the world once per engine
    # warm-up frame (4.27 MoviePipelineTiming.cpp 190-199, 224-265), so particles, cloth and physics have run for
    # warm_up_frames frames of world time before frame 0. With render_warm_up_count alone it ticks only once
    # (MoviePipeline.cpp 849-851). render_warm_up_frames also renders each of those ticks (one sample each): GPU
    # particles only simulate when rendered (MoviePipelineAntiAliasingSetting.h 100-106). The render warm-up
    # samples, all in the last of those ticks, give temporal effects their history.
    aa.set_editor_property("engine_warm_up_count", job["warm_up_frames"])
    aa.set_editor_property("render_warm_up_frames", True)
    aa.set_editor_property("render_warm_up_count", job["warm_up_frames"])
    aa.set_editor_property("use_camera_cut_for_warm_up", False)

    add(unreal.MoviePipelineColorSetting).set_editor_property("disable_tone_curve", True)  # linear scene colour
    add(unreal.MoviePipelineGameOverrideSetting).set_editor_property("cinematic_quality_settings", True)
    add(unreal.MoviePipelineDebugSettings).set_editor_property("write_all_samples", spec["write_all_samples"])

    deferred = add(unreal.MoviePipelineDeferredPassBase)
    deferred.set_editor_property("disable_multisample_effects", True)  # no DoF/motion blur: all passes align
    deferred.set_editor_property("additional_post_process_materials",
                                 post_process_passes(spec["materials"], deferred))

    exr = add(unreal.MoviePipelineImageSequenceOutput_EXR)
    exr.set_editor_property("multilayer", False)  # one file per pass
    exr.set_editor_property("compression", unreal.EXRCompressionFormat.ZIP)  # lossless
    set_console_variables(add(unreal.MoviePipelineConsoleVariableSetting), spec["cvars"])


def save_queue(job: dict, sequence: str) -> str:
    """Both jobs in a new queue, saved as a text manifest and copied to the job's queue_manifest path."""
    queue = unreal.MoviePipelineQueue()
    for pass_name in ("aliased", "reference"):
        item = queue.allocate_new_job(unreal.MoviePipelineExecutorJob)
        item.set_editor_property("job_name", f"{job['scene']}_{job['shot']}_{pass_name}")
        item.set_editor_property("map", unreal.SoftObjectPath(job["map"]))
        item.set_editor_property("sequence", unreal.SoftObjectPath(sequence))
        configure(item.get_configuration(), job, pass_name)
    _, saved = unreal.MoviePipelineEditorLibrary.save_queue_to_manifest_file(queue)
    os.makedirs(os.path.dirname(job["queue_manifest"]), exist_ok=True)
    shutil.copyfile(saved, job["queue_manifest"])  # per shot, under Saved/: the render loads it from there
    return job["queue_manifest"]


# ----------------------------------------------------------------------------------------------- entry


def prepare(job: dict) -> dict:
    report = check_engine(job)
    for name, scene_texture in ((VELOCITY_MATERIAL, unreal.SceneTextureId.PPI_VELOCITY),
                                (DEPTH_MATERIAL, unreal.SceneTextureId.PPI_SCENE_DEPTH)):
        ensure_post_process_material(name, scene_texture)
    if job["camera"]:
        sequence, poses = author_sequence(job)
        report["camera"] = {"fov": job["camera"]["fov"], "poses": {str(f): list(p) for f, p in poses.items()}}
    else:
        sequence = check_existing_sequence(job)
    return {**report, "ok": True, "message": "prepared", "level_sequence": sequence,
            "queue_manifest": save_queue(job, sequence)}


def main() -> None:
    try:
        job = load_job()
    except Exception as exc:  # no job, so no status file to write: the launcher reports the missing status
        unreal.log_error(f"qw: cannot read the job spec: {exc}")
        return
    try:
        report = prepare(job)
    except PrepareError as exc:
        report = {"ok": False, "message": str(exc), "user_error": True}
    except Exception:
        report = {"ok": False, "message": traceback.format_exc()}
    (unreal.log if report["ok"] else unreal.log_error)(f"qw: {job['scene']}/{job['shot']}: {report['message']}")
    write_status(job, report)


if __name__ == "__main__":
    main()

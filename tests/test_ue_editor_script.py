"""The in-editor script against the `fake_unreal` stand-in: the MRQ job settings of both passes, both engine
flavours, the bufvis frame stepping, completion through the finish delegate, and failures reported in status."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import fake_unreal
import numpy as np
import pytest
from ue_formats import write_exr

from datagen.manifests import SceneManifest
from ue_capture.launcher import build_job_spec

W, H = 40, 24


def manifest(mode: str = "mrq", engine: str = "4.27", **unreal) -> SceneManifest:
    return SceneManifest.model_validate(dict(
        name="Kite", backend="ue4", capture=dict(resolution=(W, H), fps=30, mode=mode, reference_samples=64),
        unreal=dict(engine_version=engine, project="/p/Kite.uproject", map="/Game/Maps/GDC_Landscape_01",
                    level_sequence="/Game/Cine/KiteSeq.KiteSeq", warm_up_frames=3, **unreal),
        shots=[dict(name="s1", start=100, end=104)]))


@pytest.fixture
def run_script(tmp_path, monkeypatch):
    """Install a fresh stand-in of the flavour, write the job, run the editor script's main()."""

    def run(m: SceneManifest, flavour: str, prepare=None):
        ue = fake_unreal.install(flavour)
        if prepare:
            prepare(ue)
        spec = build_job_spec(m, m.shots[0], tmp_path / "raw")
        (tmp_path / "raw").mkdir(exist_ok=True)
        job = tmp_path / "job.json"
        job.write_text(json.dumps(spec))
        monkeypatch.setenv("QW_UE_JOB", str(job))
        sys.modules.pop("ue_capture.editor_script", None)
        script = importlib.import_module("ue_capture.editor_script")
        script.main()
        return ue, spec

    yield run
    sys.modules.pop("unreal", None)
    sys.modules.pop("ue_capture.editor_script", None)


def settings(ue, job):
    config = job.configuration
    return {name: config.setting(getattr(ue, name)) for name in (
        "MoviePipelineOutputSetting", "MoviePipelineAntiAliasingSetting", "MoviePipelineColorSetting",
        "MoviePipelineDeferredPassBase", "MoviePipelineConsoleVariableSetting", "MoviePipelineImageSequenceOutput_EXR")}


def status(spec) -> dict:
    with open(spec["status_file"]) as f:
        return json.load(f)


@pytest.mark.parametrize("flavour", ["4.27", "5.3"])
def test_mrq_jobs_for_aliased_and_reference_passes(run_script, flavour):
    ue, spec = run_script(manifest(engine=flavour), flavour)
    aliased_job, reference_job = ue.subsystem.queue.jobs
    assert aliased_job.job_name == "Kite_s1_aliased" and reference_job.job_name == "Kite_s1_reference"
    assert aliased_job.sequence == ("SoftObjectPath", "/Game/Cine/KiteSeq.KiteSeq")
    assert aliased_job.map == ("SoftObjectPath", "/Game/Maps/GDC_Landscape_01")
    expected_config = "MoviePipelinePrimaryConfig" if flavour == "5.3" else "MoviePipelineMasterConfig"
    for job, samples in ((aliased_job, 1), (reference_job, 64)):
        assert type(job.configuration).__name__ == expected_config and job.configuration.initialized
        s = settings(ue, job)
        aa = s["MoviePipelineAntiAliasingSetting"]
        assert (aa.override_anti_aliasing, aa.anti_aliasing_method) == (True, "AntiAliasingMethod.AAM_NONE")
        assert (aa.spatial_sample_count, aa.temporal_sample_count, aa.render_warm_up_count) == (samples, 1, 3)
        assert s["MoviePipelineColorSetting"].disable_tone_curve is True
        assert s["MoviePipelineDeferredPassBase"].disable_multisample_effects is True
        assert s["MoviePipelineImageSequenceOutput_EXR"].multilayer is False
        out = s["MoviePipelineOutputSetting"]
        assert out.output_resolution == ("IntPoint", W, H)
        assert (out.custom_start_frame, out.custom_end_frame, out.use_custom_playback_range) == (100, 104, True)
        assert out.output_frame_rate == ("FrameRate", 30000, 1000) and out.flush_disk_writes_per_shot
        cvar_setting = s["MoviePipelineConsoleVariableSetting"]
        cvars = cvar_setting._values["cvars" if flavour == "5.3" else "console_variables"]
        assert cvars["r.MotionBlurQuality"] == 0.0 and cvars["r.DefaultFeature.AutoExposure"] == 0.0
        force = "r.Velocity.ForceOutput" if flavour == "5.3" else "r.BasePassForceOutputsVelocity"
        assert cvars[force] == 1.0
        assert cvars["r.AntiAliasingMethod" if flavour == "5.3" else "r.DefaultFeature.AntiAliasing"] == 0.0
    deferred = settings(ue, aliased_job)["MoviePipelineDeferredPassBase"]
    assert deferred.use32_bit_post_process_materials is True
    materials = [(p.enabled, p.material.path) for p in deferred.additional_post_process_materials]
    assert materials == [(True, "/Game/QW/M_QW_Velocity"), (True, ue_world_depth())]
    velocity = ue.state["assets"]["/Game/QW/M_QW_Velocity"]
    assert velocity.material_domain == "MaterialDomain.MD_POST_PROCESS"
    assert velocity.expressions[0].scene_texture_id == "SceneTextureId.PPI_VELOCITY"
    assert settings(ue, reference_job)["MoviePipelineDeferredPassBase"].additional_post_process_materials is None
    assert ("execute", "MoviePipelinePIEExecutor", ["Kite_s1_aliased", "Kite_s1_reference"]) in ue.calls
    assert ue.state["quit"] == 0  # still rendering: nothing reported yet
    ue.complete_render(True)
    assert status(spec)["ok"] is True and ue.state["quit"] == 1


def ue_world_depth() -> str:
    return "/MovieRenderPipeline/Materials/MovieRenderQueue_WorldDepth.MovieRenderQueue_WorldDepth"


def test_manifest_cvars_override_and_existing_material_is_reused(run_script):
    m = manifest(cvars={"r.DefaultFeature.AutoExposure": 1})
    ue, _ = run_script(m, "4.27", prepare=lambda ue: ue.state["assets"].setdefault(
        "/Game/QW/M_QW_Velocity", ue.load_asset("/Game/QW/M_QW_Velocity")))
    cvars = settings(ue, ue.subsystem.queue.jobs[0])["MoviePipelineConsoleVariableSetting"].console_variables
    assert cvars["r.DefaultFeature.AutoExposure"] == 1.0 and cvars["r.MotionBlurQuality"] == 0.0
    assert not [c for c in ue.calls if c[0] == "create_asset"]  # the project's material is used as is


def test_render_failure_is_reported_and_editor_quits(run_script):
    ue, spec = run_script(manifest(executor="new-process"), "4.27")
    assert ue.calls[-1] == ("execute", "MoviePipelineNewProcessExecutor", ["Kite_s1_aliased", "Kite_s1_reference"])
    ue.complete_render(False)
    st = status(spec)
    assert st["ok"] is False and "reported failure" in st["message"] and ue.state["quit"] == 1


def test_script_error_is_reported_in_status(run_script):
    """An API the engine lacks fails the job loudly: status ok=false with the traceback, and the editor quits."""
    ue, spec = run_script(manifest(), "4.27", prepare=lambda ue: ue.__dict__.pop("MoviePipelineColorSetting"))
    st = status(spec)
    assert st["ok"] is False and "MoviePipelineColorSetting is not modelled" in st["message"]
    assert ue.state["quit"] == 1 and not ue.state["executors"]


def test_stand_in_rejects_unmodelled_api():
    ue = fake_unreal.install("4.27")
    with pytest.raises(AttributeError):
        ue.MoviePipelinePrimaryConfig  # UE4 has only the Master config
    with pytest.raises(AttributeError):
        ue.MoviePipelineOutputSetting().output_dir = "/tmp"  # a misspelt property
    with pytest.raises(AttributeError):
        ue.MoviePipelineConsoleVariableSetting().add_or_update_console_variable("r.X", 1)  # UE5-only method


def test_bufvis_steps_frames_with_taa_and_collects_dumps(run_script):
    def engine_writes_dumps(w, h, filename):
        base = filename[:-4]
        write_exr(Path(filename), np.zeros((h, w, 3)))
        for buffer in ("PreTonemapHDRColor", "Velocity", "SceneDepth"):
            write_exr(Path(f"{base}_{buffer}.exr"), np.zeros((h, w, 3)))

    ue, spec = run_script(manifest(mode="bufvis"), "4.27",
                          prepare=lambda ue: ue.state.__setitem__("on_screenshot", engine_writes_dumps))
    commands = ue.console_commands()
    assert "r.DefaultFeature.AntiAliasing 2" in commands and "r.BufferVisualizationDumpFrames 1" in commands
    assert "r.BufferVisualizationDumpFramesAsHDR 1" in commands and "r.TemporalAACurrentFrameWeight 1" in commands
    assert ("spawn", "PostProcessVolume") in ue.calls and "/Game/QW/M_QW_Jitter" in ue.state["assets"]
    ue.tick(3 + 2 * 4 + 1)
    times = [c[1] for c in ue.calls if c[0] == "set_time"]
    assert times[:3] == [100, 100, 100] and sorted(set(times)) == [100, 101, 102, 103]
    assert [s[3] for s in ue.state["screenshots"]] == [True] * 4  # HDR screenshots
    aliased = sorted(p.name for p in (Path(spec["output_dir"]) / "aliased").iterdir())
    assert aliased[:2] == ["KiteSeq.M_QW_Jitter.0100.exr", "KiteSeq.M_QW_Jitter.0101.exr"]
    assert "KiteSeq.Velocity.0103.exr" in aliased and len(aliased) == 16
    assert [j.job_name for j in ue.subsystem.queue.jobs] == ["Kite_s1_reference"]  # reference via MRQ afterwards
    ue.complete_render(True)
    assert status(spec)["ok"] is True


def test_bufvis_missing_dumps_time_out_with_a_message(run_script, monkeypatch):
    ue, spec = run_script(manifest(mode="bufvis"), "4.27")
    monkeypatch.setattr(sys.modules["ue_capture.editor_script"], "SCREENSHOT_WAIT_TICKS", 5)
    ue.tick(3 + 1 + 7)
    st = status(spec)
    assert st["ok"] is False and "did not appear" in st["message"] and not ue.state["ticks"]


"""The in-editor prepare script against the `fake_unreal` stand-in of UE 4.27 and 5.5: the queue it saves
(both jobs' settings, 32-bit passes the way each version spells them), the Level Sequence it authors from camera
keys, its materials, and the problems it reports instead of preparing."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import fake_unreal
import pytest

from qw.datagen.manifests import SceneManifest
from qw.ue_capture.launcher import build_job_spec

W, H = 40, 24
START = ((1000.0, -500.0, 200.0), 90.0)  # the map's PlayerStart: location (cm), yaw (degrees)


def manifest(engine: str = "4.27", **unreal) -> SceneManifest:
    source = dict(engine_version=engine, project="/p/Kite.uproject", map="/Game/Maps/GDC_Landscape_01",
                  warm_up_frames=3)
    source.update(unreal or {"camera": dict(fps=30, fov=60, keys=[
        dict(frame=90, position=(0, 0, 150), rotation=(0, 0, 0)),
        dict(frame=120, position=(400, 100, 250), rotation=(-10, 45, 2))])})
    return SceneManifest.model_validate(dict(
        name="kite", backend="ue4", capture=dict(resolution=(W, H), fps=30, mode="mrq", reference_samples=64,
                                                 jitter_cycle=8),
        unreal=source, shots=[dict(name="s1", start=100, end=104)]))


@pytest.fixture
def run_script(tmp_path, monkeypatch):
    """Install a fresh stand-in of the flavour, write the job, run the script's main(); returns (ue, status)."""

    def run(m: SceneManifest, flavour: str, cvars=None, player_start=START):
        ue = fake_unreal.install(flavour, tmp_path)
        ue._state["cvars"] = {"r.BasePassOutputsVelocity": 1} if cvars is None else cvars
        if player_start:
            ue._add_player_start(*player_start)
        (tmp_path / "Content" / "Maps").mkdir(parents=True, exist_ok=True)
        (tmp_path / "Content" / "Maps" / "GDC_Landscape_01.umap").write_text("")  # the map the fake can load
        spec = build_job_spec(m, m.shots[0], tmp_path / "work", m.unreal.map, tmp_path / "Kite.uproject")
        (tmp_path / "work").mkdir(exist_ok=True)
        (tmp_path / "work" / "job.json").write_text(json.dumps(spec))
        monkeypatch.setenv("QW_UE_JOB", str(tmp_path / "work" / "job.json"))
        sys.modules.pop("qw.ue_capture.editor_script", None)
        importlib.import_module("qw.ue_capture.editor_script").main()
        return ue, json.loads((tmp_path / "work" / "prepare.json").read_text())

    yield run
    sys.modules.pop("unreal", None)
    sys.modules.pop("qw.ue_capture.editor_script", None)


def saved(tmp_path: Path, asset: str) -> dict:
    return json.loads((tmp_path / "Content" / f"{asset}.uasset.json").read_text())


@pytest.mark.parametrize("flavour", ["4.27", "5.5"])
def test_prepare_saves_a_queue_of_both_jobs(tmp_path, run_script, flavour):
    ue, status = run_script(manifest(flavour), flavour)
    assert status["ok"], status["message"]
    assert status["engine_version"] == fake_unreal.VERSIONS[flavour]
    queue = json.loads(Path(status["queue_manifest"]).read_text())
    aliased, reference = queue["jobs"]
    assert (aliased["job_name"], reference["job_name"]) == ("kite_s1_aliased", "kite_s1_reference")
    assert aliased["sequence"]["path"] == "/Game/QW/Sequences/QW_kite.QW_kite"
    assert aliased["map"]["path"] == "/Game/Maps/GDC_Landscape_01.GDC_Landscape_01"
    for job, samples in ((aliased, 8), (reference, 64)):
        s = job["settings"]
        aa, out = s["MoviePipelineAntiAliasingSetting"], s["MoviePipelineOutputSetting"]
        assert (aa["anti_aliasing_method"], aa["spatial_sample_count"], aa["temporal_sample_count"]) == (
            "AntiAliasingMethod.AAM_NONE", samples, 1)
        # world time passes before frame 0 (engine warm-up frames, rendered for GPU particles), then render samples
        assert (aa["engine_warm_up_count"], aa["render_warm_up_frames"], aa["render_warm_up_count"]) == (3, True, 3)
        assert aa["use_camera_cut_for_warm_up"] is False
        assert (out["custom_start_frame"], out["custom_end_frame"]) == (100, 104)  # end exclusive, as MRQ reads it
        assert out["output_resolution"] == {"x": W, "y": H}
        assert s["MoviePipelineColorSetting"]["disable_tone_curve"] is True
        assert s["MoviePipelineImageSequenceOutput_EXR"]["compression"] == "EXRCompressionFormat.ZIP"
        cvars = s["MoviePipelineConsoleVariableSetting"]["console_variables"]
        assert cvars["r.TemporalAAFilterSize"] == 1.0 and cvars["r.MotionBlurQuality"] == 0.0
    assert aliased["settings"]["MoviePipelineDebugSettings"]["write_all_samples"] is True
    assert reference["settings"]["MoviePipelineDebugSettings"]["write_all_samples"] is True  # qw takes the mean
    assert Path(status["queue_manifest"]) == tmp_path / "Saved" / "MovieRenderPipeline" / "QW_kite_s1.utxt"
    deferred = aliased["settings"]["MoviePipelineDeferredPassBase"]
    passes = deferred["additional_post_process_materials"]
    assert [p["material"] for p in passes] == ["/Game/QW/M_QW_Velocity", "/Game/QW/M_QW_Depth"]
    if flavour == "5.5":  # the deferred pass's 32-bit switch is gone: per pass instead
        assert "use32_bit_post_process_materials" not in deferred
        assert all(p["enabled"] and p["high_precision_output"] for p in passes)
    else:
        assert deferred["use32_bit_post_process_materials"] is True
        assert all(p["enabled"] and "high_precision_output" not in p for p in passes)
    assert reference["settings"]["MoviePipelineDeferredPassBase"]["additional_post_process_materials"] == []
    velocity, depth = saved(tmp_path, "QW/M_QW_Velocity"), saved(tmp_path, "QW/M_QW_Depth")
    assert velocity["expressions"][0]["scene_texture_id"] == "SceneTextureId.PPI_VELOCITY"
    assert depth["expressions"][0]["scene_texture_id"] == "SceneTextureId.PPI_SCENE_DEPTH"
    after = "BL_SCENE_COLOR_AFTER_TONEMAPPING" if flavour == "5.5" else "BL_AFTER_TONEMAPPING"
    assert velocity["blendable_location"] == f"BlendableLocation.{after}"
    assert velocity["material_domain"] == "MaterialDomain.MD_POST_PROCESS"
    assert velocity["compiled"]["allow_negative_emissive_color"] is True  # compiled with it: velocity is signed


def test_a_material_saved_without_negative_emissive_is_fixed(tmp_path, run_script):
    """A velocity material an older qw saved (flag unset) renders clamped at 0; prepare sets it and recompiles."""
    run_script(manifest(), "4.27")
    file = tmp_path / "Content" / "QW" / "M_QW_Velocity.uasset.json"
    old = json.loads(file.read_text())
    old.pop("allow_negative_emissive_color")
    old["compiled"]["allow_negative_emissive_color"] = False
    file.write_text(json.dumps(old))
    _, status = run_script(manifest(), "4.27")
    assert status["ok"] and saved(tmp_path, "QW/M_QW_Velocity")["compiled"]["allow_negative_emissive_color"]


def test_a_map_the_engine_cannot_load_is_reported(tmp_path, run_script):
    m = manifest(map="/Game/Maps/Nowhere", camera=manifest().unreal.camera.model_dump())
    _, status = run_script(m, "4.27")
    assert not status["ok"] and status["user_error"] and "map /Game/Maps/Nowhere.Nowhere could not be loaded" \
        in status["message"]


def test_authored_sequence_keys_are_relative_to_the_player_start(tmp_path, run_script):
    _, status = run_script(manifest(), "4.27")
    seq = saved(tmp_path, "QW/Sequences/QW_kite")
    assert status["level_sequence"] == "/Game/QW/Sequences/QW_kite.QW_kite"
    assert seq["display_rate"] == [30, 1] and seq["playback"] == [90, 121] and seq["cuts"] == [[90, 121]]
    assert seq["camera"] == {"field_of_view": 60.0, "constrain_aspect_ratio": False}
    # Channels: location x, y, z, roll, pitch, yaw. The start is at (1000, -500, 200), yaw 90: the key
    # (400, 100, 250) forward/right turns into (-100, 400) in world x, y, and yaws add.
    # qw bakes a key at every frame, linear between the manifest's keys; first and last are the manifest's.
    values = [[v for _, v, _ in channel] for channel in seq["keys"][:6]]
    assert [frame for frame, _, _ in seq["keys"][0]] == list(range(90, 121))
    assert [[v[0], v[-1]] for v in values] == [pytest.approx(v) for v in (
        [1000, 900], [-500, -100], [350, 450], [0, 2], [0, -10], [90, 135])]
    assert [v[15] for v in values] == pytest.approx([950, -300, 400, 1, -5, 112.5])  # halfway
    assert status["camera"]["fov"] == 60 and status["camera"]["poses"]["105"] == pytest.approx([v[15] for v in values])
    assert {interp for channel in seq["keys"][:6] for _, _, interp in channel} == {"MovieSceneKeyInterpolation.AUTO"}


def test_world_origin_needs_no_player_start(tmp_path, run_script):
    m = manifest("5.5")
    m.unreal.camera.origin = "world"
    _, status = run_script(m, "5.5", player_start=None)
    assert status["ok"]
    xs = [v for _, v, _ in saved(tmp_path, "QW/Sequences/QW_kite")["keys"][0]]
    assert [xs[0], xs[-1]] == [0, 400]
    m.unreal.camera.origin = "player-start"
    _, status = run_script(m, "5.5", player_start=None)
    assert not status["ok"] and status["user_error"] and "has no PlayerStart" in status["message"]


def test_engine_problems_are_reported_not_prepared(tmp_path, run_script):
    _, status = run_script(manifest("4.27"), "5.5")
    assert not status["ok"] and "the editor is Unreal 5.5.4" in status["message"]
    _, status = run_script(manifest("4.27"), "4.27", cvars={"r.BasePassOutputsVelocity": 0})
    assert "r.BasePassOutputsVelocity=1 under [/Script/Engine.RendererSettings]" in status["message"]
    assert not (tmp_path / "Saved" / "MovieRenderPipeline" / "QW_kite_s1.utxt").exists()
    _, status = run_script(manifest("5.5"), "5.5", cvars={})  # UE5 needs no project setting
    assert status["ok"]


def test_existing_sequence_must_play_at_the_manifest_rate(tmp_path, run_script):
    m = manifest(level_sequence="/Game/Cine/KiteSeq")
    asset = tmp_path / "Content" / "Cine" / "KiteSeq.uasset.json"
    asset.parent.mkdir(parents=True)
    asset.write_text(json.dumps({"class": "LevelSequence", "display_rate": [25, 1]}))
    _, status = run_script(m, "4.27")
    assert not status["ok"] and "plays at 25/1 fps, the manifest at 30" in status["message"]
    _, status = run_script(manifest(level_sequence="/Game/Cine/Missing"), "4.27")
    assert "Level Sequence /Game/Cine/Missing.Missing not found" in status["message"]


def test_unexpected_errors_carry_the_traceback(tmp_path, run_script, monkeypatch):
    monkeypatch.setattr(fake_unreal, "VERSIONS", {**fake_unreal.VERSIONS, "4.27": "not a version"})
    _, status = run_script(manifest(), "4.27")
    assert not status["ok"] and "Traceback" in status["message"] and "user_error" not in status


def test_stand_in_refuses_names_its_version_lacks(tmp_path):
    ue = fake_unreal.install("4.27", tmp_path)
    with pytest.raises(AttributeError):
        ue.MoviePipelineQueue().delete_all_jobs  # added after 4.27
    with pytest.raises(AttributeError):
        ue.EditorPythonScripting  # no keep-alive switch in 4.27: the editor always quits after the script
    with pytest.raises(AttributeError):
        ue.MoviePipelinePostProcessPass().high_precision_output = True
    ue5 = fake_unreal.install("5.5", tmp_path)
    ue5.EditorPythonScripting.set_keep_python_script_alive(True)
    with pytest.raises(AttributeError):
        ue5.MoviePipelineDeferredPassBase().use32_bit_post_process_materials = True  # gone in 5.5
    with pytest.raises(AttributeError):
        ue5.BlendableLocation.BL_AFTER_TONEMAPPING
    with pytest.raises(AttributeError):
        ue5.MoviePipelineOutputSetting().output_dir = "/tmp"  # a misspelt property

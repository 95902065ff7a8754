"""Scene and dataset manifests: the repository's own, and broken ones rejected with one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qw.cli import main
from qw.datagen.manifests import (
    MANIFEST_ROOT,
    ManifestError,
    dataset_paths,
    find_dataset,
    find_scene,
    load_scene_manifest,
    scene_paths,
)

UNREAL_SCENES = ("infiltrator", "kite", "showdown", "zengarden")


def test_every_repository_manifest_loads():
    scenes = {name: load_scene_manifest(path) for name, path in scene_paths().items()}
    assert set(UNREAL_SCENES) <= set(scenes)
    for name, manifest in scenes.items():
        assert manifest.name == name, f"{scene_paths()[name]}: name differs from the file name"
    assert "qwnet-paper" in dataset_paths()
    for name in dataset_paths():
        assert {s.scene for s in find_dataset(name).scenes} <= set(scenes)


def test_qwnet_paper_dataset_is_the_papers_size():
    dataset = find_dataset("qwnet-paper")
    assert sum(s.budget for s in dataset.scenes) == dataset.total_blocks == 13712
    assert (dataset.frames, dataset.tile) == (8, 256)
    assert sorted(s.scene for s in dataset.scenes) == sorted(UNREAL_SCENES)


@pytest.mark.parametrize("name", UNREAL_SCENES)
def test_unreal_scenes_are_1080p_with_authored_camera_paths(name, monkeypatch):
    scene = find_scene(name.upper())  # names are case-insensitive
    assert scene.backend == "ue4" and scene.capture.resolution == (1920, 1080)
    assert scene.capture.reference_samples == 64 and scene.capture.mode == "mrq"
    assert scene.unreal.level_sequence == "" and scene.unreal.camera.fps == scene.capture.fps
    assert {s.split for s in scene.shots} == {"train", "val", "test"}
    monkeypatch.delenv("QW_UE4_PROJECTS", raising=False)
    assert scene.unreal.unfilled() == ["project"]  # only the projects folder is the user's to give
    monkeypatch.setenv("QW_UE4_PROJECTS", "/projects")
    assert scene.unreal.unfilled() == []


def test_camera_path_and_mode_errors_are_clear(tmp_path):
    scene = yaml.safe_load((MANIFEST_ROOT / "scenes" / "kite.yaml").read_text())
    cases = [(("capture", "mode"), "bufvis", "'bufvis' is not supported: buffer visualization takes"),
             (("unreal", "level_sequence"), "/Game/S.S", "exactly one of unreal.level_sequence"),
             (("unreal", "camera", "fps"), 24, r"camera.fps \(24\) must equal capture.fps \(30\)")]
    for (section, *keys), value, message in cases:
        broken = yaml.safe_load(yaml.safe_dump(scene))
        target = broken[section]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        path = tmp_path / "kite.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ManifestError, match=message):
            load_scene_manifest(path)
    scene["shots"][0]["start"] = 100  # before the first key (frame 250)
    path.write_text(yaml.safe_dump(scene))
    with pytest.raises(ManifestError, match=r"shots \['s0300'\] reach outside the camera keys' frames \[250, 3960\]"):
        load_scene_manifest(path)


def test_known_maps():
    assert find_scene("infiltrator").unreal.map == "/Game/Maps/TestMaps/Visuals/VIS_ArtDemo_P"
    assert find_scene("kite").unreal.map.endswith("/GDC_Landscape_01") and find_scene("kite").capture.fps == 30


def test_unknown_scene_lists_the_known_ones():
    with pytest.raises(ManifestError, match="unknown scene 'atlantis'; known scenes: .*infiltrator, kite"):
        find_scene("atlantis")


# ------------------------------------------------------------------------------------------- errors via the CLI


def _tree(tmp_path: Path, scene: dict | str | None = None, dataset: dict | None = None) -> Path:
    """A manifest folder with one scene (a copy of kite unless given) and optionally a dataset `d.yaml`."""
    (tmp_path / "scenes").mkdir()
    (tmp_path / "datasets").mkdir()
    if scene is None:
        scene = yaml.safe_load((MANIFEST_ROOT / "scenes" / "kite.yaml").read_text())
    text = scene if isinstance(scene, str) else yaml.safe_dump(scene)
    (tmp_path / "scenes" / "kite.yaml").write_text(text)
    if dataset is not None:
        (tmp_path / "datasets" / "d.yaml").write_text(yaml.safe_dump(dataset))
    return tmp_path


def _kite(**changes) -> dict:
    scene = yaml.safe_load((MANIFEST_ROOT / "scenes" / "kite.yaml").read_text())
    return {**scene, **changes}


def _dataset(**changes) -> dict:
    return {"name": "d", "total_blocks": 10, "scenes": [{"scene": "kite", "budget": 10}], **changes}


def _run(*args: str):
    return CliRunner().invoke(main, ["scenes", *args])


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qw: error: "), result.output
    assert all(f in lines[0] for f in fragments), lines[0]


def test_valid_tree_lists_the_scene(tmp_path):
    result = _run("--manifests", str(_tree(tmp_path, dataset=_dataset())), "--dataset", "d")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split()[:6] == ["kite", "ue4", "6", "1380", "4/1/1", "10"]


def test_unknown_key(tmp_path):
    root = _tree(tmp_path, _kite(colour="blue"))
    _assert_one_line_error(_run("--manifests", str(root)), f"{root / 'scenes' / 'kite.yaml'}: field colour: unknown key")


def test_unknown_nested_key(tmp_path):
    scene = _kite()
    scene["capture"]["samples"] = 4
    root = _tree(tmp_path, scene)
    _assert_one_line_error(_run("--manifests", str(root)), "kite.yaml: field capture.samples: unknown key")


def test_wrong_type(tmp_path):
    scene = _kite()
    scene["capture"]["fps"] = "fast"
    root = _tree(tmp_path, scene)
    _assert_one_line_error(_run("--manifests", str(root)), "kite.yaml: field capture.fps: Input should be a valid number")


def test_bad_shot_range(tmp_path):
    root = _tree(tmp_path, _kite(shots=[{"name": "a", "start": 10, "end": 5}]))
    _assert_one_line_error(_run("--manifests", str(root)), "kite.yaml: field shots.0", "end (5) must be greater")


def test_overlapping_shots_are_refused(tmp_path):
    # a val shot sharing frames with a train shot would put the same pixels in both splits
    scene = _kite()
    scene["shots"] = [*scene["shots"], {"name": "v", "start": 500, "end": 560, "split": "val"}]
    root = _tree(tmp_path, scene)
    _assert_one_line_error(_run("--manifests", str(root)), "kite.yaml: field (top level)",
                           "shots 's0300' [300, 600) and 'v' [500, 560) overlap")
    scene["shots"][-1] = {"name": "v", "start": 600, "end": 660, "split": "val"}  # adjacent shots share no frame
    (tmp_path / "adjacent").mkdir()
    assert _run("--manifests", str(_tree(tmp_path / "adjacent", scene))).exit_code == 0


def test_not_yaml(tmp_path):
    root = _tree(tmp_path, "name: [unclosed\n")
    _assert_one_line_error(_run("--manifests", str(root)), "kite.yaml: not valid YAML")


def test_budgets_not_summing(tmp_path):
    root = _tree(tmp_path, dataset=_dataset(total_blocks=13712))
    _assert_one_line_error(_run("--manifests", str(root), "--dataset", "d"),
                           f"{root / 'datasets' / 'd.yaml'}: field (top level)",
                           "scene budgets sum to 10, but total_blocks is 13712")


def test_dataset_wrong_type(tmp_path):
    root = _tree(tmp_path, dataset=_dataset(scenes=[{"scene": "kite", "budget": "many"}]))
    _assert_one_line_error(_run("--manifests", str(root), "--dataset", "d"),
                           "d.yaml: field scenes.0.budget: Input should be a valid integer")


def test_dataset_scene_without_manifest(tmp_path):
    root = _tree(tmp_path, dataset=_dataset(scenes=[{"scene": "atlantis", "budget": 10}]))
    _assert_one_line_error(_run("--manifests", str(root), "--dataset", "d"),
                           "dataset 'd': no scene manifest for ['atlantis']")


def test_dataset_names_scenes_as_the_builder_does(tmp_path):
    """'Zen Garden' in a dataset finds zen_garden.yaml in `qw scenes --dataset` as it does in find_scene."""
    root = _tree(tmp_path, dataset=_dataset(total_blocks=7, scenes=[{"scene": "Zen Garden", "budget": 7}]))
    (root / "scenes" / "kite.yaml").rename(root / "scenes" / "zen_garden.yaml")
    result = _run("--manifests", str(root), "--dataset", "d")
    assert result.exit_code == 0, result.output
    assert "kite" in result.output and " 7 " in result.output


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    _assert_one_line_error(_run("--dataset", str(missing)), f"{missing}: manifest file not found")


def test_unknown_dataset_name(tmp_path):
    _assert_one_line_error(_run("--dataset", "atlantis"), "unknown dataset 'atlantis'; known datasets: ", "qwnet-paper")


def test_a_dataset_file_without_the_yaml_suffix_is_named_as_such(tmp_path):
    """An existing file that does not end in .yaml was reported as an unknown dataset name."""
    (tmp_path / "ds.txt").write_text(yaml.safe_dump(_dataset()))
    _assert_one_line_error(_run("--dataset", str(tmp_path / "ds.txt")),
                           f"{tmp_path / 'ds.txt'}: a dataset manifest is a YAML file ending in .yaml or .yml "
                           "(or name a shipped dataset: ", "qwnet-paper")

"""Planner: budgets met exactly, windows inside cut-free segments, splits by shot, deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blocks_helpers import capture_meta, dataset
from qw.cli import main
from qw.datagen.capture_format import META_FILE
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import MANIFEST_ROOT, load_dataset_manifest, load_scene_manifest
from qw.datagen.plan import CaptureInfo, crosses_cut, load_captures, make_plan

PAPER = MANIFEST_ROOT / "datasets" / "qwnet-paper.yaml"


def manifest_shaped_captures(root: Path, dataset_path: Path = PAPER, extra_cuts: bool = True) -> dict:
    """capture.json (no pixels) for every shot of the dataset's scene manifests, at their resolution, with their
    cuts (plus two cuts in every other shot when `extra_cuts`)."""
    shots = {}
    for scene in load_dataset_manifest(dataset_path).scenes:
        manifest = load_scene_manifest(MANIFEST_ROOT / "scenes" / f"{scene.scene}.yaml")
        w, h = manifest.capture.resolution
        for k, shot in enumerate(manifest.shots):
            cuts = [c - shot.start for c in shot.camera_cuts] or ([37, 90] if extra_cuts and k % 2 == 0 else [])
            meta = capture_meta(manifest.name, shot.name, shot.frame_count, w, h, cuts)
            folder = root / manifest.name / shot.name
            folder.mkdir(parents=True)
            (folder / META_FILE).write_text(json.dumps(meta.model_dump(mode="json")))
            shots[manifest.name, shot.name] = {"meta": meta, "split": shot.split}
    return shots


def run_plan(captures: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["datagen", "plan", "--dataset", str(PAPER), "--captures", str(captures),
                                       "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "13712 blocks" in result.output
    return json.loads(out.read_text())


def test_paper_plan_on_unreal_shaped_metadata(tmp_path):
    shots = manifest_shaped_captures(tmp_path / "captures")
    plan = run_plan(tmp_path / "captures", tmp_path / "a.json")
    manifest = load_dataset_manifest(PAPER)
    t, tile = manifest.frames, manifest.tile

    per_scene = {s.scene: 0 for s in manifest.scenes}
    windows = set()
    next_block = 0
    for task in plan["tasks"]:
        shot = plan["shots"][task["shot"]]
        meta = shots[shot["scene"], shot["shot"]]["meta"]
        assert shot["split"] == shots[shot["scene"], shot["shot"]]["split"] == "train"
        start = task["start"]
        assert 0 <= start and start + t <= meta.frame_count
        assert not [c for c in meta.camera_cuts if start < c < start + t], "window crosses a camera cut"
        for other in range(start - t + 1, start + t):  # windows of one shot never overlap
            assert (task["shot"], other) not in windows
        windows.add((task["shot"], start))
        pos = np.array(task["positions"])
        assert pos.shape[1:] == (manifest.content_filter.candidates, 2)
        assert (pos >= 0).all()
        assert (pos[..., 0] <= meta.height - tile).all() and (pos[..., 1] <= meta.width - tile).all()
        assert len({tuple(p) for p in pos.reshape(-1, 2)}) == pos.shape[0] * pos.shape[1]  # distinct candidates
        assert task["first_block"] == next_block
        next_block += len(pos)
        per_scene[shot["scene"]] += len(pos)
    assert next_block == 13712
    assert per_scene == {s.scene: s.budget for s in manifest.scenes}
    # each scene's blocks are spread evenly over every window of its train shots
    for scene in per_scene:
        counts = [len(t["positions"]) for t in plan["tasks"] if plan["shots"][t["shot"]]["scene"] == scene]
        assert max(counts) - min(counts) <= 1

    again = run_plan(tmp_path / "captures", tmp_path / "b.json")
    assert again == plan
    other = run_plan(tmp_path / "captures", tmp_path / "c.json", "--seed", "7")
    assert other["digest"] != plan["digest"]
    assert [t["positions"] for t in other["tasks"]] != [t["positions"] for t in plan["tasks"]]


@pytest.mark.parametrize("name", ["builtin-all", "builtin-demo"])
def test_builtin_dataset_manifests_plan_on_their_scenes(tmp_path, name):
    path = MANIFEST_ROOT / "datasets" / f"{name}.yaml"
    manifest_shaped_captures(tmp_path, path, extra_cuts=False)
    plan = make_plan(load_dataset_manifest(path), load_captures(tmp_path))
    assert dict(plan.blocks_by("scene")) == {s.scene: s.budget for s in load_dataset_manifest(path).scenes}


def test_captures_match_dataset_scenes_as_manifest_names_do(tmp_path):
    """`qw datagen import --scene ZenGarden` writes scene 'ZenGarden'; qwnet-paper lists 'zengarden', and its scene
    manifest is found either way, so the planner takes the shots too (they were 'not found')."""
    manifest_shaped_captures(tmp_path / "captures")
    for meta_file in (tmp_path / "captures" / "zengarden").glob(f"*/{META_FILE}"):
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps({**meta, "scene": "Zen Garden"}))
    paper = load_dataset_manifest(PAPER)
    plan = make_plan(paper, load_captures(tmp_path / "captures", [s.scene for s in paper.scenes]))
    assert dict(plan.blocks_by("scene")) == {s.scene: s.budget for s in paper.scenes}
    assert {row["scene"] for row in plan.shot_table()} == {s.scene for s in paper.scenes}
    # the same shot under both spellings is one shot captured twice
    twice = infos([("zengarden", "s1", 16, "train", []), ("ZenGarden", "s1", 16, "train", [])])
    with pytest.raises(QwError, match="shot 's1' of scene 'zengarden' was captured more than once"):
        make_plan(dataset({"zengarden": 3}), twice)


def infos(specs: list[tuple[str, str, int, str, list[int]]], width: int = 300, height: int = 200) -> list[CaptureInfo]:
    return [CaptureInfo(f"{scene}/{shot}", capture_meta(scene, shot, n, width, height, cuts), f"sha-{scene}-{shot}",
                        split) for scene, shot, n, split, cuts in specs]


@pytest.mark.parametrize("budget", [1, 5, 23, 400])
def test_budget_met_exactly_for_few_and_many_blocks(budget):
    caps = infos([("a", "s1", 40, "train", [13]), ("a", "s2", 25, "train", []), ("a", "v", 30, "val", [])])
    plan = make_plan(dataset({"a": budget}), caps)
    assert plan.num_blocks == budget
    assert {plan.shots[t.shot].split for t in plan.tasks} == {"train"}  # default: train shots only
    assert [t.first_block for t in plan.tasks] == list(np.cumsum([0] + [t.num_blocks for t in plan.tasks])[:-1])


def test_dataset_splits_select_shots_and_are_recorded_per_shot():
    caps = infos([("a", "s1", 40, "train", []), ("a", "v", 40, "val", []), ("a", "t", 40, "test", [])])
    ds = dataset({"a": 50}).model_copy(update={"splits": ["train", "val"]})
    plan = make_plan(ds, caps)
    assert plan.blocks_by("split") == {"train": 25, "val": 25}
    assert {(s["shot"], s["split"]) for s in plan.shot_table()} == {("s1", "train"), ("v", "val")}


def test_seed_changes_plan_and_one_scene_budget_leaves_others_alone():
    caps = infos([("a", "s1", 64, "train", []), ("b", "s1", 64, "train", [])])
    p1 = make_plan(dataset({"a": 10, "b": 10}), caps)
    assert p1.digest() == make_plan(dataset({"a": 10, "b": 10}), caps).digest()
    assert p1.digest() != make_plan(dataset({"a": 10, "b": 10}), caps, seed=1).digest()
    p2 = make_plan(dataset({"a": 10, "b": 11}), caps)
    a1 = [t.positions.tolist() for t in p1.tasks if p1.shots[t.shot].meta.scene == "a"]
    a2 = [t.positions.tolist() for t in p2.tasks if p2.shots[t.shot].meta.scene == "a"]
    assert a1 == a2


def test_windows_cross_cuts_only_in_shots_without_a_cut_free_stretch():
    caps = infos([("a", "short", 16, "train", [4, 10]), ("a", "long", 30, "train", [9])])
    plan = make_plan(dataset({"a": 20}), caps)
    crossing = {plan.shots[t.shot].meta.shot for t in plan.tasks if crosses_cut(plan.shots[t.shot].meta, t.start, 8)}
    assert crossing == {"short"}
    assert "cross a camera cut" in plan.summary()


def test_plan_errors_name_the_problem():
    with pytest.raises(QwError, match="scene 'b'.*no capture"):
        make_plan(dataset({"a": 3, "b": 3}), infos([("a", "s1", 16, "train", [])]))
    with pytest.raises(CaptureError, match="resolution mismatch.*a/s2"):
        make_plan(dataset({"a": 3}), infos([("a", "s1", 16, "train", [])]) +
                  infos([("a", "s2", 16, "train", [])], width=320))
    with pytest.raises(QwError, match="no shot of the dataset's splits has 8 frames"):
        make_plan(dataset({"a": 3}), infos([("a", "s1", 7, "train", [])]))
    with pytest.raises(QwError, match="smaller than the 256-pixel tile"):
        make_plan(dataset({"a": 3}, tile=256), infos([("a", "s1", 16, "train", [])]))


def test_build_benchmark_captures_load_with_their_manifest(tmp_path):
    """benchmarks/bench_datagen.py writes several shots of one scene and a manifest for them: the planner must
    accept that manifest (shots that shared source frames were refused, and the benchmark never ran)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_datagen", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_datagen.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_captures(tmp_path, shots=2, frames=8, width=16, height=16)
    infos = load_captures(tmp_path / "captures", manifests_root=tmp_path / "manifests")
    assert sorted((c.meta.shot, c.split) for c in infos) == [("s0", "train"), ("s1", "train")]

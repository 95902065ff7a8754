"""Scene-level hold-out: builtin generators make different scenes from different seeds, and evaluation instances
(manifests with only val/test shots) never reach a training store."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from qw.datagen.builtin.scenes import build_scene
from qw.datagen.errors import QwError
from qw.datagen.manifests import dataset_paths, load_dataset_manifest, load_scene_manifest, scene_paths
from qw.datagen.plan import load_captures, make_plan
from qw.demo import HELD_OUT_SHOTS

ROOT = Path(__file__).resolve().parents[1]


def builtin_manifests():
    manifests = [load_scene_manifest(p) for p in scene_paths().values()]
    return [m for m in manifests if m.backend == "builtin"]


def is_held_out(manifest) -> bool:
    return all(s.split in ("val", "test") for s in manifest.shots)


def scene_of(manifest, seed: int | None = None):
    return build_scene(manifest.builtin.builder, manifest.builtin.params,
                       manifest.seed if seed is None else seed)


def static_geometry(scene) -> np.ndarray:
    """Every static vertex position in world space at frame 0 (what the renderer bakes into one buffer)."""
    parts = []
    for inst in scene.instances:
        if inst.static:
            p = np.c_[inst.mesh.positions, np.ones(len(inst.mesh.positions))] @ inst.model(0.0).T
            parts.append(p[:, :3])
    return np.concatenate(parts)


def quality_module():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("builder", ["fence", "street", "specular", "crossing", "courtyard", "machinery"])
def test_held_out_instances_are_other_scenes_of_the_same_generator(builder):
    manifests = [m for m in builtin_manifests() if m.builtin.builder == builder]
    train = [m for m in manifests if not is_held_out(m)]
    held_out = [m for m in manifests if is_held_out(m)]
    assert {s.split for m in held_out for s in m.shots} == {"val", "test"}
    assert not {m.seed for m in train} & {m.seed for m in held_out}
    for a in train:
        scene_a = scene_of(a)
        for b in held_out:
            scene_b = scene_of(b)
            assert scene_a.texture_seed != scene_b.texture_seed
            assert set(scene_a.materials) != set(scene_b.materials)
            geometry_a, geometry_b = static_geometry(scene_a), static_geometry(scene_b)
            assert geometry_a.shape != geometry_b.shape or not np.allclose(geometry_a, geometry_b)
    # the seed alone decides: the same seed builds the same scene
    again = scene_of(train[0])
    assert again.materials == scene_of(train[0]).materials
    np.testing.assert_array_equal(static_geometry(again), static_geometry(scene_of(train[0])))


def test_no_dataset_and_no_training_shot_list_names_a_held_out_instance():
    held_out = {m.name for m in builtin_manifests() if is_held_out(m)}
    assert len(held_out) == 12
    for path in dataset_paths().values():
        dataset = load_dataset_manifest(path)
        assert not {s.scene for s in dataset.scenes} & held_out, path
        assert dataset.splits == ["train"], path
    quality = quality_module()
    for plan in quality.PLANS.values():
        assert not set(quality.training_shots(plan)) & held_out
        evaluated = {**quality.held_out_shots(plan, "val"), **quality.held_out_shots(plan, "test"), **HELD_OUT_SHOTS}
        assert set(evaluated) <= held_out


def test_the_store_plan_draws_only_from_training_instances(tmp_path):
    from qw.capture import capture_scene

    tiny = {"frames": (0, 8), "resolution": (32, 32), "reference_spp": 1, "progress": False}
    capture_scene("builtin_fence", tmp_path / "captures", shots=["dolly"], **tiny)
    capture_scene("builtin_fence_val", tmp_path / "captures", shots=["dolly"], **tiny)
    captures = load_captures(tmp_path / "captures")
    assert {c.meta.scene for c in captures} == {"builtin_fence", "builtin_fence_val"}

    def dataset(budgets: dict[str, int]):
        path = tmp_path / "dataset.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "frames": 8, "tile": 16, "total_blocks": sum(budgets.values()),
                                        "scenes": [{"scene": s, "budget": b} for s, b in budgets.items()]}))
        return load_dataset_manifest(path)

    plan = make_plan(dataset({"builtin_fence": 4}), captures)
    assert {plan.shots[t.shot].meta.scene for t in plan.tasks} == {"builtin_fence"}
    with pytest.raises(QwError, match="builtin_fence_val.*no capture of a shot of it in the dataset's splits"):
        make_plan(dataset({"builtin_fence": 4, "builtin_fence_val": 4}), captures)



@pytest.mark.parametrize("builder", ["courtyard", "machinery"])
def test_game_like_held_out_shots_are_long_and_the_game_store_uses_only_training_instances(builder):
    """Test shots run ≥ 64 frames (start-up is a small part of the score), val shots ≥ 32; the game-like
    datasets draw from this generator's training instances only (2, 4 and 8 of them)."""
    manifests = {m.name: m for m in builtin_manifests() if m.builtin.builder == builder}
    lengths = {split: [s.end - s.start for m in manifests.values() for s in m.shots if s.split == split]
               for split in ("val", "test")}
    assert lengths["test"] and min(lengths["test"]) >= 64
    assert lengths["val"] and min(lengths["val"]) >= 32
    training = {m for m in manifests if not is_held_out(manifests[m])}
    for path, instances in ((ROOT / "manifests/datasets/builtin-game-quality.yaml", 2),
                            *((ROOT / f"manifests/datasets/builtin-game-quality-{n}.yaml", n // 2) for n in (8, 16))):
        in_store = {s.scene for s in load_dataset_manifest(path).scenes} & set(manifests)
        assert in_store <= training and len(in_store) == instances, path

"""Conformance of the in-editor script with Unreal's Python API, read statically from its source.

Every ``unreal.<Class>[.<member>]`` chain the script names, and every property it sets by name, must exist in each
supported engine version's committed name list (tests/ue_api/ue-<version>.txt, derived from the engine's generated
Python API and headers by tests/ue_api/derive_names.py); members that moved between versions are declared in the
script's MOVED table, of which every version must have at least one alternative."""

from __future__ import annotations

import ast
from pathlib import Path

import fake_unreal
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "ue_capture" / "editor_script.py"  # imports `unreal`: read it
VERSIONS = ("4.27", "5.5")


def moved_table(source: str) -> dict:
    """The script's MOVED literal."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["MOVED"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no MOVED table in the editor script")


MOVED = moved_table(SCRIPT.read_text())


def unreal_chains(tree: ast.AST) -> set[tuple[str, ...]]:
    """('Class',) and ('Class', 'member') for every ``unreal.Class`` / ``unreal.Class.member`` in the source."""
    chains = set()
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "unreal" and parts:
            chains.add(tuple(reversed(parts))[:2])
    return chains


def property_names(tree: ast.AST) -> set[str]:
    """String literals passed as the name to set_editor_property / get_editor_property."""
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("set_editor_property", "get_editor_property")
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


def unknown_names(source: str, api: dict[str, set[str]], moved: dict) -> list[str]:
    tree = ast.parse(source)
    moved_members = {member for alternatives in moved.values() for _, member in alternatives}
    problems = []
    for chain in sorted(unreal_chains(tree)):
        cls = chain[0]
        if cls not in api and cls not in api[fake_unreal.MODULE]:
            problems += [] if f"unreal.{cls}" in problems else [f"unreal.{cls}"]
        elif len(chain) == 2 and cls in api and chain[1] not in api[cls]:
            problems.append(f"unreal.{cls}.{chain[1]}")
    every_member = set().union(*api.values())
    problems += [f"property {name}" for name in sorted(property_names(tree) - moved_members - every_member)]
    for purpose, alternatives in moved.items():
        if not any(member in api.get(cls, ()) for cls, member in alternatives):
            problems.append(f"MOVED[{purpose!r}]: none of {alternatives}")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
def test_script_names_exist_in_each_engine_version(version):
    api = fake_unreal.load_api(version)
    assert unknown_names(SCRIPT.read_text(), api, MOVED) == []


def test_checker_fails_on_names_a_version_lacks():
    """The same check on altered source: names that exist only in some versions are caught per version."""
    source = SCRIPT.read_text()
    api427, api55 = fake_unreal.load_api("4.27"), fake_unreal.load_api("5.5")
    used = source + "\nunreal.MoviePipelineQueue.delete_all_jobs\nunreal.SequenceTimeUnit.DISPLAY_RATE\n"
    assert unknown_names(used, api427, MOVED) == ["unreal.MoviePipelineQueue.delete_all_jobs"]  # added in UE5
    assert unknown_names(used, api55, MOVED) == ["unreal.SequenceTimeUnit"]  # renamed MovieSceneTimeUnit in UE5
    typo = source.replace('"disable_tone_curve"', '"disable_tonecurve"')
    assert unknown_names(typo, api427, MOVED) == ["property disable_tonecurve"]
    moved = {**MOVED, "after_tonemapping": (("BlendableLocation", "BL_AFTER_TONEMAPPING"),)}
    assert unknown_names(source, api55, moved) == [
        "MOVED['after_tonemapping']: none of (('BlendableLocation', 'BL_AFTER_TONEMAPPING'),)"]


def test_versions_differ_where_the_script_expects_them_to():
    """The moved members really are version-specific in the lists (else MOVED would be dead weight)."""
    apis = {v: fake_unreal.load_api(v) for v in VERSIONS}
    for purpose, alternatives in MOVED.items():
        found = {v: [(c, m) for c, m in alternatives if m in apis[v].get(c, ())] for v in VERSIONS}
        assert len({tuple(f) for f in found.values()}) > 1, (purpose, found)

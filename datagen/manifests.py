"""Scene and dataset manifests: YAML read with a safe loader and validated against a schema on load.

A *scene manifest* (``manifests/scenes/<name>.yaml``) says how to capture one scene: its backend (``builtin`` or
``ue4``), capture settings and shots. A *dataset manifest* (``manifests/datasets/<name>.yaml``) says which scenes
go into a block store and how many blocks each contributes. Errors name the file, the field and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from qw.datagen.capture_format import path_component_problem
from qw.datagen.errors import QwError

MANIFEST_ROOT = Path(os.environ.get("QW_MANIFESTS", Path(__file__).resolve().parent.parent / "manifests"))
FILL_IN = "FILL_IN"  # marker for values the user must provide (project paths, level sequences)
Split = Literal["train", "val", "test"]  # what a shot is used for; stores and loaders select blocks by it
SPLITS: tuple[str, ...] = get_args(Split)


class ManifestError(QwError):
    """A manifest file is missing, not YAML, or does not match its schema (exit status 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _folder_name(name: str) -> str:
    """Scene and shot names become folders of the captures tree: single folder names, never paths."""
    problem = path_component_problem(name)
    if problem:
        raise ValueError(f"{name!r} {problem}: names must be single folder names")
    return name


SEED = Field(0, ge=0, description="non-negative integer (numpy seeds cannot be negative)")


class CaptureSettings(_Strict):
    resolution: tuple[PositiveInt, PositiveInt] = Field(description="width, height in pixels")
    fps: float = Field(gt=0)
    reference_samples: int = Field(64, ge=1, description="supersampling samples per pixel of the reference")
    jitter: Literal["halton23", "none", "engine"] = "halton23"
    jitter_cycle: int = Field(8, ge=1)
    mip_bias: float = 0.0
    mode: Literal["render", "mrq", "bufvis"] = Field("render", description="render: builtin; mrq: Unreal")

    @model_validator(mode="after")
    def _no_bufvis(self) -> "CaptureSettings":
        if self.mode == "bufvis":  # kept in the schema only to explain why it is refused
            raise ValueError("capture mode 'bufvis' is not supported: buffer visualization takes PreTonemapHDRColor "
                             "after TAA, so its frames are not 1-spp samples; use mode 'mrq', whose jittered input "
                             "comes from Movie Render Queue's own samples")
        return self


class Shot(_Strict):
    name: str
    start: int = Field(ge=0, description="first source frame")
    end: int = Field(description="one past the last source frame")
    split: Split = "train"
    camera_cuts: list[int] = Field(default_factory=list, description="source frames that start a new camera cut")

    _name = field_validator("name")(_folder_name)

    @model_validator(mode="after")
    def _range(self) -> "Shot":
        if self.end <= self.start:
            raise ValueError(f"shot {self.name!r}: end ({self.end}) must be greater than start ({self.start})")
        bad = [c for c in self.camera_cuts if not self.start <= c < self.end]
        if bad:
            raise ValueError(f"shot {self.name!r}: camera_cuts {bad} outside [{self.start}, {self.end})")
        return self

    @property
    def frame_count(self) -> int:
        return self.end - self.start


class BuiltinSource(_Strict):
    builder: str = Field(description="name of a scene builder in qw.datagen.builtin.scenes")
    params: dict[str, Any] = Field(default_factory=dict)


class CameraKey(_Strict):
    """One key of an authored camera path, in Unreal's units and axes (cm; x forward, y right, z up; degrees)."""

    frame: int = Field(ge=0, description="frame at the camera path's fps")
    position: tuple[float, float, float] = Field(description="x, y, z in cm, relative to the path's origin")
    rotation: tuple[float, float, float] = Field(description="pitch, yaw, roll in degrees (yaw relative to origin)")


class CameraPath(_Strict):
    """A camera path qw authors as a Level Sequence: one camera, one cut, keyed at every frame (linear between the
    manifest's keys)."""

    fps: float = Field(gt=0, description="the sequence's display rate; must equal capture.fps")
    fov: float = Field(gt=0, lt=180, description="horizontal field of view in degrees")
    origin: Literal["player-start", "world"] = Field(
        "player-start", description="keys are relative to the map's first PlayerStart (position and yaw), or world")
    keys: list[CameraKey] = Field(min_length=2)

    @model_validator(mode="after")
    def _increasing(self) -> "CameraPath":
        frames = [k.frame for k in self.keys]
        if any(b <= a for a, b in zip(frames, frames[1:])):
            raise ValueError(f"camera key frames must increase strictly, got {frames}")
        return self


PROJECT_DEFAULT_MAP = "project-default"  # the map named by GameDefaultMap in the project's Config/DefaultEngine.ini


class UnrealSource(_Strict):
    engine_version: str = Field(description="e.g. '4.27', '5.3' or '5.5'")
    project: str = Field(description=f"path to the .uproject; may use $ENV vars; '{FILL_IN}' until set")
    map: str = Field(description=f"/Game/... map asset path, or '{PROJECT_DEFAULT_MAP}'")
    level_sequence: str = Field("", description="an existing /Game/... Level Sequence; empty when 'camera' is given")
    camera: CameraPath | None = Field(None, description="camera keys qw authors a Level Sequence from")
    notes: str = ""
    cvars: dict[str, float | int | str] = Field(
        default_factory=dict, description="extra console variables for both passes (override qw's defaults)")
    warm_up_frames: int = Field(32, ge=0, description="frames of world time (ticked and rendered, then discarded) "
                                "and as many render warm-up samples before each shot's first frame")

    @model_validator(mode="after")
    def _one_camera_source(self) -> "UnrealSource":
        if bool(self.level_sequence) == (self.camera is not None):
            raise ValueError("give exactly one of unreal.level_sequence (an existing sequence) and unreal.camera "
                             "(keys qw authors a sequence from)")
        return self

    def unfilled(self) -> list[str]:
        """Fields the user still has to fill in (value is FILL_IN or an unset environment variable)."""
        return [f for f in ("project", "map", "level_sequence")
                if FILL_IN in (v := getattr(self, f)) or "$" in os.path.expandvars(v)]


class SceneManifest(_Strict):
    name: str
    description: str = ""
    backend: Literal["builtin", "ue4"]
    seed: int = SEED
    capture: CaptureSettings
    builtin: BuiltinSource | None = None
    unreal: UnrealSource | None = None
    shots: list[Shot] = Field(min_length=1)

    _name = field_validator("name")(_folder_name)

    @model_validator(mode="after")
    def _backend_section(self) -> "SceneManifest":
        if self.backend == "builtin" and self.builtin is None:
            raise ValueError("backend 'builtin' needs a 'builtin' section (builder, params)")
        if self.backend == "ue4" and self.unreal is None:
            raise ValueError("backend 'ue4' needs an 'unreal' section (engine_version, project, map, and "
                             "level_sequence or camera)")
        if self.unreal is not None and self.unreal.camera is not None:
            self._shots_inside_camera_path(self.unreal.camera)
        names = [s.name for s in self.shots]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate shot names in {names}")
        # the split unit is the shot: shots sharing frames would put the same pixels in two shots (and two splits)
        ordered = sorted(self.shots, key=lambda s: s.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                raise ValueError(f"shots {a.name!r} [{a.start}, {a.end}) and {b.name!r} [{b.start}, {b.end}) overlap: "
                                 "each source frame belongs to at most one shot")
        return self

    def _shots_inside_camera_path(self, camera: CameraPath) -> None:
        if camera.fps != self.capture.fps:
            raise ValueError(f"unreal.camera.fps ({camera.fps:g}) must equal capture.fps ({self.capture.fps:g}): "
                             "Movie Render Queue reads shot frames at the sequence's display rate")
        first, last = camera.keys[0].frame, camera.keys[-1].frame
        outside = [s.name for s in self.shots if s.start < first or s.end > last + 1]
        if outside:
            raise ValueError(f"shots {outside} reach outside the camera keys' frames [{first}, {last}]")

    def shot(self, name: str) -> Shot:
        for s in self.shots:
            if s.name == name:
                return s
        raise ManifestError(f"scene {self.name!r} has no shot {name!r}; shots are {[s.name for s in self.shots]}")


def name_key(name: str) -> str:
    """What a scene name is looked up by: 'Zen Garden', 'zen_garden' and 'ZenGarden' name the same manifest."""
    return name.lower().replace(" ", "").replace("_", "")


class DatasetScene(_Strict):
    scene: str
    budget: int = Field(ge=0, description="number of blocks this scene contributes")


class ContentFilter(_Strict):
    candidates: int = Field(4, ge=1, description="tile positions tried per window; the most aliased is kept")


class DatasetManifest(_Strict):
    name: str
    description: str = ""
    seed: int = SEED
    frames: int = Field(8, ge=2, description="frames per block (T)")
    tile: int = Field(256, ge=16, description="block height and width in pixels")
    total_blocks: int = Field(ge=1)
    scenes: list[DatasetScene] = Field(min_length=1)
    content_filter: ContentFilter | None = None
    splits: list[Split] = Field(
        default_factory=lambda: ["train"], min_length=1,
        description="shot splits the blocks are drawn from (per the scene manifests); the budgets count these only")

    @model_validator(mode="after")
    def _budgets(self) -> "DatasetManifest":
        keys = [name_key(s.scene) for s in self.scenes]
        twice = next((s.scene for s, k in zip(self.scenes, keys) if keys.count(k) > 1), None)
        if twice is not None:  # each of its blocks would be stored twice
            raise ValueError(f"scene {twice!r} is listed more than once (names match ignoring case, spaces and "
                             f"underscores); list each scene once with its whole budget")
        total = sum(s.budget for s in self.scenes)
        if total != self.total_blocks:
            raise ValueError(f"scene budgets sum to {total}, but total_blocks is {self.total_blocks}")
        return self


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text file (not UTF-8); a manifest is YAML text") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ManifestError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(model: type[BaseModel], path: Path):
    try:
        return model.model_validate(_load_yaml(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ManifestError(f"{path}: field {where}: {msg}") from None


def load_scene_manifest(path: str | os.PathLike) -> SceneManifest:
    return _validate(SceneManifest, Path(path))


def load_dataset_manifest(path: str | os.PathLike) -> DatasetManifest:
    return _validate(DatasetManifest, Path(path))


def scene_paths(root: Path = MANIFEST_ROOT) -> dict[str, Path]:
    """Known scene names (lower case) → manifest path."""
    return {p.stem.lower(): p for p in sorted((Path(root) / "scenes").glob("*.yaml"))}


def dataset_paths(root: Path = MANIFEST_ROOT) -> dict[str, Path]:
    """Known dataset names (lower case) → manifest path."""
    return {p.stem.lower(): p for p in sorted((Path(root) / "datasets").glob("*.yaml"))}


def _find(kind: str, name_or_path: str, known: dict[str, Path]) -> Path:
    """A manifest path from a path ending in .yaml/.yml, or from a name looked up case-insensitively in `known`."""
    if name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    by_key = {name_key(name): path for name, path in known.items()}
    if name_key(name_or_path) not in by_key and Path(name_or_path).is_file():
        raise ManifestError(f"{name_or_path}: a {kind} manifest is a YAML file ending in .yaml or .yml "
                            f"(or name a shipped {kind}: {', '.join(known) or '(none)'})")
    if name_key(name_or_path) not in by_key:
        raise ManifestError(f"unknown {kind} {name_or_path!r}; known {kind}s: {', '.join(known) or '(none)'}")
    return by_key[name_key(name_or_path)]


def scene_manifest_path(name_or_path: str, root: Path = MANIFEST_ROOT) -> Path:
    """The manifest path of a scene named as users and dataset manifests name it ('Kite', 'zen_garden', a path)."""
    return _find("scene", name_or_path, scene_paths(root))


def find_scene(name_or_path: str, root: Path = MANIFEST_ROOT) -> SceneManifest:
    """A scene by name (case-insensitive, e.g. 'Kite') or by manifest path."""
    return load_scene_manifest(scene_manifest_path(name_or_path, root))


def find_dataset(name_or_path: str, root: Path = MANIFEST_ROOT) -> DatasetManifest:
    """A dataset by name (e.g. 'qwnet-paper') or by manifest path."""
    return load_dataset_manifest(_find("dataset", name_or_path, dataset_paths(root)))

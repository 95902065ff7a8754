"""A STAND-IN for Unreal's ``unreal`` Python module, for tests only. It is not Unreal and renders nothing.

Two flavours, "4.27" and "5.5", each limited to the names of its committed API list (tests/ue_api/ue-<v>.txt,
derived from the engine's generated Python API and headers): reading, writing or calling any class, member or enum
value the list lacks raises AttributeError, as the real module does. Only the behaviour qw's editor script relies on
is implemented; a listed member the stand-in does not model raises NotImplementedError when called.

Assets persist as JSON under ``<project>/Content`` so that a later process (the fake ``-game`` render in
fake_ue_editor.py) sees what the editor saved, and ``MoviePipelineEditorLibrary.save_queue_to_manifest_file``
writes the queue as JSON to ``<project>/Saved/MovieRenderPipeline/QueueManifest.utxt``, where the engine writes it.

Install with `install(flavour, project_dir)`; it registers the module as ``sys.modules["unreal"]``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

API_DIR = Path(__file__).resolve().parent / "ue_api"
VERSIONS = {"4.27": "4.27.2-18319896+++UE4+Release-4.27", "5.5": "5.5.4-40574608+++UE5+Release-5.5"}
MODULE = "unreal"
_API: dict[str, set[str]] = {}  # the installed flavour's names: class → members ("unreal" → module functions)


def load_api(flavour: str) -> dict[str, set[str]]:
    """A committed name list: class → set of members."""
    api = {}
    for line in (API_DIR / f"ue-{flavour}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            cls, _, members = line.partition(": ")
            api[cls] = set(members.split())
    return api


def _check(ue_class: str, name: str) -> None:
    if name not in _API.get(ue_class, ()):
        raise AttributeError(f"fake unreal: {ue_class}.{name} does not exist in this engine version")


class _Obj:
    """An Unreal object or struct: members gated by the version's list; properties kept in ``_props``."""

    _ue = "Object"

    def __init__(self, **props: Any) -> None:
        object.__setattr__(self, "_props", {})
        for name, value in props.items():  # constructor keywords: the properties themselves must exist
            _check(type(self)._ue, name)
            self._props[name] = value

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        _check(type(self)._ue, name)
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            return self._props.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        _check(type(self)._ue, name)
        self._props[name] = value

    def set_editor_property(self, name: str, value: Any) -> None:
        _check(type(self)._ue, name)
        self._props[name] = value

    def get_editor_property(self, name: str) -> Any:
        _check(type(self)._ue, name)
        return self._props.get(name)


class _Enum:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, member: str) -> str:
        if member.startswith("_"):
            raise AttributeError(member)
        _check(self._name, member)
        return f"{self._name}.{member}"


class _Library:
    """A static function library: only the listed functions exist; modelled ones are given as callables."""

    def __init__(self, name: str, **functions) -> None:
        self._name, self._functions = name, functions

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        _check(self._name, name)
        if name not in self._functions:
            raise NotImplementedError(f"fake unreal: {self._name}.{name} is not modelled")
        return self._functions[name]


def ue_class(name: str, base: type = _Obj) -> type:
    """A stand-in class whose members are those the list gives Unreal's class `name`."""
    return type(name, (base,), {"_ue": name})


def to_json(value: Any) -> Any:
    """Saved form of a property value: structs and assets become plain data."""
    if isinstance(value, _Asset):
        return value._path
    if isinstance(value, (_Obj, _Saved)):
        return {k: to_json(v) for k, v in value._props.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


class _Asset(_Obj):
    """An asset at a /Game/ path; `_save` writes its JSON where the fake render can find it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        object.__setattr__(self, "_path", path)

    def _data(self) -> dict:
        return {"class": self._ue, **to_json(self._props)}


# Classes that plugins provide: absent from the module unless the .uproject enables the plugin (both plugins say
# "EnabledByDefault": false in their .uplugin, 4.27.2 and 5.5.1: EditorScriptingUtilities.uplugin line 13,
# MovieRenderPipeline.uplugin line 16).
PLUGIN_LIBRARIES = {
    "EditorScriptingUtilities": ("EditorAssetLibrary", "EditorLevelLibrary"),
    "MovieRenderPipeline": ("MoviePipelineQueue", "MoviePipelineExecutorJob", "MoviePipelineEditorLibrary",
                            "MoviePipelineOutputSetting", "MoviePipelineAntiAliasingSetting", "MoviePipelineColorSetting",
                            "MoviePipelineGameOverrideSetting", "MoviePipelineDebugSettings",
                            "MoviePipelineDeferredPassBase", "MoviePipelineImageSequenceOutput_EXR",
                            "MoviePipelineConsoleVariableSetting", "MoviePipelinePostProcessPass"),
}


def install(flavour: str, project_dir: str | Path,
            plugins: tuple[str, ...] = tuple(PLUGIN_LIBRARIES)) -> types.ModuleType:
    """Build a fresh stand-in of `flavour` ('4.27', '5.5') for the project at `project_dir`, with the
    editor libraries of the enabled `plugins`."""
    global _API
    _API = load_api(flavour)
    ue5 = flavour != "4.27"
    project = Path(project_dir)
    content = project / "Content"
    state: dict[str, Any] = {"assets": {}, "keep_alive": False, "cvars": {}, "actors": []}

    def asset_file(path: str) -> Path:
        return content / (path.split(".")[0].removeprefix("/Game/") + ".uasset.json")

    # ---- assets
    class Material(_Asset):
        _ue = "Material"

        def __init__(self, path: str) -> None:
            super().__init__(path)
            object.__setattr__(self, "_expressions", [])

        def _data(self) -> dict:
            return {**super()._data(), "expressions": [to_json(e) for e in self._expressions],
                    "compiled": getattr(self, "_compiled", None)}

    MaterialExpressionSceneTexture = ue_class("MaterialExpressionSceneTexture")
    CameraComponent, CameraActor = ue_class("CameraComponent"), ue_class("CameraActor")

    class FrameRate(_Obj):
        _ue = "FrameRate"

        def __init__(self, numerator: int = 30, denominator: int = 1) -> None:
            super().__init__(numerator=numerator, denominator=denominator)

    class Channel(_Obj):
        _ue = "MovieSceneScriptingDoubleChannel" if ue5 else "MovieSceneScriptingFloatChannel"

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "_keys", [])

        def add_key(self, time, new_value, sub_frame=0.0, time_unit=None, interpolation=None):
            self._keys.append((time._props["value"], float(new_value), interpolation))

    class Section(_Obj):
        _ue = "MovieSceneSection"

        def __init__(self, kind: str) -> None:
            super().__init__()
            object.__setattr__(self, "_kind", kind)
            object.__setattr__(self, "_range", None)
            object.__setattr__(self, "_channels", [Channel() for _ in range(10)] if kind == "transform" else [])

        def set_range(self, start, end) -> None:
            object.__setattr__(self, "_range", (start, end))

        def get_channels(self):
            return list(self._channels)

        get_all_channels = get_channels

        def set_camera_binding_id(self, binding_id) -> None:
            object.__setattr__(self, "_camera", binding_id)

    CameraCutSection = ue_class("MovieSceneCameraCutSection", Section)
    TransformSection = ue_class("MovieScene3DTransformSection", Section)

    class Track(_Obj):
        _ue = "MovieSceneTrack"

        def __init__(self, track_class) -> None:
            super().__init__()
            object.__setattr__(self, "_class", track_class)
            object.__setattr__(self, "_sections", [])

        def add_section(self):
            cut = self._class is MovieSceneCameraCutTrack
            section = CameraCutSection("cut") if cut else TransformSection("transform")
            self._sections.append(section)
            return section

    class MovieSceneCameraCutTrack(Track):
        _ue = "MovieSceneCameraCutTrack"

    class MovieScene3DTransformTrack(Track):
        _ue = "MovieScene3DTransformTrack"

    class Binding(_Obj):
        _ue = "MovieSceneBindingProxy" if ue5 else "SequencerBindingProxy"

        def __init__(self, spawned_class) -> None:
            super().__init__()
            object.__setattr__(self, "_template", spawned_class(camera_component=CameraComponent()))
            object.__setattr__(self, "_tracks", [])

        def get_object_template(self):
            return self._template

        def add_track(self, track_class):
            track = track_class(track_class)
            self._tracks.append(track)
            return track

        def get_binding_id(self):
            return f"binding:{id(self)}"

    class LevelSequence(_Asset):
        _ue = "LevelSequence"

        def __init__(self, path: str) -> None:
            super().__init__(path)
            object.__setattr__(self, "_bindings", [])
            object.__setattr__(self, "_tracks", [])
            object.__setattr__(self, "_rate", FrameRate(30, 1))
            object.__setattr__(self, "_playback", [0, 0])

        def set_display_rate(self, rate) -> None:
            object.__setattr__(self, "_rate", rate)

        def get_display_rate(self):
            return self._rate

        def set_playback_start(self, frame: int) -> None:
            self._playback[0] = frame

        def set_playback_end(self, frame: int) -> None:
            self._playback[1] = frame

        def add_spawnable_from_class(self, cls):
            binding = Binding(cls)
            self._bindings.append(binding)
            return binding

        def add_track(self, track_class):
            track = track_class(track_class)
            self._tracks.append(track)
            return track

        add_master_track = add_track

        def get_binding_id(self, binding):
            return f"binding:{id(binding)}"

        def _data(self) -> dict:
            rate = self._rate._props
            camera = self._bindings[0] if self._bindings else None
            transform = next((s for t in (camera._tracks if camera else []) for s in t._sections), None)
            return {**super()._data(), "display_rate": [rate["numerator"], rate["denominator"]],
                    "playback": list(self._playback),
                    "camera": to_json(camera._template._props["camera_component"]) if camera else None,
                    "cuts": [list(s._range) for t in self._tracks for s in t._sections],
                    "keys": [c._keys for c in transform._channels] if transform else []}

    # ---- Movie Render Queue
    class Setting(_Obj):
        pass

    settings = {name: ue_class(name, Setting) for name in (
        "MoviePipelineOutputSetting", "MoviePipelineAntiAliasingSetting", "MoviePipelineColorSetting",
        "MoviePipelineGameOverrideSetting", "MoviePipelineDebugSettings", "MoviePipelineDeferredPassBase",
        "MoviePipelineImageSequenceOutput_EXR")}

    class MoviePipelineConsoleVariableSetting(Setting):
        _ue = "MoviePipelineConsoleVariableSetting"

        def add_or_update_console_variable(self, name: str, value: float) -> bool:
            self._props.setdefault("console_variables", {})[name] = value
            return True

    class MoviePipelinePostProcessPass(_Obj):
        _ue = "MoviePipelinePostProcessPass"

    class Config(_Obj):
        _ue = "MoviePipelinePrimaryConfig" if ue5 else "MoviePipelineMasterConfig"

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "_settings", {})

        def find_or_add_setting_by_class(self, cls, include_disabled_settings=False):
            return self._settings.setdefault(cls._ue, cls())

    class MoviePipelineExecutorJob(_Obj):
        _ue = "MoviePipelineExecutorJob"

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "_config", Config())

        def get_configuration(self):
            return self._config

    class MoviePipelineQueue(_Obj):
        _ue = "MoviePipelineQueue"

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "_jobs", [])

        def allocate_new_job(self, cls):
            job = cls()
            self._jobs.append(job)
            return job

    def queue_json(queue) -> dict:
        return {"jobs": [{**to_json(job._props), "settings": {name: to_json(s._props)
                                                              for name, s in job._config._settings.items()}}
                         for job in queue._jobs]}

    def save_queue_to_manifest_file(queue):
        path = project / "Saved" / "MovieRenderPipeline" / "QueueManifest.utxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(queue_json(queue), indent=1))
        return queue, str(path)

    # ---- asset functions
    def load_asset(path: str):
        if path in state["assets"]:
            return state["assets"][path]
        file = asset_file(path)
        if not file.is_file():
            return None
        data = json.loads(file.read_text())
        cls = {"Material": Material, "LevelSequence": LevelSequence}[data["class"]]
        asset = cls(path)
        if cls is LevelSequence:
            asset.set_display_rate(FrameRate(*data["display_rate"]))
        else:  # a saved material keeps its properties, its graph and what it was last compiled with
            asset._props.update({k: v for k, v in data.items() if k not in ("class", "expressions", "compiled")})
            object.__setattr__(asset, "_compiled", data.get("compiled"))
            object.__setattr__(asset, "_expressions", [_Saved(e) for e in data.get("expressions", [])])
        state["assets"][path] = asset
        return asset

    def create_asset(name, package_path, asset_class, factory):
        asset = asset_class(f"{package_path}/{name}")
        state["assets"][asset._path] = asset
        return asset

    def delete_asset(path: str) -> bool:
        state["assets"].pop(path, None)
        asset_file(path).unlink(missing_ok=True)
        return True

    def save_loaded_asset(asset, only_if_is_dirty=True) -> bool:
        file = asset_file(asset._path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(asset._data(), indent=1))
        return True

    def create_material_expression(material, cls, x=0, y=0):
        node = cls()
        material._expressions.append(node)
        return node

    def recompile_material(material) -> None:
        # The shader is compiled from the material's flags at this moment (MaterialTemplate.ush's
        # MATERIAL_ALLOW_NEGATIVE_EMISSIVECOLOR is a compile-time switch): changing a flag later has no effect on
        # what renders until the next recompile. A material with no graph does not compile.
        if not material._expressions:
            raise RuntimeError(f"fake unreal: {material._path} has no expressions to compile")
        object.__setattr__(material, "_compiled", {
            "allow_negative_emissive_color": bool(material._props.get("allow_negative_emissive_color"))})

    def load_level(path: str) -> bool:
        # EditorLevelLibrary::LoadLevel returns false (and logs) when the map package does not exist.
        return (content / (path.removeprefix("/Game/") + ".umap")).is_file() if path.startswith("/Game/") else False

    def connect_material_property(node, output_name, prop) -> bool:
        node._props["_connected"] = [output_name, prop]  # recorded for the saved material, not an API name
        return True

    class PlayerStart(_Obj):
        _ue = "PlayerStart"

        def get_actor_location(self):
            return self._location

        def get_actor_rotation(self):
            return self._rotation

    class Vector(_Obj):
        _ue = "Vector"

        def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
            super().__init__(x=x, y=y, z=z)

    class Rotator(_Obj):
        _ue = "Rotator"

        def __init__(self, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0) -> None:
            super().__init__(roll=roll, pitch=pitch, yaw=yaw)

    def struct(ue_name: str, *fields: str):
        def make(*args):
            obj = ue_class(ue_name)()
            obj._props.update(zip(fields, args))
            return obj
        return make

    def set_keep_alive(keep: bool) -> None:
        state["keep_alive"] = bool(keep)

    members: dict[str, Any] = {
        "log": lambda message: print(f"LogPython: {message}", flush=True),
        "log_warning": lambda message: print(f"LogPython: Warning: {message}", flush=True),
        "log_error": lambda message: print(f"LogPython: Error: {message}", flush=True),
        "SystemLibrary": _Library("SystemLibrary", get_engine_version=lambda: VERSIONS[flavour],
                                  get_console_variable_int_value=lambda name: int(state["cvars"].get(name, 0))),
        "EditorAssetLibrary": _Library(
            "EditorAssetLibrary", does_asset_exist=lambda path: path in state["assets"] or asset_file(path).is_file(),
            load_asset=load_asset, delete_asset=delete_asset, save_loaded_asset=save_loaded_asset),
        "AssetToolsHelpers": _Library("AssetToolsHelpers", get_asset_tools=lambda: _Library(
            "AssetTools", create_asset=create_asset)),
        "MaterialEditingLibrary": _Library(
            "MaterialEditingLibrary", create_material_expression=create_material_expression,
            connect_material_property=connect_material_property, recompile_material=recompile_material),
        "EditorLevelLibrary": _Library(
            "EditorLevelLibrary", load_level=load_level,
            get_all_level_actors=lambda: list(state["actors"])),
        "MoviePipelineEditorLibrary": _Library("MoviePipelineEditorLibrary",
                                               save_queue_to_manifest_file=save_queue_to_manifest_file),
        "EditorPythonScripting": _Library("EditorPythonScripting", set_keep_python_script_alive=set_keep_alive),
        "Material": Material, "MaterialFactoryNew": struct("MaterialFactoryNew"),
        "MaterialExpressionSceneTexture": MaterialExpressionSceneTexture,
        "LevelSequence": LevelSequence, "LevelSequenceFactoryNew": struct("LevelSequenceFactoryNew"),
        "CameraActor": CameraActor, "PlayerStart": PlayerStart,
        "MovieSceneCameraCutTrack": MovieSceneCameraCutTrack, "MovieScene3DTransformTrack": MovieScene3DTransformTrack,
        "FrameRate": FrameRate, "FrameNumber": struct("FrameNumber", "value"),
        "SoftObjectPath": struct("SoftObjectPath", "path"), "DirectoryPath": struct("DirectoryPath", "path"),
        "IntPoint": struct("IntPoint", "x", "y"), "Vector": Vector, "Rotator": Rotator,
        "MoviePipelineQueue": MoviePipelineQueue, "MoviePipelineExecutorJob": MoviePipelineExecutorJob,
        "MoviePipelineConsoleVariableSetting": MoviePipelineConsoleVariableSetting,
        "MoviePipelinePostProcessPass": MoviePipelinePostProcessPass, **settings,
    }
    for plugin, libraries in PLUGIN_LIBRARIES.items():
        for name in libraries if plugin not in plugins else ():
            del members[name]  # like the real module: no such attribute without its plugin
    for enum in ("MaterialDomain", "BlendableLocation", "SceneTextureId", "MaterialProperty", "AntiAliasingMethod",
                 "EXRCompressionFormat", "MovieSceneKeyInterpolation"):
        members[enum] = _Enum(enum)
    module = _FakeUnrealModule(members, state, project)
    sys.modules["unreal"] = module
    return module


class _Saved:
    """A saved material expression read back: its properties as plain data."""

    def __init__(self, props: dict) -> None:
        self._props = props


class _FakeUnrealModule(types.ModuleType):
    """The stand-in module: listed, modelled members; anything else raises AttributeError."""

    def __init__(self, members: dict[str, Any], state: dict[str, Any], project: Path) -> None:
        super().__init__("unreal", "STAND-IN for Unreal's `unreal` module (tests only)")
        object.__setattr__(self, "_members", members)
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_project", project)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        if name not in _API and name not in _API.get(MODULE, ()):
            raise AttributeError(f"fake unreal: unreal.{name} does not exist in this engine version")
        members = object.__getattribute__(self, "_members")
        if name in {lib for libs in PLUGIN_LIBRARIES.values() for lib in libs} - members.keys():
            raise AttributeError(f"fake unreal: unreal.{name} needs a plugin this project does not enable")
        if name not in members:
            raise NotImplementedError(f"fake unreal: unreal.{name} is not modelled")
        return members[name]

    # ---- test-side helpers (underscored: not part of Unreal's API)
    def _add_player_start(self, location: tuple[float, float, float], yaw: float) -> None:
        start = self._members["PlayerStart"]()
        object.__setattr__(start, "_location", self._members["Vector"](*location))
        object.__setattr__(start, "_rotation", self._members["Rotator"](0.0, 0.0, yaw))
        self._state["actors"].append(start)

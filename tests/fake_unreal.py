"""A STAND-IN for Unreal's ``unreal`` Python module, for tests only. It is not Unreal and renders nothing.

It implements exactly the API surface that ue_capture/editor_script.py uses (names from notes/unreal.md), records
every call and property write, and raises AttributeError on any other attribute, so the editor script cannot
silently start depending on API this stand-in does not model. Two flavours mirror the version differences qw
handles: ``"4.27"`` (MoviePipelineMasterConfig, the ``console_variables`` map) and ``"5.3"``
(MoviePipelinePrimaryConfig, ``add_or_update_console_variable``).

Install with `install(flavour)`; it puts the module in ``sys.modules["unreal"]`` and returns it. Completion is
driven by the test: `complete_render(success)` fires the executor's finish delegates, `tick(n)` runs slate ticks.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _Strict:
    """An object that only accepts the properties listed in ``_props`` (unset ones read as None)."""

    _props: frozenset[str] = frozenset()

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_values", {})
        for k, v in values.items():
            setattr(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._props:
            raise AttributeError(f"fake unreal: {type(self).__name__}.{name} is not modelled (not used by qw)")
        self._values[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in type(self)._props:
            raise AttributeError(f"fake unreal: {type(self).__name__}.{name} is not modelled (not used by qw)")
        return self._values.get(name)

    def set_editor_property(self, name: str, value: Any) -> None:
        setattr(self, name, value)


def _props(*names: str) -> frozenset[str]:
    return frozenset(names)


class _Enum:
    def __init__(self, name: str, *members: str) -> None:
        self._name = name
        self._members = set(members)

    def __getattr__(self, member: str) -> str:
        if member.startswith("_") or member not in self._members:
            raise AttributeError(f"fake unreal: {self._name}.{member} is not modelled")
        return f"{self._name}.{member}"


class _Delegate:
    def __init__(self) -> None:
        self.callables: list = []

    def add_callable_unique(self, fn) -> None:
        if fn not in self.callables:
            self.callables.append(fn)


def install(flavour: str = "4.27") -> types.ModuleType:
    """Build a fresh stand-in module of the given flavour and register it as ``unreal``."""
    if flavour not in ("4.27", "5.3"):
        raise ValueError(flavour)
    ue5 = flavour == "5.3"
    calls: list[tuple] = []
    state: dict[str, Any] = {"assets": {}, "executors": [], "ticks": {}, "quit": 0, "screenshots": []}

    def record(*entry):
        calls.append(entry)

    # ---- settings and structs
    class MoviePipelineOutputSetting(_Strict):
        _props = _props("output_directory", "file_name_format", "output_resolution", "use_custom_frame_rate",
                        "output_frame_rate", "use_custom_playback_range", "custom_start_frame", "custom_end_frame",
                        "zero_pad_frame_numbers", "override_existing_output", "flush_disk_writes_per_shot")

    class MoviePipelineAntiAliasingSetting(_Strict):
        _props = _props("spatial_sample_count", "temporal_sample_count", "override_anti_aliasing",
                        "anti_aliasing_method", "render_warm_up_count", "use_camera_cut_for_warm_up")

    class MoviePipelineColorSetting(_Strict):
        _props = _props("disable_tone_curve")

    class MoviePipelineGameOverrideSetting(_Strict):
        _props = _props("cinematic_quality_settings")

    class MoviePipelineDeferredPassBase(_Strict):
        _props = _props("additional_post_process_materials", "disable_multisample_effects",
                        "use32_bit_post_process_materials")

    class MoviePipelineImageSequenceOutput_EXR(_Strict):
        _props = _props("multilayer")

    if ue5:
        class MoviePipelineConsoleVariableSetting(_Strict):
            def add_or_update_console_variable(self, name: str, value: float) -> None:
                self._values.setdefault("cvars", {})[name] = value
    else:
        class MoviePipelineConsoleVariableSetting(_Strict):
            _props = _props("console_variables")

    class MoviePipelinePostProcessPass(_Strict):
        _props = _props("enabled", "material")

    class _Config(_Strict):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "settings", {})
            object.__setattr__(self, "initialized", False)

        def find_or_add_setting_by_class(self, cls, include_disabled_settings: bool = False):
            if cls not in self.settings:
                self.settings[cls] = cls()
            return self.settings[cls]

        def initialize_transient_settings(self) -> None:
            object.__setattr__(self, "initialized", True)

        def setting(self, cls):  # test helper
            return self.settings[cls]

    class MoviePipelineMasterConfig(_Config):
        pass

    class MoviePipelineExecutorJob(_Strict):
        _props = _props("job_name", "map", "sequence")

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "configuration", None)

        def set_configuration(self, config) -> None:
            object.__setattr__(self, "configuration", config)

    class MoviePipelineQueue(_Strict):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "jobs", [])

        def allocate_new_job(self, cls):
            job = cls()
            self.jobs.append(job)
            return job

        def delete_all_jobs(self) -> None:
            self.jobs.clear()

    class MoviePipelineQueueSubsystem(_Strict):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "queue", MoviePipelineQueue())

        def get_queue(self):
            return self.queue

    class _Executor(_Strict):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "on_executor_finished_delegate", _Delegate())
            state["executors"].append(self)

        def execute(self, queue) -> None:
            record("execute", type(self).__name__, [j.job_name for j in queue.jobs])

    class MoviePipelinePIEExecutor(_Executor):
        pass

    class MoviePipelineNewProcessExecutor(_Executor):
        pass

    class _Material(_Strict):
        _props = _props("material_domain", "blendable_location")

        def __init__(self, path: str) -> None:
            super().__init__()
            object.__setattr__(self, "path", path)
            object.__setattr__(self, "expressions", [])

    class MaterialExpressionSceneTexture(_Strict):
        _props = _props("scene_texture_id")

    class MaterialExpressionCustom(_Strict):
        _props = _props("code", "output_type")

    class PostProcessSettings(_Strict):
        _props = _props("weighted_blendables")

    class PostProcessVolume(_Strict):
        _props = _props("unbound", "settings")

    # ---- libraries (static-method namespaces)
    def _namespace(name: str, **functions) -> type:
        return type(name, (), {k: staticmethod(v) for k, v in functions.items()})

    def create_asset(name, package_path, asset_class, factory):
        material = _Material(f"{package_path}/{name}")
        state["assets"][material.path] = material
        record("create_asset", material.path)
        return material

    def create_material_expression(material, cls, x, y):
        node = cls()
        material.expressions.append(node)
        return node

    def connect_material_property(node, output_name, prop):
        record("connect", type(node).__name__, output_name, prop)

    def spawn_actor_from_class(cls, location):
        actor = cls(settings=PostProcessSettings())
        record("spawn", cls.__name__)
        return actor

    def take_high_res_screenshot(res_x, res_y, filename, capture_hdr=False):
        state["screenshots"].append((res_x, res_y, filename, capture_hdr))
        record("screenshot", filename, capture_hdr)
        hook = state.get("on_screenshot")
        if hook:
            hook(res_x, res_y, filename)

    def register_slate_post_tick_callback(fn):
        handle = f"tick{len(state['ticks'])}"
        state["ticks"][handle] = fn
        return handle

    def unregister_slate_post_tick_callback(handle):
        del state["ticks"][handle]

    def load_asset(path):
        if path not in state["assets"]:
            state["assets"][path] = _Material(path)
        return state["assets"][path]

    subsystem = MoviePipelineQueueSubsystem()
    members: dict[str, Any] = {
        "log": lambda msg: record("log", msg),
        "log_error": lambda msg: record("log_error", msg),
        "load_asset": load_asset,
        "get_editor_subsystem": lambda cls: subsystem,
        "register_slate_post_tick_callback": register_slate_post_tick_callback,
        "unregister_slate_post_tick_callback": unregister_slate_post_tick_callback,
        "SystemLibrary": _namespace(
            "SystemLibrary", quit_editor=lambda: state.__setitem__("quit", state["quit"] + 1),
            execute_console_command=lambda world, command: record("console", command)),
        "EditorAssetLibrary": _namespace(
            "EditorAssetLibrary", does_asset_exist=lambda path: path in state["assets"],
            save_loaded_asset=lambda asset: record("save", asset.path)),
        "AssetToolsHelpers": _namespace(
            "AssetToolsHelpers", get_asset_tools=lambda: _namespace("AssetTools", create_asset=create_asset)),
        "MaterialEditingLibrary": _namespace(
            "MaterialEditingLibrary", create_material_expression=create_material_expression,
            connect_material_property=connect_material_property,
            recompile_material=lambda m: record("recompile", m.path)),
        "EditorLevelLibrary": _namespace(
            "EditorLevelLibrary", load_level=lambda path: record("load_level", path),
            spawn_actor_from_class=spawn_actor_from_class),
        "LevelSequenceEditorBlueprintLibrary": _namespace(
            "LevelSequenceEditorBlueprintLibrary", open_level_sequence=lambda seq: record("open_sequence", seq.path),
            set_current_time=lambda frame: record("set_time", frame)),
        "AutomationLibrary": _namespace("AutomationLibrary", take_high_res_screenshot=take_high_res_screenshot),
        "Material": _Material, "MaterialFactoryNew": lambda: "MaterialFactoryNew",
        "MaterialExpressionSceneTexture": MaterialExpressionSceneTexture,
        "MaterialExpressionCustom": MaterialExpressionCustom,
        "MaterialDomain": _Enum("MaterialDomain", "MD_POST_PROCESS"),
        "BlendableLocation": _Enum("BlendableLocation", "BL_AFTER_TONEMAPPING"),
        "SceneTextureId": _Enum("SceneTextureId", "PPI_VELOCITY"),
        "MaterialProperty": _Enum("MaterialProperty", "MP_EMISSIVE_COLOR"),
        "CustomMaterialOutputType": _Enum("CustomMaterialOutputType", "CMOT_FLOAT3"),
        "AntiAliasingMethod": _Enum("AntiAliasingMethod", "AAM_NONE"),
        "MoviePipelineMasterConfig": MoviePipelineMasterConfig,
        "MoviePipelineOutputSetting": MoviePipelineOutputSetting,
        "MoviePipelineAntiAliasingSetting": MoviePipelineAntiAliasingSetting,
        "MoviePipelineColorSetting": MoviePipelineColorSetting,
        "MoviePipelineGameOverrideSetting": MoviePipelineGameOverrideSetting,
        "MoviePipelineDeferredPassBase": MoviePipelineDeferredPassBase,
        "MoviePipelineImageSequenceOutput_EXR": MoviePipelineImageSequenceOutput_EXR,
        "MoviePipelineConsoleVariableSetting": MoviePipelineConsoleVariableSetting,
        "MoviePipelinePostProcessPass": MoviePipelinePostProcessPass,
        "MoviePipelineExecutorJob": MoviePipelineExecutorJob,
        "MoviePipelineQueueSubsystem": MoviePipelineQueueSubsystem,
        "MoviePipelinePIEExecutor": MoviePipelinePIEExecutor,
        "MoviePipelineNewProcessExecutor": MoviePipelineNewProcessExecutor,
        "PostProcessVolume": PostProcessVolume,
        "DirectoryPath": lambda path: ("DirectoryPath", path),
        "IntPoint": lambda x, y: ("IntPoint", x, y),
        "FrameRate": lambda numerator, denominator: ("FrameRate", numerator, denominator),
        "SoftObjectPath": lambda path: ("SoftObjectPath", path),
        "Vector": lambda x, y, z: ("Vector", x, y, z),
        "WeightedBlendable": lambda weight, obj: ("WeightedBlendable", weight, obj),
        "WeightedBlendables": lambda array: ("WeightedBlendables", tuple(array)),
    }
    if ue5:  # 5.2+: the Master config was renamed; the old name stays as a deprecated alias
        members["MoviePipelinePrimaryConfig"] = type("MoviePipelinePrimaryConfig", (_Config,), {})

    module = _FakeUnrealModule("unreal", members, calls, state, subsystem)
    sys.modules["unreal"] = module
    return module


class _FakeUnrealModule(types.ModuleType):
    """The stand-in module: the modelled members, plus test-side helpers; any other attribute raises."""

    def __init__(self, name, members, calls, state, subsystem) -> None:
        super().__init__(name, "STAND-IN for Unreal's `unreal` module (tests only)")
        self.__dict__.update(members)
        self.calls, self.state, self.subsystem = calls, state, subsystem

    def __getattr__(self, name: str):
        raise AttributeError(f"fake unreal: unreal.{name} is not modelled (not used by qw)")

    # ---- test-side helpers (not part of Unreal's API)
    def complete_render(self, success: bool) -> None:
        """What MRQ does when the queue finishes: fire every executor's finish delegates."""
        for executor in self.state["executors"]:
            for fn in list(executor.on_executor_finished_delegate.callables):
                fn(executor, success)

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            for fn in list(self.state["ticks"].values()):
                fn(1 / 30)

    def console_commands(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "console"]

"""Derive the committed Unreal Python API name lists (ue-4.27.txt, ue-5.5.txt) from public sources.

Run by hand when the classes qw's editor script touches change; the lists, not the sources, are committed:

    python tests/ue_api/derive_names.py --hx-git PATH --ue427-git PATH --stub-py PATH --ue55-git PATH

* UE 4.27: the generated Python API of 4.27 as Haxe externs (``peteshand/unreal_python_api``, ``4_27/src/unreal``;
  generated from the running editor, members flattened through ``extends``), plus editor-only properties (not
  in those externs) from the 4.27.2 engine headers, and module functions from ``PyCore.cpp``.
* UE 5.5: the ``unreal-stub`` 0.2.1 wheel (PyPI; generated from UE 5.5.4) for engine and editor classes; Movie
  Render Queue is a plugin missing from it, so its classes come from the UE 5.5.1 headers.
* UE 5.0-5.4: no generated API was found, so there is no list and qw refuses these versions as unverified.

Header members follow the Python generator's rules: a UPROPERTY is exposed when it is editable or Blueprint
visible, a UFUNCTION when it is BlueprintCallable/Pure (``ScriptMethod`` ones also on their first argument's type),
names are snake_cased with a leading ``b`` of bools dropped and enum values upper-cased.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent

CLASSES = (
    "SystemLibrary", "EditorAssetLibrary", "AssetToolsHelpers", "AssetTools", "Material", "MaterialFactoryNew",
    "MaterialDomain", "BlendableLocation", "MaterialEditingLibrary", "MaterialExpressionSceneTexture",
    "SceneTextureId", "MaterialProperty", "LevelSequence", "LevelSequenceFactoryNew", "MovieSceneSequence",
    "SequencerBindingProxy", "MovieSceneBindingProxy", "CameraActor", "CameraComponent", "MovieSceneCameraCutTrack",
    "MovieSceneCameraCutSection", "MovieScene3DTransformTrack", "MovieScene3DTransformSection", "MovieSceneSection",
    "MovieSceneScriptingFloatChannel", "MovieSceneScriptingDoubleChannel", "FrameRate", "FrameNumber",
    "SequenceTimeUnit", "MovieSceneKeyInterpolation", "EditorLevelLibrary", "PlayerStart", "Vector", "Rotator",
    "EditorPythonScripting", "SoftObjectPath", "DirectoryPath", "IntPoint",
    "MoviePipelineQueue", "MoviePipelineExecutorJob", "MoviePipelineMasterConfig", "MoviePipelinePrimaryConfig",
    "MoviePipelineOutputSetting", "MoviePipelineAntiAliasingSetting", "AntiAliasingMethod",
    "MoviePipelineColorSetting", "MoviePipelineGameOverrideSetting", "MoviePipelineDebugSettings",
    "MoviePipelineDeferredPassBase", "MoviePipelinePostProcessPass", "MoviePipelineImageSequenceOutput_EXR",
    "EXRCompressionFormat", "MoviePipelineConsoleVariableSetting", "MoviePipelineEditorLibrary",
)
MRQ_SOURCE_PATH = "Engine/Plugins/MovieScene/MovieRenderPipeline/Source"
MODULE = "unreal"  # the list's line for module-level functions
MODULE_FUNCTIONS = ("log", "log_warning", "log_error")  # PyCore.cpp (4.27) / unreal-stub (5.5)
UE427_HEADER_MEMBERS = {  # class → (4.27.2 header, C++ name): members the externs leave out (editor-only, noexport)
    "MaterialExpressionSceneTexture": ("Engine/Source/Runtime/Engine/Classes/Materials/MaterialExpressionSceneTexture.h",
                                       "UMaterialExpressionSceneTexture"),
    "Vector": ("Engine/Source/Runtime/CoreUObject/Public/UObject/NoExportTypes.h", "FVector"),
    "Rotator": ("Engine/Source/Runtime/CoreUObject/Public/UObject/NoExportTypes.h", "FRotator"),
}
UE55_HEADERS = {  # what unreal-stub 0.2.1 lacks, from the 5.5.1 source: class → (header, C++ name, kind)
    "AntiAliasingMethod": ("Engine/Source/Runtime/Engine/Public/SceneUtils.h", "EAntiAliasingMethod", "enum"),
    "EXRCompressionFormat": (MRQ_SOURCE_PATH + "/MovieRenderPipelineRenderPasses/Public/MoviePipelineEXROutput.h",
                             "EEXRCompressionFormat", "enum"),
    "MoviePipelineEditorLibrary": (MRQ_SOURCE_PATH + "/MovieRenderPipelineEditor/Public/"
                                   "MoviePipelineEditorBlueprintLibrary.h", "UMoviePipelineEditorBlueprintLibrary",
                                   "class"),
}
UE427_FROM_SOURCE = {  # editor-only members the externs lack, read in the 4.27.2 source
    # Engine/Source/Runtime/Engine/Classes/Materials/Material.h: UPROPERTY(EditAnywhere) bAllowNegativeEmissiveColor
    "Material": ("allow_negative_emissive_color",),
}


def pythonize(name: str, *, is_bool: bool = False) -> str:
    """Unreal's C++ → Python name: 'bUse32BitPostProcessMaterials' → 'use32_bit_post_process_materials'."""
    if is_bool and re.match(r"b[A-Z]", name):
        name = name[1:]
    out = []
    for i, ch in enumerate(name):
        prev, nxt = name[i - 1] if i else "", name[i + 1] if i + 1 < len(name) else ""
        if ch.isupper() and i and (prev.islower() or prev.isdigit() or (prev.isupper() and nxt.islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


class GitTree:
    """Read files of a bare mirror without a checkout."""

    def __init__(self, git_dir: str) -> None:
        self.git_dir = git_dir
        self.commit = self._git("rev-parse", "HEAD").strip()
        self.files = self._git("ls-tree", "-r", "--name-only", "HEAD").splitlines()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], check=True, capture_output=True,
                              text=True, errors="replace").stdout

    def read(self, path: str) -> str:
        return self._git("show", f"HEAD:{path}")


# ----------------------------------------------------------------------------------------------- parsers


def hx_classes(tree: GitTree, root: str = "4_27/src/unreal") -> dict[str, tuple[str | None, set[str]]]:
    """Haxe externs: class → (parent, own members)."""
    out = {}
    for path in tree.files:
        if path.startswith(root + "/") and path.endswith(".hx"):
            text = tree.read(path)
            parent = re.search(r"extends unreal\.(\w+)", text)
            members = set(re.findall(r"public (?:var|function) (\w+)", text)) - {"___init__", "new"}
            out[Path(path).stem] = (parent[1] if parent else None, members)
    return out


def stub_classes(text: str) -> dict[str, tuple[str | None, set[str]]]:
    """unreal-stub's unreal.py: class → (first base, methods, properties, enum values, editor properties)."""
    out: dict[str, tuple[str | None, set[str]]] = {}
    for block in re.split(r"\n(?=class )", text):
        head = re.match(r"class (\w+)\((\w+)", block)
        if not head:
            continue
        members = set(re.findall(r"\n    def (\w+)\(", block))
        members |= set(re.findall(r"\n    ([A-Z][A-Z0-9_]*): ", block))
        members |= set(re.findall(r"\n    - ``(\w+)`` \(", block))
        out[head[1]] = (head[2], {m for m in members if not m.startswith("_")})
    return out


UPROPERTY = re.compile(r"UPROPERTY\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*(?:UE_DEPRECATED\([^)]*\)\s*)?([^;{]+?)\s*(?:=[^;]*)?;")
UFUNCTION = re.compile(r"UFUNCTION\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*(?:static\s+)?(?:virtual\s+)?[\w<>:,\s*&]+?\s(\w+)\(")
EXPOSED_PROPERTY = ("EditAnywhere", "EditDefaultsOnly", "EditInstanceOnly", "BlueprintReadWrite", "BlueprintReadOnly",
                    "VisibleAnywhere")


def header_members(text: str, cpp_name: str) -> tuple[str | None, set[str]]:
    """Exposed members of one UCLASS/USTRUCT in a header: (parent Python name, members)."""
    head = re.search(rf"(?:class|struct)\s+(?:\w+_API\s+)?{cpp_name}\b\s*(?::\s*public\s+[UFA](\w+))?", text)
    if not head:
        raise KeyError(cpp_name)
    body_start = text.index("{", head.end())
    depth, i = 0, body_start
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            break
        i += 1
    body = text[body_start:i]
    members = set()
    for spec, decl in UPROPERTY.findall(body):
        if any(word in spec for word in EXPOSED_PROPERTY) and "ScriptNoExport" not in spec:
            name = decl.split()[-1]
            members.add(pythonize(name, is_bool=decl.split()[0] == "bool"))
    for spec, name in UFUNCTION.findall(body):
        if "BlueprintCallable" in spec or "BlueprintPure" in spec:
            script_name = re.search(r'ScriptName\s*=\s*"(\w+)"', spec)
            members.add(script_name[1] if script_name else pythonize(name))
    return head[1], members


def mrq_header_classes(tree: GitTree, wanted: tuple[str, ...], base: dict[str, tuple[str | None, set[str]]]
                       ) -> dict[str, tuple[set[str], str]]:
    """MRQ classes from a source tree: Python name → (members incl. inherited, header path). Parents are looked
    up in the MRQ headers too; a root UCLASS inherits `base`'s Object, a USTRUCT its StructBase."""
    headers = {p: tree.read(p) for p in tree.files if p.startswith(MRQ_SOURCE_PATH) and p.endswith(".h")}

    def find(name: str) -> tuple[str | None, set[str], str] | None:
        for prefix, root in (("U", "Object"), ("F", "StructBase")):
            pattern = re.compile(rf"(?:class|struct)\s+\w+_API\s+{prefix}{name}\b")
            path = next((p for p, text in headers.items() if pattern.search(text)), None)
            if path:
                parent, members = header_members(headers[path], prefix + name)
                return parent or root, members, path
        return None

    out = {}
    for name in wanted:
        found = find(name)
        if found is None:
            continue
        parent, members, path = found
        members = set(members)
        while parent and (up := find(parent)) is not None:
            parent, more, _ = up
            members |= more
        out[name] = (members | flatten(base, parent or ""), path)
    return out


def enum_values(text: str, enum: str) -> set[str]:
    body = re.search(rf"enum\s+(?:class\s+)?{enum}\b[^{{]*\{{(.*?)\}}", text, re.S)
    return {pythonize(v).upper() for v in re.findall(r"^\s*(\w+)\s*(?:=[^,]*)?,?\s*(?:UMETA.*)?$", body[1], re.M)
            if not v.endswith("_MAX")} if body else set()


def flatten(classes: dict[str, tuple[str | None, set[str]]], name: str) -> set[str]:
    members: set[str] = set()
    while name in classes:
        parent, own = classes[name][:2]
        members |= own
        name = parent or ""
    return members


# ----------------------------------------------------------------------------------------------- lists


def python_name(name: str) -> bool:
    """A public Python member: snake_case or an UPPER enum value (not dunders, not the externs' Haxe helpers)."""
    return not name.startswith("_") and name in (name.lower(), name.upper()) and name != "MAX"


def write_list(path: Path, title: str, sources: list[str], names: dict[str, set[str]]) -> None:
    lines = [f"# {title}", "# Derived by tests/ue_api/derive_names.py from:"] + [f"#   {s}" for s in sources]
    lines.append("# One line per class: its Python name, then every member (own and inherited), sorted.")
    lines += [f"{cls}: {' '.join(sorted(filter(python_name, members)))}" for cls, members in sorted(names.items())]
    path.write_text("\n".join(lines) + "\n")


PYTHON_PLUGIN = "Engine/Plugins/Experimental/PythonScriptPlugin/Source/PythonScriptPlugin/Private"


def method_table(text: str) -> set[str]:
    """Names in a CPython PyMethodDef table of the Python plugin."""
    return set(re.findall(r'\{ "(\w+)", PyCFunctionCast', text))


def derive_427(hx: GitTree, engine: GitTree) -> dict[str, set[str]]:
    classes = hx_classes(hx)
    # The externs stop at the plugin's native bases; their methods come from its method tables.
    classes["_ObjectBase"] = (None, method_table(engine.read(f"{PYTHON_PLUGIN}/PyWrapperObject.cpp")))
    classes["StructBase"] = (None, classes.get("StructBase", (None, set()))[1]
                             | method_table(engine.read(f"{PYTHON_PLUGIN}/PyWrapperStruct.cpp")))
    names = {c: flatten(classes, c) for c in CLASSES if c in classes}
    for cls, (header, cpp_name) in UE427_HEADER_MEMBERS.items():
        names[cls] |= header_members(engine.read(header), cpp_name)[1]
    pycore = engine.read(f"{PYTHON_PLUGIN}/PyCore.cpp")
    names[MODULE] = {f for f in MODULE_FUNCTIONS if f'{{ "{f}", ' in pycore}
    return names


def derive_55(stub_text: str, engine: GitTree) -> tuple[dict[str, set[str]], dict[str, str]]:
    classes = stub_classes(stub_text)
    names = {c: flatten(classes, c) for c in CLASSES if c in classes}
    header_of = {}
    for cls, (header, cpp_name, kind) in UE55_HEADERS.items():
        text = engine.read(header)
        names[cls] = enum_values(text, cpp_name) if kind == "enum" else header_members(text, cpp_name)[1]
    mrq = mrq_header_classes(engine, tuple(c for c in CLASSES if c not in names), classes)
    for cls, (members, path) in mrq.items():
        names[cls] = members
        header_of[cls] = path
    names[MODULE] = {f for f in MODULE_FUNCTIONS if re.search(rf"^def {f}\(", stub_text, re.M)}
    return names, header_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hx-git", required=True, help="bare mirror of peteshand/unreal_python_api")
    parser.add_argument("--ue427-git", required=True, help="bare mirror of a UE 4.27 engine source tree")
    parser.add_argument("--stub-py", required=True, help="unreal/unreal.py from the unreal-stub 0.2.1 wheel")
    parser.add_argument("--ue55-git", required=True, help="bare mirror of a UE 5.5 engine source tree")
    args = parser.parse_args()
    hx, e427, e55 = GitTree(args.hx_git), GitTree(args.ue427_git), GitTree(args.ue55_git)
    v427 = derive_427(hx, e427)
    for cls, members in UE427_FROM_SOURCE.items():
        v427[cls] |= set(members)
    v55, mrq_headers = derive_55(Path(args.stub_py).read_text(), e55)
    write_list(HERE / "ue-4.27.txt", "Unreal Engine 4.27 Python API: the names around qw's editor script",
               [f"peteshand/unreal_python_api @{hx.commit} 4_27/src/unreal/*.hx (generated from UE 4.27)",
                f"truefranco/UE4.27.2-Oculus-Nvidia-AMD @{e427.commit} (UE 4.27.2 source): PyCore.cpp, "
                "PyWrapperObject.cpp, PyWrapperStruct.cpp, "
                + ", ".join(sorted({Path(h).name for h, _ in UE427_HEADER_MEMBERS.values()}))], v427)
    write_list(HERE / "ue-5.5.txt", "Unreal Engine 5.5 Python API: the names around qw's editor script",
               ["unreal-stub 0.2.1 (PyPI, generated from UE 5.5.4) unreal/unreal.py",
                f"lakeone/UE5.51MagicM @{e55.commit} (UE 5.5.1 source): "
                + ", ".join(sorted({Path(h).name for h in mrq_headers.values()}
                                   | {Path(h).name for h, _, _ in UE55_HEADERS.values()}))], v55)

if __name__ == "__main__":
    main()

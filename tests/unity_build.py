"""Compile the Unity package the way Unity does: one assembly per asmdef.

Unity compiles every `.asmdef` into its own assembly, against exactly the
assemblies it names (`references`, by assembly name), the engine unless
`noEngineReferences`, and the precompiled DLLs (all of them, or only the
`precompiledReferences` when `overrideReferences`). A reference to a name that
does not exist is dropped without a word, so the code that needed it fails with
CS0246. `defineConstraints` decide whether the assembly is compiled at all,
`versionDefines` add symbols when a package of a matching version is installed,
and `includePlatforms`/`excludePlatforms` pick the platforms.

`build(scenario)` does the same with mono's mcs (C# 7.2, Unity's floor) against
stand-in assemblies that carry the real assembly names (tests/csharp/standins/,
each file one assembly, its first line `// assembly: NAME references: A, B`),
so a wrong asmdef reference fails here as it fails in Unity.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "unity_client"
STANDINS = REPO / "tests" / "csharp" / "standins"
TOOLCHAIN = REPO / "build" / "csharp"

# Unity versions whose UNITY_X_Y_OR_NEWER symbols a scenario may define, oldest first.
VERSIONS = ["2021.1", "2021.2", "2021.3", "2022.1", "2022.2", "2022.3", "2023.1", "2023.2",
            "6000.0", "6000.1", "6000.2", "6000.3", "6000.4", "6000.5"]
PLATFORM_DEFINES = {"StandaloneLinux64": ["UNITY_STANDALONE", "UNITY_STANDALONE_LINUX"],
                    "StandaloneWindows64": ["UNITY_STANDALONE", "UNITY_STANDALONE_WIN"],
                    "Android": ["UNITY_ANDROID"], "iOS": ["UNITY_IOS"],
                    "WebGL": ["UNITY_WEBGL"]}
# Packages whose assemblies a scenario can have installed: package -> stand-in assemblies.
PACKAGE_ASSEMBLIES = {
    "com.unity.ugui": ["UnityEngine.UI"],
    "com.unity.textmeshpro": ["Unity.TextMeshPro"],
    "com.cysharp.yetanotherhttphandler": ["Cysharp.Net.Http.YetAnotherHttpHandler"],
}
# In Unity 6, TextMeshPro ships inside com.unity.ugui 2.x (same assembly name).
UGUI_WITH_TMP = "2.0.0"
# Google.Protobuf's own NuGet dependency, which UnityNuGet installs beside it.
_UNSAFE = TOOLCHAIN / "System.Runtime.CompilerServices.Unsafe.dll"
# Precompiled DLLs from the NuGet dependencies (UnityNuGet puts them in the project).
PRECOMPILED = ["Google.Protobuf.dll", "Grpc.Core.Api.dll", "Grpc.Net.Client.dll",
               "Grpc.Net.Client.Web.dll", "Grpc.Net.Common.dll"]


@dataclass
class Scenario:
    unity: str = "2021.3"
    platform: str = "StandaloneLinux64"
    editor: bool = False  # compiling for the editor (UNITY_EDITOR, Editor-only assemblies)
    packages: dict = field(default_factory=lambda: {"com.unity.ugui": "1.0.0"})

    @property
    def name(self) -> str:
        extras = "+".join(sorted(p.split(".")[-1] for p in self.packages)) or "bare"
        return f"{self.unity}-{self.platform}{'-editor' if self.editor else ''}-{extras}"

    def defines(self) -> list[str]:
        major, minor = self.unity.split(".")
        out = [f"UNITY_{v.replace('.', '_')}_OR_NEWER" for v in VERSIONS
               if _version(v) <= _version(self.unity)]
        out += [f"UNITY_{major}", f"UNITY_{major}_{minor}"]
        out += PLATFORM_DEFINES[self.platform]
        if self.editor:
            out += ["UNITY_EDITOR", "UNITY_EDITOR_LINUX"]
        return out

    def installed_assemblies(self) -> set[str]:
        out = set()
        for package in self.packages:
            out.update(PACKAGE_ASSEMBLIES.get(package, []))
        ugui = self.packages.get("com.unity.ugui")
        if ugui and _version(ugui) >= _version(UGUI_WITH_TMP):
            out.add("Unity.TextMeshPro")
        return out


def _version(text: str) -> tuple:
    parts = [int(x) for x in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def version_matches(expression: str, version: str) -> bool:
    """Unity's versionDefines expression: "1.0.0" means >= 1.0.0; "[1.0,2.0)" ranges."""
    v = _version(version)
    exact = re.fullmatch(r"\s*\[\s*([^,\]]+?)\s*\]\s*", expression)
    if exact:  # "[1.0]": exactly that version
        return v == _version(exact.group(1))
    m = re.fullmatch(r"\s*([\[(])\s*([^,]*)\s*,\s*([^\])]*)\s*([\])])\s*", expression)
    if m is None:
        return v >= _version(expression)
    low, high = m.group(2), m.group(3)
    ok = True
    if low:
        ok &= v >= _version(low) if m.group(1) == "[" else v > _version(low)
    if high:
        ok &= v <= _version(high) if m.group(4) == "]" else v < _version(high)
    return ok


@dataclass
class Assembly:
    name: str
    asmdef: Path
    spec: dict
    sources: list[Path]


def asmdefs(package: Path) -> list[Assembly]:
    """Every asmdef of the package with the scripts Unity puts in it (the folder and its
    subfolders, minus those that have an asmdef of their own; Samples~ is not compiled)."""
    defs = sorted(p for p in package.rglob("*.asmdef") if "~" not in p.relative_to(package)
                  .as_posix())
    folders = {d.parent for d in defs}
    out = []
    for d in defs:
        sources = []
        for cs in sorted(d.parent.rglob("*.cs")):
            owner = next(p for p in [cs.parent, *cs.parents] if p in folders or p == package)
            if owner == d.parent:
                sources.append(cs)
        out.append(Assembly(json.loads(d.read_text())["name"], d, json.loads(d.read_text()),
                            sources))
    return out


def _standins() -> dict[str, tuple[Path, list[str]]]:
    out = {}
    for path in sorted(STANDINS.glob("*.cs")):
        m = re.match(r"// assembly: (\S+)(?: references: (.*))?", path.read_text().splitlines()[0])
        if m is None:
            raise ValueError(f"{path}: first line must be '// assembly: NAME references: ...'")
        refs = [r.strip() for r in (m.group(2) or "").split(",") if r.strip()]
        out[m.group(1)] = (path, refs)
    return out


class BuildError(RuntimeError):
    pass


def _mcs(out: Path, sources: list[Path], refs: list[Path], defines: list[str]) -> None:
    cmd = ["mcs", "-langversion:7.2", "-target:library", "-nowarn:1591,0414,0169,0649",
           "-r:System.Net.Http", *(f"-define:{d}" for d in defines),
           *(f"-r:{r}" for r in refs), f"-out:{out}", *map(str, sources)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise BuildError(f"{out.name}: " + (result.stdout + result.stderr).strip())


@dataclass
class BuildResult:
    scenario: Scenario
    built: dict[str, Path]
    skipped: dict[str, str]  # assembly -> why Unity would not compile it
    dropped: dict[str, list[str]]  # assembly -> references Unity would drop silently
    standins: dict[str, Path]  # engine, installed packages and precompiled DLLs


def build(scenario: Scenario, out: Path, package: Path = PACKAGE) -> BuildResult:
    out.mkdir(parents=True, exist_ok=True)
    defines = scenario.defines()
    standins = _standins()
    available: dict[str, Path] = {}
    engine = {"UnityEngine"} | ({"UnityEditor"} if scenario.editor else set())
    wanted = engine | scenario.installed_assemblies() | {Path(p).stem for p in PRECOMPILED}

    def standin(name: str) -> Path:
        if name in available:
            return available[name]
        if name == "Google.Protobuf":  # the real one, built from Debian's sources
            available[name] = TOOLCHAIN / "Google.Protobuf.dll"
            return available[name]
        path, refs = standins[name]
        dll = out / f"{name}.dll"
        _mcs(dll, [path], [standin(r) for r in refs] + [_UNSAFE], defines)
        available[name] = dll
        return dll

    for name in sorted(wanted):
        standin(name)
    precompiled = {Path(p).stem: available[Path(p).stem] for p in PRECOMPILED}
    built: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    dropped: dict[str, list[str]] = {}
    pending = asmdefs(package)
    by_name = {a.name: a for a in pending}
    while pending:
        progressed = False
        for asm in list(pending):
            spec = asm.spec
            own = [r for r in spec.get("references", []) if r in by_name]
            if any(r not in built and r not in skipped for r in own):
                continue
            pending.remove(asm)
            progressed = True
            reason = _excluded(spec, scenario, defines)
            if reason:
                skipped[asm.name] = reason
                continue
            asm_defines = defines + _version_defines(spec, scenario)
            refs, lost = [], []
            for r in spec.get("references", []):
                if r in built:
                    refs.append(built[r])
                elif r in available and r not in precompiled and r not in engine:
                    refs.append(available[r])
                else:
                    lost.append(r)  # Unity: an unknown or uncompiled reference is ignored
            if lost:
                dropped[asm.name] = lost
            if not spec.get("noEngineReferences", False):
                refs += [available[e] for e in sorted(engine)]
            if spec.get("overrideReferences", False):
                refs += [precompiled[Path(p).stem] for p in spec.get("precompiledReferences", [])
                         if Path(p).stem in precompiled]
            else:
                refs += list(precompiled.values())
            dll = out / f"{asm.name}.dll"
            _mcs(dll, asm.sources, refs + [_UNSAFE], asm_defines)
            built[asm.name] = dll
        if not progressed:
            raise BuildError(f"reference cycle among {[a.name for a in pending]}")
    return BuildResult(scenario, built, skipped, dropped, available)


def build_samples(result: BuildResult, out: Path, package: Path = PACKAGE) -> Path:
    """Samples land in the user's Assets/ and compile into Assembly-CSharp, which sees
    every auto-referenced assembly, the engine and the precompiled DLLs."""
    sources = sorted((package / "Samples~").rglob("*.cs"))
    refs = [p for name, p in result.built.items()
            if _spec(package, name).get("autoReferenced", True)]
    refs += list(result.standins.values())
    dll = out / "Assembly-CSharp.dll"
    _mcs(dll, sources, refs + [_UNSAFE], result.scenario.defines())
    return dll


def _spec(package: Path, name: str) -> dict:
    return next(a.spec for a in asmdefs(package) if a.name == name)


def _excluded(spec: dict, scenario: Scenario, defines: list[str]) -> str | None:
    platform = "Editor" if scenario.editor else scenario.platform
    include, exclude = spec.get("includePlatforms", []), spec.get("excludePlatforms", [])
    if include and platform not in include:
        return f"includePlatforms {include} lacks {platform}"
    if platform in exclude:
        return f"excludePlatforms has {platform}"
    for constraint in spec.get("defineConstraints", []):
        # Every constraint must hold; one may be "A || !B" (any alternative holds).
        alternatives = [a.strip() for a in constraint.split("||")]
        if not any((a.lstrip("!") in defines) != a.startswith("!") for a in alternatives):
            return f"defineConstraints: {constraint}"
    return None


def _version_defines(spec: dict, scenario: Scenario) -> list[str]:
    out = []
    for rule in spec.get("versionDefines", []):
        version = scenario.packages.get(rule["name"])
        if rule["name"] == "Unity":
            version = scenario.unity
        if version is not None and version_matches(rule["expression"], version):
            out.append(rule["define"])
    return out


def copy_toolchain_dlls(into: Path) -> None:
    for dll in TOOLCHAIN.glob("*.dll"):
        shutil.copy(dll, into)

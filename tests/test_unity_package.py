"""The Unity package as Unity sees it: every asset has a stable, unique .meta."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from unity_build import BuildError, Scenario, build, build_samples

from conftest import REPO

PACKAGE = REPO / "unity_client"
TOOL = REPO / "tools" / "unity_meta.py"


def check(package):
    return subprocess.run([sys.executable, str(TOOL), "--check", "--package", str(package)],
                          capture_output=True, text=True)


def test_every_asset_has_a_committed_meta():
    result = check(PACKAGE)
    assert result.returncode == 0, result.stderr


def test_guids_are_stable_and_unique():
    sys.path.insert(0, str(REPO / "tools"))
    import unity_meta

    guids = {}
    for asset in unity_meta.assets(PACKAGE):
        text = unity_meta.meta_of(asset).read_text()
        guid = unity_meta._GUID.search(text).group(1)
        assert guid == unity_meta.guid_for(PACKAGE, asset), asset  # derived, not random
        guids[guid] = asset
    assert len(guids) == len(unity_meta.assets(PACKAGE))
    # The sample's contents are imported with their metas; the ~ folder itself is hidden.
    assert (PACKAGE / "Samples~" / "CaptionDemo" / "CaptionDemo.cs.meta").exists()
    assert not (PACKAGE / "Samples~.meta").exists()


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "unity_client"
    shutil.copytree(PACKAGE, dst)
    return dst


def test_a_missing_meta_fails(copy):
    (copy / "Runtime" / "Client" / "ArBridgeClient.cs.meta").unlink()
    (copy / "Runtime" / "Client" / "New.cs").write_text("class New {}\n")
    result = check(copy)
    assert result.returncode == 1
    assert "missing: Runtime/Client/ArBridgeClient.cs.meta" in result.stderr
    assert "missing: Runtime/Client/New.cs.meta" in result.stderr


def test_an_orphaned_meta_fails(copy):
    (copy / "Runtime" / "Client" / "ReconnectPolicy.cs").unlink()
    result = check(copy)
    assert result.returncode == 1
    assert "orphaned: Runtime/Client/ReconnectPolicy.cs.meta" in result.stderr


def test_a_duplicate_or_malformed_meta_fails(copy):
    a = copy / "Runtime" / "Client" / "AskDialogue.cs.meta"
    b = copy / "Runtime" / "Client" / "DialogueSession.cs.meta"
    b.write_text(a.read_text())
    (copy / "package.json.meta").write_text((copy / "README.md.meta").read_text()
                                            .replace("0", "1", 1))
    result = check(copy)
    assert result.returncode == 1
    assert "duplicate guid" in result.stderr and "DialogueSession.cs.meta" in result.stderr
    assert "malformed: package.json.meta is not the PackageManifestImporter" in result.stderr


# -- compiled as Unity compiles it: one assembly per asmdef ---------------------------------
ALL = {"com.unity.ugui": "1.0.0", "com.unity.textmeshpro": "3.0.6",
       "com.cysharp.yetanotherhttphandler": "1.11.5"}
UNITY6 = {"com.unity.ugui": "2.0.0"}  # TextMeshPro ships inside uGUI 2.x
SCENARIOS = {
    "2021.3-desktop-all-packages": Scenario("2021.3", "StandaloneLinux64", packages=ALL),
    "2021.3-android-no-optional-packages": Scenario("2021.3", "Android",
                                                    packages={"com.unity.ugui": "1.0.0"}),
    "2021.3-editor": Scenario("2021.3", "StandaloneLinux64", editor=True, packages=ALL),
    "2022.3-ios": Scenario("2022.3", "iOS", packages=ALL),
    "6000.0-webgl": Scenario("6000.0", "WebGL", packages=UNITY6),
    "6000.5-webgl": Scenario("6000.5", "WebGL", packages=UNITY6),
    "6000.5-editor-webgl": Scenario("6000.5", "WebGL", editor=True,
                                    packages={**UNITY6, "com.cysharp.yetanotherhttphandler":
                                              "1.11.5"}),
}


@pytest.fixture(scope="module")
def toolchain():
    from unity_build import TOOLCHAIN
    assert (TOOLCHAIN / "Google.Protobuf.dll").exists(), "run `make test` (builds build/csharp)"
    return TOOLCHAIN


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_asmdef_compiles_as_its_own_assembly(toolchain, tmp_path, name):
    scenario = SCENARIOS[name]
    result = build(scenario, tmp_path)
    expected = {"ArBridge.Client", "ArBridge.Client.Unity"} | (
        {"ArBridge.Client.Editor"} if scenario.editor else set())
    assert set(result.built) == expected, result.skipped
    # Only the optional packages (HTTP/2, TextMeshPro) may be absent; the rest must resolve.
    lost = {r for refs in result.dropped.values() for r in refs}
    assert lost <= {"Cysharp.Net.Http.YetAnotherHttpHandler", "Unity.TextMeshPro"}, result.dropped
    assert ("Cysharp.Net.Http.YetAnotherHttpHandler" in lost) == (
        "com.cysharp.yetanotherhttphandler" not in scenario.packages)
    assert ("Unity.TextMeshPro" in lost) == ("Unity.TextMeshPro"
                                             not in scenario.installed_assemblies())
    build_samples(result, tmp_path)  # the sample compiles in the user's Assembly-CSharp


def test_a_wrong_assembly_reference_fails_the_build(toolchain, tmp_path):
    """The old asmdef named "YetAnotherHttpHandler": Unity drops the unknown name while
    versionDefines still turn ARBRIDGE_YAHH on, and the project stops compiling."""
    package = tmp_path / "unity_client"
    shutil.copytree(PACKAGE, package)
    asmdef = package / "Runtime" / "Unity" / "ArBridge.Client.Unity.asmdef"
    asmdef.write_text(asmdef.read_text().replace('"Cysharp.Net.Http.YetAnotherHttpHandler"',
                                                 '"YetAnotherHttpHandler"'))
    with pytest.raises(BuildError, match=r"(?s)CS0246.*Cysharp"):
        build(SCENARIOS["2021.3-desktop-all-packages"], tmp_path / "out", package)


def test_the_client_assembly_sees_no_engine(toolchain, tmp_path):
    package = tmp_path / "unity_client"
    shutil.copytree(PACKAGE, package)
    (package / "Runtime" / "Client" / "Leak.cs").write_text(
        "namespace ArBridge.Client { class Leak { UnityEngine.Object o; } }\n")
    with pytest.raises(BuildError, match=r"(?s)ArBridge\.Client\.dll.*CS0246.*UnityEngine"):
        build(SCENARIOS["2021.3-desktop-all-packages"], tmp_path / "out", package)


def test_every_conditional_branch_is_compiled_both_ways():
    symbols = set()
    for source in PACKAGE.rglob("*.cs"):
        if "Generated" in source.parts:
            continue
        for line in source.read_text().splitlines():
            if line.strip().startswith(("#if", "#elif")):
                symbols |= set(re.findall(r"[A-Z][A-Z0-9_]+", line))
    assert symbols, "no #if found"
    for symbol in sorted(symbols):
        on = [n for n, s in SCENARIOS.items() if symbol in s.defines() + _version_defines_of(s)]
        assert on and len(on) < len(SCENARIOS), f"{symbol} is never {'on' if not on else 'off'}"


def test_version_define_expressions():
    from unity_build import version_matches
    assert version_matches("1.0.0", "1.11.5") and not version_matches("2.0.0", "1.11.5")
    assert version_matches("[1.0,2.0)", "1.5.0") and not version_matches("[1.0,2.0)", "2.0.0")
    assert version_matches("[1.0]", "1.0.0") and not version_matches("[1.0]", "1.5.0")
    assert version_matches("(1.0,]", "1.0.1") and not version_matches("(1.0,]", "1.0.0")


def _version_defines_of(scenario):
    from unity_build import _version_defines, asmdefs
    return [d for a in asmdefs(PACKAGE) for d in _version_defines(a.spec, scenario)]


LAYER_RUNS = {"desktop": "2022.3-ios", "webgl": "6000.0-webgl", "webgl65": "6000.5-webgl",
              "editor": "6000.5-editor-webgl"}


@pytest.mark.parametrize("kind", LAYER_RUNS)
def test_unity_components_lifecycle_and_transports(toolchain, tmp_path, kind):
    scenario = SCENARIOS[LAYER_RUNS[kind]]
    if kind == "desktop":
        scenario = Scenario("2022.3", "StandaloneLinux64", packages=ALL)
    out = tmp_path / "bin"
    result = build(scenario, out)
    for dll in toolchain.glob("*.dll"):
        shutil.copy(dll, out)
    exe = out / "UnityLayerTests.exe"
    refs = [*result.built.values(), *result.standins.values(),
            toolchain / "System.Runtime.CompilerServices.Unsafe.dll"]
    compiled = subprocess.run(
        ["mcs", "-langversion:7.2", "-target:exe", "-r:System.Net.Http",
         *(f"-define:{d}" for d in scenario.defines()), *(f"-r:{r}" for r in refs),
         f"-out:{exe}", str(REPO / "tests" / "csharp" / "unity_layer" / "UnityLayerTests.cs")],
        capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    work = tmp_path / "project" / "Assets"  # the linker writes ../Temp from Application.dataPath
    work.mkdir(parents=True)
    run = subprocess.run(["mono", str(exe), kind], capture_output=True, text=True, timeout=60,
                         cwd=work)
    assert run.returncode == 0 and "unity layer ok" in run.stdout, run.stdout + run.stderr


# -- the manifest and the documented install route ----------------------------------------
def test_manifest_follows_the_package_validation_rules_that_apply():
    """com.unity.package-validation-suite's manifest rules that apply to a third-party
    package (US0006 naming, US0007 manifest, ManifestValidation: display name length,
    semver dependencies, an author for non-Unity packages)."""
    import json

    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert re.fullmatch(r"[a-z0-9][a-z0-9-._]{0,213}", manifest["name"])  # US0006
    assert manifest["name"].startswith("com.") and not manifest["name"].startswith("com.unity.")
    assert re.fullmatch(r"[a-zA-Z0-9 ]+", manifest["displayName"])  # US0006
    assert len(manifest["displayName"]) <= 50  # ManifestValidation.MaxDisplayNameLength
    assert re.fullmatch(r"[0-9]{4}\.[0-9]+", manifest["unity"]) and len(manifest["unity"]) <= 6
    assert manifest["unity"] >= "2021.3"  # YetAnotherHttpHandler's floor
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", manifest["version"])
    assert len(manifest["description"]) >= 50 and manifest["author"]["name"]
    for name, version in manifest["dependencies"].items():
        assert name.startswith(("com.unity.", "org.nuget.")), name
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: exact version, not {version}"
    assert "com.unity.modules.unitywebrequest" in manifest["dependencies"]  # Unity 6.5 WebGL
    for sample in manifest["samples"]:
        assert sample["path"].startswith("Samples~/") and (PACKAGE / sample["path"]).is_dir()


def _documented_manifest() -> dict:
    import json

    readme = (PACKAGE / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", readme, re.S)
    found = [json.loads(b) for b in blocks if '"scopedRegistries"' in b]
    assert len(found) == 1, "the README shows one manifest.json to merge"
    return found[0]


def test_the_documented_manifest_resolves_every_dependency():
    import json

    documented = _documented_manifest()
    manifest = json.loads((PACKAGE / "package.json").read_text())
    registry = documented["scopedRegistries"][0]
    # UnityNuGet's feed since its Azure one was shut down (March 2025).
    assert registry["url"] == "https://unitynuget-registry.openupm.com"
    nuget = [d for d in manifest["dependencies"] if not d.startswith("com.unity.")]
    assert all(any(d.startswith(scope + ".") for scope in registry["scopes"]) for d in nuget)
    deps = documented["dependencies"]
    # YetAnotherHttpHandler pinned to a release tag, with its own dependencies package.
    for name, path in (("com.cysharp.yetanotherhttphandler", "src/YetAnotherHttpHandler"),
                       ("com.cysharp.yetanotherhttphandler.dependencies",
                        "src/YetAnotherHttpHandler.Dependencies")):
        assert re.fullmatch(rf"https://github\.com/Cysharp/YetAnotherHttpHandler\.git\?path="
                            rf"{re.escape(path)}#\d+\.\d+\.\d+", deps[name]), deps[name]
    assert deps["com.arbridge.client"].endswith("?path=unity_client")
    # The asmdef's versionDefines watch the package the README installs.
    unity = json.loads((PACKAGE / "Runtime" / "Unity" / "ArBridge.Client.Unity.asmdef").read_text())
    assert {"com.cysharp.yetanotherhttphandler", "com.unity.ugui"} <= {
        v["name"] for v in unity["versionDefines"]}

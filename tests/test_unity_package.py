"""The Unity package as Unity sees it: every asset has a stable, unique .meta."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

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

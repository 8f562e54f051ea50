"""The contract: buf lint, and generated Python in step with protos/."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys

from conftest import REPO

BUF = REPO / "node_modules" / ".bin" / "buf"


def test_buf_lint_passes():
    assert BUF.exists(), "buf is missing: run `make setup` (npm ci)"
    result = subprocess.run([str(BUF), "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_violation(tmp_path):
    # The lint really runs: a contract with a non-standard name fails it.
    bad = tmp_path / "protos" / "arbridge" / "v1"
    bad.mkdir(parents=True)
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    (bad / "bad.proto").write_text(
        'syntax = "proto3";\npackage arbridge.v1;\nmessage bad_name { int32 X = 1; }\n')
    result = subprocess.run([str(BUF), "lint"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "bad_name" in result.stdout + result.stderr


def test_generated_python_is_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_protos.py"), str(tmp_path)],
                   check=True, capture_output=True)
    fresh = tmp_path / "arbridge" / "v1"
    committed = REPO / "server" / "arbridge" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch + errors}: make protos"


RELEASED = REPO / "contract" / "arbridge-v1.released.json"


def _breaking(workdir) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUF), "breaking", "--against", str(RELEASED)], cwd=workdir,
                          capture_output=True, text=True)


def test_contract_keeps_compatibility_with_the_released_one():
    # Field numbers, names, types and methods of the released contract (the image
    # `make contract-release` wrote) still mean the same; clients built on it work.
    result = _breaking(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_change_is_caught(tmp_path):
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    types = tmp_path / "protos" / "arbridge" / "v1" / "types.proto"
    text = types.read_text()
    assert "string label = " in text
    types.write_text(text.replace("string label = ", "bytes label = ", 1))
    result = _breaking(tmp_path)
    assert result.returncode != 0
    assert "label" in result.stdout + result.stderr

"""Converted models are published whole or not at all."""

from __future__ import annotations

import pytest

from arbridge.models.publish import is_complete, publishing


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    out = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError), publishing(out, "test") as staging:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")
    assert not out.exists() and not is_complete(out)
    assert list(out.parent.iterdir()) == []  # no staging folder left either


def test_a_finished_conversion_replaces_an_old_one_whole(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("old, and never marked complete")
    assert not is_complete(out)  # the loader converts again instead of loading this
    with publishing(out, "test") as staging:
        (staging / "config.json").write_text("{}")
        assert not is_complete(out)
    assert is_complete(out) and (out / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]

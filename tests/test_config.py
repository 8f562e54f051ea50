"""Settings: declared once, reachable as flags, environment and TOML, in that order."""

from __future__ import annotations

import os
from pathlib import Path

from arbridge.cli import build_parser
from arbridge.config import Settings, load_settings


def serve_settings(*argv: str) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return load_settings(args.config, cli=args.settings_flags(parsed_args=args))


def test_flags_beat_environment_beats_file(tmp_path, monkeypatch):
    toml = tmp_path / "arbridge.toml"
    toml.write_text('port = 1\nmax_queue = 7\nmax_active = 5\n'
                    'grpc_web_cors_origins = ["https://game.example"]\n')
    monkeypatch.setenv("ARBRIDGE_PORT", "2")
    monkeypatch.setenv("ARBRIDGE_MAX_QUEUE", "9")
    monkeypatch.delenv("ARBRIDGE_CONFIG", raising=False)
    s = serve_settings("--config", str(toml), "--port", "3", "--public-health",
                       "--projectors", "a.safetensors", "--projectors", "b.safetensors")
    assert (s.port, s.max_queue, s.max_active) == (3, 9, 5)
    assert s.grpc_web_cors_origins == ["https://game.example"]
    assert s.public_health is True
    assert s.projectors == [Path("a.safetensors"), Path("b.safetensors")]
    assert "ARBRIDGE_CONFIG" not in os.environ  # loading changes no global state
    assert serve_settings().port == 2  # the file was this load's only


def test_every_setting_is_a_serve_flag_but_secrets():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        if name == "auth_tokens":  # a token on a command line shows in `ps`
            continue
        assert flag in flags, flag


def test_a_bad_flag_value_names_the_setting(capsys):
    from arbridge.cli import main

    assert main(["serve", "--max-active", "0"]) == 2
    assert "arbridge serve: max_active: Input should be greater than or equal to 1" in \
        capsys.readouterr().err

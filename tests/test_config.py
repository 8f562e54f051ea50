"""Settings: declared once, reachable as flags, environment and TOML, in that order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("flag, value, message", [
    ("--grpc-web-max-connections", "0", "grpc_web_max_connections: Input should be greater"),
    ("--grpc-web-header-timeout-s", "0", "grpc_web_header_timeout_s: Input should be greater"),
    ("--grpc-web-keepalive-s", "-1", "grpc_web_keepalive_s: Input should be greater"),
    ("--max-object-id-chars", "0", "max_object_id_chars: Input should be greater"),
    ("--max-object-attributes", "-1", "max_object_attributes: Input should be greater"),
    ("--resume-detached-tokens", "-1", "resume_detached_tokens: Input should be greater"),
    ("--compiled-grammar-mb", "0", "compiled_grammar_mb: Input should be greater"),
    ("--prefill-turn-ms", "-1", "prefill_turn_ms: Input should be greater"),
    ("--prefill-prompt-tokens", "8", "prefill_prompt_tokens: Input should be greater"),
    ("--speculative-tokens", "65", "speculative_tokens: Input should be less"),
    ("--speculative-rows", "-1", "speculative_rows: Input should be greater"),
    ("--matmul-kernels", "fast", "matmul_kernels: String should match pattern"),
    ("--matmul-kernels", "skinny,gpu", "matmul_kernels: String should match pattern"),
    ("--matmul-weight-copies", "3", "matmul_weight_copies: Input should be less"),
])
def test_new_limits_refuse_bad_values_at_start(capsys, flag, value, message):
    from arbridge.cli import main

    assert main(["serve", flag, value]) == 2
    assert message in capsys.readouterr().err


def test_a_connection_cap_the_open_files_cannot_hold_stops_the_start(capsys):
    import resource

    from arbridge.cli import main

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    too_many = (1 << 30) if hard == resource.RLIM_INFINITY else hard
    assert main(["serve", "--grpc-web-port", "0", "--grpc-web-max-connections",
                 str(too_many)]) == 2
    assert f"grpc_web_max_connections = {too_many} needs more open files" in \
        capsys.readouterr().err


def test_a_switch_set_to_a_non_boolean_in_the_environment_stops_the_start(capsys,
                                                                        monkeypatch):
    from arbridge.cli import main

    monkeypatch.setenv("ARBRIDGE_ATTENTION_KERNEL_BFLOAT16", "sometimes")
    assert main(["serve"]) == 2
    assert "attention_kernel_bfloat16: Input should be a valid boolean" in \
        capsys.readouterr().err

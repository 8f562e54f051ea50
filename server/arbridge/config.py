"""One settings object for the whole server, defined in groups.

Precedence: command-line flags > environment (ARBRIDGE_*) > TOML file
(--config or ARBRIDGE_CONFIG) > the defaults below. `arbridge serve`'s flags
are generated from these fields (pydantic-settings' CLI source), so each
setting is declared once, with its help text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSuppress,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_SYSTEM_PROMPT = (
    "You are the assistant in the user's augmented-reality glasses. Answer briefly. "
    "Talk only about the objects you are told about."
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arbridge"


class ModelSettings(BaseSettings):
    """What is served: the model, where it runs, its projectors."""

    model: str | None = Field(None, description="HF dir, GGUF file or Megatron checkpoint; "
                                                "unset = the default SmolLM2-135M-Instruct")
    tokenizer: str | None = Field(None, description="tokenizer dir when not beside the model")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:N'")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU; int8 = int8 "
                            "weight-only matmuls on the CPU (per-channel scales, float32 "
                            "activations between them; Llama- and GPT-2-shaped models)")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    torch_threads: int = Field(0, ge=0, description="0 = torch's default")
    projectors: list[Path] = Field(
        default_factory=list, description="projector files (one per encoder) that let "
                                          "dense feature vectors condition the model")
    # Megatron checkpoints saved without `args`: hyper-parameters by hand.
    megatron_num_layers: int | None = Field(None, ge=1)
    megatron_hidden_size: int | None = Field(None, ge=1)
    megatron_num_attention_heads: int | None = Field(None, ge=1)
    megatron_max_position_embeddings: int | None = Field(None, ge=1)


class BackendSettings(BaseSettings):
    """The local engine, or an upstream OpenAI-compatible server (vLLM, TGI,
    TensorRT-LLM's trtllm-serve, `transformers serve`) doing the generation."""

    backend: Literal["local", "openai"] = "local"
    backend_url: str | None = Field(None, description="e.g. http://vllm:8000/v1")
    backend_model: str | None = Field(None, description="model name the upstream serves")
    backend_api_key_file: Path | None = None
    backend_timeout_s: float = Field(
        120.0, gt=0, description="longest wait for the upstream's next bytes (a queued "
                                 "request's first token included)")
    backend_extended_sampling: bool = Field(
        False, description="upstream accepts top_k, repetition_penalty and n (vLLM, TGI)")
    backend_context_length: int | None = Field(
        None, ge=16, description="upstream context window; default: from the tokenizer dir")


class NetworkSettings(BaseSettings):
    """Where the server listens, how long a drain lasts, keepalive, message size."""

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 / :: = all interfaces")
    port: int = Field(50051, ge=0, le=65535)
    grace_seconds: float = Field(
        10.0, ge=0, description="on SIGTERM/SIGINT, how long in-flight streams may finish")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                   description="largest request message accepted")
    max_streams_per_peer: int = Field(
        32, ge=1, description="concurrent streaming calls from one client address")
    # Keepalive tuned for headsets on Wi-Fi/mobile: dead peers are noticed within
    # keepalive_time + keepalive_timeout, clients may ping every 10 s even while
    # idle (NAT keep-open), and connections are recycled so load balancers can
    # rebalance; the age grace lets a reply in flight finish first.
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    min_client_ping_interval_s: float = Field(10.0, gt=0)
    max_connection_idle_s: float = Field(600.0, gt=0)
    max_connection_age_s: float = Field(3600.0, gt=0)
    max_connection_age_grace_s: float = Field(300.0, ge=0)


class SecuritySettings(BaseSettings):
    """TLS (cert + key), mTLS (+ client CA), bearer tokens (see security.py)."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="require client certs from this CA")
    auth_tokens_file: Path | None = None
    # Environment or file only: a secret on a command line shows in `ps`.
    auth_tokens: CliSuppress[SecretStr | None] = None
    public_health: bool = Field(
        False, description="health and reflection answer without a token")


class GrpcWebSettings(BaseSettings):
    """gRPC-Web (Unity WebGL, HTTP/1.1-only networks), on a port of its own."""

    grpc_web_port: int | None = Field(
        None, ge=0, le=65535, description="gRPC-Web port; unset = off")
    grpc_web_host: str | None = Field(None, description="gRPC-Web bind address (default: host)")
    grpc_web_cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="browser origins allowed to call gRPC-Web ('*' = any; [] = no CORS)")
    grpc_web_playground: bool = Field(
        True, description="serve the browser playground at / of the gRPC-Web port")
    grpc_web_max_connections: int | None = Field(
        None, ge=1, description="open gRPC-Web connections; past it a new one gets 503 and "
                                "is closed (unset = half the open-file limit, at most 4096)")
    grpc_web_header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request's head must arrive whole within this "
                                         "long of its connection opening or of the previous "
                                         "response (slowloris); else 408 and closed")
    grpc_web_keepalive_s: float = Field(
        5.0, gt=0, le=3600, description="an idle kept-alive gRPC-Web connection is closed")


class ObservabilitySettings(BaseSettings):
    """Prometheus metrics and logs."""

    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = off")
    metrics_host: str = Field("127.0.0.1", description="metrics bind address (loopback: "
                                                       "scrape through a sidecar or set it)")

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"


class LimitSettings(BaseSettings):
    """Generation defaults, and the limits every request is checked against
    (validation.py): a request past one gets INVALID_ARGUMENT naming the field."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    scene_questions: bool = Field(
        True, description="answer everyday questions about the scene (is there, how many, "
                          "where, which is closer, colour, state...) from its geometry and "
                          "attributes; the reply says the computed answer")
    scene_captions: bool = Field(
        True, description="compose DescribeScene captions from the scene (every instance "
                          "of a repeated label counted and placed, heights, what matters "
                          "first, 'and N more' within the token budget); the reply says "
                          "the composed caption. Not for requests with an instruction")
    default_max_new_tokens: int = Field(96, ge=1)
    max_new_tokens_limit: int = Field(1024, ge=1)
    max_num_return_sequences: int = Field(8, ge=1)
    max_stop_strings: int = Field(16, ge=0)
    max_stop_string_chars: int = Field(256, ge=1)
    max_scene_objects: int = Field(256, ge=1)
    max_feature_values: int = Field(4096, ge=1, description="floats per feature vector")
    max_dialogue_turns: int = Field(256, ge=1)
    max_prompt_chars: int = Field(200_000, ge=1)
    max_label_chars: int = Field(200, ge=1, description="object labels, attribute keys and "
                                                      "values, encoder names, location hint")
    max_object_id_chars: int = Field(128, ge=1, description="a scene object's id (and "
                                                            "the ids a scene delta names)")
    max_object_attributes: int = Field(32, ge=0, description="attributes per scene object")
    max_turn_chars: int = Field(20_000, ge=1, description="one dialogue turn, instruction, "
                                                           "system prompt or transcript")
    max_temperature: float = Field(100.0, gt=0)
    compiled_grammar_mb: int = Field(
        64, ge=1, description="memory for compiled response formats and action grammars "
                              "kept for reuse (measured on the C heap); least recent go")
    deadline_margin_ms: float = Field(
        50.0, ge=0, description="stop this long before a call's deadline (TIME_LIMIT)")


class SessionSettings(BaseSettings):
    """Ask sessions (one dialogue turn per call, for gRPC-Web clients)."""

    max_ask_sessions: int = Field(10000, ge=1, description="sessions kept; least recent go")
    ask_session_idle_s: float = Field(1800.0, gt=0, description="an idle session is forgotten")
    max_ask_session_bytes: int = Field(
        256 << 20, ge=1 << 20, description="text and scenes all sessions may hold together")


class StreamSettings(BaseSettings):
    """Resumable replies (StreamOptions.resumable; serving/streams.py)."""

    resume_grace_s: float = Field(
        30.0, gt=0, description="a resumable reply nobody follows runs and is kept this long")
    resume_stream_bytes: int = Field(
        1 << 20, ge=4096, description="one reply's kept events; past it the reply stops")
    resume_total_bytes: int = Field(
        64 << 20, ge=1 << 20, description="all replies' kept events; past it, unfollowed "
                                          "replies are dropped, longest unfollowed first")
    resume_detached_tokens: int = Field(
        32, ge=0, description="a resumable reply nobody follows generates this many more "
                              "tokens, then pauses (no engine slot, no compute) until it is "
                              "resumed; 0 = pause after its first token")


class EngineSettings(BaseSettings):
    """The local engine's scheduler, caches and forward path."""

    max_queue: int = Field(64, ge=1, description="requests waiting for a slot")
    max_active: int = Field(16, ge=1, description="requests generating at once")
    prefill_chunk_tokens: int = Field(
        512, ge=16, description="prompt tokens prefilled per scheduler turn, all requests "
                                "together; lower = first tokens sooner for some, higher = "
                                "better prefill throughput")
    parked_kv_mb: int = Field(
        512, ge=1, description="how much of the KV cache paused replies (resumable ones "
                               "nobody follows) may keep; past it the longest parked give "
                               "theirs back and are recomputed if resumed")
    prefill_turn_ms: float = Field(
        400.0, ge=0, description="while streams decode, or a long prompt is read (past "
                                 "1,024 tokens) while others wait, prompt reading per turn is "
                                 "kept to about this long (measured), so their next token is "
                                 "never much further; 0 = prefill_chunk_tokens alone")
    prefill_prompt_tokens: int = Field(
        128, ge=16, description="the most one prompt reads in a turn while other prompts "
                                "wait, so a short prompt is not stuck behind long ones")
    fused_decoder: bool = Field(
        True, description="run Llama- and GPT-2-shaped models through ArBridge's lean "
                          "forward pass (fused projections, straight on the KV cache); "
                          "false = the model's own transformers forward")
    kv_cache_mb: int = Field(
        0, ge=0, description="the KV cache: one pool of blocks every sequence draws from; "
                             "a request that would not fit even alone is refused, and when "
                             "decoding runs out the newest request is recomputed later; "
                             "0 = auto (CPU: 1536 MB or a quarter of available memory, "
                             "whichever is less; GPU: 60 % of the memory free after loading)")
    attention_kernel: bool = Field(
        True, description="decode attention straight from the KV blocks, through a small "
                          "C++ kernel built for this CPU on first use (float32, CPU, fused "
                          "decoder); false, or without a compiler: blocks are gathered for "
                          "SDPA (slower with many streams)")
    attention_kernel_bfloat16: bool = Field(
        True, description="bfloat16 models too: one stream decodes 1.2-1.6x faster (AMD "
                          "EPYC, SmolLM2). The kernel's sums run in another order than "
                          "SDPA's; greedy text matches transformers' generate on 7 of 8 "
                          "bench prompts either way. false: blocks gathered for SDPA")
    speculative_tokens: int = Field(
        8, ge=0, le=64, description="greedy replies guess up to this many next tokens by "
                                    "looking their last words up in the prompt and reply, and "
                                    "the model checks the guesses in the same pass (the text "
                                    "is the same); composed captions and answers pass their "
                                    "known tokens the same way; 0 = one token a pass")
    speculative_rows: int = Field(
        2, ge=0, description="guess only while at most this many sequences decode: past "
                             "that a pass is no longer bound by reading the weights and the "
                             "extra positions cost what they save")
    matmul_kernels: str = Field(
        "auto", pattern=r"^(auto|(plain|dnnl|packed|skinny|int8)"
                        r"(,(plain|dnnl|packed|skinny|int8))*)$",
        description="the fused decoder's matmul kernels: auto = time every one at start "
                    "and keep the fastest for one row and for a batch; or a comma list to "
                    "choose from (plain = MKL, dnnl = oneDNN on the plain weights, packed = "
                    "oneDNN's blocked weights, skinny = "
                    "ArBridge's few-row kernel built for this CPU, int8 = torch's int8 "
                    "kernel)")
    matmul_weight_copies: int = Field(
        1, ge=1, le=2, description="1: every matmul reads one copy of the float weights "
                                   "(that of the fastest one-row kernel); 2: each case its "
                                   "fastest kernel, holding oneDNN's packed copy beside the "
                                   "plain one when both win somewhere (faster batches, "
                                   "the weights' size again in memory)")
    int8_activations: bool = Field(
        False, description="with --dtype int8: quantize the activations too (blocks of 32, "
                           "as llama.cpp's Q8_0) and multiply in integers (VNNI where the "
                           "CPU has it): faster, other numbers than the bfloat16 "
                           "activations, and each row's independent of its pass (guessed "
                           "drafts on)")
    kv_block_tokens: int = Field(
        16, ge=1, le=1024, description="tokens per KV block (the unit of allocation and of "
                                       "prefix sharing)")
    prefix_cache_mb: int = Field(
        256, ge=0, description="how much of the KV cache may keep recent prompt prefixes "
                               "(system prompt, scene, dialogue so far) once their requests "
                               "end, so a prompt that starts like an earlier one prefills "
                               "only the rest; 0 = off")

    def kernel_choice(self):
        """`matmul_kernels` and `matmul_weight_copies` as the engine takes them."""
        from arbridge.engine.matmul_layouts import KernelChoice

        allowed = None if self.matmul_kernels == "auto" else \
            frozenset(self.matmul_kernels.split(","))
        return KernelChoice(allowed, self.matmul_weight_copies, self.int8_activations)


# Bases in reverse: pydantic lists the fields (and so the flags) from the last base on.
class Settings(EngineSettings, StreamSettings, SessionSettings, LimitSettings,
               ObservabilitySettings, GrpcWebSettings, SecuritySettings, NetworkSettings,
               BackendSettings, ModelSettings):
    """Every setting, flat: `ARBRIDGE_<NAME>` in the environment, `<name> = ...` in the
    TOML file, `--<name-with-dashes>` on `arbridge serve` (flags are made from these
    fields, so a new setting is a new flag)."""

    model_config = SettingsConfigDict(env_prefix="ARBRIDGE_", extra="forbid",
                                      cli_kebab_case=True, cli_implicit_flags=True)
    # The TOML file read after the environment (None: ARBRIDGE_CONFIG, if set);
    # load_settings sets it on a subclass for one load.
    toml_file: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _int8_runs_fused(self) -> Settings:
        if self.dtype == "int8" and not self.fused_decoder:
            raise ValueError("dtype int8 needs fused_decoder = true: int8 weights run only "
                             "in ArBridge's fused decoder")
        if self.dtype == "int8" and self.device not in ("auto", "cpu"):
            raise ValueError(f"dtype int8 runs on the CPU, not device {self.device!r}; "
                             "on a GPU use bfloat16")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = cls.toml_file or os.environ.get("ARBRIDGE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def megatron_overrides(settings: Settings):
    from arbridge.models.megatron import Overrides

    return Overrides(num_layers=settings.megatron_num_layers,
                     hidden_size=settings.megatron_hidden_size,
                     num_attention_heads=settings.megatron_num_attention_heads,
                     max_position_embeddings=settings.megatron_max_position_embeddings)


def load_settings(config_file: str | None = None, cli=None, **overrides: Any) -> Settings:
    """Settings from `arbridge serve`'s flags (`cli`, a parsed CliSettingsSource) or
    keyword overrides (None = not given), then the environment, then the TOML file
    (`config_file`, else ARBRIDGE_CONFIG), then the defaults."""

    class _WithFile(Settings):  # this load's file; nothing global is changed
        toml_file: ClassVar[str | None] = config_file

    given = {k: v for k, v in overrides.items() if v is not None}
    if cli is not None:
        given["_cli_settings_source"] = cli
    loaded = _WithFile(**given)
    return Settings.model_construct(_fields_set=loaded.model_fields_set, **dict(loaded))

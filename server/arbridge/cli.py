"""`arbridge` command line: the server, its clients, conversion, bench and demos."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

from arbridge import __version__


def _setup_logging(level: str, fmt: str = "text") -> None:
    from arbridge.logs import setup_logging

    setup_logging(level, fmt)


def _target(args) -> str:
    return args.server or f"{args.host}:{args.port}"


def _security(args) -> dict:
    """Client-side TLS and token options (token from --token-file or ARBRIDGE_TOKEN)."""
    token = os.environ.get("ARBRIDGE_TOKEN")
    if getattr(args, "token_file", None):
        with open(args.token_file) as f:
            token = f.read().strip()
    return {"tls": getattr(args, "tls", False), "tls_ca": getattr(args, "tls_ca", None),
            "client_cert": getattr(args, "client_cert", None),
            "client_key": getattr(args, "client_key", None), "token": token or None}


def _print_chunk(chunk) -> None:
    prefix = f"[{chunk.sequence_index}] " if chunk.sequence_index else ""
    sys.stdout.write(prefix + chunk.text)
    sys.stdout.flush()


# -- commands -------------------------------------------------------------------
def cmd_serve(args) -> int:
    import torch
    from pydantic import ValidationError

    from arbridge.app import ArBridgeServer
    from arbridge.backends.openai_compat import BackendConfigError
    from arbridge.config import load_settings
    from arbridge.security import SecurityConfigError
    from arbridge.serving.web_connections import ConnectionLimitError

    try:
        settings = load_settings(args.config, cli=args.settings_flags(parsed_args=args))
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            print(f"arbridge serve: {where + ': ' if where else ''}{error['msg']}",
                  file=sys.stderr)
        return 2
    _setup_logging(settings.log_level, settings.log_format)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        server = ArBridgeServer(settings)
    except (SecurityConfigError, BackendConfigError, ConnectionLimitError) as exc:
        print(f"arbridge serve: {exc}", file=sys.stderr)
        return 2
    server.run_until_stopped()  # exits the process when the drain is done
    return 0


def cmd_bench(args) -> int:
    import torch

    from arbridge.config import load_settings
    from arbridge.tools.bench import run_bench

    overrides = {"int8_activations": True} if args.int8_activations else {}
    settings = load_settings(None, model=args.model, dtype=args.dtype, device=args.device,
                             log_level="WARNING", **overrides)
    _setup_logging(settings.log_level)
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = tuple(int(x) for x in args.concurrency.split(","))
    run_bench(settings, new_tokens=args.new_tokens, levels=levels,
              command="arbridge bench " + " ".join(sys.argv[2:]), peer=not args.no_peer,
              llama_cpp=not args.no_llama_cpp)
    return 0


def cmd_resume_bench(args) -> int:
    """What a dropped connection costs a resumable reply (not a test)."""
    from arbridge.config import load_settings
    from arbridge.tools.resume_bench import format_report, run_resume_bench

    settings = load_settings(None, model=args.model, dtype=args.dtype, log_level="WARNING")
    _setup_logging(settings.log_level)
    print(format_report(asyncio.run(run_resume_bench(settings, streams=args.streams))))
    return 0


def cmd_storm_bench(args) -> int:
    """What long prompts cost everyone else, and peak memory (not a test)."""
    from pathlib import Path

    from arbridge.tools.storm_bench import run_storm_bench

    source = Path(args.source).resolve() if args.source else None
    print(run_storm_bench(source, args.tokens, args.model, Path(args.out) if args.out else None))
    return 0


def cmd_moe_bench(args) -> int:
    """A small mixture-of-experts model against a dense one of the same active size."""
    from pathlib import Path

    from arbridge.tools.moe_bench import format_report, run_moe_bench, save

    report = run_moe_bench(args.dtype, args.tokens)
    print(format_report(report))
    save(report, Path(args.out))
    return 0


def cmd_attention_bench(args) -> int:
    """Decode attention over KV blocks vs dense rows, on this CPU (not a test)."""
    from arbridge.tools.attention_bench import format_report, run_attention_bench

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(format_report(run_attention_bench()))
    return 0


def cmd_grammar_bench(args) -> int:
    """Grammar-constrained decoding's cost, and llguidance vs xgrammar (not a test)."""
    from arbridge.config import load_settings
    from arbridge.tools.grammar_bench import format_report, run_grammar_bench

    settings = load_settings(None, model=args.model, dtype=args.dtype, log_level="WARNING")
    _setup_logging(settings.log_level)
    print(format_report(run_grammar_bench(settings, new_tokens=args.new_tokens)))
    return 0


def cmd_eval(args) -> int:
    """Caption and dialogue quality through a real server, beside a plain-prompt baseline."""
    from pathlib import Path

    from arbridge.config import load_settings
    from arbridge.tools.caption_eval import format_table, run_eval

    upstream = {} if args.backend_url is None else {
        "backend": "openai", "backend_url": args.backend_url,
        "backend_model": args.backend_model}
    settings = load_settings(None, model=args.model, dtype=args.dtype, log_level="WARNING",
                             **upstream)
    _setup_logging(settings.log_level)
    if args.questions_only or args.captions_only:
        return _question_eval(args, settings, {})
    result = asyncio.run(run_eval(settings, count=args.scenes, seed=args.seed,
                                  dialogue=args.dialogue, out=Path(args.out),
                                  act_only=args.act_only))
    if args.act_only:
        from arbridge.tools.act_eval import format_lines

        Path(args.out).write_text(json.dumps(result, indent=2))
        for split_name, act in result["act"].items():
            print("\n".join(f"{line} [{split_name}]" for line in format_lines(act)))
        return 0
    print(f"arbridge eval {' '.join(sys.argv[2:])}  (model {result['model']}, "
          f"dtype {result['dtype']}, greedy, {result['scenes']} scenes; held-out = scenes "
          f"{result['held_out_from']}+)")
    print(format_table(result))
    return _question_eval(args, settings, result)


def _question_eval(args, settings, result: dict) -> int:
    """Everyday questions by kind, with the scene-question layer and without it; then
    captions of hard scenes, composed and by the model alone."""

    from arbridge.tools import hard_caption_eval, question_eval

    where = f"upstream {settings.backend_url}, " if settings.backend == "openai" else ""
    sizes = {} if args.held_out_scenes is None else {
        "tune_scenes": 0, "held_out_scenes": args.held_out_scenes}
    captions = asyncio.run(hard_caption_eval.run(settings, seed=args.seed, **sizes))
    result["hard_captions"] = captions
    print(f"\narbridge eval {' '.join(sys.argv[2:])}: captions of hard scenes (repeated "
          f"labels, 9-15 objects, turned and pitched heads, heights, unlisted labels, "
          f"states), {captions['scenes']['tune']} tune and {captions['scenes']['held-out']} "
          f"held-out, {where}greedy, dtype {settings.dtype}, max_new_tokens "
          f"{captions['max_new_tokens']}:")
    print(hard_caption_eval.format_table(captions))
    if args.captions_only:
        return _write(args.out, result)
    questions = asyncio.run(question_eval.run(settings, seed=args.seed, **sizes))
    print(f"\narbridge eval {' '.join(sys.argv[2:])}: everyday questions, "
          f"{questions['questions']} on {questions['scenes']['tune']} tune and "
          f"{questions['scenes']['held-out']} held-out scenes (other phrasings), greedy, "
          f"{where}dtype {settings.dtype}; right answers by kind:")
    print(question_eval.format_table(questions))
    result["questions"] = questions
    return _write(args.out, result)


def _write(out: str, result: dict) -> int:
    from pathlib import Path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"JSON: {out}")
    return 0


def cmd_perplexity(args) -> int:
    """Perplexity of a fixed text, float32 against the dtypes asked (not a test)."""
    from arbridge.config import load_settings
    from arbridge.tools.perplexity import compare, format_report

    settings = load_settings(None, model=args.model, log_level="WARNING")
    _setup_logging(settings.log_level)
    rows = compare(settings, args.dtype.split(","))
    print(format_report(rows, "arbridge perplexity " + " ".join(sys.argv[2:]),
                        settings.model or "SmolLM2-135M-Instruct"))
    return 0


def cmd_train_projector(args) -> int:
    """Train a projector (feature vector -> soft prompt) against the frozen model."""
    from arbridge.config import load_settings
    from arbridge.models.loader import load_model
    from arbridge.tools.training import describe_prompt_ids, load_pairs, train_projector

    settings = load_settings(None, model=args.model)
    _setup_logging(settings.log_level)
    features, texts = load_pairs(args.data)
    lm = load_model(settings.model, cache_dir=settings.cache_dir, device="cpu",
                    dtype="float32")
    prompt_ids = describe_prompt_ids(lm.tokenizer, lm.info.context_length,
                                     settings.system_prompt, args.instruction)
    print(f"{len(texts)} pairs of {features.shape[1]}-value '{args.encoder}' vectors; "
          f"model {lm.info.name} frozen; k={args.k} {args.kind} projector", file=sys.stderr)
    result = train_projector(lm.model, lm.tokenizer, features, texts, encoder=args.encoder,
                             prompt_ids=prompt_ids, k=args.k, kind=args.kind,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             heldout_fraction=args.heldout, seed=args.seed,
                             model_name=lm.info.name)
    result.projector.save(args.out)
    print(f"held-out loss {result.heldout_loss_before:.4f} -> {result.heldout_loss_after:.4f} "
          f"({result.train_pairs} train / {result.heldout_pairs} held-out pairs)")
    print(args.out)
    return 0


def cmd_fusion_demo(args) -> int:
    """Train a projector on MiniLM scene vectors; compare captions trained vs untrained."""
    from pathlib import Path

    from arbridge.config import load_settings
    from arbridge.tools.fusion_demo import format_report, run_fusion_demo
    from arbridge.tools.sentence_encoder import MINILM_NAME, ensure_minilm

    settings = load_settings(None, model=args.model, dtype="float32", max_active=32,
                             log_level="WARNING")
    _setup_logging(settings.log_level)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    encoder_path = Path(args.encoder) if args.encoder else ensure_minilm(settings.cache_dir)
    out = Path(args.out)
    demo = run_fusion_demo(settings, out, encoder_path=encoder_path,
                           encoder_name=args.encoder_name, n_train=args.train,
                           n_heldout=args.heldout, epochs=args.epochs, k=args.k, lr=args.lr,
                           max_new_tokens=args.max_new_tokens, seed=args.seed)
    report = format_report(demo, "arbridge fusion-demo " + " ".join(sys.argv[2:]),
                           settings.model or "SmolLM2-135M-Instruct",
                           MINILM_NAME if not args.encoder else args.encoder)
    (out / "report.txt").write_text(report + "\n")
    print(report)
    return 0


def _settings_flags(parser):
    """One flag per setting, made from the Settings fields (names, types, help)."""
    from pydantic_settings import CliSettingsSource

    from arbridge.config import Settings

    return CliSettingsSource(Settings, root_parser=parser, cli_kebab_case=True,
                             cli_implicit_flags=True)


def _megatron_flags(args) -> dict:
    return {f"megatron_{name}": getattr(args, name) for name in
            ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings")}


def _add_megatron_flags(p) -> None:
    g = p.add_argument_group("Megatron checkpoints saved without args")
    g.add_argument("--num-layers", type=int)
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--num-attention-heads", type=int)
    g.add_argument("--max-position-embeddings", type=int)


def cmd_convert(args) -> int:
    """Megatron checkpoint or GGUF file -> safetensors Hugging Face directory."""
    from pathlib import Path

    from arbridge.config import load_settings, megatron_overrides
    from arbridge.models import megatron
    from arbridge.models.gguf import convert_gguf

    settings = load_settings(None, **_megatron_flags(args))
    _setup_logging(settings.log_level)
    src, out = Path(args.source), Path(args.out)
    try:
        if megatron.is_megatron_checkpoint(src):
            report = megatron.convert(src, out, Path(args.tokenizer) if args.tokenizer else None,
                                      megatron_overrides(settings))
            print("\n".join(report.lines()))
        elif src.suffix == ".gguf" and src.is_file():
            convert_gguf(src, out)
        else:
            print(f"arbridge convert: {src} is neither a Megatron-LM checkpoint nor a .gguf "
                  "file", file=sys.stderr)
            return 2
    except megatron.MegatronFormatError as exc:
        print(f"arbridge convert: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _sampling_from_args(args, sampling) -> None:
    if args.max_new_tokens is not None:
        sampling.max_new_tokens = args.max_new_tokens
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.seed is not None:
        sampling.seed = args.seed
    for s in args.stop or []:
        sampling.stop.append(s)


def _stream_and_report(args, method: str, request) -> int:
    """Send a streaming request, print text as it arrives, then a summary line."""
    from arbridge.client import ArBridgeClient

    _sampling_from_args(args, request.sampling)
    client = ArBridgeClient(_target(args), **_security(args))
    try:
        stats = getattr(client, method)(request, _print_chunk, timeout=args.timeout)
    finally:
        client.close()
    print()
    print(f"-- {stats.summary()}", file=sys.stderr)
    return 0


def cmd_caption(args) -> int:
    from arbridge.client import load_describe_request

    return _stream_and_report(args, "describe", load_describe_request(args.scene))


def cmd_generate(args) -> int:
    from arbridge.v1 import service_pb2 as spb

    return _stream_and_report(args, "generate", spb.GenerateRequest(prompt=args.prompt))


def cmd_info(args) -> int:
    from google.protobuf import json_format

    from arbridge.client import ArBridgeClient

    client = ArBridgeClient(_target(args), **_security(args))
    try:
        print(json_format.MessageToJson(client.model_info()))
    finally:
        client.close()
    return 0


def cmd_fetch_model(args) -> int:
    from arbridge.config import load_settings
    from arbridge.models.default_model import ensure_default_model

    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    print(ensure_default_model(settings.cache_dir))
    return 0


def cmd_demo(args) -> int:
    """Start a server, stream a scene caption from it, stop it."""
    from arbridge.client import wait_until_serving

    target = f"{args.host}:{args.port}"
    web_port = args.port + 1  # gRPC-Web and the browser playground
    serve = [sys.executable, "-m", "arbridge.cli", "serve", "--host", args.host,
             "--port", str(args.port), "--grpc-web-port", str(web_port)]
    if args.model:
        serve += ["--model", args.model]
    print(f"== starting the server: {' '.join(serve[2:])}", file=sys.stderr)
    started = time.perf_counter()
    server = subprocess.Popen(serve, env=os.environ.copy())
    playground = f"http://{args.host}:{web_port}/"
    try:
        wait_until_serving(target, should_continue=lambda: server.poll() is None)
        print(f"== server SERVING after {time.perf_counter() - started:.1f} s; "
              f"playground: {playground}\n== streaming the caption of {args.scene}:\n",
              file=sys.stderr)
        args.server = target
        status = cmd_caption(args)
        if status == 0 and sys.stdin.isatty():
            # A person at a terminal: keep serving for the playground until Ctrl-C.
            print(f"\n== the server keeps running: open {playground} in a browser; "
                  "Ctrl-C stops it", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
        return status
    finally:
        server.terminate()
        server.wait(timeout=60)


# -- parser ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"arbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def server_address(p, default_port=50051):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=default_port)

    def client_security(p):
        g = p.add_argument_group("TLS and auth (token also from ARBRIDGE_TOKEN)")
        g.add_argument("--tls", action="store_true", help="TLS with the system's root CAs")
        g.add_argument("--tls-ca", help="CA certificate that signed the server's")
        g.add_argument("--client-cert", help="client certificate (mTLS)")
        g.add_argument("--client-key", help="client key (mTLS)")
        g.add_argument("--token-file", help="file holding the bearer token")

    def client_options(p):
        server_address(p)
        client_security(p)
        p.add_argument("--server", help="host:port (overrides --host/--port)")
        p.add_argument("--timeout", type=float, default=None, help="call deadline, seconds")
        p.add_argument("--max-new-tokens", type=int)
        p.add_argument("--temperature", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--stop", action="append", help="stop string (repeatable)")

    p = sub.add_parser(
        "serve", help="run the gRPC server",
        description="Every setting is a flag (below), an ARBRIDGE_* environment variable or "
                    "a key in the --config TOML file, in that order of precedence.")
    p.add_argument("--config", help="TOML settings file (also ARBRIDGE_CONFIG)")
    p.set_defaults(func=cmd_serve, settings_flags=_settings_flags(p))

    p = sub.add_parser("convert", help="Megatron checkpoint or GGUF -> HF safetensors dir")
    p.add_argument("source", help="Megatron-LM checkpoint dir or zip, or a .gguf file")
    p.add_argument("out", help="output directory")
    p.add_argument("--tokenizer", help="tokenizer folder: tokenizer.json, vocab.json + "
                                       "merges.txt or a SentencePiece .model (default: what "
                                       "the checkpoint's args name, or files beside it)")
    _add_megatron_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("caption", help="stream the caption of a scene JSON file")
    p.add_argument("scene", help="DescribeSceneRequest or SceneFeatures as JSON")
    client_options(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("generate", help="stream a raw prompt completion")
    p.add_argument("prompt")
    client_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="show the served model (GetModelInfo)")
    server_address(p)
    client_security(p)
    p.add_argument("--server")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch-model", help="download and convert the default model")
    p.add_argument("--config", help="TOML settings file")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("bench", help="throughput/latency ratios vs transformers (not a test)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"])
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-peer", action="store_true",
                   help="skip `transformers serve --continuous-batching`")
    p.add_argument("--int8-activations", action="store_true",
                   help="with --dtype int8: serve int8 activations too (and time the "
                        "bfloat16 activations beside them, engine-w8a16)")
    p.add_argument("--no-llama-cpp", action="store_true",
                   help="skip llama.cpp's llama-server (built from the llama-cpp-python "
                        "sdist into the cache on first use: minutes)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("perplexity",
                       help="perplexity of a fixed text, float32 vs other dtypes (not a test)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16,int8",
                   help="comma-separated dtypes scored beside float32 (int8-activations: "
                        "int8 weights and activations, as `int8_activations` serves them)")
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("eval", help="caption/dialogue quality vs a plain prompt (not a test)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"])
    p.add_argument("--scenes", type=int, default=300, help="scenes (the first 100 tune)")
    p.add_argument("--dialogue", type=int, default=60, help="held-out scenes asked about")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/eval.json")
    p.add_argument("--act-only", action="store_true",
                   help="only the pointing and action tasks (a minute or two)")
    p.add_argument("--questions-only", action="store_true",
                   help="only the everyday questions (with and without the scene-question "
                        "layer) and the hard scenes' captions (composed and not)")
    p.add_argument("--captions-only", action="store_true",
                   help="only the hard scenes' captions (composed and by the model alone)")
    p.add_argument("--backend-url", help="evaluate through an upstream OpenAI-compatible "
                                         "server (e.g. `transformers serve`) instead")
    p.add_argument("--backend-model", help="the model name the upstream serves")
    p.add_argument("--held-out-scenes", type=int,
                   help="with --questions-only: this many held-out scenes, no tune split "
                        "(a slow upstream)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("storm-bench", help="bystanders' latency under near-context prompts, "
                                           "and peak server memory (not a test)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--tokens", type=int, default=6500, help="the long prompts' length")
    p.add_argument("--source", help="another checkout's server/ directory (side by side)")
    p.add_argument("--out", default="bench/results/storm.json")
    p.set_defaults(func=cmd_storm_bench)

    p = sub.add_parser("moe-bench", help="decode speed of a small mixture-of-experts model "
                       "against a dense one of the same active size (not a test)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt")
    p.add_argument("--out", default="bench/results/moe.json")
    p.set_defaults(func=cmd_moe_bench)
    p = sub.add_parser("attention-bench", help="decode attention through KV blocks vs dense "
                                               "rows, on this CPU (not a test)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_attention_bench)

    p = sub.add_parser("resume-bench",
                       help="tokens regenerated and latency of resumed replies (not a test)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"])
    p.add_argument("--streams", type=int, default=32)
    p.set_defaults(func=cmd_resume_bench)

    p = sub.add_parser("grammar-bench",
                       help="constrained vs unconstrained decoding, llguidance vs xgrammar")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.set_defaults(func=cmd_grammar_bench)

    p = sub.add_parser("train-projector",
                       help="train a feature-vector projector with the model frozen")
    p.add_argument("data", help="JSONL ({'features': [...], 'text': ...} per line) or NPZ "
                                "(features [N, D], texts [N])")
    p.add_argument("--encoder", required=True, help="encoder name the vectors come from")
    p.add_argument("--out", required=True, help="projector file to write (.safetensors)")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--k", type=int, default=4, help="soft-prompt embeddings per vector")
    p.add_argument("--kind", choices=["mlp", "linear"], default="mlp")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--heldout", type=float, default=0.1, help="fraction held out")
    p.add_argument("--instruction", default="", help="the DescribeScene instruction used "
                                                     "at serving time (default: built-in)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_projector)

    p = sub.add_parser("fusion-demo", help="train a projector on MiniLM scene vectors and "
                                            "measure grounded captions (minutes)")
    p.add_argument("--out", default="bench/results/fusion", help="report and projectors")
    p.add_argument("--model", help="default: SmolLM2-135M-Instruct")
    p.add_argument("--encoder", help="sentence-encoder HF dir (default: all-MiniLM-L6-v2 "
                                     "from PyPI)")
    p.add_argument("--encoder-name", default="minilm-l6", help="FeatureVector.encoder")
    p.add_argument("--train", type=int, default=400, help="training scenes")
    p.add_argument("--heldout", type=int, default=60, help="held-out scenes")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--k", type=int, default=8, help="soft-prompt embeddings per vector")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fusion_demo)

    p = sub.add_parser("demo", help="start a server, stream a scene caption, stop")
    p.add_argument("scene", nargs="?", default="examples/scene.json")
    p.add_argument("--model")
    client_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Mixture-of-experts decoding against a dense model of the same active size.

`arbridge moe-bench` builds two Qwen3-shaped models with seeded random weights (no
hub, no checkpoint: the cost of a step does not depend on what the weights say),
SmolLM2-135M's size outside the MLP (576 hidden, 30 layers, 9 query / 3 KV heads,
its tokenizer and vocabulary):

- `dense` (Qwen3ForCausalLM): one SwiGLU MLP of 1,536 per layer;
- `moe` (Qwen3MoeForCausalLM): 8 experts of 768, 2 routed per token, so the same
  1,536 MLP columns are read per token as in `dense`, out of 4x as many weights.

Each runs 64 greedy tokens per prompt through the engine (fused decoder, paged KV,
no drafts) at 1 and 8 streams, EOS ignored; the MoE also through transformers' own
forward in the same engine (`moe-hf`). Figures are decode tokens per second per
stream after the first token (the median inter-token time's inverse), in the dtype
given, with ratios against `dense` in the same run. Not a test.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import torch

from arbridge.engine.requests import SamplingConfig

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 576, 30, 9, 3, 64
DENSE_FFN, EXPERTS, TOP_K, EXPERT_FFN = 1536, 8, 2, 768


def build(kind: str, vocab: int, dtype: torch.dtype):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                  max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    if kind == "dense":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
            intermediate_size=DENSE_FFN, **common))
    else:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            num_experts=EXPERTS, num_experts_per_tok=TOP_K, moe_intermediate_size=EXPERT_FFN,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], **common))
        with torch.no_grad():  # a router that spreads tokens over every expert
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0, HIDDEN ** -0.5)
    return model.to(dtype).eval()


def _prompts(tokenizer, count: int) -> list[list[int]]:
    words = "the red chair stands near a small table by the window and a lamp".split()
    return [tokenizer(" ".join(words[i % 5:] + words[:i % 5]) + f" {i}").input_ids
            for i in range(count)]


async def _run(model, tokenizer, fused: bool, streams: int, new_tokens: int) -> dict:
    from arbridge.engine.async_engine import AsyncEngine
    from arbridge.engine.scheduler import Scheduler
    from arbridge.tools.bench import engine_run

    scheduler = Scheduler(model, tokenizer, context_length=2048, max_active=streams,
                          max_queue=64, fused_decoder=fused, kv_cache_bytes=256 << 20)
    scheduler.start()
    try:
        engine = AsyncEngine(scheduler)
        cfg = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True, seed=1)
        await engine_run(engine, _prompts(tokenizer, 2), cfg, 2)  # warm-up
        result = await engine_run(engine, _prompts(tokenizer, max(streams, 4)), cfg, streams)
    finally:
        scheduler.stop()
    itl = result.pct(result.itl_s, 0.5)
    return {"decode_tok_s_per_stream": 1.0 / itl if itl else 0.0,
            "ttft_p50_s": result.pct(result.ttft_s, 0.5), "outputs": result.outputs}


def run_moe_bench(dtype: str = "float32", new_tokens: int = 64,
                  levels: tuple[int, ...] = (1, 8)) -> dict:
    from transformers import AutoTokenizer

    from arbridge.config import default_cache_dir
    from arbridge.models.default_model import ensure_default_model
    from arbridge.tools.bench import cpu_description

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model(default_cache_dir()))
    report = {"command": f"arbridge moe-bench --dtype {dtype}", "cpu": cpu_description(),
              "dtype": dtype, "threads": torch.get_num_threads(), "new_tokens": new_tokens,
              "shape": dict(hidden=HIDDEN, layers=LAYERS, dense_ffn=DENSE_FFN,
                            experts=EXPERTS, top_k=TOP_K, expert_ffn=EXPERT_FFN),
              "rows": []}
    for name, kind, fused in (("dense", "dense", True), ("moe", "moe", True),
                              ("moe-hf", "moe", False)):
        started = time.perf_counter()
        model = build(kind, len(tokenizer), torch_dtype)
        built = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())
        for streams in levels:
            row = asyncio.run(_run(model, tokenizer, fused, streams, new_tokens))
            row.pop("outputs")
            report["rows"].append(dict(name=name, streams=streams, parameters=params,
                                       build_s=round(built, 1), **row))
        del model
    dense = {r["streams"]: r["decode_tok_s_per_stream"] for r in report["rows"]
             if r["name"] == "dense"}
    for r in report["rows"]:
        r["vs_dense"] = r["decode_tok_s_per_stream"] / dense[r["streams"]]
    return report


def format_report(report: dict) -> str:
    lines = [f"$ {report['command']}", f"cpu: {report['cpu']}",
             f"dtype {report['dtype']}, {report['threads']} threads, {report['new_tokens']} "
             f"greedy tokens a prompt; shape {report['shape']}", "",
             "| model | parameters | streams | decode tok/s per stream | vs dense | TTFT p50 |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.0f}M | {r['streams']} | "
                     f"{r['decode_tok_s_per_stream']:.1f} | {r['vs_dense']:.2f}x | "
                     f"{r['ttft_p50_s']:.2f} s |")
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

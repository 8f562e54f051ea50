"""Megatron-Core GPT -> the Hugging Face model that computes the same function.

The architecture is read from the checkpoint's `args`, never guessed from names:

- RoPE + RMSNorm + SwiGLU (Llama-style, what Megatron-LM trains today) ->
  `LlamaForCausalLM` (grouped-query attention, `kv_channels`, `rotary_base`,
  Llama 3.1 `use_rope_scaling`, `layernorm_epsilon`, tied or untied output;
  `add_bias_linear` -> biases on every linear layer); with `add_qkv_bias` alone ->
  `Qwen2ForCausalLM`; with `qk_layernorm` -> `Qwen3ForCausalLM`; with a sliding
  `window_size` -> `MistralForCausalLM` (or Qwen2/Qwen3 with sliding layers);
- the same with `num_experts` (mixture of experts) -> `MixtralForCausalLM`,
  `Qwen3MoeForCausalLM` (`qk_layernorm`) or `Qwen2MoeForCausalLM` (a gated shared
  expert), as the router's arguments say (`_plan_experts`);
- learned absolute positions + LayerNorm + GeLU (GPT-2-style) -> `GPT2LMHeadModel`,
  with the tanh GeLU when `bias_gelu_fusion` (or `openai_gelu`) trained it and the
  exact erf GeLU otherwise;
- anything else is refused before serving, naming the argument and saying how to
  serve it through vLLM instead (`REFUSED`, `WHAT_TO_DO`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arbridge.models.megatron.core_sources import (
    FC1,
    FC2,
    FINAL_NORM,
    K_NORM,
    OUTPUT_LAYER,
    POSITION_EMBEDDINGS,
    PROJ,
    Q_NORM,
    QKV,
    ROUTER,
    SHARED_FC1,
    SHARED_FC2,
    SHARED_GATE,
    WORD_EMBEDDINGS,
    CoreSource,
)
from arbridge.models.megatron.pickles import MegatronFormatError

# What a refusal adds: the way to serve the model all the same.
WHAT_TO_DO = ("; to serve it anyway, convert it with NVIDIA's Megatron-Bridge (or Megatron-LM's "
              "tools/checkpoint) to Hugging Face, serve that with vLLM or SGLang, and run "
              "`arbridge serve --backend openai --backend-url URL --tokenizer HF_DIR`")


def _on(v) -> bool:
    return bool(v)


def _sinkhorn(v) -> bool:
    return "sinkhorn" in (v if isinstance(v, list | tuple) else [v])


# (argument, predicate on its value -> refused, what it is). Checked first, in order.
REFUSED = [
    ("multi_latent_attention", _on, "multi-latent attention (MLA)"),
    ("qk_l2_norm", _on, "L2 norm on queries and keys"),
    ("mtp_num_layers", _on, "multi-token prediction layers"),
    ("heterogeneous_layers_config_path", _on, "heterogeneous layers"),
    ("hybrid_override_pattern", _on, "hybrid Mamba layers"),
    ("apply_layernorm_1p", _on, "zero-centred (1 + gamma) layer norm"),
    ("apply_residual_connection_post_layernorm", _on, "post-norm residuals"),
    ("squared_relu", _on, "squared-ReLU activation"),
    ("rotary_interleaved", _on, "interleaved rotary embeddings"),
    ("rotary_seq_len_interpolation_factor", lambda v: v not in (None, 1, 1.0),
     "rope sequence-length interpolation"),
    ("window_attn_skip_freq", _on, "sliding-window attention on some layers only"),
    ("softmax_type", lambda v: v not in (None, "vanilla"), "attention sinks (softmax offset)"),
    ("moe_layer_freq", lambda v: v not in (None, 1), "dense layers between expert layers"),
    ("moe_router_score_function", lambda v: v not in (None, "softmax"),
     "sigmoid routing scores (DeepSeek-V3 style)"),
    ("moe_router_enable_expert_bias", _on, "expert-bias (aux-loss-free) routing"),
    ("moe_router_num_groups", _on, "group-limited expert routing"),
    ("moe_router_topk_scaling_factor", lambda v: v not in (None, 1, 1.0),
     "scaled routing weights"),
    ("moe_router_load_balancing_type", _sinkhorn, "Sinkhorn routing"),
    ("moe_apply_probs_on_input", _on, "routing weights applied before the experts"),
    ("moe_latent_size", _on, "latent expert projections"),
]
SUPPORTED_ARGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
    "group_query_attention", "num_query_groups", "kv_channels", "max_position_embeddings",
    "position_embedding_type (rope | learned_absolute)", "rotary_base", "rotary_percent (1.0)",
    "use_rope_scaling", "rope_scaling_factor", "qk_layernorm", "window_size ((W, 0))",
    "normalization (RMSNorm | LayerNorm)", "layernorm_epsilon", "swiglu", "add_bias_linear",
    "add_qkv_bias", "bias_gelu_fusion", "openai_gelu", "untie_embeddings_and_output_weights",
    "num_experts", "moe_router_topk", "moe_ffn_hidden_size", "moe_router_pre_softmax",
    "moe_shared_expert_intermediate_size", "moe_shared_expert_gate",
    "expert_model_parallel_size", "expert_tensor_parallel_size (= TP in legacy files)",
    "padded_vocab_size", "tensor/pipeline/virtual-pipeline sizes", "params_dtype / bf16 / fp16",
    "tokenizer_type", "vocab_file", "merge_file", "tokenizer_model",
)


@dataclass
class Architecture:
    name: str  # the HF class
    config: dict
    tied: bool
    biases: dict = field(default_factory=dict)
    qk_norm: bool = False
    experts: int = 0  # routed experts per layer (0: a dense MLP)
    shared_expert: bool = False


def _arg(args, name, default=None):
    value = getattr(args, name, None)
    return default if value is None else value


def refuse(message: str) -> MegatronFormatError:
    return MegatronFormatError(f"unsupported: {message}{WHAT_TO_DO}")


def _window(args) -> int | None:
    """Megatron's `window_size=(W, 0)` attends to W earlier tokens and itself: HF's
    `sliding_window` counts both, W + 1."""
    value = getattr(args, "window_size", None)
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 2 or int(value[1]) != 0
            or int(value[0]) < 0):
        raise refuse(f"args.window_size={value!r} (only (W, 0): W earlier tokens, none later)")
    return int(value[0]) + 1


def plan_architecture(args: argparse.Namespace, source: CoreSource) -> Architecture:
    """The HF architecture for these args, or MegatronFormatError naming the argument."""
    for name, refused, what in REFUSED:
        value = getattr(args, name, None)
        if value is not None and refused(value):
            raise refuse(f"args.{name}={value!r} ({what}) has no Hugging Face equivalent "
                         "ArBridge can serve")
    position = _arg(args, "position_embedding_type", "learned_absolute")
    if position not in ("rope", "learned_absolute"):
        raise refuse(f"args.position_embedding_type={position!r} (only rope and "
                     "learned_absolute)")
    if position == "rope" and float(_arg(args, "rotary_percent", 1.0)) != 1.0:
        raise refuse(f"args.rotary_percent={args.rotary_percent} (partial rotary embeddings); "
                     "only 1.0")
    norm = _arg(args, "normalization", "LayerNorm")
    if norm not in ("LayerNorm", "RMSNorm"):
        raise refuse(f"args.normalization={norm!r}")
    swiglu = bool(_arg(args, "swiglu", False))

    hidden = int(args.hidden_size)
    heads = int(args.num_attention_heads)
    groups = int(_arg(args, "num_query_groups", heads)) if _arg(
        args, "group_query_attention", False) else heads
    head_dim = int(_arg(args, "kv_channels", hidden // heads))
    ffn = int(_arg(args, "ffn_hidden_size", 4 * hidden))
    eps = float(_arg(args, "layernorm_epsilon", 1e-5))
    positions = int(_arg(args, "max_position_embeddings", 0) or _arg(args, "seq_length", 2048))
    tied = not bool(_arg(args, "untie_embeddings_and_output_weights", False))
    if int(args.num_layers) != source.num_layers:
        raise MegatronFormatError(f"mismatched shapes: args.num_layers={args.num_layers} but "
                                  f"the checkpoint holds {source.num_layers} layers")
    if heads % groups:
        raise MegatronFormatError(f"mismatched shapes: args.num_attention_heads={heads} is not "
                                  f"a multiple of args.num_query_groups={groups}")
    experts = int(_arg(args, "num_experts", 0) or 0)
    biases = {name: source.has_layer(f"{name}.bias") for name in (QKV, PROJ, FC1, FC2)}
    if experts:  # an expert layer's MLP biases live with the experts
        biases[FC1] = source.has_experts("linear_fc1.bias")
        biases[FC2] = source.has_experts("linear_fc2.bias")
    common = dict(num_hidden_layers=source.num_layers, hidden_size=hidden,
                  num_attention_heads=heads, max_position_embeddings=positions,
                  tie_word_embeddings=tied)
    rope_extras = {"use_rope_scaling", "qk_layernorm", "window_size", "num_experts"}
    if position != "rope" or norm != "RMSNorm" or not swiglu:
        for name in sorted(rope_extras):
            if _arg(args, name):
                raise refuse(f"args.{name}={getattr(args, name)!r} on a model that is not "
                             "Llama-style (rope + RMSNorm + SwiGLU)")
    qk_norm = bool(_arg(args, "qk_layernorm", False))
    _check_explained(source, args, qk_norm, experts)
    window = _window(args)

    if position == "rope" and norm == "RMSNorm" and swiglu:
        rope = {"rope_theta": float(_arg(args, "rotary_base", 10000))}
        if _arg(args, "use_rope_scaling", False):
            # megatron-core's RotaryEmbedding._apply_scaling: Llama 3.1's frequency
            # scaling with its fixed low/high factors and original context.
            rope["rope_scaling"] = {
                "rope_type": "llama3", "factor": float(_arg(args, "rope_scaling_factor", 8.0)),
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
        llama = dict(common, intermediate_size=ffn, num_key_value_heads=groups,
                     rms_norm_eps=eps, hidden_act="silu", head_dim=head_dim, **rope)
        windowed = {} if window is None else dict(
            use_sliding_window=True, sliding_window=window, max_window_layers=0,
            layer_types=["sliding_attention"] * source.num_layers)
        if experts:
            return _plan_experts(args, llama, window, biases, tied, qk_norm, experts)
        if qk_norm:
            if any(biases.values()):
                raise refuse("args.qk_layernorm with biases (args.add_bias_linear / "
                             "args.add_qkv_bias): Qwen3 has none")
            return Architecture("Qwen3ForCausalLM", dict(llama, attention_bias=False,
                                                         **windowed), tied, biases,
                                qk_norm=True)
        if all(biases.values()) or not any(biases.values()):
            if window is not None:
                if any(biases.values()):
                    raise refuse("args.window_size with args.add_bias_linear (Mistral, the "
                                 "sliding-window Llama, has no biases)")
                return Architecture("MistralForCausalLM", dict(llama, sliding_window=window),
                                    tied, biases)
            return Architecture("LlamaForCausalLM", dict(
                llama, attention_bias=biases[QKV], mlp_bias=biases[FC1]), tied, biases)
        if biases[QKV] and not (biases[PROJ] or biases[FC1] or biases[FC2]):
            if head_dim * heads != hidden:
                raise refuse(f"args.add_qkv_bias with args.kv_channels={head_dim} != "
                             f"hidden_size / num_attention_heads ({hidden // heads})")
            return Architecture("Qwen2ForCausalLM", dict(llama, **(windowed or dict(
                use_sliding_window=False))), tied, biases)
        raise refuse(f"biases on {[k for k, v in biases.items() if v]} only "
                     "(args.add_bias_linear / args.add_qkv_bias)")
    if position == "learned_absolute" and norm == "LayerNorm" and not swiglu:
        if not all(biases.values()):
            raise refuse("a GPT-2-style model without biases (args.add_bias_linear=False)")
        if groups != heads or head_dim * heads != hidden:
            raise refuse("a GPT-2-style model with grouped-query attention or "
                         f"args.kv_channels={head_dim} != hidden_size / num_attention_heads")
        tanh = bool(_arg(args, "bias_gelu_fusion", False)) or bool(_arg(args, "openai_gelu",
                                                                          False))
        return Architecture("GPT2LMHeadModel", dict(
            n_layer=source.num_layers, n_embd=hidden, n_head=heads, n_positions=positions,
            n_inner=ffn, layer_norm_epsilon=eps, tie_word_embeddings=tied,
            activation_function="gelu_new" if tanh else "gelu"), tied, biases)
    raise refuse(
        f"args.position_embedding_type={position!r} with args.normalization="
        f"{norm!r} and args.swiglu={swiglu} (ArBridge serves rope + RMSNorm + SwiGLU, "
        "Llama-style, and learned_absolute + LayerNorm + GeLU, GPT-2-style)")


def _check_explained(source: CoreSource, args, qk_norm: bool, experts: int) -> None:
    """Args that lie (say no qk_layernorm) cannot sneak a tensor past the converter, and
    args that promise a tensor the checkpoint lacks are named before anything is read."""
    shared = bool(_arg(args, "moe_shared_expert_intermediate_size", 0))
    gated = shared and bool(_arg(args, "moe_shared_expert_gate", False))
    claims = [(Q_NORM, qk_norm, "qk_layernorm"), (K_NORM, qk_norm, "qk_layernorm"),
              (ROUTER, bool(experts), "num_experts"),
              (f"{SHARED_FC1}.weight", shared, "moe_shared_expert_intermediate_size"),
              (SHARED_GATE, gated, "moe_shared_expert_gate")]
    for suffix, declared, arg in claims:
        found = source.has_layer(suffix)
        if found and not declared:
            raise MegatronFormatError(
                f"unsupported tensor 'decoder.layers.<n>.{suffix}': args.{arg}="
                f"{getattr(args, arg, None)!r} does not explain it")
        if declared and not found:
            raise MegatronFormatError(f"missing tensor: decoder.layers.<n>.{suffix} "
                                      f"(args.{arg}={getattr(args, arg, None)!r})")
    if source.has_experts("linear_fc1.weight") != bool(experts):
        raise MegatronFormatError(
            f"{'missing' if experts else 'unsupported'} tensor: expert weights "
            f"(mlp.experts.*) {'absent' if experts else 'present'} but args.num_experts="
            f"{getattr(args, 'num_experts', None)!r}")


def _plan_experts(args, llama: dict, window: int | None, biases: dict, tied: bool,
                  qk_norm: bool, experts: int) -> Architecture:
    """Mixture-of-experts layers. Megatron's router (softmax scores): by default the
    top-k logits, softmaxed among themselves, which is every HF MoE class's softmax,
    top-k and renormalise (`norm_topk_prob=True`); `moe_router_pre_softmax` keeps the
    softmax over all experts un-renormalised (`norm_topk_prob=False`). A shared expert
    with `moe_shared_expert_gate` is Qwen2-MoE's sigmoid-gated shared expert."""
    topk = int(_arg(args, "moe_router_topk", 2))
    expert_ffn = int(_arg(args, "moe_ffn_hidden_size", llama["intermediate_size"]))
    pre_softmax = bool(_arg(args, "moe_router_pre_softmax", False))
    shared = int(_arg(args, "moe_shared_expert_intermediate_size", 0) or 0)
    gated = bool(_arg(args, "moe_shared_expert_gate", False))
    if biases[PROJ] or biases[FC1] or biases[FC2]:
        raise refuse("args.num_experts with args.add_bias_linear (biases on the experts or "
                     "the output projection): no HF MoE class has them")
    if topk > experts:
        raise MegatronFormatError(f"mismatched shapes: args.moe_router_topk={topk} > "
                                  f"args.num_experts={experts}")
    moe = dict(llama, num_experts_per_tok=topk)
    if shared and not gated:
        raise refuse(f"args.moe_shared_expert_intermediate_size={shared} with "
                     "args.moe_shared_expert_gate=False (an ungated shared expert)")
    if window is not None and (qk_norm or shared):
        raise refuse(f"args.window_size with args.num_experts={experts} and "
                     f"{'args.qk_layernorm' if qk_norm else 'a shared expert'} (only "
                     "Mixtral-style experts take a sliding window)")
    if qk_norm:
        if shared or biases[QKV]:
            raise refuse("args.qk_layernorm with a shared expert or args.add_qkv_bias "
                         "(Qwen3-MoE has neither)")
        return Architecture("Qwen3MoeForCausalLM", dict(
            moe, num_experts=experts, moe_intermediate_size=expert_ffn,
            norm_topk_prob=not pre_softmax, decoder_sparse_step=1, mlp_only_layers=[],
            attention_bias=False), tied, biases, qk_norm=True, experts=experts)
    if shared:
        if llama["head_dim"] * llama["num_attention_heads"] != llama["hidden_size"]:
            raise refuse(f"args.kv_channels={llama['head_dim']} != hidden_size / "
                         "num_attention_heads with a shared expert (Qwen2-MoE's heads are "
                         "hidden_size / num_attention_heads wide)")
        return Architecture("Qwen2MoeForCausalLM", dict(
            moe, num_experts=experts, moe_intermediate_size=expert_ffn,
            shared_expert_intermediate_size=shared, norm_topk_prob=not pre_softmax,
            decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=biases[QKV],
            use_sliding_window=False), tied, biases, experts=experts, shared_expert=True)
    if pre_softmax or biases[QKV]:
        raise refuse(f"args.num_experts={experts} with args.moe_router_pre_softmax={pre_softmax}"
                     f" / args.add_qkv_bias={biases[QKV]} and neither a gated shared expert nor "
                     "args.qk_layernorm (no HF MoE class matches)")
    return Architecture("MixtralForCausalLM", dict(
        moe, intermediate_size=expert_ffn, num_local_experts=experts, sliding_window=window),
        tied, biases, experts=experts)


# -- weights ---------------------------------------------------------------------------
def _split_qkv(w: torch.Tensor, groups: int, per_group: int, head_dim: int):
    """Megatron-Core's fused rows, per query group `[q heads | k | v]` -> q, k, v."""
    rest = w.shape[1:]
    if w.shape[0] != groups * (per_group + 2) * head_dim:
        raise MegatronFormatError(
            f"mismatched shapes: linear_qkv has {w.shape[0]} rows, the args say {groups} "
            f"groups x ({per_group} + 2) heads x {head_dim}")
    g = w.reshape(groups, per_group + 2, head_dim, *rest)
    q = g[:, :per_group].reshape(groups * per_group * head_dim, *rest)
    k = g[:, per_group].reshape(groups * head_dim, *rest)
    v = g[:, per_group + 1].reshape(groups * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _vocab_rows(t: torch.Tensor, vocab: int, name: str) -> torch.Tensor:
    if vocab > t.shape[0]:
        raise MegatronFormatError(f"mismatched shapes: the tokenizer has {vocab} tokens but "
                                  f"{name} only {t.shape[0]} rows")
    return t[:vocab].clone()  # drop the padded vocabulary (and its memory)


def _llama_weights(source: CoreSource, arch: Architecture, vocab: int) -> Iterator:
    """(HF name, tensor) pairs, one Megatron parameter (all layers) at a time."""
    cfg = arch.config
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    yield "model.embed_tokens.weight", _vocab_rows(source.tensor(WORD_EMBEDDINGS), vocab,
                                                   WORD_EMBEDDINGS)
    yield "model.norm.weight", source.tensor(FINAL_NORM[0])
    if not arch.tied:
        yield "lm_head.weight", _vocab_rows(source.tensor(OUTPUT_LAYER), vocab, OUTPUT_LAYER)
    pre = "model.layers.{}."
    simple = [(f"{QKV}.layer_norm_weight", "input_layernorm.weight"),
              (f"{PROJ}.weight", "self_attn.o_proj.weight"),
              (f"{FC1}.layer_norm_weight", "post_attention_layernorm.weight")]
    if arch.qk_norm:
        simple += [(Q_NORM, "self_attn.q_norm.weight"), (K_NORM, "self_attn.k_norm.weight")]
    if not arch.experts:
        simple.append((f"{FC2}.weight", "mlp.down_proj.weight"))
    if arch.biases[PROJ]:
        simple += [(f"{PROJ}.bias", "self_attn.o_proj.bias"), (f"{FC2}.bias", "mlp.down_proj.bias")]
    for suffix, hf in simple:
        for i, t in enumerate(source.layers(suffix)):
            yield pre.format(i) + hf, t
    for kind in ("weight", "bias") if arch.biases[QKV] else ("weight",):
        for i, t in enumerate(source.layers(f"{QKV}.{kind}")):
            q, k, v = _split_qkv(t, groups, heads // groups, head_dim)
            for name, part in (("q", q), ("k", k), ("v", v)):
                yield pre.format(i) + f"self_attn.{name}_proj.{kind}", part
    if arch.experts:
        yield from _expert_weights(source, arch)
        return
    for kind in ("weight", "bias") if arch.biases[FC1] else ("weight",):
        for i, t in enumerate(source.layers(f"{FC1}.{kind}")):
            gate, up = t.chunk(2, dim=0)  # global SwiGLU layout: [gate; up] (views, no copy)
            yield pre.format(i) + f"mlp.gate_proj.{kind}", gate
            yield pre.format(i) + f"mlp.up_proj.{kind}", up


# HF hub names of one expert's (gate, up, down) and of the router, per class: what
# vLLM, SGLang and transformers itself load (transformers fuses experts on load).
_EXPERT_NAMES = {
    "MixtralForCausalLM": ("block_sparse_moe", "w1", "w3", "w2"),
    "Qwen2MoeForCausalLM": ("mlp", "gate_proj", "up_proj", "down_proj"),
    "Qwen3MoeForCausalLM": ("mlp", "gate_proj", "up_proj", "down_proj"),
}


def _expert_weights(source: CoreSource, arch: Architecture) -> Iterator:
    block, gate_name, up_name, down_name = _EXPERT_NAMES[arch.name]
    pre = "model.layers.{}." + block + "."
    for i, t in enumerate(source.layers(ROUTER)):
        yield pre.format(i) + "gate.weight", t
    for i, layer in enumerate(source.experts("linear_fc1.weight", arch.experts)):
        for e, t in enumerate(layer):
            gate, up = t.chunk(2, dim=0)
            yield pre.format(i) + f"experts.{e}.{gate_name}.weight", gate
            yield pre.format(i) + f"experts.{e}.{up_name}.weight", up
    for i, layer in enumerate(source.experts("linear_fc2.weight", arch.experts)):
        for e, t in enumerate(layer):
            yield pre.format(i) + f"experts.{e}.{down_name}.weight", t
    if arch.shared_expert:
        for i, t in enumerate(source.layers(f"{SHARED_FC1}.weight")):
            gate, up = t.chunk(2, dim=0)
            yield pre.format(i) + "shared_expert.gate_proj.weight", gate
            yield pre.format(i) + "shared_expert.up_proj.weight", up
        for i, t in enumerate(source.layers(f"{SHARED_FC2}.weight")):
            yield pre.format(i) + "shared_expert.down_proj.weight", t
        for i, t in enumerate(source.layers(SHARED_GATE)):
            yield pre.format(i) + "shared_expert_gate.weight", t


def _hub_names(expected: dict[str, tuple], arch: Architecture) -> dict[str, tuple]:
    """transformers holds each layer's experts fused ([experts, 2 x ffn, hidden] and
    [experts, hidden, ffn]); the files name every expert apart."""
    if not arch.experts:
        return expected
    block, gate_name, up_name, down_name = _EXPERT_NAMES[arch.name]
    out = {}
    for key, shape in expected.items():
        head, _, tail = key.partition(".mlp.")
        if tail == "experts.gate_up_proj":
            for e in range(shape[0]):
                for name in (gate_name, up_name):
                    out[f"{head}.{block}.experts.{e}.{name}.weight"] = (shape[1] // 2, shape[2])
        elif tail == "experts.down_proj":
            for e in range(shape[0]):
                out[f"{head}.{block}.experts.{e}.{down_name}.weight"] = tuple(shape[1:])
        elif tail == "gate.weight":
            out[f"{head}.{block}.gate.weight"] = shape
        else:
            out[key] = shape
    return out


def _gpt2_weights(source: CoreSource, arch: Architecture, vocab: int) -> Iterator:
    cfg = arch.config
    heads, hidden = cfg["n_head"], cfg["n_embd"]
    yield "transformer.wte.weight", _vocab_rows(source.tensor(WORD_EMBEDDINGS), vocab,
                                                WORD_EMBEDDINGS)
    yield "transformer.wpe.weight", source.tensor(POSITION_EMBEDDINGS)
    yield "transformer.ln_f.weight", source.tensor(FINAL_NORM[0])
    yield "transformer.ln_f.bias", source.tensor(FINAL_NORM[1])
    if not arch.tied:
        yield "lm_head.weight", _vocab_rows(source.tensor(OUTPUT_LAYER), vocab, OUTPUT_LAYER)
    pre = "transformer.h.{}."
    # (Megatron suffix, HF name, a Linear weight HF's Conv1D stores as [in, out])
    names = [(f"{QKV}.layer_norm_weight", "ln_1.weight", False),
             (f"{QKV}.layer_norm_bias", "ln_1.bias", False),
             (f"{PROJ}.weight", "attn.c_proj.weight", True),
             (f"{PROJ}.bias", "attn.c_proj.bias", False),
             (f"{FC1}.layer_norm_weight", "ln_2.weight", False),
             (f"{FC1}.layer_norm_bias", "ln_2.bias", False),
             (f"{FC1}.weight", "mlp.c_fc.weight", True), (f"{FC1}.bias", "mlp.c_fc.bias", False),
             (f"{FC2}.weight", "mlp.c_proj.weight", True),
             (f"{FC2}.bias", "mlp.c_proj.bias", False)]
    for suffix, hf, conv in names:
        for i, t in enumerate(source.layers(suffix)):
            yield pre.format(i) + hf, t.T.contiguous() if conv else t
    for kind in ("weight", "bias"):
        for i, t in enumerate(source.layers(f"{QKV}.{kind}")):
            q, k, v = _split_qkv(t, heads, 1, hidden // heads)
            fused = torch.cat([q, k, v], dim=0)  # HF: all q, then all k, then all v
            yield pre.format(i) + f"attn.c_attn.{kind}", (fused.T.contiguous()
                                                          if kind == "weight" else fused)


class _ShardWriter:
    """Safetensors shards written as tensors arrive, so the converted model is never in
    memory whole (transformers' save_pretrained would hold it, and more, at once)."""

    def __init__(self, out_dir: Path, shard_bytes: int):
        self.out_dir, self.shard_bytes = out_dir, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.pending[name] = tensor.contiguous()
        size = tensor.numel() * tensor.element_size()
        self.pending_bytes += size
        self.total += size
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"part-{len(self.files):05d}.safetensors"
        save_file(self.pending, self.out_dir / name, metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        if len(self.files) == 1:
            (self.out_dir / self.files[0][0]).rename(self.out_dir / "model.safetensors")
            return
        weight_map = {}
        n = len(self.files)
        for i, (old, names) in enumerate(self.files):
            new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out_dir / old).rename(self.out_dir / new)
            weight_map.update(dict.fromkeys(names, new))
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2))


@dataclass
class WrittenModel:
    architecture: str
    dtype: str
    parameters: int


def write_model(source: CoreSource, arch: Architecture, tokenizer, out_dir: Path,
                shard_bytes: int = 512 << 20) -> WrittenModel:
    """Writes the HF model (config, generation config, safetensors shards) into `out_dir`,
    in the checkpoint's dtype. Each tensor is read, reshaped, checked against the shape
    the HF class expects and written; at most one stacked parameter and one shard are in
    memory at a time."""
    import transformers

    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    config_class = getattr(transformers, arch.name.replace("ForCausalLM", "Config")
                           .replace("LMHeadModel", "Config"))
    config = config_class(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos,
                          architectures=[arch.name], **arch.config)
    config.dtype = source.dtype
    with torch.device("meta"):
        expected = {k: tuple(v.shape)
                    for k, v in getattr(transformers, arch.name)(config).state_dict().items()}
    expected = _hub_names(expected, arch)
    if arch.tied:
        expected.pop("lm_head.weight", None)  # tied to the embedding when loaded
    weights = (_gpt2_weights if arch.name == "GPT2LMHeadModel" else _llama_weights)(
        source, arch, vocab)
    writer = _ShardWriter(out_dir, shard_bytes)
    parameters = 0
    for key, value in weights:
        if key not in expected:
            raise MegatronFormatError(f"internal: {key} is not a {arch.name} weight")
        if tuple(value.shape) != expected[key]:
            raise MegatronFormatError(f"mismatched shapes: {key} is {list(value.shape)}, the "
                                      f"args make it {list(expected.pop(key))}")
        expected.pop(key)
        parameters += value.numel()
        writer.add(key, value)
    if expected:
        raise MegatronFormatError(f"missing tensor(s) for {', '.join(sorted(expected)[:5])}")
    writer.close()
    config.save_pretrained(out_dir)
    transformers.GenerationConfig(bos_token_id=bos, eos_token_id=eos,
                                  pad_token_id=eos).save_pretrained(out_dir)
    return WrittenModel(arch.name, str(source.dtype).removeprefix("torch."), parameters)

"""Megatron-LM's pre-Megatron-Core GPT layout (2019-2022) -> Hugging Face GPT-2.

Shards hold `model.language_model.{embedding, encoder|transformer}` with
`layers.N.attention.query_key_value` and friends. They are merged the way
Megatron split them: column-parallel weights (QKV, dense_h_to_4h, word
embeddings) along dim 0, row-parallel weights (attention dense, dense_4h_to_h)
along dim 1; layer norms, row-parallel biases and position embeddings come from
tensor rank 0; pipeline stages hold consecutive layers. The fused QKV rows are
laid out by `checkpoint_version`.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arbridge.models.megatron.core_sources import cat_shards
from arbridge.models.megatron.layout import check_declared_grid
from arbridge.models.megatron.pickles import MegatronFormatError, load_pickle
from arbridge.models.megatron.tokenizers import GPT2_EOS

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


def is_legacy_gpt2(shard: dict) -> bool:
    model = shard.get("model")
    return isinstance(model, dict) and "language_model" in model


# -- merging ----------------------------------------------------------------------
@dataclass
class MergedCheckpoint:
    """Megatron weights merged across ranks, named as in Megatron (one rank's view)."""

    tensors: dict[str, torch.Tensor]
    num_layers: int
    args: argparse.Namespace | None
    checkpoint_version: float
    tensor_parallel: int
    pipeline_parallel: int
    extra: dict = field(default_factory=dict)


def _language_model(sd: dict, where: str) -> tuple[dict, dict]:
    """(embedding dict or {}, transformer dict) of one shard."""
    model = sd.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("language_model"), dict):
        raise MegatronFormatError(f"unknown layout: {where} has no model.language_model")
    lm = model["language_model"]
    body = lm.get("transformer", lm.get("encoder"))
    if not isinstance(body, dict):
        raise MegatronFormatError(f"unknown layout: {where}: model.language_model has neither "
                                  f"'transformer' nor 'encoder' (keys: {sorted(lm)})")
    return lm.get("embedding", {}), body


def _canonical_qkv(t: torch.Tensor, heads: int, version: float, where: str) -> torch.Tensor:
    """One rank's fused QKV -> [3, heads, head_dim, *rest] (q, k, v blocks)."""
    rest = t.shape[1:]
    if t.shape[0] % (3 * heads):
        raise MegatronFormatError(f"mismatched shapes: {where} has {t.shape[0]} rows, "
                                  f"not a multiple of 3 x {heads} heads")
    head_dim = t.shape[0] // (3 * heads)
    if version == 0:  # [3 * np * hn]
        return t.view(3, heads, head_dim, *rest)
    if version < 2:  # [np * hn * 3]
        return t.view(heads, head_dim, 3, *rest).movedim(2, 0)
    return t.view(heads, 3, head_dim, *rest).movedim(1, 0)  # [np * 3 * hn]


_COLUMN_PARALLEL = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
_ROW_PARALLEL = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_REPLICATED = ("input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
               "post_attention_layernorm.bias", "attention.dense.bias", "mlp.dense_4h_to_h.bias")
_QKV = ("attention.query_key_value.weight", "attention.query_key_value.bias")


def merge_shards(shards: dict[tuple[int, int, int], Path], heads: int | None) -> MergedCheckpoint:
    """`shards` as `layout.find_shards` gives them (this layout has no experts)."""
    first = load_pickle(shards[(0, 0, 0)], str(shards[(0, 0, 0)]))
    args = first.get("args")
    check_declared_grid(args, shards)
    shards = {(t, p): path for (t, p, _), path in shards.items()}
    tp = max(t for t, _ in shards) + 1
    pp = max(p for _, p in shards) + 1
    version = float(first.get("checkpoint_version", 0))
    heads = heads or getattr(args, "num_attention_heads", None)
    tensors: dict[str, torch.Tensor] = {}
    layer_offset = 0
    for stage in range(pp):
        sds = [first if (t, stage) == (0, 0) else load_pickle(shards[(t, stage)],
                                                              str(shards[(t, stage)]))
               for t in range(tp)]
        parts = [_language_model(sd, str(shards[(t, stage)])) for t, sd in enumerate(sds)]
        embeddings = [e for e, _ in parts]
        bodies = [b for _, b in parts]
        if stage == 0:
            try:
                tensors["word_embeddings"] = cat_shards(
                    [e["word_embeddings"]["weight"] for e in embeddings], 0, "word_embeddings")
                tensors["position_embeddings"] = embeddings[0]["position_embeddings"]["weight"]
            except (KeyError, TypeError):
                raise MegatronFormatError(
                    f"unknown layout: {shards[(0, 0)]} lacks embedding.word_embeddings / "
                    "position_embeddings") from None
        stage_layers = set()
        for key in bodies[0]:
            m = _LAYER_KEY.match(key)
            if m is None:
                if key.startswith("final_layernorm."):
                    tensors[key] = bodies[0][key]
                    continue
                raise MegatronFormatError(f"unknown layout: unexpected key '{key}' in "
                                          f"{shards[(0, stage)]}")
            local, name = int(m.group(1)), m.group(2).replace("self_attention.", "attention.")
            stage_layers.add(local)
            out_key = f"layers.{layer_offset + local}.{name}"
            ranks = [b.get(key) for b in bodies]
            if any(r is None for r in ranks):
                raise MegatronFormatError(f"missing tensor: {key} is not on every tensor rank "
                                          f"of pipeline stage {stage}")
            if name in _REPLICATED:
                tensors[out_key] = ranks[0]
            elif name in _COLUMN_PARALLEL:
                tensors[out_key] = cat_shards(ranks, 0, out_key)
            elif name in _ROW_PARALLEL:
                tensors[out_key] = cat_shards(ranks, 1, out_key)
            elif name in _QKV:
                if heads is None:
                    raise MegatronFormatError("the checkpoint has no args: pass "
                                              "--num-attention-heads")
                if heads % tp:
                    raise MegatronFormatError(f"mismatched shapes: {heads} heads do not split "
                                              f"over {tp} tensor ranks")
                canon = [_canonical_qkv(r, heads // tp, version, f"{out_key} rank {t}")
                         for t, r in enumerate(ranks)]
                merged = cat_shards(canon, 1, out_key)  # heads are dim 1
                tensors[out_key] = merged.reshape(-1, *merged.shape[3:])
            else:
                raise MegatronFormatError(f"unknown layout: unexpected key '{key}'")
        if stage_layers != set(range(len(stage_layers))):
            raise MegatronFormatError(f"missing layers in pipeline stage {stage}: found "
                                      f"{sorted(stage_layers)}")
        layer_offset += len(stage_layers)
    if "final_layernorm.weight" not in tensors:
        raise MegatronFormatError("unknown layout: no final_layernorm in the last pipeline stage")
    return MergedCheckpoint(tensors=tensors, num_layers=layer_offset, args=args,
                            checkpoint_version=version, tensor_parallel=tp,
                            pipeline_parallel=pp, extra={"iteration": first.get("iteration")})


# -- to Hugging Face GPT-2 --------------------------------------------------------------
@dataclass
class Overrides:
    """Hyper-parameters for checkpoints saved without `args` (flags)."""

    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    max_position_embeddings: int | None = None


def _hyper(merged: MergedCheckpoint, overrides: Overrides) -> dict[str, int]:
    args = merged.args
    word = merged.tensors["word_embeddings"]
    pos = merged.tensors["position_embeddings"]

    def pick(name: str, inferred: int | None) -> int | None:
        value = getattr(overrides, name)
        if value is None:
            value = getattr(args, name, None)
        return inferred if value is None else int(value)

    hidden = pick("hidden_size", word.shape[1])
    hyper = {
        "num_layers": pick("num_layers", merged.num_layers),
        "hidden_size": hidden,
        "num_attention_heads": pick("num_attention_heads", None),
        "max_position_embeddings": pick("max_position_embeddings", pos.shape[0]),
        "padded_vocab_size": int(getattr(args, "padded_vocab_size", word.shape[0])),
    }
    if hyper["num_attention_heads"] is None:
        raise MegatronFormatError("the checkpoint has no args: pass --num-attention-heads")
    checks = [("num_layers", hyper["num_layers"], merged.num_layers, "layers in the shards"),
              ("hidden_size", hidden, word.shape[1], "word embedding width"),
              ("max_position_embeddings", hyper["max_position_embeddings"], pos.shape[0],
               "position embedding rows"),
              ("padded_vocab_size", hyper["padded_vocab_size"], word.shape[0],
               "merged word embedding rows")]
    for name, declared, found, what in checks:
        if declared != found:
            raise MegatronFormatError(f"mismatched shapes: {name} is {declared} but the "
                                      f"{what} say {found}")
    return hyper


# HF GPT-2 layer tensor <- Megatron layer tensor; True = a Linear weight that
# HF's Conv1D stores transposed ([in, out] instead of [out, in]).
_GPT2_LAYER_NAMES = [
    ("ln_1.weight", "input_layernorm.weight", False),
    ("ln_1.bias", "input_layernorm.bias", False),
    ("attn.c_attn.weight", "attention.query_key_value.weight", True),
    ("attn.c_attn.bias", "attention.query_key_value.bias", False),
    ("attn.c_proj.weight", "attention.dense.weight", True),
    ("attn.c_proj.bias", "attention.dense.bias", False),
    ("ln_2.weight", "post_attention_layernorm.weight", False),
    ("ln_2.bias", "post_attention_layernorm.bias", False),
    ("mlp.c_fc.weight", "mlp.dense_h_to_4h.weight", True),
    ("mlp.c_fc.bias", "mlp.dense_h_to_4h.bias", False),
    ("mlp.c_proj.weight", "mlp.dense_4h_to_h.weight", True),
    ("mlp.c_proj.bias", "mlp.dense_4h_to_h.bias", False),
]


def to_gpt2(merged: MergedCheckpoint, tokenizer, overrides: Overrides | None = None):
    """A transformers GPT2LMHeadModel holding the merged weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hyper = _hyper(merged, overrides or Overrides())
    t = merged.tensors
    h = hyper["hidden_size"]
    vocab = len(tokenizer)
    if vocab > t["word_embeddings"].shape[0]:
        raise MegatronFormatError(f"mismatched shapes: the tokenizer has {vocab} tokens but "
                                  f"the checkpoint only {t['word_embeddings'].shape[0]} rows")
    eps = float(getattr(merged.args, "layernorm_epsilon", 1e-5) or 1e-5)
    ffn = t["layers.0.mlp.dense_h_to_4h.weight"].shape[0]
    eos = tokenizer.convert_tokens_to_ids(GPT2_EOS)
    config = GPT2Config(
        vocab_size=vocab, n_positions=hyper["max_position_embeddings"], n_embd=h,
        n_layer=hyper["num_layers"], n_head=hyper["num_attention_heads"], n_inner=ffn,
        # Megatron's fused bias-GeLU is the tanh approximation, i.e. gelu_new.
        activation_function="gelu_new", layer_norm_epsilon=eps, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, architectures=["GPT2LMHeadModel"])
    dtype = t["layers.0.attention.query_key_value.weight"].dtype

    sd = {"transformer.wte.weight": t["word_embeddings"][:vocab],
          "transformer.wpe.weight": t["position_embeddings"],
          "transformer.ln_f.weight": t["final_layernorm.weight"],
          "transformer.ln_f.bias": t["final_layernorm.bias"]}
    for i in range(hyper["num_layers"]):
        for hf_name, megatron_name, is_linear in _GPT2_LAYER_NAMES:
            key = f"layers.{i}.{megatron_name}"
            if key not in t:
                raise MegatronFormatError(f"missing tensor: {key}")
            sd[f"transformer.h.{i}.{hf_name}"] = t[key].T if is_linear else t[key]
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    expected = model.state_dict()
    for key, value in sd.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise MegatronFormatError(f"mismatched shapes: {key} is {list(value.shape)}, the "
                                      f"config needs {list(expected[key].shape)}")
    model.load_state_dict({k: v.contiguous().to(dtype) for k, v in sd.items()}, strict=False,
                          assign=True)
    model.tie_weights()
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if missing:
        raise MegatronFormatError(f"missing tensor(s) for {', '.join(missing[:5])}")
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    return model.eval()



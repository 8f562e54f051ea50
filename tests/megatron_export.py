"""Write a Hugging Face GPT-2 out in Megatron-LM's checkpoint layout (tests only).

Written from Megatron-LM's documented layout, not by inverting the loader:
per tensor rank, every weight is sliced the way Megatron's parallel layers
own it, and the fused QKV rows are laid out per checkpoint_version:
  version 0:  [3, heads, head_dim]   (all q rows, then all k, then all v)
  version 1:  [heads, head_dim, 3]
  version 2+: [heads, 3, head_dim]
with `heads` being the heads this tensor rank owns.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
from pathlib import Path

import torch


def _fake_megatron_enum():
    """An enum pickled under Megatron's module name, as real checkpoints hold."""
    module_name = "megatron.model.enums"
    if module_name not in sys.modules:
        try:  # megatron-core's real package when installed (other tests unpickle from it)
            import megatron  # noqa: F401
        except ImportError:
            pass
        for name in ("megatron", "megatron.model", module_name):
            sys.modules.setdefault(name, types.ModuleType(name))

        class AttnMaskType(enum.Enum):
            padding = 1
            causal = 2

        AttnMaskType.__module__ = module_name
        AttnMaskType.__qualname__ = "AttnMaskType"
        sys.modules[module_name].AttnMaskType = AttnMaskType
    return sys.modules[module_name].AttnMaskType.causal


def _qkv_rows_for_rank(w: torch.Tensor, heads: int, tp: int, rank: int,
                       version: float) -> torch.Tensor:
    """w: HF's fused QKV as [3*hidden, ...] (q, k, v stacked). Returns rank's rows."""
    hidden = w.shape[0] // 3
    head_dim = hidden // heads
    per_rank = heads // tp
    q, k, v = (x.reshape(heads, head_dim, *w.shape[1:]) for x in w.split(hidden, dim=0))
    mine = [x[rank * per_rank:(rank + 1) * per_rank] for x in (q, k, v)]
    if version == 0:
        out = torch.cat(mine, dim=0)  # [3*np, hn, ...]
    elif version < 2:
        out = torch.stack(mine, dim=2)  # [np, hn, 3, ...]
    else:
        out = torch.stack(mine, dim=1)  # [np, 3, hn, ...]
    return out.reshape(-1, *w.shape[1:]).clone()


def export(model, root: Path, *, tp: int = 1, pp: int = 1, version: float = 3.0,
           new_names: bool = True, padded_vocab: int | None = None, with_args: bool = True,
           iteration: int | None = None, file_name: str = "model_optim_rng.pt") -> Path:
    cfg = model.config
    heads, hidden, n_layers = cfg.n_head, cfg.n_embd, cfg.n_layer
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    vocab = sd["transformer.wte.weight"].shape[0]
    padded_vocab = padded_vocab or vocab
    torch.manual_seed(1)
    wte = sd["transformer.wte.weight"]
    padding = torch.randn(padded_vocab - vocab, hidden).to(wte.dtype) * 0.02
    wte = torch.cat([wte, padding])
    layers_per_stage = n_layers // pp
    body_name = "encoder" if new_names else "transformer"
    attn = "self_attention" if new_names else "attention"

    folder_name = "release" if iteration is None else f"iter_{iteration:07d}"
    folder = root / folder_name
    for stage in range(pp):
        for rank in range(tp):
            def col(t, rank=rank):  # column-parallel: this rank's slice of the output rows
                return t.chunk(tp, dim=0)[rank].clone()

            def row(t, rank=rank):  # row-parallel: this rank's slice of the input columns
                return t.chunk(tp, dim=1)[rank].clone()

            body = {}
            for local in range(layers_per_stage):
                i = stage * layers_per_stage + local
                h, m = f"transformer.h.{i}.", f"layers.{local}."
                body[m + "input_layernorm.weight"] = sd[h + "ln_1.weight"]
                body[m + "input_layernorm.bias"] = sd[h + "ln_1.bias"]
                body[m + f"{attn}.query_key_value.weight"] = _qkv_rows_for_rank(
                    sd[h + "attn.c_attn.weight"].T, heads, tp, rank, version)
                body[m + f"{attn}.query_key_value.bias"] = _qkv_rows_for_rank(
                    sd[h + "attn.c_attn.bias"], heads, tp, rank, version)
                body[m + f"{attn}.dense.weight"] = row(sd[h + "attn.c_proj.weight"].T)
                body[m + f"{attn}.dense.bias"] = sd[h + "attn.c_proj.bias"]
                body[m + "post_attention_layernorm.weight"] = sd[h + "ln_2.weight"]
                body[m + "post_attention_layernorm.bias"] = sd[h + "ln_2.bias"]
                body[m + "mlp.dense_h_to_4h.weight"] = col(sd[h + "mlp.c_fc.weight"].T)
                body[m + "mlp.dense_h_to_4h.bias"] = col(sd[h + "mlp.c_fc.bias"])
                body[m + "mlp.dense_4h_to_h.weight"] = row(sd[h + "mlp.c_proj.weight"].T)
                body[m + "mlp.dense_4h_to_h.bias"] = sd[h + "mlp.c_proj.bias"]
            lm = {body_name: body}
            model_dict = {"language_model": lm}
            if stage == 0:
                lm["embedding"] = {
                    "word_embeddings": {"weight": col(wte)},
                    "position_embeddings": {"weight": sd["transformer.wpe.weight"]},
                }
            if stage == pp - 1:
                body["final_layernorm.weight"] = sd["transformer.ln_f.weight"]
                body["final_layernorm.bias"] = sd["transformer.ln_f.bias"]
                if pp > 1:  # the last stage's copy of the tied output embedding
                    model_dict["word_embeddings_for_head"] = {"weight": col(wte)}
            shard = {"model": model_dict, "checkpoint_version": version,
                     "iteration": iteration or 0}
            if with_args:
                shard["args"] = argparse.Namespace(
                    num_layers=n_layers, hidden_size=hidden, num_attention_heads=heads,
                    max_position_embeddings=cfg.n_positions, padded_vocab_size=padded_vocab,
                    tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                    layernorm_epsilon=cfg.layer_norm_epsilon, params_dtype=torch.float32,
                    attn_mask_type=_fake_megatron_enum(), tokenizer_type="GPT2BPETokenizer")
            name = f"mp_rank_{rank:02d}" + (f"_{stage:03d}" if pp > 1 else "")
            (folder / name).mkdir(parents=True, exist_ok=True)
            torch.save(shard, folder / name / file_name)
    (root / "latest_checkpointed_iteration.txt").write_text(
        "release" if iteration is None else str(iteration))
    return root

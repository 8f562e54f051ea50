"""Tiny random GPT-2 models with a BPE tokenizer trained on the fly.

Fast enough to build in a test session (well under a second) and real
enough to exercise tokenization, caching, sampling and streaming.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The red chair stands to the left of the glass table.",
    "A lamp is far to the right; the kitchen is small and bright.",
    "User: what is ahead of me? Assistant: a table, near you.",
    "日本語のテキストと絵文字 🙂🚀 も少し含める。",
    "Objects in view, nearest first: chair, table, lamp, window, door.",
] * 20


def train_tokenizer(vocab_size: int = 400, metaspace: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style), or with `metaspace` a SentencePiece-style BPE
    whose words start with "▁" (Llama 2, Mistral, T5 tokenizers)."""
    if metaspace:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + ["<unk>"])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_tiny_model(out_dir: Path, *, chat_template: bool = True, eos_bias: float = -100.0,
                     n_positions: int = 256, seed: int = 0, metaspace: bool = False,
                     whole_characters: bool = False) -> Path:
    """Save a 2-layer GPT-2 + tokenizer into out_dir and return it.

    `eos_bias` steers the EOS logit: very negative (default) makes EOS
    unreachable so sequence lengths are exact; very positive makes every
    sequence end at once with EOS. `metaspace` gives it a SentencePiece-style tokenizer.
    `whole_characters` makes tokens that decode to part of a character unreachable too,
    so every generated token is a chunk of its own (timing tests count chunks).
    """
    tokenizer = train_tokenizer(metaspace=metaspace)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=64,
                        n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos,
                        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        # The final layer norm's bias puts a constant 10 in hidden dim 0; the
        # EOS row reads only that dim, so its logit is about 10 * eos_bias / 10.
        model.transformer.ln_f.bias[0] = 10.0
        model.lm_head.weight[eos].zero_()
        model.lm_head.weight[eos, 0] = eos_bias / 10.0
        if whole_characters:
            for token in range(len(tokenizer)):
                if token != eos and "\ufffd" in tokenizer.decode([token]):
                    model.lm_head.weight[token].zero_()
                    model.lm_head.weight[token, 0] = -10.0
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama (RoPE, grouped-query attention) with the same tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos,
                         tie_word_embeddings=False, mlp_bias=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # A large constant in residual dim 0 (last MLP bias), read only by the
        # EOS row: EOS stays far below every other token, outputs run to length.
        model.model.layers[-1].mlp.down_proj.bias[0] = 100.0
        model.lm_head.weight[eos].fill_(0.0)
        model.lm_head.weight[eos, 0] = -10.0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def slow_down(model, seconds: float):
    """Make every forward pass take at least `seconds` (for timing tests).

    The delay sits in the input embedding, which every pass over token ids
    runs once, whether the engine uses its fused decoder or the model's own
    forward. Returns a function that takes the delay out again.
    """
    head = model.get_input_embeddings()
    original = head.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    head.forward = forward

    def undo():
        head.forward = original

    return undo

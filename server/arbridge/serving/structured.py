"""Grammars for a request's reply: its response_format (JSON schema, regex) or its
actions (serving/actions.py), compiled to llguidance matchers for the engine.

Runs on the prompt thread: the tokenizer's token table is built once (about 0.4 s
for a 49k vocabulary, at attach), a grammar per request in a few milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import replace

import llguidance
import llguidance.hf

from arbridge.engine.grammar import TokenGrammar
from arbridge.engine.sampling import SamplingConfig
from arbridge.serving.actions import ActionSet
from arbridge.serving.validation import InvalidField

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int):
        self._tokenizer = _ll_tokenizer(tokenizer, vocab_size)

    @staticmethod
    def _grammar(kind: str, source: str) -> str:
        if kind == "json_schema":
            # One line, ", " and ": " between items: a small model given free whitespace
            # spends tokens on blank lines (a schema's own "x-guidance" can say otherwise).
            return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_STYLE)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(source)
        return llguidance.LLMatcher.grammar_from_lark(source)

    def apply(self, cfg: SamplingConfig, actions: ActionSet | None = None,
              field: str = "sampling") -> SamplingConfig:
        """`cfg` with a matcher per sequence for its response_format or actions; a
        response_format the library cannot compile is the request's error (`field`)."""
        if actions is not None:
            grammar = self._grammar("lark", actions.lark())
        elif cfg.response_format is not None:
            grammar = self._grammar(*cfg.response_format)
        else:
            return cfg
        first = llguidance.LLMatcher(self._tokenizer, grammar)
        if first.is_error():
            if actions is not None:  # built from checked definitions: a bug
                raise RuntimeError(f"action grammar failed: {first.get_error()}")
            kind = cfg.response_format[0]
            # One line: the library's message draws the error under the source.
            raise InvalidField(f"{field}.response_format.{kind}",
                               " ".join(first.get_error().split())[:400])
        matchers = [first] + [first.deep_copy() for _ in range(cfg.num_return_sequences - 1)]
        # The grammar shapes the reply: caption rules (sentence and naming limits) would
        # fight it; the scene's banned nouns stay (engine/sampling.py lets the grammar
        # override them where it needs a banned token).
        return replace(cfg, grammar=TokenGrammar(matchers), object_rules=None,
                       max_sentences=0 if cfg.response_format else cfg.max_sentences)


class _TokenTable:
    """A tokenizer as llguidance's generic wrapper reads it: each token's bytes."""

    def __init__(self, tokenizer, vocab_size: int):
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
        self.tokens = [_piece_bytes(p) for p in pieces]
        self.tokens += [b""] * (vocab_size - len(self.tokens))
        self.special_token_ids = list(tokenizer.all_special_ids)

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)


def _piece_bytes(piece: str | None) -> bytes:
    if piece is None:
        return b""
    byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # SentencePiece byte fallback
    if byte:
        return bytes([int(byte.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _ll_tokenizer(tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's own reading of a fast tokenizer, which knows byte-level BPE; for
    what it cannot read (SentencePiece's Metaspace, as Megatron-trained models have),
    the token table (pieces with "\u2581" as a space, <0xNN> bytes)."""
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    except ValueError:
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(
            _TokenTable(tokenizer, vocab_size)), n_vocab=vocab_size)

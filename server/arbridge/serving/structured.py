"""Grammars for a request's reply: its response_format (JSON schema, regex) or its
actions (serving/actions.py), compiled to llguidance matchers for the engine.

Runs on the prompt thread: the tokenizer's token table is built once (about 0.4 s
for a 49k vocabulary, at attach), a grammar in a few milliseconds, the last 64 kept
(each request gets copies of a pristine matcher).
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

COMPILED_GRAMMARS = 64
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int):
        """`vocab_size`: the width of the model's logits (the masks' width)."""
        self._tokenizer = _ll_tokenizer(tokenizer, vocab_size)
        # A session's action grammar is the same turn after turn while its scene is, and
        # apps send the same schemas: compiled once, copied per request (prompt thread).
        self._compiled: dict[tuple[str, str], llguidance.LLMatcher] = {}

    @staticmethod
    def _grammar(kind: str, source: str) -> str:
        if kind == "json_schema":
            # One line, ", " and ": " between items: a small model given free whitespace
            # spends tokens on blank lines (a schema's own "x-guidance" can say otherwise).
            return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_STYLE)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(source)
        return llguidance.LLMatcher.grammar_from_lark(source)

    def _compile(self, key: tuple[str, str], field: str) -> llguidance.LLMatcher:
        kind, source = key
        try:
            matcher = llguidance.LLMatcher(self._tokenizer, self._grammar(kind, source))
            problem = matcher.get_error() if matcher.is_error() else ""
        except (ValueError, RuntimeError) as exc:  # e.g. a schema it cannot apply options to
            problem = str(exc)
        if problem:
            if kind == "lark":  # built from checked definitions: a bug
                raise RuntimeError(f"action grammar failed: {problem}")
            # One line: the library's message draws the error under the source.
            raise InvalidField(f"{field}.response_format.{kind}", " ".join(problem.split())[:400])
        return matcher

    def apply(self, cfg: SamplingConfig, actions: ActionSet | None = None,
              field: str = "sampling") -> SamplingConfig:
        """`cfg` with a matcher per sequence for its response_format or actions; a
        response_format the library cannot compile is the request's error (`field`)."""
        if actions is not None:
            key = ("lark", actions.lark())
        elif cfg.response_format is not None:
            key = cfg.response_format
        else:
            return cfg
        pristine = self._compiled.pop(key, None)
        if pristine is None:
            pristine = self._compile(key, field)
        self._compiled[key] = pristine  # the most recent last
        while len(self._compiled) > COMPILED_GRAMMARS:
            del self._compiled[next(iter(self._compiled))]
        matchers = [pristine.deep_copy() for _ in range(cfg.num_return_sequences)]
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
    except ValueError as exc:
        if "decoder" not in str(exc):  # e.g. logits narrower than the vocabulary
            raise
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(
            _TokenTable(tokenizer, vocab_size)), n_vocab=vocab_size)

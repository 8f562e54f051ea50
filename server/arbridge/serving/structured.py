"""Grammars for a request's reply: its response_format (JSON schema, regex) or its
actions (serving/actions.py), compiled to llguidance matchers for the engine.

Runs on the prompt thread: the tokenizer's token table is built once (about 0.4 s
for a 49k vocabulary, at attach), a grammar in a few milliseconds, recent ones kept
within a memory budget (each request gets copies of a pristine matcher).

llguidance builds a grammar's lexer lazily, as tokens are generated: a 15-character
regex like `(a{1000}){1000}` compiles in a millisecond, then takes 150 MB and fails
at its first token. So a grammar is judged before its call is accepted: its regexes'
expanded size is checked (counted repeats multiply), the lexer's work for a first
token is capped (`initial_lexer_fuel`), and a copy is run for two tokens; what
fails any of these is the request's INVALID_ARGUMENT, in one line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
import warnings
from collections import OrderedDict
from dataclasses import replace

import llguidance
import llguidance.hf
import llguidance.torch

from arbridge.engine.grammar import TokenGrammar
from arbridge.generation import SamplingConfig
from arbridge.serving.actions import ActionSet
from arbridge.serving.validation import InvalidField

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Positions a regex may expand to with its counted repeats written out: `a{10000}` and
# `(a{100}){100}` pass (their lexers take a few MB), `(a{1000}){1000}` does not.
MAX_REGEX_POSITIONS = 100_000
# The lexer's work budget for a grammar's first token: ordinary schemas and regexes
# use a small part of it; a lexer that would take 100+ MB stops early with an error.
LIMITS = {"initial_lexer_fuel": 100_000, "verbose_errors": False}
# What a compiled grammar is charged at least, whatever the heap measure says.
MIN_GRAMMAR_BYTES = 256 << 10


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, budget_bytes: int = 64 << 20):
        """`vocab_size`: the width of the model's logits (the masks' width);
        `budget_bytes`: what the compiled grammars kept for reuse may take."""
        self._tokenizer = _ll_tokenizer(tokenizer, vocab_size)
        self._mask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        self.budget_bytes = budget_bytes
        self.bytes = 0
        # A session's action grammar is the same turn after turn while its scene is, and
        # apps send the same schemas: compiled once, copied per request (prompt thread).
        # key -> (pristine matcher, the bytes it is charged), least recent first.
        self._compiled: OrderedDict[tuple[str, str], tuple[llguidance.LLMatcher, int]] = \
            OrderedDict()

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
            if kind != "lark":
                _check_regex_sizes(kind, source)
            matcher = llguidance.LLMatcher(self._tokenizer, self._grammar(kind, source),
                                           limits=llguidance.LLParserLimits(**LIMITS))
            problem = matcher.get_error() if matcher.is_error() else self._trial(matcher)
        except (ValueError, RuntimeError) as exc:  # e.g. a schema it cannot apply options to
            problem = str(exc)
        if problem:
            if kind == "lark":  # built from checked definitions: a bug
                raise RuntimeError(f"action grammar failed: {problem}")
            raise InvalidField(f"{field}.response_format.{kind}", one_line(problem))
        return matcher

    def _trial(self, pristine: llguidance.LLMatcher) -> str:
        """What goes wrong when a copy generates its first two tokens ('' if nothing):
        the lexer is built then, and the errors it meets show only at a consume."""
        probe = pristine.deep_copy()
        llguidance.torch.fill_next_token_bitmask(probe, self._mask, 0)
        if probe.is_error():  # e.g. no token can start the text at all
            return probe.get_error()
        for token in _allowed(self._mask[0].tolist(), set(self._tokenizer.eos_tokens)):
            probe = pristine.deep_copy()
            if probe.consume_token(token):
                llguidance.torch.fill_next_token_bitmask(probe, self._mask, 0)
                return probe.get_error() if probe.is_error() else ""
            problem = probe.get_error()
            if not problem.startswith("Parser Error"):  # the lexer's limits, not the token
                return problem
        # Only some spellings of a first token were refused (a tokenizer llguidance reads
        # through its generic wrapper): decoding picks among the allowed ones as before.
        return ""

    def _pristine(self, key: tuple[str, str], field: str) -> llguidance.LLMatcher:
        """The cached matcher for `key`, compiled and charged to the budget if new."""
        cached = self._compiled.pop(key, None)
        if cached is not None and not self._trial(cached[0]):
            self._compiled[key] = cached  # the most recent last
            return cached[0]
        if cached is not None:  # a copy failed in its lexer: the shared lexer is spoilt
            self.bytes -= cached[1]
        before = _heap_bytes()
        pristine = self._compile(key, field)
        # The heap is the process's: another thread's tensors can move it meanwhile,
        # so one reading is held within [MIN_GRAMMAR_BYTES, a quarter of the budget].
        size = min(max(MIN_GRAMMAR_BYTES, _heap_bytes() - before),
                   max(MIN_GRAMMAR_BYTES, self.budget_bytes // 4))
        self._compiled[key] = (pristine, size)
        self.bytes += size
        while self.bytes > self.budget_bytes and len(self._compiled) > 1:
            _, (_, dropped) = self._compiled.popitem(last=False)
            self.bytes -= dropped
        return pristine

    def __len__(self) -> int:
        return len(self._compiled)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._compiled

    def apply(self, cfg: SamplingConfig, fmt: tuple[str, str] | None,
              actions: ActionSet | None = None, field: str = "sampling") -> SamplingConfig:
        """`cfg` with a matcher per sequence for the reply's actions or its response
        format `fmt` (kind, source); a format the library cannot compile, or whose
        lexer would explode, is the request's error (`field`)."""
        if actions is not None:
            key = ("lark", actions.lark())
        elif fmt is not None:
            key = fmt
        else:
            return cfg
        pristine = self._pristine(key, field)
        matchers = [pristine.deep_copy() for _ in range(cfg.num_return_sequences)]
        # The grammar shapes the reply: caption rules would fight it; the scene's
        # banned nouns stay (engine/sampling.py lets the grammar override them where it
        # needs a banned token).
        return replace(cfg, grammar=TokenGrammar(matchers), caption_rules=None)


# llguidance's bare stop reasons, said for a client.
_REASONS = {"NoExtensionBias": "no token of this model's vocabulary can begin a reply "
                               "that matches (NoExtensionBias)"}


def one_line(problem: str) -> str:
    """llguidance's message in one line (it may draw the error under the source)."""
    text = " ".join(problem.replace("<non-verbose/>", "").split())
    return _REASONS.get(text, text)[:400]


def _allowed(words: list[int], eos: set[int], most: int = 8) -> list[int]:
    """The first `most` tokens a bitmask allows, end-of-sequence tokens aside."""
    found = []
    for w, bits in enumerate(words):
        bits &= 0xFFFFFFFF
        while bits and len(found) < most:
            low = bits & -bits
            token = w * 32 + low.bit_length() - 1
            if token not in eos:
                found.append(token)
            bits ^= low
    return found


def _check_regex_sizes(kind: str, source: str) -> None:
    """Refuse a regex (or a schema's `pattern`) whose counted repeats expand too far."""
    patterns = [source] if kind == "regex" else list(_schema_patterns(json.loads(source)))
    for pattern in patterns:
        size = regex_positions(pattern)
        if size is not None and size > MAX_REGEX_POSITIONS:
            raise ValueError(f"regex too large: {pattern[:60]!r} expands to about {size:,} "
                             f"positions (at most {MAX_REGEX_POSITIONS:,})")


def regex_positions(pattern: str) -> int | None:
    """How many positions `pattern` has with each counted repeat written out (nested
    ones multiply), by Python's regex parser; None where its syntax is not Python's
    (then llguidance's own checks still apply)."""
    from re import _constants as c
    from re import _parser

    # llguidance's (Rust) syntax where Python's differs: classes, names, end anchor.
    pattern = re.sub(r"\\[pP](\{[^}]*\}|[A-Za-z])", ".", pattern)
    pattern = pattern.replace("(?<", "(?P<").replace("(?P<=", "(?<=").replace("(?P<!", "(?<!")
    pattern = pattern.replace("\\z", "\\Z")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = _parser.parse(pattern)
    except Exception:
        return None
    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)}

    def size(seq) -> int:
        total = 0
        for op, av in seq:
            if op in repeats:
                low, high, item = av
                total += size(item) * max(high if high != c.MAXREPEAT else low, 1)
            elif op is c.SUBPATTERN:
                total += size(av[-1])
            elif op is c.BRANCH:
                total += sum(size(branch) for branch in av[1])
            elif op in (c.ASSERT, c.ASSERT_NOT):
                total += size(av[1])
            elif op is getattr(c, "ATOMIC_GROUP", None):
                total += size(av)
            else:
                total += 1
        return total

    return size(tree)


def _schema_patterns(node):
    """Every regex of a JSON schema: `pattern` values and `patternProperties` keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from value
            yield from _schema_patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_patterns(value)


def _heap_bytes() -> int:
    """The C heap in use (glibc's mallinfo2), where llguidance's lexers live; 0 where
    it cannot be read (then each grammar is charged MIN_GRAMMAR_BYTES)."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _load_mallinfo2():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()


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

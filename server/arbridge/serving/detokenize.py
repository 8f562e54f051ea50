"""Token ids -> text deltas that are safe to show.

Two layers per sequence:
* `IncrementalDetokenizer` turns one token at a time into new text and never
  emits half a UTF-8 character (a byte-level BPE can split an emoji or a CJK
  character over several tokens); it uses tokenizers' DecodeStream.
* `StopStringFilter` holds back text that could be the start of a stop string
  and reports when one matched, so clients never see a stop string.
"""

from __future__ import annotations

import re

from tokenizers.decoders import DecodeStream

# Prompt tokens the decoder is primed with (vLLM primes with 5): enough context
# for a SentencePiece/Metaspace decoder to keep the first new token's leading
# space, and for a byte-level one to finish a character split at the boundary.
PRIME_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids=(), skip_special_tokens: bool = True):
        # The Rust tokenizer behind a transformers "fast" tokenizer.
        self._backend = tokenizer.backend_tokenizer
        self._skip = skip_special_tokens
        # Primed with the prompt's tail: a cold stream decodes the first token as
        # the start of a text, and Metaspace drops its space ("▁Paris" -> "Paris").
        self._prefix = [int(i) for i in list(prompt_ids)[-PRIME_TOKENS:]]
        self._stream = DecodeStream(ids=self._prefix, skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = []
        self._emitted: list[str] = []

    def step(self, token_id: int) -> str:
        """New text completed by this token ('' while a character is partial)."""
        self._ids.append(int(token_id))
        text = self._stream.step(self._backend, int(token_id)) or ""
        self._emitted.append(text)
        return text

    def flush(self) -> str:
        """At the end of a sequence: bytes of an unfinished character, as U+FFFD.

        Keeps the streamed text equal to decoding all ids at once (after the prompt).
        """
        prefix = self._backend.decode(self._prefix, skip_special_tokens=self._skip)
        full = self._backend.decode(self._prefix + self._ids, skip_special_tokens=self._skip)
        if full.startswith(prefix):
            full = full[len(prefix):]
        emitted = "".join(self._emitted)
        return full[len(emitted):] if full.startswith(emitted) else ""


class StopStringFilter:
    def __init__(self, stop: tuple[str, ...] | list[str]):
        self._stop = tuple(s for s in stop if s)
        self._pending = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add new text; return the part that can be shown now.

        After a match, `matched` is set and the text before the stop string is
        returned; everything after it is dropped.
        """
        if self.matched is not None:
            return ""
        if not self._stop:
            return text
        self._pending += text
        first = None
        for s in self._stop:
            at = self._pending.find(s)
            if at != -1 and (first is None or at < first[0]):
                first = (at, s)
        if first is not None:
            out = self._pending[: first[0]]
            self.matched = first[1]
            self._pending = ""
            return out
        hold = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of a sequence that did not stop."""
        out, self._pending = self._pending, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:k]):
                    best = k
                    break
        return best


class SentenceCounter:
    """Counts finished sentences in streamed text: a '.', '!' or '?' after anything but
    a digit ends one ("1.3 m" does not; "6.1 m." does)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._last = ""

    def cut(self, text: str) -> tuple[str, bool]:
        """(the part of `text` up to and including the limit's sentence end, reached?)"""
        if not self.limit:
            return text, False
        for i, ch in enumerate(text):
            before = text[i - 1] if i else self._last
            if ch in ".!?" and not before.isdigit() and before not in ".!?":
                self.count += 1
                if self.count >= self.limit:
                    return text[:i + 1], True
        if text:
            self._last = text[-1]
        return text, False


class CaptionEnd:
    """Ends a caption at the first clause break once every scene object is named:
    the break (",", ";", a new line) becomes the caption's full stop. A small model
    that has listed everything otherwise goes on re-listing it, with the places
    getting worse each time."""

    _BREAK = re.compile(r"[,;\n]")

    def __init__(self, names: list[set[str]]):
        self._names = [sorted(n, key=len, reverse=True) for n in names]  # per object
        self._text = ""

    def _all_named(self, text: str) -> int:
        """Where the text has named every object (the end of the last first mention),
        or -1."""
        end = 0
        for forms in self._names:
            hits = [m.end() for f in forms
                    for m in re.finditer(rf"\b{re.escape(f)}\b", text, re.IGNORECASE)]
            if not hits:
                return -1
            end = max(end, min(hits))
        return end

    def cut(self, text: str) -> tuple[str, bool]:
        """(what to show of `text`, the caption ended?)"""
        before = len(self._text)
        self._text += text
        named_at = self._all_named(self._text)
        if named_at < 0:
            return text, False
        brk = self._BREAK.search(self._text, max(named_at, before))
        if brk is None:
            return text, False
        return self._text[before:brk.start()].rstrip() + ".", True

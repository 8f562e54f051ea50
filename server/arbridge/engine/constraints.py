"""Tokens a sequence may not produce next: repeated n-grams and banned words.

Both are per-request rules the scheduler applies to each row's logits before
sampling, inside the batched step:

* `no_repeat_ngram` n: a token that would complete an n-gram already in the
  reply is masked (transformers' NoRepeatNGram rule, over the generated tokens);
* `BannedWords`: token sequences the reply must not contain (scene-constrained
  decoding: object nouns the scene does not hold). A one-token word is penalised
  always; a longer one at its last token, when the tokens before it were just
  generated (transformers' NoBadWords rule), so words that merely share a first
  token stay free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class BannedWords:
    """Token sequences to keep out of a reply, and how hard: `penalty` is subtracted
    from their logits (float("inf") masks them)."""

    # prefix (the tokens before the last) -> last tokens that may not follow it
    by_prefix: dict[tuple[int, ...], frozenset[int]] = field(default_factory=dict)
    penalty: float = float("inf")
    longest_prefix: int = 0

    @classmethod
    def of(cls, sequences: Iterable[tuple[int, ...]], penalty: float) -> BannedWords:
        table: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            if seq:
                table.setdefault(tuple(seq[:-1]), set()).add(seq[-1])
        return cls({k: frozenset(v) for k, v in table.items()}, penalty,
                   max((len(k) for k in table), default=0))

    def next_banned(self, generated: list[int]) -> set[int]:
        out: set[int] = set(self.by_prefix.get((), ()))
        for k in range(1, min(self.longest_prefix, len(generated)) + 1):
            out |= self.by_prefix.get(tuple(generated[-k:]), frozenset())
        return out


def repeated_ngram_tokens(generated: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram `generated` already holds."""
    if n <= 1 or len(generated) < n - 1:
        return set()
    prefix = tuple(generated[len(generated) - (n - 1):])
    return {generated[i + n - 1] for i in range(len(generated) - n + 1)
            if tuple(generated[i:i + n - 1]) == prefix}

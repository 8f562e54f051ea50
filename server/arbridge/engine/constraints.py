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

    @property
    def always(self) -> frozenset[int]:
        """The one-token words: banned at every step, whatever came before."""
        return self.by_prefix.get((), frozenset())

    def next_banned(self, generated: list[int], with_always: bool = True) -> set[int]:
        out: set[int] = set(self.always) if with_always else set()
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


@dataclass(frozen=True, eq=False)
class ObjectRules:
    """What a reply may say right after naming a scene object, and that it names them all.

    `names` maps each token sequence that names an object to the object's index.
    After the most recent mention (within `window` tokens), the tokens in
    `wrong_after[object]` (the directions and distances that are false for it) are
    masked; while some object is still unnamed, the `until_all` tokens (sentence
    ends, end of sequence) are masked, so a caption does not stop before it has
    named everything; with `once`, an object's names are masked after its first
    mention, which steers the reply to the objects not yet named instead of back
    to the first ones; the `never` tokens are masked throughout.
    """

    names: dict[tuple[int, ...], int]
    wrong_after: tuple[frozenset[int], ...]
    until_all: frozenset[int] = frozenset()
    never: frozenset[int] = frozenset()  # tokens the reply may not hold at all
    window: int = 8
    once: bool = True  # an object named once may not be named again (no re-listing)
    # The reply may end this many tokens after it last named a new object, named or
    # not: a model that cannot find the word for an object must not be held forever.
    patience: int = 12
    _named_tables: dict = field(default_factory=dict, repr=False)  # objects -> BannedWords

    @property
    def longest(self) -> int:
        return max((len(k) for k in self.names), default=0)

    def _mentions(self, generated: list[int]) -> list[tuple[int, int]]:
        """(end position, object) for every naming sequence in `generated`."""
        found, longest = [], self.longest
        for end in range(len(generated)):
            for k in range(1, min(longest, end + 1) + 1):
                obj = self.names.get(tuple(generated[end - k + 1:end + 1]))
                if obj is not None:
                    found.append((end, obj))
        return found

    def next_banned(self, generated: list[int]) -> set[int]:
        mentions = self._mentions(generated)
        out: set[int] = set(self.never)
        if mentions:
            end, obj = max(mentions)
            if len(generated) - 1 - end < self.window:
                out |= self.wrong_after[obj]
        named = {obj for _, obj in mentions}
        first_ends = [min(end for end, o in mentions if o == obj) for obj in named]
        last_new = max(first_ends, default=-1)
        if len(named) < len(self.wrong_after) and len(generated) - 1 - last_new < self.patience:
            out |= self.until_all
        if self.once and named:
            out |= self._names_of(named).next_banned(generated)
        return out

    def _names_of(self, objects: set[int]) -> BannedWords:
        key = frozenset(objects)
        table = self._named_tables.get(key)
        if table is None:  # built once per set of named objects, not once per step
            table = BannedWords.of([seq for seq, obj in self.names.items() if obj in key],
                                   float("inf"))
            self._named_tables[key] = table
        return table

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


@dataclass(frozen=True)
class RuleStep:
    """What a request's CaptionRules say about one row's next token."""

    banned: set[int]  # few tokens, looked up for this step
    static: list[frozenset[int]]  # large fixed sets (made into tensors once)
    allowed: frozenset[int] | None = None  # when set, only these may follow


@dataclass(frozen=True, eq=False)
class CaptionRules:
    """What a reply may say right after naming a scene object, and that it names them all.

    `names` maps each token sequence that names an object to the object's index.
    After the most recent mention (within `window` tokens), the tokens in
    `wrong_after[object]` (the directions and distances that are false for it) are
    masked; while some object is still unnamed, the `until_all` tokens (sentence
    ends, end of sequence) are masked, so a caption does not stop before it has
    named everything; with `once`, an object's names are masked after its first
    mention, which steers the reply to the objects not yet named instead of back
    to the first ones; the `never` tokens are masked throughout, and with
    `no_stutter` no token follows itself ("far far away").

    `phrases[object]` are the object's noun phrases as the scene text words them
    (" red wood nightstand", " nightstand"). Right after an indefinite article
    (`articles`; `vowel_articles` is "an"), the reply must go on with a phrase of
    an object it has not named yet, in the article's form ("an" before a vowel)
    where one fits: a small model otherwise half-writes a long name ("a full
    dressed room" for "a full dresser") or invents attributes, and never gets to
    the objects late in the list. The model still picks which object, and when.
    Each `once_per_mention` group may be said once after a mention.

    After `place_lead` (" to the") only a `place_words` token (a side) may follow, of
    those not masked already, and once a direction was said for the latest mention the
    lead may not start again: without it a small model goes on "to the far away", "to the
    next", "to the side, to the corner, to the top", where a caption turns into a loop.
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
    phrases: tuple[tuple[tuple[tuple[int, ...], bool], ...], ...] = ()  # (ids, vowel)
    articles: frozenset[int] = frozenset()
    vowel_articles: frozenset[int] = frozenset()
    # Word groups (directions, distances) said at most once per mention: "far away,
    # far away to the left to the right" is where a caption stalls instead of going on.
    once_per_mention: tuple[frozenset[int], ...] = ()
    no_stutter: bool = True  # no token right after itself
    place_lead: tuple[int, ...] = ()
    place_words: frozenset[int] = frozenset()
    # No `repeat_words`-gram of the reply's words said twice, punctuation aside: a list
    # repeating "is to the right, and a" is a loop to a reader.
    repeat_words: int = 0
    punctuation: frozenset[int] = frozenset()
    _named_tables: dict = field(default_factory=dict, repr=False)  # objects -> BannedWords

    @property
    def longest(self) -> int:
        return max((len(k) for k in self.names), default=0)

    @property
    def longest_phrase(self) -> int:
        return max((len(ids) for group in self.phrases for ids, _ in group), default=0)

    def _mentions(self, generated: list[int]) -> list[tuple[int, int]]:
        """(end position, object) for every naming sequence in `generated`."""
        found, longest = [], self.longest
        for end in range(len(generated)):
            for k in range(1, min(longest, end + 1) + 1):
                obj = self.names.get(tuple(generated[end - k + 1:end + 1]))
                if obj is not None:
                    found.append((end, obj))
        return found

    def step(self, generated: list[int]) -> RuleStep:
        mentions = self._mentions(generated)
        banned: set[int] = set()
        static = [self.never] if self.never else []
        if generated and self.no_stutter:
            banned.add(generated[-1])
        if mentions:
            end, obj = max(mentions)
            if len(generated) - 1 - end < self.window:
                banned |= self.wrong_after[obj]
            since = set(generated[end + 1:])
            for group in self.once_per_mention:
                if not since.isdisjoint(group):
                    static.append(group)
                    if self.place_lead and not group.isdisjoint(self.place_words):
                        banned.add(self.place_lead[0])  # its side is said: no "to the"
        named = {obj for _, obj in mentions}
        first_ends = [min(end for end, o in mentions if o == obj) for obj in named]
        last_new = max(first_ends, default=-1)
        if len(named) < len(self.wrong_after) and len(generated) - 1 - last_new < self.patience:
            static.append(self.until_all)
        if self.once and named:
            banned |= self._names_of(named).next_banned(generated)
        if self.repeat_words > 1:
            words = [t for t in generated if t not in self.punctuation]
            banned |= repeated_ngram_tokens(words, self.repeat_words)
        allowed = self._phrase_tokens(generated, mentions)
        lead = self.place_lead
        if allowed is None and lead and tuple(generated[-len(lead):]) == lead:
            allowed = frozenset(self.place_words - banned).difference(*static) or None
        return RuleStep(banned, static, allowed)

    def _phrase_tokens(self, generated: list[int], mentions: list[tuple[int, int]]
                       ) -> frozenset[int] | None:
        """The tokens that continue a phrase of an unnamed object after the latest
        article, or None where no phrase is under way (none begun, one finished)."""
        if not self.phrases or not self.articles:
            return None
        start = len(generated) - 1
        stop = max(len(generated) - 1 - self.longest_phrase, -1)
        while start > stop and generated[start] not in self.articles:
            start -= 1
        if start <= stop:
            return None
        named_before = {obj for end, obj in mentions if end < start}
        candidates = [(ids, vowel) for obj, group in enumerate(self.phrases)
                      if obj not in named_before for ids, vowel in group]
        want_vowel = generated[start] in self.vowel_articles
        agreeing = [ids for ids, vowel in candidates if vowel == want_vowel]
        after = generated[start + 1:]
        allowed = set()
        for ids in agreeing or [ids for ids, _ in candidates]:
            if len(ids) == len(after) and list(ids) == after:
                return None  # a phrase is complete: the reply goes on freely
            if len(ids) > len(after) and list(ids[:len(after)]) == after:
                allowed.add(ids[len(after)])
        return frozenset(allowed) or None

    def _names_of(self, objects: set[int]) -> BannedWords:
        key = frozenset(objects)
        table = self._named_tables.get(key)
        if table is None:  # built once per set of named objects, not once per step
            table = BannedWords.of([seq for seq, obj in self.names.items() if obj in key],
                                   float("inf"))
            self._named_tables[key] = table
        return table

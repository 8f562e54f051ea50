"""Draft tokens for one decode pass to verify: speculative decoding without a draft model.

At one or two streams a CPU decode step is bound by reading the weights, so a pass
over a few more query positions costs little more than a pass over one. A
sequence that can guess its next tokens lets the model check all the guesses in
that one pass and keeps the longest run the model itself would have produced,
plus the model's own next token: identical text, fewer passes.

The guesses cost nothing to make here:

- a **forced** reply (a caption or answer the servicer composed,
  `SamplingConfig.forced`) knows its next tokens outright: they are its drafts;
- anything else looks its last few tokens up in the prompt and reply so far
  (*prompt lookup*, as in transformers' `prompt_lookup_num_tokens` and vLLM's
  n-gram proposer) and proposes what followed them there: captions and answers
  copy object names and phrases from the scene they were given.

Only sequences whose next token is a pure function of the logits and the reply
so far are drafted for: greedy (or forced), one sequence per request, no
repetition penalty (it reads the tokens seen, per position) and no grammar (its
state advances by accepting). Sampled requests decode one token a pass as
before: keeping their seeded draws and their distribution would take rejection
sampling against a draft distribution a lookup does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

from arbridge.generation import SamplingConfig

# Longest n-gram looked up first: a longer match predicts better.
_MAX_NGRAM = 3
_MIN_NGRAM = 1
# How far back a lookup searches: bounds the host work per step on long prompts.
_SEARCH_TOKENS = 4096


def can_speculate(cfg: SamplingConfig) -> bool:
    """True when a draft can be verified exactly for this request's sequences. A
    forced reply always can: its rules leave one token per position, whatever the
    temperature."""
    if cfg.num_return_sequences != 1 or cfg.grammar is not None:
        return False
    return bool(cfg.forced) or (cfg.greedy and cfg.repetition_penalty == 1.0)


def lookup(context: list[int], count: int) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of the
    context's last n tokens (n from _MAX_NGRAM down to _MIN_NGRAM); [] if none."""
    if count <= 0:
        return []
    window = context[-_SEARCH_TOKENS:]
    end = len(window)
    for n in range(min(_MAX_NGRAM, end - 1), _MIN_NGRAM - 1, -1):
        tail = window[end - n:]
        first = tail[0]
        # Latest start first; the tail itself (start end - n) is not a match.
        for start in range(end - n - 1, -1, -1):
            if window[start] == first and window[start:start + n] == tail:
                follow = window[start + n:start + n + count]
                if follow:
                    return follow
    return []


@dataclass
class DraftLength:
    """How many tokens a sequence's prompt-lookup drafts propose, adapted to how
    many of them the model kept (transformers' heuristic: +2 after a fully kept
    draft, -1 after a rejected one), between 1 and `limit`; and whether drafting
    pays at all for this sequence.

    A pass reading a full draft (`limit` tokens) costs `cost` times a plain one, and
    one reading a single drafted token `cost_one` times (both measured at start; in
    between, in proportion): on a CPU whose one-row matmul kernel is much faster than
    its many-row one they reach 2-5. Drafting pays when the tokens a drafted pass
    yields (1 + those kept, a moving average) exceed the cost of the draft's length; a
    sequence whose guesses stopped paying drafts again only as a probe, once every
    PROBE_EVERY passes, and never where even one kept token could not pay for one
    (cost_one > 2; measured at 320 positions on a 2-core AMD EPYC: float32 1.4 for
    one drafted token, 3.05 for eight)."""

    limit: int
    cost: float = 1.0
    cost_one: float | None = None  # None: as `cost`
    current: int = 0
    kept_per_pass: float = 1.0  # moving average of drafts kept per drafted pass
    since_probe: int = 0

    PROBE_EVERY = 8
    # A pass with one drafted token costing more than this many plain ones cannot pay
    # even when the token is kept (the pass yields two).
    MAX_COST_ONE = 2.0

    def __post_init__(self) -> None:
        self.current = self.current or min(4, self.limit)
        if self.cost_one is None:
            self.cost_one = self.cost

    def cost_of(self, tokens: int) -> float:
        """A pass reading `tokens` drafted tokens against a plain one."""
        if self.limit <= 1:
            return self.cost
        return self.cost_one + (self.cost - self.cost_one) * (tokens - 1) / (self.limit - 1)

    def worth_it(self) -> bool:
        """Whether to draft this pass (counts the passes that do not)."""
        if 1.0 + self.kept_per_pass >= self.cost_of(self.current):
            return True
        if self.cost_one > self.MAX_COST_ONE:
            return False  # no draft can pay here: no probes either
        self.since_probe += 1
        if self.since_probe >= self.PROBE_EVERY:
            self.since_probe = 0
            return True
        return False

    def update(self, proposed: int, kept: int) -> None:
        self.kept_per_pass = 0.7 * self.kept_per_pass + 0.3 * kept
        if kept == proposed:
            self.current = min(self.limit, self.current + 2)
        else:
            self.current = max(1, self.current - 1)


def propose(cfg: SamplingConfig, prompt_ids: list[int], generated: list[int],
            length: DraftLength, room: int, forced_limit: int) -> list[int]:
    """The draft for a sequence whose reply so far is `generated` (its last token not
    yet read): forced tokens if the reply is composed, else a prompt lookup. At most
    `room` tokens (what the reply and the context still allow)."""
    if room <= 0:
        return []
    if cfg.forced:
        done = len(generated)
        return list(cfg.forced[done:done + min(room, forced_limit)])
    if not length.worth_it():
        return []
    return lookup(prompt_ids + generated, min(room, length.current))

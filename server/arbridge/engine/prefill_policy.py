"""Who prefills how much this turn: the prompt-reading policy, as plain data.

Every scheduler turn decodes every decoding row once, then spends a budget on
prompts still being read. How that budget is shared decides whether a short
prompt waits behind long ones (a caption behind three 6,000-token dialogues) and
whether the streams already decoding stall (a turn lasts as long as its prefill).
So, as vLLM's scheduler does with `long_prefill_token_threshold`:

- the budget is **work**, not tokens: a token read at position p costs
  `1 + p / attention_tokens` (its attention over p earlier tokens grows with p,
  its weight matmuls do not), so a chunk deep into a long prompt gets fewer tokens
  and a turn takes about as long wherever the prompts are;
- one prompt takes at most `per_prompt_tokens` a turn when others wait, so several
  advance together and a short prompt finishes in its first turn;
- clients take turns (round-robin over peers, starting from a different peer
  each turn); a peer's own prompts go shortest-remaining first, so many prompts
  from one client do not crowd out another's one;
- a prompt passed over for `patience` turns goes first, so a long prompt under
  a steady stream of short ones still finishes;
- some prompt always advances (at least `min_tokens`), however small the budget.

No model and no tensors here: `tests/test_prefill_policy.py` tests it alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class PromptState:
    """What the policy knows of one prompt being read."""

    key: Hashable  # the request, opaque here
    arrived: int  # admission order
    done: int  # prompt tokens already read
    total: int  # prompt tokens in all
    peer: str = ""  # the client it came from
    waited: int = 0  # turns in a row it was passed over

    @property
    def remaining(self) -> int:
        return self.total - self.done


@dataclass(frozen=True)
class PrefillPolicy:
    budget: float = 512.0  # work per turn, in tokens read at position 0
    per_prompt_tokens: int = 128  # the most one prompt reads in a turn
    attention_tokens: float = 3000.0  # the position at which a token costs twice
    min_tokens: int = 16  # the least the first prompt in line reads
    patience: int = 4  # turns a prompt may be passed over before it goes first

    def cost(self, start: int, count: int) -> float:
        """Work of reading `count` tokens from position `start`."""
        return count * (1.0 + (start + count / 2.0) / self.attention_tokens)

    def tokens_for(self, start: int, budget: float) -> int:
        """The most tokens from `start` that `budget` pays for."""
        # Solve count * (1 + (start + count/2) / a) <= budget for count.
        a = self.attention_tokens
        b = 1.0 + start / a
        disc = b * b + 2.0 * budget / a
        return max(0, int((disc ** 0.5 - b) * a))

    def order(self, prompts: Sequence[PromptState], turn: int) -> list[PromptState]:
        """The line for this turn: the long-passed-over first (oldest first), then the
        peers in turns (rotating by `turn`), each peer's shortest remaining first."""
        overdue = sorted((p for p in prompts if p.waited >= self.patience),
                         key=lambda p: p.arrived)
        by_peer: dict[str, list[PromptState]] = {}
        for p in sorted(prompts, key=lambda p: p.arrived):
            if p.waited < self.patience:
                by_peer.setdefault(p.peer, []).append(p)
        for queue in by_peer.values():
            queue.sort(key=lambda p: (p.remaining, p.arrived))
        peers = list(by_peer)
        if peers:
            shift = turn % len(peers)
            peers = peers[shift:] + peers[:shift]
        line: list[PromptState] = list(overdue)
        while any(by_peer[peer] for peer in peers):
            for peer in peers:
                if by_peer[peer]:
                    line.append(by_peer[peer].pop(0))
        return line

    def plan(self, prompts: Sequence[PromptState], turn: int = 0,
             budget: float | None = None) -> list[tuple[PromptState, int]]:
        """(prompt, tokens to read this turn) for the prompts that advance, in line
        order; updates each prompt's `waited`."""
        if not prompts:
            return []
        left = self.budget if budget is None else budget
        # Alone, a prompt may take the whole budget: the cap is for sharing.
        cap = self.per_prompt_tokens if len(prompts) > 1 else max(p.remaining for p in prompts)
        plan: list[tuple[PromptState, int]] = []
        for p in self.order(prompts, turn):
            want = min(p.remaining, cap)
            count = min(want, self.tokens_for(p.done, left))
            if count < want and count < self.min_tokens:
                count = min(want, self.min_tokens) if not plan else 0
            if count <= 0:
                continue
            plan.append((p, count))
            left -= self.cost(p.done, count)
            if left <= 0:
                break
        chosen = {id(p) for p, _ in plan}
        for p in prompts:
            p.waited = 0 if id(p) in chosen else p.waited + 1
        return plan


# Prefill chunks whose rows read at most this many positions share a forward pass
# (padding is cheap there); deeper ones share only with chunks about as deep, so a
# short prompt's rows never attend over a long prompt's length of padding.
SHARED_PASS_POSITIONS = 1024


def group_passes(chunks: list[tuple[Any, int]]) -> list[list[tuple[Any, int]]]:
    """Prompt chunks (reader, tokens; a reader has read `done` tokens) grouped into
    forward passes: every row of a pass attends over the pass's longest read, so
    chunks share a pass when that costs little (all reads within
    SHARED_PASS_POSITIONS, or the longest within 5/4 of the shortest); sharing reads
    the weights once for all of them."""
    passes: list[list[tuple[Any, int]]] = []
    shortest = 0
    for chunk in sorted(chunks, key=lambda c: c[0].done + c[1]):
        end = chunk[0].done + chunk[1]
        if passes and end <= max(SHARED_PASS_POSITIONS, shortest * 5 // 4):
            passes[-1].append(chunk)
        else:
            passes.append([chunk])
            shortest = end
    return passes

"""Grammar-constrained decoding: each sequence's tokens must keep its text inside a
grammar (a JSON schema, a regex, or the action syntax of serving/actions.py).

The matchers are llguidance's (the library vLLM, SGLang and llama.cpp use; chosen
over xgrammar in `arbridge grammar-bench`). One matcher per sequence of a request,
built by the servicer off the scheduler thread: the scheduler only asks each row for
its bitmask of allowed tokens (a fraction of a millisecond) and feeds back the token
it sampled, so a constrained request costs its batch-mates nothing but that.
"""

from __future__ import annotations

import llguidance
import llguidance.torch
import torch


class TokenGrammar:
    """The grammar state of one request: a matcher per sequence."""

    def __init__(self, matchers: list[llguidance.LLMatcher]):
        self.matchers = matchers

    def fill_bitmask(self, index: int, bitmask: torch.Tensor, row: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self.matchers[index], bitmask, row)

    def accept(self, index: int, token: int) -> bool:
        """Advance sequence `index` by `token`; False if the grammar refuses it."""
        return self.matchers[index].consume_token(token)

    def error(self, index: int) -> str:
        """Why sequence `index` stopped, in one line (no grammar dump)."""
        problem = self.matchers[index].get_error() or "the grammar refused the token"
        return " ".join(problem.replace("<non-verbose/>", "").split())[:400]


def allocate_bitmask(rows: int, vocab: int) -> torch.Tensor:
    return llguidance.torch.allocate_token_bitmask(rows, vocab)


_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, words] int32 bitmask -> [rows, vocab] bool (True = allowed)."""
    bits = (bitmask.unsqueeze(-1) >> _SHIFTS) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab].bool()

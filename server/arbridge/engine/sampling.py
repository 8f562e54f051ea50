"""Turning next-token logits into tokens: small pure functions.

Everything works on a [batch, vocab] tensor so one call samples every
sequence of a request at once, with the request's own RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Validated sampling parameters of one request (see SamplingParams)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int = 0
    stop: tuple[str, ...] = ()
    num_return_sequences: int = 1
    logprobs: bool = False
    # Benchmarks only (not in the contract): run to max_new_tokens through EOS,
    # so every contender generates the same number of tokens.
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL-style penalty: shrink the logits of tokens already in the sequence.

    `seen` is a [batch, vocab] bool mask of tokens in the prompt or output.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int,
                    top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; returns probs."""
    logits = logits / max(temperature, 1e-5)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most
        # likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def sample(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor,
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick the next token of every row. Returns (ids [batch], logprobs or None).

    Log-probabilities are those of the model's raw distribution, before any
    temperature or filtering, so clients can compare them across settings.
    """
    logits = logits.float()
    processed = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.greedy:
        next_ids = processed.argmax(dim=-1)
    else:
        probs = logits_to_probs(processed, cfg.temperature, cfg.top_k, cfg.top_p)
        next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    logprobs = None
    if cfg.logprobs:
        logprobs = logits.log_softmax(dim=-1).gather(-1, next_ids[:, None]).squeeze(-1)
    return next_ids, logprobs

"""Turning next-token logits into tokens: small pure functions.

Everything works on a [batch, vocab] tensor so one call samples every
sequence of a request at once, with the request's own RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arbridge.engine.constraints import repeated_ngram_tokens
from arbridge.engine.grammar import allocate_bitmask, unpack_bitmask
from arbridge.generation import SamplingConfig


class SamplingBatch:
    """The sampling parameters of a batch of rows, grouped by request.

    Rows of one request are contiguous and share its RNG; the parameters become
    per-row tensors so one call samples every row of a decode step. What decides
    the work (any top-k? any top-p? all greedy?) is read here, on the host, so
    sampling itself never waits on the device.
    """

    def __init__(self, groups: list[tuple[SamplingConfig, torch.Generator | None, int]],
                 device: torch.device | str = "cpu", vocab_size: int = 1 << 31):
        self.groups = groups  # (config, generator, rows), in row order
        per_row = [(cfg, n) for cfg, _, n in groups]

        def column(get, dtype):
            return torch.tensor([get(cfg) for cfg, n in per_row for _ in range(n)],
                                dtype=dtype, device=device)

        self.temperature = column(lambda c: c.temperature, torch.float32)
        self.top_k = column(lambda c: c.top_k, torch.long)
        self.top_p = column(lambda c: c.top_p, torch.float32)
        self.penalty = column(lambda c: c.repetition_penalty, torch.float32)
        self.all_greedy = all(cfg.greedy for cfg, _ in per_row)
        self.any_greedy = any(cfg.greedy for cfg, _ in per_row)
        self.any_penalty = any(cfg.repetition_penalty != 1.0 for cfg, _ in per_row)
        # The rows each filter applies to (host lists: no device work to decide).
        rows = [cfg for cfg, n in per_row for _ in range(n)]
        self.top_k_rows = [i for i, cfg in enumerate(rows)
                           if not cfg.greedy and 0 < cfg.top_k < vocab_size]
        self.top_k_values = [rows[i].top_k for i in self.top_k_rows]
        self.top_p_rows = [i for i, cfg in enumerate(rows) if not cfg.greedy and cfg.top_p < 1.0]
        self.any_logprobs = any(cfg.logprobs for cfg, _ in per_row)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float | torch.Tensor) -> torch.Tensor:
    """CTRL-style penalty: shrink the logits of tokens already in the sequence.

    `seen` is a [batch, vocab] bool mask of tokens in the prompt or output;
    `penalty` one number or one per row.
    """
    if isinstance(penalty, float):
        if penalty == 1.0:
            return logits
        penalty = torch.full((logits.shape[0],), penalty, device=logits.device)
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def filtered_probs(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, per row; returns probs.

    Only the rows that ask for a filter pay for it: a full-vocabulary sort for one
    request's top_p must not slow every stream it is batched with."""
    logits = logits / batch.temperature.clamp(min=1e-5)[:, None]
    vocab = logits.shape[-1]
    k_rows = [(i, k) for i, k in zip(batch.top_k_rows, batch.top_k_values, strict=True)
              if k < vocab]  # top_k >= vocab keeps everything: nothing to do
    if k_rows:
        rows = torch.tensor([i for i, _ in k_rows], device=logits.device)
        sub = logits[rows]
        k = batch.top_k[rows]
        top = torch.topk(sub, max(k for _, k in k_rows), dim=-1).values
        kth = top.gather(-1, (k - 1)[:, None])
        logits[rows] = sub.masked_fill(sub < kth, float("-inf"))
    if batch.top_p_rows:
        rows = torch.tensor(batch.top_p_rows, device=logits.device)
        sub = logits[rows]
        sorted_logits, order = torch.sort(sub, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most
        # likely token always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= batch.top_p[rows][:, None]
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits[rows] = sub.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


@dataclass(frozen=True)
class LogitRules:
    """Per-row constraints on a step's logits (engine/constraints.py).

    `bans` (rows, tokens, penalties): those logits are lowered (inf = never);
    `allow` (rows, entry rows, tokens): for each listed row, every token but its
    entries is masked (entry row i refers to rows[i]);
    `grammar` (rows, allowed [len(rows), vocab] bool): only a row's grammar's tokens
    may follow. The grammar has the last word: where the other rules leave it nothing
    (a banned word that the grammar's next literal needs), it alone applies."""

    bans: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    allow: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    grammar: tuple[torch.Tensor, torch.Tensor] | None = None


def sample_batch(logits: torch.Tensor, batch: SamplingBatch, seen: torch.Tensor | None,
                 rules: LogitRules | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick the next token of every row. Returns (ids [rows], logprobs [rows] or None).

    Sampled rows draw with the exponential-race trick (argmax of probs / Exp(1)
    noise, as gpt-fast does): the same distribution as torch.multinomial without
    its device sync, and each request's noise comes from its own generator, so a
    seeded request samples the same tokens whatever else is in the batch.
    `rules` lower or mask logits first: the constraints of engine/constraints.py.
    Log-probabilities are of the model's raw distribution, before any penalty,
    temperature or filtering, so clients can compare them across settings.
    """
    logits = logits.float()
    processed = logits
    if batch.any_penalty and seen is not None:
        processed = apply_repetition_penalty(logits, seen, batch.penalty)
    if rules is not None:
        processed = processed.clone() if processed is logits else processed
        if rules.bans is not None:
            rows, tokens, penalties = rules.bans
            processed[rows, tokens] -= penalties
        if rules.allow is not None:
            rows, entries, tokens = rules.allow
            keep = torch.zeros(len(rows), processed.shape[-1], dtype=torch.bool,
                               device=processed.device)
            keep[entries, tokens] = True
            processed[rows] = processed[rows].masked_fill(~keep, float("-inf"))
        if rules.grammar is not None:
            rows, allowed = rules.grammar
            masked = processed[rows].masked_fill(~allowed, float("-inf"))
            stuck = torch.isneginf(masked).all(dim=-1, keepdim=True)  # (no host sync)
            processed[rows] = torch.where(
                stuck, logits[rows].masked_fill(~allowed, float("-inf")), masked)
    if batch.all_greedy:
        next_ids = processed.argmax(dim=-1)
    else:
        probs = filtered_probs(processed, batch)
        noise = torch.empty_like(probs)
        start = 0
        for cfg, generator, n in batch.groups:
            if not cfg.greedy:
                noise[start:start + n].exponential_(1.0, generator=generator)
            start += n
        next_ids = (probs / noise.clamp_(min=1e-20)).argmax(dim=-1)
        if batch.any_greedy:
            next_ids = torch.where(batch.temperature == 0.0, processed.argmax(dim=-1), next_ids)
    logprobs = None
    if batch.any_logprobs:
        logprobs = logits.log_softmax(dim=-1).gather(-1, next_ids[:, None]).squeeze(-1)
    return next_ids, logprobs


def logit_rules(rows: list[tuple[SamplingConfig, int, list[int]]], device,
                 vocab_size: int) -> LogitRules | None:
    """The masks and penalties for every row's next token (constraints.py); None when
    there are none. Fixed token sets (words banned at every step, sentence ends, digits)
    become device tensors once per request; only what depends on the reply so far is
    looked up here. A row whose rules allow only a few tokens (a scene phrase under
    way) gets just that: its other rules have nothing left to mask."""
    row_ids, token_ids, penalties, static = [], [], [], []
    allow_rows, allow_sets = [], []
    grammar_rows = [(row, cfg.grammar, index) for row, (cfg, index, _) in enumerate(rows)
                    if cfg.grammar is not None]
    for row, (cfg, _index, generated) in enumerate(rows):
        if cfg.forced:  # a computed answer: its next token, and nothing else
            allow_rows.append(row)
            allow_sets.append(frozenset({cfg.forced[min(len(generated), len(cfg.forced) - 1)]}))
            continue
        step = cfg.caption_rules.step(generated) if cfg.caption_rules is not None else None
        if step is not None and step.allowed is not None:
            allow_rows.append(row)
            # A repeat is avoided where the allowed tokens leave another way.
            repeats = repeated_ngram_tokens(generated, cfg.no_repeat_ngram)
            allow_sets.append(step.allowed - repeats or step.allowed)
            continue
        dynamic: dict[int, float] = {}
        for token in repeated_ngram_tokens(generated, cfg.no_repeat_ngram):
            dynamic[token] = float("inf")
        if cfg.banned is not None:
            static.append((row, _set_tensor(cfg.banned, cfg.banned.always, device),
                           cfg.banned.penalty))
            for token in cfg.banned.next_banned(generated, with_always=False):
                dynamic.setdefault(token, cfg.banned.penalty)
        if step is not None:
            for token in step.banned:
                dynamic[token] = float("inf")
            for tokens in step.static:
                static.append((row, _set_tensor(cfg.caption_rules, tokens, device),
                               float("inf")))
        row_ids += [row] * len(dynamic)
        token_ids += list(dynamic)
        penalties += list(dynamic.values())
    parts = [(torch.tensor(row_ids, dtype=torch.long, device=device),
              torch.tensor(token_ids, dtype=torch.long, device=device),
              torch.tensor(penalties, device=device))] if row_ids else []
    for row, tokens, penalty in static:
        parts.append((torch.full_like(tokens, row), tokens,
                      torch.full(tokens.shape, penalty, device=device)))
    grammar = None
    if grammar_rows:
        bitmask = allocate_bitmask(len(grammar_rows), vocab_size)
        for i, (_, rules, index) in enumerate(grammar_rows):
            rules.fill_bitmask(index, bitmask, i)
        grammar = (torch.tensor([row for row, _, _ in grammar_rows], device=device),
                   unpack_bitmask(bitmask, vocab_size).to(device))
    if not parts and not allow_rows and grammar is None:
        return None
    bans = tuple(torch.cat(column) for column in zip(*parts, strict=True)) if parts else None
    allow = None
    if allow_rows:
        flat = [(i, t) for i, tokens in enumerate(allow_sets) for t in tokens]
        allow = (torch.tensor(allow_rows, dtype=torch.long, device=device),
                 torch.tensor([i for i, _ in flat], dtype=torch.long, device=device),
                 torch.tensor([t for _, t in flat], dtype=torch.long, device=device))
    return LogitRules(bans, allow, grammar)


def _set_tensor(owner, tokens: frozenset[int], device) -> torch.Tensor:
    """A fixed token set of a request's rules as a device tensor, made once."""
    cache = owner.__dict__.setdefault("_tensors", {})
    key = (id(tokens), str(device))
    if key not in cache:
        cache[key] = (tokens, torch.tensor(sorted(tokens), dtype=torch.long, device=device))
    return cache[key][1]

"""Computing a planned turn: the forward passes and the sampling, nothing else.

The scheduler decides (scheduler.py) and applies; this module runs the model
over a `TurnPlan`'s prompt chunks and decode rows (engine/runner.py, on the KV
pool's blocks) and samples the next tokens, each request with its own RNG.
All of it runs on the scheduler thread.
"""

from __future__ import annotations

import time

import torch

from arbridge.engine.batch_state import Reader, Request, Slot, TurnOutputs, TurnPlan
from arbridge.engine.kv_pool import KVPool
from arbridge.engine.runner import ModelRunner
from arbridge.engine.sampling import SamplingBatch, logit_rules, sample_batch


class TurnExecutor:
    def __init__(self, runner: ModelRunner, pool: KVPool):
        self.runner = runner
        self.pool = pool
        self.device = runner.device
        self.vocab_size = runner.vocab_size

    def execute(self, plan: TurnPlan) -> TurnOutputs:
        """The forward passes of a plan; nothing else changes."""
        outputs = TurnOutputs()
        began = time.perf_counter()
        for group in plan.prefill:
            outputs.finished_reading += self._prefill_pass(group)
        outputs.prefill_s = time.perf_counter() - began
        if plan.decode:
            # Each row reads its last token and then its draft, if it has one; shorter
            # rows are padded (their padding positions are never read back).
            drafts = plan.drafts or [[] for _ in plan.decode]
            q_len = 1 + max(len(d) for d in drafts)
            rows = [[slot.last_id, *draft] + [0] * (q_len - 1 - len(draft))
                    for slot, draft in zip(plan.decode, drafts, strict=True)]
            ids = torch.tensor(rows, device=self.device)
            outputs.decode_logits = self.runner.forward(
                self.pool, [slot.blocks for slot in plan.decode], ids,
                [slot.length for slot in plan.decode], keep=q_len)
        return outputs

    def _prefill_pass(self, group: list[tuple[Reader, int]]
                      ) -> list[tuple[Reader, torch.Tensor]]:
        """One forward pass over readers, each reading its chunk; (reader, last
        logits) of those now done."""
        batch = [reader for reader, _ in group]
        chunks = [reader.ids[reader.done: reader.done + count] for reader, count in group]
        q_len = max(len(c) for c in chunks)
        ids = torch.zeros(len(batch), q_len, dtype=torch.long, device=self.device)
        for i, chunk in enumerate(chunks):
            ids[i, : len(chunk)] = torch.tensor(chunk, device=self.device)
        starts = [reader.done for reader in batch]
        completing = [i for i, (reader, c) in enumerate(zip(batch, chunks, strict=True))
                      if reader.done + len(c) == len(reader.ids)]
        keep = sorted({len(chunks[i]) - 1 for i in completing}) or [q_len - 1]
        embeds = self._prefix_embeddings([r.req for r in batch], ids, starts)
        logits = self.runner.forward(self.pool, [r.blocks for r in batch], ids, starts,
                                     keep=torch.tensor(keep, device=self.device),
                                     inputs_embeds=embeds)
        return [(batch[i], logits[i, keep.index(len(chunks[i]) - 1)]) for i in completing]

    def _prefix_embeddings(self, batch: list[Request], ids: torch.Tensor,
                           starts: list[int]) -> torch.Tensor | None:
        """Input embeddings with soft-prompt rows written in, or None (plain ids)."""
        rows = [(i, req) for i, req in enumerate(batch)
                if req.prefix is not None and starts[i] < req.handle.prefix_len]
        if not rows:
            return None
        embeds = self.runner.embed(ids)
        for i, req in rows:
            start = starts[i]
            count = min(req.handle.prefix_len - start, ids.shape[1])
            embeds[i, :count] = req.prefix[start:start + count]
        return embeds

    def sample_first(self, req: Request, last_logits: torch.Tensor
                     ) -> tuple[list[int], list[float | None]]:
        """A prompt's first token for each of the request's sequences."""
        cfg = req.handle.sampling
        rules = (logit_rules([(cfg, index, []) for index in range(req.n)], self.device,
                              self.vocab_size) if cfg.constrained else None)
        next_ids, logprobs = sample_batch(last_logits.expand(req.n, -1),
                                          SamplingBatch([(cfg, req.generator, req.n)],
                                                        self.device, self.vocab_size),
                                          req.seen, rules)
        req.seen[torch.arange(req.n, device=self.device), next_ids] = True
        return _to_host(next_ids, logprobs)

    def verify(self, slot: Slot, draft: list[int], logits: torch.Tensor
               ) -> tuple[list[int], list[float | None]]:
        """The tokens a drafted sequence keeps: the model's own choice at each read
        position (logits [1 + len(draft), vocab]), as long as it equals the draft,
        then the first choice that differs (or the one after a fully kept draft).
        Each position is chosen as a plain step would choose it: its rules see the
        reply with the draft up to there."""
        req = slot.req
        cfg = req.handle.sampling
        positions = len(draft) + 1
        rules = (logit_rules([(cfg, slot.index, slot.generated + draft[:j])
                              for j in range(positions)], self.device, self.vocab_size)
                 if cfg.constrained else None)
        batch = SamplingBatch([(cfg, req.generator, positions)], self.device, self.vocab_size)
        ids, logprobs = _to_host(*sample_batch(logits, batch, None, rules))
        kept = 0
        while kept < len(draft) and ids[kept] == draft[kept]:
            kept += 1
        tokens = ids[:kept + 1]
        req.seen[slot.index, torch.tensor(tokens, device=self.device)] = True
        return tokens, logprobs[:kept + 1]

    def sample_rows(self, rows: list[Slot], logits: torch.Tensor
                    ) -> list[tuple[Request, list[int], list[int], list[float | None]]]:
        """Every decode row's next token, each request sampling its own rows with its
        own RNG, in one call: (request, sequence indices, ids, logprobs) per request."""
        by_request: dict[Request, list[tuple[int, int]]] = {}
        for row, slot in enumerate(rows):
            by_request.setdefault(slot.req, []).append((slot.index, row))
        order, groups = [], []
        for req, members in by_request.items():
            members.sort()
            order += [row for _, row in members]
            groups.append((req.handle.sampling, req.generator, len(members)))
        batch = SamplingBatch(groups, self.device, self.vocab_size)
        order_t = torch.tensor(order, device=self.device)
        seen = None
        if batch.any_penalty:
            seen = torch.cat([req.seen[torch.tensor([i for i, _ in members],
                                                    device=self.device)]
                              for req, members in by_request.items()])
        rules = None
        if any(cfg.constrained for cfg, _, _ in groups):  # else no per-row work at all
            rules = logit_rules([(req.handle.sampling, index, req.slots[index].generated)
                                  for req, members in by_request.items()
                                  for index, _ in members], self.device, self.vocab_size)
        next_ids, logprobs = sample_batch(logits[order_t], batch, seen, rules)
        offset = 0
        for req, members in by_request.items():
            seq_ids = torch.tensor([i for i, _ in members], device=self.device)
            req.seen[seq_ids, next_ids[offset:offset + len(members)]] = True
            offset += len(members)
        flat_ids, flat_lps = _to_host(next_ids, logprobs)  # one copy for ids and logprobs
        out, offset = [], 0
        for req, members in by_request.items():
            end = offset + len(members)
            out.append((req, [i for i, _ in members], flat_ids[offset:end],
                        flat_lps[offset:end]))
            offset = end
        return out


def _to_host(ids: torch.Tensor, logprobs: torch.Tensor | None
             ) -> tuple[list[int], list[float | None]]:
    """Sampled ids (and log-probabilities) in one device->host copy."""
    if logprobs is None:
        host = ids.tolist()
        return host, [None] * len(host)
    both = torch.stack((ids.to(torch.float64), logprobs.to(torch.float64))).tolist()
    return [int(i) for i in both[0]], both[1]

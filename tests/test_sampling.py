from __future__ import annotations

import torch

from arbridge.engine.sampling import (
    LogitRules,
    SamplingBatch,
    apply_repetition_penalty,
    filtered_probs,
    sample_batch,
)
from arbridge.engine.stopping import stop_reason
from arbridge.generation import FinishReason, SamplingConfig


def sample(logits, cfg, seen, generator):
    """The rows of one request, sampled as the scheduler samples a batch."""
    return sample_batch(logits, SamplingBatch([(cfg, generator, logits.shape[0])],
                                              logits.device, logits.shape[-1]), seen)


def logits_to_probs(logits, temperature, top_k, top_p):
    cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    return filtered_probs(logits, SamplingBatch([(cfg, None, logits.shape[0])]))


def _no_seen(batch=1, vocab=6):
    return torch.zeros(batch, vocab, dtype=torch.bool)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9, 0.0, 0.0]])
    ids, lps = sample(logits, SamplingConfig(temperature=0.0), _no_seen(), None)
    assert ids.tolist() == [1]
    assert lps is None


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0, -3.0]])
    probs = logits_to_probs(logits, temperature=1.0, top_k=2, top_p=1.0)
    assert (probs[0, 2:] == 0).all()
    assert torch.isclose(probs.sum(), torch.tensor(1.0))


def test_top_p_keeps_the_smallest_nucleus():
    # probs ~ [0.64, 0.24, 0.09, ...]: top_p=0.7 keeps the first two only.
    logits = torch.log(torch.tensor([[0.64, 0.24, 0.09, 0.02, 0.01]]))
    probs = logits_to_probs(logits, temperature=1.0, top_k=0, top_p=0.7)
    assert probs[0, 0] > 0 and probs[0, 1] > 0
    assert (probs[0, 2:] == 0).all()
    # The most likely token survives even a tiny top_p.
    probs = logits_to_probs(logits, temperature=1.0, top_k=0, top_p=1e-6)
    assert probs[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0]]


def test_same_seed_same_tokens_different_seed_differs():
    torch.manual_seed(123)
    logits = torch.randn(4, 500)
    cfg = SamplingConfig(temperature=1.0)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample(logits, cfg, _no_seen(4, 500), g)[0].tolist() for _ in range(5)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_logprobs_are_of_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    ids, lps = sample(logits, SamplingConfig(temperature=0.0, logprobs=True),
                      _no_seen(1, 3), None)
    assert ids.tolist() == [2]
    assert torch.isclose(lps[0], logits.log_softmax(-1)[0, 2])


def test_one_batched_call_equals_each_request_alone():
    # Rows of requests with different parameters, sampled together, match each request
    # sampled alone with the same seed: per-row parameters, per-request noise.
    torch.manual_seed(0)
    configs = [SamplingConfig(temperature=0.0),
               SamplingConfig(temperature=0.7, top_k=5, seed=1),
               SamplingConfig(temperature=1.3, top_p=0.8, repetition_penalty=1.5, seed=2),
               SamplingConfig(temperature=1.0, top_k=50, top_p=0.5, logprobs=True, seed=3)]
    sizes = [1, 3, 2, 2]
    logits = torch.randn(sum(sizes), 300)
    seen = torch.rand(sum(sizes), 300) < 0.1

    def generators():
        return [torch.Generator().manual_seed(c.seed) for c in configs]

    batch = SamplingBatch([(c, g, n) for c, g, n in zip(configs, generators(), sizes,
                                                       strict=True)])
    ids, lps = sample_batch(logits, batch, seen)
    alone, start = [], 0
    for c, g, n in zip(configs, generators(), sizes, strict=True):
        alone += sample(logits[start:start + n], c, seen[start:start + n], g)[0].tolist()
        start += n
    assert ids.tolist() == alone
    assert lps is not None and torch.allclose(
        lps, logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))


def test_sampled_tokens_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, -1)
    cfg = SamplingConfig(temperature=1.0, top_k=3, seed=0)
    ids, _ = sample(logits, cfg, _no_seen(4000, 4), torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=4).float() / 4000
    assert counts[3] == 0  # outside the top 3
    expected = torch.tensor([0.5, 0.3, 0.15]) / 0.95
    assert torch.allclose(counts[:3], expected, atol=0.03)


def test_stop_reason():
    cfg = SamplingConfig(max_new_tokens=3)
    assert stop_reason(7, 1, 10, cfg, {7}, 100) is FinishReason.EOS
    assert stop_reason(7, 1, 10, SamplingConfig(ignore_eos=True), {7}, 100) is None
    assert stop_reason(5, 2, 10, cfg, {7}, 100) is None
    assert stop_reason(5, 3, 10, cfg, {7}, 100) is FinishReason.LENGTH
    assert stop_reason(5, 1, 99, cfg, {7}, 100) is FinishReason.LENGTH  # window full


def test_logit_rules_ban_and_allow_per_row():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0]])
    cfg = SamplingConfig()
    batch = SamplingBatch([(cfg, None, 3)], "cpu", 4)
    # Row 0: token 0 banned. Row 1: only tokens 2 and 3 allowed. Row 2: untouched.
    rules = LogitRules(bans=(torch.tensor([0]), torch.tensor([0]), torch.tensor([float("inf")])),
                       allow=(torch.tensor([1]), torch.tensor([0, 0]), torch.tensor([2, 3])))
    ids, _ = sample_batch(logits.clone(), batch, None, rules)
    assert ids.tolist() == [1, 2, 0]


def test_forced_tokens_win_over_every_other_rule():
    """A computed answer's tokens (SamplingConfig.forced): each row gets its next one,
    whatever else the request's rules or sampling would pick."""
    from arbridge.engine.constraints import BannedWords
    from arbridge.engine.sampling import logit_rules

    logits = torch.tensor([[9.0, 1.0, 0.0, 0.0, 0.0]] * 2)
    cfg = SamplingConfig(temperature=1.5, top_k=2, seed=1, no_repeat_ngram=2,
                         banned=BannedWords.of([(3,)], float("inf")), forced=(3, 2, 4))
    rules = logit_rules([(cfg, 0, []), (cfg, 1, [3, 2])], "cpu", 5)
    generator = torch.Generator().manual_seed(1)
    ids, _ = sample_batch(logits, SamplingBatch([(cfg, generator, 2)], "cpu", 5), None, rules)
    assert ids.tolist() == [3, 4]  # the first token (banned otherwise), then the last

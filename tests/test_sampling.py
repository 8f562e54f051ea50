from __future__ import annotations

import torch

from arbridge.engine.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    logits_to_probs,
    sample,
)


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

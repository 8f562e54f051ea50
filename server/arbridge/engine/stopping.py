"""When a sequence ends: one pure check per sampled token."""

from __future__ import annotations

from arbridge.generation import FinishReason, SamplingConfig


def stop_reason(token: int, generated: int, prompt_len: int, cfg: SamplingConfig,
                eos_ids: set[int], context_length: int) -> FinishReason | None:
    """Why the sequence ends with `token` (its `generated`-th), or None to go on.

    EOS ends it without the token being shown; LENGTH ends it after the token
    (max_new_tokens reached, or the context window full). Stop strings are text,
    checked by the servicer's output processor, not here.
    """
    if token in eos_ids and not cfg.ignore_eos:
        return FinishReason.EOS
    if generated >= cfg.max_new_tokens or prompt_len + generated >= context_length:
        return FinishReason.LENGTH
    return None

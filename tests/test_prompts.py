from __future__ import annotations

import pytest

from arbridge.serving.prompts import PromptBuilder, PromptTooLong
from arbridge.v1 import types_pb2 as pb

from tiny_model import CHAT_TEMPLATE, train_tokenizer


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = train_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def scene():
    return pb.SceneFeatures(objects=[pb.SceneObject(id="1", label="chair")])


def test_chat_template_wraps_scene_and_question(chat_tokenizer):
    builder = PromptBuilder(chat_tokenizer, 4096, "SYSTEM")
    prompt = builder.converse(scene(), [], "what is here?", 16)
    text = chat_tokenizer.decode(prompt.ids)
    assert text.startswith("<|im_start|>system\nSYSTEM\n\nScene: A chair is somewhere nearby.")
    assert text.endswith("<|im_start|>user\nwhat is here?<|im_end|>\n<|im_start|>assistant\n")


def test_plain_transcript_without_chat_template():
    tok = train_tokenizer()
    builder = PromptBuilder(tok, 4096, "SYSTEM")
    history = [pb.DialogueTurn(role=pb.ROLE_USER, text="hi"),
               pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text="hello")]
    text = tok.decode(builder.converse(None, history, "and now?", 16).ids)
    assert text == "SYSTEM\n\nUser: hi\nAssistant: hello\nUser: and now?\nAssistant:"


def test_history_is_trimmed_oldest_first(chat_tokenizer):
    history = [pb.DialogueTurn(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT,
                               text=f"turn number {i} " + "word " * 20) for i in range(10)]
    full = PromptBuilder(chat_tokenizer, 100_000, "S").converse(None, history, "q?", 10)
    limit = len(full.ids) // 2
    trimmed = PromptBuilder(chat_tokenizer, limit, "S").converse(None, history, "q?", 10)
    assert 0 < trimmed.dropped_turns < 10
    assert len(trimmed.ids) + 10 <= limit
    text = chat_tokenizer.decode(trimmed.ids)
    kept = [i for i in range(10) if f"turn number {i} " in text]
    assert kept == list(range(trimmed.dropped_turns, 10))  # the newest turns survive


def test_too_long_even_without_history(chat_tokenizer):
    builder = PromptBuilder(chat_tokenizer, 30, "a long system prompt " * 5)
    with pytest.raises(PromptTooLong):
        builder.converse(None, [], "q", 10)
    with pytest.raises(PromptTooLong):
        builder.raw("word " * 50, 10)

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


def test_a_composed_caption_is_given_to_say_after_the_scene(chat_tokenizer):
    """For a model the bridge cannot hold to the caption's tokens: the caption, in the
    user's turn (the worked examples' own captions stay theirs)."""
    builder = PromptBuilder(chat_tokenizer, 4096, "SYSTEM")
    plain = builder.describe(scene(), "", 16).text
    said = builder.describe(scene(), "", 16, caption="Nearby: a chair.").text
    assert said.endswith("The glasses see: A chair is somewhere nearby.\nSay exactly: "
                         "Nearby: a chair.<|im_end|>\n<|im_start|>assistant\n")
    assert said.count("Say exactly") == 1
    assert said.replace("\nSay exactly: Nearby: a chair.", "") == plain
    # A small window drops the examples, then the caption; the scene stays.
    bare = PromptBuilder(chat_tokenizer, 4096, "S")._fit("S", [], "Describe what is around "
                                                         "me in one or two short sentences."
                                                         "\nThe glasses see: A chair is "
                                                         "somewhere nearby.", 16)
    small = PromptBuilder(chat_tokenizer, len(bare.ids) + 16, "S").describe(
        scene(), "", 16, caption="x" * 80)
    assert "Say exactly" not in small.text and "A chair" in small.text


def test_questions_about_one_scene_share_the_prompt_through_the_scene(chat_tokenizer):
    """An instruction of the caller's own follows the scene: two questions about one
    scene differ only after it, so the prefix cache serves the scene to the second
    (issue #32). The default instruction stays first (shared across scenes)."""
    builder = PromptBuilder(chat_tokenizer, 4096, "SYSTEM")
    first = builder.describe(scene(), "What is on my left?", 16).ids
    second = builder.describe(scene(), "How far away is the chair?", 16).ids
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert "A chair is somewhere nearby." in chat_tokenizer.decode(first[:shared])
    default = builder.describe(scene(), "", 16).text
    assert default.index("Describe what is around me") < default.index("A chair is somewhere")


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


@pytest.mark.parametrize("template", [True, False])
def test_trimming_keeps_the_longest_suffix_that_fits_tokenizing_each_turn_once(template):
    tok = train_tokenizer()
    if template:
        tok.chat_template = CHAT_TEMPLATE
    roles = [pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_SYSTEM]
    history = [pb.DialogueTurn(role=roles[i % 3], text=f"turn {i}: " + "the red chair " * (i % 7))
               for i in range(200)]
    builder = PromptBuilder(tok, 1024, "SYSTEM")
    builder.converse(None, history[:3], "warm", 64)  # measures each role's overhead once
    calls = []
    tokenize = builder._tokenize
    builder._tokenize = lambda texts, special: calls.append(len(texts)) or tokenize(texts,
                                                                                   special)
    prompt = builder.converse(None, history, "what now?", 64)
    kept = len(history) - prompt.dropped_turns
    assert len(prompt.ids) + 64 <= 1024
    # Linear: each kept turn tokenized once (plus the base, the walk's last turn and a
    # full render or two), not once per dropped turn.
    assert len(calls) <= kept + 8
    # The longest suffix that fits, by brute force over whole renders.
    fits = [n for n in range(len(history) + 1)
            if len(builder._encode("SYSTEM", history[len(history) - n:], "what now?").ids)
            + 64 <= 1024]
    assert kept == max(fits)

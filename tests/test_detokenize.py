from __future__ import annotations

import pytest

from arbridge.serving.detokenize import IncrementalDetokenizer, StopStringFilter

from tiny_model import train_tokenizer

TEXTS = [
    "The red chair 🙂 stands left.",
    "日本語のテキスト🚀と絵文字",
    "Mixed: café, naïve, 中文, 👩‍👩‍👧 family emoji.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_add_up(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.step(i) for i in ids]
    assert "".join(deltas) == text
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8")  # no lone surrogates


def test_a_character_split_over_tokens_is_held_back(tokenizer):
    text = "中文👩‍👩‍👧"  # not in the training corpus: byte-level pieces
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # a split character
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.step(i) for i in ids]
    assert "" in deltas and "".join(deltas) == text


def test_special_tokens_are_not_shown(tokenizer):
    ids = tokenizer("hi", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.step(i) for i in ids) == "hi"


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    return train_tokenizer(metaspace=True)


@pytest.mark.parametrize("prompt, continuation", [
    ("The red", " chair stands to the left"),
    ("A lamp is", " far to the right; the kitchen"),
])
def test_metaspace_continuation_keeps_its_first_space(metaspace_tokenizer, prompt,
                                                      continuation):
    tok = metaspace_tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    full_ids = tok(prompt + continuation, add_special_tokens=False).input_ids
    assert full_ids[:len(prompt_ids)] == prompt_ids
    new_ids = full_ids[len(prompt_ids):]
    assert tok.convert_ids_to_tokens(new_ids[0]).startswith("▁")
    # A cold stream treats the first new token as the start of a text and drops the
    # space: the bug this guards against.
    cold = IncrementalDetokenizer(tok)
    assert "".join(cold.step(i) for i in new_ids) == continuation.lstrip()
    primed = IncrementalDetokenizer(tok, prompt_ids)
    deltas = [primed.step(i) for i in new_ids]
    assert "".join(deltas) + primed.flush() == continuation
    assert deltas[0].startswith(" ")


def test_primed_flush_adds_only_an_unfinished_character(tokenizer):
    prompt_ids = tokenizer("The red chair", add_special_tokens=False).input_ids
    ids = tokenizer("🙂", add_special_tokens=False).input_ids
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    shown = "".join(detok.step(i) for i in ids[:-1])
    assert shown == "" and detok.flush() == "\ufffd"


def feed(stops, pieces):
    f = StopStringFilter(stops)
    shown = [f.push(p) for p in pieces]
    return f, shown


def test_stop_string_split_over_pieces_is_never_shown():
    f, shown = feed(["STOP"], ["hello S", "TO", "P and more"])
    assert "".join(shown) == "hello "
    assert f.matched == "STOP"
    assert shown[1] == ""  # "S", "STO" held back while they could start STOP


def test_held_back_text_is_released_when_it_stops_matching():
    f, shown = feed(["STOP"], ["a ST", "ART"])
    assert "".join(shown) == "a START"
    assert f.matched is None


def test_flush_releases_a_trailing_prefix():
    f, shown = feed(["</s>"], ["end </"])
    assert "".join(shown) == "end "
    assert f.flush() == "</"


def test_earliest_of_several_stops_wins_and_cjk_stops_work():
    f, shown = feed(["。", "!"], ["日本語", "です。次!"])
    assert "".join(shown) == "日本語です"
    assert f.matched == "。"


def test_no_stops_pass_through():
    f, shown = feed([], ["a", "b"])
    assert shown == ["a", "b"] and f.flush() == ""


def test_sentence_counter_ends_at_a_full_stop_not_a_decimal_point():
    from arbridge.serving.detokenize import SentenceCounter

    counter = SentenceCounter(1)
    assert counter.cut("A lamp is 1") == ("A lamp is 1", False)
    assert counter.cut(".5 m away. Then more") == (".5 m away.", True)
    assert SentenceCounter(0).cut("One. Two.") == ("One. Two.", False)


def test_caption_end_cuts_at_the_first_break_once_all_are_named():
    from arbridge.serving.detokenize import CaptionEnd

    end = CaptionEnd([{"chair", "chairs"}, {"lamp", "lamps"}])
    assert end.cut("A chair is ahead, ") == ("A chair is ahead, ", False)  # lamp unnamed
    assert end.cut("a lamp is to the left") == ("a lamp is to the left", False)
    assert end.cut(" of you, and a chair") == (" of you.", True)

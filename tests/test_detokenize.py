from __future__ import annotations

import pytest

from arbridge.engine.detokenize import IncrementalDetokenizer, StopStringFilter

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

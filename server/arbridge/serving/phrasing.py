"""Objects in English words: noun phrases, articles and numbers.

An app sends attributes as a map ({"material": "carbon", "size": "small", "color":
"red", "state": "locked"}); English orders adjectives by kind (opinion, size, age,
shape, colour, origin, material, purpose), and says a state as a state ("a
switched-on oven", not "an on oven"): "a locked small red carbon bicycle".
Every sentence the server writes about an object (scene text, captions, answers)
names it through here, so it is named the same way everywhere.
"""

from __future__ import annotations

import re

from arbridge.serving.lexicon import IRREGULAR_PLURALS, plural

# Attribute keys in English adjective order; unknown keys go before purpose words
# (a detector's "brand" or "style" reads best next to the noun's own kind).
_ADJECTIVE_ORDER = ["opinion", "size", "age", "shape", "color", "colour", "pattern",
                    "origin", "material", "brand", "purpose", "type"]
_UNKNOWN_RANK = _ADJECTIVE_ORDER.index("brand")
STATE_KEYS = {"state", "status", "power", "condition"}
# A state said before a noun: "on" alone is not an adjective.
_STATE_ADJECTIVES = {"on": "switched-on", "off": "switched-off", "turned on": "switched-on",
                     "turned off": "switched-off", "switched on": "switched-on",
                     "switched off": "switched-off", "not plugged in": "unplugged",
                     "plugged": "plugged-in"}
# Nouns with no singular ("scissors"): "a pair of scissors", "two pairs of scissors".
_PAIRS = {"scissors", "glasses", "sunglasses", "jeans", "trousers", "pants", "shorts",
          "binoculars", "headphones", "pliers", "tongs", "tweezers", "goggles", "earbuds",
          "chopsticks", "skis", "pyjamas", "leggings"}
# One of them is said like many: "a sheep", "two sheep".
_SAME_BOTH = {"sheep", "fish", "deer"}
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve"]


def _rank(key: str) -> tuple[int, str]:
    if key in STATE_KEYS:
        return (-1, key)  # "a broken red chair", "a switched-on oven"
    return (_ADJECTIVE_ORDER.index(key) if key in _ADJECTIVE_ORDER else _UNKNOWN_RANK, key)


def state_adjective(value: str) -> str:
    """A state value as a word before a noun: "on" -> "switched-on"."""
    value = " ".join(value.lower().split())
    return _STATE_ADJECTIVES.get(value, value.replace(" ", "-"))


def adjectives(obj, states: bool = True) -> list[str]:
    """The object's attribute values in English order (one colour, whichever spelling
    the app used); `states`: with its state ("switched-on"), else without."""
    attrs = {k.strip().lower(): v.strip() for k, v in obj.attributes.items() if v.strip()}
    if "color" in attrs:
        attrs.pop("colour", None)
    out = []
    for key in sorted(attrs, key=_rank):
        if key in STATE_KEYS:
            if states:
                out.append(state_adjective(attrs[key]))
        else:
            out.append(attrs[key])
    return out


def noun_phrase(obj, states: bool = True) -> str:
    """'locked small red carbon bicycle', 'switched-on oven'."""
    return " ".join([*adjectives(obj, states), obj.label.strip()])


def is_pair_noun(noun: str) -> bool:
    last = noun.lower().split()[-1] if noun.strip() else ""
    return last in _PAIRS


def article(phrase: str) -> str:
    """'a' or 'an' for the phrase, by sound: "an hour", "a unicorn", "a one-way"."""
    first = phrase.split(" ", 1)[0].lower()
    # "uni" as in unicorn / uniform / unit, not the "un-" of unidentified.
    vowel = first[:1] in "aeiou" and not re.match(
        r"(uni(?:c|f|o|q|t|v|s|l)|use|usu|ute|uri|ura|eu|one|ewe)", first)
    return "an" if vowel or first in ("hour", "honest", "heir", "honour", "honor") else "a"


def looks_plural(noun: str) -> bool:
    last = noun.lower().split()[-1] if noun.strip() else ""
    return (last in IRREGULAR_PLURALS or last in _PAIRS) and last not in _SAME_BOTH


def a(phrase: str) -> str:
    """The phrase with its indefinite article: "an espresso machine", "a pair of
    binoculars", "some grapes"."""
    if is_pair_noun(phrase):
        return f"a pair of {phrase}"
    if looks_plural(phrase):
        return f"some {phrase}"
    return f"{article(phrase)} {phrase}"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_of(n: int, noun: str) -> str:
    """'two chairs', 'one lamp', 'three pairs of scissors'."""
    if is_pair_noun(noun):
        return f"{number_word(n)} {'pair' if n == 1 else 'pairs'} of {noun}"
    return f"{number_word(n)} {noun if n == 1 else plural(noun)}"

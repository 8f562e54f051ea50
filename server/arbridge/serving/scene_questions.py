"""Scene questions answered from the scene: the facts are computed, not guessed.

A wearer's everyday questions about the room ("is there a baby in here?", "how
many lamps are there?", "which is closer, the cello or the saxophone?") have
answers the scene already holds: labels, attributes and poses, seen from the
wearer's eyes. `answer()` recognises a question of a kind it knows, finds the
objects it names (scene_objects.py: plurals, synonyms, head nouns, attributes,
sides, labels in no lexicon), computes the answer in the wearer's frame (turned
and pitched cameras, height included) and says it as one plain sentence. The reply then
says that sentence (replies.py); a question of no known kind gets None and goes
to the model as before.

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from arbridge.serving.lexicon import plural
from arbridge.serving.scene_objects import (
    ABOVE_DEG,
    BELOW_DEG,
    FLOOR_M,
    OVERHEAD_DEG,
    Seen,
    clean,
    find,
    find_scored,
    height_said,
    seen,
)
from arbridge.v1 import types_pb2 as pb

LOOK_CONE_DEG = 30.0  # what the wearer looks at: the most central object within this

_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten", "eleven", "twelve"]


# -- saying things -------------------------------------------------------------------
def _article(phrase: str) -> str:
    first = phrase.split(" ", 1)[0].lower()
    # "an hour", "a unicorn", "a one-way": the sound, roughly; a vowel letter otherwise.
    vowel = first[:1] in "aeiou" and not re.match(r"(uni|use|usu|eu|one)", first)
    return "an" if vowel or first in ("hour", "honest", "heir") else "a"


def _count(n: int, noun: str) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    return f"{word} {noun if n == 1 else plural(noun)}"


_SIDE_SAID = {"ahead": "ahead of you", "left": "on your left", "right": "on your right",
              "behind": "behind you"}


def _where(s: Seen) -> str:
    """'on your left, 2.0 m away' / 'overhead, 1.2 m away' / 'ahead of you, on the
    floor, 3.0 m away'."""
    height = height_said(s)
    parts = [height] if height == "overhead" else [_SIDE_SAID[s.side]] + \
        ([height] if height else [])
    return ", ".join(parts + [f"{s.distance:.1f} m away"])


def _phrase(s: Seen) -> str:
    """The object's noun phrase: attribute values as English orders adjectives (size,
    age, colour, material...), states as states, then the label."""
    attrs = {k.strip().lower(): v.strip() for k, v in s.obj.attributes.items() if v.strip()}
    adjectives = [attrs[k] for k in sorted(attrs, key=_adjective_rank)
                  if k not in _STATE_KEYS and not _is_state_value(attrs[k])]
    return " ".join([*adjectives, s.obj.label.strip()])


_ADJECTIVE_ORDER = ["opinion", "size", "age", "shape", "color", "colour", "pattern",
                    "origin", "material", "purpose", "type", "brand"]
_STATE_KEYS = {"state", "status", "power", "condition"}


def _adjective_rank(key: str) -> tuple[int, str]:
    return (_ADJECTIVE_ORDER.index(key) if key in _ADJECTIVE_ORDER else len(_ADJECTIVE_ORDER),
            key)


# -- states --------------------------------------------------------------------------
# Each group: the words for one state; its opposite in the same row.
_STATES = [
    ({"on", "switched on", "turned on", "running"}, {"off", "switched off", "turned off"}),
    ({"open", "opened"}, {"closed", "shut"}),
    ({"plugged in", "plugged"}, {"unplugged", "not plugged in"}),
    ({"locked"}, {"unlocked"}),
    ({"full"}, {"empty"}),
    ({"broken"}, {"working", "fixed"}),
    ({"clean"}, {"dirty"}),
    ({"lit"}, {"unlit"}),
]
_STATE_WORDS = sorted({w for pair in _STATES for side in pair for w in side},
                      key=len, reverse=True)


def _is_state_value(value: str) -> bool:
    return value.strip().lower() in {w for pair in _STATES for side in pair for w in side}


def _state_of(s: Seen) -> str | None:
    attrs = {k.strip().lower(): v.strip().lower() for k, v in s.obj.attributes.items()}
    for key in _STATE_KEYS:
        if attrs.get(key):
            return attrs[key]
    for value in attrs.values():
        if _is_state_value(value):
            return value
    return None


def _same_state(asked: str, value: str) -> bool | None:
    """True: `value` is the state asked; False: its opposite; None: unrelated."""
    for yes, no in _STATES:
        for group, other in ((yes, no), (no, yes)):
            if asked in group:
                if value in group:
                    return True
                if value in other:
                    return False
    return True if asked == value else None


def _state_said(value: str) -> str:
    return {"on": "switched on", "off": "switched off"}.get(value, value)


# -- the question kinds ------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    kind: str
    text: str  # the answer, said as one or two plain sentences


_Q = re.compile


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _listing(items: list[Seen]) -> str:
    phrases = [f"the {_phrase(s)}" for s in items]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _instances(items: list[Seen]) -> str:
    """'The lamp is on your left, 2.0 m away.' or, for several: 'There are two lamps:
    one on your left, 2.0 m away, and one ahead of you, 3.1 m away.'"""
    items = sorted(items, key=lambda s: s.distance)
    if len(items) == 1:
        return _sentence(f"the {_phrase(items[0])} is {_where(items[0])}.")
    noun = items[0].obj.label.strip()
    if len({s.label for s in items}) > 1:
        return " ".join(_sentence(f"the {_phrase(s)} is {_where(s)}.") for s in items)
    parts = [f"{'the ' + _phrase(s) if _phrase(s) != noun else 'one'} {_where(s)}"
             for s in items]
    return _sentence(f"there are {_count(len(items), noun)}: " + ", ".join(parts[:-1]) +
                     f", and {parts[-1]}.")


def _exists(m: re.Match, scene: list[Seen], _) -> Answer:
    noun = clean(m.group("x"))
    found, score = find_scored(noun, scene)
    absent = (f"No, I don't see {_article(noun)} {noun} here." if not _looks_plural(noun)
              else f"No, I don't see any {noun} here.")
    if not found:
        return Answer("exists", absent)
    if score == 1:  # only its head noun: "a bed?" of a dog bed is not a yes
        return Answer("exists", f"{absent[:-len(' here.')]}, but " +
                      _instances(found)[0].lower() + _instances(found)[1:])
    return Answer("exists", "Yes. " + _instances(found))


def _looks_plural(noun: str) -> bool:
    return noun.endswith("s") and not noun.endswith("ss")


def _count_q(m: re.Match, scene: list[Seen], _) -> Answer:
    noun = clean(m.group("x"))
    found = find(noun, scene)
    if not found:
        singular = noun[:-1] if _looks_plural(noun) else noun
        return Answer("count", f"There are no {plural(singular)} here.")
    label = found[0].obj.label.strip()
    if len({s.label for s in found}) > 1:
        return Answer("count", f"I see {len(found)}: {_listing(found)}.")
    verb = "is" if len(found) == 1 else "are"
    return Answer("count", f"There {verb} {_count(len(found), label)}.")


_SIDES_ASKED = [("left", r"(?:on|to|at) (?:my|the) left|left of me|my left"),
                ("right", r"(?:on|to|at) (?:my|the) right|right of me|my right"),
                ("behind", r"behind (?:me|us)|at my back"),
                ("ahead", r"in front of (?:me|us)|ahead(?: of (?:me|us))?|straight ahead")]


def _side_listing(side: str) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer:
        # Overhead is no side: a smoke alarm above the wearer is not "on your left".
        there = [s for s in sorted(scene, key=lambda s: s.distance)
                 if s.side == side and s.elevation < OVERHEAD_DEG]
        where = _SIDE_SAID[side]
        if not there:
            return Answer("side", f"Nothing is {where}.")
        return Answer("side", _sentence(f"{where}: {_listing(there)}."))
    return run


def _height_listing(which: str) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer:
        if which == "above":
            there = [s for s in scene if s.elevation >= ABOVE_DEG]
            where = "above you"
        elif which == "floor":
            there = [s for s in scene if -FLOOR_M <= s.obj.pose.position.y <= FLOOR_M]
            where = "on the floor"
        else:
            there = [s for s in scene if s.elevation <= BELOW_DEG]
            where = "below you"
        there.sort(key=lambda s: s.distance)
        if not there:
            return Answer("height", f"Nothing is {where}.")
        return Answer("height", _sentence(f"{where}: {_listing(there)}."))
    return run


def _not_seen(kind: str, noun: str) -> Answer:
    return Answer(kind, f"I don't see {_article(noun)} {noun} here.")


def _where_q(m: re.Match, scene: list[Seen], _) -> Answer:
    """Where one or more objects are ("where is", "is it on my left or right?")."""
    noun = clean(m.group("x"))
    found = find(noun, scene)
    return Answer("where", _instances(found)) if found else _not_seen("where", noun)


def _compare(nearer: bool) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer | None:
        a, b = find(m.group("a"), scene), find(m.group("b"), scene)
        kind = "closer" if nearer else "farther"
        for phrase, found in ((m.group("a"), a), (m.group("b"), b)):
            if not found:
                return _not_seen(kind, clean(phrase))
        first, second = min(a, key=lambda s: s.distance), min(b, key=lambda s: s.distance)
        if first.obj.id == second.obj.id:
            return None
        win, lose = ((first, second) if (first.distance <= second.distance) == nearer
                     else (second, first))
        word = "closer" if nearer else "farther away"
        return Answer(kind, _sentence(f"the {_phrase(win)} is {word}: {win.distance:.1f} m, "
                                      f"against {lose.distance:.1f} m for the "
                                      f"{_phrase(lose)}."))
    return run


def _distance(m: re.Match, scene: list[Seen], _) -> Answer | None:
    noun = clean(m.group("x"))
    found = find(noun, scene)
    if not found:
        return _not_seen("distance", noun)
    found.sort(key=lambda s: s.distance)
    if len(found) == 1:
        return Answer("distance", _sentence(f"the {_phrase(found[0])} is "
                                            f"{found[0].distance:.1f} m away."))
    return Answer("distance", _instances(found))


def _attribute(key: str) -> Callable:
    keys = {"colour": ("color", "colour"), "material": ("material",)}[key]

    def run(m: re.Match, scene: list[Seen], _) -> Answer | None:
        noun = clean(m.group("x"))
        found = find(noun, scene)
        if not found:
            return _not_seen(key, noun)
        said = []
        for s in sorted(found, key=lambda s: s.distance):
            attrs = {k.strip().lower(): v.strip() for k, v in s.obj.attributes.items()}
            value = next((attrs[k] for k in keys if attrs.get(k)), None)
            label = s.obj.label.strip()
            if value is None:
                said.append(f"I can't tell the {label}'s {key}." if len(found) == 1 else
                            f"I can't tell the {key} of the {label} {_where(s)}.")
            elif key == "material":
                said.append(_sentence(f"the {label} is made of {value}." if len(found) == 1
                                      else f"the {label} {_where(s)} is made of {value}."))
            else:
                said.append(_sentence(f"the {label} is {value}." if len(found) == 1
                                      else f"the {label} {_where(s)} is {value}."))
        return Answer(key, " ".join(said))
    return run


def _state(m: re.Match, scene: list[Seen], _) -> Answer | None:
    noun, asked = clean(m.group("x")), m.group("state").strip().lower()
    found = find(noun, scene)
    if not found:
        return _not_seen("state", noun)
    said = []
    for s in sorted(found, key=lambda s: s.distance)[:3]:
        value, label = _state_of(s), s.obj.label.strip()
        if value is None:
            said.append(f"I can't tell whether the {label} is {asked}.")
            continue
        same = _same_state(asked, value)
        answer = {True: "Yes", False: "No", None: ""}[same]
        sentence = f"the {label} is {_state_said(value)}."
        said.append(f"{answer}, {sentence}" if answer else _sentence(sentence))
    return Answer("state", " ".join(said))


def _looking_at(m: re.Match, scene: list[Seen], gazed: pb.SceneObject | None) -> Answer:
    if gazed is not None:
        target = next((s for s in scene if s.obj.id == gazed.id), None)
        if target is not None:
            return Answer("looking", _sentence(f"you're looking at the {_phrase(target)}, "
                                               f"{target.distance:.1f} m away."))
    central = [s for s in scene if math.hypot(s.azimuth, s.elevation) <= LOOK_CONE_DEG]
    if not central:
        return Answer("looking", "Nothing is straight ahead of you.")
    target = min(central, key=lambda s: (math.hypot(s.azimuth, s.elevation), s.distance))
    return Answer("looking", _sentence(f"you're looking at the {_phrase(target)}, "
                                       f"{target.distance:.1f} m away."))


_STATE_ALT = "|".join(re.escape(w) for w in _STATE_WORDS)
_X = r"(?P<x>[a-z0-9 '\-]+?)"
_ANY = r"(?:(?:an|a|any|some)\s+)?"
# (pattern, handler): the first match wins, so the more specific kinds come first.
_KINDS: list[tuple[re.Pattern, Callable]] = [
    (_Q(r"^(?:which|what) (?:one )?is (?:closer|nearer)(?: to (?:me|us))?,? (?:the )?"
        r"(?P<a>.+?),? or (?:the )?(?P<b>.+?)$"), _compare(True)),
    (_Q(r"^(?:which|what) (?:one )?is (?:farther|further)(?: away)?(?: from (?:me|us))?,? "
        r"(?:the )?(?P<a>.+?),? or (?:the )?(?P<b>.+?)$"), _compare(False)),
    (_Q(r"^is (?:the )?(?P<a>.+?) (?:closer|nearer)(?: to (?:me|us))? than (?:the )?"
        r"(?P<b>.+?)$"), _compare(True)),
    (_Q(r"^is (?:the )?(?P<a>.+?) (?:farther|further)(?: away)?(?: from (?:me|us))? than "
        r"(?:the )?(?P<b>.+?)$"), _compare(False)),
    (_Q(rf"^how many {_X}(?: (?:are|is|do|can|have|does|were)\b.*)?$"), _count_q),
    (_Q(rf"^(?:is|are) there {_ANY}{_X}$"), _exists),
    (_Q(rf"^(?:do|can) (?:you|i) see {_ANY}{_X}$"), _exists),
    (_Q(rf"^(?:do|does) (?:this|the) (?:room|place|scene) (?:have|contain) {_ANY}{_X}$"),
     _exists),
    (_Q(rf"^how (?:far|close)(?: away)? (?:is|are) {_X}$"), _distance),
    (_Q(rf"^how far (?:am i|are we) from {_X}$"), _distance),
    (_Q(rf"^what(?:'s| is) the distance to {_X}$"), _distance),
    (_Q(rf"^what colou?r (?:is|are) {_X}$"), _attribute("colour")),
    (_Q(rf"^what(?:'s| is) the colou?r of {_X}$"), _attribute("colour")),
    (_Q(rf"^what (?:is|are) {_X} made (?:of|from)$"), _attribute("material")),
    (_Q(rf"^what material (?:is|are) {_X}(?: made of)?$"), _attribute("material")),
    (_Q(rf"^(?:is|are) {_X} (?P<state>{_STATE_ALT})$"), _state),
    (_Q(r"^what (?:am i|are we) (?:looking at|facing|staring at)$"), _looking_at),
    (_Q(r"^what(?:'s| is) (?:right )?in front of my (?:eyes|face)$"), _looking_at),
    (_Q(r"^what(?:'s| is| do i have| do we have| can i see| can you see| have i got)? "
        r"(?:is )?(?:above|over) (?:me|us|my head)$|^what(?:'s| is) overhead$"
        r"|^what(?:'s| is) on the ceiling$"), _height_listing("above")),
    (_Q(r"^what(?:'s| is) (?:below|beneath|under) (?:me|us)$"), _height_listing("below")),
    (_Q(r"^what(?:'s| is) on the (?:floor|ground)$"), _height_listing("floor")),
    (_Q(rf"^where(?:'s| is| are| can i find| did i put)? {_X}$"), _where_q),
    (_Q(rf"^(?:is|are) {_X} (?:on|to) (?:my|the) (?:left|right)(?: or (?:my |the )?"
        rf"(?:left|right))?(?: of me)?$"), _where_q),
    (_Q(rf"^(?:is|are) {_X} (?:in front of|ahead of|behind) (?:me|us)(?: or "
        rf"(?:in front of|ahead of|behind) (?:me|us))?$"), _where_q),
    (_Q(rf"^(?:is|are) {_X} (?:above|below|over|under) (?:me|us)$"), _where_q),
]
for _side, _words_re in _SIDES_ASKED:
    _KINDS.append((_Q(rf"^(?:what|which things?|which objects?|anything)(?:'s| is| are| do "
                      rf"i have| do we have| can i see| can you see| have i got| is there)? "
                      rf"(?:is |are )?(?:{_words_re})$"), _side_listing(_side)))
    _KINDS.append((_Q(rf"^is there anything (?:{_words_re})$"), _side_listing(_side)))


def _normalise(question: str) -> str:
    text = question.strip().lower().replace("’", "'")
    text = re.sub(r"^(?:hey|ok|okay|so|and|um|please|tell me|can you tell me|could you "
                  r"tell me|do you know|i wonder)[,\s]+", "", text)
    text = re.sub(r"[?.!\s]+$", "", text)
    text = re.sub(r",?\s*please$", "", text)
    text = re.sub(r",?\s+(?:right now|just now|now|at the moment|currently)$", "", text)
    return re.sub(r"\s+", " ", text)


def answer(question: str, scene: pb.SceneFeatures | None,
           gazed: pb.SceneObject | None = None) -> Answer | None:
    """The answer to `question` computed from `scene`, or None for a question of no
    kind this module knows (the model answers it). `gazed`: what the wearer's gaze
    ray hits, if it hits anything (for "what am I looking at?")."""
    if scene is None:
        return None
    text = _normalise(question)
    camera = scene.camera_pose
    everything = [seen(o, camera) for o in scene.objects if o.label.strip()
                  and o.HasField("pose")]
    for pattern, handler in _KINDS:
        m = pattern.match(text)
        if m:
            return handler(m, everything, gazed)
    return None

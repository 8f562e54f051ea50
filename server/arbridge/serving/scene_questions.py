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

import re
from collections.abc import Callable
from dataclasses import dataclass

from arbridge.serving.lexicon import IRREGULAR_PLURALS
from arbridge.serving.phrasing import STATE_KEYS, adjectives, article, count_of
from arbridge.serving.scene_objects import UNKNOWN, clean, find_scored
from arbridge.serving.wearer_frame import (
    OVERHEAD_DEG,
    Seen,
    above,
    below,
    height_said,
    on_the_floor,
    seen,
)
from arbridge.v1 import types_pb2 as pb

LOOK_CONE_DEG = 30.0  # what the wearer looks at: the most central object within this
MAX_QUESTION_CHARS = 200  # longer turns are not everyday scene questions: the model's

# Nouns that name no object even where the lexicon has the word.
_NOT_OBJECTS = {"it", "this", "that", "these", "those", "they", "them", "i", "me", "we",
                "us", "you", "am", "anything", "something", "everything", "nothing",
                "anyone", "someone", "everyone", "anybody", "somebody", "everybody",
                "else", "problem", "problems", "time", "times", "way", "ways", "question",
                "questions", "thing", "things", "object", "objects", "stuff", "item",
                "items", "calories", "minutes", "hours", "days", "people's", "reason",
                "difference", "point", "chance", "need", "idea", "answer", "left", "right",
                # a verb in the "noun": a clause, not an object ("people can sit here")
                "can", "could", "do", "does", "did", "is", "are", "was", "were", "have",
                "has", "will", "would", "should", "sit", "fit", "live", "work"}

# -- saying things -------------------------------------------------------------------
_SIDE_SAID = {"ahead": "ahead of you", "left": "on your left", "right": "on your right",
              "behind": "behind you"}


def _where(s: Seen, height: bool = True) -> str:
    """'on your left, 2.0 m away' / 'overhead, 1.2 m away' / 'ahead of you, on the
    floor, 3.0 m away' (without `height`: 'ahead of you, 3.0 m away')."""
    said = height_said(s) if height else ""
    parts = [said] if said == "overhead" else [_SIDE_SAID[s.side]] + \
        ([said] if said else [])
    return ", ".join(parts + [f"{s.distance:.1f} m away"])


def _phrase(s: Seen) -> str:
    """The object's noun phrase without its state (a question about the state is
    answered in words of its own): "small red carbon bicycle"."""
    return " ".join([*(w for w in adjectives(s.obj, states=False) if not _is_state_value(w)),
                     s.obj.label.strip()])


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
    for key in STATE_KEYS:
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


MAX_LISTED = 6  # a listing names the nearest few, then "and N more"


def _listing(items: list[Seen]) -> str:
    phrases = [f"the {_phrase(s)}" for s in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        phrases.append(f"{len(items) - MAX_LISTED} more")
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _lookup(noun: str, scene: list[Seen]) -> list[Seen] | None:
    """The objects `noun` names, [] for none, None when this module cannot tell."""
    found, score = find_scored(noun, scene)
    return None if score == UNKNOWN else found


def _object_noun(noun: str) -> bool:
    """Whether `noun` could name a thing a detector sees: only those are denied ("is
    there a problem?", "where am I?", "how many things...?" are not about one)."""
    words = noun.split()
    return bool(words) and not set(words) & _NOT_OBJECTS


def _not_seen(kind: str, noun: str) -> Answer | None:
    if not _object_noun(noun):
        return None
    if _looks_plural(noun) or noun in IRREGULAR_PLURALS:
        return Answer(kind, f"I don't see any {noun} here.")
    return Answer(kind, f"I don't see {article(noun)} {noun} here.")


def _instances(items: list[Seen]) -> str:
    """'The lamp is on your left, 2.0 m away.' or, for several: 'There are two lamps:
    one on your left, 2.0 m away, and one ahead of you, 3.1 m away.'"""
    items = sorted(items, key=lambda s: s.distance)[:MAX_LISTED]
    if len(items) == 1:
        return _sentence(f"the {_phrase(items[0])} is {_where(items[0])}.")
    noun = items[0].obj.label.strip()
    if len({s.label for s in items}) > 1:
        return " ".join(_sentence(f"the {_phrase(s)} is {_where(s)}.") for s in items)
    # A height they share is said once ("two rugs on the floor: ..."): said for each,
    # twins at one distance would read as the same words twice.
    heights = {height_said(s) for s in items}
    shared = heights.pop() if len(heights) == 1 and "overhead" not in heights else ""
    parts = [f"{'the ' + _phrase(s) if _phrase(s) != noun else 'one'} "
             f"{_where(s, height=not shared)}" for s in items]
    return _sentence(f"there are {count_of(len(items), noun)}{' ' + shared if shared else ''}"
                     ": " + ", ".join(parts[:-1]) + f", and {parts[-1]}.")


def _exists(m: re.Match, scene: list[Seen], _) -> Answer | None:
    noun = clean(m.group("x"))
    found, score = find_scored(noun, scene)
    if score == UNKNOWN or not found and not _object_noun(noun):
        return None
    absent = "No, " + _not_seen("exists", noun).text if not found or score == 1 else ""
    if not found:
        return Answer("exists", absent)
    if score == 1:  # only its head noun: "a bed?" of a dog bed is not a yes
        return Answer("exists", f"{absent[:-len(' here.')]}, but " +
                      _instances(found)[0].lower() + _instances(found)[1:])
    return Answer("exists", "Yes. " + _instances(found))


def _looks_plural(noun: str) -> bool:
    return noun.endswith("s") and not noun.endswith("ss")


def _count_q(m: re.Match, scene: list[Seen], _) -> Answer | None:
    noun = clean(m.group("x"))
    found = _lookup(noun, scene)
    if found is None:
        return None
    if not found:  # "how many" asks in the plural: the noun as asked
        return Answer("count", f"There are no {noun} here.") if _object_noun(noun) else None
    label = found[0].obj.label.strip()
    if len({s.label for s in found}) > 1:
        return Answer("count", f"I see {len(found)}: {_listing(found)}.")
    verb = "is" if len(found) == 1 else "are"
    return Answer("count", f"There {verb} {count_of(len(found), label)}.")


_SIDES_ASKED = [("left", r"(?:on|to|at) (?:my|the) left|left of me|my left"),
                ("right", r"(?:on|to|at) (?:my|the) right|right of me|my right"),
                ("behind", r"behind (?:me|us)|at my back"),
                ("ahead", r"in front of (?:me|us)|ahead(?: of (?:me|us))?|straight ahead")]


def _side_listing(side: str) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer:
        # Overhead is no side: a smoke alarm above the wearer is not "on your left".
        there = [s for s in sorted(scene, key=lambda s: s.distance)
                 if s.side == side and not (above(s) and s.elevation >= OVERHEAD_DEG)]
        where = _SIDE_SAID[side]
        if not there:
            return Answer("side", f"Nothing is {where}.")
        return Answer("side", _sentence(f"{where}: {_listing(there)}."))
    return run


def _height_listing(which: str) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer:
        if which == "above":
            there = [s for s in scene if above(s)]
            where = "above you"
        elif which == "floor":
            there = [s for s in scene if on_the_floor(s)]
            where = "on the floor"
        else:
            there = [s for s in scene if below(s)]
            where = "below you"
        there.sort(key=lambda s: s.distance)
        if not there:
            return Answer("height", f"Nothing is {where}.")
        return Answer("height", _sentence(f"{where}: {_listing(there)}."))
    return run


def _where_q(m: re.Match, scene: list[Seen], _) -> Answer:
    """Where one or more objects are ("where is", "is it on my left or right?")."""
    noun = clean(m.group("x"))
    found = _lookup(noun, scene)
    if found is None:
        return None
    return Answer("where", _instances(found)) if found else _not_seen("where", noun)


def _compare(nearer: bool) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer | None:
        a, b = _lookup(m.group("a"), scene), _lookup(m.group("b"), scene)
        kind = "closer" if nearer else "farther"
        if a is None or b is None:
            return None
        for phrase, found in ((m.group("a"), a), (m.group("b"), b)):
            if not found:
                return _not_seen(kind, clean(phrase))
        first, second = min(a, key=lambda s: s.distance), min(b, key=lambda s: s.distance)
        if first.obj is second.obj:
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
    found = _lookup(noun, scene)
    if not found:
        return None if found is None else _not_seen("distance", noun)
    found.sort(key=lambda s: s.distance)
    if len(found) == 1:
        return Answer("distance", _sentence(f"the {_phrase(found[0])} is "
                                            f"{found[0].distance:.1f} m away."))
    return Answer("distance", _instances(found))


def _attribute(key: str) -> Callable:
    keys = {"colour": ("color", "colour"), "material": ("material",)}[key]

    def run(m: re.Match, scene: list[Seen], _) -> Answer | None:
        noun = clean(m.group("x"))
        found = _lookup(noun, scene)
        if not found:
            return None if found is None else _not_seen(key, noun)
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
                                      else f"the {label} {_where(s)}, is made of {value}."))
            else:
                said.append(_sentence(f"the {label} is {value}." if len(found) == 1
                                      else f"the {label} {_where(s)}, is {value}."))
        return Answer(key, " ".join(said))
    return run


def _state(m: re.Match, scene: list[Seen], _) -> Answer | None:
    noun, asked = clean(m.group("x")), m.group("state").strip().lower()
    found = _lookup(noun, scene)
    if not found:
        return None if found is None else _not_seen("state", noun)
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
    return Answer("state", " ".join(dict.fromkeys(said)))  # each sentence once


def _looking_at(m: re.Match, scene: list[Seen], gazed: pb.SceneObject | None) -> Answer:
    if gazed is not None:
        target = next((s for s in scene if s.obj.id == gazed.id), None)
        if target is not None:
            return Answer("looking", _sentence(f"you're looking at the {_phrase(target)}, "
                                               f"{target.distance:.1f} m away."))
    central = [s for s in scene if s.view_angle <= LOOK_CONE_DEG]
    if not central:
        return Answer("looking", "Nothing is straight ahead of you.")
    target = min(central, key=lambda s: (s.view_angle, s.distance))
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
    (_Q(rf"^how many {_X}(?: (?:are|is) there| (?:do|can) (?:you|i|we) see| (?:are|is) "
        rf"(?:in )?here| (?:are|is) (?:around|in (?:the|this) (?:room|place)))?$"), _count_q),
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
    # Before the exists kinds, which would read "anything on my left" as a noun.
    _KINDS.insert(0, (_Q(rf"^is there anything (?:{_words_re})$"), _side_listing(_side)))


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
    if scene is None or len(question) > MAX_QUESTION_CHARS:
        return None
    if any(o.label.strip() and not o.HasField("pose") for o in scene.objects):
        return None  # an object somewhere unknown: no count or denial can be sure
    text = _normalise(question)
    camera = scene.camera_pose
    everything = [seen(o, camera) for o in scene.objects if o.label.strip()
                  and o.HasField("pose")]
    for pattern, handler in _KINDS:
        m = pattern.match(text)
        if m:
            return handler(m, everything, gazed)
    return None

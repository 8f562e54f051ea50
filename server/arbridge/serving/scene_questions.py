"""Scene questions answered from the scene: the facts are computed, not guessed.

A wearer's everyday questions about the room ("is there a baby in here?", "how
many lamps are there?", "which is closer, the cello or the saxophone?") have
answers the scene already holds: labels, attributes and poses, seen from the
wearer's eyes. `answer()` recognises a question of a kind it knows, finds the
objects it names (plurals, synonyms, head nouns, attributes, sides, labels in
no lexicon), computes the answer in the wearer's frame (turned and pitched
cameras, height included) and says it as one plain sentence. The reply then
says that sentence (replies.py); a question of no known kind gets None and goes
to the model as before.

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from arbridge.serving.lexicon import names_of, plural
from arbridge.serving.scene_text import rotate_inverse
from arbridge.v1 import types_pb2 as pb

AHEAD_DEG = 20.0  # as scene_text: within this of straight ahead is "ahead"
ABOVE_DEG = 25.0  # this far above eye level (elevation) is "above you"
OVERHEAD_DEG = 60.0
BELOW_DEG = -25.0
FLOOR_M = 0.35  # an object's centre this near world Y 0 (Unity's floor) is "on the floor"
LOOK_CONE_DEG = 30.0  # what the wearer looks at: the most central object within this

_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten", "eleven", "twelve"]


@dataclass(frozen=True)
class Seen:
    """An object as the wearer sees it."""

    obj: pb.SceneObject
    azimuth: float  # degrees, 0 = straight ahead, + = right
    elevation: float  # degrees above eye level
    distance: float  # metres, straight line
    side: str  # "ahead", "left", "right", "behind"

    @property
    def label(self) -> str:
        return self.obj.label.strip().lower()


def seen(obj: pb.SceneObject, camera: pb.Pose) -> Seen:
    rel = (obj.pose.position.x - camera.position.x, obj.pose.position.y - camera.position.y,
           obj.pose.position.z - camera.position.z)
    x, y, z = rotate_inverse(camera.rotation, rel)
    azimuth = math.degrees(math.atan2(x, z))
    elevation = math.degrees(math.atan2(y, math.hypot(x, z)))
    if abs(azimuth) <= AHEAD_DEG:
        side = "ahead"
    elif abs(azimuth) > 135.0:
        side = "behind"
    else:
        side = "left" if azimuth < 0 else "right"
    return Seen(obj, azimuth, elevation, math.sqrt(x * x + y * y + z * z), side)


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


def _height(s: Seen) -> str:
    if s.elevation >= OVERHEAD_DEG:
        return "overhead"
    if s.elevation >= ABOVE_DEG:
        return "above you"
    if -FLOOR_M <= s.obj.pose.position.y <= FLOOR_M and s.elevation < 0:
        return "on the floor"  # lower still (down the stairs) is below the wearer
    if s.elevation <= BELOW_DEG:
        return "below you"
    return ""


def _where(s: Seen) -> str:
    """'on your left, 2.0 m away' / 'overhead, 1.2 m away' / 'ahead of you, on the
    floor, 3.0 m away'."""
    height = _height(s)
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


# -- finding what a question names -----------------------------------------------------
_DETERMINERS = r"(?:the|a|an|any|some|my|this|that|these|those|your)"
_TRAILING = re.compile(r"\s+(?:here|in here|in (?:the|this) (?:room|place)|around(?: here)?|"
                       r"nearby|near me|anywhere|at all|right now|now|for me|you can see|"
                       r"over there|there|in the scene|in front|in view)$")
_ORDINAL_SIDES = {"left": "left", "right": "right", "leftmost": "left", "rightmost": "right"}


def _clean(phrase: str) -> str:
    phrase = re.sub(r"[?.!,]+$", "", phrase.strip().lower())
    phrase = re.sub(rf"^(?:{_DETERMINERS}\s+)+", "", phrase)
    previous = None
    while previous != phrase:
        previous = phrase
        phrase = _TRAILING.sub("", phrase).strip()
    return phrase


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def _name_score(phrase_words: list[str], s: Seen) -> int:
    """How well the phrase names the object: 3 its whole label (or plural), 2 a
    synonym, 1 its head noun only, 0 not at all."""
    text = " " + " ".join(phrase_words) + " "
    label = " ".join(_words(s.label))
    if not label:
        return 0
    if f" {label} " in text or f" {' '.join(_words(plural(label)))} " in text:
        return 3
    names = {" ".join(_words(n)) for n in names_of(label)}
    head = label.rsplit(" ", 1)[-1]
    head_forms = {head, " ".join(_words(plural(head)))}
    if any(f" {n} " in text for n in names - head_forms):
        return 2
    if any(f" {n} " in text for n in head_forms):
        return 1
    return 0


def find(phrase: str, scene_seen: list[Seen]) -> list[Seen]:
    """The objects a phrase names ("the lamps", "the left lamp", "the red chair", "the
    closest chair"); several for a repeated label; [] when none is there."""
    return find_scored(phrase, scene_seen)[0]


def find_scored(phrase: str, scene_seen: list[Seen]) -> tuple[list[Seen], int]:
    """`find`, and how well the best named them (see _name_score)."""
    words = _words(_clean(phrase))
    if not words:
        return [], 0
    scored = [(s, _name_score(words, s)) for s in scene_seen]
    best = max((score for _, score in scored), default=0)
    if best == 0:
        return [], 0
    found = [s for s, score in scored if score == best]
    # Narrow repeated labels by the other words: attributes, sides, nearest/farthest.
    label_words = {w for s in found for w in _words(s.label)}
    label_words |= {w for s in found for n in names_of(s.label) for w in _words(n)}
    extra = [w for w in words if w not in label_words]
    for word in extra:
        attr = [s for s in found
                if word in {w for v in s.obj.attributes.values() for w in _words(v)}]
        side = [s for s in found if _ORDINAL_SIDES.get(word) == s.side]
        if attr:
            found = attr
        elif side:
            found = side
        elif word in ("nearest", "closest", "closer", "nearer"):
            found = [min(found, key=lambda s: s.distance)]
        elif word in ("farthest", "furthest", "farther", "further"):
            found = [max(found, key=lambda s: s.distance)]
    return found, best


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
    noun = _clean(m.group("x"))
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
    noun = _clean(m.group("x"))
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
    noun = _clean(m.group("x"))
    found = find(noun, scene)
    return Answer("where", _instances(found)) if found else _not_seen("where", noun)


def _compare(nearer: bool) -> Callable:
    def run(m: re.Match, scene: list[Seen], _) -> Answer | None:
        a, b = find(m.group("a"), scene), find(m.group("b"), scene)
        kind = "closer" if nearer else "farther"
        for phrase, found in ((m.group("a"), a), (m.group("b"), b)):
            if not found:
                return _not_seen(kind, _clean(phrase))
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
    noun = _clean(m.group("x"))
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
        noun = _clean(m.group("x"))
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
    noun, asked = _clean(m.group("x")), m.group("state").strip().lower()
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

"""Scene actions: the app's action definitions -> a grammar, a prompt, and ActionCalls.

A reply that may act is text with calls in square brackets, e.g.

    [highlight(red chair)] The red chair is glowing.

Objects are named as the scene text names them ("red chair"), not by id: a small
model copies a name from the prompt reliably, an opaque id it mostly does not
(SmolLM2-135M, 30 scenes of 4 objects: 30/30 right by name, 10/30 by id, same
prompt). The grammar (llguidance, engine/grammar.py) lets an OBJECT argument be
only one of the current scene's names, each name is one object's, and the call
reports that object's id: an action cannot name an object that is not there.
Arguments are positional, typed by their parameter; text may not hold "[" (it
opens a call).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from arbridge.serving.grounding import utf16_len
from arbridge.serving.scene_text import noun_phrase
from arbridge.serving.validation import InvalidField, Unsupported
from arbridge.serving.wearer_frame import place
from arbridge.v1 import types_pb2 as pb

MAX_STRING_ARG_CHARS = 60
# An argument's text by its parameter's type: the grammar's lexeme and the parser's
# pattern both (a free string holds no quote, "]", backslash or control character, so
# it reads back as JSON whatever the model wrote).
PATTERNS = {
    pb.PARAMETER_TYPE_STRING: r'"[^"\]\\\x00-\x1f]{0,' + str(MAX_STRING_ARG_CHARS) + '}"',
    pb.PARAMETER_TYPE_NUMBER: r"-?[0-9]{1,9}(\.[0-9]{1,6})?",
    pb.PARAMETER_TYPE_INTEGER: r"-?[0-9]{1,12}",
    pb.PARAMETER_TYPE_BOOLEAN: r"(true|false)",
}

# The worked example's objects (not the scene's: the example only shows the syntax).
_EXAMPLE_OBJECTS = ("green mug", "white box")
# Where a description names its object ("make an object glow"): the example's goes there.
_OBJECT_WORDS = re.compile(r"\b(an|a|the|some) (object|thing|item)\b", re.IGNORECASE)


def object_names(scene: pb.SceneFeatures) -> dict[str, str]:
    """A name per object, unique in the scene: its noun phrase, else the phrase and
    its side ("chair to the left"), else the phrase and its id. name -> object id."""
    phrase = {obj.id: _plain(noun_phrase(obj).lower()) for obj in scene.objects}
    count = Counter(phrase.values())
    sided = {}
    for obj in scene.objects:
        name = phrase[obj.id]
        if count[name] > 1 and obj.HasField("pose"):
            name = f"{name} {place(obj.pose, scene.camera_pose).direction}"
        sided[obj.id] = name
    count = Counter(sided.values())
    out: dict[str, str] = {}
    for i, obj in enumerate(scene.objects):
        name = sided[obj.id]
        if count[name] > 1 or not name:
            name = _plain(f"{phrase[obj.id]} {obj.id}")
        if name in out or not name:  # ids alike once cleaned: numbered
            name = f"{name} {i + 1}".strip()
        out[name] = obj.id
    return out


def _plain(name: str) -> str:
    """Without the characters the call syntax uses, nor unprintable ones (DEL: the
    grammar's lexer refuses them)."""
    name = "".join(c if c.isprintable() else " " for c in name)
    return " ".join(re.sub(r'[\[\]()",\\]', " ", name).split())


@dataclass
class ActionSet:
    """One reply's actions: what it may call, in `mode`, on the objects named `names`."""

    definitions: list[pb.ActionDefinition]
    mode: int  # pb.ActionMode
    names: dict[str, str]  # object name -> id
    callable: list[pb.ActionDefinition] = field(init=False)

    def __post_init__(self):
        # An action with an OBJECT parameter cannot be called on an empty scene.
        self.callable = [d for d in self.definitions
                         if self.names or all(p.type != pb.PARAMETER_TYPE_OBJECT
                                              for p in d.parameters)]

    @property
    def active(self) -> bool:
        return self.mode != pb.ACTION_MODE_NONE and bool(self.callable)

    # -- grammar -------------------------------------------------------------------
    def lark(self) -> str:
        """The reply's grammar in llguidance's Lark dialect."""
        if self.mode == pb.ACTION_MODE_REQUIRED:
            lines = ["start: action (action)* text (action text)*"]
        else:
            lines = ["start: text (action text)*"]
        lines += ['text: /[^\\[]*/', 'action: "[" call "]"',
                  "call: " + " | ".join(f"call_{i}" for i in range(len(self.callable)))]
        for i, definition in enumerate(self.callable):
            args = ' ", " '.join(self._argument(p) for p in definition.parameters)
            lines.append(f'call_{i}: {json.dumps(definition.name + "(")} {args} ")"'
                         if args else f'call_{i}: {json.dumps(definition.name + "()")}')
        lines.append("OBJECT: " + " | ".join(json.dumps(n, ensure_ascii=False)
                                             for n in sorted(self.names))
                     if self.names else 'OBJECT: "-"')
        return "\n".join(lines) + "\n"

    @staticmethod
    def _argument(p: pb.ActionParameter) -> str:
        if p.type == pb.PARAMETER_TYPE_OBJECT:
            return "OBJECT"
        if p.type == pb.PARAMETER_TYPE_STRING and p.choices:
            # The choice as written ("café", not "caf\u00e9"), in quotes.
            return "(" + " | ".join(json.dumps(f'"{c}"', ensure_ascii=False)
                                    for c in p.choices) + ")"
        return f"/{PATTERNS[p.type]}/"

    # -- prompt --------------------------------------------------------------------
    def instructions(self) -> str:
        """The actions in the system prompt, before the scene (the same for a session,
        so the prefix cache keeps them)."""
        lines = ["You can act in the scene with these actions:"]
        for d in self.callable:
            params = ", ".join(p.name for p in d.parameters)
            about = f": {d.description.strip()}" if d.description.strip() else ""
            lines.append(f"- {d.name}({params}){about}")
        example = self._example_call(self.callable[0], 0)
        lines.append(f"To act, write the action in square brackets, naming objects as the "
                     f"scene names them, e.g. [{example}], then say what you did.")
        if self.mode == pb.ACTION_MODE_REQUIRED:
            lines.append("Start your reply with an action.")
        return "\n".join(lines)

    def examples(self) -> list[pb.DialogueTurn]:
        """Worked turns for the first two actions: each asked for by its name, the first
        also with a pointing gesture ("this", as the referent hint words it), then each
        asked for in the words of its description ("make an object glow" -> "Make the
        green mug glow."), the order mixed: a small model copies the syntax from a turn
        far more reliably than from a description, and picks the action a request means
        from its description's words only once it has seen that done."""
        asks: list[tuple[str, str]] = []
        described: list[tuple[str, str]] = []
        for i, d in enumerate(self.callable[:2]):
            call = f"[{self._example_call(d, i)}] Okay, done."
            obj = _EXAMPLE_OBJECTS[i % len(_EXAMPLE_OBJECTS)]
            words = d.name.replace("_", " ")
            takes_object = any(p.type == pb.PARAMETER_TYPE_OBJECT for p in d.parameters)
            asks.append((f"Please {words} the {obj}." if takes_object else f"Please {words}.",
                         call))
            if i == 0 and takes_object:
                asks.append((f"Please {words} this.\n(I am pointing at the {obj}, ahead of me.)",
                             call))
            about = d.description.strip().rstrip(".")
            if about and not takes_object:
                described.append((about[0].upper() + about[1:] + ".", call))
            elif about and _OBJECT_WORDS.search(about):
                phrase = _OBJECT_WORDS.sub(f"the {obj}", about, count=1)
                described.append((phrase[0].upper() + phrase[1:] + ".", call))
        ordered = asks[:1] + described[1:] + asks[1:] + described[:1]
        turns = []
        for ask, reply in ordered:
            turns += [pb.DialogueTurn(role=pb.ROLE_USER, text=ask),
                      pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text=reply)]
        return turns

    @staticmethod
    def _example_call(d: pb.ActionDefinition, i: int) -> str:
        values = []
        for p in d.parameters:
            if p.type == pb.PARAMETER_TYPE_OBJECT:
                values.append(_EXAMPLE_OBJECTS[i % len(_EXAMPLE_OBJECTS)])
            elif p.type == pb.PARAMETER_TYPE_STRING:
                values.append(f'"{p.choices[0] if p.choices else "note"}"')
            else:
                values.append({pb.PARAMETER_TYPE_NUMBER: "1.5", pb.PARAMETER_TYPE_INTEGER: "2",
                               pb.PARAMETER_TYPE_BOOLEAN: "true"}[p.type])
        return f"{d.name}({', '.join(values)})"

    # -- output --------------------------------------------------------------------
    def parse(self, call: str, sequence_index: int, text_offset: int) -> pb.ActionCall | None:
        """'highlight(red chair)' -> its ActionCall; None for a call the grammar would
        not allow (a reply cut short mid-call never gets here)."""
        for d in self.callable:
            if not call.startswith(d.name + "(") or not call.endswith(")"):
                continue
            rest = call[len(d.name) + 1:-1]
            out = pb.ActionCall(sequence_index=sequence_index, name=d.name,
                                text_offset=text_offset)
            for k, p in enumerate(d.parameters):
                if k:
                    if not rest.startswith(", "):
                        break
                    rest = rest[2:]
                taken = self._take(p, rest, out)
                if taken is None:
                    break
                rest = rest[taken:]
            else:
                if not rest:
                    return out
        return None

    def _take(self, p: pb.ActionParameter, rest: str, out: pb.ActionCall) -> int | None:
        """Reads `p`'s argument off the front of `rest` into `out`; its length."""
        arg = out.arguments.add(name=p.name)
        if p.type == pb.PARAMETER_TYPE_OBJECT:
            # Longest name first: "red chair" before "red chair to the left" is a prefix.
            for name in sorted(self.names, key=len, reverse=True):
                if rest.startswith(name):
                    arg.object_id = self.names[name]
                    out.object_ids.append(arg.object_id)
                    return len(name)
            return None
        if p.type == pb.PARAMETER_TYPE_STRING and p.choices:
            choice = next((c for c in sorted(p.choices, key=len, reverse=True)
                           if rest.startswith(f'"{c}"')), None)
            if choice is None:
                return None
            arg.string_value = choice
            return len(choice) + 2
        m = re.match(PATTERNS[p.type], rest)
        if m is None:
            return None
        value = m.group(0)
        if p.type == pb.PARAMETER_TYPE_STRING:
            arg.string_value = value[1:-1]  # nothing in it needs unescaping
        elif p.type == pb.PARAMETER_TYPE_NUMBER:
            arg.number_value = float(value)
        elif p.type == pb.PARAMETER_TYPE_INTEGER:
            arg.integer_value = int(value)
        else:
            arg.bool_value = value == "true"
        return len(value)


class ActionSplitter:
    """A sequence's streamed text -> spoken text and ActionCalls, in order: a call is
    held until its "]" arrives, then emitted whole; the text around it streams on."""

    def __init__(self, actions: ActionSet, sequence_index: int):
        self.actions = actions
        self.index = sequence_index
        self._call: list[str] | None = None  # inside "[...", the call so far
        self._spoken = 0  # UTF-16 length of the text let through (the calls' offsets)
        self._line_start = True  # nothing spoken yet, or it ended in whitespace
        self._after_call = False
        self.calls: list[pb.ActionCall] = []

    def push(self, text: str) -> list[str | pb.ActionCall]:
        pieces: list[str | pb.ActionCall] = []
        while text:
            if self._call is None:
                head, bracket, text = text.partition("[")
                if head and self._after_call and self._line_start:
                    head = head.lstrip(" ")  # "[highlight(lamp)] Done": no space before it
                if head:
                    pieces.append(head)
                    self._after_call = False
                    self._spoken += utf16_len(head)
                    self._line_start = head[-1].isspace()
                if bracket:
                    self._call = []
                continue
            body, bracket, text = text.partition("]")
            self._call.append(body)
            if bracket:
                call = self.actions.parse("".join(self._call), self.index, self._spoken)
                self._call = None
                self._after_call = True
                if call is not None:
                    self.calls.append(call)
                    pieces.append(call)
        return pieces


def turn_actions(definitions: list[pb.ActionDefinition], mode: int,
                 scene: pb.SceneFeatures | None, field: str) -> ActionSet | None:
    """What a turn's reply may call in `mode` (its own, else the session's), or None
    when it may call nothing; `field` names the turn's action_mode in errors."""
    if mode == pb.ACTION_MODE_REQUIRED and not definitions:
        raise InvalidField(field, "is REQUIRED but the session declares no actions")
    if not definitions or mode == pb.ACTION_MODE_NONE:
        return None
    actions = ActionSet(definitions, mode, object_names(scene or pb.SceneFeatures()))
    if actions.active:
        return actions
    if mode == pb.ACTION_MODE_REQUIRED:
        raise Unsupported(field, "is REQUIRED but no action can be called: each needs an "
                                 "object and the scene has none")
    return None

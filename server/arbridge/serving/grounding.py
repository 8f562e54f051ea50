"""Which scene objects a generated text mentions, and where.

Offsets are in UTF-16 code units because that is how C# (Unity) and
JavaScript index strings; for text without astral characters (emoji) they
equal Python's character offsets.
"""

from __future__ import annotations

import re

from arbridge.v1 import types_pb2 as pb


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_offset(text: str, index: int) -> int:
    return utf16_len(text[:index])


def ground(text: str, objects) -> list[pb.GroundedSpan]:
    """Every whole-word, case-insensitive mention of an object's label.

    A plural "s" is accepted ("chairs" mentions "chair"). When several objects
    share a label, each mention is attributed to all of them: the text cannot
    say which one it meant.
    """
    spans: list[pb.GroundedSpan] = []
    for obj in objects:
        label = obj.label.strip()
        if not label:
            continue
        words = r"\s+".join(re.escape(w) for w in label.split())
        pattern = re.compile(rf"(?<!\w){words}(?:s|es)?(?!\w)", re.IGNORECASE)
        for m in pattern.finditer(text):
            spans.append(pb.GroundedSpan(object_id=obj.id,
                                         start=_utf16_offset(text, m.start()),
                                         end=_utf16_offset(text, m.end())))
    spans.sort(key=lambda s: (s.start, s.object_id))
    return spans


def planned(text: str, mentions) -> list[pb.GroundedSpan]:
    """The spans a composed caption (caption_plan.py) knows it names: "a red one" is
    the red chair, "two chairs" both."""
    return sorted((pb.GroundedSpan(object_id=object_id, start=_utf16_offset(text, m.start),
                                   end=_utf16_offset(text, m.end))
                   for m in mentions for object_id in m.object_ids),
                  key=lambda s: (s.start, s.object_id))

"""Hypothesis strategies for any protobuf message, built from its descriptor.

Values lean towards what breaks servers: NaN and infinities, unknown enum
numbers, empty and very long strings, odd Unicode, deep nesting, maps and
oneofs with several members set.
"""

from __future__ import annotations

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
MAX_DEPTH = 4

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}

_WORDS = st.sampled_from(["chair", "red", "table", "lamp", "", " ", "\n", "🪑", "椅子",
                          "Describe the room.", "</s>", "<|im_end|>", "\x00"])
_TEXT = st.one_of(
    _WORDS,
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    # Past every length limit (labels 200, turns 20,000, prompts 200,000).
    st.integers(150, 250_000).map(lambda n: "ab " * (n // 3)),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.one_of(st.integers(0, 16), st.integers(lo, hi))
    if t == F.TYPE_DOUBLE:
        return st.one_of(st.floats(-5, 5), st.floats())
    if t == F.TYPE_FLOAT:
        return st.one_of(st.floats(-5, 5, width=32), st.floats(width=32))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return _TEXT
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1000))
    raise TypeError(f"unhandled field type {t} for {field.full_name}")


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _is_repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6.32; `label` before
    return flag if flag is not None else field.label == F.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == F.TYPE_MESSAGE
            and field.message_type.GetOptions().map_entry)


def _repeated(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if _is_map(field):
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return st.dictionaries(_scalar(key), _value(value, depth), max_size=4)
    element = _value(field, depth)
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        # Feature vectors: usually short, sometimes past the value limit.
        return st.one_of(st.lists(element, max_size=8),
                         st.integers(4000, 5000).map(lambda n: [0.5] * n))
    return st.lists(element, max_size=4)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    cls = message_factory.GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    optional = {}
    for field in descriptor.fields:
        if _is_repeated(field):
            optional[field.name] = st.deferred(lambda f=field: _repeated(f, depth))
        else:
            optional[field.name] = st.deferred(lambda f=field: _value(f, depth))

    def build(values: dict):
        msg = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(msg, name) if _is_repeated(field) or \
                field.type == F.TYPE_MESSAGE else None
            if _is_map(field):
                for k, v in value.items():
                    if field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif _is_repeated(field):
                target.extend(value)
            elif field.type == F.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=optional).map(build)

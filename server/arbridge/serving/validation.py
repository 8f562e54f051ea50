"""Request checks: every bad field becomes an error that names it.

Validation happens before anything is queued, so a bad request costs nothing
and never reaches the model. `InvalidField` maps to INVALID_ARGUMENT,
`Unsupported` to FAILED_PRECONDITION (valid, but this server can't serve it).

Each function checks one message and raises on the first bad field; turning a
checked request into the values the servicer works with is serving/calls.py's.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import NamedTuple

from arbridge.config import Settings
from arbridge.generation import SamplingConfig
from arbridge.v1 import types_pb2 as pb


class InvalidField(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unsupported(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


MAX_NO_REPEAT_NGRAM = 64
MAX_RESPONSE_FORMAT_CHARS = 16384
MAX_ACTIONS = 32
MAX_ACTION_PARAMETERS = 8
MAX_ACTION_CHOICES = 32
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RAY_SOURCES = (pb.RAY_SOURCE_GAZE, pb.RAY_SOURCE_LEFT_HAND, pb.RAY_SOURCE_RIGHT_HAND)


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidField(field, f"must be a finite number, got {value}")
    return value


class CheckedSampling(NamedTuple):
    """SamplingParams, checked: how to decode, and the rules the servicer applies to
    the reply's text (stop strings) or compiles for it (format, scene constraint)."""

    config: SamplingConfig
    stop: tuple[str, ...]
    response_format: tuple[str, str] | None  # (kind, source)
    scene_constraint: float | None  # None = the server's default


def sampling(params: pb.SamplingParams, settings: Settings, field: str = "sampling",
             ignore_eos: bool = False) -> CheckedSampling:
    max_new = params.max_new_tokens or settings.default_max_new_tokens
    if max_new > settings.max_new_tokens_limit:
        raise InvalidField(f"{field}.max_new_tokens",
                           f"{max_new} is above this server's limit of "
                           f"{settings.max_new_tokens_limit}")
    temperature = _finite(params.temperature, f"{field}.temperature")
    if not 0.0 <= temperature <= settings.max_temperature:
        raise InvalidField(f"{field}.temperature", f"must be in [0, {settings.max_temperature:g}]"
                                                   f" (0 = greedy), got {temperature}")
    top_p = _finite(params.top_p, f"{field}.top_p")
    if top_p == 0.0:
        top_p = 1.0
    if not 0.0 < top_p <= 1.0:
        raise InvalidField(f"{field}.top_p", f"must be in (0, 1] (0 = off), got {top_p}")
    penalty = _finite(params.repetition_penalty, f"{field}.repetition_penalty")
    if penalty == 0.0:
        penalty = 1.0
    if penalty < 0.0:
        raise InvalidField(f"{field}.repetition_penalty", f"must be > 0 (0 = off), got {penalty}")
    n = params.num_return_sequences or 1
    if n > settings.max_num_return_sequences:
        raise InvalidField(f"{field}.num_return_sequences",
                           f"{n} is above this server's limit of "
                           f"{settings.max_num_return_sequences}")
    if len(params.stop) > settings.max_stop_strings:
        raise InvalidField(f"{field}.stop",
                           f"{len(params.stop)} strings; at most {settings.max_stop_strings}")
    for i, s in enumerate(params.stop):
        if not s:
            raise InvalidField(f"{field}.stop[{i}]", "must not be empty")
        if len(s) > settings.max_stop_string_chars:
            raise InvalidField(f"{field}.stop[{i}]",
                               f"longer than {settings.max_stop_string_chars} characters")
    constraint = None
    if params.HasField("scene_constraint"):
        constraint = _finite(params.scene_constraint, f"{field}.scene_constraint")
        if constraint < 0:
            raise InvalidField(f"{field}.scene_constraint", f"must be >= 0 (0 = off), got "
                                                            f"{constraint}")
    if params.no_repeat_ngram > MAX_NO_REPEAT_NGRAM:
        raise InvalidField(f"{field}.no_repeat_ngram",
                           f"at most {MAX_NO_REPEAT_NGRAM}, got {params.no_repeat_ngram}")
    seed = params.seed if params.HasField("seed") else secrets.randbits(63)
    config = SamplingConfig(
        max_new_tokens=max_new, temperature=temperature, top_k=params.top_k, top_p=top_p,
        repetition_penalty=penalty, seed=seed, num_return_sequences=n,
        logprobs=params.logprobs, ignore_eos=ignore_eos, no_repeat_ngram=params.no_repeat_ngram)
    return CheckedSampling(config, tuple(params.stop),
                           response_format(params.response_format, f"{field}.response_format"),
                           constraint)


def response_format(fmt: pb.ResponseFormat, field: str) -> tuple[str, str] | None:
    """(kind, source) of the reply's required shape, or None; the grammar library's
    own check (a schema it cannot compile) follows in serving/structured.py."""
    kind = fmt.WhichOneof("format")
    if kind is None:
        return None
    source = getattr(fmt, kind)
    if not source.strip():
        raise InvalidField(f"{field}.{kind}", "must not be empty")
    if len(source) > MAX_RESPONSE_FORMAT_CHARS:
        raise InvalidField(f"{field}.{kind}", f"{len(source)} characters; at most "
                                              f"{MAX_RESPONSE_FORMAT_CHARS}")
    if kind == "json_schema":
        try:
            schema = json.loads(source)
        except RecursionError as exc:
            raise InvalidField(f"{field}.json_schema", "is nested too deeply") from exc
        except ValueError as exc:
            raise InvalidField(f"{field}.json_schema", f"is not JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise InvalidField(f"{field}.json_schema", "must be a JSON object (a schema)")
    return kind, source


def rays(items, field: str) -> None:
    sources = set()
    for i, ray in enumerate(items):
        f = f"{field}[{i}]"
        if ray.source not in _RAY_SOURCES:
            raise InvalidField(f"{f}.source", "must be GAZE, LEFT_HAND or RIGHT_HAND")
        if ray.source in sources:
            raise InvalidField(f"{f}.source", "a second ray of the same source")
        sources.add(ray.source)
        _vec3(ray.origin, f"{f}.origin")
        _vec3(ray.direction, f"{f}.direction")
        d = ray.direction
        if math.sqrt(d.x * d.x + d.y * d.y + d.z * d.z) < 1e-6:
            raise InvalidField(f"{f}.direction", "must not be zero: a ray needs a direction")


def action_definitions(definitions, settings: Settings, field: str) -> None:
    if len(definitions) > MAX_ACTIONS:
        raise InvalidField(field, f"{len(definitions)} actions; at most {MAX_ACTIONS}")
    names = set()
    for i, d in enumerate(definitions):
        f = f"{field}[{i}]"
        if not _IDENTIFIER.fullmatch(d.name):
            raise InvalidField(f"{f}.name", "must be an identifier (letters, digits, _; "
                                            "not starting with a digit; at most 64)")
        if d.name in names:
            raise InvalidField(f"{f}.name", f"{d.name!r} is declared twice")
        names.add(d.name)
        if len(d.description) > settings.max_label_chars:
            raise InvalidField(f"{f}.description",
                               f"longer than {settings.max_label_chars} characters")
        if len(d.parameters) > MAX_ACTION_PARAMETERS:
            raise InvalidField(f"{f}.parameters", f"{len(d.parameters)} parameters; at "
                                                  f"most {MAX_ACTION_PARAMETERS}")
        params = set()
        for j, p in enumerate(d.parameters):
            action_parameter(p, settings, f"{f}.parameters[{j}]", params)


def action_parameter(p: pb.ActionParameter, settings: Settings, f: str, names: set) -> None:
    if not _IDENTIFIER.fullmatch(p.name):
        raise InvalidField(f"{f}.name", "must be an identifier")
    if p.name in names:
        raise InvalidField(f"{f}.name", f"{p.name!r} is declared twice")
    names.add(p.name)
    if not pb.PARAMETER_TYPE_STRING <= p.type <= pb.PARAMETER_TYPE_OBJECT:
        raise InvalidField(f"{f}.type", "must be STRING, NUMBER, INTEGER, BOOLEAN or OBJECT")
    if len(p.description) > settings.max_label_chars:
        raise InvalidField(f"{f}.description",
                           f"longer than {settings.max_label_chars} characters")
    if p.choices and p.type != pb.PARAMETER_TYPE_STRING:
        raise InvalidField(f"{f}.choices", "only a STRING parameter has choices")
    if len(p.choices) > MAX_ACTION_CHOICES:
        raise InvalidField(f"{f}.choices", f"at most {MAX_ACTION_CHOICES}")
    for k, choice in enumerate(p.choices):
        if not choice or len(choice) > 60 or re.search(r'["\]\\]', choice) or \
                not choice.isprintable():
            raise InvalidField(f"{f}.choices[{k}]", 'must be 1-60 characters without ", ], '
                                                   "\\ or control characters")


def action_mode(mode: int, field: str) -> None:
    if mode not in pb.ActionMode.values():
        raise InvalidField(field, f"unknown value {mode}")


def _vec3(v: pb.Vec3, field: str) -> None:
    for axis in ("x", "y", "z"):
        _finite(getattr(v, axis), f"{field}.{axis}")


def _pose(p: pb.Pose, field: str) -> None:
    _vec3(p.position, f"{field}.position")
    for axis in ("x", "y", "z", "w"):
        _finite(getattr(p.rotation, axis), f"{field}.rotation.{axis}")


def _unit_interval(value: float, field: str) -> None:
    _finite(value, field)
    if not 0.0 <= value <= 1.0:
        raise InvalidField(field, f"must be in [0, 1], got {value}")


def feature_vector(fv: pb.FeatureVector, settings: Settings, field: str,
                   encoders: dict[str, int]) -> None:
    """Shape and value checks against the loaded projectors (`encoders`: name ->
    input size). No projector for the encoder: FAILED_PRECONDITION."""
    if not fv.encoder:
        raise InvalidField(f"{field}.encoder", "must name the encoder")
    if len(fv.encoder) > settings.max_label_chars:
        raise InvalidField(f"{field}.encoder",
                           f"longer than {settings.max_label_chars} characters")
    if len(fv.values) > settings.max_feature_values:
        raise InvalidField(f"{field}.values", f"{len(fv.values)} values; at most "
                                              f"{settings.max_feature_values}")
    if fv.dims != len(fv.values):
        raise InvalidField(f"{field}.dims", f"is {fv.dims} but values has {len(fv.values)}")
    for i, v in enumerate(fv.values):
        if not math.isfinite(v):
            raise InvalidField(f"{field}.values[{i}]", f"must be finite, got {v}")
    # Silently ignoring features would mislead the client: refuse instead.
    if fv.encoder not in encoders:
        raise Unsupported(f"{field}.encoder",
                          f"no projector is loaded for encoder '{fv.encoder}'")
    if fv.dims != encoders[fv.encoder]:
        raise InvalidField(f"{field}.dims", f"the projector for '{fv.encoder}' takes "
                                            f"{encoders[fv.encoder]} values, got {fv.dims}")


def scene(s: pb.SceneFeatures, settings: Settings, field: str = "scene",
          encoders: dict[str, int] | None = None) -> None:
    if len(s.objects) > settings.max_scene_objects:
        raise InvalidField(f"{field}.objects",
                           f"{len(s.objects)} objects; at most {settings.max_scene_objects}")
    _pose(s.camera_pose, f"{field}.camera_pose")
    for i, obj in enumerate(s.objects):
        scene_object(obj, settings, f"{field}.objects[{i}]")
    _location_hint(s.location_hint, settings, f"{field}.location_hint")
    rays(s.rays, f"{field}.rays")
    for i, fv in enumerate(s.image_features):
        feature_vector(fv, settings, f"{field}.image_features[{i}]", encoders or {})


def scene_object(obj: pb.SceneObject, settings: Settings, f: str) -> None:
    _object_id(obj.id, settings, f"{f}.id")
    if not obj.label.strip():
        raise InvalidField(f"{f}.label", "must not be empty")
    if len(obj.label) > settings.max_label_chars:
        raise InvalidField(f"{f}.label",
                           f"longer than {settings.max_label_chars} characters")
    _unit_interval(obj.confidence, f"{f}.confidence")
    _pose(obj.pose, f"{f}.pose")
    _vec3(obj.extents, f"{f}.extents")
    for axis in ("x", "y", "z"):
        if getattr(obj.extents, axis) < 0:
            raise InvalidField(f"{f}.extents.{axis}", "must be >= 0")
    if len(obj.attributes) > settings.max_object_attributes:
        raise InvalidField(f"{f}.attributes", f"{len(obj.attributes)} attributes; at most "
                                              f"{settings.max_object_attributes}")
    for key, value in obj.attributes.items():
        if len(key) > settings.max_label_chars or len(value) > settings.max_label_chars:
            raise InvalidField(f"{f}.attributes[{key[:40]!r}]", "keys and values are limited "
                               f"to {settings.max_label_chars} chars")


def _object_id(object_id: str, settings: Settings, field: str) -> None:
    if len(object_id) > settings.max_object_id_chars:
        raise InvalidField(field, f"{len(object_id)} characters; at most "
                                  f"{settings.max_object_id_chars}")


def _location_hint(hint: str, settings: Settings, field: str) -> None:
    if len(hint) > settings.max_label_chars:
        raise InvalidField(field, f"longer than {settings.max_label_chars} characters")


def scene_delta(base: pb.SceneFeatures, delta: pb.SceneDelta, settings: Settings,
                field: str) -> None:
    """`delta` can apply to `base`: its objects are checked, its ids match."""
    present = {obj.id for obj in base.objects}
    removed = set()
    for i, object_id in enumerate(delta.remove_ids):
        _object_id(object_id, settings, f"{field}.remove_ids[{i}]")
        if object_id not in present:
            raise InvalidField(f"{field}.remove_ids[{i}]",
                               f"no object {object_id[:80]!r} in the session's scene")
        removed.add(object_id)
    upserted = set()
    for i, obj in enumerate(delta.upsert):
        if not obj.id:
            raise InvalidField(f"{field}.upsert[{i}].id",
                               "is required: changes find their object by id")
        if obj.id in removed:
            raise InvalidField(f"{field}.upsert[{i}].id",
                               f"{obj.id[:80]!r} is also in remove_ids")
        scene_object(obj, settings, f"{field}.upsert[{i}]")
        upserted.add(obj.id)
    added = len(upserted - present)
    if len(base.objects) - len(removed) + added > settings.max_scene_objects:
        raise InvalidField(f"{field}.upsert", f"the scene would hold "
                           f"{len(base.objects) - len(removed) + added} objects; at most "
                           f"{settings.max_scene_objects}")
    if delta.HasField("camera_pose"):
        _pose(delta.camera_pose, f"{field}.camera_pose")
    _location_hint(delta.location_hint, settings, f"{field}.location_hint")


def audio(a: pb.AudioFeatures, settings: Settings, field: str = "audio",
          encoders: dict[str, int] | None = None) -> None:
    _unit_interval(a.confidence, f"{field}.confidence")
    if len(a.transcript) > settings.max_turn_chars:
        raise InvalidField(f"{field}.transcript",
                           f"longer than {settings.max_turn_chars} characters")
    if a.HasField("embedding"):
        feature_vector(a.embedding, settings, f"{field}.embedding", encoders or {})


def dialogue(turns, settings: Settings, field: str = "history") -> None:
    if len(turns) > settings.max_dialogue_turns:
        raise InvalidField(field, f"{len(turns)} turns; at most {settings.max_dialogue_turns}")
    for i, turn in enumerate(turns):
        if turn.role not in (pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_SYSTEM):
            name = "ROLE_UNSPECIFIED" if turn.role == 0 else f"unknown value {turn.role}"
            raise InvalidField(f"{field}[{i}].role", f"must be USER, ASSISTANT or SYSTEM, "
                                                     f"got {name}")
        if len(turn.text) > settings.max_turn_chars:
            raise InvalidField(f"{field}[{i}].text",
                               f"longer than {settings.max_turn_chars} characters")


def prompt_text(text: str, settings: Settings, field: str = "prompt") -> None:
    if not text:
        raise InvalidField(field, "must not be empty")
    if len(text) > settings.max_prompt_chars:
        raise InvalidField(field, f"{len(text)} characters; at most {settings.max_prompt_chars}")

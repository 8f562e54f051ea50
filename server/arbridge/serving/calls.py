"""Checked calls: each request, once validated, as one typed spec.

`CallBuilder` runs validation.py's checks over a request and builds what the
checks do not: the scene a delta makes, the dialogue a ConverseStart begins,
the objects a turn's rays point at, the actions a reply may call. The spec it
returns travels unchanged in shape from the handler to the reply's last
Completion: how to decode (`sampling`), the rules for the reply's text, and
what its Completions report (grounding, scene version, referents, calls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from arbridge.backends import Backend
from arbridge.config import Settings
from arbridge.generation import SamplingConfig
from arbridge.serving import scene_delta, validation
from arbridge.serving.actions import ActionSet, turn_actions
from arbridge.serving.caption_plan import CaptionPlan
from arbridge.serving.dialogue import DialogueState
from arbridge.serving.referents import (
    current_rays,
    gazed_object,
    resolve_all,
    resolve_deixis,
)
from arbridge.serving.scene_questions import answer as answer_from_scene
from arbridge.serving.validation import InvalidField, Unsupported
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

Features = list[tuple[str, list[float]]]  # (encoder, vector), in prompt order


@dataclass(kw_only=True)
class ReplySpec:
    """What one reply needs from its request, from the handler to its last Completion."""

    sampling: SamplingConfig
    sampling_field: str = "sampling"  # names the request's SamplingParams in errors
    prompt_field: str = "prompt"  # what to shorten when the prompt does not fit
    stop: tuple[str, ...] = ()
    response_format: tuple[str, str] | None = None  # (kind, source), compiled to a grammar
    scene_constraint: float | None = None  # asked for; None = the server's default
    max_sentences: int = 0  # set with the reply's rules (captions end after a few)
    scene: pb.SceneFeatures | None = None  # Completions are grounded in its objects
    features: Features = field(default_factory=list)  # dense features, prompt order
    referents: list[pb.Referent] = field(default_factory=list)  # what the rays point at
    actions: ActionSet | None = None  # what the reply may call, when it may
    # The reply's words when the scene says them itself (scene_questions.py answers,
    # caption_plan.py captions), and their tokens when the engine speaks them as they
    # are (ReplyFactory decides; the prompt then needs no hint).
    scene_answer: str | None = None
    forced_ids: tuple[int, ...] | None = None
    caption_plan: CaptionPlan | None = None  # its mentions ground the caption
    caption: bool = False  # a scene caption (its own rules and ending)
    continues_prompt: bool = False  # the reply continues the prompt's text (Generate)
    arrived: float = field(default_factory=time.perf_counter)  # for queue and TTFT times

    @property
    def objects(self) -> list[pb.SceneObject]:
        return list(self.scene.objects) if self.scene is not None else []

    @property
    def scene_version(self) -> int:
        return self.scene.scene_version if self.scene is not None else 0


@dataclass(kw_only=True)
class GenerateCall(ReplySpec):
    prompt: str
    continues_prompt: bool = True


@dataclass(kw_only=True)
class DescribeCall(ReplySpec):
    instruction: str
    caption: bool = True
    prompt_field: str = "scene"


@dataclass(kw_only=True)
class TurnCall(ReplySpec):
    """One user turn, checked against the dialogue it joins."""

    text: str
    turn_id: int = 0  # the client's choice (0 = the next number) until the turn starts


def _features(vectors) -> Features:
    return [(fv.encoder, list(fv.values)) for fv in vectors]


class CallBuilder:
    """One pass over each request: checks (errors name the field), then the spec."""

    def __init__(self, settings: Settings, backend: Backend, ignore_eos: bool = False):
        self.settings = settings
        self.ignore_eos = ignore_eos  # `arbridge bench` only: equal token counts
        self._backend = backend
        projectors = backend.projectors
        self.encoders = projectors.input_dims() if projectors else {}  # name -> input size

    def sampling(self, params: pb.SamplingParams, field: str) -> dict:
        """The spec fields of checked `params`, refused where this backend cannot
        honour them."""
        checked = validation.sampling(params, self.settings, field, self.ignore_eos)
        backend = self._backend
        refused = list(backend.unsupported(checked.config))
        if not backend.constraints:
            why = ("needs the local engine (the upstream decodes without the bridge's "
                   "logit rules)")
            if checked.scene_constraint:
                refused.append(("scene_constraint", why))
            if checked.config.no_repeat_ngram > 1:
                refused.append(("no_repeat_ngram", "needs the local engine"))
        if not backend.grammars and checked.response_format is not None:
            refused.append(("response_format", "needs the local engine (the upstream "
                                               "decodes without the bridge's grammar)"))
        for name, why in refused:
            raise Unsupported(f"{field}.{name}", why)
        return dict(sampling=checked.config, sampling_field=field, stop=checked.stop,
                    response_format=checked.response_format,
                    scene_constraint=checked.scene_constraint)

    def scene(self, s: pb.SceneFeatures, field: str) -> pb.SceneFeatures:
        """The scene checked, as a copy (kept in dialogues, not the request)."""
        validation.scene(s, self.settings, field, self.encoders)
        copy = pb.SceneFeatures()
        copy.CopyFrom(s)
        return copy

    def scene_delta(self, base: pb.SceneFeatures | None, delta: pb.SceneDelta,
                    field: str) -> pb.SceneFeatures:
        """The scene `delta` makes of `base`, as a new one (`base` is untouched)."""
        base = base or pb.SceneFeatures()
        validation.scene_delta(base, delta, self.settings, field)
        return scene_delta.apply(base, delta)

    def generate_call(self, request: spb.GenerateRequest) -> GenerateCall:
        validation.prompt_text(request.prompt, self.settings)
        return GenerateCall(prompt=request.prompt, **self.sampling(request.sampling, "sampling"))

    def describe_call(self, request: spb.DescribeSceneRequest) -> DescribeCall:
        if not request.HasField("scene"):
            raise InvalidField("scene", "is required")
        s = request.scene
        validation.scene(s, self.settings, "scene", self.encoders)
        if not s.objects and not s.location_hint.strip() and not s.image_features:
            raise InvalidField("scene.objects", "needs at least one object (or a "
                                                "location_hint, or image_features)")
        if len(request.instruction) > self.settings.max_turn_chars:
            raise InvalidField("instruction", "too long")
        return DescribeCall(instruction=request.instruction, scene=s,
                            features=_features(s.image_features),
                            referents=resolve_all(current_rays(s), s.objects),
                            **self.sampling(request.sampling, "sampling"))

    def dialogue_start(self, start: spb.ConverseStart, field: str) -> DialogueState:
        """A new dialogue's state, copied out of the request."""
        validation.dialogue(start.history, self.settings, f"{field}.history")
        if len(start.system_prompt) > self.settings.max_turn_chars:
            raise InvalidField(f"{field}.system_prompt", "too long")
        self.sampling(start.sampling, f"{field}.sampling")
        validation.action_definitions(start.actions, self.settings, f"{field}.actions")
        validation.action_mode(start.action_mode, f"{field}.action_mode")
        if start.actions and start.sampling.response_format.WhichOneof("format") and \
                start.action_mode != pb.ACTION_MODE_NONE:
            raise InvalidField(f"{field}.sampling.response_format",
                               "a session that may call actions has their format")
        scene = self.scene(start.scene, f"{field}.scene") if start.HasField("scene") else None
        if start.actions and not self._backend.grammars:
            raise Unsupported(f"{field}.actions", "needs the local engine (the upstream "
                                                  "decodes without the bridge's grammar)")
        return DialogueState.from_start(start, scene)

    def ask_scene(self, request: spb.AskRequest, state: DialogueState) -> pb.SceneFeatures | None:
        """The scene an Ask turn sees: the request's own, or the session's changed by
        its delta, or the session's."""
        scene = self.scene(request.scene, "scene") if request.HasField("scene") else state.scene
        if request.HasField("scene_delta"):
            scene = self.scene_delta(scene, request.scene_delta, "scene_delta")
        return scene

    def turn_call(self, turn: spb.UserTurn, state: DialogueState, field: str,
             scene: pb.SceneFeatures | None = None) -> TurnCall:
        """A turn of `state`'s dialogue about `scene` (default: the dialogue's): its
        text (or transcript), sampling (the turn's own, else the dialogue's), the
        objects its rays point at, the actions it may call and its dense features."""
        scene = scene if scene is not None else state.scene
        text = turn.text.strip()
        if turn.HasField("audio"):
            validation.audio(turn.audio, self.settings, f"{field}.audio", self.encoders)
            text = text or turn.audio.transcript.strip()
        if not text:
            raise InvalidField(f"{field}.text", "needs text or audio.transcript")
        if len(text) > self.settings.max_turn_chars:
            raise InvalidField(f"{field}.text", "too long")
        validation.rays(turn.rays, f"{field}.rays")
        validation.action_mode(turn.action_mode, f"{field}.action_mode")
        params = turn.sampling if turn.HasField("sampling") else state.sampling
        call = TurnCall(text=text, turn_id=turn.turn_id, scene=scene,
                        prompt_field=f"{field}.text",
                        **self.sampling(params, f"{field}.sampling"))
        call.referents = resolve_all(current_rays(scene, turn.rays), call.objects)
        mode = turn.action_mode or state.action_mode or pb.ACTION_MODE_AUTO
        if state.actions and mode != pb.ACTION_MODE_NONE and call.response_format is not None:
            raise InvalidField(f"{field}.sampling.response_format",
                               "a reply that may call actions has their format; set "
                               "action_mode NONE for this one")
        call.actions = turn_actions(state.actions, mode, scene, f"{field}.action_mode")
        if scene is not None:
            call.features = _features(scene.image_features)
            if self.settings.scene_questions and call.actions is None and \
                    call.response_format is None:
                # "What colour is this?" with a ray on the mug: asked of the mug.
                question = resolve_deixis(text, call.referents, scene)
                computed = answer_from_scene(question, scene, gazed_object(call.referents, scene))
                call.scene_answer = computed.text if computed is not None else None
        if turn.HasField("audio") and turn.audio.HasField("embedding"):
            call.features += _features([turn.audio.embedding])
        return call

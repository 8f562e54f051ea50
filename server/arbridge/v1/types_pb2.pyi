from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RaySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAY_SOURCE_UNSPECIFIED: _ClassVar[RaySource]
    RAY_SOURCE_GAZE: _ClassVar[RaySource]
    RAY_SOURCE_LEFT_HAND: _ClassVar[RaySource]
    RAY_SOURCE_RIGHT_HAND: _ClassVar[RaySource]

class ReferentMatch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFERENT_MATCH_UNSPECIFIED: _ClassVar[ReferentMatch]
    REFERENT_MATCH_HIT: _ClassVar[ReferentMatch]
    REFERENT_MATCH_NEAR: _ClassVar[ReferentMatch]
    REFERENT_MATCH_AMBIGUOUS: _ClassVar[ReferentMatch]
    REFERENT_MATCH_NONE: _ClassVar[ReferentMatch]

class ParameterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAMETER_TYPE_UNSPECIFIED: _ClassVar[ParameterType]
    PARAMETER_TYPE_STRING: _ClassVar[ParameterType]
    PARAMETER_TYPE_NUMBER: _ClassVar[ParameterType]
    PARAMETER_TYPE_INTEGER: _ClassVar[ParameterType]
    PARAMETER_TYPE_BOOLEAN: _ClassVar[ParameterType]
    PARAMETER_TYPE_OBJECT: _ClassVar[ParameterType]

class ActionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_MODE_UNSPECIFIED: _ClassVar[ActionMode]
    ACTION_MODE_AUTO: _ClassVar[ActionMode]
    ACTION_MODE_REQUIRED: _ClassVar[ActionMode]
    ACTION_MODE_NONE: _ClassVar[ActionMode]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP_SEQUENCE: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_INTERRUPTED: _ClassVar[FinishReason]
    FINISH_REASON_TIME_LIMIT: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]
    FINISH_REASON_SHUTDOWN: _ClassVar[FinishReason]
RAY_SOURCE_UNSPECIFIED: RaySource
RAY_SOURCE_GAZE: RaySource
RAY_SOURCE_LEFT_HAND: RaySource
RAY_SOURCE_RIGHT_HAND: RaySource
REFERENT_MATCH_UNSPECIFIED: ReferentMatch
REFERENT_MATCH_HIT: ReferentMatch
REFERENT_MATCH_NEAR: ReferentMatch
REFERENT_MATCH_AMBIGUOUS: ReferentMatch
REFERENT_MATCH_NONE: ReferentMatch
PARAMETER_TYPE_UNSPECIFIED: ParameterType
PARAMETER_TYPE_STRING: ParameterType
PARAMETER_TYPE_NUMBER: ParameterType
PARAMETER_TYPE_INTEGER: ParameterType
PARAMETER_TYPE_BOOLEAN: ParameterType
PARAMETER_TYPE_OBJECT: ParameterType
ACTION_MODE_UNSPECIFIED: ActionMode
ACTION_MODE_AUTO: ActionMode
ACTION_MODE_REQUIRED: ActionMode
ACTION_MODE_NONE: ActionMode
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_SYSTEM: Role
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP_SEQUENCE: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_INTERRUPTED: FinishReason
FINISH_REASON_TIME_LIMIT: FinishReason
FINISH_REASON_ERROR: FinishReason
FINISH_REASON_SHUTDOWN: FinishReason

class Vec3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Quaternion(_message.Message):
    __slots__ = ("x", "y", "z", "w")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    w: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., w: _Optional[float] = ...) -> None: ...

class Pose(_message.Message):
    __slots__ = ("position", "rotation")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    position: Vec3
    rotation: Quaternion
    def __init__(self, position: _Optional[_Union[Vec3, _Mapping]] = ..., rotation: _Optional[_Union[Quaternion, _Mapping]] = ...) -> None: ...

class SceneObject(_message.Message):
    __slots__ = ("id", "label", "confidence", "pose", "extents", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    confidence: float
    pose: Pose
    extents: Vec3
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., pose: _Optional[_Union[Pose, _Mapping]] = ..., extents: _Optional[_Union[Vec3, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("encoder", "dims", "values")
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    encoder: str
    dims: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, encoder: _Optional[str] = ..., dims: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SceneFeatures(_message.Message):
    __slots__ = ("objects", "camera_pose", "image_features", "location_hint", "timestamp_ms", "scene_version", "rays")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CAMERA_POSE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    LOCATION_HINT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SCENE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RAYS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[SceneObject]
    camera_pose: Pose
    image_features: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    location_hint: str
    timestamp_ms: int
    scene_version: int
    rays: _containers.RepeatedCompositeFieldContainer[Ray]
    def __init__(self, objects: _Optional[_Iterable[_Union[SceneObject, _Mapping]]] = ..., camera_pose: _Optional[_Union[Pose, _Mapping]] = ..., image_features: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ..., location_hint: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., scene_version: _Optional[int] = ..., rays: _Optional[_Iterable[_Union[Ray, _Mapping]]] = ...) -> None: ...

class Ray(_message.Message):
    __slots__ = ("source", "origin", "direction", "timestamp_ms")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    source: RaySource
    origin: Vec3
    direction: Vec3
    timestamp_ms: int
    def __init__(self, source: _Optional[_Union[RaySource, str]] = ..., origin: _Optional[_Union[Vec3, _Mapping]] = ..., direction: _Optional[_Union[Vec3, _Mapping]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Referent(_message.Message):
    __slots__ = ("source", "match", "object_id", "confidence", "distance", "candidate_ids")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    source: RaySource
    match: ReferentMatch
    object_id: str
    confidence: float
    distance: float
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[_Union[RaySource, str]] = ..., match: _Optional[_Union[ReferentMatch, str]] = ..., object_id: _Optional[str] = ..., confidence: _Optional[float] = ..., distance: _Optional[float] = ..., candidate_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ActionParameter(_message.Message):
    __slots__ = ("name", "type", "description", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParameterType
    description: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParameterType, str]] = ..., description: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class ActionDefinition(_message.Message):
    __slots__ = ("name", "description", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _containers.RepeatedCompositeFieldContainer[ActionParameter]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ActionParameter, _Mapping]]] = ...) -> None: ...

class ActionArgument(_message.Message):
    __slots__ = ("name", "string_value", "number_value", "integer_value", "bool_value", "object_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    INTEGER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    string_value: str
    number_value: float
    integer_value: int
    bool_value: bool
    object_id: str
    def __init__(self, name: _Optional[str] = ..., string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., integer_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., object_id: _Optional[str] = ...) -> None: ...

class ActionCall(_message.Message):
    __slots__ = ("sequence_index", "name", "arguments", "object_ids", "text_offset")
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    sequence_index: int
    name: str
    arguments: _containers.RepeatedCompositeFieldContainer[ActionArgument]
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    text_offset: int
    def __init__(self, sequence_index: _Optional[int] = ..., name: _Optional[str] = ..., arguments: _Optional[_Iterable[_Union[ActionArgument, _Mapping]]] = ..., object_ids: _Optional[_Iterable[str]] = ..., text_offset: _Optional[int] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("json_schema", "regex")
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    json_schema: str
    regex: str
    def __init__(self, json_schema: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class SceneDelta(_message.Message):
    __slots__ = ("upsert", "remove_ids", "camera_pose", "location_hint", "scene_version")
    UPSERT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_IDS_FIELD_NUMBER: _ClassVar[int]
    CAMERA_POSE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_HINT_FIELD_NUMBER: _ClassVar[int]
    SCENE_VERSION_FIELD_NUMBER: _ClassVar[int]
    upsert: _containers.RepeatedCompositeFieldContainer[SceneObject]
    remove_ids: _containers.RepeatedScalarFieldContainer[str]
    camera_pose: Pose
    location_hint: str
    scene_version: int
    def __init__(self, upsert: _Optional[_Iterable[_Union[SceneObject, _Mapping]]] = ..., remove_ids: _Optional[_Iterable[str]] = ..., camera_pose: _Optional[_Union[Pose, _Mapping]] = ..., location_hint: _Optional[str] = ..., scene_version: _Optional[int] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("resumable",)
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    resumable: bool
    def __init__(self, resumable: _Optional[bool] = ...) -> None: ...

class AudioFeatures(_message.Message):
    __slots__ = ("transcript", "language", "confidence", "embedding")
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    transcript: str
    language: str
    confidence: float
    embedding: FeatureVector
    def __init__(self, transcript: _Optional[str] = ..., language: _Optional[str] = ..., confidence: _Optional[float] = ..., embedding: _Optional[_Union[FeatureVector, _Mapping]] = ...) -> None: ...

class DialogueTurn(_message.Message):
    __slots__ = ("role", "text")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    role: Role
    text: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., text: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop", "num_return_sequences", "logprobs", "scene_constraint", "no_repeat_ngram", "response_format")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SCENE_CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    NO_REPEAT_NGRAM_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    num_return_sequences: int
    logprobs: bool
    scene_constraint: float
    no_repeat_ngram: int
    response_format: ResponseFormat
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., num_return_sequences: _Optional[int] = ..., logprobs: _Optional[bool] = ..., scene_constraint: _Optional[float] = ..., no_repeat_ngram: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("sequence_index", "text", "token_ids", "logprob")
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    sequence_index: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprob: float
    def __init__(self, sequence_index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprob: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "time_to_first_token_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class GroundedSpan(_message.Message):
    __slots__ = ("object_id", "start", "end")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    start: int
    end: int
    def __init__(self, object_id: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("sequence_index", "finish_reason", "usage", "seed", "timings", "text", "error_message", "grounding", "scene_version", "referents", "actions")
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_FIELD_NUMBER: _ClassVar[int]
    SCENE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    sequence_index: int
    finish_reason: FinishReason
    usage: Usage
    seed: int
    timings: Timings
    text: str
    error_message: str
    grounding: _containers.RepeatedCompositeFieldContainer[GroundedSpan]
    scene_version: int
    referents: _containers.RepeatedCompositeFieldContainer[Referent]
    actions: _containers.RepeatedCompositeFieldContainer[ActionCall]
    def __init__(self, sequence_index: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., text: _Optional[str] = ..., error_message: _Optional[str] = ..., grounding: _Optional[_Iterable[_Union[GroundedSpan, _Mapping]]] = ..., scene_version: _Optional[int] = ..., referents: _Optional[_Iterable[_Union[Referent, _Mapping]]] = ..., actions: _Optional[_Iterable[_Union[ActionCall, _Mapping]]] = ...) -> None: ...

from arbridge.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResumeRequest(_message.Message):
    __slots__ = ("stream_id", "after_seq")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    after_seq: int
    def __init__(self, stream_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("seq", "stream_id", "session_id", "turn_id", "chunk", "completion", "action")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stream_id: str
    session_id: str
    turn_id: int
    chunk: _types_pb2.TokenChunk
    completion: _types_pb2.Completion
    action: _types_pb2.ActionCall
    def __init__(self, seq: _Optional[int] = ..., stream_id: _Optional[str] = ..., session_id: _Optional[str] = ..., turn_id: _Optional[int] = ..., chunk: _Optional[_Union[_types_pb2.TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[_types_pb2.Completion, _Mapping]] = ..., action: _Optional[_Union[_types_pb2.ActionCall, _Mapping]] = ...) -> None: ...

class CancelStreamRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class CancelStreamResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeSceneRequest(_message.Message):
    __slots__ = ("scene", "instruction", "sampling", "stream")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    scene: _types_pb2.SceneFeatures
    instruction: str
    sampling: _types_pb2.SamplingParams
    stream: _types_pb2.StreamOptions
    def __init__(self, scene: _Optional[_Union[_types_pb2.SceneFeatures, _Mapping]] = ..., instruction: _Optional[str] = ..., sampling: _Optional[_Union[_types_pb2.SamplingParams, _Mapping]] = ..., stream: _Optional[_Union[_types_pb2.StreamOptions, _Mapping]] = ...) -> None: ...

class DescribeSceneResponse(_message.Message):
    __slots__ = ("chunk", "completion", "seq", "stream_id")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    chunk: _types_pb2.TokenChunk
    completion: _types_pb2.Completion
    seq: int
    stream_id: str
    def __init__(self, chunk: _Optional[_Union[_types_pb2.TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[_types_pb2.Completion, _Mapping]] = ..., seq: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class ConverseStart(_message.Message):
    __slots__ = ("system_prompt", "history", "scene", "sampling", "stream", "actions", "action_mode")
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_MODE_FIELD_NUMBER: _ClassVar[int]
    system_prompt: str
    history: _containers.RepeatedCompositeFieldContainer[_types_pb2.DialogueTurn]
    scene: _types_pb2.SceneFeatures
    sampling: _types_pb2.SamplingParams
    stream: _types_pb2.StreamOptions
    actions: _containers.RepeatedCompositeFieldContainer[_types_pb2.ActionDefinition]
    action_mode: _types_pb2.ActionMode
    def __init__(self, system_prompt: _Optional[str] = ..., history: _Optional[_Iterable[_Union[_types_pb2.DialogueTurn, _Mapping]]] = ..., scene: _Optional[_Union[_types_pb2.SceneFeatures, _Mapping]] = ..., sampling: _Optional[_Union[_types_pb2.SamplingParams, _Mapping]] = ..., stream: _Optional[_Union[_types_pb2.StreamOptions, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[_types_pb2.ActionDefinition, _Mapping]]] = ..., action_mode: _Optional[_Union[_types_pb2.ActionMode, str]] = ...) -> None: ...

class UserTurn(_message.Message):
    __slots__ = ("turn_id", "text", "audio", "sampling", "rays", "action_mode")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RAYS_FIELD_NUMBER: _ClassVar[int]
    ACTION_MODE_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    text: str
    audio: _types_pb2.AudioFeatures
    sampling: _types_pb2.SamplingParams
    rays: _containers.RepeatedCompositeFieldContainer[_types_pb2.Ray]
    action_mode: _types_pb2.ActionMode
    def __init__(self, turn_id: _Optional[int] = ..., text: _Optional[str] = ..., audio: _Optional[_Union[_types_pb2.AudioFeatures, _Mapping]] = ..., sampling: _Optional[_Union[_types_pb2.SamplingParams, _Mapping]] = ..., rays: _Optional[_Iterable[_Union[_types_pb2.Ray, _Mapping]]] = ..., action_mode: _Optional[_Union[_types_pb2.ActionMode, str]] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("start", "scene_update", "user_turn", "cancel", "scene_delta")
    START_FIELD_NUMBER: _ClassVar[int]
    SCENE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    USER_TURN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SCENE_DELTA_FIELD_NUMBER: _ClassVar[int]
    start: ConverseStart
    scene_update: _types_pb2.SceneFeatures
    user_turn: UserTurn
    cancel: CancelReply
    scene_delta: _types_pb2.SceneDelta
    def __init__(self, start: _Optional[_Union[ConverseStart, _Mapping]] = ..., scene_update: _Optional[_Union[_types_pb2.SceneFeatures, _Mapping]] = ..., user_turn: _Optional[_Union[UserTurn, _Mapping]] = ..., cancel: _Optional[_Union[CancelReply, _Mapping]] = ..., scene_delta: _Optional[_Union[_types_pb2.SceneDelta, _Mapping]] = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("turn_id", "chunk", "completion", "action", "seq", "stream_id")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    chunk: _types_pb2.TokenChunk
    completion: _types_pb2.Completion
    action: _types_pb2.ActionCall
    seq: int
    stream_id: str
    def __init__(self, turn_id: _Optional[int] = ..., chunk: _Optional[_Union[_types_pb2.TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[_types_pb2.Completion, _Mapping]] = ..., action: _Optional[_Union[_types_pb2.ActionCall, _Mapping]] = ..., seq: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "sampling", "stream")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    sampling: _types_pb2.SamplingParams
    stream: _types_pb2.StreamOptions
    def __init__(self, prompt: _Optional[str] = ..., sampling: _Optional[_Union[_types_pb2.SamplingParams, _Mapping]] = ..., stream: _Optional[_Union[_types_pb2.StreamOptions, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("chunk", "completion", "seq", "stream_id")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    chunk: _types_pb2.TokenChunk
    completion: _types_pb2.Completion
    seq: int
    stream_id: str
    def __init__(self, chunk: _Optional[_Union[_types_pb2.TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[_types_pb2.Completion, _Mapping]] = ..., seq: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "architecture", "parameter_count", "context_length", "dtype", "device", "source_format", "num_layers", "hidden_size", "vocab_size", "features", "max_new_tokens_limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    architecture: str
    parameter_count: int
    context_length: int
    dtype: str
    device: str
    source_format: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    features: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens_limit: int
    def __init__(self, model_name: _Optional[str] = ..., architecture: _Optional[str] = ..., parameter_count: _Optional[int] = ..., context_length: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., source_format: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., max_new_tokens_limit: _Optional[int] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("session_id", "start", "scene", "user_turn", "stream", "scene_delta")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    USER_TURN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SCENE_DELTA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    start: ConverseStart
    scene: _types_pb2.SceneFeatures
    user_turn: UserTurn
    stream: _types_pb2.StreamOptions
    scene_delta: _types_pb2.SceneDelta
    def __init__(self, session_id: _Optional[str] = ..., start: _Optional[_Union[ConverseStart, _Mapping]] = ..., scene: _Optional[_Union[_types_pb2.SceneFeatures, _Mapping]] = ..., user_turn: _Optional[_Union[UserTurn, _Mapping]] = ..., stream: _Optional[_Union[_types_pb2.StreamOptions, _Mapping]] = ..., scene_delta: _Optional[_Union[_types_pb2.SceneDelta, _Mapping]] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("session_id", "turn_id", "chunk", "completion", "action", "seq", "stream_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: int
    chunk: _types_pb2.TokenChunk
    completion: _types_pb2.Completion
    action: _types_pb2.ActionCall
    seq: int
    stream_id: str
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[int] = ..., chunk: _Optional[_Union[_types_pb2.TokenChunk, _Mapping]] = ..., completion: _Optional[_Union[_types_pb2.Completion, _Mapping]] = ..., action: _Optional[_Union[_types_pb2.ActionCall, _Mapping]] = ..., seq: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

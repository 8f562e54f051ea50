"""Scene actions and response formats: the grammar, the engine, the stream."""

from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import pytest
from test_grpc_web import call as web_call

from arbridge.generation import SamplingConfig
from arbridge.serving import structured
from arbridge.serving.actions import ActionSet, ActionSplitter, object_names
from arbridge.serving.structured import GrammarCompiler
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, start_server
from tiny_model import train_tokenizer

OBJECT = pb.PARAMETER_TYPE_OBJECT
HIGHLIGHT = pb.ActionDefinition(name="highlight", description="make an object glow",
                                parameters=[pb.ActionParameter(name="target", type=OBJECT)])
LABEL = pb.ActionDefinition(name="place_label", parameters=[
    pb.ActionParameter(name="target", type=OBJECT),
    pb.ActionParameter(name="text", type=pb.PARAMETER_TYPE_STRING, choices=["fragile", "hot"]),
    pb.ActionParameter(name="size", type=pb.PARAMETER_TYPE_NUMBER),
    pb.ActionParameter(name="count", type=pb.PARAMETER_TYPE_INTEGER),
    pb.ActionParameter(name="blink", type=pb.PARAMETER_TYPE_BOOLEAN)])


def thing(object_id: str, label: str, x: float = 0.0, **attributes) -> pb.SceneObject:
    obj = pb.SceneObject(id=object_id, label=label, pose=pb.Pose(position=pb.Vec3(x=x, z=2)))
    obj.attributes.update(attributes)
    return obj


SCENE = pb.SceneFeatures(camera_pose=pb.Pose(rotation=pb.Quaternion(w=1)), objects=[
    thing("c1", "chair", -1, color="red"), thing("c2", "chair", 1, color="blue"),
    thing("l1", "lamp")])


def test_each_object_gets_a_name_of_its_own():
    scene = pb.SceneFeatures(camera_pose=pb.Pose(rotation=pb.Quaternion(w=1)), objects=[
        thing("a", "chair", -2), thing("b", "chair", 2), thing("c", "chair", 2.1),
        thing("d", "Lamp (broken)"), thing("e", "cup")])
    scene.objects.add(id="f", label="mug\x7f")  # unprintable: out of the name (DEL)
    names = object_names(scene)
    assert names == {"chair to the left": "a", "chair b": "b", "chair c": "c",
                     "lamp broken": "d", "cup": "e", "mug": "f"}


def test_calls_are_parsed_with_typed_arguments_and_split_from_the_text():
    actions = ActionSet([HIGHLIGHT, LABEL], pb.ACTION_MODE_AUTO, object_names(SCENE))
    splitter = ActionSplitter(actions, 0)
    pieces = []
    for text in ["Sure. [place_label(blue ch", 'air, "hot", -1.5, 3, true)] It is ', "hot. [",
                 "highlight(lamp)", "]", " [highlight(sofa)] ok", "\n  1. a  b"]:
        pieces += splitter.push(text)
    calls = [p for p in pieces if isinstance(p, pb.ActionCall)]
    spoken = "".join(p for p in pieces if isinstance(p, str))
    # The space after a call goes, other spaces (an indented list) stay.
    assert spoken == "Sure. It is hot. ok\n  1. a  b"
    assert [(c.name, list(c.object_ids), c.text_offset) for c in calls] == [
        ("place_label", ["c2"], 6), ("highlight", ["l1"], 17)]  # the sofa is not a call
    args = {a.name: a for a in calls[0].arguments}
    assert args["text"].string_value == "hot" and args["size"].number_value == -1.5
    assert args["count"].integer_value == 3 and args["blink"].bool_value is True
    assert args["target"].object_id == "c2"


@pytest.fixture(scope="module", params=["byte-level", "metaspace"])
def compiler(request):
    tokenizer = train_tokenizer(metaspace=request.param == "metaspace")
    return tokenizer, GrammarCompiler(tokenizer, len(tokenizer))


@pytest.fixture(scope="module")
async def server(wide_model_dir, tmp_path_factory):
    running = await start_server(wide_model_dir, tmp_path_factory.mktemp("cache"))
    yield running
    await running.close()


def _accepts(compiler, grammar_cfg, text: str) -> bool:
    tokenizer, _ = compiler
    matcher = grammar_cfg.grammar.matchers[0]
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids)


def test_worked_turns_say_each_action_by_name_and_by_description():
    reset = pb.ActionDefinition(name="reset", description="put the thing back")
    turns = [t.text for t in ActionSet([HIGHLIGHT, reset], pb.ACTION_MODE_AUTO,
                                       {"lamp": "l1"}).examples()]
    assert "Please highlight the green mug." in turns and "Make the green mug glow." in turns
    assert "Put the thing back." in turns and "[reset()] Okay, done." in turns


def test_string_arguments_read_back_whatever_their_characters():
    paint = pb.ActionDefinition(name="paint", parameters=[
        pb.ActionParameter(name="colour", type=pb.PARAMETER_TYPE_STRING,
                           choices=["café", "blue"]),
        pb.ActionParameter(name="note", type=pb.PARAMETER_TYPE_STRING)])
    actions = ActionSet([paint], pb.ACTION_MODE_AUTO, {})
    assert '"\\"café\\""' in actions.lark()  # the choice as written, not \\u00e9
    call = actions.parse('paint("café", "naïve ✓")', 0, 0)
    assert [a.string_value for a in call.arguments] == ["café", "naïve ✓"]
    assert actions.parse('paint("café", "a\tb")', 0, 0) is None  # never the grammar's


def test_the_grammar_admits_only_the_scene_s_objects(compiler):
    tokenizer, grammars = compiler
    if tokenizer.convert_tokens_to_ids("[") is None or "<unk>" in tokenizer.get_vocab():
        # The SentencePiece-style test tokenizer cannot spell "[": a regex instead.
        # (Its words start with "▁": the grammar sees the space before the first one.)
        fmt = ("regex", " ?(red|blue) chair")
        assert _accepts(compiler, grammars.apply(SamplingConfig(), fmt), "red chair")
        assert not _accepts(compiler, grammars.apply(SamplingConfig(), fmt), "green chair")
        return
    actions = ActionSet([HIGHLIGHT], pb.ACTION_MODE_AUTO, object_names(SCENE))
    assert _accepts(compiler, grammars.apply(SamplingConfig(), None, actions),
                    "Here. [highlight(red chair)] Done")
    for absent in ("[highlight(sofa)]", "[highlight(green chair)]", "[highlight(c1)]",
                   "[dance(lamp)]"):
        assert not _accepts(compiler, grammars.apply(SamplingConfig(), None, actions), absent)
    paint = ActionSet([pb.ActionDefinition(name="paint", parameters=[pb.ActionParameter(
        name="colour", type=pb.PARAMETER_TYPE_STRING, choices=["café"])])],
        pb.ACTION_MODE_AUTO, {})
    assert _accepts(compiler, grammars.apply(SamplingConfig(), None, paint), '[paint("café")]')
    required = ActionSet([HIGHLIGHT], pb.ACTION_MODE_REQUIRED, object_names(SCENE))
    assert not _accepts(compiler, grammars.apply(SamplingConfig(), None, required), "Hello")
    assert _accepts(compiler, grammars.apply(SamplingConfig(), None, required), "[highlight(lamp)]")


def test_a_bad_schema_or_regex_is_the_request_s_error(compiler):
    _, grammars = compiler
    from arbridge.serving.validation import InvalidField
    with pytest.raises(InvalidField, match=r"^sampling.response_format.json_schema: "):
        grammars.apply(SamplingConfig(), ("json_schema", '{"type": "objekt"}'))
    with pytest.raises(InvalidField, match=r"^sampling.response_format.regex: .*unclosed"):
        grammars.apply(SamplingConfig(), ("regex", "a(b"))
    # What the library raises rather than reports (a schema it cannot apply options to).
    with pytest.raises(InvalidField, match=r"^sampling.response_format.json_schema: "):
        grammars.apply(SamplingConfig(), ("json_schema", "true"))


@pytest.mark.parametrize("kind, source, why", [
    ("regex", "(a{1000}){1000}", "regex too large: '(a{1000}){1000}' expands to about "
                                 "1,000,000 positions"),
    ("regex", "[a-z]{0,3}(a{1000}){1000}", "regex too large"),
    ("regex", r"\p{L}{0,3}(a{1,1000}){1000}", "regex too large"),
    ("json_schema", '{"type": "string", "pattern": "^(a{1000}){1000}$"}', "regex too large"),
    ("regex", "a{100000}", "lexer error: too many expressions constructed"),
    ("regex", "(a{300}){300}", "lexer error: too many expressions constructed"),
])
def test_a_grammar_whose_lexer_would_explode_is_refused_before_the_call(compiler, kind,
                                                                        source, why):
    """Refused while the request is checked, in one line and milliseconds, instead of
    compiling lazily into 150 MB and failing at the first token."""
    _, grammars = compiler
    from arbridge.serving.validation import InvalidField
    started = time.perf_counter()
    with pytest.raises(InvalidField) as err:
        grammars.apply(SamplingConfig(), (kind, source), field="sampling")
    assert str(err.value).startswith(f"sampling.response_format.{kind}: {why}"), err.value
    assert "\n" not in str(err.value) and len(str(err.value)) < 500
    assert time.perf_counter() - started < 1.0
    assert (kind, source) not in grammars  # nothing of it is kept


@pytest.mark.parametrize("source", ["(a{100}){100}", "a{10000}", ".{0,100000}",
                                    "[a-z]+@[a-z]+\\.com", "(yes|no)", ".{0,200}"])
def test_ordinary_and_large_but_sane_grammars_pass(compiler, source):
    _, grammars = compiler
    cfg = grammars.apply(SamplingConfig(), ("regex", source))
    assert cfg.grammar is not None


@pytest.mark.skipif(structured._MALLINFO2 is None, reason="needs glibc's mallinfo2")
def test_the_grammar_cache_is_bounded_by_bytes(compiler):
    """Each (x{100}){100} lexer takes ~4.5 MB of heap, charged at most a quarter of the
    budget (one reading of a shared heap is never trusted further): a 6 MiB budget
    keeps four of eight, never more than its bytes."""
    tokenizer, _ = compiler
    grammars = GrammarCompiler(tokenizer, len(tokenizer), budget_bytes=6 << 20)
    for letter in "abcdefgh":
        grammars.apply(SamplingConfig(), ("regex", f"({letter}{{100}}){{100}}"))
        assert grammars.bytes <= 6 << 20
    assert len(grammars) == 4, (len(grammars), grammars.bytes)
    assert ("regex", "(h{100}){100}") in grammars and ("regex", "(a{100}){100}") not in grammars
    small = GrammarCompiler(tokenizer, len(tokenizer), budget_bytes=64 << 20)
    for i in range(20):
        small.apply(SamplingConfig(), ("regex", f"(yes|no|{i})"))
    assert len(small) == 20  # small grammars: many fit


# -- through the server (tiny random model: any token the grammar allows is likely) --------
def _ask(text="highlight the red chair", mode=pb.ACTION_MODE_REQUIRED, seed=0, n=4, scene=SCENE,
         actions=(HIGHLIGHT, LABEL), max_new_tokens=96, sampling=None, **turn):
    sampling = sampling or pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=1.5,
                                             seed=seed, num_return_sequences=n)
    return spb.AskRequest(
        start=spb.ConverseStart(scene=scene, actions=list(actions), action_mode=mode),
        user_turn=spb.UserTurn(text=text, **turn, sampling=sampling))


async def test_sampled_replies_only_ever_call_declared_actions_on_scene_objects(server):
    ids = {o.id for o in SCENE.objects}
    calls = 0
    for seed in range(3):
        _, done, events = await collect(server.stub.Ask(_ask(seed=seed)))
        streamed = [e[2].action for e in events if e[0] == "action"]
        for completion in done:
            assert completion.actions, "REQUIRED: every reply starts with an action"
            assert "[" not in completion.text
            for action in completion.actions:
                assert action.name in {"highlight", "place_label"}
                assert set(action.object_ids) <= ids and action.object_ids
                if action.name == "place_label":
                    assert {a.name: a.WhichOneof("value") for a in action.arguments} == {
                        "target": "object_id", "text": "string_value",
                        "size": "number_value", "count": "integer_value",
                        "blink": "bool_value"}
            calls += len(completion.actions)
        # Each call streamed as its own event, before its sequence's Completion.
        assert sorted(streamed, key=lambda a: a.sequence_index) == \
            [a for c in done for a in c.actions]
        ended_at = {r.completion.sequence_index: i for i, (kind, _, r) in enumerate(events)
                    if kind == "completion"}
        assert all(i < ended_at[r.action.sequence_index]
                   for i, (kind, _, r) in enumerate(events) if kind == "action")
    assert calls >= 12


async def test_actions_stream_over_grpc_web(make_server, wide_model_dir):
    running = await make_server(wide_model_dir, grpc_web_port=0)
    _, frames = await web_call(running, "Ask", _ask(n=1))
    assert frames.status == 0, frames.message
    events = [spb.AskResponse.FromString(m) for _, m in frames.messages]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "action" and kinds[-1] == "completion"
    assert events[-1].completion.actions[0] == events[0].action


async def test_a_constrained_request_leaves_its_batch_mates_unchanged(make_server,
                                                                     wide_model_dir):
    running = await make_server(wide_model_dir, step_delay=0.01)
    stub = running.stub
    scheduler = running.server.backend.scheduler
    rows: list[int] = []
    previous = scheduler.on_decode_step
    scheduler.on_decode_step = lambda n: (rows.append(n), previous(n))
    greedy = gen("The red chair", max_new_tokens=24)
    seeded = gen("A lamp", max_new_tokens=24, temperature=0.8, seed=7)
    alone = [(await collect(stub.Generate(r)))[1][0] for r in (greedy, seeded)]
    rows.clear()
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                         "required": ["ok"], "additionalProperties": False})
    together = await asyncio.gather(
        collect(stub.Generate(greedy)), collect(stub.Generate(seeded)),
        collect(stub.Ask(_ask(n=2))),
        collect(stub.Generate(gen("The lamp", max_new_tokens=24, response_format=(
            pb.ResponseFormat(json_schema=schema))))))
    assert max(rows) >= 4, "the requests were batched together"
    for (_, done, _), before in zip(together[:2], alone, strict=True):
        assert (done[0].text, done[0].finish_reason) == (before.text, before.finish_reason)


async def test_response_formats_shape_the_reply(server):
    stub = server.stub
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "maximum": 99}},
              "required": ["ok", "n"], "additionalProperties": False}
    fmt = pb.ResponseFormat(json_schema=json.dumps(schema))
    for seed in range(3):
        _, done, _ = await collect(stub.Generate(gen(
            "JSON:", max_new_tokens=48, temperature=1.0, seed=seed, response_format=fmt,
            num_return_sequences=2)))
        for c in done:
            if c.finish_reason == pb.FINISH_REASON_EOS:
                value = json.loads(c.text)
                assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool)
                assert isinstance(value["n"], int) and value["n"] <= 99
    _, done, _ = await collect(stub.Generate(gen(
        "Code:", max_new_tokens=12, temperature=1.0, seed=1,
        response_format=pb.ResponseFormat(regex=r"[A-Z]{2}-[0-9]{3}"))))
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", done[0].text)
    assert done[0].finish_reason == pb.FINISH_REASON_EOS
    # A caption in a format: the caption's sentence and naming rules give way.
    _, done, _ = await collect(stub.DescribeScene(spb.DescribeSceneRequest(
        scene=SCENE, sampling=pb.SamplingParams(max_new_tokens=12, response_format=(
            pb.ResponseFormat(regex=r"(red|blue) (chair|lamp)"))))))
    assert re.fullmatch(r"(red|blue) (chair|lamp)", done[0].text)


BAD = [
    (gen(response_format=pb.ResponseFormat(json_schema="{nope")),
     "Generate", "sampling.response_format.json_schema: is not JSON"),
    (gen(response_format=pb.ResponseFormat(json_schema='"x"')),
     "Generate", "sampling.response_format.json_schema: must be a JSON object"),
    (gen(response_format=pb.ResponseFormat(json_schema="true")),
     "Generate", "sampling.response_format.json_schema: must be a JSON object"),
    (gen(response_format=pb.ResponseFormat(json_schema="[" * 6000)),
     "Generate", "sampling.response_format.json_schema: is nested too deeply"),
    (gen(response_format=pb.ResponseFormat(json_schema='{"type": "objekt"}')),
     "Generate", "sampling.response_format.json_schema: "),
    (gen(response_format=pb.ResponseFormat(regex="(")),
     "Generate", "sampling.response_format.regex: "),
    (gen(response_format=pb.ResponseFormat(regex=" ")),
     "Generate", "sampling.response_format.regex: must not be empty"),
    (gen(response_format=pb.ResponseFormat(regex="a" * 20000)),
     "Generate", "sampling.response_format.regex: 20000 characters"),
    # Grammars whose lexer would explode: refused up front, not at the first token.
    (gen(response_format=pb.ResponseFormat(regex="(a{1000}){1000}")),
     "Generate", "sampling.response_format.regex: regex too large"),
    (gen(response_format=pb.ResponseFormat(regex="a{100000}")),
     "Generate", "sampling.response_format.regex: lexer error: too many expressions"),
    (spb.DescribeSceneRequest(scene=SCENE, sampling=pb.SamplingParams(
        response_format=pb.ResponseFormat(regex="x(b{1000}){1000}"))),
     "DescribeScene", "sampling.response_format.regex: regex too large"),
    (_ask(mode=pb.ACTION_MODE_NONE, sampling=pb.SamplingParams(
        response_format=pb.ResponseFormat(regex="(c{300}){300}"))),
     "Ask", "user_turn.sampling.response_format.regex: lexer error"),
    (_ask(actions=[pb.ActionDefinition(name="9lives")]), "Ask", "start.actions[0].name: "),
    (_ask(actions=[HIGHLIGHT, HIGHLIGHT]), "Ask", "start.actions[1].name: 'highlight' is "
                                                  "declared twice"),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[pb.ActionParameter(name="x")])]),
     "Ask", "start.actions[0].parameters[0].type: "),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[pb.ActionParameter(
        name="x", type=pb.PARAMETER_TYPE_NUMBER, choices=["1"])])]),
     "Ask", "start.actions[0].parameters[0].choices: only a STRING"),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[pb.ActionParameter(
        name="x", type=pb.PARAMETER_TYPE_STRING, choices=['say "hi"'])])]),
     "Ask", "start.actions[0].parameters[0].choices[0]: "),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[
        pb.ActionParameter(name="x", type=OBJECT), pb.ActionParameter(name="x", type=OBJECT)])]),
     "Ask", "start.actions[0].parameters[1].name: 'x' is declared twice"),
    (_ask(actions=[]), "Ask", "user_turn.action_mode: is REQUIRED but the session declares"),
    (_ask(action_mode=9), "Ask", "user_turn.action_mode: unknown value 9"),
    (_ask(mode=pb.ACTION_MODE_AUTO, sampling=pb.SamplingParams(
        response_format=pb.ResponseFormat(regex="x"))),
     "Ask", "user_turn.sampling.response_format: a reply that may call"),
    # The same with nothing to act on (every action needs an object; the scene has none).
    (_ask(mode=pb.ACTION_MODE_AUTO, actions=[HIGHLIGHT], scene=pb.SceneFeatures(
        location_hint="a room"), sampling=pb.SamplingParams(
        response_format=pb.ResponseFormat(regex="x"))),
     "Ask", "user_turn.sampling.response_format: a reply that may call"),
    (spb.AskRequest(start=spb.ConverseStart(scene=SCENE, actions=[HIGHLIGHT], sampling=(
        pb.SamplingParams(response_format=pb.ResponseFormat(regex="x")))),
        user_turn=spb.UserTurn(text="hi")),
     "Ask", "start.sampling.response_format: a session that may call actions"),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[pb.ActionParameter(
        name="x", type=pb.PARAMETER_TYPE_STRING, choices=["tab\there"])])]),
     "Ask", "start.actions[0].parameters[0].choices[0]: "),
    (_ask(actions=[pb.ActionDefinition(name="a", parameters=[pb.ActionParameter(
        name="x", type=pb.PARAMETER_TYPE_STRING, choices=["del\x7f"])])]),
     "Ask", "start.actions[0].parameters[0].choices[0]: "),
]


@pytest.mark.parametrize("request_, method, message", BAD)
async def test_bad_formats_and_actions_are_invalid_arguments(server, request_, method,
                                                            message):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(getattr(server.stub, method)(request_))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(message), err.value.details()


async def test_a_required_action_with_nothing_to_act_on_is_a_failed_precondition(server):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(server.stub.Ask(_ask(scene=pb.SceneFeatures(location_hint="a room"))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith("user_turn.action_mode: is REQUIRED but no action")


async def test_a_cancelled_resumable_reply_keeps_its_actions_and_referents(make_server,
                                                                          wide_model_dir):
    running = await make_server(wide_model_dir, step_delay=0.02)
    request = _ask(n=1, max_new_tokens=200, rays=[pb.Ray(
        source=pb.RAY_SOURCE_GAZE, origin=pb.Vec3(), direction=pb.Vec3(x=-1, z=2))])
    request.stream.resumable = True
    call = running.stub.Ask(request)
    stream_id, streamed, done = "", [], None
    async for response in call:
        stream_id = stream_id or response.stream_id
        kind = response.WhichOneof("event")
        if kind == "action":
            streamed.append(response.action)
            await running.stub.CancelStream(spb.CancelStreamRequest(stream_id=stream_id))
        elif kind == "completion":
            done = response.completion
    assert done.finish_reason == pb.FINISH_REASON_CANCELLED
    assert list(done.actions) == streamed and streamed
    assert [r.object_id for r in done.referents] == ["c1"]

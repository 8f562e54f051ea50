"""Ask: dialogue one turn per call (the gRPC-Web door), with server-side sessions."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from arbridge.serving.dialogue import Dialogue, DialogueState
from arbridge.serving.sessions import SessionStore
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, wait_for, wait_idle

FR = pb.FinishReason
OWNER = "caller-digest"


def ask(text, session_id="", max_new_tokens=4, **kw):
    return spb.AskRequest(session_id=session_id, user_turn=spb.UserTurn(
        text=text, sampling=pb.SamplingParams(max_new_tokens=max_new_tokens)), **kw)


async def test_a_session_carries_the_dialogue_between_calls(tiny_server):
    stub = tiny_server.stub
    first_chunks, first, events = await collect(stub.Ask(ask("hello there")))
    session = events[0][2].session_id
    assert session and all(e[2].session_id == session for e in events)
    assert all(e[2].turn_id == 1 for e in events)
    assert first[0].finish_reason == FR.FINISH_REASON_LENGTH
    assert first[0].text == "".join(c.text for c in first_chunks)

    _, second, events = await collect(stub.Ask(ask("and then?", session)))
    assert {e[2].turn_id for e in events} == {2} and events[0][2].session_id == session
    # The same words in a new session: the old one's prompt also holds turn 1.
    _, fresh, _ = await collect(stub.Ask(ask("and then?")))
    assert second[0].usage.prompt_tokens > fresh[0].usage.prompt_tokens


async def test_start_settings_and_scene_updates_reach_the_prompt(tiny_server):
    stub = tiny_server.stub
    plain = (await collect(stub.Ask(ask("what is here?"))))[1][0].usage.prompt_tokens
    scene = pb.SceneFeatures(objects=[pb.SceneObject(id="c1", label="chair")])
    _, done, events = await collect(stub.Ask(ask(
        "what is here?", start=spb.ConverseStart(system_prompt="Be terse.", scene=scene))))
    assert done[0].usage.prompt_tokens != plain
    session = events[0][2].session_id
    bigger = pb.SceneFeatures(objects=[pb.SceneObject(id=f"o{i}", label=f"lamp {i}")
                                       for i in range(5)])
    _, later, _ = await collect(stub.Ask(ask("and now?", session, scene=bigger)))
    _, same, _ = await collect(stub.Ask(ask("and now?", session)))  # the scene stays
    assert later[0].usage.prompt_tokens > done[0].usage.prompt_tokens
    assert same[0].usage.prompt_tokens > later[0].usage.prompt_tokens  # + one more exchange


async def test_errors_name_the_field_and_leave_the_session_as_it_was(tiny_server):
    stub = tiny_server.stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.Ask(ask("hi", "no-such-session")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("session_id")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.Ask(spb.AskRequest()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("user_turn")

    _, _, events = await collect(stub.Ask(ask("hello")))
    session = events[0][2].session_id
    for bad in (ask("   ", session), ask("hi", session, max_new_tokens=10**6),
                ask("hi", session, scene=pb.SceneFeatures(objects=[pb.SceneObject(id="x")]))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub.Ask(bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, _, events = await collect(stub.Ask(ask("again", session)))
    assert events[0][2].turn_id == 2  # the failed turns took no id


async def streaming_session(stub):
    """A session whose second reply (100 tokens) is streaming now: (id, that call)."""
    _, _, events = await collect(stub.Ask(ask("hello")))
    session = events[0][2].session_id
    long_call = stub.Ask(ask("tell me a long story", session, max_new_tokens=100))
    async for _ in long_call:  # streaming now
        break
    return session, long_call


async def test_a_new_turn_interrupts_the_reply_still_streaming(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    stub = running.stub
    session, long_call = await streaming_session(stub)
    _, short, _ = await collect(stub.Ask(ask("stop", session)))
    rest = [r async for r in long_call]
    interrupted = [r.completion for r in rest if r.WhichOneof("event") == "completion"][0]
    assert interrupted.finish_reason == FR.FINISH_REASON_INTERRUPTED
    assert 0 < interrupted.usage.completion_tokens < 100
    assert short[0].finish_reason == FR.FINISH_REASON_LENGTH
    await wait_idle(running.server.scheduler)


def test_store_forgets_idle_sessions_and_evicts_the_least_recent():
    now = [0.0]
    store = SessionStore(max_sessions=2, idle_seconds=60, max_bytes=1 << 20,
                         clock=lambda: now[0])
    a = store.create(Dialogue(DialogueState(), 256), OWNER)
    b = store.create(Dialogue(DialogueState(), 256), OWNER)
    assert store.get(a.id, OWNER) is a  # a is now the most recent
    c = store.create(Dialogue(DialogueState(), 256), OWNER)
    assert store.get(b.id, OWNER) is None and store.get(a.id, OWNER) is a
    assert store.get(c.id, OWNER) is c
    now[0] = 61.0
    assert store.get(a.id, OWNER) is None and len(store) == 0 and store.bytes == 0
    busy = store.create(Dialogue(DialogueState(), 256), OWNER)
    busy.dialogue.idle.clear()  # a reply is streaming: not forgotten however long it takes
    idle = store.create(Dialogue(DialogueState(), 256), OWNER)
    now[0] = 1000.0
    # Expired although an older busy one comes first.
    assert store.get(idle.id, OWNER) is None
    assert store.get(busy.id, OWNER) is busy


def test_store_keeps_within_its_byte_budget():
    store = SessionStore(max_sessions=100, idle_seconds=60, max_bytes=10_000)
    first = store.create(Dialogue(DialogueState(system_prompt="x" * 4000), 256), OWNER)
    second = store.create(Dialogue(DialogueState(system_prompt="y" * 4000), 256), OWNER)
    # 12 kB > 10 kB:
    third = store.create(Dialogue(DialogueState(system_prompt="z" * 4000), 256), OWNER)
    assert store.get(first.id, OWNER) is None and store.get(second.id, OWNER) is second
    assert store.bytes <= 10_000
    second.dialogue.state.record("q" * 3000, "a" * 3000, max_turns=256)  # grows past the budget
    store.touch(second)
    assert store.get(third.id, OWNER) is None and store.get(second.id, OWNER) is second


def test_store_counts_encoded_bytes_not_characters():
    """4-byte UTF-8 text weighs 4 bytes a character: 3 sessions of 4,000 emoji
    (16 kB each) do not fit a 40 kB budget; of ASCII, they would."""
    store = SessionStore(max_sessions=100, idle_seconds=60, max_bytes=40_000)
    sessions = [store.create(Dialogue(DialogueState(system_prompt="\U0001F600" * 4000), 256),
                             OWNER) for _ in range(3)]
    assert store.get(sessions[0].id, OWNER) is None and store.bytes <= 40_000
    assert sessions[1].size >= 16_000


def test_a_session_is_found_only_by_its_owner():
    store = SessionStore(max_sessions=100, idle_seconds=60, max_bytes=1 << 20)
    mine = store.create(Dialogue(DialogueState(), 256), "alice")
    assert store.get(mine.id, "bob") is None and store.get(mine.id, "") is None
    assert store.get(mine.id, "alice") is mine


async def test_the_interrupting_turn_sees_the_reply_it_interrupted(make_server,
                                                                   tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    stub = running.stub
    story = "tell me a long story"
    _, hello, events = await collect(stub.Ask(ask("hello")))
    session = events[0][2].session_id
    long_call = stub.Ask(ask(story, session, max_new_tokens=100))
    async for _ in long_call:  # streaming now
        break
    _, stop, _ = await collect(stub.Ask(ask("stop", session)))
    interrupted = [r.completion for r in [r async for r in long_call]
                   if r.WhichOneof("event") == "completion"][0]
    assert interrupted.finish_reason == FR.FINISH_REASON_INTERRUPTED
    assert interrupted.text.strip()  # the user heard part of the story

    async def stop_prompt_tokens(reply: str) -> int:
        """"stop" in a new session given the same dialogue, with `reply` for the story."""
        history = [pb.DialogueTurn(role=pb.ROLE_USER, text="hello"),
                   pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text=hello[0].text),
                   pb.DialogueTurn(role=pb.ROLE_USER, text=story),
                   pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text=reply)]
        _, done, _ = await collect(stub.Ask(ask("stop", start=spb.ConverseStart(
            history=history))))
        return done[0].usage.prompt_tokens

    with_reply, without_reply = (await stop_prompt_tokens(interrupted.text),
                                 await stop_prompt_tokens(""))
    assert stop[0].usage.prompt_tokens == with_reply > without_reply, (
        stop[0].usage.prompt_tokens, with_reply, without_reply)


async def test_a_client_leaving_mid_reply_frees_the_session_at_once(make_server,
                                                                    tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    stub = running.stub
    _, _, events = await collect(stub.Ask(ask("hello")))
    session = events[0][2].session_id
    long_call = stub.Ask(ask("tell me a long story", session, max_new_tokens=100))
    async for _ in long_call:
        break
    long_call.cancel()  # the client goes away without reading on
    _, done, events = await asyncio.wait_for(collect(stub.Ask(ask("still there?", session))),
                                             10)
    assert events[0][2].turn_id == 3 and done[0].finish_reason == FR.FINISH_REASON_LENGTH
    await wait_idle(running.server.scheduler)


@pytest.mark.parametrize("request_, code, field", [
    (ask("hi", start=spb.ConverseStart(system_prompt="x" * 20_001)),
     grpc.StatusCode.INVALID_ARGUMENT, "start.system_prompt"),
    (ask("hi", start=spb.ConverseStart(history=[pb.DialogueTurn(text="hi")])),
     grpc.StatusCode.INVALID_ARGUMENT, "start.history[0].role"),
    (ask("hi", start=spb.ConverseStart(sampling=pb.SamplingParams(top_p=7))),
     grpc.StatusCode.INVALID_ARGUMENT, "start.sampling.top_p"),
    (ask("hi", start=spb.ConverseStart(scene=pb.SceneFeatures(
        objects=[pb.SceneObject(id="x")]))),
     grpc.StatusCode.INVALID_ARGUMENT, "start.scene.objects[0].label"),
    (spb.AskRequest(user_turn=spb.UserTurn(audio=pb.AudioFeatures(
        transcript="hi", embedding=pb.FeatureVector(encoder="voice", dims=2,
                                                    values=[0.1, 0.2])))),
     grpc.StatusCode.FAILED_PRECONDITION, "user_turn.audio.embedding"),
    (spb.AskRequest(user_turn=spb.UserTurn(text="x" * 20_001)),
     grpc.StatusCode.INVALID_ARGUMENT, "user_turn.text"),
], ids=["system-prompt-too-long", "history-role", "start-sampling", "start-scene",
        "audio-encoder-without-projector", "text-too-long"])
async def test_every_field_is_checked_with_its_own_status(tiny_server, request_, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Ask(request_))
    assert err.value.code() == code
    assert err.value.details().startswith(field), err.value.details()


async def test_the_newest_of_turns_arriving_together_is_answered(make_server, tiny_model_dir):
    # A reply streams; two more turns arrive back to back. Whatever the prompt thread's
    # timing, the newest is answered in full and the one between ends INTERRUPTED: an older
    # turn never interrupts a newer one. "Newest" is the server's arrival order, so the
    # second call is sent once the server has taken the first one's ticket (two calls sent
    # together may reach it in either order).
    running = await make_server(tiny_model_dir, step_delay=0.02)
    stub = running.stub
    session, first = await streaming_session(stub)
    dialogue = running.server.servicer._sessions._sessions[session].dialogue
    tickets = dialogue._tickets
    middle = asyncio.ensure_future(collect(stub.Ask(ask("wait", session, max_new_tokens=30))))
    await wait_for(lambda: dialogue._tickets == tickets + 1, what="the middle turn's ticket")
    newest = asyncio.ensure_future(collect(stub.Ask(ask("stop", session, max_new_tokens=6))))
    _, middle_done, _ = await middle
    _, newest_done, _ = await newest
    async for _ in first:
        pass
    assert middle_done[0].finish_reason == FR.FINISH_REASON_INTERRUPTED
    assert newest_done[0].finish_reason == FR.FINISH_REASON_LENGTH
    assert newest_done[0].usage.completion_tokens == 6
    await wait_idle(running.server.scheduler)

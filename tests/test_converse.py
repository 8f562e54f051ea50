"""Converse: a bidi dialogue session with scene updates and barge-in."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import wait_for, wait_idle

FR = pb.FinishReason


def small_scene(*labels):
    return pb.SceneFeatures(objects=[pb.SceneObject(id=f"o{i}", label=label)
                                     for i, label in enumerate(labels)])


class Session:
    """Drive a Converse call: send requests at will, read replies by turn."""

    def __init__(self, stub):
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.call = stub.Converse(self._requests())
        self.responses: list[spb.ConverseResponse] = []

    async def _requests(self):
        while True:
            item = await self.outgoing.get()
            if item is None:
                return
            yield item

    async def send(self, **kwargs):
        await self.outgoing.put(spb.ConverseRequest(**kwargs))

    async def read_until_complete(self, turn_id: int) -> list[spb.ConverseResponse]:
        got = []
        async for response in self.call:
            self.responses.append(response)
            got.append(response)
            if response.turn_id == turn_id and response.WhichOneof("event") == "completion":
                return got
        raise AssertionError("stream ended before the turn completed")

    async def close(self):
        await self.outgoing.put(None)
        async for response in self.call:
            self.responses.append(response)


def completion(responses, turn_id):
    return next(r.completion for r in responses
                if r.turn_id == turn_id and r.WhichOneof("event") == "completion")


async def test_reply_per_turn_with_history(tiny_server):
    s = Session(tiny_server.stub)
    sampling = pb.SamplingParams(max_new_tokens=8)
    await s.send(start=spb.ConverseStart(scene=small_scene("chair"), sampling=sampling))
    await s.send(user_turn=spb.UserTurn(text="what is here?"))
    first = await s.read_until_complete(1)
    await s.send(user_turn=spb.UserTurn(audio=pb.AudioFeatures(transcript="and now?",
                                                               confidence=0.9)))
    second = await s.read_until_complete(2)
    await s.close()
    c1, c2 = completion(first, 1), completion(second, 2)
    assert c1.finish_reason == c2.finish_reason == FR.FINISH_REASON_LENGTH
    assert c1.text == "".join(r.chunk.text for r in first if r.WhichOneof("event") == "chunk")
    # The second prompt carries the first exchange.
    assert c2.usage.prompt_tokens > c1.usage.prompt_tokens + c1.usage.completion_tokens


async def test_scene_update_reaches_the_next_prompt(tiny_server):
    async def prompt_tokens(update: bool) -> int:
        s = Session(tiny_server.stub)
        await s.send(start=spb.ConverseStart(scene=small_scene("chair"),
                                             sampling=pb.SamplingParams(max_new_tokens=2)))
        if update:
            await s.send(scene_update=small_scene("chair", "table", "lamp", "window"))
        await s.send(user_turn=spb.UserTurn(turn_id=7, text="what is here?"))
        got = await s.read_until_complete(7)
        await s.close()
        return completion(got, 7).usage.prompt_tokens

    assert await prompt_tokens(update=True) > await prompt_tokens(update=False)


async def test_new_turn_interrupts_the_reply_in_flight(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    s = Session(running.stub)
    await s.send(start=spb.ConverseStart(sampling=pb.SamplingParams(max_new_tokens=100)))
    await s.send(user_turn=spb.UserTurn(turn_id=1, text="tell me a long story"))
    async for response in s.call:  # wait until the first reply is streaming
        s.responses.append(response)
        if response.WhichOneof("event") == "chunk":
            break
    await s.send(user_turn=spb.UserTurn(turn_id=2, text="stop, what is that?",
                                        sampling=pb.SamplingParams(max_new_tokens=5)))
    await s.read_until_complete(2)
    await s.close()
    first, second = completion(s.responses, 1), completion(s.responses, 2)
    assert first.finish_reason == FR.FINISH_REASON_INTERRUPTED
    assert 0 < first.usage.completion_tokens < 100
    assert second.finish_reason == FR.FINISH_REASON_LENGTH
    # Turn 1 is complete (its Completion) before turn 2 starts streaming.
    order = [(r.turn_id, r.WhichOneof("event")) for r in s.responses]
    assert order.index((1, "completion")) < order.index((2, "chunk"))
    await wait_idle(running.server.scheduler)


async def test_cancel_message_stops_the_reply(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    s = Session(running.stub)
    await s.send(user_turn=spb.UserTurn(turn_id=3, text="go on",
                                        sampling=pb.SamplingParams(max_new_tokens=100)))
    async for response in s.call:
        s.responses.append(response)
        break
    await s.send(cancel=spb.CancelReply())
    got = await s.read_until_complete(3)
    await s.close()
    assert completion(got, 3).finish_reason == FR.FINISH_REASON_CANCELLED


async def test_start_after_a_turn_is_rejected(tiny_server):
    s = Session(tiny_server.stub)
    await s.send(user_turn=spb.UserTurn(text="hi", sampling=pb.SamplingParams(max_new_tokens=2)))
    await s.send(start=spb.ConverseStart())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request[1].start:")


async def test_user_turn_needs_text(tiny_server):
    s = Session(tiny_server.stub)
    await s.send(user_turn=spb.UserTurn(audio=pb.AudioFeatures(transcript="  ")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request[0].user_turn.text:")


async def test_drain_ends_an_idle_session_at_once_with_unavailable(tiny_model_dir, tmp_path):
    from conftest import start_server

    running = await start_server(tiny_model_dir, tmp_path, grace_seconds=20)
    s = Session(running.stub)
    await s.send(start=spb.ConverseStart(sampling=pb.SamplingParams(max_new_tokens=3)))
    await s.send(user_turn=spb.UserTurn(turn_id=1, text="hi"))
    await s.read_until_complete(1)  # now idle, waiting for the user
    waited = await running.server.stop()
    assert waited < 2.0, "an idle dialogue must not hold the shutdown for the grace period"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in s.call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await running.channel.close()


async def test_drain_lets_the_reply_in_flight_finish_first(tiny_model_dir, tmp_path):
    from conftest import start_server

    running = await start_server(tiny_model_dir, tmp_path, step_delay=0.02, grace_seconds=20)
    s = Session(running.stub)
    await s.send(start=spb.ConverseStart(sampling=pb.SamplingParams(max_new_tokens=40)))
    await s.send(user_turn=spb.UserTurn(turn_id=1, text="tell me"))
    async for response in s.call:  # the reply is streaming
        s.responses.append(response)
        break
    stopping = asyncio.ensure_future(running.server.stop())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for response in s.call:
            s.responses.append(response)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    done = completion(s.responses, 1)
    assert done.finish_reason == FR.FINISH_REASON_LENGTH and done.usage.completion_tokens == 40
    assert await stopping < 10
    await running.channel.close()


async def test_the_interrupting_turn_sees_the_reply_it_interrupted(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    story, stop = "tell me a long story", "stop, what is that?"

    async def stop_prompt_tokens(history=(), interrupt=False) -> tuple[int, str]:
        """Turn 2's prompt tokens, and the text turn 1 was interrupted at (if any)."""
        s = Session(running.stub)
        await s.send(start=spb.ConverseStart(history=history,
                                             sampling=pb.SamplingParams(max_new_tokens=100)))
        if interrupt:
            await s.send(user_turn=spb.UserTurn(turn_id=1, text=story))
            async for response in s.call:
                s.responses.append(response)
                if response.WhichOneof("event") == "chunk":
                    break
        await s.send(user_turn=spb.UserTurn(turn_id=2, text=stop,
                                            sampling=pb.SamplingParams(max_new_tokens=3)))
        await s.read_until_complete(2)
        await s.close()
        heard = ""
        if interrupt:
            first = completion(s.responses, 1)
            assert first.finish_reason == FR.FINISH_REASON_INTERRUPTED
            heard = first.text
        return completion(s.responses, 2).usage.prompt_tokens, heard

    interrupted, heard = await stop_prompt_tokens(interrupt=True)
    assert heard.strip()  # the user heard part of the story
    # The same dialogue given as history: the user's turn *and* the reply so far.
    with_reply, _ = await stop_prompt_tokens(history=[
        pb.DialogueTurn(role=pb.ROLE_USER, text=story),
        pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text=heard)])
    without_reply, _ = await stop_prompt_tokens(history=[
        pb.DialogueTurn(role=pb.ROLE_USER, text=story),
        pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text="")])
    assert interrupted == with_reply > without_reply, (interrupted, with_reply, without_reply)


async def test_turns_during_drain_are_refused(tiny_model_dir, tmp_path):
    from conftest import start_server

    running = await start_server(tiny_model_dir, tmp_path, step_delay=0.02, grace_seconds=20)
    s = Session(running.stub)
    await s.send(start=spb.ConverseStart(sampling=pb.SamplingParams(max_new_tokens=30)))
    await s.send(user_turn=spb.UserTurn(turn_id=1, text="tell me"))
    async for response in s.call:
        s.responses.append(response)
        break
    stopping = asyncio.ensure_future(running.server.stop())
    await wait_for(running.server.servicer.draining.is_set, what="draining")
    await s.send(user_turn=spb.UserTurn(turn_id=2, text="and more"))  # keeps talking
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for response in s.call:
            s.responses.append(response)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Refused, not answered: nothing of turn 2 came back, only turn 1's reply.
    assert {r.turn_id for r in s.responses} == {1}, [(r.turn_id, r.WhichOneof("event"))
                                                     for r in s.responses]
    assert await stopping < 10
    await running.channel.close()

"""Resumable replies: a connection cut mid-reply, then Resume(stream_id, after_seq).

The cut is real: a TCP proxy between client and server resets both sides at once
(tests/upstream.py `TcpProxy.cut`), as when a headset changes networks. The
resumed text must equal an uncut run's byte for byte, with no token generated twice.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest

from arbridge.serving.streams import StreamStore
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import collect, scrape, wait_for, wait_idle
from upstream import TcpProxy

RESUMABLE = pb.StreamOptions(resumable=True)
NEW_TOKENS = 24


def generate(prompt="The red chair", **sampling) -> spb.GenerateRequest:
    sampling.setdefault("max_new_tokens", NEW_TOKENS)
    return spb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(**sampling),
                               stream=RESUMABLE)


class Follower:
    """What a client has of one stream: the responses it got, in order."""

    def __init__(self):
        self.responses = []
        self.stream_id = ""

    @property
    def last_seq(self) -> int:
        return self.responses[-1].seq if self.responses else 0

    def add(self, response) -> None:
        if response.stream_id:
            self.stream_id = response.stream_id
        self.responses.append(response)

    def text(self) -> str:
        return "".join(r.chunk.text for r in self.responses if r.WhichOneof("event") == "chunk")

    def completion(self):
        return next(r.completion for r in self.responses if r.WhichOneof("event") == "completion")


async def cut_after(open_call, proxy: TcpProxy, chunks: int, follower: Follower) -> bool:
    """Read `open_call()` until `chunks` chunks came, then cut the network. False when
    the reply ended first (chunks can hold several tokens)."""
    try:
        async for response in open_call():
            follower.add(response)
            if sum(r.WhichOneof("event") == "chunk" for r in follower.responses) >= chunks:
                proxy.cut()
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        return True
    return False


async def resume(target: str, follower: Follower, metadata=()) -> float:
    """Resume the follower's stream on a new connection, as a client would (a try that
    meets the dying old connection is retried); the ms to its first response."""
    for attempt in range(3):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            started, first = time.perf_counter(), None
            try:
                async for response in stub.Resume(spb.ResumeRequest(
                        stream_id=follower.stream_id, after_seq=follower.last_seq),
                        metadata=metadata):
                    first = first or time.perf_counter()
                    follower.add(response)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise
                await asyncio.sleep(0.05)
                continue
        assert first is not None, f"nothing came after seq {follower.last_seq}"
        return (first - started) * 1e3
    raise AssertionError("unreachable")


@pytest.fixture
async def slow(make_server, tiny_model_dir):
    return await make_server(tiny_model_dir, step_delay=0.02, metrics_port=0,
                             resume_grace_s=5.0)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=7)],
                         ids=["greedy", "seeded"])
async def test_a_cut_reply_resumes_to_the_uncut_text(slow, sampling):
    _, done, _ = await collect(slow.stub.Generate(generate(**sampling)))
    uncut = done[0].text
    tokens_before = scrape(slow)[("arbridge_generated_tokens_total", ())]

    proxy = await TcpProxy(slow.server.port).start()
    try:
        follower = Follower()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            assert await cut_after(lambda: stub.Generate(generate(**sampling)), proxy, 3,
                                   follower)
        assert follower.stream_id and follower.responses[0].seq == 1
        await resume(f"127.0.0.1:{proxy.port}", follower)
    finally:
        await proxy.close()
    seqs = [r.seq for r in follower.responses]
    assert seqs == list(range(1, len(seqs) + 1))  # each once, in order
    assert follower.text() == follower.completion().text == uncut
    assert follower.completion().usage.completion_tokens == NEW_TOKENS
    # Nothing was generated twice: the engine made exactly one reply's tokens.
    tokens = scrape(slow)[("arbridge_generated_tokens_total", ())] - tokens_before
    assert tokens == NEW_TOKENS


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=11)],
                         ids=["greedy", "seeded"])
async def test_resume_over_grpc_web_replays_and_goes_on_live(make_server, tiny_model_dir,
                                                             sampling):
    from test_grpc_web import call as web_call

    s = await make_server(tiny_model_dir, step_delay=0.03, grpc_web_port=0)
    _, done, _ = await collect(s.stub.Generate(generate(**sampling)))
    follower = Follower()
    call = s.stub.Generate(generate(**sampling))
    async for response in call:  # the native client leaves after two events...
        follower.add(response)
        if len(follower.responses) == 2:
            call.cancel()
            break
    # ... and the app resumes from the browser, from seq 1 (it lost the second).
    _, frames = await web_call(s, "Resume", spb.ResumeRequest(stream_id=follower.stream_id,
                                                              after_seq=1))
    assert frames.status == 0, frames.message
    replayed = [spb.ResumeResponse.FromString(m) for _, m in frames.messages]
    assert replayed[0].seq == 2 and replayed[0].stream_id == follower.stream_id
    assert "".join(r.chunk.text for r in replayed) == done[0].text[len(
        follower.responses[0].chunk.text):]
    assert replayed[-1].completion.text == done[0].text


async def test_streams_expire_and_belong_to_their_caller(make_server, tiny_model_dir,
                                                         tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token\nbob-token\n")
    s = await make_server(tiny_model_dir, step_delay=0.05, auth_tokens_file=tokens,
                          resume_grace_s=0.5)
    alice = (("authorization", "Bearer alice-token"),)
    bob = (("authorization", "Bearer bob-token"),)
    follower = Follower()
    call = s.stub.Generate(generate(max_new_tokens=150), metadata=alice)  # 7.5 s of tokens
    async for response in call:
        follower.add(response)
        break
    call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(s.stub.Resume(spb.ResumeRequest(stream_id=follower.stream_id),
                                    metadata=bob))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another caller" in err.value.details()
    # The same token, written otherwise, is the same caller.
    other_spelling = (("authorization", "bearer   alice-token "),)
    again = s.stub.Resume(spb.ResumeRequest(stream_id=follower.stream_id, after_seq=1),
                          metadata=other_spelling)
    assert (await again.read()).seq == 2
    again.cancel()
    # Detached, it keeps generating for the grace time, then it is cancelled and gone.
    stream = s.server.servicer.streams._streams[follower.stream_id]
    await wait_for(lambda: not stream.followed and stream.detached_tokens >= 2, 2,
                   "tokens generated after its follower left")
    assert s.server.scheduler.load[0] == 1, "still generating within the grace time"
    await wait_idle(s.server.scheduler, timeout=2.5)
    await wait_for(lambda: len(s.server.servicer.streams) == 0, 5, "stream forgotten")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(s.stub.Resume(spb.ResumeRequest(stream_id=follower.stream_id),
                                    metadata=alice))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "resume_grace_s" in err.value.details()
    assert s.server.servicer.streams.bytes == 0


async def test_a_call_gone_before_its_first_event_is_a_cancel(slow):
    # Its client never had the stream_id, so nobody can resume it: it ends at once.
    call = slow.stub.Generate(generate(max_new_tokens=200))
    await wait_for(lambda: slow.server.scheduler.load != (0, 0), 5, "the request queued")
    call.cancel()
    await wait_idle(slow.server.scheduler, timeout=1)
    assert len(slow.server.servicer.streams) == 0


async def test_a_second_follower_takes_over(slow):
    follower = Follower()
    call = slow.stub.Generate(generate())
    async for response in call:
        follower.add(response)
        break  # the old connection, not known dead yet, stays open
    _, done, _ = await collect(slow.stub.Resume(spb.ResumeRequest(
        stream_id=follower.stream_id, after_seq=follower.last_seq)))
    assert len(done) == 1
    call.cancel()


async def test_cancel_stream_ends_the_reply_at_once(slow):
    follower = Follower()
    call = slow.stub.Generate(generate(max_new_tokens=200))
    async for response in call:
        follower.add(response)
        break
    call.cancel()  # only detaches: the transport cannot tell this from a lost network
    assert slow.server.scheduler.load[0] == 1
    await slow.stub.CancelStream(spb.CancelStreamRequest(stream_id=follower.stream_id))
    await wait_idle(slow.server.scheduler, timeout=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await slow.stub.CancelStream(spb.CancelStreamRequest(stream_id=follower.stream_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("request_, code, field", [
    (spb.ResumeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "stream_id"),
    (spb.ResumeRequest(stream_id="no-such-stream"), grpc.StatusCode.NOT_FOUND, "stream_id"),
])
async def test_bad_resume_requests(slow, request_, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(slow.stub.Resume(request_))
    assert err.value.code() == code and err.value.details().startswith(field)


async def test_resume_past_the_last_event_is_invalid(slow):
    _, _, events = await collect(slow.stub.Generate(generate(max_new_tokens=4)))
    stream_id = events[0][2].stream_id
    last = events[-1][2].seq
    _, done, _ = await collect(slow.stub.Resume(spb.ResumeRequest(stream_id=stream_id,
                                                                  after_seq=last - 1)))
    assert len(done) == 1  # the finished reply is kept: its Completion can be fetched
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(slow.stub.Resume(spb.ResumeRequest(stream_id=stream_id,
                                                         after_seq=last + 5)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("after_seq")


async def test_every_stream_numbers_its_responses_and_only_resumable_ones_get_an_id(slow):
    _, _, events = await collect(slow.stub.Generate(spb.GenerateRequest(
        prompt="A lamp", sampling=pb.SamplingParams(max_new_tokens=5))))
    assert [e[2].seq for e in events] == list(range(1, len(events) + 1))
    assert not any(e[2].stream_id for e in events)
    assert len(slow.server.servicer.streams) == 0


async def test_64_streams_cut_at_random_leave_nothing_behind(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, step_delay=0.003, max_active=16,
                          max_streams_per_peer=256, metrics_port=0, resume_grace_s=0.5)
    prompts = ["The red chair", "A lamp", "The kitchen table", "Two cups"]
    uncut = {}
    for prompt in prompts:
        _, done, _ = await collect(s.stub.Generate(generate(prompt)))
        uncut[prompt] = done[0].text
    tokens_before = scrape(s)[("arbridge_generated_tokens_total", ())]
    latencies = []

    async def one(i: int) -> None:
        rng = random.Random(i)
        prompt = prompts[i % len(prompts)]
        proxy = await TcpProxy(s.server.port).start()
        follower = Follower()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                stub = service_pb2_grpc.ArBridgeServiceStub(channel)
                cut = await cut_after(lambda: stub.Generate(generate(prompt)), proxy,
                                      rng.randint(1, 12), follower)
            got_all = any(r.WhichOneof("event") == "completion" for r in follower.responses)
            if cut and not got_all:  # (a cut after the Completion leaves nothing to resume)
                latencies.append(await resume(f"127.0.0.1:{proxy.port}", follower))
        finally:
            await proxy.close()
        assert follower.text() == uncut[prompt], (i, follower.text())

    await asyncio.gather(*(one(i) for i in range(64)))
    metrics = scrape(s)
    assert metrics[("arbridge_generated_tokens_total", ())] - tokens_before == 64 * NEW_TOKENS
    assert len(latencies) >= 24, len(latencies)
    await wait_idle(s.server.scheduler)
    await wait_for(lambda: scrape(s)[("arbridge_resumable_streams", ())] == 0, 5,
                   "streams expired")
    metrics = scrape(s)
    assert metrics[("arbridge_resume_buffer_bytes", ())] == 0
    assert metrics[("arbridge_active_requests", ())] == 0


async def test_converse_replies_outlive_their_stream(slow):
    start = spb.ConverseRequest(start=spb.ConverseStart(stream=RESUMABLE))
    turn = spb.ConverseRequest(user_turn=spb.UserTurn(
        turn_id=7, text="hello", sampling=pb.SamplingParams(max_new_tokens=12)))
    follower = Follower()
    call = slow.stub.Converse(iter([start, turn]))
    async for response in call:
        follower.add(response)
        break
    call.cancel()
    assert follower.stream_id and follower.responses[0].turn_id == 7
    await resume(slow.target, follower)
    assert [r.seq for r in follower.responses] == list(range(1, len(follower.responses) + 1))
    assert follower.responses[-1].turn_id == 7
    assert follower.text() == follower.completion().text


async def test_an_ask_session_hears_the_whole_detached_reply(slow):
    ask = spb.AskRequest(user_turn=spb.UserTurn(text="hi", sampling=pb.SamplingParams(
        max_new_tokens=10)), stream=RESUMABLE)
    follower = Follower()
    call = slow.stub.Ask(ask)
    async for response in call:
        follower.add(response)
        break
    call.cancel()
    session = follower.responses[0].session_id
    await resume(slow.target, follower)
    assert follower.responses[-1].session_id == session
    state = slow.server.servicer._sessions.get(session, "").dialogue.state
    await wait_for(lambda: len(state.history) == 2, 2, "turn recorded")
    assert state.history[-1].text == follower.completion().text


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=3)],
                         ids=["greedy", "seeded"])
async def test_abandoned_replies_pause_and_free_the_engine(make_server, tiny_model_dir,
                                                           sampling):
    """Six resumable replies abandoned after their first response, on an engine of 4
    slots: each generates its detached share (4 tokens) and is parked, so the engine is
    empty for a bystander; one resumed later ends exactly as an uninterrupted run."""
    s = await make_server(tiny_model_dir, step_delay=0.02, max_active=4,
                          resume_detached_tokens=4, resume_grace_s=30)
    request = generate(max_new_tokens=120, **sampling)
    followers = []
    for _ in range(6):
        follower, call = Follower(), s.stub.Generate(request)
        async for response in call:
            follower.add(response)
            break
        call.cancel()
        followers.append(follower)
    scheduler = s.server.scheduler
    await wait_for(lambda: scheduler.parked == 6 and scheduler.load == (0, 0), 20,
                   lambda: f"parked {scheduler.parked}, load {scheduler.load}")
    for stream in s.server.servicer.streams._streams.values():
        tokens = sum(len(e.token_ids) for _, e in stream.events if isinstance(e, pb.TokenChunk))
        # Its share (4) after the first response, and the few the engine had made before
        # the pause reached it: nowhere near the 120 asked for.
        assert not stream.done and tokens <= 1 + 4 + 12, tokens
    # The bystander has the engine to itself.
    _, done, _ = await collect(s.stub.Generate(gen_plain(max_new_tokens=4)))
    assert done[0].usage.completion_tokens == 4
    assert scheduler.parked == 6
    # Resumed: the buffered part at once, then the rest, as if never paused.
    await resume(s.target, followers[0])
    completion = followers[0].completion()
    assert completion.finish_reason == pb.FINISH_REASON_LENGTH
    assert completion.usage.completion_tokens == 120
    plain = spb.GenerateRequest()
    plain.CopyFrom(request)
    plain.ClearField("stream")
    _, uninterrupted, _ = await collect(s.stub.Generate(plain))
    assert completion.text == uninterrupted[0].text == followers[0].text()
    assert scheduler.parked == 5
    for follower in followers[1:]:  # cancelled while parked: they leave the engine
        await s.stub.CancelStream(spb.CancelStreamRequest(stream_id=follower.stream_id))
    await wait_for(lambda: scheduler.parked == 0, 5, "parked replies cancelled")
    await wait_idle(scheduler)


def gen_plain(**sampling) -> spb.GenerateRequest:
    return spb.GenerateRequest(prompt="A lamp", sampling=pb.SamplingParams(**sampling))


# -- the store on its own: memory limits ---------------------------------------------
class FakeReply:
    """A reply of `n` chunks of `size` bytes, one per `delay_s`, then a Completion."""

    def __init__(self, n: int, size: int, delay_s: float = 0.0):
        self.n, self.size, self.delay_s = n, size, delay_s
        self.cancelled = asyncio.Event()
        self.sequences = 1

    def cancel(self, reason=None) -> None:
        self.cancelled.set()

    def dressed(self, completion):
        return completion

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    async def __aiter__(self):
        for _ in range(self.n):
            if self.cancelled.is_set():
                break
            await asyncio.sleep(self.delay_s)
            yield pb.TokenChunk(text="x" * self.size)
        reason = pb.FINISH_REASON_CANCELLED if self.cancelled.is_set() else \
            pb.FINISH_REASON_LENGTH
        yield pb.Completion(finish_reason=reason)


async def test_a_reply_past_its_buffer_stops_with_a_cancelled_completion():
    store = StreamStore(grace_s=5, stream_bytes=4096, total_bytes=1 << 20)
    reply = FakeReply(1000, 100)
    stream = store.open("", reply, 1)
    events = [e async for _, e in store.follow(stream, 0)]
    assert reply.cancelled.is_set()
    assert isinstance(events[-1], pb.Completion)
    assert events[-1].finish_reason == pb.FINISH_REASON_CANCELLED
    assert "resume buffer full" in events[-1].error_message
    # The events up to the limit, and the Completion that repeats their text.
    assert 4096 < stream.bytes < 2 * (4096 + 200)
    assert events[-1].text == "x" * 100 * (len(events) - 1)
    store.close()


async def test_over_the_total_the_longest_unfollowed_streams_go_first():
    store = StreamStore(grace_s=60, stream_bytes=1 << 20, total_bytes=10_000)
    old, newer = FakeReply(40, 100), FakeReply(40, 100)
    first = store.open("", old, 1)
    await wait_for(lambda: first.done, 5, "the first reply finished")  # ~4 KB, unfollowed
    second = store.open("", newer, 1)
    await wait_for(lambda: second.done, 5, "the second reply finished")
    async for _ in store.follow(first, 0):
        pass  # followed once: its unfollowed time starts after the second's
    live = store.open("", FakeReply(50, 100, delay_s=0.001), 1)
    async for _ in store.follow(live, 0):
        pass
    assert second.id not in store._streams  # unfollowed longest: dropped
    assert first.id in store._streams and live.id in store._streams
    assert store.bytes == first.bytes + live.bytes <= 10_000
    store.close()
    assert len(store) == 0 and store.bytes == 0


async def test_bad_cancel_stream_requests(make_server, tiny_model_dir, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token\nbob-token\n")
    s = await make_server(tiny_model_dir, step_delay=0.02, auth_tokens_file=tokens)
    alice = (("authorization", "Bearer alice-token"),)
    bob = (("authorization", "Bearer bob-token"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.CancelStream(spb.CancelStreamRequest(), metadata=alice)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("stream_id")
    call = s.stub.Generate(generate(max_new_tokens=100), metadata=alice)
    stream_id = (await call.read()).stream_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.CancelStream(spb.CancelStreamRequest(stream_id=stream_id), metadata=bob)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await s.stub.CancelStream(spb.CancelStreamRequest(stream_id=stream_id), metadata=alice)
    last = None  # the follower gets the reply's end
    while (response := await call.read()) != grpc.aio.EOF:
        last = response
    assert last.completion.finish_reason == pb.FINISH_REASON_CANCELLED

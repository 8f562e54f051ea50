"""TLS, mTLS and bearer-token auth, positive and negative, with certificates made here."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from arbridge.app import ArBridgeServer
from arbridge.client import ArBridgeClient
from arbridge.config import Settings
from arbridge.security import SecurityConfigError, TokenChecker, load_tokens, warn_if_exposed
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from certs import CertificateAuthority
from conftest import collect

REQUEST = spb.GenerateRequest(prompt="The red chair",
                              sampling=pb.SamplingParams(max_new_tokens=4))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "arbridge-test-ca")
    other = CertificateAuthority(directory, "stranger-ca")
    return {
        "ca": ca.files.cert,
        "server": ca.issue("server", server=True),
        "client": ca.issue("headset-1", server=False),
        "stranger": other.issue("stranger", server=False),
    }


def tls_channel(port: int, ca, client=None, token: str | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(), client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None)
    if token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def generate(channel, metadata=None, timeout=20):
    stub = service_pb2_grpc.ArBridgeServiceStub(channel)
    return await collect(stub.Generate(REQUEST, metadata=metadata, timeout=timeout))


async def refused(channel, metadata=None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(channel, metadata, timeout=5)
    return err.value


async def test_tls_serves_tls_clients_and_refuses_plaintext(make_server, tiny_model_dir, pki):
    s = await make_server(tiny_model_dir, tls_cert=pki["server"].cert,
                          tls_key=pki["server"].key)
    async with tls_channel(s.server.port, pki["ca"]) as channel:
        _, done, _ = await generate(channel)
        assert done[0].usage.completion_tokens == 4
    err = await refused(s.channel)  # the fixture's plaintext channel
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_ca(make_server, tiny_model_dir, pki):
    s = await make_server(tiny_model_dir, tls_cert=pki["server"].cert,
                          tls_key=pki["server"].key, tls_client_ca=pki["ca"])
    async with tls_channel(s.server.port, pki["ca"], client=pki["client"]) as channel:
        _, done, _ = await generate(channel)
        assert done[0].usage.completion_tokens == 4
    async with tls_channel(s.server.port, pki["ca"]) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
    async with tls_channel(s.server.port, pki["ca"], client=pki["stranger"]) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE


async def test_bearer_tokens_from_file_and_env(make_server, tiny_model_dir, tmp_path,
                                               monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("# headsets\nalpha-token\n\n  beta-token  \n")
    monkeypatch.setenv("ARBRIDGE_AUTH_TOKENS", "gamma-token, delta-token")
    s = await make_server(tiny_model_dir, auth_tokens_file=tokens)
    for token in ("alpha-token", "beta-token", "gamma-token", "delta-token"):
        _, done, _ = await generate(s.channel, (("authorization", f"Bearer {token}"),))
        assert done[0].usage.completion_tokens == 4
    for metadata, why in ((None, "missing"), ((("authorization", "Bearer nope"),), "invalid"),
                          ((("authorization", "alpha-token"),), "Bearer"),
                          ((("authorization", "Bearer alpha-token-x"),), "invalid")):
        err = await refused(s.channel, metadata)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert why in err.details()
    # Every other method, health and reflection too, unless --public-health.
    health = health_pb2_grpc.HealthStub(s.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for call in (lambda: s.stub.DescribeScene(spb.DescribeSceneRequest()),
                 lambda: s.stub.Converse(iter([spb.ConverseRequest()])),
                 lambda: reflection(s.channel)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(call())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def reflection(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))


async def test_public_health_leaves_only_health_and_reflection_open(make_server, tiny_model_dir,
                                                                    monkeypatch):
    monkeypatch.setenv("ARBRIDGE_AUTH_TOKENS", "alpha-token")
    s = await make_server(tiny_model_dir, public_health=True)
    health = health_pb2_grpc.HealthStub(s.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async for listed in reflection(s.channel):
        assert "arbridge.v1.ArBridgeService" in {
            x.name for x in listed.list_services_response.service}
    assert (await refused(s.channel)).code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_python_client_over_mtls_with_token(make_server, tiny_model_dir, pki, tmp_path):
    """The shipped client (used by `arbridge caption --tls-ca ...`): TLS + cert + token."""
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha-token\n")
    s = await make_server(tiny_model_dir, tls_cert=pki["server"].cert,
                          tls_key=pki["server"].key, tls_client_ca=pki["ca"],
                          auth_tokens_file=tokens)

    def run(token):
        client = ArBridgeClient(f"localhost:{s.server.port}", tls_ca=pki["ca"],
                                client_cert=pki["client"].cert, client_key=pki["client"].key,
                                token=token)
        try:
            return client.generate(REQUEST, lambda chunk: None, timeout=20)
        finally:
            client.close()

    stats = await asyncio.to_thread(run, "alpha-token")
    assert stats.completion_tokens == 4
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(run, "wrong")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_checker_accepts_only_exact_tokens():
    checker = TokenChecker([b"s3cret", b"other"])
    assert checker.check((("authorization", "Bearer s3cret"),)) is None
    assert checker.check((("authorization", "bearer other"),)) is None
    for value in ("Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "Bearer ", "s3cret"):
        assert checker.check((("authorization", value),)) is not None, value
    assert not TokenChecker([]).enabled


def test_bad_security_settings_fail_at_start(tmp_path, pki):
    with pytest.raises(SecurityConfigError, match="both"):
        ArBridgeServer(Settings(tls_cert=pki["server"].cert))
    with pytest.raises(SecurityConfigError, match="mTLS"):
        ArBridgeServer(Settings(tls_client_ca=pki["ca"]))
    with pytest.raises(SecurityConfigError, match="cannot read"):
        ArBridgeServer(Settings(tls_cert=tmp_path / "missing.crt", tls_key=pki["server"].key))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SecurityConfigError, match="no token"):
        load_tokens(Settings(auth_tokens_file=empty))
    for blank in ("", " , "):  # set but empty must not switch auth off
        with pytest.raises(SecurityConfigError, match="no token"):
            load_tokens(Settings(auth_tokens=blank))


def test_loud_warning_when_exposed_without_tls_or_auth(caplog):
    with caplog.at_level(logging.WARNING):
        message = warn_if_exposed(Settings(host="0.0.0.0"), tls=False, tokens=False)
    assert "without TLS and token auth" in message and message in caplog.text
    assert "without token auth" in warn_if_exposed(Settings(host="::"), tls=True, tokens=False)
    assert warn_if_exposed(Settings(host="0.0.0.0"), tls=True, tokens=True) is None
    for host in ("127.0.0.1", "::1", "localhost"):
        assert warn_if_exposed(Settings(host=host), tls=False, tokens=False) is None
    # A gRPC-Web port on the network counts too, even when gRPC is loopback-only.
    exposed = warn_if_exposed(Settings(host="127.0.0.1", grpc_web_port=8080,
                                       grpc_web_host="0.0.0.0"), tls=False, tokens=False)
    assert "0.0.0.0:8080" in exposed and "127.0.0.1" not in exposed
    # gRPC-Web with CORS for any origin and no token: a warning even on loopback.
    open_web = warn_if_exposed(Settings(host="127.0.0.1", grpc_web_port=8080),
                               tls=False, tokens=False)
    assert "any web origin" in open_web
    assert warn_if_exposed(Settings(host="127.0.0.1", grpc_web_port=8080,
                                    grpc_web_cors_origins=["https://game.example"]),
                           tls=False, tokens=False) is None
    assert warn_if_exposed(Settings(host="127.0.0.1", grpc_web_port=8080),
                           tls=False, tokens=True) is None


async def test_python_client_sends_its_token_over_plaintext_too(make_server, tiny_model_dir,
                                                                 monkeypatch):
    monkeypatch.setenv("ARBRIDGE_AUTH_TOKENS", "alpha-token")
    s = await make_server(tiny_model_dir)

    def run(token):
        client = ArBridgeClient(f"127.0.0.1:{s.server.port}", token=token)
        try:
            return client.generate(REQUEST, lambda chunk: None, timeout=20)
        finally:
            client.close()

    assert (await asyncio.to_thread(run, "alpha-token")).completion_tokens == 4
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(run, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_undecodable_bytes_on_an_open_stream_are_invalid_argument(make_server,
                                                                        tiny_model_dir):
    s = await make_server(tiny_model_dir)
    raw = s.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/"
                                  "ServerReflectionInfo", request_serializer=None,
                                  response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(raw(iter([b"\xff\xff"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_ask_session_answers_only_the_token_that_started_it(make_server,
                                                                     tiny_model_dir,
                                                                     monkeypatch):
    """B learns A's session id: B's turn is refused exactly as an unknown id is, A's
    reply streaming meanwhile is not interrupted and A's history does not change."""
    monkeypatch.setenv("ARBRIDGE_AUTH_TOKENS", "alpha-token,beta-token")
    s = await make_server(tiny_model_dir, step_delay=0.02)
    alice = (("authorization", "Bearer alpha-token"),)
    bob = (("authorization", "Bearer beta-token"),)

    def ask(text, session_id="", tokens=4, **kw):
        return spb.AskRequest(session_id=session_id, user_turn=spb.UserTurn(
            text=text, sampling=pb.SamplingParams(max_new_tokens=tokens)), **kw)

    secret = spb.ConverseStart(history=[
        pb.DialogueTurn(role=pb.ROLE_USER, text="The door code is 4921."),
        pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text="Noted.")])
    _, _, events = await collect(s.stub.Ask(ask("remember it", start=secret),
                                            metadata=alice))
    session_id = events[0][2].session_id
    session = s.server.servicer._sessions._sessions[session_id]
    turns_before = len(session.dialogue.state.history)
    long_reply = s.stub.Ask(ask("tell me a story", session_id, tokens=60), metadata=alice)
    async for _ in long_reply:  # streaming now
        break

    async def refusal(session, metadata):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(s.stub.Ask(ask("what is the door code?", session),
                                     metadata=metadata))
        return err.value.code(), err.value.details()

    unknown = await refusal("no-such-session", bob)
    assert unknown[0] == grpc.StatusCode.NOT_FOUND
    assert await refusal(session_id, bob) == unknown  # nothing tells them apart
    rest = [r async for r in long_reply]
    done = [r.completion for r in rest if r.WhichOneof("event") == "completion"]
    assert done[0].finish_reason == pb.FINISH_REASON_LENGTH  # not INTERRUPTED by bob
    assert len(session.dialogue.state.history) == turns_before + 2  # alice's story turn only
    assert "door code" not in "".join(t.text for t in session.dialogue.state.history[-2:])
    # The token read the way auth reads it: surrounding spaces do not make a new caller.
    _, done, _ = await collect(s.stub.Ask(
        ask("again", session_id), metadata=(("authorization", "Bearer  alpha-token "),)))
    assert done[0].finish_reason == pb.FINISH_REASON_LENGTH

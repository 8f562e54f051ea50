"""Errors -> gRPC statuses: one table, one decorator for every handler.

Request errors are raised where they are found (validation, a full queue, an
unknown stream) and become a status here, so no handler maps them by hand.
"""

from __future__ import annotations

import functools
import inspect

import grpc

from arbridge.backends import BackendBusy, BackendRefused, BackendUnavailable, RequestTooLarge
from arbridge.serving.sessions import SessionNotFound
from arbridge.serving.streams import StreamForbidden, StreamNotFound
from arbridge.serving.validation import InvalidField, Unsupported

# Status messages travel in a trailer; clients drop trailers over 8-16 KiB, so a
# message echoing a huge field must not grow with it.
MAX_STATUS_MESSAGE_CHARS = 1000

DRAINING = "server is shutting down; reconnect and resend the dialogue"


class Abort(Exception):
    """A request error to send as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers


def client_status(exc: Exception) -> Abort | None:
    """The status `exc` becomes for the client, or None for a server fault."""
    status = _status(exc)
    if status is not None and len(status.message) > MAX_STATUS_MESSAGE_CHARS:
        status.message = status.message[:MAX_STATUS_MESSAGE_CHARS - 1] + "…"
    return status


def _status(exc: Exception) -> Abort | None:
    if isinstance(exc, Abort):
        return exc
    if isinstance(exc, InvalidField | RequestTooLarge):
        return Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, Unsupported | BackendRefused):
        return Abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, BackendBusy):
        retry_ms = str(int(exc.retry_after_s * 1000))
        return Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"{exc}; retry after {retry_ms} ms", (("retry-after-ms", retry_ms),))
    if isinstance(exc, BackendUnavailable):
        return Abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, StreamNotFound):
        return Abort(grpc.StatusCode.NOT_FOUND,
                     "stream_id: unknown or expired (a reply is kept "
                     "resume_grace_s after its client leaves); ask again")
    if isinstance(exc, StreamForbidden):
        return Abort(grpc.StatusCode.PERMISSION_DENIED,
                     "stream_id: the stream belongs to another caller")
    if isinstance(exc, SessionNotFound):
        return Abort(grpc.StatusCode.NOT_FOUND,
                     "session_id: unknown or expired; start a new session with the "
                     "dialogue so far in start.history")
    return None


async def _abort(context, exc: Exception) -> None:
    status = client_status(exc)
    if status is None:
        raise exc
    await context.abort(status.code, status.message, trailing_metadata=status.trailers)


def rpc(method):
    """A handler (unary, or one that streams its responses) whose request errors
    become statuses."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
            except Exception as exc:
                await _abort(context, exc)

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(context, exc)

    return unary

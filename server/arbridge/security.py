"""Transport security and caller authentication.

TLS and mTLS are grpc's own (`ssl_server_credentials`); bearer tokens are
checked by `TokenChecker` in the call interceptor. Tokens are compared in
constant time so response timing leaks nothing about a near-miss.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path

import grpc

from arbridge.config import Settings

log = logging.getLogger(__name__)


class SecurityConfigError(ValueError):
    """The TLS/auth settings cannot work (missing file, half a key pair, no tokens)."""


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    if settings.tls_cert is None:
        if settings.tls_client_ca is not None:
            raise SecurityConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        return None
    if settings.tls_client_ca is not None and settings.grpc_web_port is not None:
        # The gateway would have to vouch for browser certificates it cannot check
        # the same way; terminate mTLS at a proxy in front of gRPC-Web instead.
        raise SecurityConfigError("--grpc-web-port cannot be combined with --tls-client-ca "
                                  "(mTLS); put an mTLS proxy in front of gRPC-Web")
    pair = (_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))
    client_ca = (_read(settings.tls_client_ca, "client CA")
                 if settings.tls_client_ca is not None else None)
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def load_tokens(settings: Settings) -> list[bytes]:
    """Accepted bearer tokens: the file's non-empty, non-# lines plus the env list."""
    tokens: list[str] = []
    if settings.auth_tokens_file is not None:
        text = _read(settings.auth_tokens_file, "token file").decode("utf-8")
        tokens += [ln.strip() for ln in text.splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
        if not tokens:
            raise SecurityConfigError(f"token file {settings.auth_tokens_file} holds no token")
    if settings.auth_tokens is not None:
        from_env = [t.strip() for t in settings.auth_tokens.get_secret_value().split(",")
                    if t.strip()]
        if not from_env:  # set but empty must not mean "auth off"
            raise SecurityConfigError("ARBRIDGE_AUTH_TOKENS is set but holds no token")
        tokens += from_env
    return [t.encode("utf-8") for t in tokens]


class TokenChecker:
    def __init__(self, tokens: list[bytes]):
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, metadata) -> str | None:
        """None when the call may proceed, else why it may not."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode("utf-8")
        # Compare against every token (no early exit) so timing says nothing.
        ok = False
        for accepted in self._tokens:
            ok |= hmac.compare_digest(given, accepted)
        return None if ok else "invalid token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings, tls: bool, tokens: bool) -> str | None:
    """A loud warning when the server is reachable from the network unprotected."""
    binds = [(settings.host, settings.port)]
    if settings.grpc_web_port is not None:
        binds.append((settings.grpc_web_host or settings.host, settings.grpc_web_port))
    exposed = [f"{h}:{p}" for h, p in binds if not is_loopback(h)]
    if settings.grpc_web_port is not None and "*" in settings.grpc_web_cors_origins \
            and not tokens:
        # Even on loopback: any web page the user opens may call this port.
        message = ("SECURITY WARNING: gRPC-Web accepts calls from any web origin and token "
                   "auth is off: any page open in a browser on a machine that can reach the "
                   "port can use the model. Set grpc_web_cors_origins or token auth.")
        log.warning(message)
        if not exposed:
            return message
    if not exposed or (tls and tokens):
        return None
    missing = " and ".join(m for m, on in (("TLS", tls), ("token auth", tokens)) if not on)
    message = (f"SECURITY WARNING: binding {', '.join(exposed)} (reachable from the "
               f"network) without {missing}: anyone who can reach this port can use the model"
               + ("" if tls else " and read every prompt and reply in transit") + ".")
    log.warning(message)
    return message

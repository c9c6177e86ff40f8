"""Who may call, and how often: API keys (``Authorization: Bearer <key>``) and per-client rate limits.

Both are pure ASGI middleware that answer before a request body is read, so a caller without a key or
over its rate costs the server a header parse and nothing more. Keys are kept only as sha256 digests
and compared in constant time (every stored digest is compared, whatever matches); no key is ever
logged. Probes (``/healthz``, ``/readyz``, and the V2 health routes, which KServe and tritonclient use
as probes) stay open; ``/metrics`` is open unless ``metrics_auth`` is set. docs/security.md has the
threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response
from service.shared_buckets import SharedTokenBuckets, spend

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
METRICS = "/metrics"
CLIENT_KEY = "lstm_serve.client"  # the scope entry naming the caller: "key:<id>" or "addr:<ip>"
_HEX = frozenset("0123456789abcdef")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeySet:
    """The accepted API keys, as sha256 digests. Empty: authentication is off."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def load(cls, keys: Iterable[str], keys_file: Path | None = None) -> KeySet:
        """Keys given directly, plus a file of one key, or the sha256 (hex) of one, per line (``#`` comments)."""
        digests = [_digest(key) for key in keys if key]
        if keys_file is not None:
            for line in keys_file.read_text().splitlines():
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                is_hash = len(entry) == 64 and set(entry.lower()) <= _HEX
                digests.append(bytes.fromhex(entry) if is_hash else _digest(entry))
        return cls(tuple(dict.fromkeys(digests)))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def match(self, key: str) -> str | None:
        """An id for the key (its digest's first 12 hex digits, safe to log), or None if it is not accepted."""
        presented = _digest(key)
        found = None
        for digest in self.digests:  # no early exit: the time taken does not say which key matched
            if hmac.compare_digest(presented, digest):
                found = digest
        return None if found is None else found.hex()[:12]


def bearer_token(scope: Scope) -> str | None:
    value = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ApiKeyMiddleware:
    """401 ``{"error": ...}`` + ``WWW-Authenticate: Bearer`` for a missing or unknown key; probes stay open."""

    def __init__(self, app: ASGIApp, keys: KeySet, metrics_auth: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.open = PROBES if metrics_auth else PROBES | {METRICS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # OPTIONS: CORS preflights carry no credentials
        token = bearer_token(scope)
        key_id = self.keys.match(token) if token is not None else None
        if key_id is None:
            message = "missing API key: send Authorization: Bearer <key>" if token is None else "invalid API key"
            response = error_response(401, message, {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        scope[CLIENT_KEY] = f"key:{key_id}"
        await self.app(scope, receive, send)


class TokenBuckets:
    """One token bucket per client: ``rate`` tokens a second up to ``burst``; the least recently seen
    clients are forgotten beyond ``max_clients`` (a forgotten client starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str, now: float | None = None, amount: float = 1.0) -> float:
        """Take ``amount`` tokens (one request, or its cost): 0.0 when granted, else the seconds until they are."""
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.pop(client, (self.burst, now))
        tokens, wait = spend(tokens, now - at, self.rate, self.burst, amount)
        self.buckets[client] = (tokens, now)
        if len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


def token_buckets(purpose: str, rate: float, burst: int) -> TokenBuckets | SharedTokenBuckets:
    """The buckets of one limit: server-wide in a multi-process server's front end (the supervisor made the
    table), else this process's own, which in a one-process server is the whole server's."""
    return SharedTokenBuckets.from_env(purpose, rate, burst) or TokenBuckets(rate, burst)


def client_of(scope: Scope) -> str:
    """Who is calling: its API key id when keys are on, else its address (the proxy's, unless trusted)."""
    client = scope.get(CLIENT_KEY)
    if client is None:
        address = scope.get("client")
        client = f"addr:{address[0] if address else 'unknown'}"
    return client


class RateLimitMiddleware:
    """429 + ``Retry-After`` (whole seconds, at least 1) when a client is over its rate; probes and metrics
    are not limited. The client is its API key when keys are on, else its address (the proxy's, unless
    uvicorn trusts the proxy's ``X-Forwarded-For``: ``FORWARDED_ALLOW_IPS``). One limit for the whole server,
    however many front ends (``token_buckets``)."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets | SharedTokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES or scope["path"] == METRICS:
            return await self.app(scope, receive, send)
        wait = self.buckets.take(client_of(scope))
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            response = error_response(429, f"rate limit exceeded: retry in {retry}s", {"Retry-After": retry})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)

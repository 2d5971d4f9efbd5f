"""Who may call the server and how much they may send: an API key on every ``/v1`` route, a request body limit,
and the rule that a server reachable from other machines has a key.

Both checks are plain ASGI middleware, so they run before FastAPI reads or parses a body: a request without the
key is refused without parsing what it sent, and a body over the limit is refused from its Content-Length (or, for
a chunked body, as soon as the bytes read pass the limit) instead of being kept whole and tokenised. The rest of
such a body is read and dropped before the answer goes out, so that a client still sending reads it rather than a
reset connection.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from starlette.exceptions import HTTPException

from lorakit.errors import LorakitError

# A long chat is tens of kB, and a prompt over --max-input-tokens is refused anyway: a body this large is no request.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DISCARD_BYTES = 64 << 20  # of a refused body, read and dropped at most this much; past it the connection is closed


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to may be reachable from outside


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to serve other machines without a key unless the user said they mean it."""
    if not is_loopback(host) and not api_key and not allow_unauthenticated:
        raise LorakitError(
            f"--host {host} makes the server reachable from other machines, and it has no API key: give "
            "--api-key (or LORAKIT_API_KEY), or --allow-unauthenticated if anyone who can reach the port may use it"
        )


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on every path under ``/v1``; a 401 in OpenAI's error shape otherwise."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1") or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # OPTIONS: a CORS preflight carries no credentials
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        message = "Incorrect API key provided." if given else "Missing API key: send Authorization: Bearer <key>."
        await _discard(receive, DISCARD_BYTES)
        await _answer(send, 401, error_body(401, message, "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
        return None


class BodyTooLarge(HTTPException):
    """Raised while a chunked body is read, once it passes the limit (FastAPI lets an HTTPException through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server takes ({limit} bytes, --max-request-bytes)")


async def _discard(receive: Any, budget: int) -> None:
    """Read and drop the rest of a body (up to ``budget`` bytes), so that a client still sending it reads the answer
    instead of a reset connection; memory stays flat, and nothing is parsed or tokenised."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


class BodyLimitMiddleware:
    """A 413 for a body over ``limit`` bytes: from its Content-Length before reading, or while reading it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit
        self.discard = max(DISCARD_BYTES, 16 * limit)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _discard(receive, self.discard)
            error = BodyTooLarge(self.limit)
            await _answer(send, 413, error_body(413, error.detail, "request_too_large"), [(b"connection", b"close")])
            return None
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await _discard(receive, self.discard)
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited, send)

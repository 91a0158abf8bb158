"""What one request may cost: its body (size, silence), its form fields, and decoded pixels across requests.

Neither Starlette nor uvicorn bounds a request body or times out a client that stops sending one
(uvicorn's timeouts cover idle keep-alive connections and shutdown), and Starlette parses the whole
multipart body before the endpoint sees a file. :class:`BodyLimits` is therefore a small ASGI
middleware around the app: it refuses a declared ``Content-Length`` over the limit before reading
anything, counts the bytes as they stream in (chunked or not) and answers 413 as soon as the count
crosses the limit, answers 408 when the client is silent for ``timeout_s`` in the middle of its body,
and turns a client that hangs up mid-upload into one INFO line instead of a traceback. Form fields
are python-multipart's own limits, passed through ``Request.form`` (:data:`MAX_FIELD_BYTES`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A non-file form field; the service reads none, so a few small ones are tolerated.
MAX_FIELD_BYTES = 64 * 1024

log = logging.getLogger("abcd.serving")


class BodyTooLarge(Exception):
    """The body crossed the limit while streaming in."""


class BodySilent(Exception):
    """The client sent nothing for the body timeout while its body was incomplete."""


async def reply(send: Send, status: int, detail: str, close: bool = False) -> None:
    """A JSON error response, shaped like the endpoint's; ``close``: the connection is closed after it."""
    body = json.dumps({"detail": detail, "results": []}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    """413 past ``max_bytes`` of body, 408 after ``timeout_s`` of silence mid-body, INFO on a hang-up."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def too_large(self, size: str) -> str:
        return f"request body of {size}: over the limit of {self.max_bytes / 1e6:g} MB (serve.max_request_mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await reply(send, 413, self.too_large(f"{int(declared)} bytes"), close=True)
            return
        received, complete, started = 0, False, False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body: a disconnect listener, not an upload to time
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodySilent from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except BodyTooLarge:
            if not started:
                await reply(send, 413, self.too_large(f"over {self.max_bytes} bytes"), close=True)
        except BodySilent:
            if not started:
                await reply(send, 408, f"no request data for {self.timeout_s:g} s (serve.body_timeout_s)", close=True)
        except ClientDisconnect:
            log.info("%s: client disconnected during %s %s", _client(scope), scope["method"], scope["path"])


def _client(scope: Scope) -> str:
    host, port = scope.get("client") or ("?", 0)
    return f"{host}:{port}"


class PixelBudget:
    """Decoded pixels in flight across requests: :meth:`acquire` blocks its (decode) thread, first come
    first served, until ``capacity`` has room. A claim over ``capacity`` is cut to it, so the largest
    image still gets its turn, alone."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self._cond = threading.Condition()
        self._turns: deque[object] = deque()

    def acquire(self, pixels: int) -> int:
        """Take ``pixels`` (cut to the capacity) once it fits and earlier claims are served; the amount to release."""
        n = min(pixels, self.capacity)
        turn = object()
        with self._cond:
            self._turns.append(turn)
            while self._turns[0] is not turn or self.used + n > self.capacity:
                self._cond.wait()
            self._turns.popleft()
            self.used += n
            self._cond.notify_all()  # the next in line may fit too
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

"""uvicorn's HTTP protocol with a header timeout, and its concurrency-limit answer with Retry-After.

The protocol is uvicorn's httptools one (the C parser of Node.js, llhttp), with h11's pure-Python
parser where httptools is not installed: measured on the service, h11 took about half a
millisecond of each request's time under the interpreter lock, a third of the web side's share.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a client
takes to send a request line and headers: a client that sends one byte a second holds its
connection for ever. Here every connection must deliver complete headers within
``header_timeout_s`` of its first byte (or of connecting); otherwise it is closed. The body and the
whole request have their own timeouts in the app (serving/app.py), where the request is known.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - every image installs httptools
    httptools_impl = None
    HttpToolsProtocol = None

OVERLOADED_BODY = json.dumps(
    {"error": {"status": 503, "code": "overloaded", "message": "the service has too many connections; retry later"}}
).encode()


async def overloaded(scope, receive, send) -> None:
    """What uvicorn answers beyond ``limit_concurrency``: the service's JSON 503, with Retry-After."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(OVERLOADED_BODY)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": OVERLOADED_BODY, "more_body": False})


# uvicorn names this answer at module level in each protocol; there is no setting for it.
h11_impl.service_unavailable = overloaded
if httptools_impl is not None:
    httptools_impl.service_unavailable = overloaded


class HeaderTimeout:
    """The header timer both protocols share: armed when a connection opens (and, by the protocol,
    when a request begins), disarmed when its headers are complete; on expiry the connection is
    closed if ``reading_headers()`` still says the client is sending them."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def reading_headers(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer = None
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)  # type: ignore[attr-defined]

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.reading_headers() and not self.transport.is_closing():  # type: ignore[attr-defined]
            self.logger.info(  # type: ignore[attr-defined]
                "closed a connection whose request headers did not arrive in %.0fs", self.header_timeout_s)
            self.transport.close()  # type: ignore[attr-defined]


class GuardedH11Protocol(HeaderTimeout, H11Protocol):
    """H11Protocol that closes a connection whose request headers do not arrive in time."""

    def reading_headers(self) -> bool:
        # IDLE: the client is (still) sending a request line and headers.
        return self.conn.their_state is h11.IDLE

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.reading_headers() and not self.transport.is_closing():
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        # Between requests the keep-alive timeout applies, until the next request's first byte.
        self._disarm_header_timer()
        super().on_response_complete()


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(HeaderTimeout, HttpToolsProtocol):
        """HttpToolsProtocol that closes a connection whose request headers do not arrive in time:
        the timer runs from the connection (first request) or the request's first byte (later
        ones) to the end of its headers."""

        _reading = True

        def reading_headers(self) -> bool:
            return self._reading

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading = True
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._reading = False
            self._disarm_header_timer()
            super().on_headers_complete()


def protocol_class(header_timeout_s: float) -> type:
    """The protocol uvicorn runs: httptools where installed, else h11; both with the header timeout."""
    base = GuardedHttpToolsProtocol if HttpToolsProtocol is not None else GuardedH11Protocol
    return type("Guarded" + base.__name__.removeprefix("Guarded"), (base,), {"header_timeout_s": header_timeout_s})

"""The HTTP server under the service: uvicorn's h11 protocol with read deadlines.

uvicorn times out an idle keep-alive connection, but nothing else: a client that opens a
connection and sends nothing, or sends headers a byte at a time and never finishes
("slowloris"), or announces a body and trickles it, holds a connection and its buffers for as
long as it likes. :class:`DeadlineH11Protocol` adds two deadlines, both counted from the start of
the phase, not reset by each byte (a trickle must not keep extending them):

* headers: a new connection, or a keep-alive connection once the next request's first byte
  arrives, must deliver complete request headers within ``header_timeout_s``;
* body: once the headers are in, the whole request body must arrive within ``body_timeout_s``.

On expiry the connection answers ``408 Request Timeout`` (when a request had begun and no
response had) and is closed. Time spent waiting for a verdict is not read time: the deadline
ends when the request is fully read. Only h11 is used (httptools, if installed, would bypass
these deadlines), so the protocol is fixed here rather than left to uvicorn's "auto".
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from qlgate_pytest.service.metrics import READ_TIMEOUT_KEY

_HEADERS, _BODY = "headers", "body"


def _timeout_response(message: str) -> bytes:
    body = message.encode("utf-8")
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline and a body deadline (class attributes,
    set per server by :func:`deadline_protocol`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    # -- the deadline --------------------------------------------------------------------------

    def _arm(self, phase: str) -> None:
        if self._phase == phase:
            return
        self._cancel()
        timeout = self.header_timeout_s if phase == _HEADERS else self.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(timeout, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _track(self) -> None:
        """Arm or end the deadline for what the client is sending now."""
        if self.transport is None or self.transport.is_closing():
            self._cancel()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Part of the next request's head is buffered: its header deadline runs. With
            # nothing buffered, a fresh connection keeps its deadline and an idle keep-alive
            # connection is left to uvicorn's keep-alive timeout.
            if self.conn.trailing_data[0]:
                self._arm(_HEADERS)
        elif state is h11.SEND_BODY:
            self._arm(_BODY)
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to read for this request
            self._cancel()

    def _expire(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport is None or self.transport.is_closing():
            return
        if phase == _HEADERS:
            limit = f"request headers not received within {self.header_timeout_s:g} s"
            if self.conn.trailing_data[0]:
                self.transport.write(_timeout_response(limit))
            self.logger.warning("closing a connection: %s", limit)
        else:
            limit = f"request body not received within {self.body_timeout_s:g} s"
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self._answer_408(limit)
            if cycle is not None:
                # The app is waiting for the rest of the body: it now sees a disconnect, and
                # anything it still sends is dropped (the connection has its answer). The
                # metrics middleware counts the request as the 408 the client got.
                cast(dict[str, Any], cycle.scope)[READ_TIMEOUT_KEY] = True
                cycle.disconnected = True
                cycle.message_event.set()
            self.logger.warning("closing a connection: %s", limit)
        self.transport.close()

    def _answer_408(self, message: str) -> None:
        body = message.encode("utf-8")
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"connection", b"close"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        try:
            response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
            out = self.conn.send(response)
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            out += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        self.transport.write(out)

    # -- uvicorn's protocol hooks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_HEADERS)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        self._cancel()
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[H11Protocol]:
    """A :class:`DeadlineH11Protocol` subclass with these deadlines (seconds, > 0)."""
    if not (header_timeout_s > 0 and body_timeout_s > 0):
        raise ValueError("request deadlines must be > 0 seconds")
    return type(
        "ConfiguredDeadlineH11Protocol",
        (DeadlineH11Protocol,),
        {"header_timeout_s": float(header_timeout_s), "body_timeout_s": float(body_timeout_s)},
    )


def server_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    header_timeout_s: float = 10.0,
    body_timeout_s: float = 30.0,
    keep_alive_timeout_s: int = 5,
    graceful_shutdown_s: int = 30,
    log_level: str = "info",
) -> uvicorn.Config:
    """The uvicorn configuration the service runs under (also used by tests, so they exercise
    the very protocol and limits ``serve`` uses)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=deadline_protocol(header_timeout_s, body_timeout_s),
        timeout_keep_alive=keep_alive_timeout_s,
        # On shutdown, requests still waiting for a verdict get this long; then running gates
        # are killed and their jobs reported failed (the lifespan's JobQueue.stop).
        timeout_graceful_shutdown=graceful_shutdown_s,
        log_level=log_level,
        lifespan="on",
    )

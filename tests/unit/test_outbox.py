"""The outbox: writes wait for the end of the loop's pass, keep their order per socket,
become one write per socket, and never wait beyond the hold limit."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from portico.http.outbox import HOLD_LIMIT, Outbox


class Recorder:
    """A transport that records what it is given, in order, across all recorders."""

    def __init__(self, log: list[tuple[str, bytes]], name: str, closed: bool = False) -> None:
        self.log = log
        self.name = name
        self.closed = closed

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.log.append((self.name, data))


def run(body: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(body(loop))
    finally:
        loop.close()


def test_writes_wait_for_the_end_of_the_pass_then_go_in_order() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> list[list[tuple[str, bytes]]]:
        log: list[tuple[str, bytes]] = []
        a, b = Recorder(log, "a"), Recorder(log, "b")
        outbox = Outbox(loop)
        seen = []
        outbox.write(a, b"1")
        outbox.write(a, b"2")
        outbox.write(b, b"x")
        outbox.write(a, b"3")
        seen.append(list(log))  # nothing yet: the pass is not over
        await asyncio.sleep(0)
        seen.append(list(log))
        await asyncio.sleep(0)
        seen.append(list(log))  # a second pass writes nothing twice
        return seen

    before, after, later = run(body)
    assert before == []
    # consecutive writes to one transport are joined; the order per transport holds
    assert after == [("a", b"12"), ("b", b"x"), ("a", b"3")]
    assert later == after


def test_flush_writes_at_once_and_the_scheduled_pass_finds_nothing() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[list[Any], list[Any]]:
        log: list[tuple[str, bytes]] = []
        a = Recorder(log, "a")
        outbox = Outbox(loop)
        outbox.write(a, b"head")
        outbox.flush()
        now = list(log)
        outbox.write(a, b"more")  # same pass: goes out with the scheduled flush
        await asyncio.sleep(0)
        return now, list(log)

    now, end = run(body)
    assert now == [("a", b"head")]
    assert end == [("a", b"head"), ("a", b"more")]


def test_more_than_the_hold_limit_goes_out_at_once() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
        log: list[tuple[str, bytes]] = []
        a = Recorder(log, "a")
        outbox = Outbox(loop)
        outbox.write(a, b"x" * (HOLD_LIMIT // 2))
        held_half = len(log)
        outbox.write(a, b"y" * (HOLD_LIMIT // 2 + 1))
        return held_half, sum(len(data) for _, data in log)

    held_half, written = run(body)
    assert held_half == 0
    assert written == HOLD_LIMIT + 1


def test_a_closed_transport_does_not_stop_the_others() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        outbox = Outbox(loop)
        outbox.write(Recorder(log, "gone", closed=True), b"lost")
        outbox.write(Recorder(log, "b"), b"kept")
        await asyncio.sleep(0)
        return log

    assert run(body) == [("b", b"kept")]


def test_real_socket_gets_every_write_in_order_before_the_close() -> None:
    """Over a real uvloop transport: three writes in one callback, then flush and
    close (what a connection does when it ends): the peer reads all, in order."""

    class Writer(asyncio.Protocol):
        def __init__(self, outbox: Outbox) -> None:
            self.outbox = outbox

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            for piece in (b"one ", b"two ", b"three"):
                self.outbox.write(self.transport, piece)
            self.outbox.flush()
            self.transport.close()

    async def body(loop: asyncio.AbstractEventLoop) -> bytes:
        outbox = Outbox(loop)
        server = await loop.create_server(lambda: Writer(outbox), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(b"go")
            received = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return received
        finally:
            server.close()

    assert run(body) == b"one two three"

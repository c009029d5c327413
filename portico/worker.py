"""A worker process: one uvloop event loop serving the inherited listening sockets.

The worker builds the site from the config (handlers, log files), starts accepting on
every socket the master passed it, and runs until a signal from the master:

- QUIT (graceful): stop accepting; close idle connections; let each busy one finish
  its answer and close; exit when none is left or ``worker_shutdown_timeout`` passes;
- TERM, INT (fast): close everything and exit at once;
- USR1: reopen the log files.

A periodic tick (every ``TICK`` seconds) expires deadlines (timeouts.py) and flushes
buffered access log lines once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time

from portico.config.model import Config
from portico.http.protocol import HttpConnection
from portico.http.response import DateClock
from portico.logs import ErrorLog
from portico.process.sockets import SocketKey
from portico.site import Site
from portico.timeouts import Wheel

TICK = 0.25


class WorkerContext:
    """What every connection of this worker shares."""

    def __init__(self, config: Config, error_log: ErrorLog) -> None:
        self.config = config
        self.error_log = error_log
        self.loop = asyncio.get_running_loop()
        self.wheel = Wheel(TICK, time.monotonic())
        self.site = Site(config, error_log, self)
        self.connections: set[HttpConnection] = set()
        self.accepting = True
        self.date = DateClock()
        self._connection_numbers = 0
        self.stopped: asyncio.Future[None] | None = None

    def next_connection_number(self) -> int:
        self._connection_numbers += 1
        return self._connection_numbers

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if (
            not self.accepting
            and not self.connections
            and self.stopped is not None
            and not self.stopped.done()
        ):
            self.stopped.set_result(None)

    def date_header(self) -> bytes:
        return self.date.update(time.time())


class Worker:
    def __init__(
        self,
        config: Config,
        sockets: dict[SocketKey, socket.socket],
        error_log: ErrorLog,
        number: int = 0,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.error_log = error_log
        self.number = number
        self.loop: asyncio.AbstractEventLoop | None = None
        self.context: WorkerContext | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self._ticks = 0

    def run(self) -> int:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            return loop.run_until_complete(self._main())
        finally:
            with contextlib.suppress(Exception):
                loop.close()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        context = WorkerContext(self.config, self.error_log)
        self.context = context
        context.stopped = loop.create_future()
        for key, sock in self.sockets.items():
            binding = context.site.bindings.get(key)
            if binding is None:
                continue  # a socket of an old config that this one does not use
            server = await loop.create_server(
                lambda binding=binding: HttpConnection(context, binding),
                sock=sock,
                backlog=binding.listen.backlog,
            )
            self.servers.append(server)
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, True)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        self._tick()
        await context.stopped
        for conn in list(context.connections):
            conn.close()
        context.site.close()
        return 0

    def _tick(self) -> None:
        context = self.context
        assert context is not None and self.loop is not None
        context.wheel.expire(time.monotonic())
        self._ticks += 1
        if self._ticks % 4 == 0:
            context.site.flush_logs()
        self.loop.call_later(TICK, self._tick)

    def stop(self, fast: bool) -> None:
        context = self.context
        assert context is not None and self.loop is not None
        if not context.accepting and not fast:
            return
        context.accepting = False
        for server in self.servers:
            server.close()
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
        stopped = context.stopped
        assert stopped is not None
        if fast or not context.connections:
            if not stopped.done():
                stopped.set_result(None)
            return
        for conn in list(context.connections):
            conn.shutdown()
        timeout = self.config.worker_shutdown_timeout

        def give_up() -> None:
            if not stopped.done():
                stopped.set_result(None)

        self.loop.call_later(timeout, give_up)

    def reopen(self) -> None:
        assert self.context is not None
        self.context.site.reopen_logs()
        self.error_log.reopen()


def serve_in_this_process(
    config: Config, sockets: dict[SocketKey, socket.socket], error_log: ErrorLog, number: int = 0
) -> int:
    """The body of a forked worker process."""
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGCHLD,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        return Worker(config, sockets, error_log, number).run()
    except Exception as e:  # a worker that cannot start says why, once
        error_log.log("emerg", f"worker failed: {e!r}")
        return 2

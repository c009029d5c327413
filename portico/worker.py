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
import gc
import resource
import signal
import socket
import time
from typing import Any

import uvloop

from portico.config.model import Config
from portico.http.outbox import Outbox
from portico.http.parser import RequestReader
from portico.http.protocol import HttpConnection
from portico.http.response import SecondText, date_header
from portico.logs import ErrorLog
from portico.process.master import HANDLED_SIGNALS
from portico.process.sockets import SocketKey
from portico.site import Site
from portico.timeouts import Wheel

TICK = 0.25
# descriptors kept free for files, logs, pipes and the app (see WorkerContext)
FD_RESERVE = 32
# idle request parsers kept for reuse, per header limits
READER_POOL = 256


class WorkerContext:
    """What every connection of this worker shares."""

    def __init__(self, config: Config, error_log: ErrorLog, zones: dict[str, Any]) -> None:
        self.zones = zones
        self.error_log = error_log
        self.loop = asyncio.get_running_loop()
        self.outbox = Outbox(self.loop)
        self.wheel = Wheel(TICK, time.monotonic(), on_error=self._timeout_failed)
        self.site = Site(config, error_log, self)
        self.connections: set[HttpConnection] = set()
        self.max_connections = config.worker_connections
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_budget = max(16, self.fd_limit - FD_RESERVE)
        self.upstream_count = 0
        self._capacity_logged = 0.0
        self.full = False
        self.gates: list[AcceptGate] = []
        self.accepting = True
        self.draining = False  # a graceful stop is waiting for the connections to end
        self.date = SecondText(date_header, b"")
        self._connection_numbers = 0
        self._readers: dict[tuple[int, int], list[RequestReader]] = {}
        self.stopped: asyncio.Future[None] | None = None

    def _timeout_failed(self, error: Exception) -> None:
        import traceback

        self.error_log.log(
            "alert",
            "a timeout handler failed:\n" + "".join(traceback.format_exception(error)).rstrip(),
        )

    def take_reader(self, limits: tuple[int, int, bool, bool]) -> RequestReader:
        pool = self._readers.get(limits)
        if pool:
            return pool.pop()
        return RequestReader(*limits)

    def give_reader(self, limits: tuple[int, int, bool, bool], reader: RequestReader) -> None:
        """A reader between two requests of a keep-alive connection is clean: reuse it."""
        pool = self._readers.setdefault(limits, [])
        if len(pool) < READER_POOL:
            pool.append(reader)

    def next_connection_number(self) -> int:
        self._connection_numbers += 1
        return self._connection_numbers

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        if not self.full and self._at_capacity():
            self._pause_accepting()

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self.full:
            self._maybe_resume()
        if self.draining and not self.connections:
            self.stop_now()

    def stop_now(self) -> None:
        """End the worker's loop (once; later calls change nothing)."""
        stopped = self.stopped
        if stopped is not None and not stopped.done():
            stopped.set_result(None)

    # Capacity. Accepting stops before the process could run out of descriptors: libuv
    # meets EMFILE on accept by accepting and closing (the client sees a reset), while
    # a paused gate leaves new connections waiting in the listen backlog until a
    # descriptor frees up. Each client connection and each upstream connection takes
    # one; FD_RESERVE are kept for files, logs and the app.

    def upstream_opened(self) -> None:
        self.upstream_count += 1
        if not self.full and self._at_capacity():
            self._pause_accepting()

    def upstream_closed(self) -> None:
        self.upstream_count -= 1
        if self.full:
            self._maybe_resume()

    def _at_capacity(self) -> bool:
        return (
            len(self.connections) >= self.max_connections
            or len(self.connections) + self.upstream_count >= self.fd_budget
        )

    def _pause_accepting(self) -> None:
        self.full = True
        for gate in self.gates:
            gate.stop()
        now = time.monotonic()
        if now - self._capacity_logged >= 1.0:  # at most once a second
            self._capacity_logged = now
            if len(self.connections) >= self.max_connections:
                reason = f"{self.max_connections} worker_connections are not enough"
            else:
                reason = (
                    f"open files limit ({self.fd_limit}) nearly reached: "
                    f"{len(self.connections)} client and {self.upstream_count} "
                    "upstream connections"
                )
            self.error_log.log("warn", f"{reason}; new connections wait in the backlog")

    def _maybe_resume(self) -> None:
        if self.accepting and not self._at_capacity():
            self.full = False
            for gate in self.gates:
                gate.start()

    def date_header(self) -> bytes:
        return self.date.update(time.time())


class AcceptGate:
    """Accepting on one inherited listening socket, with a way to stop and start again.

    uvloop's server closes the socket it was given when it stops, and has no pause:
    so each start hands it a duplicate of the inherited socket, and a stop closes only
    that duplicate. The inherited socket (and its queue of waiting connections) stays
    open the whole time: a pause leaves new connections in the listen backlog.
    """

    def __init__(self, sock: socket.socket, factory: Any, backlog: int) -> None:
        self.sock = sock
        self.factory = factory
        self.backlog = backlog
        self.server: asyncio.base_events.Server | None = None
        self.wanted = False
        self._changing = False
        self._task: asyncio.Future[None] | None = None

    async def open(self) -> None:
        self.wanted = True
        await self._apply()

    def start(self) -> None:
        self.wanted = True
        if not self._changing:
            self._task = asyncio.ensure_future(self._apply())

    def stop(self) -> None:
        self.wanted = False
        if not self._changing and self.server is not None:
            server, self.server = self.server, None
            server.close()

    async def _apply(self) -> None:
        # one change at a time; loop until the state matches what is wanted
        self._changing = True
        try:
            while True:
                if self.wanted and self.server is None:
                    duplicate = self.sock.dup()
                    try:
                        self.server = await asyncio.get_running_loop().create_server(
                            self.factory, sock=duplicate, backlog=self.backlog
                        )
                    finally:
                        duplicate.detach()  # the server owns the descriptor now
                elif not self.wanted and self.server is not None:
                    server, self.server = self.server, None
                    server.close()
                else:
                    break
        finally:
            self._changing = False

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.sock.close()


class Worker:
    def __init__(
        self,
        config: Config,
        sockets: dict[SocketKey, socket.socket],
        error_log: ErrorLog,
        zones: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.zones = zones or {}
        self.sockets = sockets
        self.error_log = error_log
        self.loop: asyncio.AbstractEventLoop | None = None
        self.context: WorkerContext | None = None
        self.gates: list[AcceptGate] = []

    def run(self) -> int:
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
        context = WorkerContext(self.config, self.error_log, self.zones)
        self.context = context
        context.stopped = loop.create_future()
        for key, sock in self.sockets.items():
            binding = context.site.bindings.get(key)
            if binding is None:
                continue  # a socket of an old config that this one does not use
            gate = AcceptGate(
                sock,
                lambda binding=binding: HttpConnection(context, binding),
                binding.listen.backlog,
            )
            await gate.open()
            self.gates.append(gate)
        context.gates = self.gates
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, True)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # What exists now (config, site, the apps and all they imported) lives as long
        # as the worker: frozen out of the collector's sight, a collection walks only
        # what requests made since. Flask hello world, 16 threads: p99 11.6 -> 6.5 ms.
        gc.collect()
        gc.freeze()
        self._tick()
        await context.stopped
        for conn in list(context.connections):
            conn.close()
        context.site.close()
        return 0

    def _tick(self) -> None:
        context = self.context
        assert context is not None and self.loop is not None
        self.loop.call_later(TICK, self._tick)  # first: nothing below can stop the clock
        now = time.monotonic()
        context.wheel.expire(now)
        context.site.flush_logs(now)

    def stop(self, fast: bool) -> None:
        context = self.context
        assert context is not None and self.loop is not None
        if not context.accepting and not fast:
            return
        context.accepting = False
        for gate in self.gates:
            gate.close()
        if fast:
            context.stop_now()
            return
        # a connection accepted in this very turn of the loop gets its connection_made
        # in the next one: drain only after that, or it would be dropped unanswered
        self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Graceful stop, after accepting stopped: idle connections close, busy ones
        close after their answer; the worker exits when none is left."""
        context = self.context
        assert context is not None and self.loop is not None
        context.draining = True
        if not context.connections:
            context.stop_now()
            return
        for conn in list(context.connections):
            conn.shutdown()
        self.loop.call_later(self.config.worker_shutdown_timeout, context.stop_now)

    def reopen(self) -> None:
        assert self.context is not None
        self.context.site.reopen_logs()
        self.error_log.reopen()


def serve_in_this_process(
    config: Config,
    sockets: dict[SocketKey, socket.socket],
    error_log: ErrorLog,
    zones: dict[str, Any] | None = None,
) -> int:
    """The body of a forked worker process."""
    for sig in HANDLED_SIGNALS:  # the master's handlers are not the worker's
        signal.signal(sig, signal.SIG_DFL)
    # signals stay blocked (see Master._spawn) until the loop's handlers are in place
    try:
        return Worker(config, sockets, error_log, zones).run()
    except Exception as e:  # a worker that cannot start says why, once
        error_log.log("emerg", f"worker failed: {e!r}")
        return 2

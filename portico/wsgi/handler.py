"""The ``wsgi`` content handler: a location that runs a PEP 3333 app in this worker.

Per request: read the body first (unless ``wsgi_request_buffering off``), build the
environ (environ.py), and run the app: on one of the worker's app threads
(``wsgi_threads N``, the default), or right on the event loop (``wsgi_threads 0``:
fastest for apps that never block; one that blocks stalls its whole worker).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from portico.wsgi.answer import WsgiAnswer
from portico.wsgi.call import FileWrapper, WsgiCall
from portico.wsgi.environ import base_environ, build_environ, to_wsgi_str
from portico.wsgi.errors import wsgi_errors_stream
from portico.wsgi.input import EMPTY, StreamingInput
from portico.wsgi.pool import AppPool

if TYPE_CHECKING:
    from portico.http.request import Request

# request bodies up to this size are kept in memory; larger ones go to a temporary file
BODY_MEMORY_LIMIT = 1024 * 1024


class WsgiHandler:
    __slots__ = ("app", "base", "inline", "pool", "request_buffering", "script_name", "sendfile")

    def __init__(
        self, values: Mapping[str, Any], app: Any, pool: AppPool | None, error_log: Any
    ) -> None:
        self.app = app
        self.pool = pool
        self.inline = pool is None
        # in PEP 3333's form once, not per request
        self.script_name = to_wsgi_str(values["wsgi_script_name"])
        self.request_buffering: bool = values["wsgi_request_buffering"] or self.inline
        self.sendfile: bool = values["sendfile"]
        extra = dict(values["wsgi_env"])
        self.base = base_environ(wsgi_errors_stream(error_log), not self.inline, extra)
        self.base["wsgi.file_wrapper"] = FileWrapper

    def handle(self, request: Request) -> None:
        body = request.body
        if body.complete:
            if body.received:
                self.run(request, io.BytesIO(b"".join(body.chunks)))
                body.chunks.clear()
            else:
                self.run(request, EMPTY)
            return
        request.conn.want_body(request)
        if self.request_buffering:
            collector = _BodyCollector(self, request)
            body.attach(collector.data, collector.end)
            return
        loop_call = request.conn.worker.loop.call_soon_threadsafe
        stream = StreamingInput(
            lambda held: loop_call(request.conn.hold_reading, request, held),
            request.location.client_body_timeout,
        )
        body.attach(stream.feed, stream.end)
        self.run(request, stream, on_abort=stream.fail)

    def run(self, request: Request, wsgi_input: Any, on_abort: Any = None) -> None:
        environ = build_environ(self.base, request, self.script_name, wsgi_input)
        answer = WsgiAnswer(request, self.sendfile)
        call = WsgiCall(self.app, environ, answer, self.inline)
        answer.call = call
        if on_abort is None:
            request.on_abort = answer.cancel
        else:

            def aborted() -> None:
                on_abort()
                answer.cancel()

            request.on_abort = aborted
        pool = self.pool
        if pool is None:
            call.run_inline()
        else:
            answer.deliver = pool.deliver
            pool.submit(call.run_threaded)


class _BodyCollector:
    """Reads a whole request body (memory, then a temporary file) before the app runs."""

    __slots__ = ("chunks", "file", "handler", "request", "size")

    def __init__(self, handler: WsgiHandler, request: Request) -> None:
        self.handler = handler
        self.request = request
        self.chunks: list[bytes] = []
        self.size = 0
        self.file: Any = None

    def data(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.file is not None:
            self.file.write(chunk)
        elif self.size > BODY_MEMORY_LIMIT:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (the app's wsgi.input)
            for piece in self.chunks:
                self.file.write(piece)
            self.file.write(chunk)
            self.chunks = []
        else:
            self.chunks.append(chunk)

    def end(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            stream: Any = self.file
        else:
            stream = io.BytesIO(b"".join(self.chunks))
        self.handler.run(self.request, stream)

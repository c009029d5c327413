"""A config made live in one worker: listening addresses, servers, locations, handlers.

``Site`` is built once per config load from the immutable model. Everything a request
needs that can be computed ahead is computed here: location trees, handlers, the
``Server`` header bytes, error pages, access log renderers. Per request the site only
chooses the server (Host), the location (URI) and calls the location's handler, which
answers through the connection (http/protocol.py).

Internal redirects (an index file, a ``try_files`` fallback, an ``error_page``) go
through ``route`` again with the new URI, at most ``MAX_REDIRECTS`` times, as nginx.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from portico.config.directives import AddHeader, ErrorPage, Listen, Return, WsgiApp
from portico.config.model import Config, LocationConf, ServerConf
from portico.errors import ProtocolError
from portico.http.parser import known_heads
from portico.http.protocol import CLOSED
from portico.http.response import (
    SERVER_FULL,
    SERVER_SHORT,
    encode_headers,
    error_page,
)
from portico.http.uri import normalize_path, quote_path
from portico.limits import ConnectionLimiter, LeakyBucket, RateLimiter, make_zones
from portico.logs import AccessLog, ErrorLog, LogFile, compile_log_format, context
from portico.memo import remember
from portico.process import sockets
from portico.process.sockets import SocketKey
from portico.proxy.handler import ProxyHandler
from portico.routing import LocationTree, ServerSelector
from portico.static.handler import FileCache, StaticHandler
from portico.static.root import FileRoot
from portico.timeouts import Wheel
from portico.upstream.group import UpstreamGroup

if TYPE_CHECKING:
    from portico.http.protocol import HttpConnection
    from portico.http.request import Request

MAX_REDIRECTS = 10
ROUTES_SIZE = 256

# add_header applies to these unless "always" (nginx's list)
_ADD_HEADER_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class Handler(Protocol):
    def handle(self, request: Request) -> None: ...


class ReturnHandler:
    """``return``: a fixed answer or a redirect, rendered per request."""

    __slots__ = ("rule",)

    def __init__(self, rule: Return) -> None:
        self.rule = rule

    def handle(self, request: Request) -> None:
        request.conn.worker.site.answer_return(request, self.rule)


class Location:
    """A location ready to serve: the config values it needs per request, pre-digested."""

    __slots__ = (
        "access_logs",
        "add_headers",
        "add_lines",
        "client_body_timeout",
        "client_max_body_size",
        "conf",
        "error_pages",
        "files",
        "handler",
        "keepalive_requests",
        "keepalive_timeout",
        "limit_conn_status",
        "limit_req_status",
        "limiters",
        "locations",
        "modifier",
        "pattern",
        "regex",
        "send_timeout",
        "server_header",
        "server_tokens",
    )

    def __init__(
        self, site: Site, conf: LocationConf | None, values: Mapping[str, Any], server: ServerConf
    ) -> None:
        self.conf = conf
        self.modifier = conf.modifier if conf else ""
        self.pattern = conf.pattern if conf else ""
        self.regex = conf.regex if conf else None
        self.server_tokens: bool = values["server_tokens"]
        self.server_header = (
            b"Server: %b\r\n" % (SERVER_FULL if self.server_tokens else SERVER_SHORT).encode()
        )
        self.add_headers: tuple[AddHeader, ...] = values["add_header"]
        # (always, the encoded line when the value is constant, the directive)
        self.add_lines = tuple(
            (
                header.always,
                encode_headers([(header.name, header.value.render(None))])
                if header.value.is_constant
                else None,
                header,
            )
            for header in self.add_headers
        )
        self.error_pages: dict[int, ErrorPage] = {
            code: page for page in values["error_page"] for code in page.codes
        }
        self.access_logs = site.access_logs(values["access_log"])
        self.client_max_body_size: int = values["client_max_body_size"]
        self.client_body_timeout: float = values["client_body_timeout"]
        self.send_timeout: float = values["send_timeout"]
        self.keepalive_timeout: float = values["keepalive_timeout"]
        # how many requests a connection may carry: none past this one when
        # keepalive_timeout is 0 (nginx's way to turn keep-alive off)
        self.keepalive_requests: int = (
            values["keepalive_requests"] if self.keepalive_timeout > 0 else 0
        )
        self.limiters = site.limiters(values)
        self.limit_req_status: int = values["limit_req_status"]
        self.limit_conn_status: int = values["limit_conn_status"]
        # where its files are (a prefix location's alias replaces its pattern)
        self.files = FileRoot(values, conf.pattern if conf and conf.regex is None else "")
        self.handler: Handler = site.make_handler(values, conf, self.files)
        self.locations: tuple[Location, ...] = tuple(
            Location(site, child, child.values, server)
            for child in (conf.locations if conf else ())
        )

    def extra_headers(self, request: Request, status: int) -> bytes:
        """The add_header lines for an answer with ``status``, in config order."""
        listed = status in _ADD_HEADER_STATUSES
        return b"".join(
            line if line is not None else encode_headers([(h.name, h.value.render(request))])
            for always, line, h in self.add_lines
            if always or listed
        )


class Server:
    __slots__ = ("conf", "implicit", "name", "names", "return_rule", "tree")

    def __init__(self, site: Site, conf: ServerConf) -> None:
        self.conf = conf
        self.names = conf.names
        self.name = conf.primary_name
        self.return_rule: Return | None = conf.values["return"]
        # nginx answers a URI that matches no location with the server's own settings
        self.implicit = Location(site, None, conf.values, conf)
        self.tree: LocationTree[Location] = LocationTree(
            Location(site, loc, loc.values, conf) for loc in conf.locations
        )

    def find(self, path: str) -> tuple[Location, re.Match[str] | None]:
        """The location for a path, and the regex match that chose it: the server's
        own settings when no location matches (nginx)."""
        location, match = self.tree.find(path)
        return location or self.implicit, match


# where a request goes: its server, the server_name regex match, its location, the
# location regex match
Route = tuple[Server, "re.Match[str] | None", Location, "re.Match[str] | None"]


class Binding:
    """One listening socket: the servers reachable through it and the connection
    settings that apply before a request says which server it wants."""

    __slots__ = (
        "by_address",
        "default",
        "header_limits",
        "header_timeout",
        "known_heads",
        "listen",
        "merge_slashes",
        "routes",
        "selector",
        "server_header",
        "server_tokens",
    )

    def __init__(
        self,
        listen: Listen,
        selector: ServerSelector[Server],
        by_address: dict[str, ServerSelector[Server]],
    ) -> None:
        self.listen = listen
        self.selector = selector
        self.by_address = by_address
        self.default = selector.default
        values = self.default.conf.values
        count, size = values["large_client_header_buffers"]
        # as nginx, the URI is read with the default server's setting (before the Host
        # chooses a server)
        self.merge_slashes: bool = values["merge_slashes"]
        # how requests are read (and whether header names may hold "_"): a pool of
        # request parsers and a table of the whole requests they read, each
        self.header_limits = (
            size,
            count,
            values["underscores_in_headers"],
            self.merge_slashes,
        )
        self.known_heads = known_heads(self.header_limits)
        self.header_timeout: float = values["client_header_timeout"]
        self.server_tokens: bool = values["server_tokens"]
        self.server_header = self.default.implicit.server_header
        # heads shared by the requests made of the same bytes (parser.py) → server, its
        # match, location, its match: such a head always goes the same way through a
        # socket whose servers Host alone chooses
        self.routes: dict[Any, Route] = {}

    def local_address(self, transport: Any) -> tuple[str, str]:
        if self.listen.path is not None:
            return "unix:" + self.listen.path, ""
        if self.listen.host and not self.by_address:
            return self.listen.host, str(self.listen.port)
        sockname = transport.get_extra_info("sockname")
        return sockname[0], str(sockname[1])

    def route(self, request: Request) -> Route:
        """Where a request as received goes: its server (by Host and the address it
        came to) and its location (by path)."""
        server, server_match = self.select(request.host, request.conn.server_addr)
        location, match = server.find(request.path)
        route = (server, server_match, location, match)
        if not self.by_address and request.head.shared:
            remember(self.routes, request.head, route, ROUTES_SIZE)
        return route

    def select(self, host: str, server_addr: str) -> tuple[Server, re.Match[str] | None]:
        selector = (
            self.by_address.get(server_addr, self.selector) if self.by_address else self.selector
        )
        return selector.select(host)

    # settings of the request's location, or of the default server before routing
    def _location(self, request: Request | None) -> Location:
        if request is not None and request.location is not None:
            return request.location  # type: ignore[no-any-return]
        return self.default.implicit

    def send_timeout_of(self, request: Request | None) -> float:
        return self._location(request).send_timeout

    def body_timeout_of(self, request: Request) -> float:
        return self._location(request).client_body_timeout

    def body_limit_of(self, request: Request) -> int:
        return self._location(request).client_max_body_size


class Site:
    def __init__(self, config: Config, error_log: ErrorLog, worker: Any = None) -> None:
        self.config = config
        # shared zones made by the master (a worker without a master makes its own)
        self.zones = (
            worker.zones if worker is not None and worker.zones else make_zones(config.http.zones)
        )
        self.error_log = error_log
        self.worker = worker
        self._log_files: dict[str, LogFile] = {}
        self._apps: dict[str, Any] = {}
        self.file_cache = FileCache()
        self._pools: dict[int, Any] = {}
        wheel = worker.wheel if worker is not None else Wheel()
        self.upstreams = {
            name: UpstreamGroup(conf, wheel, worker=worker)
            for name, conf in config.http.upstreams.items()
        }
        self._formats = {name: compile_log_format(f) for name, f in config.http.log_formats.items()}
        self.servers = [Server(self, conf) for conf in config.http.servers]
        self.bindings: dict[SocketKey, Binding] = self._bind(self.servers)

    # -- construction --------------------------------------------------------------

    def access_logs(self, entries: Sequence[Any]) -> tuple[AccessLog, ...]:
        logs = []
        for entry in entries:
            file = self._log_files.get(entry.path)
            if file is None:
                file = LogFile(entry.path, entry.buffer_size, entry.flush)
                self._log_files[entry.path] = file
            else:  # one file, several access_log lines: the shortest flush= counts
                file.flush_after = min(file.flush_after, entry.flush)
            logs.append(AccessLog(file, self._formats[entry.format]))
        return tuple(logs)

    def limiters(self, values: Mapping[str, Any]) -> tuple[tuple[Any, Any, str], ...]:
        """(limiter, key template, kind) for each limit_req and limit_conn line."""
        out: list[tuple[Any, Any, str]] = []
        zones = self.config.http.zones
        for limit in values["limit_req"]:
            conf = zones[limit.zone]
            bucket = LeakyBucket(conf.rate, limit.burst, limit.nodelay, limit.delay)
            out.append((RateLimiter(self.zones[limit.zone], bucket), conf.key, "req"))
        for name, number in values["limit_conn"]:
            out.append((ConnectionLimiter(self.zones[name], number), zones[name].key, "conn"))
        return tuple(out)

    def make_handler(
        self, values: Mapping[str, Any], conf: LocationConf | None, files: FileRoot
    ) -> Handler:
        if values.get("return") is not None and conf is not None:
            return ReturnHandler(values["return"])
        proxy_pass = values.get("proxy_pass")
        if proxy_pass is not None:
            return ProxyHandler(values, self.upstreams[proxy_pass.target], files.prefix)
        app = values.get("wsgi")
        if app is not None:
            return self._wsgi_handler(values, app)
        return StaticHandler(values, files, self.file_cache)

    def _wsgi_handler(self, values: Mapping[str, Any], app: WsgiApp) -> Handler:
        from portico.wsgi.app import load_app
        from portico.wsgi.handler import WsgiHandler
        from portico.wsgi.pool import AppPool

        callable_ = self._apps.get(app.spec)
        if callable_ is None:
            callable_ = self._apps[app.spec] = load_app(app.spec, values["wsgi_path"])
        threads: int = values["wsgi_threads"]
        pool = None
        if threads > 0:
            pool = self._pools.get(threads)
            if pool is None:
                pool = self._pools[threads] = AppPool(asyncio.get_running_loop(), threads)
        return WsgiHandler(values, callable_, pool, self.error_log)

    def _bind(self, servers: list[Server]) -> dict[SocketKey, Binding]:
        """Group servers by listening socket (see process/sockets.py): the servers of
        a specific address reached through a wildcard socket are chosen by the
        connection's local address."""
        plan = sockets.plan(self.config)
        wildcards = sockets.wildcard_ports(plan.values())
        groups: dict[SocketKey, dict[str, list[tuple[Server, Listen]]]] = {}
        for server in servers:
            for listen in server.conf.listens:
                key = sockets.socket_key(listen, wildcards)
                sub = "" if key == listen.key or listen.path is not None else listen.host
                groups.setdefault(key, {}).setdefault(sub, []).append((server, listen))
        bindings = {}
        for key, by_address in groups.items():
            selectors = {sub: _selector(members) for sub, members in by_address.items()}
            # a wildcard socket's own servers, else (only specific addresses) the first
            main = selectors.pop("", None) or next(iter(selectors.values()))
            bindings[key] = Binding(plan[key], main, selectors)
        return bindings

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(timeout=1.0)
        for group in self.upstreams.values():
            group.close()
        for file in self._log_files.values():
            file.close()

    def flush_logs(self, now: float) -> None:
        """Write the access logs whose ``flush=`` time is up (called every tick)."""
        for file in self._log_files.values():
            file.flush_if_due(now)

    def reopen_logs(self) -> None:
        for file in self._log_files.values():
            file.reopen()

    # -- requests ------------------------------------------------------------------

    def dispatch(self, request: Request) -> None:
        try:
            binding = request.conn.binding
            head = request.head
            route = binding.routes.get(head)
            if route is None:
                route = binding.route(request)
            server, server_match, location, match = route
            request.server = server
            if server_match is not None:
                request.captures = request.server_captures = server_match
            if server.return_rule is not None:
                request.location = server.implicit
                self.answer_return(request, server.return_rule)
                return
            request.location = location
            if match is not None:
                request.captures = match
            self.run(request, location)
        except Exception:
            self.internal_error(request)

    def route(self, request: Request) -> None:
        """Choose the location for the request's path (again, after a redirect)."""
        location, match = request.server.find(request.path)
        request.location = location
        if match is not None:
            request.captures = match
        self.run(request, location)

    def run(self, request: Request, location: Location) -> None:
        if location.limiters and not request.limited:
            request.limited = True
            if not self._limits(request, location):
                return
        limit = location.client_max_body_size
        length = request.head.content_length
        if limit and length is not None and length > limit:
            self.error(
                request,
                f"client intended to send too large body: {length} bytes",
                level="error",
            )
            request.conn.send_error(request, 413)
            return
        location.handler.handle(request)

    def _limits(self, request: Request, location: Location) -> bool:
        """limit_req and limit_conn; False when the request was refused or delayed."""
        delay = 0.0
        for limiter, key_template, kind in location.limiters:
            key = key_template.render(request).encode("latin-1", "replace")
            if not key:
                continue
            if kind == "req":
                verdict = limiter.check(key, int(time.time() * 1000))
                if not verdict.allowed:
                    self.error(request, f'limiting requests, excess by zone "{limiter.zone.name}"')
                    request.conn.send_error(request, location.limit_req_status)
                    return False
                delay = max(delay, verdict.delay)
            else:
                if not limiter.acquire(key):
                    self.error(request, f'limiting connections by zone "{limiter.zone.name}"')
                    request.conn.send_error(request, location.limit_conn_status)
                    return False
                request.add_cleanup(partial(limiter.release, key))
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._delayed, request, location)
            return False
        return True

    def _delayed(self, request: Request, location: Location) -> None:
        if request.conn.state != CLOSED:
            try:
                self.run(request, location)
            except Exception:
                self.internal_error(request)

    def internal_error(self, request: Request) -> None:
        self.error(
            request,
            "unexpected error while handling the request:\n" + traceback.format_exc().rstrip(),
            level="error",
        )
        if not request.headers_sent:
            request.keep_alive = False
            self.send_error(request, 500)
        else:
            request.conn.close()

    def internal_redirect(self, request: Request, uri: str, keep_args: bool = False) -> None:
        """Serve ``uri`` instead. Its own arguments replace the request's, none included
        (nginx's error_page and try_files: write ``/x?$args`` to keep them), unless
        ``keep_args`` (an index file)."""
        request.redirects += 1
        if request.redirects > MAX_REDIRECTS:
            self.error(
                request,
                f'rewrite or internal redirection cycle while internally redirecting to "{uri}"',
            )
            self.send_plain_error(request, 500)
            return
        path, _, query = uri.partition("?")
        try:
            request.path = normalize_path(path.encode("utf-8", "surrogateescape"))
        except ProtocolError:
            self.send_plain_error(request, 500)
            return
        if query or not keep_args:
            request.query = query
        self.route(request)

    def named_redirect(self, request: Request, name: str) -> None:
        location = request.server.tree.named(name)
        if location is None:
            self.error(request, f'could not find named location "@{name}"')
            self.send_plain_error(request, 500)
            return
        request.redirects += 1
        request.location = location
        self.run(request, location)

    def ended_unanswered(self, request: Request) -> None:
        """A request that ends without a response through finish() (444, a tunnel):
        release what it holds (limit_conn) and log it."""
        request.finished = True
        if request.cleanups is not None:
            request.run_cleanups()
        self.log(request)

    def aborted(self, request: Request) -> None:
        """The client went away mid-exchange; log what was done."""
        if request.cleanups is not None:
            request.run_cleanups()
        exchange = request.upstream
        if exchange is None or exchange.stops_when_client_closes:
            request.conn.abandon(request)  # else proxy_ignore_client_abort: it goes on
        if request.status == 0:
            request.status = 499  # nginx's "client closed request"
        request.finished = True
        self.log(request)

    # -- answers -------------------------------------------------------------------

    def answer_return(self, request: Request, rule: Return) -> None:
        status = rule.status
        conn = request.conn
        if status == 444:  # nginx: close without an answer
            request.status = 444
            conn.current = None
            self.ended_unanswered(request)
            conn.close()
            return
        text = rule.body.render(request) if rule.body is not None else None
        if status in _REDIRECT_STATUSES and text is not None:
            if text.startswith("/"):
                text = self._absolute(request, text)
            self.send_error(request, status, location=text)
        elif text is not None:
            conn.send_response(request, status, self._default_type(request), text.encode())
        else:
            self.send_error(request, status)

    @staticmethod
    def _values(request: Request) -> Mapping[str, Any]:
        """The settings in force for the request: its location's, or its server's."""
        location = request.location
        if location is not None and location.conf is not None:
            return location.conf.values  # type: ignore[no-any-return]
        return request.server.conf.values  # type: ignore[no-any-return]

    def _default_type(self, request: Request) -> bytes:
        return b"Content-Type: %b\r\n" % self._values(request)["default_type"].encode("latin-1")

    def send_error(
        self, request: Request, status: int, extra: bytes = b"", location: str | None = None
    ) -> None:
        """An error (or redirect) answer, through ``error_page`` where configured."""
        loc = request.location
        if loc is not None and status >= 400 and request.redirects <= MAX_REDIRECTS:
            page = loc.error_pages.get(status)
            if page is not None and not request.error_status:
                self._error_page(request, status, page)
                return
        self.send_plain_error(request, status, extra, location)

    def send_plain_error(
        self, request: Request, status: int, extra: bytes = b"", location: str | None = None
    ) -> None:
        conn = request.conn
        if request.headers_sent:
            conn.close()
            return
        loc = request.location
        tokens = loc.server_tokens if loc is not None else conn.binding.server_tokens
        headers = b"Content-Type: text/html\r\n" + extra
        if location is not None:
            headers += encode_headers([("Location", location)])
        body = error_page(status, tokens) if status >= 300 or location else b""
        conn.send_response(request, status, headers, body)

    def _error_page(self, request: Request, status: int, page: ErrorPage) -> None:
        target = page.uri.render(request)
        if target.startswith(("http://", "https://")):
            code = page.response_status if page.response_status in _REDIRECT_STATUSES else 302
            self.send_plain_error(request, code, location=target)
            return
        # the answer of the error page's URI goes out with this status; -1 keeps the
        # status of that answer ("error_page 404 = /fallback;")
        request.error_status = (
            status if page.response_status is None else (page.response_status or -1)
        )
        if request.method != "HEAD":
            request.method = "GET"
        if target.startswith("@"):
            self.named_redirect(request, target[1:])
        else:
            self.internal_redirect(request, target)

    def redirect_to_directory(self, request: Request, uri: str) -> None:
        """A directory asked without its trailing slash: 301 to the slashed URI."""
        target = quote_path(uri + "/")
        if request.query:
            target += "?" + request.query
        self.send_error(request, 301, location=self._absolute(request, target))

    def _absolute(self, request: Request, path: str) -> str:
        """A redirect to a path of this server: absolute (scheme, host, port) when
        absolute_redirect is on, as nginx makes it."""
        if not self._values(request)["absolute_redirect"]:
            return path
        # nginx (server_name_in_redirect off): the Host, else the address it came to
        # (a Unix socket has none: the server's name then)
        address = request.conn.server_addr
        host = request.host or (
            request.server.name if address.startswith("unix:") else _url_host(address)
        )
        port = request.conn.server_port
        return f"http://{host}{'' if port in ('80', '') else ':' + port}{path}"

    # -- logging -------------------------------------------------------------------

    def log(self, request: Request) -> None:
        location = request.location
        logs = (
            location.access_logs
            if location is not None
            else request.conn.binding.default.implicit.access_logs
        )
        for log in logs:
            log.write(request)

    def error(
        self, request: Request, message: str, level: str = "error", upstream: str | None = None
    ) -> None:
        if self.error_log.enabled(level):
            line = message + context(request, upstream)
            self.error_log.log(level, line, request.conn.number)

    def log_timeout(self, request: Request, message: str) -> None:
        self.error(request, message, level="info")

    def log_protocol_error(self, conn: HttpConnection, error: ProtocolError) -> None:
        level = "info"  # nginx logs client errors at info
        if self.error_log.enabled(level):
            self.error_log.log(
                level,
                f"client sent a bad request ({error.status}): {error}, client: {conn.remote_addr}",
                conn.number,
            )

    def log_rejected(self, conn: HttpConnection, status: int, head: bytes, body: int) -> None:
        """Access log line for a request that never became a Request (unparsable):
        the error answer's ``head`` as sent and the size of its ``body``."""
        logs = conn.binding.default.implicit.access_logs
        if not logs:
            return
        stub = _Rejected(conn, status, head, body)
        for log in logs:
            log.write(stub)


def _url_host(address: str) -> str:
    """An address as the host of a URL: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address else address


def _selector(members: list[tuple[Server, Listen]]) -> ServerSelector[Server]:
    servers: list[Server] = []
    default = None
    for server, listen in members:
        if server not in servers:
            servers.append(server)
        if listen.default_server and default is None:
            default = server
    return ServerSelector(servers, default or servers[0])


class _Rejected:
    """What the access log sees of a request that could not be parsed: nginx logs
    these too, with the status and an empty request line."""

    def __init__(self, conn: HttpConnection, status: int, head: bytes, body: int) -> None:
        self.conn = conn
        self.status = status
        self.bytes_sent = len(head) + body
        self.body_bytes_sent = body
        self.headers: dict[str, str] = {}
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.query = ""
        self.path = ""
        self.host = ""
        self.server = None
        self.server_name = ""
        self.start = time.time()
        self.sent_head = head
        self.location = None
        self.proxy_host = ""
        self.upstream = None
        self.captures = self.server_captures = None

    def elapsed(self) -> float:
        return time.time() - self.start

"""The ``proxy_pass`` content handler: the location's proxy settings, compiled once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from portico.config.directives import NextUpstream, ProxyPass
from portico.proxy.exchange import ProxyExchange
from portico.proxy.headers import compile_request, compile_response, redirect_rules
from portico.upstream.group import UpstreamGroup

if TYPE_CHECKING:
    from portico.http.request import Request


class ProxyHandler:
    __slots__ = (
        "connect_timeout",
        "diverts",
        "group",
        "ignore_client_abort",
        "intercept_errors",
        "keep_body_size",
        "next_timeout",
        "next_upstream",
        "proxy_host",
        "read_timeout",
        "request_template",
        "response_filter",
        "retry_statuses",
        "send_timeout",
        "tries",
    )

    def __init__(self, values: Mapping[str, Any], group: UpstreamGroup, prefix: str) -> None:
        proxy_pass: ProxyPass = values["proxy_pass"]
        self.group = group
        self.proxy_host = proxy_pass.host_header
        self.request_template = compile_request(
            proxy_pass.uri,
            prefix,
            values["proxy_set_header"],
            keepalive=group.keepalive > 0,
            version=values["proxy_http_version"],
            proxy_host=self.proxy_host,
        )
        self.response_filter = compile_response(
            values["proxy_hide_header"],
            values["proxy_pass_header"],
            redirect_rules(values["proxy_redirect"], proxy_pass.target, proxy_pass.uri, prefix),
        )
        self.next_upstream: NextUpstream = values["proxy_next_upstream"]
        self.retry_statuses = self.next_upstream.statuses
        self.tries: int = values["proxy_next_upstream_tries"]
        self.next_timeout: float = values["proxy_next_upstream_timeout"]
        self.connect_timeout: float = values["proxy_connect_timeout"]
        self.read_timeout: float = values["proxy_read_timeout"]
        self.send_timeout: float = values["proxy_send_timeout"]
        self.intercept_errors: bool = values["proxy_intercept_errors"]
        self.ignore_client_abort: bool = values["proxy_ignore_client_abort"]
        # whether an answer's status can ever keep it from the client (a retry, or an
        # error_page of ours): with neither, the exchange does not ask
        self.diverts = bool(self.retry_statuses) or self.intercept_errors
        self.keep_body_size: int = values["proxy_request_buffer_size"]

    def handle(self, request: Request) -> None:
        if request.head.chunked and self.request_template.version == b"HTTP/1.0":
            # an HTTP/1.0 upstream cannot be sent a body of unknown length
            request.conn.send_error(request, 411)
            return
        ProxyExchange(self, request).start()

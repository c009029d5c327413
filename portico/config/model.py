"""The configuration model: immutable records built from a parsed file.

The running server is built from a ``Config``; reload builds a new one beside the old
and switches only when it is valid. Settings that nginx inherits down the
http → server → location chain are already merged here: ``values`` of a location holds
every location-level directive, its own or inherited or default, keyed by directive name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from portico.config.directives import (
    BalanceMethod,
    ErrorLog,
    Listen,
    LogFormat,
    User,
    ZoneConf,
)
from portico.upstream.balancers import PeerSpec


@dataclass(frozen=True, slots=True)
class LocationConf:
    modifier: str  # "" prefix, "=" exact, "^~" prefix without regexes, "~", "~*", "@" named
    pattern: str
    regex: re.Pattern[str] | None
    values: Mapping[str, Any]
    locations: tuple[LocationConf, ...]
    file: str
    line: int

    @property
    def name(self) -> str:
        if self.modifier == "@":
            return "@" + self.pattern
        return f"{self.modifier} {self.pattern}".strip()


@dataclass(frozen=True, slots=True)
class ServerConf:
    listens: tuple[Listen, ...]
    names: tuple[str, ...]
    values: Mapping[str, Any]
    locations: tuple[LocationConf, ...]
    file: str
    line: int

    @property
    def primary_name(self) -> str:
        """nginx's ``$server_name``: the first name, or "" when it is a regex."""
        for name in self.names:
            return "" if name.startswith("~") else name
        return ""


@dataclass(frozen=True, slots=True)
class UpstreamConf:
    name: str
    peers: tuple[PeerSpec, ...]
    method: BalanceMethod
    keepalive: int  # idle connections kept per worker; 0: none
    keepalive_requests: int
    keepalive_timeout: float
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class HttpConf:
    servers: tuple[ServerConf, ...]
    log_formats: Mapping[str, LogFormat]
    upstreams: Mapping[str, UpstreamConf]
    zones: Mapping[str, ZoneConf]
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Config:
    path: str  # the main file, or "<built-in>" for the default config
    prefix: str  # where relative paths start
    worker_processes: int
    worker_connections: int
    worker_rlimit_nofile: int | None
    worker_shutdown_timeout: float
    error_log: ErrorLog
    pid: str | None
    user: User | None
    http: HttpConf

    @property
    def listens(self) -> tuple[Listen, ...]:
        """Every distinct listening address of the config, in file order."""
        seen: dict[tuple[str, str, int], Listen] = {}
        for server in self.http.servers:
            for listen in server.listens:
                seen.setdefault(listen.key, listen)
        return tuple(seen.values())

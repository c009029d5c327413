"""Which server answers a Host, and which location a URI: nginx's rules, pure.

Server names, in nginx's order of precedence:

1. an exact name (``example.com``);
2. the longest wildcard that starts with an asterisk (``*.example.com``);
3. the longest wildcard that ends with an asterisk (``mail.*``);
4. the first regex that matches (``~^www\\d+\\.``), in config order;
5. otherwise the default server of the address: the one marked ``default_server``, or
   the first server listening there.

``.example.com`` is shorthand for both ``example.com`` and ``*.example.com``; a request
without a Host header matches the name ``""``. Host values are compared lowercase, with
the port and a trailing dot removed.

Locations, for each level of nesting (``LocationTree.find``), as nginx's
``ngx_http_core_find_location``:

1. an exact location (``= /uri``) equal to the URI ends the search;
2. the longest prefix location that the URI starts with is remembered; if it has
   nested locations they are searched first (the whole procedure, one level down) and
   an exact or regex match there wins;
3. unless that prefix was written ``^~``, the regex locations of this level are tried in
   config order; the first match wins (its own nested locations are searched in turn);
4. otherwise the remembered prefix is the answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from portico.memo import MEMO_KEY_MAX, remember


class NamedServer(Protocol):
    @property
    def names(self) -> tuple[str, ...]: ...


S = TypeVar("S", bound=NamedServer)


_HOSTS: dict[str, str | None] = {}
_UNKNOWN = object()
_HOSTS_MAX = 4096


# nginx's rule for a Host (ngx_http_validate_host): a name of letters, digits, "-",
# "_" and dots, or a bracketed IPv6 literal, then an optional ":port"; no "/", "\\",
# spaces, control characters, no empty label or ".." (it may end up in a path through
# "$host"). None marks an invalid value.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::[0-9]*)?")


def normalize_host(host: str) -> str | None:
    """``Example.COM:8080`` → ``example.com``; ``[::1]:80`` → ``[::1]``; None when the
    value is not a host name (the request then gets 400, as from nginx).

    Clients send the same few Host values again and again: the answers are
    remembered (a bounded table, emptied when full)."""
    name: str | None = _HOSTS.get(host, _UNKNOWN)  # type: ignore[assignment]
    if name is not _UNKNOWN:
        return name
    match = _HOST.fullmatch(host)
    name = None
    if match is not None:
        raw = match.group(1)
        if raw.startswith("[") or not (raw.startswith(".") or ".." in raw):
            name = raw.rstrip(".").lower()
    return remember(_HOSTS, host, name, _HOSTS_MAX)


CHOSEN_MEMO_SIZE = 1024


class ServerSelector(Generic[S]):
    """The servers that share one listening address, chosen by Host."""

    __slots__ = ("_chosen", "_default", "_exact", "_head", "_regexes", "_tail")

    def __init__(self, servers: Sequence[S], default: S) -> None:
        self._default = default
        self._exact: dict[str, S] = {}
        heads: list[tuple[str, S]] = []  # "*.example.com" stored as ".example.com"
        tails: list[tuple[str, S]] = []  # "mail.*" stored as "mail."
        self._regexes: list[tuple[re.Pattern[str], S]] = []
        for server in servers:
            for name in server.names:
                if name.startswith("~"):
                    from portico.config.directives import convert_regex

                    self._regexes.append((re.compile(convert_regex(name[1:])), server))
                    continue
                name = name.lower()
                if name.startswith("."):
                    self._exact.setdefault(name[1:], server)
                    heads.append((name, server))
                elif name.startswith("*."):
                    heads.append((name[1:], server))
                elif name.endswith(".*"):
                    tails.append((name[:-1], server))
                else:
                    # nginx keeps the first server for a name given twice (and warns)
                    self._exact.setdefault(name, server)
        # longest first, so the first hit is the longest match
        self._head = sorted(heads, key=lambda item: -len(item[0]))
        self._tail = sorted(tails, key=lambda item: -len(item[0]))
        # Host values chosen for before: clients send the same few, and a name that no
        # server has would otherwise walk every list each time
        self._chosen: dict[str, tuple[S, re.Match[str] | None]] = {}

    @property
    def default(self) -> S:
        return self._default

    def select(self, host: str) -> tuple[S, re.Match[str] | None]:
        """The server for a normalized Host value ("" when the request had none), and
        the match when a regex name chose it (its groups become variables)."""
        chosen = self._chosen.get(host)
        if chosen is None:
            chosen = self._choose(host)
            if len(host) <= MEMO_KEY_MAX:
                remember(self._chosen, host, chosen, CHOSEN_MEMO_SIZE)
        return chosen

    def _choose(self, host: str) -> tuple[S, re.Match[str] | None]:
        server = self._exact.get(host)
        if server is not None:
            return server, None
        if not host:
            return self._default, None
        for suffix, server in self._head:
            if host.endswith(suffix):
                return server, None
        for prefix, server in self._tail:
            if host.startswith(prefix):
                return server, None
        for regex, server in self._regexes:
            match = regex.search(host)
            if match is not None:
                return server, match
        return self._default, None


class LocationLike(Protocol):
    @property
    def modifier(self) -> str: ...
    @property
    def pattern(self) -> str: ...
    @property
    def regex(self) -> re.Pattern[str] | None: ...
    @property
    def locations(self) -> Sequence[LocationLike]: ...


L = TypeVar("L", bound=LocationLike)


@dataclass(slots=True)
class _Level(Generic[L]):
    exact: dict[str, L] = field(default_factory=dict)
    prefixes: list[L] = field(default_factory=list)  # longest first
    regexes: list[L] = field(default_factory=list)  # config order
    nested: dict[int, _Level[L]] = field(default_factory=dict)  # by id(location)


FOUND_MEMO_SIZE = 4096


class LocationTree(Generic[L]):
    """The locations of one server, ready for matching."""

    __slots__ = ("_found", "_named", "_root")

    def __init__(self, locations: Iterable[L]) -> None:
        self._named: dict[str, L] = {}
        self._root: _Level[L] = self._level(locations)
        # URIs matched before: clients ask for the same few again and again, and a
        # server with many regex locations would otherwise try them all each time
        # (bounded as uri.parse_target's table is)
        self._found: dict[str, tuple[L | None, re.Match[str] | None]] = {}

    def _level(self, locations: Iterable[L]) -> _Level[L]:
        level: _Level[L] = _Level()
        for location in locations:
            modifier = location.modifier
            if modifier == "@":
                self._named[location.pattern] = location
                continue
            if modifier == "=":
                level.exact[location.pattern] = location
            elif modifier in ("", "^~"):
                level.prefixes.append(location)
            else:
                level.regexes.append(location)
            if location.locations:
                level.nested[id(location)] = self._level(location.locations)  # type: ignore[arg-type]
        level.prefixes.sort(key=lambda loc: -len(loc.pattern))
        return level

    def named(self, name: str) -> L | None:
        """A ``@name`` location."""
        return self._named.get(name)

    def find(self, uri: str) -> tuple[L | None, re.Match[str] | None]:
        """The location for a normalized URI, and the regex match that chose it (for
        ``$1``... and named captures). None when no location matches at all."""
        found = self._found.get(uri)
        if found is None:
            _, location, match = self._find(self._root, uri)
            found = (location, match)
            if len(uri) <= MEMO_KEY_MAX:
                remember(self._found, uri, found, FOUND_MEMO_SIZE)
        return found

    def _find(self, level: _Level[L], uri: str) -> tuple[bool, L | None, re.Match[str] | None]:
        # returns (final, location, match): final means an exact or regex location was
        # chosen and outer levels must not look at their regexes.
        location = level.exact.get(uri)
        if location is not None:
            return True, location, None
        found: L | None = None
        noregex = False
        for prefix in level.prefixes:
            if uri.startswith(prefix.pattern):
                found = prefix
                noregex = prefix.modifier == "^~"
                nested = level.nested.get(id(prefix))
                if nested is not None:
                    final, inner, match = self._find(nested, uri)
                    if final:
                        return True, inner, match
                    if inner is not None:
                        found = inner
                break
        if not noregex:
            for candidate in level.regexes:
                regex = candidate.regex
                assert regex is not None
                match = regex.search(uri)
                if match is None:
                    continue
                nested = level.nested.get(id(candidate))
                if nested is not None:
                    _, inner, inner_match = self._find(nested, uri)
                    if inner is not None:
                        return True, inner, inner_match or match
                return True, candidate, match
        return False, found, None

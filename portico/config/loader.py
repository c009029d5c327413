"""From a parsed tree to the immutable model, checking every directive against the table.

Loading has two phases (see STYLE.md): this module is the first and pure one (parse and
validate; all that ``portico -t`` runs); binding sockets and importing apps come later,
in the process that serves. Errors are collected, not raised one by one, so ``-t``
lists them all; a syntax error ends parsing of its file at once, as in nginx.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from portico.config import directives as d
from portico.config.directives import Directive, Env, Listen, LogFormat
from portico.config.model import Config, HttpConf, LocationConf, ServerConf, UpstreamConf
from portico.config.syntax import Node, parse_file
from portico.errors import ConfigError, ConfigErrors
from portico.variables import compile_template

BUILTIN_PATH = "<built-in>"
DEFAULT_CONFIG_PATH = "/etc/portico/portico.conf"

COMBINED_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)


def builtin_prefix() -> str:
    return str(resources.files("portico") / "default")


def builtin_text() -> str:
    return (resources.files("portico") / "default" / "portico.conf").read_text()


def load(path: str | None = None, prefix: str | None = None) -> Config:
    """Parse and validate a config file (``None``: the built-in default config).

    Raises ConfigErrors listing every problem found.
    """
    if path is None or path == BUILTIN_PATH:
        return load_text(builtin_text(), BUILTIN_PATH, prefix or builtin_prefix())
    path = os.path.abspath(path)
    try:
        nodes = parse_file(path)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    return build(nodes, path, prefix or os.path.dirname(path))


def load_text(text: str, path: str, prefix: str) -> Config:
    try:
        nodes = parse_file(path, text)
    except ConfigError as e:
        raise ConfigErrors([e]) from None
    return build(nodes, path, prefix)


# ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Block:
    """The directives written in one block: values by name, and the nested blocks."""

    node: Node | None
    values: dict[str, Any] = field(default_factory=dict)
    blocks: list[Node] = field(default_factory=list)


class Builder:
    def __init__(self, path: str, prefix: str, nodes: tuple[Node, ...]) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        self.upstreams: dict[str, UpstreamConf] = {}
        self.zones: dict[str, d.ZoneConf] = {}
        self.env = Env(prefix=prefix, captures=frozenset(_capture_names(nodes)))

    def fail(self, error: ConfigError) -> None:
        self.errors.append(error)

    def collect(self, nodes: Iterable[Node], context: str, parent: Node | None = None) -> Block:
        block = Block(parent)
        for node in nodes:
            try:
                directive = d.lookup(node, context)
                if directive.block:
                    if directive.name == "types":
                        self._set(block, directive, node, self._types(node))
                    else:
                        block.blocks.append(node)
                    continue
                self._set(block, directive, node, directive.convert(node, self.env))
            except ConfigError as e:
                self.fail(e)
        return block

    def _set(self, block: Block, directive: Directive, node: Node, value: Any) -> None:
        if directive.multiple:
            block.values.setdefault(directive.name, []).append(value)
        elif directive.name in block.values:
            raise node.error(f'"{directive.name}" directive is duplicate')
        else:
            block.values[directive.name] = value

    def _types(self, node: Node) -> Mapping[str, str]:
        types: dict[str, str] = {}
        for entry in node.children or ():
            if entry.is_block or not entry.args:
                self.fail(entry.error('invalid number of arguments in "types" entry'))
                continue
            for extension in entry.args:
                types[extension.lower()] = entry.name
        return MappingProxyType(types)

    def defaults(self, context: str) -> dict[str, Any]:
        return {x.name: x.initial(self.env) for x in d.directives_in(context)}

    def inherit(self, parent: Mapping[str, Any], block: Block, context: str) -> dict[str, Any]:
        """nginx's merge: own value, else the enclosing block's (when inherited), else
        the default."""
        merged: dict[str, Any] = {}
        for directive in d.directives_in(context):
            name = directive.name
            if name in block.values:
                value = block.values[name]
                # "access_log off" is a None entry: it ends inheritance and logs nothing
                merged[name] = (
                    tuple(v for v in value if v is not None) if directive.multiple else value
                )
            elif directive.inherit and name in parent:
                merged[name] = parent[name]
            else:
                merged[name] = directive.initial(self.env)
        return merged

    # -- the contexts ------------------------------------------------------------

    def build(self, nodes: tuple[Node, ...]) -> Config | None:
        main = self.collect(nodes, d.MAIN)
        events = Block(None)
        http_nodes: list[Node] = []
        for node in main.blocks:
            if node.name == "events":
                if events.node is not None:
                    self.fail(node.error('"events" directive is duplicate'))
                events = self.collect(node.children or (), d.EVENTS, node)
            elif node.name == "http":
                http_nodes.append(node)
        if events.node is None:
            # nginx's rule; it also turns a config file caught half-written (a deploy
            # tool truncating it as the master reads it) into an error, not an empty
            # config that would close every listening socket
            self.fail(ConfigError('no "events" section in configuration', self.path))
        if len(http_nodes) > 1:
            self.fail(http_nodes[1].error('"http" directive is duplicate'))
        http = self.http(http_nodes[0] if http_nodes else None)
        values = {**self.defaults(d.MAIN), **main.values}
        event_values = {**self.defaults(d.EVENTS), **events.values}
        if self.errors:
            return None
        return Config(
            path=self.path,
            prefix=self.env.prefix,
            worker_processes=values["worker_processes"],
            worker_connections=event_values["worker_connections"],
            worker_rlimit_nofile=values["worker_rlimit_nofile"],
            worker_shutdown_timeout=values["worker_shutdown_timeout"],
            error_log=values["error_log"],
            pid=values["pid"],
            user=values["user"],
            http=http,
        )

    def http(self, node: Node | None) -> HttpConf:
        block = self.collect(node.children if node else (), d.HTTP, node)
        values = self.inherit({}, block, d.HTTP)
        formats = {"combined": LogFormat("combined", compile_template(COMBINED_FORMAT), "default")}
        for log_format in block.values.get("log_format", []):
            if log_format.name in formats:
                self.fail(
                    ConfigError(
                        f'duplicate "log_format" name "{log_format.name}"',
                        node.file if node else None,
                    )
                )
            formats[log_format.name] = log_format
        zones: dict[str, d.ZoneConf] = {}
        for zone in (
            *block.values.get("limit_req_zone", []),
            *block.values.get("limit_conn_zone", []),
        ):
            if zone.name in zones:
                self.fail(ConfigError(f'duplicate zone "{zone.name}"', zone.file, zone.line))
            zones[zone.name] = zone
        self.zones = zones
        for child in block.blocks:
            if child.name == "upstream":
                self.upstream(child)
        servers = tuple(
            self.server(child, values) for child in block.blocks if child.name == "server"
        )
        self.check_servers(servers)
        self.check_log_formats(servers, values, formats)
        return HttpConf(
            servers=servers,
            log_formats=MappingProxyType(formats),
            upstreams=MappingProxyType(dict(self.upstreams)),
            zones=MappingProxyType(zones),
            values=MappingProxyType(values),
        )

    def check_limits(self, node: Node, values: Mapping[str, Any]) -> None:
        for limit in values.get("limit_req", []):
            zone = self.zones.get(limit.zone)
            if zone is None or zone.kind != "req":
                self.fail(
                    node.error(
                        f'zero size shared memory zone "{limit.zone}" '
                        "(no limit_req_zone of that name)"
                    )
                )
        for name, _ in values.get("limit_conn", []):
            zone = self.zones.get(name)
            if zone is None or zone.kind != "conn":
                self.fail(
                    node.error(
                        f'zero size shared memory zone "{name}" (no limit_conn_zone of that name)'
                    )
                )

    def upstream(self, node: Node) -> None:
        if len(node.args) != 1:
            self.fail(node.error('invalid number of arguments in "upstream" directive'))
            return
        name = node.args[0]
        if name in self.upstreams:
            self.fail(node.error(f'duplicate upstream "{name}"'))
            return
        block = self.collect(node.children or (), d.UPSTREAM, node)
        methods = [
            (key, block.values[key])
            for key in ("ip_hash", "hash", "fair", "least_conn", "random")
            if key in block.values
        ]
        if len(methods) > 1:
            self.fail(
                node.error(
                    f'upstream "{name}" has more than one balancing method: '
                    + ", ".join(key for key, _ in methods)
                )
            )
        peers = tuple(block.values.get("server", []))
        if not any(not peer.backup for peer in peers):
            self.fail(node.error(f'no servers are inside upstream "{name}"'))
            return
        values = {**self.defaults(d.UPSTREAM), **block.values}
        self.upstreams[name] = UpstreamConf(
            name=name,
            peers=peers,
            method=methods[0][1] if methods else d.BalanceMethod("round_robin"),
            keepalive=values["keepalive"] or 0,
            keepalive_requests=values["keepalive_requests"],
            keepalive_timeout=values["keepalive_timeout"],
            file=node.file,
            line=node.line,
        )

    def proxy_target(self, node: Node, proxy_pass: d.ProxyPass) -> None:
        """A proxy_pass names a known upstream, or an address that becomes a group of
        one (nginx's implicit upstream: never taken out for failures)."""
        target = proxy_pass.target
        if target in self.upstreams:
            return
        try:
            _host, _port, path = d.parse_address(target, default_port=80)
        except ValueError:
            self.fail(node.error(f'host not found in upstream "{target}"'))
            return
        from portico.upstream.balancers import PeerSpec

        defaults = self.defaults(d.UPSTREAM)
        self.upstreams[target] = UpstreamConf(
            name=target,
            peers=(PeerSpec(target if path is None else "unix:" + path, max_fails=0),),
            method=d.BalanceMethod("round_robin"),
            keepalive=0,
            keepalive_requests=defaults["keepalive_requests"],
            keepalive_timeout=defaults["keepalive_timeout"],
            file=node.file,
            line=node.line,
        )

    def server(self, node: Node, http_values: Mapping[str, Any]) -> ServerConf:
        block = self.collect(node.children or (), d.SERVER, node)
        values = self.inherit(http_values, block, d.SERVER)
        self.check_limits(node, block.values)
        listens = tuple(block.values.get("listen", [])) or (
            Listen("", 80, file=node.file, line=node.line),
        )
        names = tuple(n for group in block.values.get("server_name", []) for n in group)
        locations = self.locations(block, values, nested_in=None)
        return ServerConf(listens, names, MappingProxyType(values), locations, node.file, node.line)

    def locations(
        self, block: Block, parent_values: Mapping[str, Any], nested_in: LocationConf | None
    ) -> tuple[LocationConf, ...]:
        out: list[LocationConf] = []
        seen: set[tuple[str, str]] = set()
        for node in block.blocks:
            if node.name != "location":
                continue
            location = self.location(node, parent_values, nested_in)
            if location is None:
                continue
            key = (
                (location.modifier if location.modifier in ("=", "@") else "", location.pattern)
                if location.regex is None
                else (location.modifier, location.pattern)
            )
            if key in seen:
                self.fail(node.error(f'duplicate location "{location.pattern}"'))
            seen.add(key)
            out.append(location)
        return tuple(out)

    def location(
        self, node: Node, parent_values: Mapping[str, Any], nested_in: LocationConf | None
    ) -> LocationConf | None:
        args = node.args
        if len(args) == 2:
            modifier, pattern = args
            if modifier not in ("=", "~", "~*", "^~"):
                self.fail(node.error(f'invalid location modifier "{modifier}"'))
                return None
        elif args[0].startswith("@"):
            modifier, pattern = "@", args[0][1:]
            if nested_in is not None:
                self.fail(node.error(f'named location "{args[0]}" can be on the server level only'))
                return None
        elif args[0] == "=":
            self.fail(node.error('invalid number of arguments in "location" directive'))
            return None
        else:
            modifier, pattern = "", args[0]
        if nested_in is not None:
            if nested_in.modifier == "=":
                self.fail(
                    node.error(
                        f'location "{pattern}" cannot be inside the exact location '
                        f'"{nested_in.pattern}"'
                    )
                )
                return None
            if (
                nested_in.regex is None
                and modifier in ("", "=", "^~")
                and not pattern.startswith(nested_in.pattern)
            ):
                self.fail(
                    node.error(f'location "{pattern}" is outside location "{nested_in.pattern}"')
                )
                return None
        regex = None
        if modifier in ("~", "~*"):
            try:
                flags = re.IGNORECASE if modifier == "~*" else 0
                regex = re.compile(d.convert_regex(pattern), flags)
            except re.error as e:
                self.fail(node.error(f'invalid regex "{pattern}": {e}'))
                return None
        block = self.collect(node.children or (), d.LOCATION, node)
        values = self.inherit(parent_values, block, d.LOCATION)
        self.check_limits(node, block.values)
        if "proxy_pass" in block.values:
            proxy_pass = block.values["proxy_pass"]
            if proxy_pass.uri is not None and modifier in ("~", "~*", "@"):
                self.fail(
                    node.error(
                        '"proxy_pass" cannot have URI part in location given '
                        "by regular expression, or inside named location"
                    )
                )
            self.proxy_target(node, proxy_pass)
        if "alias" in block.values and "root" in block.values:
            self.fail(node.error('"alias" and "root" cannot both be set in one location'))
        shell = LocationConf(
            modifier, pattern, regex, MappingProxyType(values), (), node.file, node.line
        )
        # the children are checked against their parent: built first without them
        return dataclasses.replace(shell, locations=self.locations(block, values, nested_in=shell))

    # -- whole-config checks -----------------------------------------------------

    def check_servers(self, servers: tuple[ServerConf, ...]) -> None:
        defaults: dict[tuple[str, str, int], Listen] = {}
        for server in servers:
            for listen in server.listens:
                if not listen.default_server:
                    continue
                if listen.key in defaults:
                    self.fail(
                        ConfigError(
                            f"a duplicate default server for {listen}", listen.file, listen.line
                        )
                    )
                defaults[listen.key] = listen

    def check_log_formats(
        self,
        servers: tuple[ServerConf, ...],
        http_values: Mapping[str, Any],
        formats: Mapping[str, LogFormat],
    ) -> None:
        def check(values: Mapping[str, Any]) -> None:
            for log in values.get("access_log", ()):
                if log is not None and log.format not in formats:
                    self.fail(ConfigError(f'unknown log format "{log.format}"', self.path))

        check(http_values)
        for server in servers:
            check(server.values)
            for location in _walk(server.locations):
                check(location.values)


def _walk(locations: Iterable[LocationConf]) -> Iterable[LocationConf]:
    for location in locations:
        yield location
        yield from _walk(location.locations)


def _capture_names(nodes: Iterable[Node]) -> Iterable[str]:
    """Named groups of every regex in the config, which become variables."""
    for node in nodes:
        for arg in node.args:
            yield from re.findall(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>", arg)
        if node.children:
            yield from _capture_names(node.children)


def build(nodes: tuple[Node, ...], path: str, prefix: str) -> Config:
    builder = Builder(path, prefix, nodes)
    config = builder.build(nodes)
    if builder.errors or config is None:
        raise ConfigErrors(builder.errors)
    return config

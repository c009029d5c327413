"""Listening sockets: bound by the master, inherited by workers, handed over across exec.

The master binds every address of the config before it forks, so a worker never binds
and a port that is busy is reported once, at start, with nginx's wording. On binary
upgrade (USR2) the sockets travel to the new program as inherited descriptors named in
the ``PORTICO_SOCKETS`` environment variable (``fd:key;fd:key``), as nginx's ``NGINX``
variable does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterable

from portico.config.directives import Listen
from portico.config.model import Config
from portico.errors import PorticoError

ENVIRONMENT_VARIABLE = "PORTICO_SOCKETS"

SocketKey = tuple[str, str, int]
# a socket of the master: a SocketKey, or a SocketKey plus a worker number for the
# per-worker sockets of `listen ... reuseport`
SlotKey = tuple[str, str, int] | tuple[str, str, int, int]


class BindError(PorticoError):
    pass


def wildcard_ports(listens: Iterable[Listen]) -> set[tuple[str, int]]:
    return {(listen.family, listen.port) for listen in listens if listen.is_wildcard}


def socket_key(listen: Listen, wildcards: set[tuple[str, int]]) -> SocketKey:
    """The socket that serves ``listen``: its own, or the wildcard socket of its port
    (nginx binds only ``*:80`` when both ``*:80`` and ``127.0.0.1:80`` are listed, and
    tells them apart by each connection's local address)."""
    if listen.path is not None:
        return ("unix", listen.path, 0)
    if (listen.family, listen.port) in wildcards:
        return (listen.family, "::" if listen.family == "inet6" else "", listen.port)
    return (listen.family, listen.host, listen.port)


def plan(config: Config) -> dict[SocketKey, Listen]:
    """Every socket the config needs, with the ``listen`` whose options it takes: the
    first line for its address, except that a wildcard socket takes the wildcard's own
    line over the specific addresses folded into it."""
    listens = [listen for server in config.http.servers for listen in server.listens]
    wildcards = wildcard_ports(listens)
    sockets: dict[SocketKey, Listen] = {}
    for listen in listens:
        key = socket_key(listen, wildcards)
        taken = sockets.get(key)
        if taken is None or (listen.is_wildcard and not taken.is_wildcard):
            sockets[key] = listen
    return sockets


def key_text(key: SlotKey) -> str:
    family, host, port = key[:3]
    worker = f"#{key[3]}" if len(key) == 4 else ""
    if family == "unix":
        return f"unix:{host}{worker}"
    if family == "inet6":
        return f"[{host}]:{port}{worker}"
    return f"{host or '0.0.0.0'}:{port}{worker}"


def parse_key(text: str) -> SlotKey:
    text, hash_, worker = text.partition("#")
    key: SocketKey
    if text.startswith("unix:"):
        key = ("unix", text[5:], 0)
    else:
        host, _, port = text.rpartition(":")
        if host.startswith("["):
            key = ("inet6", host[1:-1], int(port))
        else:
            key = ("inet", "" if host == "0.0.0.0" else host, int(port))
    return (*key, int(worker)) if hash_ else key


def slots(listen: Listen, key: SocketKey, workers: int) -> list[SlotKey]:
    """The master's sockets for one planned address: one shared socket, or one per
    worker with ``reuseport`` (the kernel then spreads connections evenly)."""
    if listen.reuseport and key[0] != "unix":
        return [(*key, number) for number in range(workers)]
    return [key]


def bind(listen: Listen, key: SlotKey) -> socket.socket:
    """A listening, non-blocking socket for ``listen``; BindError says why not."""
    family, host, port = key[:3]
    try:
        if family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _remove_stale_unix_socket(host)
            sock.bind(host)
            os.chmod(host, 0o666)
        else:
            af = socket.AF_INET6 if family == "inet6" else socket.AF_INET
            sock = socket.socket(af, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if len(key) == 4:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(listen.ipv6only))
            sock.bind((host or ("::" if af == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(listen.backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError as e:
        with contextlib.suppress(Exception):
            sock.close()
        raise BindError(f"bind() to {key_text(key)} failed ({e.errno}: {e.strerror})") from None
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """nginx unlinks an old socket file; we do only if nothing answers on it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(98, "Address already in use")
    finally:
        probe.close()


def inherited() -> dict[SlotKey, socket.socket]:
    """Sockets handed over by a previous master (binary upgrade)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    sockets = {}
    for item in value.split(";"):
        if not item:
            continue
        fd_text, _, key_text_value = item.partition(":")
        key = parse_key(key_text_value)
        family = {"unix": socket.AF_UNIX, "inet6": socket.AF_INET6}.get(key[0], socket.AF_INET)
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=int(fd_text))
        sock.setblocking(False)
        sockets[key] = sock
    return sockets


def for_worker(
    sockets: dict[SlotKey, socket.socket], number: int
) -> dict[SocketKey, socket.socket]:
    """What worker ``number`` accepts on: the shared sockets and its own reuseport ones."""
    return {
        key[:3]: sock  # type: ignore[misc]
        for key, sock in sockets.items()
        if len(key) == 3 or key[3] == number  # type: ignore[misc]
    }


def describe(sockets: dict[SlotKey, socket.socket]) -> str:
    return ";".join(f"{sock.fileno()}:{key_text(key)}" for key, sock in sockets.items())

"""Idle keep-alive connections: what holding them costs portico and nginx.

Opens N keep-alive connections (default 50,000) to one server, each sending
one request (`GET /`, answered `200 ok`) and then staying idle, holds them,
and measures: how many are held, the RSS growth of the server's workers per
connection (KB per connection), the latency of probe requests on fresh
connections while they are held (p50/p99, against the same probes on the
idle server), whether the held connections are all still open after
`--duration` seconds, and that the server still answers once they are
closed. Both servers run the same config text, one at a time (portico, then
nginx: not interleaved, each run is too heavy to alternate):

    worker_processes W;  worker_rlimit_nofile 20000;
    events { worker_connections 19000; }
    http { access_log off; keepalive_timeout 300s;
           server { listen 127.0.0.1:PORT backlog=65535; location / { return 200 "ok"; } } }

    python bench/connections.py                              # 50,000 connections, 4 workers
    python bench/connections.py --connections 2000 --workers 1   # a small run

This machine caps open files at 20,000 per process (hard limit) and
ephemeral ports near 28,000 per source address. So the client sockets are
spread over several client processes (this file, run as `_client`), at most
`--per-client` (10,000) each, with their soft RLIMIT_NOFILE raised to the
hard limit; each binds its sockets to its own loopback source address
(127.0.C.2, 127.0.C.3, ..., a fresh C for every server and round, so that
no port left in TIME_WAIT by an earlier run is in the way). The server needs
N / 19,000 workers at least: 4 for 50,000.

The server is pinned to CPU 0 and the client processes to CPU 1. Every
phase has a deadline (`--connect-timeout` for opening, 30 s for the probes,
30 s for closing); the client processes are ended by pid if they overstay.

The ratio lines come last: portico/nginx KB per connection and probe p99
while holding the connections (lower is better for both).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    PORTICO_BIN,
    SERVER_CPU,
    WRK_CPU,
    BenchError,
    Server,
    children,
    ensure_peers,
    free_port,
    http_get,
    median,
    nginx_server,
    nginx_version,
    open_fds,
    portico_server,
    rss_kb,
    run_script,
)

CONFIG_TEMPLATE = """\
worker_processes {workers};
worker_rlimit_nofile 20000;
events {{
    worker_connections 19000;
}}
http {{
    access_log off;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{
            return 200 "ok";
        }}
    }}
}}
"""
WORKER_CONNECTIONS = 19_000
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"ok"
CLIENT_INFLIGHT = 256  # connects + first requests in progress per client process
PROBE_DEADLINE = 30.0
CLOSE_DEADLINE = 30.0


# -- the client process ------------------------------------------------------------


def _response_complete(buffer: bytes) -> bool | None:
    """True: a whole `200` response; False: need more bytes; None: not a 200."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = buffer[:head_end].lower()
    if not head.startswith(b"http/1.1 200"):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value)
    return len(buffer) >= head_end + 4 + length


def _error_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def client_main(argv: list[str]) -> int:
    """`connections.py _client SOURCE PORT COUNT TIMEOUT`: open, report, hold, close.

    Speaks to the parent in JSON lines: one `held` report when the opening is
    done (or its deadline passed), then per command on stdin: `check` (how
    many held connections are still open) or `close`. End of stdin closes too,
    so a parent that died leaves no connections behind.
    """
    source, port, count, timeout = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    held: list[socket.socket] = []
    errors: Counter[str] = Counter()
    pending: dict[socket.socket, bytearray] = {}
    sent: set[socket.socket] = set()
    started_at = time.monotonic()
    deadline = started_at + timeout
    started = 0

    def fail(sock: socket.socket, reason: str) -> None:
        errors[reason] += 1
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(sock)
        pending.pop(sock, None)
        sent.discard(sock)
        sock.close()

    while (started < count or pending) and time.monotonic() < deadline:
        while started < count and len(pending) < CLIENT_INFLIGHT:
            started += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
            except OSError as exc:
                errors[f"bind {_error_name(exc.errno or 0)}"] += 1
                sock.close()
                continue
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                errors[f"connect {_error_name(code)}"] += 1
                sock.close()
                continue
            pending[sock] = bytearray()
            selector.register(sock, selectors.EVENT_WRITE)
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock not in sent:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sock, f"connect {_error_name(code)}")
                    continue
                try:
                    sock.send(REQUEST)  # 36 bytes into an empty buffer: sent whole
                except OSError as exc:
                    fail(sock, f"send {_error_name(exc.errno or 0)}")
                    continue
                sent.add(sock)
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(4096)
            except OSError as exc:
                fail(sock, f"recv {_error_name(exc.errno or 0)}")
                continue
            if not data:
                fail(sock, "closed before the response")
                continue
            pending[sock] += data
            complete = _response_complete(bytes(pending[sock]))
            if complete is None:
                fail(sock, "not 200")
            elif complete:
                selector.unregister(sock)
                del pending[sock]
                sent.discard(sock)
                held.append(sock)
    for sock in list(pending):
        fail(sock, "deadline")
    errors["never started (deadline)"] += count - started
    if not errors["never started (deadline)"]:
        del errors["never started (deadline)"]
    selector.close()
    report = {"held": len(held), "errors": dict(errors)}
    report["seconds"] = round(time.monotonic() - started_at, 3)
    print(json.dumps(report), flush=True)

    for line in sys.stdin:
        if line.strip() == "check":
            print(json.dumps({"open": _still_open(held)}), flush=True)
        elif line.strip() == "close":
            break
    for sock in held:
        sock.close()
    print(json.dumps({"closed": len(held)}), flush=True)
    return 0


def _still_open(held: list[socket.socket]) -> int:
    """Held connections the server has not closed (no FIN, no RST, nothing to read)."""
    poller = select.epoll(sizehint=max(1, len(held)))
    try:
        for sock in held:
            poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        events = poller.poll(0, max(1, len(held)))
    finally:
        poller.close()
    return len(held) - len(events)


# -- the parent: one server, one round ------------------------------------------------


class Client:
    """A client process: started with its share of connections, ended by its pid."""

    def __init__(self, source: str, port: int, count: int, timeout: float) -> None:
        self.source = source
        self.count = count
        argv = [sys.executable, str(Path(__file__).resolve()), "_client", source]
        argv += [str(port), str(count), str(timeout)]
        self.process = subprocess.Popen(
            ["taskset", "-c", WRK_CPU, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()

    def read(self, deadline: float) -> dict[str, Any]:
        """The next JSON line, or BenchError when the deadline passes first."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"client {self.source} did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"client {self.source} exited ({self.process.poll()})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def end(self, timeout: float) -> None:
        """Close stdin (the client closes its sockets and exits); SIGKILL if it overstays."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass(frozen=True, slots=True)
class Probes:
    """Latencies (ms) of sequential requests on fresh connections; failures counted."""

    latencies_ms: tuple[float, ...]
    failures: int

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def probe(port: int, count: int) -> Probes:
    """`count` requests one after the other, each on a new connection, 30 s in all."""
    latencies = []
    failures = 0
    deadline = time.monotonic() + PROBE_DEADLINE
    for _ in range(count):
        if time.monotonic() > deadline:
            failures = count - len(latencies)  # the rest count as failed
            break
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(REQUEST)
                buffer = b""
                while True:
                    data = sock.recv(4096)
                    if not data:
                        raise OSError("closed before the response")
                    buffer += data
                    complete = _response_complete(buffer)
                    if complete is None:
                        raise OSError("not 200")
                    if complete:
                        break
        except OSError:
            failures += 1
            continue
        latencies.append((time.perf_counter() - started) * 1000)
    return Probes(tuple(latencies), failures)


@dataclass(frozen=True, slots=True)
class RoundResult:
    held: int
    errors: dict[str, int]
    connect_seconds: float
    still_open: int
    rss_before_kb: dict[int, int]  # worker pid -> VmRSS
    rss_held_kb: dict[int, int]
    rss_after_kb: dict[int, int]  # after the connections were closed
    fds_held: dict[int, int]  # worker pid -> descriptors open while holding
    idle_probes: Probes
    held_probes: Probes
    answers_after: bool

    @property
    def kb_per_connection(self) -> float:
        growth = sum(self.rss_held_kb.values()) - sum(self.rss_before_kb.values())
        return growth / self.held if self.held else math.nan


def wait_for_workers(server: Server, workers: int) -> list[int]:
    """The master's children once there are exactly `workers` of them (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        pids = children(server.pid)
        if len(pids) == workers or time.monotonic() > deadline:
            if len(pids) != workers:
                raise BenchError(f"{server.name} has {len(pids)} workers, not {workers}")
            return pids
        time.sleep(0.1)


def rss_of(pids: list[int]) -> dict[int, int]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = rss_kb(pid)
    return found


def spread(connections: int, per_client: int) -> list[int]:
    """Connections per client process: as even as possible, at most per_client each."""
    clients = max(1, math.ceil(connections / per_client))
    base, extra = divmod(connections, clients)
    return [base + (1 if i < extra else 0) for i in range(clients)]


def run_round(server: Server, args: argparse.Namespace, address_block: int) -> RoundResult:
    workers = wait_for_workers(server, args.workers)
    idle_probes = probe(server.port, args.probes)
    time.sleep(0.5)
    rss_before = rss_of(workers)
    fds_before = {pid: open_fds(pid) for pid in workers}
    shares = spread(args.connections, args.per_client)
    clients: list[Client] = []
    try:
        started = time.monotonic()
        for i, share in enumerate(shares):
            source = f"127.0.{address_block}.{i + 2}"
            clients.append(Client(source, server.port, share, args.connect_timeout))
        deadline = started + args.connect_timeout + 30
        reports = [client.read(deadline) for client in clients]
        connect_seconds = time.monotonic() - started
        held = sum(int(r["held"]) for r in reports)
        errors: Counter[str] = Counter()
        for report in reports:
            errors.update(report["errors"])
        print(
            f"  {server.name}: {held:,} of {args.connections:,} connections held after "
            f"{connect_seconds:.1f} s; holding {args.duration:g} s",
            file=sys.stderr,
        )
        time.sleep(args.duration)
        rss_held = rss_of(workers)
        fds_held = {pid: open_fds(pid) - fds_before.get(pid, 0) for pid in workers}
        held_probes = probe(server.port, args.probes)
        for client in clients:
            client.send("check")
        deadline = time.monotonic() + CLOSE_DEADLINE
        still_open = sum(int(client.read(deadline)["open"]) for client in clients)
        for client in clients:
            client.send("close")
        deadline = time.monotonic() + CLOSE_DEADLINE
        for client in clients:
            client.read(deadline)
    finally:
        for client in clients:
            client.end(timeout=CLOSE_DEADLINE)
    time.sleep(1.0)  # let the workers see the closes
    answers_after = False
    with contextlib.suppress(OSError):
        response = http_get(server.url("/"))
        answers_after = response.status == 200 and response.body == BODY
    return RoundResult(
        held=held,
        errors=dict(errors),
        connect_seconds=connect_seconds,
        still_open=still_open,
        rss_before_kb=rss_before,
        rss_held_kb=rss_held,
        rss_after_kb=rss_of(workers),
        fds_held=fds_held,
        idle_probes=idle_probes,
        held_probes=held_probes,
        answers_after=answers_after,
    )


# -- reporting ---------------------------------------------------------------------


def growth_mib(result: RoundResult, pid: int) -> float:
    return (result.rss_held_kb[pid] - result.rss_before_kb[pid]) / 1024


def report(name: str, rounds: list[RoundResult]) -> dict[str, float]:
    """Print one server's figures; return the medians the ratio lines use."""
    figures = {
        "held": median(r.held for r in rounds),
        "kb": median(r.kb_per_connection for r in rounds),
        "p50": median(r.held_probes.percentile(0.5) for r in rounds),
        "p99": median(r.held_probes.percentile(0.99) for r in rounds),
        "idle_p50": median(r.idle_probes.percentile(0.5) for r in rounds),
        "idle_p99": median(r.idle_probes.percentile(0.99) for r in rounds),
    }
    last = rounds[-1]
    print(f"\n{name}" + (f" (median of {len(rounds)} rounds)" if len(rounds) > 1 else ""))
    print(
        f"  connections held: {figures['held']:,.0f}; opened in "
        f"{median(r.connect_seconds for r in rounds):.1f} s; still open after the hold: "
        f"{median(r.still_open for r in rounds):,.0f}"
    )
    errors: Counter[str] = Counter()
    for r in rounds:
        errors.update(r.errors)
    if errors:
        print(f"  failed connections: {dict(errors)}")
    print(
        f"  workers' RSS: {sum(last.rss_before_kb.values()) / 1024:.1f} MiB before, "
        f"{sum(last.rss_held_kb.values()) / 1024:.1f} MiB holding, "
        f"{sum(last.rss_after_kb.values()) / 1024:.1f} MiB after closing (last round)"
    )
    per_worker = ", ".join(
        f"{last.fds_held[pid]:,} conns / +{growth_mib(last, pid):.1f} MiB"
        for pid in sorted(last.rss_held_kb)
        if pid in last.rss_before_kb
    )
    print(f"  per worker (last round): {per_worker}")
    print(f"  KB per connection: {figures['kb']:.2f}")
    failures = sum(r.held_probes.failures for r in rounds)
    print(
        f"  probe requests (fresh connections, sequential): idle server p50 "
        f"{figures['idle_p50']:.2f} ms p99 {figures['idle_p99']:.2f} ms; holding p50 "
        f"{figures['p50']:.2f} ms p99 {figures['p99']:.2f} ms"
        + (f"; {failures} probes failed" if failures else "")
    )
    answered = all(r.answers_after for r in rounds)
    print(f"  answers after closing them all: {'yes' if answered else 'NO'}")
    return figures


def ratio_line(label: str, top: float, bottom: float) -> str:
    value = top / bottom if bottom and not math.isnan(top) and not math.isnan(bottom) else None
    shown = "n/a" if value is None else f"{value:.2f}"
    return f"ratio portico/nginx {label}: {shown}   (lower is better)"


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections", type=int, default=50_000, help="idle connections (default 50,000)"
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="worker_processes of both servers (default 4)"
    )
    parser.add_argument(
        "--duration", type=float, default=5, help="seconds the connections are held idle"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="open/hold/close cycles per server (default 1)"
    )
    parser.add_argument(
        "--probes", type=int, default=200, help="probe requests, idle and holding (default 200)"
    )
    parser.add_argument(
        "--per-client", type=int, default=10_000, help="connections per client process"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=60, help="deadline to open them (default 60 s)"
    )
    parser.add_argument("--only", choices=["portico", "nginx"], help="one server only")
    args = parser.parse_args(argv)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if not 1 <= args.rounds <= 5 or not 0 <= args.duration <= 120:
        parser.error("--rounds must be 1..5 and --duration 0..120 s")
    if not 1 <= args.workers <= 16 or not 1 <= args.probes <= 10_000:
        parser.error("--workers must be 1..16 and --probes 1..10,000")
    if not 1 <= args.connections <= args.workers * WORKER_CONNECTIONS:
        parser.error(
            f"--connections must be 1..{args.workers * WORKER_CONNECTIONS:,} "
            f"({args.workers} workers x worker_connections {WORKER_CONNECTIONS:,})"
        )
    if hard != resource.RLIM_INFINITY and not 1 <= args.per_client <= hard - 64:
        parser.error(f"--per-client must be 1..{hard - 64} (the open-file hard limit is {hard})")
    if len(spread(args.connections, args.per_client)) > 250:
        parser.error("too many client processes: raise --per-client")
    if not 1 <= args.connect_timeout <= 300:
        parser.error("--connect-timeout must be 1..300 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    names = [args.only] if args.only else ["portico", "nginx"]
    clients = len(spread(args.connections, args.per_client))
    print("portico idle-connections benchmark")
    print(
        f"  server on CPU {SERVER_CPU} ({args.workers} worker{'s' * (args.workers != 1)}, "
        "worker_connections "
        f"{WORKER_CONNECTIONS:,}, worker_rlimit_nofile 20000); {clients} client process(es) "
        f"on CPU {WRK_CPU}, at most {args.per_client:,} connections each, one source "
        "address each"
    )
    print(
        f"  {args.connections:,} connections, one request each, then held {args.duration:g} s; "
        f"{args.probes} probe requests; one server at a time ({', '.join(names)}); "
        f"{args.rounds} round(s)"
    )
    print(f"  peer: {nginx_version()}; portico: {PORTICO_BIN}")
    print(
        "  note: nginx allocates its connection table (worker_connections entries) at start, "
        "so part of its per-connection memory is already in its 'before' RSS"
    )
    results: dict[str, list[RoundResult]] = {}
    address_block = 0
    with tempfile.TemporaryDirectory(prefix="portico-bench-connections-") as tmp:
        workdir = Path(tmp)
        for name in names:
            results[name] = []
            for round_no in range(1, args.rounds + 1):
                address_block += 1
                directory = workdir / f"{name}-{round_no}"
                directory.mkdir()
                port = free_port()
                text = CONFIG_TEMPLATE.format(workers=args.workers, port=port)
                if name == "portico":
                    conf_path = directory / "portico.conf"
                    conf_path.write_text(text)
                    server = portico_server(conf_path, port)
                else:
                    server = nginx_server(text, directory, port)
                server.ready_timeout = 30
                with server:
                    results[name].append(run_round(server, args, address_block))
    figures = {name: report(name, rounds) for name, rounds in results.items()}
    print()
    if "portico" in figures and "nginx" in figures:
        portico, nginx = figures["portico"], figures["nginx"]
        print(ratio_line("KB per connection", portico["kb"], nginx["kb"]))
        print(ratio_line("probe p99 while holding", portico["p99"], nginx["p99"]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        sys.exit(client_main(sys.argv[2:]))
    run_script(main)

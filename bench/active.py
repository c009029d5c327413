"""Many active clients: 10,000 connections each sending a request every second.

Issue 6's second test: 10,000 keep-alive clients, each sending one request a second
for 30 s, spread over a static file, a proxied location and (portico only) a WSGI app;
every request must succeed, and the latency percentiles are printed beside nginx's for
the static and proxied cases (nginx runs no WSGI app).

    python bench/active.py                          # 10,000 clients, 30 s, both servers
    python bench/active.py --clients 2000 --duration 10 --only portico

Both servers run with 2 worker processes, unpinned: on this 2-core machine the server
and the client processes share both cores (the clients are light: 10,000 requests a
second in all). Each client process (this file, run as `_client`) drives its share of
the connections from one loopback source address (127.0.C.x) with uvloop; request i of
a connection is sent at start + i s + its phase, spreading the load evenly over each
second. A request whose answer has not come back when the next one is due counts as
late (a failure). The backend of the proxied location is one nginx answering `return`.

The ratio lines come last: portico/nginx p99 for the static and the proxied requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    BenchError,
    Server,
    ensure_peers,
    free_port,
    http_get,
    nginx_server,
    portico_server,
    run_script,
)

BENCH_DIR = Path(__file__).resolve().parent

CONFIG = """\
worker_processes 2;
worker_rlimit_nofile 20000;
events {{ worker_connections 15000; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        root {root};
        location /proxy/ {{
            proxy_pass http://backend;
            {proxy_extra}
        }}
        {wsgi}
    }}
}}
"""
NGINX_PROXY_EXTRA = 'proxy_http_version 1.1; proxy_set_header Connection "";'
WSGI_LOCATION = "location /app/ {{ wsgi_path {bench}; wsgi plain_app:app; }}"
BACKEND = """\
worker_processes 1;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "proxied ok"; }} }} }}
"""


# -- the client processes -------------------------------------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self, record: list, failures: list) -> None:  # type: ignore[type-arg]
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_at = 0.0
        self.path = ""
        self.waiting = False
        self.record = record
        self.failures = failures

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, path: str) -> None:
        if self.waiting:
            self.failures.append("late")
            return
        if self.transport is None or self.transport.is_closing():
            self.failures.append("closed")
            return
        self.path = path
        self.waiting = True
        self.sent_at = time.monotonic()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        status = head[9:12]
        self.buffer = self.buffer[end + 4 + length :]
        self.waiting = False
        if status != b"200":
            self.failures.append(f"status {status.decode()}")
            return
        self.record.append((self.path, time.monotonic() - self.sent_at))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.failures.append(f"lost: {exc}")
        self.transport = None


async def _drive(
    port: int, source: str, count: int, paths: list[str], duration: float, start_at: float
) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    record: list[tuple[str, float]] = []
    failures: list[str] = []
    conns = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 30)
        _, conn = await loop.create_connection(lambda: _Conn(record, failures), sock=sock)
        conns.append(conn)
    # every connection at its own phase within each second
    wall_start = start_at - time.time() + loop.time()
    seconds = int(duration)
    for i, conn in enumerate(conns):
        phase = i / count
        for k in range(seconds):
            path = paths[(i + k) % len(paths)]
            loop.call_at(wall_start + k + phase, conn.send, path)
    await asyncio.sleep(max(0.0, wall_start - loop.time()) + seconds + 3.0)
    late = sum(1 for c in conns if c.waiting)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    per_path: dict[str, list[float]] = {}
    for path, latency in record:
        per_path.setdefault(path, []).append(latency)
    return {
        "latencies": per_path,
        "failures": failures + ["unanswered"] * late,
        "connected": len(conns),
    }


def client_main(argv: list[str]) -> int:
    port, source, count, duration, start_at = (
        argv[0],
        argv[1],
        int(argv[2]),
        float(argv[3]),
        float(argv[4]),
    )
    paths = argv[5].split(",")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    result = uvloop.run(_drive(int(port), source, count, paths, duration, start_at))
    json.dump(result, sys.stdout)
    return 0


# -- the run ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_clients(
    port: int, clients: int, processes: int, duration: float, paths: list[str], block: int
) -> dict:  # type: ignore[type-arg]
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    start_at = time.time() + 3.0 + clients / 4000  # time to connect everyone first
    procs = []
    for i, count in enumerate(per):
        source = f"127.0.{block}.{i + 2}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_client",
                    str(port),
                    source,
                    str(count),
                    str(duration),
                    str(start_at),
                    ",".join(paths),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    latencies: dict[str, list[float]] = {}
    failures: list[str] = []
    connected = 0
    deadline = start_at + duration + 60
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            failures.append("client timed out")
        if proc.returncode != 0:
            raise BenchError(f"a client process failed: {err[-500:]}")
        result = json.loads(out)
        connected += result["connected"]
        failures += result["failures"]
        for path, values in result["latencies"].items():
            latencies.setdefault(path, []).extend(values)
    return {"latencies": latencies, "failures": failures, "connected": connected}


def report(name: str, result: dict) -> dict[str, float]:  # type: ignore[type-arg]
    print(f"\n{name}: {result['connected']} connections")
    print(f"  {'location':10} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    p99s = {}
    for path, values in sorted(result["latencies"].items()):
        kind = path.strip("/").split("/")[0] or "static"
        kind = "static" if kind.endswith(".html") else kind
        p99s[kind] = percentile(values, 0.99) * 1000
        print(
            f"  {kind:10} {len(values):9,} {percentile(values, 0.5) * 1000:8.2f} "
            f"{p99s[kind]:8.2f} {max(values) * 1000:8.2f}"
        )
    failures = result["failures"]
    print(
        f"  failed: {len(failures)}"
        + (f" ({', '.join(sorted(set(failures))[:5])})" if failures else "")
    )
    return p99s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--processes", type=int, default=5, help="client processes")
    parser.add_argument("--only", choices=["portico", "nginx"])
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 20_000 or not 1 <= args.duration <= 120:
        parser.error("--clients 1..20000 and --duration 1..120 s")
    ensure_peers()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"active clients: {args.clients:,} connections, one request a second each, "
        f"for {args.duration:g} s; 2 workers, server and clients unpinned"
    )
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="portico-active-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        (workdir / "www").mkdir()
        (workdir / "www" / "small.html").write_bytes(b"x" * 1024)
        backend_dir = workdir / "backend"
        backend_dir.mkdir()
        backend_port = free_port()
        backend = stack.enter_context(
            nginx_server(BACKEND.format(port=backend_port), backend_dir, name="backend", cpu="0,1")
        )
        del backend
        block = 40 + int(time.time()) % 200
        for name in ("portico", "nginx"):
            if args.only and args.only != name:
                continue
            port = free_port()
            directory = workdir / name
            directory.mkdir()
            text = CONFIG.format(
                port=port,
                backend=backend_port,
                root=workdir / "www",
                proxy_extra=NGINX_PROXY_EXTRA if name == "nginx" else "",
                wsgi=WSGI_LOCATION.format(bench=BENCH_DIR) if name == "portico" else "",
            )
            if name == "portico":
                conf = directory / "portico.conf"
                conf.write_text(text)
                server: Server = portico_server(conf, port, cpu="0,1")
            else:
                server = nginx_server(text, directory, port, cpu="0,1")
            with server:
                paths = ["/small.html", "/proxy/x"] + (["/app/x"] if name == "portico" else [])
                for path in paths:
                    if http_get(server.url(path)).status != 200:
                        raise BenchError(f"{name} does not answer {path}")
                block += 1
                result = run_clients(
                    port, args.clients, args.processes, args.duration, paths, block
                )
                results[name] = report(name, result)
    if "portico" in results and "nginx" in results:
        print()
        for kind in ("static", "proxy"):
            ratio = results["portico"][kind] / results["nginx"][kind]
            print(f"ratio portico/nginx {kind} p99: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        sys.exit(client_main(sys.argv[2:]))
    run_script(main)

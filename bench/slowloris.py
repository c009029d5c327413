"""Slowloris: thousands of clients sending their headers one byte a second.

Issue 6: 5,000 connections that dribble a request head, one byte a second, must be cut
at `client_header_timeout` with 408, and must not delay other clients: probe requests on
fresh connections keep their latency (p99 under 50 ms) the whole time.

    python bench/slowloris.py                         # 5,000 slow clients, both servers
    python bench/slowloris.py --clients 1000 --only portico

Each server (one worker, `client_header_timeout 10s`) is pinned to CPU 0; the slow
clients (one process, uvloop, its own loopback source address) and the probes run on
CPU 1. The probe client sends one request every 20 ms for the whole run, from the
moment the slow connections are open until after they were cut. nginx closes a slow
client without an answer (it logs 408); portico answers 408: the count of answers is
printed as seen.
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

from harness import WRK_CPU, ensure_peers, free_port, nginx_server, portico_server, run_script

CONFIG = """\
worker_processes 1;
worker_rlimit_nofile 20000;
events {{ worker_connections 15000; }}
http {{
    access_log off;
    client_header_timeout {timeout}s;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location / {{ return 200 "probe"; }}
    }}
}}
"""


async def _slow(port: int, source: str, count: int, seconds: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    outcome = {"408": 0, "closed": 0, "other": 0, "open": 0}
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    async def one(index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        await asyncio.sleep(index / count)  # spread the bytes over each second
        answer = b""
        for i in range(seconds):
            try:
                writer.write(request[i : i + 1])
                answer = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                continue
            except OSError:
                answer = b""
            break
        else:
            outcome["open"] += 1
            writer.close()
            return
        if answer.startswith(b"HTTP/1.1 408"):
            outcome["408"] += 1
        elif not answer:
            outcome["closed"] += 1
        else:
            outcome["other"] += 1
        writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return outcome


def slow_main(argv: list[str]) -> int:
    port, source, count, seconds = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    json.dump(uvloop.run(_slow(port, source, count, seconds)), sys.stdout)
    return 0


def probe(port: int, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"a probe got {data[:40]!r}")
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(name: str, server: object, port: int, args: argparse.Namespace, block: int) -> float:
    seconds = args.timeout + 5
    slow = subprocess.Popen(
        [
            "taskset",
            "-c",
            WRK_CPU,
            sys.executable,
            __file__,
            "_slow",
            str(port),
            f"127.0.{block}.2",
            str(args.clients),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0 + args.clients / 5000)  # connected and dribbling
    os.sched_setaffinity(0, {int(WRK_CPU)})
    latencies = probe(port, time.monotonic() + args.timeout + 2)
    try:
        out, err = slow.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        slow.kill()
        out, err = slow.communicate()
    if slow.returncode != 0:
        raise RuntimeError(f"the slow clients failed: {err[-400:]}")
    outcome = json.loads(out)
    p99 = percentile(latencies, 0.99) * 1000
    print(f"\n{name}: {args.clients:,} slow clients")
    print(
        f"  answered 408: {outcome['408']:,}; closed without an answer: {outcome['closed']:,}; "
        f"other: {outcome['other']:,}; still open at the end: {outcome['open']:,}"
    )
    print(
        f"  probes meanwhile: {len(latencies)}, p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
        f"p99 {p99:.2f} ms, max {max(latencies) * 1000:.2f} ms"
    )
    return p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--timeout", type=int, default=10, help="client_header_timeout, s")
    parser.add_argument("--only", choices=["portico", "nginx"])
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 15_000 or not 1 <= args.timeout <= 60:
        parser.error("--clients 1..15000, --timeout 1..60")
    ensure_peers()
    print(
        f"slowloris: {args.clients:,} connections sending one header byte a second; "
        f"client_header_timeout {args.timeout}s; server on CPU 0, clients and probes on CPU 1"
    )
    p99s = {}
    block = 100 + int(time.time()) % 100
    with tempfile.TemporaryDirectory(prefix="portico-slowloris-") as tmp:
        for name in ("portico", "nginx"):
            if args.only and args.only != name:
                continue
            directory = Path(tmp) / name
            directory.mkdir()
            port = free_port()
            text = CONFIG.format(port=port, timeout=args.timeout)
            if name == "portico":
                conf = directory / "portico.conf"
                conf.write_text(text)
                server = portico_server(conf, port)
            else:
                server = nginx_server(text, directory, port)
            with contextlib.ExitStack() as stack:
                stack.enter_context(server)
                block += 1
                p99s[name] = run(name, server, port, args, block)
    if len(p99s) == 2:
        print(f"\nratio portico/nginx probe p99: {p99s['portico'] / p99s['nginx']:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_slow":
        sys.exit(slow_main(sys.argv[2:]))
    run_script(main)

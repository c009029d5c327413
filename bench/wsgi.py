"""WSGI apps: portico against gunicorn and granian, side by side.

Measures requests per second and p99 latency of two hello-world apps -- the
Flask one (examples/hello.py) and a plain PEP 3333 callable
(bench/plain_app.py), both answering `hello world!` -- under five servers,
each with one worker process, in interleaved rounds:

    portico-threaded   portico serve APP --workers 1 --threads 16
    portico-inline     portico serve APP --workers 1 --threads 0 (the app runs on the loop)
    gunicorn-sync      gunicorn -w 1 --worker-class sync
    gunicorn-gthread   gunicorn -w 1 --worker-class gthread --threads 16
    granian            granian --interface wsgi --workers 1 (its other options at defaults)

    python bench/wsgi.py                         # 3 rounds x 5 s, both apps
    python bench/wsgi.py --app flask --rounds 5

Servers on CPU 0, wrk on CPU 1 (taskset), wrk -t1 -c64 with keep-alive. A
gunicorn sync worker does not do keep-alive (it answers `Connection: close`
and wrk reconnects for every request): that is how it works, not a flaw of
the setup, and the output says so.

The ratio lines come last. Flask: portico-threaded/gunicorn-sync (target
>= 3), portico-inline/granian (>= 1.0), portico-threaded/granian (>= 0.8);
plain: portico-inline/granian (>= 0.5).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    BENCH_DIR,
    PINNING_NOTE,
    PORTICO_BIN,
    ROOT_DIR,
    BenchError,
    Ratio,
    Server,
    WrkResult,
    ensure_peers,
    free_port,
    http_get,
    interleave,
    metered,
    print_load_cpu,
    print_ratios,
    print_table,
    run_script,
    run_wrk,
)

VENV_BIN = ROOT_DIR / ".venv" / "bin"
BODY = b"hello world!"


@dataclass(frozen=True, slots=True)
class App:
    name: str  # "flask" | "plain"
    title: str
    target: str  # MODULE:APP
    directory: Path  # where MODULE is imported from
    ratios: tuple[Ratio, ...]


APPS = {
    "flask": App(
        "flask",
        "Flask hello world (examples.hello:app)",
        "examples.hello:app",
        ROOT_DIR,
        (
            Ratio("Flask req/s", "requests_per_sec", "portico-threaded", "gunicorn-sync", 3.0),
            Ratio("Flask req/s", "requests_per_sec", "portico-inline", "granian", 1.0),
            Ratio("Flask req/s", "requests_per_sec", "portico-threaded", "granian", 0.8),
        ),
    ),
    "plain": App(
        "plain",
        "plain WSGI hello world (bench/plain_app.py)",
        "plain_app:app",
        BENCH_DIR,
        (Ratio("plain req/s", "requests_per_sec", "portico-inline", "granian", 0.5),),
    ),
}


def portico_argv(app: App, port: int, threads: int) -> list[str]:
    return [
        str(PORTICO_BIN),
        "serve",
        app.target,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--chdir",
        str(app.directory),
    ]


def gunicorn_argv(app: App, port: int, threads: int | None) -> list[str]:
    argv = [str(VENV_BIN / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}"]
    argv += ["--chdir", str(app.directory)]
    if threads is None:
        argv += ["--worker-class", "sync"]
    else:
        argv += ["--worker-class", "gthread", "--threads", str(threads)]
    return [*argv, app.target]


def granian_argv(app: App, port: int) -> list[str]:
    return [
        str(VENV_BIN / "granian"),
        "--interface",
        "wsgi",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--working-dir",
        str(app.directory),
        app.target,
    ]


# name -> argv for (app, port). The order is the order of each round.
SERVERS: dict[str, Callable[[App, int], list[str]]] = {
    "portico-threaded": lambda app, port: portico_argv(app, port, 16),
    "portico-inline": lambda app, port: portico_argv(app, port, 0),
    "gunicorn-sync": lambda app, port: gunicorn_argv(app, port, None),
    "gunicorn-gthread": lambda app, port: gunicorn_argv(app, port, 16),
    "granian": granian_argv,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load")
    parser.add_argument(
        "--app", choices=["flask", "plain", "both"], default="both", help="which app (both)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 < args.duration <= 120:
        parser.error("--rounds must be 1..50 and --duration 0..120 s")
    return args


def keeps_alive(port: int) -> bool:
    """Whether the server keeps an HTTP/1.1 connection open after a response.

    One raw request without `Connection: close` (urllib always sends it): the
    answer must not say `Connection: close`.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")[1:]
    connection = [line.partition(b":")[2] for line in lines if line.startswith(b"connection:")]
    return not any(b"close" in value for value in connection)


def check_servers(servers: list[Server]) -> dict[str, bool]:
    """Each server must answer 200 `hello world!`; whether it keeps connections alive."""
    alive = {}
    for server in servers:
        response = http_get(server.url("/"))
        if response.status != 200 or response.body != BODY:
            raise BenchError(
                f"{server.name} answered {response.status} {response.body[:80]!r}, not 200 {BODY!r}"
            )
        alive[server.name] = keeps_alive(server.port)
        print(
            f"  {server.name}: 200 {BODY!r}; response head ~ {response.head_bytes} B; "
            f"keep-alive {'yes' if alive[server.name] else 'NO'}"
        )
    return alive


def load(server: Server, args: argparse.Namespace, busy: list[float]) -> Callable[[], WrkResult]:
    def run() -> WrkResult:
        return run_wrk(server.url("/"), connections=args.connections, duration=args.duration)

    return metered(run, busy)


def bench_app(
    app: App, workdir: Path, args: argparse.Namespace
) -> tuple[dict[str, list[WrkResult]], dict[str, bool], dict[str, list[float]]]:
    with contextlib.ExitStack() as stack:
        servers = []
        for name, make_argv in SERVERS.items():
            port = free_port()
            log_path = workdir / f"{app.name}-{name}.log"
            # Python servers import the app at start: give them time.
            server = Server(name, make_argv(app, port), port, log_path, ready_timeout=30.0)
            servers.append(stack.enter_context(server))
        print(f"\n{app.title}:")
        alive = check_servers(servers)
        print(f"{app.title}: warm-up, then {args.rounds} rounds", file=sys.stderr)
        if args.warmup > 0:
            for server in servers:
                run_wrk(server.url("/"), connections=args.connections, duration=args.warmup)
        busy: dict[str, list[float]] = {server.name: [] for server in servers}
        contenders = {server.name: load(server, args, busy[server.name]) for server in servers}
        return interleave(args.rounds, contenders), alive, busy


def version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def print_header(args: argparse.Namespace) -> None:
    print("portico WSGI benchmark")
    print(f"  {PINNING_NOTE}; every server runs 1 worker process")
    print(
        f"  wrk --latency -t1 -c{args.connections} -d{args.duration:g}s (keep-alive); "
        f"{args.rounds} rounds interleaved ({', '.join(SERVERS)}, ...); "
        f"{args.warmup:g} s warm-up each; medians quoted"
    )
    print(
        f"  {version([str(PORTICO_BIN), '-V'])}; "
        f"{version([str(VENV_BIN / 'gunicorn'), '--version'])}; "
        f"{version([str(VENV_BIN / 'granian'), '--version'])} "
        "(granian: --workers 1, other options at its defaults)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    apps = list(APPS.values()) if args.app == "both" else [APPS[args.app]]
    print_header(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="portico-bench-wsgi-") as tmp:
        workdir = Path(tmp)
        for app in apps:
            results[app.name] = bench_app(app, workdir, args)
    for app in apps:
        app_results, alive, busy = results[app.name]
        print_table(app.title, app_results)
        print_load_cpu(busy, "wrk")
        closing = [name for name, keeps in alive.items() if not keeps]
        if closing:
            print(
                f"  note: {', '.join(closing)} closed the connection after every response "
                "(a gunicorn sync worker does not support keep-alive: that is its nature), "
                "so wrk reconnected for every request"
            )
    print_ratios([(ratio, results[app.name][0]) for app in apps for ratio in app.ratios])
    return 0


if __name__ == "__main__":
    run_script(main)

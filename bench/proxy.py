"""Reverse proxy and load balancing: portico against nginx, side by side.

Measures what a request costs the front server when it balances over two
upstream peers with keep-alive connections to them: requests per second and
p99 latency of portico and of nginx, each running one worker and the same
config text (an `upstream` of two peers, `keepalive 128`), in interleaved
rounds, once with access logs off and once with the `combined` access log
written to a file, on both.

    python bench/proxy.py                        # 3 rounds x 5 s, logs off then on
    python bench/proxy.py --logs off --rounds 5

Where the processes run. The server under test (portico or nginx) gets CPU 0
to itself, as in static.py. The two backends (one nginx each, one worker,
`return 200 "hello from backend\\n"`) run on CPU 1 beside wrk: in production
they would be other machines, and on CPU 0 they would take the core the
measured server needs and dilute the difference between the two fronts. The
price is that wrk and the backends share a core, so the script reports how
busy CPU 1 was during each run; when it is saturated, the load side is the
limit and the ratio understates the faster front.

The ratio lines come last: portico/nginx req/s (target >= 0.7) and p99
(target <= 2.0), for each access log setting.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness import (
    PINNING_NOTE,
    PORTICO_BIN,
    WRK_CPU,
    BenchError,
    Ratio,
    Server,
    WrkResult,
    ensure_peers,
    free_port,
    http_get,
    interleave,
    metered,
    nginx_server,
    nginx_version,
    portico_check,
    portico_server,
    print_load_cpu,
    print_ratios,
    print_table,
    run_script,
    run_wrk,
)

BACKEND_BODY = b"hello from backend\n"

# Each backend: the cheapest answer nginx can give, and a header naming the
# backend, so the check before the load can see that both peers are used.
BACKEND_TEMPLATE = """\
worker_processes 1;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            add_header X-Backend {name};
            return 200 "hello from backend\\n";
        }}
    }}
}}
"""

# The front both servers run; only the port, the log path and (if portico does
# not know it) the proxy_http_version line differ. nginx needs
# `proxy_http_version 1.1` and an empty Connection header to keep upstream
# connections alive; portico does both by default with `keepalive`, and the
# lines are harmless there. `keepalive 128` is at least the client count (64),
# so no upstream connection is closed for lack of room in the idle pool.
FRONT_TEMPLATE = """\
worker_processes 1;
events {{
    worker_connections 4096;
}}
http {{
    {access_log}
    keepalive_requests 100000;
    upstream app {{
        server 127.0.0.1:{backend_a};
        server 127.0.0.1:{backend_b};
        keepalive 128;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
{http_version}            proxy_set_header Connection "";
        }}
    }}
}}
"""
HTTP_VERSION_LINE = "            proxy_http_version 1.1;\n"

LOG_MODES = {"off": ("off",), "on": ("on",), "both": ("off", "on")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load")
    parser.add_argument(
        "--logs",
        choices=sorted(LOG_MODES),
        default="both",
        help="access logs off, on (combined, to a file), or both runs (default)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 < args.duration <= 120:
        parser.error("--rounds must be 1..50 and --duration 0..120 s")
    if not 1 <= args.connections <= 128:
        parser.error("--connections must be 1..128 (the upstream keepalive pool is 128)")
    return args


def front_config(
    port: int, backends: list[Server], access_log: Path | None, http_version: bool
) -> str:
    return FRONT_TEMPLATE.format(
        port=port,
        backend_a=backends[0].port,
        backend_b=backends[1].port,
        access_log=f"access_log {access_log} combined;" if access_log else "access_log off;",
        http_version=HTTP_VERSION_LINE if http_version else "",
    )


def portico_knows_http_version(workdir: Path, backends: list[Server]) -> bool:
    """Whether `portico -t` accepts proxy_http_version (it is nginx's, not always portico's)."""
    probe = workdir / "probe.conf"
    probe.write_text(front_config(free_port(), backends, None, http_version=True))
    message = portico_check(probe)
    if message is None:
        return True
    if "proxy_http_version" in message:
        return False
    raise BenchError(f"portico -t rejects the proxy config:\n{message}")


def start_backends(stack: contextlib.ExitStack, workdir: Path, cpu: str = WRK_CPU) -> list[Server]:
    """The two backends, "a" and "b", each an nginx with one worker, pinned to `cpu`."""
    backends = []
    for name in ("a", "b"):
        directory = workdir / f"backend-{name}"
        directory.mkdir()
        conf = BACKEND_TEMPLATE.format(port=free_port(), name=name)
        server = nginx_server(conf, directory, name=f"backend-{name}", cpu=cpu)
        backends.append(stack.enter_context(server))
    return backends


def start_fronts(
    stack: contextlib.ExitStack,
    workdir: Path,
    backends: list[Server],
    logs: bool,
    portico_http_version: bool,
) -> tuple[list[Server], dict[str, Path]]:
    """portico and nginx over the same backends; their access log paths (if logging)."""
    log_paths: dict[str, Path] = {}
    servers = []
    for name in ("portico", "nginx"):
        directory = workdir / f"{name}-logs-{'on' if logs else 'off'}"
        directory.mkdir()
        access_log = directory / "access.log" if logs else None
        if access_log:
            log_paths[name] = access_log
        http_version = portico_http_version if name == "portico" else True
        text = front_config(free_port(), backends, access_log, http_version)
        if name == "portico":
            conf_path = directory / "portico.conf"
            conf_path.write_text(text)
            servers.append(stack.enter_context(portico_server(conf_path)))
        else:
            servers.append(stack.enter_context(nginx_server(text, directory)))
    return servers, log_paths


def check_fronts(servers: list[Server]) -> None:
    """Four requests per front: each must be the backend's body, and both backends answer."""
    for server in servers:
        seen = set()
        for _ in range(4):
            response = http_get(server.url("/"))
            if response.status != 200 or response.body != BACKEND_BODY:
                raise BenchError(
                    f"{server.name} answered {response.status} {response.body[:80]!r}, "
                    f"not 200 {BACKEND_BODY!r}"
                )
            seen.add(response.headers.get("x-backend", "?"))
        if seen != {"a", "b"}:
            raise BenchError(f"{server.name} did not balance over both backends: saw {seen}")
        print(
            f"  {server.name}: 200 {BACKEND_BODY!r} from backends {sorted(seen)}; "
            f"response head ~ {response.head_bytes} B"
        )


def load(server: Server, args: argparse.Namespace, busy: list[float]) -> Callable[[], WrkResult]:
    """One wrk run against `server`; records how busy the load core (wrk + backends) was."""

    def run() -> WrkResult:
        return run_wrk(server.url("/"), connections=args.connections, duration=args.duration)

    return metered(run, busy)


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as file:
            return sum(1 for _ in file)
    except FileNotFoundError:
        return 0


def bench_mode(
    mode: str, workdir: Path, backends: list[Server], args: argparse.Namespace, http_version: bool
) -> tuple[dict[str, list[WrkResult]], dict[str, list[float]], dict[str, tuple[int, int]]]:
    """One access-log setting: results, CPU 1 busy per run, and (logged, counted) lines."""
    logs = mode == "on"
    busy: dict[str, list[float]] = {"portico": [], "nginx": []}
    counted: dict[str, int] = {"portico": 0, "nginx": 0}
    with contextlib.ExitStack() as stack:
        servers, log_paths = start_fronts(stack, workdir, backends, logs, http_version)
        print(f"\naccess logs {mode}:")
        check_fronts(servers)
        print(f"access logs {mode}: warm-up, then {args.rounds} rounds", file=sys.stderr)
        if args.warmup > 0:
            for server in servers:
                warm = run_wrk(server.url("/"), args.connections, duration=args.warmup)
                counted[server.name] += warm.requests
        contenders = {server.name: load(server, args, busy[server.name]) for server in servers}
        results = interleave(args.rounds, contenders)
    # The servers are stopped (SIGTERM) here: what their logs hold now is what a
    # stop leaves on disk. Each front also got 4 checking requests.
    lines = {}
    for name, path in log_paths.items():
        wrk_total = counted[name] + sum(r.requests for r in results[name]) + 4
        lines[name] = (count_lines(path), wrk_total)
    return results, busy, lines


def print_header(args: argparse.Namespace, http_version: bool) -> None:
    print("portico reverse-proxy benchmark")
    print(f"  {PINNING_NOTE}; the two backends (nginx, 1 worker each) also on CPU {WRK_CPU}")
    print(
        f"  wrk --latency -t1 -c{args.connections} -d{args.duration:g}s; "
        f"{args.rounds} rounds interleaved (portico, nginx, ...); "
        f"{args.warmup:g} s warm-up each; medians quoted"
    )
    print(
        "  fronts: 1 worker each, upstream of 2 peers, keepalive 128; "
        "access log (when on): combined, to a file in the temp dir"
    )
    print(f"  peer: {nginx_version()}; portico: {PORTICO_BIN}")
    if not http_version:
        print(
            "  note: portico does not know `proxy_http_version`, so its config omits that "
            "one line (it speaks HTTP/1.1 upstream by default); nginx's has it"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    modes = LOG_MODES[args.logs]
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="portico-bench-proxy-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        with contextlib.ExitStack() as stack:
            backends = start_backends(stack, workdir)
            http_version = portico_knows_http_version(workdir, backends)
            print_header(args, http_version)
            for mode in modes:
                all_results[mode] = bench_mode(mode, workdir, backends, args, http_version)
    for mode in modes:
        results, busy, lines = all_results[mode]
        print_table(f"proxied 'hello from backend', access logs {mode}", results)
        print_load_cpu(busy, "wrk + backends")
        for name, (logged, sent) in lines.items():
            print(
                f"  {name} access log: {logged:,} lines for {sent:,} requests "
                "(wrk's count, warm-up included, and the 4 checks)"
            )
    ratios = []
    for mode in modes:
        results = all_results[mode][0]
        ratios.append((Ratio(f"req/s, logs {mode}", "requests_per_sec", target=0.7), results))
        ratios.append(
            (Ratio(f"p99, logs {mode}", "p99_ms", target=2.0, higher_is_better=False), results)
        )
    print_ratios(ratios)
    return 0


if __name__ == "__main__":
    run_script(main)

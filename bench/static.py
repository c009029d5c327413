"""Static files: portico against nginx, side by side, same config text.

Serves a 1 KB file (requests per second: the per-request cost of the event
loop, parser and response path) and a 1 MB file (bytes per second: sendfile
and backpressure) from one temp directory, with one config text for both
servers, and checks first that both return the file's exact bytes.

    python bench/static.py                       # 3 rounds x 5 s, both files
    python bench/static.py --only small --rounds 5
    python bench/static.py --peer-only           # nginx alone (no portico yet)

The ratio lines come last: portico/nginx req/s on 1 KB, bytes/s on 1 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    NGINX_BIN,
    PINNING_NOTE,
    PORTICO_BIN,
    BenchError,
    Ratio,
    Server,
    WrkResult,
    ensure_peers,
    free_port,
    interleave,
    nginx_server,
    portico_server,
    print_ratios,
    print_table,
    run_script,
    run_wrk,
)

SMALL_SIZE = 1024
BIG_SIZE = 1024 * 1024

# The one config both servers run; only the port differs. `types` is spelled
# out (rather than nginx's mime.types) so both send the same Content-Type.
CONFIG_TEMPLATE = """\
worker_processes 1;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    types {{
        text/html html;
        application/octet-stream bin;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Target:
    """One file under load, the figure that matters for it, and its goal."""

    name: str  # "small" | "big"
    path: str  # URL path
    title: str
    ratio: Ratio


TARGETS = {
    "small": Target(
        "small",
        "/small.html",
        "1 KB file (small.html)",
        Ratio("1 KB req/s", "requests_per_sec", target=0.35),
    ),
    "big": Target(
        "big",
        "/big.bin",
        "1 MB file (big.bin)",
        Ratio("1 MB bytes/s", "transfer_bytes_per_sec", target=0.8),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load")
    parser.add_argument("--only", choices=sorted(TARGETS), help="run one file only")
    parser.add_argument("--peer-only", action="store_true", help="run nginx only, no portico")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 < args.duration <= 120:
        parser.error("--rounds must be 1..50 and --duration 0..120 s")
    return args


def write_docroot(root: Path) -> dict[str, bytes]:
    """small.html (exactly 1024 bytes) and big.bin (exactly 1 MiB); URL path -> bytes."""
    head = b"<!doctype html>\n<title>portico bench</title>\n<p>"
    tail = b"</p>\n"
    small = head + b"x" * (SMALL_SIZE - len(head) - len(tail)) + tail
    big = random.Random(0).randbytes(BIG_SIZE)
    files = {"/small.html": small, "/big.bin": big}
    root.mkdir(mode=0o755)
    for path, body in files.items():
        (root / path.lstrip("/")).write_bytes(body)
        (root / path.lstrip("/")).chmod(0o644)
    return files


def config_text(port: int, root: Path) -> str:
    return CONFIG_TEMPLATE.format(port=port, root=root)


def header_bytes(response: urllib.request.addinfourl) -> int:
    """Approximate size of the response head: status line, headers, blank line."""
    status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
    fields = sum(len(name) + len(value) + 4 for name, value in response.getheaders())
    return status_line + fields + 2


def check_bodies(servers: list[Server], files: dict[str, bytes]) -> None:
    """One request per server and file: the body must be the file, byte for byte."""
    for path, expected in files.items():
        sizes = []
        for server in servers:
            with urllib.request.urlopen(server.url(path), timeout=10) as response:
                body = response.read()
                sizes.append(f"{server.name} {header_bytes(response)} B")
            if body != expected:
                raise BenchError(
                    f"{server.name} returned {len(body)} bytes for {path}, "
                    f"not the file's {len(expected)}"
                )
        print(
            f"  {path}: identical {len(expected)}-byte bodies; response head ~ {', '.join(sizes)}"
        )


def nginx_version() -> str:
    done = subprocess.run([str(NGINX_BIN), "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")


def print_header(args: argparse.Namespace, names: list[str]) -> None:
    print("portico static-file benchmark")
    print(f"  {PINNING_NOTE}")
    print(
        f"  wrk --latency -t1 -c{args.connections} -d{args.duration:g}s; "
        f"{args.rounds} rounds interleaved ({', '.join(names)}, ...); "
        f"{args.warmup:g} s warm-up each; medians quoted"
    )
    print(f"  peer: {nginx_version()}; portico: {'not run' if args.peer_only else PORTICO_BIN}")


def start_servers(
    stack: contextlib.ExitStack, workdir: Path, docroot: Path, peer_only: bool
) -> list[Server]:
    """Start portico (unless peer_only) and nginx on free ports, same config text."""
    servers = []
    if not peer_only:
        portico_dir = workdir / "portico"
        portico_dir.mkdir()
        conf_path = portico_dir / "portico.conf"
        conf_path.write_text(config_text(free_port(), docroot))
        servers.append(stack.enter_context(portico_server(conf_path)))
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    servers.append(stack.enter_context(nginx_server(config_text(free_port(), docroot), nginx_dir)))
    return servers


def load(server: Server, path: str, args: argparse.Namespace) -> Callable[[], WrkResult]:
    def run() -> WrkResult:
        return run_wrk(server.url(path), connections=args.connections, duration=args.duration)

    return run


def bench_target(
    target: Target, servers: list[Server], args: argparse.Namespace
) -> dict[str, list[WrkResult]]:
    print(f"\n{target.title}: warm-up, then {args.rounds} rounds", file=sys.stderr)
    if args.warmup > 0:
        for server in servers:
            run_wrk(server.url(target.path), connections=args.connections, duration=args.warmup)
    contenders = {server.name: load(server, target.path, args) for server in servers}
    return interleave(args.rounds, contenders)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    targets = [TARGETS[args.only]] if args.only else list(TARGETS.values())
    with tempfile.TemporaryDirectory(prefix="portico-bench-static-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        files = write_docroot(workdir / "www")
        with contextlib.ExitStack() as stack:
            servers = start_servers(stack, workdir, workdir / "www", args.peer_only)
            print_header(args, [server.name for server in servers])
            check_bodies(servers, files)
            results = {target.name: bench_target(target, servers, args) for target in targets}
    for target in targets:
        print_table(target.title, results[target.name])
    print_ratios([(target.ratio, results[target.name]) for target in targets])
    return 0


if __name__ == "__main__":
    run_script(main)

"""What one request costs in portico's own Python code, without the kernel.

The loopback benchmarks (static.py, proxy.py, wsgi.py) measure everything at once:
portico's Python, the system calls, and the wake-ups of the processes on the other
core. This one measures the first alone, so that a change to a hot path can be
judged in seconds and without noise from the machine: it builds a real worker
(config, site, handlers) in this process, connects its real protocol objects to
fake transports, and feeds the same request again and again, answering from a
fake upstream where the case needs one. The figure is microseconds of Python per
request, the minimum and median of 7 runs.

    python bench/hotpath.py                 # every case
    python bench/hotpath.py proxy --profile # one case, with cProfile's top functions
    python bench/hotpath.py proxy --instructions   # instructions per request (callgrind)
    python bench/hotpath.py proxy --bytecodes      # bytecodes per request, per function

Cases: ``static`` (a 1 KB file, cached), ``proxy`` (two peers, keep-alive, a
backend answer as nginx sends it), ``wsgi`` (the plain WSGI hello world, inline),
``flask`` (the Flask hello world, inline). Access logs are off unless ``--log``.

``--instructions`` counts instead of timing: it runs the case twice under valgrind's
callgrind, with ``INSTRUCTION_COUNTS`` requests each, and prints the difference of the
two totals divided by the difference of the counts. Startup, imports and the warm-up
cancel out, and the figure repeats to about 0.5% whatever else the machine is doing,
so a commit that changes a hot path can quote its before and after exactly.

``--bytecodes`` counts the bytecodes each function runs per request (a trace of
opcode events over 1,000 requests): where the time of a flat profile goes, line by
line of the source if asked (``--top`` functions, then lines).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("PORTICO_TREE", str(HERE.parent)))

import uvloop  # noqa: E402

from portico.config.loader import load_text  # noqa: E402
from portico.http.protocol import HttpConnection  # noqa: E402
from portico.logs import ErrorLog  # noqa: E402
from portico.upstream.connection import UpstreamConnection  # noqa: E402
from portico.worker import WorkerContext  # noqa: E402

CONFIG = """
worker_processes 1;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    {log}
    keepalive_requests 1000000000;
    upstream app {{
        server 127.0.0.1:9;
        server 127.0.0.2:9;
        keepalive 16;
        keepalive_requests 1000000000;
    }}
    server {{
        listen 127.0.0.1:9;
        location / {{ proxy_pass http://app; }}
        location /static/ {{ root {dir}; }}
        location /wsgi/ {{ wsgi plain_app:app; wsgi_path {bench}; wsgi_threads 0; }}
        location /flask/ {{
            wsgi hello:app; wsgi_path {examples}; wsgi_threads 0; wsgi_script_name /flask;
        }}
    }}
}}
"""

TARGETS = {
    "static": b"/static/small.html",
    "proxy": b"/",
    "wsgi": b"/wsgi/",
    "flask": b"/flask/",
}
# what wrk sends
REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# what nginx's "return 200" sends back
UPSTREAM_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 08:03:54 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\n"
    b"hello from backend\n"
)


class FakeTransport:
    """Takes every write at once; remembers the last one."""

    def __init__(self, on_write: Callable[[bytes], None] | None = None) -> None:
        self.writes = 0
        self.last = b""
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data
        if self.on_write is not None:
            self.on_write(data)

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


def build(case: str, log: bool, workdir: str) -> Callable[[], None]:
    """One request of ``case``, ready to run: returns the function that sends it."""
    Path(workdir, "static").mkdir(exist_ok=True)
    Path(workdir, "static", "small.html").write_bytes(b"x" * 1024)
    text = CONFIG.format(
        dir=workdir,
        bench=HERE,
        examples=HERE.parent / "examples",
        log=f"access_log {workdir}/access.log;" if log else "access_log off;",
    )
    config = load_text(text, f"{workdir}/portico.conf", workdir)
    worker = WorkerContext(config, ErrorLog(f"{workdir}/error.log", "error"), {})
    binding = next(iter(worker.site.bindings.values()))
    conn = HttpConnection(worker, binding)
    client = FakeTransport()
    conn.connection_made(client)
    waiting: list[UpstreamConnection] = []
    for group in worker.site.upstreams.values():
        for peer in group.balancer.peers:
            for _ in range(2):
                upstream = UpstreamConnection(group, peer)
                upstream.connection_made(
                    FakeTransport(lambda data, upstream=upstream: waiting.append(upstream))
                )
                group.release(upstream)
    request = REQUEST % TARGETS[case]

    outbox = worker.outbox

    def one() -> None:
        conn.data_received(request)
        outbox.flush()  # the end of the loop's pass (the held writes go out)
        if waiting:
            # the backend answers in a later turn of the loop, as over a socket
            for upstream in waiting:
                upstream.data_received(UPSTREAM_ANSWER)
            waiting.clear()
            outbox.flush()

    one()
    if b" 200 OK\r\n" not in client.last[:40] and b"HTTP/1.1 200" not in client.last:
        raise SystemExit(f"{case}: unexpected answer {client.last[:120]!r}")
    return one


# requests in the two runs of --instructions: their difference is what is counted
INSTRUCTION_COUNTS = (500, 2500)
_COLLECTED = re.compile(r"Collected : (\d+)")


def count_instructions(case: str, log: bool) -> float:
    """Instructions per request of ``case``, from two runs under callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:  # bench/setup.sh installs it with the other peers
        subprocess.run(["bash", str(HERE / "setup.sh")], check=True, timeout=900)
        valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind, which bench/setup.sh did not install")
    totals = []
    for count in INSTRUCTION_COUNTS:
        command = [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            case,
            "--once",
            "--count",
            str(count),
        ]
        if log:
            command.append("--log")
        # one hash seed for every run: string hashes decide dict probes, which would
        # otherwise move the count by about 1% from run to run
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        found = _COLLECTED.search(done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"callgrind failed for {case}:\n{done.stderr[-2000:]}")
        totals.append(int(found[1]))
    return (totals[1] - totals[0]) / (INSTRUCTION_COUNTS[1] - INSTRUCTION_COUNTS[0])


def count_bytecodes(one: Callable[[], None], count: int, top: int) -> None:
    """Print the bytecodes run per request, in all and per function, and the lines
    that run the most."""
    per_function: collections.Counter[str] = collections.Counter()
    per_line: collections.Counter[tuple[str, int]] = collections.Counter()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = f"{Path(code.co_filename).name}:{code.co_qualname}"

        def opcode(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                per_function[name] += 1
                per_line[name, frame.f_lineno] += 1
            return opcode

        return opcode

    sys.settrace(trace)
    try:
        for _ in range(count):
            one()
    finally:
        sys.settrace(None)
    print(f"  {sum(per_function.values()) / count:,.1f} bytecodes/request")
    for name, n in per_function.most_common(top):
        print(f"  {n / count:7.1f}  {name}")
    for (name, line), n in per_line.most_common(top):
        print(f"  {n / count:7.1f}  {name} line {line}")


def measure(one: Callable[[], None], count: int) -> tuple[float, float]:
    for _ in range(count // 10):
        one()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(count):
            one()
        times.append((time.perf_counter() - start) / count * 1e6)
    times.sort()
    return times[0], times[3]


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        for case in args.cases or list(TARGETS):
            one = build(case, args.log, workdir)
            if args.once:  # one run of --count requests after a warm-up (for callgrind)
                for _ in range(50 + args.count):
                    one()
                continue
            if args.bytecodes:
                for _ in range(200):  # warm: memo tables filled, methods specialized
                    one()
                print(case)
                count_bytecodes(one, 1000, args.top)
                continue
            best, median = measure(one, args.count)
            print(f"{case:8} {best:7.2f} us/request (median {median:.2f})", flush=True)
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(args.count):
                    one()
                profile.disable()
                pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(TARGETS)}")
    parser.add_argument("--count", type=int, default=20000, help="requests per run")
    parser.add_argument("--log", action="store_true", help="with a combined access log")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--top", type=int, default=30, help="functions to print")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions per request (callgrind)"
    )
    parser.add_argument(
        "--bytecodes", action="store_true", help="bytecodes per request, per function and line"
    )
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(TARGETS))
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.instructions:
        for case in args.cases or list(TARGETS):
            per_request = count_instructions(case, args.log)
            print(f"{case:8} {per_request:9,.0f} instructions/request", flush=True)
        return
    uvloop.install()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

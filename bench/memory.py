"""Memory: what an idle portico costs, beside nginx, gunicorn and granian.

Measures the resident memory (VmRSS, and PSS, which splits pages shared
between a master and its forked worker instead of counting them twice) of a
master process plus one worker, idle, then again after a short load:

    portico static     portico -c CONF: the static config of static.py (one server, a root)
    nginx static       nginx, the same config text
    portico Flask      portico serve examples.hello:app --workers 1 (16 app threads)
    gunicorn Flask     gunicorn -w 1 --worker-class sync examples.hello:app
    granian Flask      granian --interface wsgi --workers 1 examples.hello:app

    python bench/memory.py                       # 3 rounds, 2 s of load each
    python bench/memory.py --rounds 1 --duration 0   # idle figures only

Each round starts every server in turn, alone (one at a time, on CPU 0),
waits `--settle` seconds, reads /proc/PID/status and /proc/PID/smaps_rollup
of the master and of every process below it, loads it with wrk (CPU 1) for
`--duration` seconds at `--connections`, reads again and stops it. Medians
of the rounds are quoted, as a table; the ratio lines come last: portico
against nginx (static) and against gunicorn and granian (Flask), idle total
RSS and PSS, lower is better.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    PORTICO_BIN,
    ROOT_DIR,
    BenchError,
    Server,
    descendants,
    ensure_peers,
    free_port,
    http_get,
    median,
    nginx_server,
    nginx_version,
    portico_server,
    pss_kb,
    rss_kb,
    run_script,
    run_wrk,
)
from static import CONFIG_TEMPLATE as STATIC_TEMPLATE
from static import write_docroot

VENV_BIN = ROOT_DIR / ".venv" / "bin"
FLASK_APP = "examples.hello:app"


@dataclass(frozen=True, slots=True)
class Sample:
    """Memory of one server's process tree, in KiB."""

    master_rss: int
    workers_rss: int
    total_pss: int
    processes: int

    @property
    def total_rss(self) -> int:
        return self.master_rss + self.workers_rss


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    path: str  # URL path loaded between the two samples
    start: Callable[[Path], Server]  # given a fresh directory, a server (not started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians (default 3)")
    parser.add_argument(
        "--duration", type=float, default=2, help="seconds of load before the second sample"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--settle", type=float, default=1, help="seconds to wait after start before sampling"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 <= args.duration <= 120:
        parser.error("--rounds must be 1..50 and --duration 0..120 s")
    if not 0 <= args.settle <= 30:
        parser.error("--settle must be 0..30 s")
    return args


def contenders(docroot: Path) -> list[Contender]:
    def static_config() -> str:
        return STATIC_TEMPLATE.format(port=free_port(), root=docroot)

    def portico_static(directory: Path) -> Server:
        text = static_config()
        conf_path = directory / "portico.conf"
        conf_path.write_text(text)
        return portico_server(conf_path, name="portico static")

    def nginx_static(directory: Path) -> Server:
        text = static_config()
        return nginx_server(text, directory, name="nginx static")

    def portico_flask(directory: Path) -> Server:
        port = free_port()
        argv = [str(PORTICO_BIN), "serve", FLASK_APP, "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", "1", "--chdir", str(ROOT_DIR)]
        return Server("portico Flask", argv, port, directory / "log", ready_timeout=30)

    def gunicorn_flask(directory: Path) -> Server:
        port = free_port()
        argv = [str(VENV_BIN / "gunicorn"), "-w", "1", "--worker-class", "sync"]
        argv += ["-b", f"127.0.0.1:{port}", "--chdir", str(ROOT_DIR), FLASK_APP]
        return Server("gunicorn Flask", argv, port, directory / "log", ready_timeout=30)

    def granian_flask(directory: Path) -> Server:
        port = free_port()
        argv = [str(VENV_BIN / "granian"), "--interface", "wsgi", "--workers", "1"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        argv += ["--working-dir", str(ROOT_DIR), FLASK_APP]
        return Server("granian Flask", argv, port, directory / "log", ready_timeout=30)

    return [
        Contender("portico static", "/small.html", portico_static),
        Contender("nginx static", "/small.html", nginx_static),
        Contender("portico Flask", "/", portico_flask),
        Contender("gunicorn Flask", "/", gunicorn_flask),
        Contender("granian Flask", "/", granian_flask),
    ]


def sample(server: Server) -> Sample:
    """RSS of the master and of every process below it; PSS of them all."""
    workers = descendants(server.pid)
    if not workers:
        raise BenchError(f"{server.name} (pid {server.pid}) has no worker process")
    master_rss = rss_kb(server.pid)
    workers_rss = 0
    total_pss = pss_kb(server.pid)
    for pid in workers:
        with contextlib.suppress(OSError):  # a helper that exited meanwhile
            workers_rss += rss_kb(pid)
            total_pss += pss_kb(pid)
    return Sample(master_rss, workers_rss, total_pss, 1 + len(workers))


def settle(server: Server, seconds: float) -> None:
    """Wait `seconds`, and at most 10 s more for start-up helpers to exit (one worker left)."""
    time.sleep(seconds)
    deadline = time.monotonic() + 10
    while len(descendants(server.pid)) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)


def measure(
    contender: Contender, directory: Path, args: argparse.Namespace
) -> tuple[Sample, Sample | None]:
    directory.mkdir(parents=True)
    with contender.start(directory) as server:
        settle(server, args.settle)
        idle = sample(server)  # before any request: only readiness probes (connect, close)
        response = http_get(server.url(contender.path))
        if response.status != 200:
            raise BenchError(f"{server.name} answered {response.status} on {contender.path}")
        loaded = None
        if args.duration > 0:
            run_wrk(server.url(contender.path), args.connections, duration=args.duration)
            time.sleep(0.5)
            loaded = sample(server)
    return idle, loaded


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    print("portico memory benchmark: master + 1 worker, idle, then after load")
    print(
        f"  servers on CPU 0, one at a time; wrk on CPU 1, -c{args.connections} "
        f"-d{args.duration:g}s between the two samples; {args.rounds} rounds, medians"
    )
    print(f"  peer: {nginx_version()}; portico: {PORTICO_BIN}")
    idle: dict[str, list[Sample]] = {}
    loaded: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="portico-bench-memory-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        write_docroot(workdir / "www")
        for round_no in range(1, args.rounds + 1):
            for contender in contenders(workdir / "www"):
                directory = workdir / f"{round_no}-{contender.name.replace(' ', '-')}"
                before, after = measure(contender, directory, args)
                idle.setdefault(contender.name, []).append(before)
                if after is not None:
                    loaded.setdefault(contender.name, []).append(after)
                print(
                    f"  round {round_no}/{args.rounds} {contender.name:<15} idle "
                    f"{mib(before.total_rss)} MiB"
                    + (f", after load {mib(after.total_rss)} MiB" if after else ""),
                    file=sys.stderr,
                )
    print(f"\nmemory, MiB (median of {args.rounds} rounds)")
    print(
        f"  {'server':<15} {'procs':>5} {'master RSS':>11} {'worker RSS':>11} "
        f"{'total RSS':>10} {'total PSS':>10} {'RSS loaded':>11}"
    )
    totals, pss = {}, {}
    for name, samples in idle.items():
        totals[name] = median(s.total_rss for s in samples)
        pss[name] = median(s.total_pss for s in samples)
        after = mib(median(s.total_rss for s in loaded[name])) if name in loaded else "-"
        print(
            f"  {name:<15} {samples[0].processes:>5} "
            f"{mib(median(s.master_rss for s in samples)):>11} "
            f"{mib(median(s.workers_rss for s in samples)):>11} "
            f"{mib(totals[name]):>10} {mib(pss[name]):>10} "
            f"{after:>11}"
        )
    print(
        "  (RSS counts pages a worker shares with its master in both; PSS splits them, "
        "so the PSS total is the memory the pair really holds)"
    )
    print()
    for top, bottom in (
        ("portico static", "nginx static"),
        ("portico Flask", "gunicorn Flask"),
        ("portico Flask", "granian Flask"),
    ):
        print(
            f"ratio {top}/{bottom} idle total RSS: {totals[top] / totals[bottom]:.2f}, "
            f"PSS: {pss[top] / pss[bottom]:.2f}   (lower is better)"
        )
    return 0


if __name__ == "__main__":
    run_script(main)

"""Worker scaling: portico with 1 worker against portico with 2 workers.

Measures how requests per second grow from `worker_processes 1` to
`worker_processes 2` on two cases: the 1 KB static file of static.py and the
proxied case of proxy.py (two nginx backends, `keepalive 128`). Both portico
servers are up for the whole run and are loaded in interleaved rounds.

    python bench/scaling.py                      # 3 rounds x 5 s, both cases
    python bench/scaling.py --only static --rounds 5

Pinning. The other scripts give the server CPU 0 and wrk CPU 1; that cannot
show scaling, since two workers on one core share it. Here nothing is pinned
to one core: portico (either worker count), wrk and the backends may all run
on both cores (`taskset -c 0,1`), so the only difference between the two
contenders is the number of workers. The cost is that wrk (and, proxied, the
backends) now take CPU from portico: with 2 workers, portico can get at most
2 - L cores, L being what the load side uses. The script measures the CPU
time of each party in every run and says when the load side is the
bottleneck, i.e. when 2 - L cores are not enough for the 1.6x target. It
also prints req/s per portico core, 2 workers against 1, which shows
whether the workers themselves scale, whoever holds the rest of the CPU.

The ratio lines come last: 2 workers / 1 worker, req/s (target >= 1.6 when
the load generator is not the bottleneck), and per portico core.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BenchError,
    CpuMeter,
    Server,
    WrkResult,
    cpu_seconds,
    descendants,
    ensure_peers,
    free_port,
    interleave,
    median,
    portico_server,
    print_table,
    run_script,
    run_wrk,
    summarize,
)
from proxy import check_fronts, front_config, portico_knows_http_version, start_backends
from static import CONFIG_TEMPLATE as STATIC_TEMPLATE
from static import check_bodies, write_docroot

ALL_CPUS = "0,1"
TARGET = 1.6
WRK_SATURATED = 0.9  # cores: wrk -t1 is at its limit
MACHINE_SATURATED = 1.9  # cores busy of 2
ONE, TWO = "1 worker", "2 workers"


@dataclass(slots=True)
class CpuUse:
    """Cores used during each run (CPU seconds / wall seconds), per party."""

    server: list[float] = field(default_factory=list)
    wrk: list[float] = field(default_factory=list)
    backends: list[float] = field(default_factory=list)
    machine: list[float] = field(default_factory=list)  # both CPUs busy, 0..2
    # per run, the cores each worker used, busiest first: shows how the load spread
    workers: list[list[float]] = field(default_factory=list)

    def medians(self) -> tuple[float, float, float, float]:
        return (
            median(self.server),
            median(self.wrk),
            median(self.backends) if self.backends else 0.0,
            median(self.machine),
        )

    def worker_split(self) -> list[float]:
        """Median cores of the busiest worker, the next, ..."""
        count = min((len(run) for run in self.workers), default=0)
        return [median(run[i] for run in self.workers) for i in range(count)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load")
    parser.add_argument("--only", choices=["static", "proxy"], help="run one case only")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 0 < args.duration <= 120:
        parser.error("--rounds must be 1..50 and --duration 0..120 s")
    if not 2 <= args.connections <= 128:
        parser.error("--connections must be 2..128 (the upstream keepalive pool is 128)")
    return args


def with_workers(config: str, workers: int) -> str:
    if "worker_processes 1;" not in config:
        raise BenchError("the config template has no `worker_processes 1;` to change")
    # reuseport: one socket per worker, so the kernel spreads wrk's connections evenly
    # (with one shared socket most of them may land on one worker)
    config = re.sub(r"(listen 127\.0\.0\.1:\d+)", r"\1 reuseport", config)
    return config.replace("worker_processes 1;", f"worker_processes {workers};", 1)


def process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def tree(server: Server) -> list[int]:
    return [server.pid, *descendants(server.pid)]


def load(
    server: Server,
    url_path: str,
    args: argparse.Namespace,
    use: CpuUse,
    backends: list[Server],
) -> Callable[[], WrkResult]:
    """One wrk run (on both cores), measuring what portico, wrk and the backends used."""

    def run() -> WrkResult:
        server_pids = tree(server)
        worker_pids = server_pids[1:]
        backend_pids = [pid for backend in backends for pid in tree(backend)]
        meter = CpuMeter()
        server_before, backends_before = process_cpu(server_pids), process_cpu(backend_pids)
        workers_before = [process_cpu([pid]) for pid in worker_pids]
        wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        meter.start()
        result = run_wrk(
            server.url(url_path), args.connections, duration=args.duration, cpu=ALL_CPUS
        )
        meter.stop()
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = args.duration
        use.server.append((process_cpu(server_pids) - server_before) / seconds)
        use.backends.append((process_cpu(backend_pids) - backends_before) / seconds)
        wrk_cpu = (wrk_after.ru_utime - wrk_before.ru_utime) + (
            wrk_after.ru_stime - wrk_before.ru_stime
        )
        use.wrk.append(wrk_cpu / seconds)
        use.machine.append(meter.busy("0") + meter.busy("1"))
        workers = [
            (process_cpu([pid]) - before) / seconds
            for pid, before in zip(worker_pids, workers_before, strict=True)
        ]
        use.workers.append(sorted(workers, reverse=True))
        return result

    return run


@dataclass(frozen=True, slots=True)
class CaseResult:
    title: str
    results: dict[str, list[WrkResult]]
    use: dict[str, CpuUse]


def start_porticos(
    stack: contextlib.ExitStack, workdir: Path, case: str, make_config: Callable[[int], str]
) -> list[Server]:
    servers = []
    for workers, name in ((1, ONE), (2, TWO)):
        directory = workdir / f"{case}-{workers}"
        directory.mkdir()
        conf_path = directory / "portico.conf"
        conf_path.write_text(with_workers(make_config(free_port()), workers))
        servers.append(stack.enter_context(portico_server(conf_path, name=name, cpu=ALL_CPUS)))
    return servers


def run_case(
    title: str,
    servers: list[Server],
    url_path: str,
    args: argparse.Namespace,
    backends: list[Server],
) -> CaseResult:
    print(f"{title}: warm-up, then {args.rounds} rounds", file=sys.stderr)
    if args.warmup > 0:
        for server in servers:
            run_wrk(server.url(url_path), args.connections, duration=args.warmup, cpu=ALL_CPUS)
    use = {server.name: CpuUse() for server in servers}
    contenders = {
        server.name: load(server, url_path, args, use[server.name], backends) for server in servers
    }
    return CaseResult(title, interleave(args.rounds, contenders), use)


def bench_static(workdir: Path, args: argparse.Namespace) -> CaseResult:
    files = write_docroot(workdir / "www")
    small = {"/small.html": files["/small.html"]}
    with contextlib.ExitStack() as stack:
        servers = start_porticos(
            stack,
            workdir,
            "static",
            lambda port: STATIC_TEMPLATE.format(port=port, root=workdir / "www"),
        )
        print("\nstatic 1 KB file:")
        check_bodies(servers, small)
        return run_case("static 1 KB file", servers, "/small.html", args, [])


def bench_proxy(workdir: Path, args: argparse.Namespace) -> CaseResult:
    with contextlib.ExitStack() as stack:
        backends = start_backends(stack, workdir, cpu=ALL_CPUS)
        http_version = portico_knows_http_version(workdir, backends)
        servers = start_porticos(
            stack,
            workdir,
            "proxy",
            lambda port: front_config(port, backends, None, http_version),
        )
        print("\nproxied (2 nginx backends, keepalive 128):")
        check_fronts(servers)
        return run_case("proxied", servers, "/", args, backends)


def print_header(args: argparse.Namespace) -> None:
    print("portico worker-scaling benchmark")
    print(
        f"  nothing pinned to one core: portico, wrk and the backends all on CPUs {ALL_CPUS}; "
        "only the worker count differs"
    )
    print(
        f"  wrk --latency -t1 -c{args.connections} -d{args.duration:g}s; "
        f"{args.rounds} rounds interleaved ({ONE}, {TWO}, ...); "
        f"{args.warmup:g} s warm-up each; medians quoted"
    )


def report(case: CaseResult) -> tuple[str, str]:
    """Print the case's table and CPU use; return its two closing lines."""
    print_table(case.title, case.results)
    print("  cores used (median; CPU seconds per second of load):")
    for name, use in case.use.items():
        server, wrk, backends, machine = use.medians()
        extra = f", backends {backends:.2f}" if backends else ""
        split = " + ".join(f"{cores:.2f}" for cores in use.worker_split())
        print(
            f"    {name:<9} portico {server:.2f} (workers {split}), wrk {wrk:.2f}{extra}; "
            f"machine busy {machine:.2f} of 2"
        )
    rps = {name: summarize(runs).requests_per_sec for name, runs in case.results.items()}
    server_one = case.use[ONE].medians()[0]
    server_two, wrk_two, backends_two, machine_two = case.use[TWO].medians()
    load_side = wrk_two + backends_two
    ceiling = (2.0 - load_side) / server_one if server_one else 0.0
    per_core = (
        (rps[TWO] / server_two) / (rps[ONE] / server_one) if server_one and server_two else 0.0
    )
    ratio = rps[TWO] / rps[ONE] if rps[ONE] else 0.0
    # wrk -t1 cannot use more than one core; the machine cannot give more than two.
    wrk_bound = wrk_two >= WRK_SATURATED
    load_bound = wrk_bound or (machine_two >= MACHINE_SATURATED and ceiling < TARGET)
    if wrk_bound:
        print(
            f"  the load generator is the bottleneck: wrk used {wrk_two:.2f} of the one core "
            "its single thread can use"
        )
    elif load_bound:
        print(
            f"  the load generator is the bottleneck: the machine was saturated "
            f"({machine_two:.2f} of 2 cores busy) and wrk"
            f"{' with the backends' if backends_two else ''} used {load_side:.2f} cores, "
            f"leaving portico at most {2.0 - load_side:.2f} (vs {server_one:.2f} with 1 "
            f"worker): the best ratio this machine allows is ~{ceiling:.2f}"
        )
    else:
        print(
            f"  the load generator is not the bottleneck: the machine was {machine_two:.2f} of "
            f"2 cores busy, wrk{' and the backends' if backends_two else ''} used "
            f"{load_side:.2f}; portico with 2 workers used {server_two:.2f} cores"
        )
    split = case.use[TWO].worker_split()
    if len(split) == 2 and split[0] > 2 * split[1]:
        print(
            f"  the load did not spread evenly over the workers: the busiest used "
            f"{split[0]:.2f} cores, the other {split[1]:.2f} (wrk opens its connections at "
            "once, and most went to one worker)"
        )
    line = f"ratio {TWO}/{ONE} {case.title} req/s: {ratio:.2f}   target >= {TARGET:.2f}"
    if ratio >= TARGET:
        line += "  MET"
    elif load_bound:
        line += "  NOT MET, load generator bound"
    else:
        line += "  NOT MET"
    core_line = f"ratio {TWO}/{ONE} {case.title} req/s per portico core: {per_core:.2f}"
    return line, core_line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_peers()
    print_header(args)
    cases = []
    with tempfile.TemporaryDirectory(prefix="portico-bench-scaling-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        if args.only in (None, "static"):
            cases.append(bench_static(workdir, args))
        if args.only in (None, "proxy"):
            cases.append(bench_proxy(workdir, args))
    closing = [report(case) for case in cases]
    print()
    for line, core_line in closing:
        print(line)
        print(core_line)
    return 0


if __name__ == "__main__":
    run_script(main)

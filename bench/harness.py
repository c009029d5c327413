"""Side-by-side load benchmarks: portico against its peers, in one run.

Theory of operation. A benchmark script starts every contender (portico and
its peer, e.g. nginx) as a `Server`, each pinned to CPU 0 with `taskset`, and
drives each with `run_wrk`, pinned to CPU 1, so the server and the load
generator never share a core on this two-core machine. `interleave` takes the
contenders in turn, round after round (portico, nginx, portico, nginx, ...),
so that drift in the machine (thermal, noisy neighbours, page cache) lands on
both alike; `median` of the rounds is what we quote, and the ratio lines are
printed last, because the ratio is the one number a run is for.

Every wait here has a bound: a server that does not accept within
`ready_timeout` is an error, a server that ignores SIGTERM gets SIGKILL after
`stop_timeout`, and wrk is bounded by its own duration plus a margin. Only
processes started here are signalled, by pid (or by the process group created
for them at start).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BENCH_DIR = Path(__file__).resolve().parent
ROOT_DIR = BENCH_DIR.parent
PORTICO_BIN = ROOT_DIR / ".venv" / "bin" / "portico"
NGINX_BIN = Path("/usr/sbin/nginx")

SERVER_CPU = "0"
WRK_CPU = "1"
PINNING_NOTE = f"server on CPU {SERVER_CPU}, wrk on CPU {WRK_CPU} (taskset)"


class BenchError(Exception):
    """A benchmark could not run as set up (a server did not start, wrk failed)."""


def run_script(main: Callable[[], int]) -> None:
    """A script's entry point: exits with ``main()``'s status; a BenchError is one
    line on stderr (the script's name, what went wrong) and status 1."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        sys.exit(1)


def ensure_peers() -> None:
    """Install nginx, wrk, gunicorn and granian if missing (bench/setup.sh)."""
    subprocess.run(["bash", str(BENCH_DIR / "setup.sh")], check=True, timeout=900)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """A server process pinned to one CPU, ready once 127.0.0.1:port accepts.

    Started in its own process group, so that a master and the workers it
    forks can be told apart from everything else on the machine: stopping
    sends SIGTERM to the pid, waits up to `stop_timeout`, then SIGKILLs
    whatever is left of the group this object created.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_path: Path,
        *,
        cpu: str = SERVER_CPU,
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.cpu = cpu
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.env = None if env is None else {**os.environ, **env}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError(f"{self.name} is not running")
        return self._process.pid

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            # taskset execs the server, so Popen's pid is the server's pid.
            self._process = subprocess.Popen(
                ["taskset", "-c", self.cpu, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                env=self.env,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self._process.returncode} before accepting "
                    f"on port {self.port}; last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _can_connect(self.port):
                return
            time.sleep(0.05)
        raise BenchError(
            f"{self.name} did not accept on 127.0.0.1:{self.port} within "
            f"{self.ready_timeout:.0f} s; last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the group id is the leader's pid
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        self._reap_group(pgid)

    def _reap_group(self, pgid: int) -> None:
        """Wait (bounded) for workers of the group to follow their master; then kill them."""
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


# -- configs -------------------------------------------------------------------

_LISTEN_PORT = re.compile(r"\blisten\s+127\.0\.0\.1:(\d+)[\s;]")


def listen_port(conf_text: str) -> int:
    """The port of the first `listen 127.0.0.1:PORT;` in a config."""
    match = _LISTEN_PORT.search(conf_text)
    if match is None:
        raise BenchError("the config has no `listen 127.0.0.1:PORT;`")
    return int(match.group(1))


def nginx_conf(conf_body: str, workdir: Path) -> str:
    """A complete nginx.conf: the shared body plus nginx's own housekeeping.

    The body is the config text that portico also runs. nginx additionally
    needs its pid file, error log and temp directories somewhere writable
    (Debian compiles in /run and /var/lib/nginx), runs in the foreground, and
    keeps the master + one worker shape that portico has too.
    """
    main = (
        f"daemon off;\nmaster_process on;\nuser root;\n"
        f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log warn;\n"
    )
    temp = "".join(
        f"    {kind}_temp_path {workdir}/tmp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body, count = re.subn(r"\bhttp\s*\{", lambda m: m.group(0) + "\n" + temp, conf_body, count=1)
    if count != 1:
        raise BenchError("the config has no `http {` block")
    return main + body


def nginx_server(
    conf_body: str,
    workdir: Path,
    port: int | None = None,
    *,
    name: str = "nginx",
    cpu: str = SERVER_CPU,
) -> Server:
    """nginx running `conf_body` (see `nginx_conf`) from `workdir/nginx.conf`."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf_path = workdir / "nginx.conf"
    conf_path.write_text(nginx_conf(conf_body, workdir))
    argv = [str(NGINX_BIN), "-p", str(workdir), "-e", str(workdir / "nginx-error.log")]
    argv += ["-c", str(conf_path)]
    return Server(
        name,
        argv,
        port if port is not None else listen_port(conf_body),
        workdir / "nginx.log",
        cpu=cpu,
    )


def portico_server(
    conf_path: Path,
    port: int | None = None,
    *,
    name: str = "portico",
    cpu: str = SERVER_CPU,
) -> Server:
    """portico running `portico -c conf_path`, logging beside the config."""
    port = port if port is not None else listen_port(conf_path.read_text())
    argv = [str(PORTICO_BIN), "-c", str(conf_path)]
    return Server(name, argv, port, conf_path.parent / "portico.log", cpu=cpu)


def portico_check(conf_path: Path) -> str | None:
    """`portico -t -c conf_path`: None when the config is valid, else portico's message."""
    done = subprocess.run(
        [str(PORTICO_BIN), "-t", "-c", str(conf_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


def nginx_version() -> str:
    done = subprocess.run([str(NGINX_BIN), "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")


# -- processes: who is a worker, what it costs ---------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): field 3 on."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (a master's workers), by scanning /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (not `pid` itself)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return sorted(found)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in KiB; shared pages count in every process that maps them."""
    return _status_kb(pid, "VmRSS")


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB: shared pages divided among their sharers (sums honestly)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far, in seconds (from /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    """How many file descriptors `pid` holds (its sockets, for a server worker)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class CpuMeter:
    """How busy each CPU was between `start()` and `stop()`, from /proc/stat.

    Counts everything that ran on the CPU (any process, interrupts), which is
    the point: it tells whether a core was saturated, e.g. the load
    generator's core, whoever saturated it.
    """

    def __init__(self) -> None:
        self._before: dict[str, tuple[int, int]] = {}
        self._after: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _sample() -> dict[str, tuple[int, int]]:
        sample = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(t) for t in ticks[:8]]
                idle = values[3] + values[4]  # idle + iowait
                sample[name[3:]] = (sum(values) - idle, sum(values))
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> None:
        self._after = self._sample()

    def busy(self, cpu: str) -> float:
        """Fraction (0..1) of the interval CPU `cpu` ("0", "1") was not idle."""
        busy0, total0 = self._before[cpu]
        busy1, total1 = self._after[cpu]
        return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def metered(
    run: Callable[[], WrkResult], busy: list[float], cpu: str = WRK_CPU
) -> Callable[[], WrkResult]:
    """`run`, also appending to `busy` how busy `cpu` (the load generator's core) was."""

    def metered_run() -> WrkResult:
        meter = CpuMeter()
        meter.start()
        try:
            return run()
        finally:
            meter.stop()
            busy.append(meter.busy(cpu))

    return metered_run


LOAD_SATURATED = 0.95  # fraction of the load core busy past which the load side limits


def print_load_cpu(busy: Mapping[str, Sequence[float]], what: str, cpu: str = WRK_CPU) -> None:
    """How busy the load core was per contender (median), and a warning if it was full.

    When the load generator's core is saturated, the server was not: the
    figure is the load side's limit, and a ratio against the faster server
    understates it.
    """
    medians = {name: median(values) for name, values in busy.items() if values}
    print(
        f"  CPU {cpu} ({what}) busy, median: "
        + ", ".join(f"{name} runs {value:.0%}" for name, value in medians.items())
    )
    saturated = [name for name, value in medians.items() if value >= LOAD_SATURATED]
    if saturated:
        print(
            f"  CPU {cpu} was saturated in the {' and '.join(saturated)} runs: the load side "
            "set those figures, and the server could do more than they show"
        )


# -- one request -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP/1.1 exchange: status, headers (names lower-cased), body, head size."""

    status: int
    headers: dict[str, str]
    body: bytes
    head_bytes: int


def http_get(url: str, timeout: float = 10.0) -> Response:
    """GET `url` on a fresh connection (urllib: HTTP/1.1, Connection: close)."""
    request = urllib.request.Request(url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        body = response.read()
        headers = response.getheaders()
        status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
        head = status_line + sum(len(k) + len(v) + 4 for k, v in headers) + 2
        return Response(response.status, {k.lower(): v for k, v in headers}, body, head)


# -- wrk -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. `errors` counts socket errors plus non-2xx/3xx responses;
    `requests` is the number of responses wrk counted (0 when unknown)."""

    requests_per_sec: float
    transfer_bytes_per_sec: float
    p99_ms: float
    errors: int
    requests: int = 0


_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise BenchError(f"wrk output has no line matching {pattern!r}:\n{text}")
    return match


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output (wrk 4.x; sizes are binary: 1 KB = 1024 B)."""
    rps = float(_search(r"^Requests/sec:\s+([\d.]+)", output).group(1))
    transfer = _search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", output)
    p99 = _search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$", output)
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    total = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    return WrkResult(
        requests_per_sec=rps,
        transfer_bytes_per_sec=float(transfer.group(1)) * _SIZE_UNITS[transfer.group(2)],
        p99_ms=float(p99.group(1)) * _TIME_UNITS_MS[p99.group(2)],
        errors=errors,
        requests=int(total.group(1)) if total else 0,
    )


def run_wrk(
    url: str,
    connections: int = 64,
    threads: int = 1,
    duration: float = 5,
    cpu: str = WRK_CPU,
) -> WrkResult:
    """Load `url` with wrk pinned to `cpu`; one thread, since wrk has one core."""
    argv = ["taskset", "-c", cpu, "wrk", "--latency"]
    argv += [f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", url]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration + 30:g} s: {argv}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# -- rounds and reporting ---------------------------------------------------------


def interleave(
    rounds: int, contenders: Mapping[str, Callable[[], WrkResult]]
) -> dict[str, list[WrkResult]]:
    """Run each contender once per round, in turn: a, b, a, b, ...

    Progress goes to stderr, one line per run, so a long run shows it is alive.
    """
    results: dict[str, list[WrkResult]] = {name: [] for name in contenders}
    width = _name_width(contenders)
    for round_no in range(1, rounds + 1):
        for name, run in contenders.items():
            result = run()
            results[name].append(result)
            print(f"  round {round_no}/{rounds} {name:<{width}} {_row(result)}", file=sys.stderr)
    return results


def _name_width(names: Iterable[str]) -> int:
    return max([8, *(len(name) for name in names)])


def median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def summarize(results: Sequence[WrkResult]) -> WrkResult:
    """Medians of each figure over the rounds; errors and requests are summed."""
    return WrkResult(
        requests_per_sec=median(r.requests_per_sec for r in results),
        transfer_bytes_per_sec=median(r.transfer_bytes_per_sec for r in results),
        p99_ms=median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        requests=sum(r.requests for r in results),
    )


def _row(result: WrkResult) -> str:
    return (
        f"{result.requests_per_sec:>12,.0f} {result.transfer_bytes_per_sec / 1e6:>10.1f} "
        f"{result.p99_ms:>9.2f} {result.errors:>7d}"
    )


def print_table(title: str, results: Mapping[str, Sequence[WrkResult]]) -> None:
    """Medians per contender: req/s, MB/s (10^6 bytes), p99 in ms, errors."""
    rounds = max((len(runs) for runs in results.values()), default=0)
    width = _name_width(results)
    print(f"\n{title} (median of {rounds} rounds)")
    print(f"  {'server':<{width}} {'req/s':>12} {'MB/s':>10} {'p99 ms':>9} {'errors':>7}")
    for name, runs in results.items():
        print(f"  {name:<{width}} {_row(summarize(runs))}")


@dataclass(frozen=True, slots=True)
class Ratio:
    """One ratio line: `numerator`/`denominator` of a WrkResult field's medians.

    The target is a floor (`>=`) for figures where more is better, and a ceiling
    (`<=`) when `higher_is_better` is false (latency, memory).
    """

    label: str  # e.g. "1 KB req/s"
    metric: str  # a WrkResult field: "requests_per_sec", "transfer_bytes_per_sec", "p99_ms"
    numerator: str = "portico"
    denominator: str = "nginx"
    target: float | None = None
    higher_is_better: bool = True


def ratio_value(ratio: Ratio, results: Mapping[str, Sequence[WrkResult]]) -> float | None:
    """The ratio of medians, or None when a side did not run."""
    if not results.get(ratio.numerator) or not results.get(ratio.denominator):
        return None
    top = getattr(summarize(results[ratio.numerator]), ratio.metric)
    bottom = getattr(summarize(results[ratio.denominator]), ratio.metric)
    return float(top / bottom) if bottom else None


def format_ratio(ratio: Ratio, value: float | None) -> str:
    line = f"ratio {ratio.numerator}/{ratio.denominator} {ratio.label}: "
    line += "n/a (not run)" if value is None else f"{value:.2f}"
    if ratio.target is not None:
        if ratio.higher_is_better:
            line += f"   target >= {ratio.target:.2f}"
            met = value is not None and value >= ratio.target
        else:
            line += f"   target <= {ratio.target:.2f}"
            met = value is not None and value <= ratio.target
        if value is not None:
            line += "  MET" if met else "  NOT MET"
    return line


def print_ratios(lines: Sequence[tuple[Ratio, Mapping[str, Sequence[WrkResult]]]]) -> None:
    """The closing lines of a run: each ratio with its target."""
    print()
    for ratio, results in lines:
        print(format_ratio(ratio, ratio_value(ratio, results)))

"""7x24: reload, upgrade, crashed workers and graceful stop, proven under load."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.loadclient import LoadClient

APP = """
import time

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/slow"):
        time.sleep(2.0)
        body = b"slow done"
    else:
        body = b"app ok"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

CONFIG = """
worker_processes 2;
pid {dir}/portico.pid;
error_log {dir}/error.log info;
worker_shutdown_timeout 10s;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /version {{ return 200 "{version}"; }}
        location /proxied/ {{ proxy_pass http://backend/; }}
        location /app/ {{ wsgi_path {root}; wsgi_threads 4; wsgi testapp:app; }}
    }}
    server {{
        listen 127.0.0.1:{backend};
        access_log off;
        location / {{ return 200 "backend $uri"; }}
    }}
}}
"""

PATHS = ["/index.html", "/proxied/x", "/app/hello", "/version", "/big.bin"]


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    (tmp_path / "testapp.py").write_text(APP)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("static ok")
    (www / "big.bin").write_bytes(os.urandom(256 * 1024))
    return tmp_path


class Running:
    """A portico master started by hand (the fixture's one cannot follow an upgrade)."""

    def __init__(self, directory: Path, root: Path, version: str = "v0") -> None:
        self.directory = directory
        self.root = root
        self.port = free_port()
        self.backend = free_port()
        self.config = directory / "portico.conf"
        self.write(version)
        self.log = open(directory / "stderr.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "portico", "-c", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, process=self.process)
        self.pid_file = directory / "portico.pid"
        wait_until(lambda: self.pid_file.exists())
        # the port answers once the first worker is up: tests that compare worker
        # lists need all of them
        wait_until(lambda: len(self.workers()) == 2)

    def write(self, version: str, extra: str = "") -> None:
        text = CONFIG.format(
            dir=self.directory,
            root=self.root,
            port=self.port,
            backend=self.backend,
            version=version,
        )
        # as deploy tools do: write beside, then rename over (the master never reads
        # a half-written file)
        staging = self.config.with_suffix(".tmp")
        staging.write_text(text + extra)
        os.replace(staging, self.config)

    def master_pid(self) -> int:
        return int(self.pid_file.read_text())

    def workers(self, master: int | None = None) -> list[int]:
        master = master or self.master_pid()
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(master)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(line.split()[0]) for line in out.splitlines() if "worker process" in line]

    def group_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "-g", str(self.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def error_log(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")

    def stop(self) -> None:
        for pid in self.group_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.log.close()


def wait_until(condition, timeout: float = 10.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def running(prepared: Path, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    directory = tmp_path / "run"
    directory.mkdir()
    server = Running(directory, prepared)
    yield server
    server.stop()


def test_twenty_reloads_under_load_lose_nothing(running: Running) -> None:
    with LoadClient(running.port, PATHS, threads=4) as load:
        load.wait_for(200)
        for i in range(1, 21):
            if i == 10:
                running.write("broken", extra="this is not a directive;\n")
            else:
                running.write(f"v{i}")
            os.kill(running.master_pid(), signal.SIGHUP)
            # signals sent close together may merge into one: each lands before the next
            assert wait_until(
                lambda i=i: running.error_log().count("received, reconfiguring") == i
            ), running.error_log()[-2000:]
            load.wait_for(50, timeout=10)
        wait_until(lambda: get(running.port, "/version")[1] == b"v20")
        load.wait_for(200)
    results = load.results
    assert results.failures == [], results.failures[:5]
    assert results.ok > 1500
    assert get(running.port, "/version") == (200, b"v20")
    log = running.error_log()
    assert 'unknown directive "this"' in log
    assert "the configuration was not changed" in log
    # no worker left behind: the old generations exit once their requests are done
    assert wait_until(lambda: len(running.workers()) == 2, timeout=15)
    assert len(running.group_pids()) == 3  # master and two workers


def test_invalid_reload_keeps_old_workers_untouched(running: Running) -> None:
    before = sorted(running.workers())
    running.write("v1", extra="worker_processes many;\n")
    os.kill(running.master_pid(), signal.SIGHUP)
    assert wait_until(lambda: "the configuration was not changed" in running.error_log())
    assert sorted(running.workers()) == before
    assert get(running.port, "/version") == (200, b"v0")


def test_reload_with_a_broken_app_keeps_the_old_config(running: Running) -> None:
    (running.root / "brokenapp.py").write_text("import nowhere_to_be_found\n")
    running.write("v1")
    text = running.config.read_text().replace("wsgi testapp:app;", "wsgi brokenapp:app;")
    staging = running.config.with_suffix(".tmp")
    staging.write_text(text)
    os.replace(staging, running.config)
    os.kill(running.master_pid(), signal.SIGHUP)
    assert wait_until(lambda: "the configuration was not changed" in running.error_log())
    assert "No module named 'nowhere_to_be_found'" in running.error_log()
    assert get(running.port, "/app/x") == (200, b"app ok")


def test_upgrade_then_winch_and_quit_the_old_master(running: Running) -> None:
    old = running.master_pid()
    old_workers = running.workers()
    with LoadClient(running.port, PATHS, threads=4) as load:
        load.wait_for(200)
        os.kill(old, signal.SIGUSR2)
        oldbin = Path(str(running.pid_file) + ".oldbin")
        assert wait_until(
            lambda: oldbin.exists() and running.pid_file.exists() and running.master_pid() != old
        )
        new = running.master_pid()
        assert int(oldbin.read_text()) == old
        assert wait_until(lambda: len(running.workers(new)) == 2)
        load.wait_for(100)
        os.kill(old, signal.SIGWINCH)  # the old workers finish and exit
        assert wait_until(lambda: not running.workers(old))
        load.wait_for(100)
        os.kill(old, signal.SIGQUIT)
        assert wait_until(lambda: not _alive(old))
        load.wait_for(200)
    assert load.results.failures == [], load.results.failures[:5]
    assert not oldbin.exists()
    assert not any(_alive(pid) for pid in old_workers)
    assert get(running.port, "/index.html") == (200, b"static ok")


def test_upgrade_rollback(running: Running) -> None:
    old = running.master_pid()
    with LoadClient(running.port, PATHS, threads=4) as load:
        load.wait_for(100)
        os.kill(old, signal.SIGUSR2)
        assert wait_until(lambda: running.pid_file.exists() and running.master_pid() != old)
        new = running.master_pid()
        assert wait_until(lambda: len(running.workers(new)) == 2)
        os.kill(old, signal.SIGWINCH)
        assert wait_until(lambda: not running.workers(old))
        load.wait_for(100)
        # the new program misbehaves: bring the old workers back, stop the new master;
        # the old master does not read the file again (it may be the new program's, and
        # not valid for the old one)
        running.config.write_text("this is not a config the old program knows;\n")
        os.kill(old, signal.SIGHUP)
        assert wait_until(lambda: len(running.workers(old)) == 2)
        os.kill(new, signal.SIGQUIT)
        assert wait_until(lambda: not _alive(new))
        # the old master takes its pid file back
        assert wait_until(lambda: running.pid_file.exists() and running.master_pid() == old)
        load.wait_for(200)
    assert load.results.failures == [], load.results.failures[:5]


def test_killed_worker_is_replaced_at_once(running: Running) -> None:
    with LoadClient(running.port, PATHS, threads=4) as load:
        load.wait_for(100)
        victim = running.workers()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda: len(running.workers()) == 2 and victim not in running.workers(), timeout=5
        )
        replaced_after = time.monotonic() - killed_at
        load.wait_for(200)
    assert replaced_after < 1.0
    # only what the dead worker had in flight may fail (at most one per client thread)
    assert len(load.results.failures) <= 4, load.results.failures
    assert f"worker process {victim} exited on signal 9" in running.error_log()


def test_crash_loop_backs_off(prepared: Path, portico) -> None:  # type: ignore[no-untyped-def]
    # a worker that dies right after start is not restarted in a hot loop
    server = portico(
        "worker_processes 1; error_log {dir}/error.log info;\n"
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; }} }}"
    )
    log = Path(server.directory) / "error.log"
    waits = []
    for _ in range(3):
        assert wait_until(lambda: len(server.worker_pids()) == 1, timeout=10)
        killed_at = time.monotonic()
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda victim=victim: server.worker_pids() not in ([], [victim]), timeout=10
        )
        waits.append(time.monotonic() - killed_at)
    # the first quick death is restarted at once, then 0.5 s, then twice as long
    text = log.read_text()
    assert "starting it again in 0.5s" in text and "starting it again in 1s" in text, text
    assert waits[0] < 0.5 and waits[1] >= 0.45 and waits[2] >= 0.95, waits


def test_quit_lets_slow_answers_finish_then_exits(running: Running) -> None:
    big = (running.root / "www" / "big.bin").read_bytes()
    outcomes: dict[str, object] = {}

    def slow() -> None:
        outcomes["slow"] = get(running.port, "/app/slow")

    def download() -> None:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while len(data) < len(big):
                time.sleep(0.01)  # a slow reader: the answer takes a while
                chunk = s.recv(8192)
                if not chunk:
                    break
                data += chunk
            while b"\r\n\r\n" in data and len(data.partition(b"\r\n\r\n")[2]) < len(big):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            outcomes["download"] = data.partition(b"\r\n\r\n")[2]

    threads = [threading.Thread(target=slow), threading.Thread(target=download)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both are in flight
    os.kill(running.master_pid(), signal.SIGQUIT)
    for thread in threads:
        thread.join(20)
    assert outcomes["slow"] == (200, b"slow done")
    assert outcomes["download"] == big
    assert running.process.wait(15) == 0
    assert wait_until(lambda: running.group_pids() == [], timeout=5)
    # and nothing listens any more
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=1).close()


def test_reopen_moves_logging_to_a_new_file(running: Running) -> None:
    access = running.directory / "access.log"
    for _ in range(10):
        assert get(running.port, "/index.html")[0] == 200
    time.sleep(1.3)  # the buffered lines are flushed once a second
    os.rename(access, running.directory / "access.log.1")
    subprocess.run(
        [sys.executable, "-m", "portico", "-s", "reopen", "-c", str(running.config)],
        check=True,
        timeout=30,
    )
    assert wait_until(lambda: access.exists())
    for _ in range(5):
        assert get(running.port, "/index.html")[0] == 200
    time.sleep(1.3)
    old_lines = (running.directory / "access.log.1").read_text().splitlines()
    new_lines = access.read_text().splitlines()
    assert len(old_lines) + len(new_lines) >= 15
    assert len(new_lines) >= 5
    assert all('"GET /index.html HTTP/1.1" 200' in line for line in new_lines)


def test_process_titles(running: Running) -> None:
    def titles() -> str:
        return subprocess.run(
            ["ps", "-ww", "-o", "args=", "-g", str(running.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout

    # a worker names itself right after fork: give a busy machine a moment
    wait_until(lambda: titles().count("portico: worker process") == 2, timeout=5)
    shown = titles()
    assert f"portico: master process -c {running.config}" in shown
    assert shown.count("portico: worker process") == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_reuseport_gives_each_worker_its_own_socket(portico) -> None:  # type: ignore[no-untyped-def]
    # with one shared socket most connections may land on one worker; with reuseport
    # the kernel spreads them over the workers' own sockets
    server = portico(
        "worker_processes 2;\nevents {{ }}\n"
        "http {{ server {{ listen 127.0.0.1:{port} reuseport;\n"
        '  location / {{ return 200 "$pid"; }} }} }}'
    )
    wait_until(lambda: len(server.worker_pids()) == 2)
    answered_by = set()
    for _ in range(60):
        status, body = get(server.port, "/")
        assert status == 200
        answered_by.add(int(body))
    assert answered_by == set(server.worker_pids())
    # a worker killed and replaced gets the same socket back: nothing is refused
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids())
    for _ in range(20):
        assert get(server.port, "/")[0] == 200


def test_a_reload_whose_app_fails_oddly_leaves_the_master_running(running: Running) -> None:
    # an error message over several lines, from an app that fails to import
    (running.root / "oddapp.py").write_text('raise RuntimeError("first line\\nsecond line")\n')
    text = running.config.read_text().replace("wsgi testapp:app;", "wsgi oddapp:app;")
    staging = running.config.with_suffix(".tmp")
    staging.write_text(text)
    os.replace(staging, running.config)
    master = running.master_pid()
    os.kill(master, signal.SIGHUP)
    assert wait_until(lambda: "the configuration was not changed" in running.error_log())
    assert "second line" in running.error_log()
    assert _alive(master)
    assert get(running.port, "/app/x") == (200, b"app ok")


def test_signals_while_stopping_start_nothing(running: Running) -> None:
    slow = threading.Thread(target=get, args=(running.port, "/app/slow"), daemon=True)
    slow.start()
    time.sleep(0.5)  # a slow answer keeps the stop going for a while
    master = running.master_pid()
    os.kill(master, signal.SIGQUIT)
    assert wait_until(lambda: "shutting down gracefully" in running.error_log())
    workers = running.workers(master)
    os.kill(master, signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP ignored: stopping" in running.error_log())
    assert set(running.workers(master)) <= set(workers)  # no new generation
    slow.join(10)
    assert running.process.wait(15) == 0
    assert wait_until(lambda: running.group_pids() == [], timeout=5)

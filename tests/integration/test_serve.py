"""``portico serve MODULE:APP`` (gunicorn's role), the apps in ``portico -t``, and the
built-in default config (the three-layer demo), as a user runs them."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
PORTICO = [sys.executable, "-m", "portico"]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PORTICO, *args], capture_output=True, text=True, timeout=30, cwd=cwd, check=False
    )


class Running:
    """A portico process started here, stopped by its pid (TERM, then KILL)."""

    def __init__(self, args: list[str], cwd: Path, log: Path, ports: list[int]) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [*PORTICO, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            for port in ports:
                wait_for_port(port, process=self.process)
        except BaseException:
            self.stop()
            raise

    def workers(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(pid) for pid in out.split()]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        workers = self.workers()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in workers:  # none of ours outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[Running] = []

    def starter(args: list[str], ports: list[int], cwd: Path = REPO) -> Running:
        running = Running(args, cwd, tmp_path / f"portico{len(started)}.log", ports)
        started.append(running)
        return running

    yield starter
    for running in started:
        running.stop()


def get(port: int, path: str = "/") -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


# -- portico serve -----------------------------------------------------------------------


def test_serve_with_workers_and_threads(tmp_path: Path, start) -> None:
    port = free_port()
    access = tmp_path / "access.log"
    server = start(
        [
            "serve",
            "tests.apps.hello:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--access-log",
            str(access),
        ],
        [port],
    )
    # the port answers as soon as the first worker is up: give the second a moment
    deadline = time.monotonic() + 5
    while len(server.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.workers()) == 2
    for _ in range(6):
        status, headers, body = get(port)
        assert (status, body) == (200, b"hello world!")
        assert headers["Content-Type"].startswith("text/html")
    assert get(port, "/hello/serve")[2] == b"hello serve!"
    assert get(port, "/nothing")[0] == 404
    server.stop()
    lines = access.read_text().splitlines()
    assert sum('"GET / HTTP/1.1" 200 12' in line for line in lines) == 6


def test_serve_is_found_through_chdir(tmp_path: Path, start) -> None:
    port = free_port()
    start(
        ["serve", "tests.apps.echo:app", "--bind", f"127.0.0.1:{port}", "--chdir", str(REPO)],
        [port],
        cwd=tmp_path,
    )
    status, _, body = get(port, "/x?y=1")
    assert status == 200
    environ = json.loads(body)["environ"]
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/x", "y=1")
    assert environ["SERVER_PORT"] == str(port)


def test_serve_a_factory(start) -> None:
    port = free_port()
    start(["serve", "tests.apps.hello:create_app()", "--bind", f"127.0.0.1:{port}"], [port])
    status, _, body = get(port)
    assert (status, body) == (200, b"hello from a factory!")


def test_serve_inline(start) -> None:
    port = free_port()
    start(
        ["serve", "tests.apps.hello:plain", "--bind", f"127.0.0.1:{port}", "--threads", "0"], [port]
    )
    status, _, body = get(port)
    assert (status, body) == (200, b"hello from plain WSGI!")


def test_serve_check_only(tmp_path: Path) -> None:
    result = run("serve", "-t", "tests.apps.hello:app")
    assert result.returncode == 0, result.stderr
    assert "app tests.apps.hello:app loads" in result.stderr
    result = run("serve", "-t", "tests.apps.hello:create_app()")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.apps.hello:nope", 'module "tests.apps.hello" has no "nope"'),
        ("tests.apps.no_such_module:app", 'cannot import "tests.apps.no_such_module"'),
        ("bad spec!", 'invalid app "bad spec!"'),
        ("tests.apps.echo:KEYS", "is not callable"),
    ],
)
def test_serve_check_reports_what_is_wrong(spec: str, message: str) -> None:
    result = run("serve", "-t", spec)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def write_broken_app(folder: Path) -> Path:
    path = folder / "brokenapp.py"
    path.write_text(
        '"""An app that cannot start."""\n'
        "\n"
        "raise RuntimeError('cannot reach the database')\n"
        "\n"
        "app = None\n"
    )
    return path


def test_serve_refuses_an_app_that_does_not_import(tmp_path: Path) -> None:
    broken = write_broken_app(tmp_path)
    port = free_port()
    started = time.monotonic()
    result = run("serve", "brokenapp:app", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path))
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "RuntimeError: cannot reach the database" in result.stderr
    assert f"{broken}:3" in result.stderr
    with socket.socket() as s:  # and nothing was left listening
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", port)) != 0


# -- portico -t with wsgi apps -------------------------------------------------------------


def config_with(app_line: str, *folders: Path) -> str:
    """A config whose line 7 is ``app_line``."""
    paths = " ".join(f"wsgi_path {folder};" for folder in folders)
    return (
        "events {}\n"
        "http {\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        f"        {paths}\n"
        "        location /ok/ { wsgi tests.apps.hello:app; }\n"
        f"        location / {{ {app_line} }}\n"
        "    }\n"
        "}\n"
    )


def test_check_imports_the_apps(tmp_path: Path) -> None:
    conf = tmp_path / "ok.conf"
    conf.write_text(config_with("wsgi tests.apps.echo:app;", REPO))
    result = run("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_check_reports_an_import_error_with_both_places(tmp_path: Path) -> None:
    broken = write_broken_app(tmp_path)
    conf = tmp_path / "broken.conf"
    conf.write_text(config_with("wsgi brokenapp:app;", tmp_path, REPO))
    result = run("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 1
    # the wsgi directive's place in the config, and the app's failing line
    assert f"{conf}:7: " in result.stderr, result.stderr
    assert "RuntimeError: cannot reach the database" in result.stderr
    assert f"{broken}:3" in result.stderr
    assert f"configuration file {conf} test failed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("wsgi not-a-module:app;", 'invalid app "not-a-module:app"'),
        ("wsgi mod:app(1);", 'invalid app "mod:app(1)"'),
        ("wsgi tests.apps.hello:missing;", 'has no "missing"'),
        ("wsgi;", 'invalid number of arguments in "wsgi" directive'),
        ("wsgi a:b c:d;", 'invalid number of arguments in "wsgi" directive'),
    ],
)
def test_check_reports_a_bad_app_spec(tmp_path: Path, line: str, message: str) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(config_with(line, REPO))
    result = run("-t", "-c", str(conf), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{conf}:7: " in result.stderr, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- the built-in default config -------------------------------------------------------------

DEMO_PORTS = (8080, 8001, 8002)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_default_config_is_the_three_layer_demo(start) -> None:
    if os.path.exists("/etc/portico/portico.conf"):
        pytest.skip("/etc/portico/portico.conf exists: it would be used instead")
    busy = [port for port in DEMO_PORTS if not _free(port)]
    if busy:
        pytest.skip(f"the demo's fixed ports are taken: {busy}")
    server = start([], list(DEMO_PORTS), cwd=REPO)
    answered_by = set()
    for _ in range(4):
        status, headers, body = get(8080)
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert "<h1>hello world!</h1>" in page
        answered_by |= {port for port in ("8001", "8002") if f"<b>{port}</b>" in page}
    # round robin: both app servers answered
    assert answered_by == {"8001", "8002"}
    status, headers, body = get(8080, "/static/style.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert body == (REPO / "portico/default/html/static/style.css").read_bytes()
    # the app servers answer directly too
    assert b"<b>8002</b>" in get(8002)[2]
    assert "Traceback" not in server.log()

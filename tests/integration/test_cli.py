"""The command line as a user types it."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port, wait_for_port

PORTICO = [sys.executable, "-m", "portico"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PORTICO, *args], capture_output=True, text=True, timeout=30, cwd=cwd, check=False
    )


def test_version() -> None:
    result = run("-V")
    assert result.returncode == 0
    assert result.stdout.startswith("portico version: portico/")


def test_installed_command_is_the_same(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "portico"
    result = subprocess.run(
        [str(script), "-V"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and "portico/" in result.stdout


def test_check_a_good_config(tmp_path: Path) -> None:
    conf = tmp_path / "ok.conf"
    conf.write_text("events {} http { server { listen 127.0.0.1:8080; } }\n")
    result = run("-t", "-c", str(conf))
    assert result.returncode == 0
    assert f"the configuration file {conf} syntax is ok" in result.stderr
    assert f"configuration file {conf} test is successful" in result.stderr


def test_check_lists_every_error_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "extra.conf").write_text("\nbogus_in_include 1;\n")
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "worker_processes many;\n"
        "events { worker_connections 10 20; }\n"
        "http {\n"
        "    include extra.conf;\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        "        location / { proxy_bogus on; }\n"
        "        root;\n"
        "    }\n"
        "    listen 80;\n"
        "}\n"
    )
    result = run("-t", "-c", str(conf))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f'{conf}:1: invalid number "many" in "worker_processes" directive' in lines
    assert f'{conf}:2: invalid number of arguments in "worker_connections" directive' in lines
    assert f'{tmp_path / "extra.conf"}:2: unknown directive "bogus_in_include"' in lines
    assert f'{conf}:7: unknown directive "proxy_bogus"' in lines
    assert f'{conf}:8: invalid number of arguments in "root" directive' in lines
    assert f'{conf}:10: "listen" directive is not allowed here' in lines
    assert lines[-1] == f"portico: configuration file {conf} test failed"
    assert "Traceback" not in result.stderr


def test_check_reports_unbalanced_braces_and_missing_include(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("http {\n  server {\n")
    result = run("-t", "-c", str(conf))
    assert result.returncode == 1
    assert f'{conf}:2: unexpected end of file, expecting "}}"' in result.stderr
    conf.write_text("http {\n  include nowhere.conf;\n}\n")
    result = run("-t", "-c", str(conf))
    assert result.returncode == 1
    assert f"{conf}:2: cannot open included file" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("-t", "-c", str(tmp_path / "none.conf"))
    assert result.returncode == 1
    assert "cannot open" in result.stderr and "Traceback" not in result.stderr


def test_serve_a_config_and_stop_it_with_signals(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hi")
    conf = tmp_path / "p.conf"
    conf.write_text(
        f"pid {tmp_path}/p.pid;\nevents {{}}\nhttp {{ server {{ listen "
        f"127.0.0.1:{port}; root www; }} }}\n"
    )
    process = subprocess.Popen(
        [*PORTICO, "-c", str(conf)],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hi"  # relative root: next to the config
        conn.close()
        assert (tmp_path / "p.pid").read_text().strip() == str(process.pid)
        result = run("-s", "stop", "-c", str(conf))
        assert result.returncode == 0
        assert process.wait(10) == 0
        assert not (tmp_path / "p.pid").exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_busy_port_is_refused_clearly(tmp_path: Path, portico) -> None:
    first = portico("events {{}} http {{ server {{ listen 127.0.0.1:{port}; }} }}")
    conf = tmp_path / "second.conf"
    conf.write_text(f"events {{}} http {{ server {{ listen 127.0.0.1:{first.port}; }} }}")
    result = run("-c", str(conf))
    assert result.returncode == 1
    assert f"bind() to 127.0.0.1:{first.port} failed (98: Address already in use)" in result.stderr
    # the first one still serves
    conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status in (404, 403)
    conn.close()


def test_held_pid_file_is_refused(tmp_path: Path, portico) -> None:
    pid_file = tmp_path / "held.pid"
    first = portico(
        "pid {pid_file};\nevents {{}} http {{ server {{ listen 127.0.0.1:{port}; }} }}",
        pid_file=pid_file,
    )
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    conf = tmp_path / "second.conf"
    conf.write_text(
        f"pid {pid_file};\nevents {{}} http {{ server {{ listen 127.0.0.1:{free_port()}; }} }}"
    )
    result = run("-c", str(conf))
    assert result.returncode == 1
    assert f'pid file "{pid_file}" is held by running process {first.pid}' in result.stderr
    assert pid_file.read_text().strip() == str(first.pid)


def test_signal_without_pid_directive(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("events {} http { }")
    result = run("-s", "reload", "-c", str(conf))
    assert result.returncode == 1
    assert 'has no "pid" directive' in result.stderr

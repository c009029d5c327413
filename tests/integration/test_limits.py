"""limit_req and limit_conn through real portico workers: limits hold across workers."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

CONFIG = """
worker_processes 2;
error_log {dir}/error.log info;
events {{ }}
http {{
    limit_req_zone $binary_remote_addr zone=perip:1m rate=2r/s;
    limit_conn_zone $binary_remote_addr zone=conns:1m;
    upstream slow {{ server 127.0.0.1:{port2}; }}
    server {{
        listen 127.0.0.1:{port};
        location /rate/ {{ limit_req zone=perip burst=4 nodelay; return 200 "ok"; }}
        location /delayed/ {{ limit_req zone=perip burst=10; return 200 "ok"; }}
        location /custom/ {{
            limit_req zone=perip nodelay;
            limit_req_status 429;
            return 200 "ok";
        }}
        location /conn/ {{ limit_conn conns 2; proxy_pass http://slow; }}
    }}
    server {{
        listen 127.0.0.1:{port2};
        location / {{ wsgi_path {root}; wsgi slowapp:app; }}
    }}
}}
"""

SLOW_APP = """
import time

def app(environ, start_response):
    time.sleep(1.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slow"]
"""


def fresh_status(port: int, path: str, source: str = "127.0.0.1") -> int:
    """One request on a new connection (so both workers get a share)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def start(tmp_path: Path, portico):  # type: ignore[no-untyped-def]
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    return portico(CONFIG, ports=2)


def test_limit_req_across_two_workers(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    server = start(tmp_path, portico)
    statuses = [fresh_status(server.port, "/rate/") for _ in range(20)]
    # 1 + burst 4 pass, the rest of the burst is refused, whichever worker answers
    assert statuses.count(200) in (5, 6)  # a sixth may fit if 0.5 s went by
    assert statuses[:5] == [200] * 5
    assert 503 in statuses
    # another client address has its own bucket
    assert fresh_status(server.port, "/rate/", source="127.0.0.9") == 200
    assert (
        'limiting requests, excess by zone "perip"'
        in (Path(server.directory) / "error.log").read_text()
    )


def test_limit_req_status_and_recovery(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    server = start(tmp_path, portico)
    assert fresh_status(server.port, "/custom/", source="127.0.0.3") == 200
    assert fresh_status(server.port, "/custom/", source="127.0.0.3") == 429
    time.sleep(0.6)  # 2 r/s: one more after half a second
    assert fresh_status(server.port, "/custom/", source="127.0.0.3") == 200


def test_limit_req_without_nodelay_delays_instead_of_refusing(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    server = start(tmp_path, portico)
    started = time.monotonic()
    statuses = [fresh_status(server.port, "/delayed/", source="127.0.0.4") for _ in range(3)]
    elapsed = time.monotonic() - started
    assert statuses == [200, 200, 200]
    assert elapsed >= 0.9  # the 2nd and 3rd waited 0.5 s each (2 r/s)


def test_limit_conn_across_two_workers(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    server = start(tmp_path, portico)
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = fresh_status(server.port, "/conn/", source="127.0.0.5")
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(15)
    # two slow requests in progress at most; the three others are refused at once
    assert sorted(results) == [200, 200, 503, 503, 503]
    # once they are done, the key is free again
    assert fresh_status(server.port, "/conn/", source="127.0.0.5") == 200


def test_unlimited_locations_are_not_affected(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    server = start(tmp_path, portico)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(20):
        conn.request("GET", "/nowhere")
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    conn.close()


def test_limit_conn_is_released_by_requests_that_end_without_an_answer(portico) -> None:  # type: ignore[no-untyped-def]
    server = portico(
        "events {{ }} http {{ limit_conn_zone $binary_remote_addr zone=one:1m;\n"
        "server {{ listen 127.0.0.1:{port}; limit_conn one 1;\n"
        "  location /close {{ return 444; }}\n"
        '  location /ok {{ return 200 "ok"; }} }} }}'
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""  # closed without an answer
    assert fresh_status(server.port, "/ok") == 200  # the slot came back

"""Static files through a real portico: validators, ranges, index, try_files, safety."""

from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import parse_response, raw_request, read_response

CONFIG = """
worker_processes 1;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location /listing/ {{ autoindex on; }}
        location /pics/ {{ alias {root}/images/; }}
        location /spa/ {{ try_files $uri $uri/ /spa/index.html; }}
        location /strict/ {{ try_files $uri =418; }}
        location /named/ {{ try_files $uri @fallback; }}
        location @fallback {{ return 200 "fallback for $uri"; }}
        location /safe/ {{ disable_symlinks on; }}
        location /noetag/ {{ etag off; }}
        location /types/ {{ types {{ text/x-special sp; }} default_type text/x-default; }}
        location /big/ {{ sendfile off; }}
    }}
}}
"""


@pytest.fixture
def site(tmp_path: Path, portico):
    www = tmp_path / "www"
    (www / "listing" / "sub").mkdir(parents=True)
    (www / "listing" / "a <b>.txt").write_text("x")
    (www / "listing" / ".hidden").write_text("x")
    (www / "spa").mkdir()
    (www / "spa" / "index.html").write_text("spa index")
    (www / "spa" / "app.js").write_text("js")
    (www / "strict").mkdir()
    (www / "named").mkdir()
    (www / "safe").mkdir()
    (www / "noetag").mkdir()
    (www / "noetag" / "f.txt").write_text("f")
    (www / "types").mkdir()
    (www / "types" / "f.sp").write_text("sp")
    (www / "types" / "f.unknown").write_text("u")
    (www / "dir").mkdir()
    (www / "dir" / "index.html").write_text("dir index")
    (www / "index.html").write_text("<h1>home</h1>")
    (www / "hello.txt").write_text("hello, world\n")
    (www / "page.html").write_text("<p>page</p>")
    (www / "style.css").write_text("body{}")
    (www / "big").mkdir()
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (www / "big" / "blob.bin").write_bytes(blob)
    (www / "blob.bin").write_bytes(blob)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.gif").write_bytes(b"GIF89a")
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", www / "link.txt")
    os.symlink(tmp_path / "secret.txt", www / "safe" / "link.txt")
    server = portico(CONFIG)
    server.blob = blob  # type: ignore[attr-defined]
    return server


def get(server, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_file_with_headers(site) -> None:
    response, body = get(site, "/hello.txt")
    assert response.status == 200
    assert body == b"hello, world\n"
    assert response.getheader("Content-Type") == "text/plain"
    assert response.getheader("Content-Length") == "13"
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("Server", "").startswith("portico/")
    assert response.getheader("Date", "").endswith("GMT")
    etag = response.getheader("ETag")
    assert etag and etag.startswith('"') and etag.endswith('-d"')
    assert response.getheader("Last-Modified", "").endswith("GMT")


def test_mime_types(site) -> None:
    assert get(site, "/page.html")[0].getheader("Content-Type") == "text/html"
    assert get(site, "/style.css")[0].getheader("Content-Type") == "text/css"
    assert get(site, "/blob.bin")[0].getheader("Content-Type") == "application/octet-stream"
    assert get(site, "/types/f.sp")[0].getheader("Content-Type") == "text/x-special"
    assert get(site, "/types/f.unknown")[0].getheader("Content-Type") == "text/x-default"


def test_head_has_no_body(site) -> None:
    data = raw_request(
        site.port, b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(data)
    assert status == 200
    assert headers["content-length"] == "13"
    assert body == b""


def test_not_found_and_method_not_allowed(site) -> None:
    assert get(site, "/missing.txt")[0].status == 404
    response, body = get(site, "/hello.txt", method="POST")
    assert response.status == 405
    assert b"405 Not Allowed" in body or b"405 Method Not Allowed" in body
    assert "open()" in (Path(site.directory) / "error.log").read_text()


def test_conditional_requests(site) -> None:
    response, _ = get(site, "/hello.txt")
    etag = response.getheader("ETag")
    modified = response.getheader("Last-Modified")
    assert get(site, "/hello.txt", {"If-None-Match": etag})[0].status == 304
    assert get(site, "/hello.txt", {"If-None-Match": '"other"'})[0].status == 200
    assert get(site, "/hello.txt", {"If-Modified-Since": modified})[0].status == 304
    assert (
        get(site, "/hello.txt", {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})[0].status
        == 200
    )
    assert get(site, "/hello.txt", {"If-Match": '"other"'})[0].status == 412
    not_modified, body = get(site, "/hello.txt", {"If-None-Match": etag})
    assert body == b"" and not_modified.getheader("ETag") == etag


def test_changed_file_is_served_fresh(site, tmp_path: Path) -> None:
    path = tmp_path / "www" / "hello.txt"
    first = get(site, "/hello.txt")
    path.write_text("changed content!")
    os.utime(path, (1_000_000, 1_000_000))
    second = get(site, "/hello.txt")
    assert second[1] == b"changed content!"
    assert first[0].getheader("ETag") != second[0].getheader("ETag")


def test_ranges(site) -> None:
    response, body = get(site, "/hello.txt", {"Range": "bytes=0-4"})
    assert response.status == 206
    assert body == b"hello"
    assert response.getheader("Content-Range") == "bytes 0-4/13"
    response, body = get(site, "/hello.txt", {"Range": "bytes=-6"})
    assert (response.status, body) == (206, b"world\n")
    response, body = get(site, "/hello.txt", {"Range": "bytes=7-"})
    assert (response.status, body) == (206, b"world\n")
    response, _ = get(site, "/hello.txt", {"Range": "bytes=100-200"})
    assert response.status == 416
    assert response.getheader("Content-Range") == "bytes */13"
    # several ranges: the whole file
    response, body = get(site, "/hello.txt", {"Range": "bytes=0-1,3-4"})
    assert (response.status, body) == (200, b"hello, world\n")
    # If-Range with a stale validator: the whole file
    response, body = get(site, "/hello.txt", {"Range": "bytes=0-4", "If-Range": '"stale"'})
    assert (response.status, len(body)) == (200, 13)


def test_large_file_streams_whole_and_in_ranges(site) -> None:
    blob = site.blob
    for path in ("/blob.bin", "/big/blob.bin"):  # sendfile on, then off
        response, body = get(site, path)
        assert response.status == 200
        assert body == blob
        first, last = 1_000_000, 2_500_000
        response, body = get(site, path, {"Range": f"bytes={first}-{last}"})
        assert response.status == 206
        assert body == blob[first : last + 1]


def test_large_file_to_a_slow_reader(site) -> None:
    # the socket buffers fill up and the pump has to wait for the client, repeatedly
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
        s.sendall(b"GET /blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < len(site.blob):
            time.sleep(0.002)
            chunk = s.recv(256 * 1024)
            assert chunk
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        while len(body) < len(site.blob):
            body += s.recv(256 * 1024)
        assert head.startswith(b"HTTP/1.1 200 ") and body == site.blob
        # the connection is still usable afterwards
        s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2] == b"hello, world\n"


def test_index_and_directory_redirect(site) -> None:
    response, body = get(site, "/")
    assert (response.status, body) == (200, b"<h1>home</h1>")
    response, body = get(site, "/dir/")
    assert (response.status, body) == (200, b"dir index")
    response, _ = get(site, "/dir?a=1")
    assert response.status == 301
    assert response.getheader("Location") == f"http://127.0.0.1:{site.port}/dir/?a=1"
    # a file name with a trailing slash is no file: try_files falls back, as nginx does
    response, body = get(site, "/spa/app.js/")
    assert (response.status, body) == (200, b"spa index")


def test_directory_without_index_is_forbidden(site) -> None:
    response, _ = get(site, "/big/")
    assert response.status == 403


def test_autoindex(site) -> None:
    response, body = get(site, "/listing/")
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/html")
    text = body.decode()
    assert "<title>Index of /listing/</title>" in text
    assert '<a href="sub/">sub/</a>' in text
    assert "a &lt;b&gt;.txt" in text and "a%20%3Cb%3E.txt" in text
    assert ".hidden" not in text


def test_alias(site) -> None:
    response, body = get(site, "/pics/cat.gif")
    assert (response.status, body) == (200, b"GIF89a")
    assert response.getheader("Content-Type") == "image/gif"


def test_try_files(site) -> None:
    assert get(site, "/spa/app.js")[1] == b"js"
    assert get(site, "/spa/some/route")[1] == b"spa index"
    assert get(site, "/strict/none")[0].status == 418
    response, body = get(site, "/named/none")
    assert (response.status, body) == (200, b"fallback for /named/none")


def test_etag_off(site) -> None:
    response, _ = get(site, "/noetag/f.txt")
    assert response.status == 200 and response.getheader("ETag") is None


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/dir/..%2f..%2fsecret.txt",
        "/dir/%2E%2E/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/%00/../secret.txt",
        "//../secret.txt",
        "/dir/../../secret.txt",
    ],
)
def test_nothing_outside_root(site, target: str) -> None:
    data = raw_request(site.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=3)
    status, _, body = parse_response(data)
    assert status in (400, 404)
    assert b"top secret" not in body


def test_symlinks_follow_nginx_default_and_can_be_refused(site) -> None:
    # disable_symlinks off (the default): the link is followed, as nginx does
    assert get(site, "/link.txt")[1] == b"top secret"
    response, body = get(site, "/safe/link.txt")
    assert response.status == 403 and b"top secret" not in body


def test_keep_alive_serves_many_requests_on_one_connection(site) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5)
    for _ in range(20):
        conn.request("GET", "/hello.txt")
        response = conn.getresponse()
        assert response.read() == b"hello, world\n"
    conn.close()


def test_access_log_combined(site) -> None:
    get(site, "/hello.txt", {"User-Agent": 'ua "quoted"', "Referer": "http://r/"})
    site.stop()
    lines = (Path(site.directory) / "access.log").read_text().splitlines()
    assert lines
    line = lines[-1]
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /hello.txt HTTP/1.1" 200 13 "http://r/" "ua \\x22quoted\\x22"' in line


def test_alias_cannot_be_left_through_a_prefix_without_slash(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "cat.gif").write_bytes(b"GIF89a")
    (tmp_path / "data" / "secret.txt").write_text("top secret")
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port};\n"
        "  location /img {{ alias {root}/data/images/; }} }} }}"
    )
    assert get(server, "/img/cat.gif")[1] == b"GIF89a"
    response, body = get(server, "/img../secret.txt")
    assert response.status == 404 and b"top secret" not in body


def test_an_error_page_is_never_304_or_206(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "404.html").write_text("not here")
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; root {root}/www;\n"
        "  error_page 404 /404.html; }} }}"
    )
    page, _ = get(server, "/404.html")
    validators = {
        "If-None-Match": page.getheader("ETag"),
        "If-Modified-Since": page.getheader("Last-Modified"),
    }
    for name, value in validators.items():
        response, body = get(server, "/missing", {name: value})
        assert (response.status, body) == (404, b"not here"), name
    response, body = get(server, "/missing", {"Range": "bytes=0-3"})
    assert (response.status, body) == (404, b"not here")


def test_try_files_sends_any_method_to_its_fallback(tmp_path: Path, portico) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "www").mkdir()
    server = portico(
        "events {{}} http {{ server {{ listen 127.0.0.1:{port}; root {root}/www;\n"
        "  location / {{ try_files $uri @app; }}\n"
        '  location @app {{ return 200 "app saw $request_method"; }} }} }}'
    )
    response, body = get(server, "/form", method="POST")
    assert (response.status, body) == (200, b"app saw POST")

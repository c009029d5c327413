"""Request-target splitting, nginx path normalisation and path quoting."""

from __future__ import annotations

import os

import pytest

from portico.errors import RemoteProtocolError
from portico.http.uri import normalize_path, quote_path, split_target, target_authority

# --- split_target ----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/index.html", b"/index.html", b""),
        (b"/a?b=1&c=2", b"/a", b"b=1&c=2"),
        (b"/a?", b"/a", b""),
        (b"/a?b?c", b"/a", b"b?c"),  # '?' is ordinary inside the query
        (b"/a%3Fb?x", b"/a%3Fb", b"x"),  # an encoded '?' stays in the path, raw
        (b"/a#frag", b"/a", b""),
        (b"/a?q#frag", b"/a", b"q"),
        (b"//double", b"//double", b""),
        # absolute-form
        (b"http://example.com/p?q=1", b"/p", b"q=1"),
        (b"http://example.com:8080/p/q", b"/p/q", b""),
        (b"https://example.com/", b"/", b""),
        (b"http://example.com", b"/", b""),
        (b"http://example.com?q", b"/", b"q"),
        (b"http://example.com#f", b"/", b""),
        (b"HTTP://Example.COM/P", b"/P", b""),
        (b"http://[::1]:80/x", b"/x", b""),
    ],
)
def test_split_target(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize(
    "target",
    [
        b"*",
        b"",
        b"index.html",
        b"example.com:443",  # authority-form (CONNECT)
        b"ftp://example.com/x",
        b"http:/x",
        b"http://",
        b"http:///path",
        b"http://user:pw@example.com/",
        b"http://user@example.com",
        b"?q",
    ],
)
def test_split_target_rejects(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        split_target(target)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        (b"/p", None),
        (b"http://example.com/p", b"example.com"),
        (b"http://example.com:8080", b"example.com:8080"),
        (b"https://h?q", b"h"),
        (b"http://[::1]:80/x", b"[::1]:80"),
    ],
)
def test_target_authority(target: bytes, authority: bytes | None) -> None:
    assert target_authority(target) == authority


def test_target_authority_rejects_what_split_target_rejects() -> None:
    for target in (b"*", b"host:443", b"http://u@h/"):
        with pytest.raises(RemoteProtocolError):
            target_authority(target)


# --- normalize_path --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # fast path: already normal
        (b"/", "/"),
        (b"/index.html", "/index.html"),
        (b"/a/b/", "/a/b/"),
        (b"/a.b/c..d/e.", "/a.b/c..d/e."),
        (b"/a\\..\\b", "/a\\..\\b"),  # backslash is an ordinary character
        (b"/a;b=c", "/a;b=c"),
        # dot segments
        (b"/a/./b", "/a/b"),
        (b"/./a", "/a"),
        (b"/a/.", "/a/"),
        (b"/a/..", "/"),
        (b"/a/../", "/"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/../c", "/a/c"),
        (b"/a/b/../../c", "/c"),
        (b"/.", "/"),
        (b"/./", "/"),
        (b"/.hidden", "/.hidden"),
        (b"/a/.hidden/", "/a/.hidden/"),
        (b"/a/...", "/a/..."),  # three dots is a name
        (b"/a/..b", "/a/..b"),
        (b"/a/b..", "/a/b.."),
        # slashes merged
        (b"//", "/"),
        (b"//a//b", "/a/b"),
        (b"/a//", "/a/"),
        (b"/a///b/", "/a/b/"),
        (b"/a//..", "/"),
        # percent-decoding, before segments are resolved
        (b"/%41%62c", "/Abc"),
        (b"/a%20b", "/a b"),
        (b"/a%2fb", "/a/b"),
        (b"/a%2Fb", "/a/b"),
        (b"/a%3fb", "/a?b"),
        (b"/a%25b", "/a%b"),  # decoded once, not twice
        (b"/a%252e%252e/", "/a%2e%2e/"),
        (b"/%2e/a", "/a"),
        (b"/a/%2e", "/a/"),
        (b"/a/%2e%2e", "/"),
        (b"/a/b/%2E%2E/c", "/a/c"),
        (b"/a/.%2e/c", "/c"),
        (b"/a/%2e./c", "/c"),
        (b"/a%2f%2fb", "/a/b"),
        (b"/a/b/%2e%2e%2f%2e%2e/x", "/x"),  # decoded: /a/b/../../x
        (b"/%5c", "/\\"),
        (b"/%c3%a9t%C3%A9", "/\u00e9t\u00e9"),
        (b"/\xc3\xa9", "/\u00e9"),  # raw UTF-8 (as some clients send)
    ],
)
def test_normalize_path(raw: bytes, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # traversal above the root, plain and encoded
        b"/..",
        b"/../",
        b"/../etc/passwd",
        b"/a/../../x",
        b"/a/b/../../../x",
        b"/%2e%2e/x",
        b"/%2E%2E/x",
        b"/.%2e/x",
        b"/%2e./x",
        b"/..%2f..%2fetc",
        b"/..%2Fetc%2Fpasswd",
        b"/a/%2e%2e%2f%2e%2e/x",
        b"/a/%2e%2e/%2e%2e/x",
        b"//..//",
        b"//../etc/passwd",
        b"/./../x",
        b"/a/./../../x",
        # NUL, encoded or not
        b"/a%00",
        b"/a%00.html",
        b"/a\x00b",
        # invalid escapes
        b"/%zz",
        b"/%4",
        b"/%",
        b"/a%",
        b"/%g1",
        b"/%1g",
        b"/%+1",
        b"/% 1",
        b"/%%41",
        # not a path
        b"",
        b"a/b",
        b"%2f",
    ],
)
def test_normalize_path_rejects(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        normalize_path(raw)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"//a//b", "//a//b"),
        (b"/a//", "/a//"),
        (b"/a//b/./c", "/a//b/c"),
        (b"/a//..", "/a/"),  # ".." removes the empty segment
        (b"/a%2f%2fb", "/a//b"),
        (b"//..//", "//"),
    ],
)
def test_normalize_path_without_merge_slashes(raw: bytes, expected: str) -> None:
    assert normalize_path(raw, merge_slashes=False) == expected


def test_normalize_path_rejects_climb_without_merge_slashes() -> None:
    with pytest.raises(RemoteProtocolError):
        normalize_path(b"/../x", merge_slashes=False)


@pytest.mark.parametrize(
    "raw",
    [b"/caf%C3%A9/%E2%9C%93", b"/%ff%fe", b"/\xff\xfe/x", b"/mixed/%E2%9Cx", b"/%80"],
)
def test_normalize_path_unicode_round_trip(raw: bytes) -> None:
    path = normalize_path(raw)
    assert isinstance(path, str)
    decoded = raw.replace(b"%C3%A9", b"\xc3\xa9").replace(b"%E2%9C%93", b"\xe2\x9c\x93")
    decoded = decoded.replace(b"%E2%9C", b"\xe2\x9c").replace(b"%ff%fe", b"\xff\xfe")
    decoded = decoded.replace(b"%80", b"\x80")
    assert os.fsencode(path) == decoded
    # ...and quoting it back gives a target that normalises to the same path.
    assert normalize_path(quote_path(path).encode("ascii")) == path


def test_normalize_path_matches_unicode_regexes() -> None:
    assert normalize_path(b"/caf%C3%A9") == "/caf\u00e9"
    assert normalize_path(b"/%E2%9C%93/") == "/\u2713/"


# --- quote_path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/a/b.html", "/a/b.html"),
        ("/Az09-._~/", "/Az09-._~/"),
        ("/a b", "/a%20b"),
        ("/a?b", "/a%3Fb"),
        ("/a#b", "/a%23b"),
        ("/100%", "/100%25"),
        ("/a:b", "/a%3Ab"),
        ("/<script>&\"'", "/%3Cscript%3E%26%22%27"),
        ("/\u00e9", "/%C3%A9"),
        ("/\u2713", "/%E2%9C%93"),
        ("/\udcff", "/%FF"),  # a surrogate escape is its original byte
        ("/a\\b", "/a%5Cb"),
    ],
)
def test_quote_path(path: str, expected: str) -> None:
    assert quote_path(path) == expected


@pytest.mark.parametrize("path", ["/a b/c?d#e%f", "/\u00e9\u2713/x/", "/\udcff\udc80", "/a/.x"])
def test_quote_path_round_trips_through_normalize(path: str) -> None:
    assert normalize_path(quote_path(path).encode("ascii")) == path

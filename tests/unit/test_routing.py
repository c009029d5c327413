"""Server names and locations are chosen in nginx's order."""

from __future__ import annotations

import pytest

from portico.config import loader
from portico.routing import LocationTree, ServerSelector, normalize_host


class Named:
    def __init__(self, label: str, *names: str) -> None:
        self.label = label
        self.names = names


def selector(*servers: Named, default: Named | None = None) -> ServerSelector[Named]:
    return ServerSelector(list(servers), default or servers[0])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:80", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("a_b-c.test:", "a_b-c.test"),
        # what nginx refuses (400): it could reach a path through $host
        ("a/../../data", None),
        ("..", None),
        (".example.com", None),
        ("a..b", None),
        ("a b", None),
        ("a\\b", None),
        ("a\x00b", None),
        ("host:port", None),
        ("[::1", None),
    ],
)
def test_normalize_host(host: str, expected: str | None) -> None:
    assert normalize_host(host) == expected


def test_server_name_precedence() -> None:
    fallback = Named("fallback", "_")
    exact = Named("exact", "www.example.com")
    head_long = Named("head_long", "*.mail.example.com")
    head_short = Named("head_short", "*.example.com")
    tail = Named("tail", "www.example.*")
    regex = Named("regex", r"~^(?<user>\w+)\.users\.example\.org$")
    regex2 = Named("regex2", r"~\.org$")
    dot = Named("dot", ".example.net")
    s = selector(fallback, exact, head_long, head_short, tail, regex, regex2, dot)
    cases = {
        "www.example.com": "exact",  # exact beats every wildcard
        "a.mail.example.com": "head_long",  # longest leading wildcard
        "mail.example.com": "head_short",
        "www.example.org": "tail",  # leading wildcards before trailing ones
        "bob.users.example.org": "regex",  # regexes after wildcards, in order
        "other.org": "regex2",
        "example.net": "dot",  # ".example.net" is also the exact name
        "a.example.net": "dot",
        "unknown.test": "fallback",
        "": "fallback",
    }
    for host, label in cases.items():
        assert s.select(host)[0].label == label, host
    _, match = s.select("bob.users.example.org")
    assert match is not None and match.group("user") == "bob"


def test_default_server_is_chosen_when_nothing_matches() -> None:
    first = Named("first", "a.test")
    marked = Named("marked", "b.test")
    s = selector(first, marked, default=marked)
    assert s.select("c.test")[0].label == "marked"
    assert s.select("a.test")[0].label == "first"


def test_empty_name_matches_requests_without_host() -> None:
    first = Named("first", "a.test")
    no_host = Named("no_host", "")
    assert selector(first, no_host).select("")[0].label == "no_host"


def tree(text: str) -> LocationTree:
    config = loader.load_text("events {} http { server { " + text + " } }", "/t.conf", "/")
    return LocationTree(config.http.servers[0].locations)


def find(t: LocationTree, uri: str) -> str | None:
    location, _ = t.find(uri)
    return location.name if location else None


def test_location_order_from_the_nginx_docs() -> None:
    # the example of nginx's "location" documentation
    t = tree("""
        location = / { }
        location / { }
        location /documents/ { }
        location ^~ /images/ { }
        location ~* \\.(gif|jpg|jpeg)$ { }
    """)
    assert find(t, "/") == "= /"
    assert find(t, "/index.html") == "/"
    assert find(t, "/documents/document.html") == "/documents/"
    assert find(t, "/images/1.gif") == "^~ /images/"
    assert find(t, "/documents/1.jpg") == "~* \\.(gif|jpg|jpeg)$"


def test_regexes_in_file_order_and_case() -> None:
    t = tree("""
        location ~ \\.php$ { }
        location ~ /a/.*\\.php$ { }
        location ~* \\.PNG$ { }
        location ~ \\.JPG$ { }
    """)
    assert find(t, "/a/x.php") == "~ \\.php$"  # the first regex wins, not the longest
    assert find(t, "/x.png") == "~* \\.PNG$"
    assert find(t, "/x.jpg") is None  # "~" is case-sensitive
    assert find(t, "/nothing") is None


def test_longest_prefix_wins_whatever_the_order() -> None:
    t = tree("location /a { } location /a/b/c { } location /a/b { }")
    assert find(t, "/a/b/cd") == "/a/b/c"
    assert find(t, "/a/bx") == "/a/b"
    assert find(t, "/ab") == "/a"


def test_nested_locations() -> None:
    t = tree("""
        location /app/ {
            location /app/static/ { }
            location ~ \\.py$ { }
        }
        location ~ \\.(py|txt)$ { }
    """)
    assert find(t, "/app/static/x.css") == "/app/static/"
    # a nested regex is tried before the outer regexes
    assert find(t, "/app/x.py") == "~ \\.py$"
    # no nested regex matches: the outer one does
    assert find(t, "/app/x.txt") == "~ \\.(py|txt)$"
    assert find(t, "/app/x") == "/app/"


def test_caret_tilde_stops_regexes() -> None:
    t = tree("location ^~ /static/ { } location ~ \\.css$ { }")
    assert find(t, "/static/a.css") == "^~ /static/"
    assert find(t, "/other/a.css") == "~ \\.css$"


def test_named_locations_are_not_matched() -> None:
    t = tree("location @fallback { } location / { }")
    assert find(t, "/@fallback") == "/"
    assert t.named("fallback").name == "@fallback"


def test_regex_captures_are_returned() -> None:
    t = tree("location ~ ^/u/(?<user>\\w+)/(\\d+)$ { }")
    location, match = t.find("/u/bob/42")
    assert location is not None
    assert match is not None and match.group("user") == "bob" and match.group(2) == "42"


def test_a_uri_asked_again_finds_the_same_location_and_captures() -> None:
    t = tree("location / { } location ~ ^/u/(\\w+)$ { } location = /x { }")

    def answers() -> list[tuple[str | None, str | None]]:
        found = [t.find(uri) for uri in ("/", "/u/ann", "/u/bob", "/x", "/x/", "/u/" + "a" * 600)]
        return [
            (location.name if location else None, match.group(1) if match else None)
            for location, match in found
        ]

    first = answers()
    assert first[1] == ("~ ^/u/(\\w+)$", "ann") and first[2] == ("~ ^/u/(\\w+)$", "bob")
    assert answers() == first  # from the memo now (all but the long URI)


def test_the_memo_of_found_uris_stays_bounded() -> None:
    from portico.routing import FOUND_MEMO_SIZE

    t = tree("location / { }")
    for i in range(FOUND_MEMO_SIZE + 10):
        assert find(t, f"/{i}") is not None
    assert len(t._found) <= FOUND_MEMO_SIZE
    long_uri = "/" + "a" * 600
    assert find(t, long_uri) is not None
    assert long_uri not in t._found  # long URIs are matched, never kept

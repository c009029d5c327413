"""The config layer: tokens, blocks, includes, the directive table and the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from portico.config import directives, loader
from portico.config.syntax import parse_file, parse_text, tokenize
from portico.config.units import parse_size, parse_time
from portico.errors import ConfigError, ConfigErrors


def load(text: str, tmp_path: Path | None = None):
    path = str(tmp_path / "portico.conf") if tmp_path else "/etc/test.conf"
    if "events" not in text:
        text = "events {} " + text  # on the first line: line numbers stay as written
    return loader.load_text(text, path, str(tmp_path or "/etc"))


def errors_of(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(text, tmp_path)
    return [str(e) for e in info.value.errors]


# -- units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("10", 10), ("10k", 10240), ("10K", 10240), ("1m", 1 << 20), ("2g", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h 30m", 5400.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
    ],
)
def test_times(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "k", "10x", "-1", "1.5k", "10 k"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1s", "1.5s", "ms"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


# -- tokens and blocks ----------------------------------------------------------------


def test_tokens_know_their_lines() -> None:
    tokens = list(tokenize('a b;\n# comment ; {\nc "d e" {\n}\n', "f"))
    assert [(t.text, t.line) for t in tokens] == [
        ("a", 1),
        ("b", 1),
        (";", 1),
        ("c", 3),
        ("d e", 3),
        ("{", 3),
        ("}", 4),
    ]


def test_quotes_and_escapes() -> None:
    (node,) = parse_text(r"""x "a\"b" 'c\'d' "e\nf" "g\qh" a#b;""", "f")
    assert node.args == ('a"b', "c'd", "e\nf", "g\\qh", "a#b")


def test_variable_braces_are_not_blocks() -> None:
    (node,) = parse_text("return 200 ${host}x;", "f")
    assert node.args == ("200", "${host}x")


def test_quoted_brace_is_a_word() -> None:
    (node,) = parse_text('return 200 "{";', "f")
    assert node.args == ("200", "{")
    assert not node.is_block


def test_nested_blocks() -> None:
    (http,) = parse_text("http { server { listen 80; location / { root /x; } } }", "f")
    (server,) = http.children
    assert [c.name for c in server.children] == ["listen", "location"]
    assert server.children[1].children[0].args == ("/x",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http {\n", 'f:1: unexpected end of file, expecting "}"'),
        ("}\n", 'f:1: unexpected "}"'),
        ("a b\n", 'f:1: unexpected end of file, expecting ";" or "}"'),
        ('a "b;\n', "f:1: unexpected end of file, expecting a closing quote"),
        ("http { a }\n", 'f:1: unexpected "}", expecting ";"'),
        ("\n\n;", 'f:3: unexpected ";"'),
        ('a "b"c;', 'f:1: unexpected "c" after a quoted string'),
    ],
)
def test_syntax_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "f")
    assert str(info.value) == message


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("b 2;\n")
    (tmp_path / "conf.d" / "a.conf").write_text("a 1;\ninclude ../more/*.conf;\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "c.conf").write_text("\n\nc 3;\n")
    main = tmp_path / "main.conf"
    main.write_text("x { include conf.d/*.conf; }\n")
    (x,) = parse_file(str(main))
    assert [(n.name, Path(n.file).name, n.line) for n in x.children] == [
        ("a", "a.conf", 1),
        ("c", "c.conf", 3),
        ("b", "b.conf", 1),
    ]


def test_missing_include_is_an_error_but_an_empty_glob_is_not(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    main.write_text("include nothing/*.conf;\ninclude missing.conf;\n")
    with pytest.raises(ConfigError) as info:
        parse_file(str(main))
    assert str(info.value).startswith(f"{main}:2: cannot open included file")


def test_include_loop_is_caught(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    main.write_text("include main.conf;\n")
    with pytest.raises(ConfigError, match="include loop"):
        parse_file(str(main))


# -- the directive table ------------------------------------------------------------


MINIMAL = "events {} http { server { listen 127.0.0.1:8080; } }"


def test_defaults() -> None:
    config = load(MINIMAL)
    assert config.worker_processes == 1
    assert config.worker_connections == 1024
    (server,) = config.http.servers
    values = server.values
    assert values["keepalive_timeout"] == 75.0
    assert values["client_max_body_size"] == 1 << 20
    assert values["index"] == ("index.html",)
    assert values["root"] == "/etc/html"  # relative to the prefix
    assert values["types"]["css"] == "text/css"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo bar;", '/etc/test.conf:1: unknown directive "foo"'),
        ("http { listen 80; }", '/etc/test.conf:1: "listen" directive is not allowed here'),
        (
            "worker_processes;",
            '/etc/test.conf:1: invalid number of arguments in "worker_processes" directive',
        ),
        (
            "worker_processes 1 2;",
            '/etc/test.conf:1: invalid number of arguments in "worker_processes" directive',
        ),
        (
            "worker_processes x;",
            '/etc/test.conf:1: invalid number "x" in "worker_processes" directive',
        ),
        (
            "http { keepalive_timeout 5x; }",
            '/etc/test.conf:1: invalid time "5x" (expected a '
            'number with an optional unit: ms, s, m, h, d, w, M, y) in "keepalive_timeout" '
            "directive",
        ),
        (
            "http { sendfile maybe; }",
            '/etc/test.conf:1: invalid value "maybe" in "sendfile" '
            'directive, it must be "on" or "off"',
        ),
        ("http;", '/etc/test.conf:1: directive "http" has no opening "{"'),
        ("pid x { }", '/etc/test.conf:1: directive "pid" is not terminated by ";"'),
        (
            "http { server { listen nowhere:80; } }",
            "/etc/test.conf:1: host not found in "
            '"nowhere:80" (use an IP address) of the "listen" directive',
        ),
        (
            "http { server { listen 127.0.0.1:99999; } }",
            '/etc/test.conf:1: invalid port in "127.0.0.1:99999" of the "listen" directive',
        ),
        ("http { return 200 $nope; }", '/etc/test.conf:1: "return" directive is not allowed here'),
        ("http { server { return 200 $nope; } }", '/etc/test.conf:1: unknown "nope" variable'),
        ("http { root /a; root /b; }", '/etc/test.conf:1: "root" directive is duplicate'),
        (
            "http { server { location ~ ( { } } }",
            '/etc/test.conf:1: invalid regex "(": missing ), unterminated subpattern at position 0',
        ),
        ("http { access_log /x nope; }", '/etc/test.conf: unknown log format "nope"'),
    ],
)
def test_directive_errors(text: str, message: str) -> None:
    assert message in errors_of(text)


def test_every_error_is_reported() -> None:
    text = "foo;\nhttp {\n  bar 1;\n  server {\n    listen 80 nonsense;\n  }\n}\nbaz;\n"
    assert errors_of(text) == [
        '/etc/test.conf:1: unknown directive "foo"',
        '/etc/test.conf:8: unknown directive "baz"',
        '/etc/test.conf:3: unknown directive "bar"',
        '/etc/test.conf:5: invalid parameter "nonsense"',
    ]


def test_inheritance_follows_nginx() -> None:
    config = load("""
        http {
            keepalive_timeout 10s;
            add_header X-A a;
            server {
                listen 8080;
                location / { keepalive_timeout 20s; }
                location /b { add_header X-B b; location /b/c { } }
            }
        }
    """)
    (server,) = config.http.servers
    root, b = server.locations
    assert server.values["keepalive_timeout"] == 10.0
    assert root.values["keepalive_timeout"] == 20.0
    assert b.values["keepalive_timeout"] == 10.0
    assert [h.name for h in root.values["add_header"]] == ["X-A"]
    # a block that sets a repeatable directive replaces the inherited list
    assert [h.name for h in b.values["add_header"]] == ["X-B"]
    assert [h.name for h in b.locations[0].values["add_header"]] == ["X-B"]


def test_listen_forms() -> None:
    config = load("""
        http { server {
            listen 8080; listen 127.0.0.1:81 default_server; listen [::1]:82;
            listen unix:/tmp/x.sock; listen *:83 backlog=10 reuseport; listen localhost:84;
        } }
    """)
    listens = config.http.servers[0].listens
    assert [(x.host, x.port, x.path) for x in listens] == [
        ("", 8080, None),
        ("127.0.0.1", 81, None),
        ("::1", 82, None),
        ("", 0, "/tmp/x.sock"),
        ("", 83, None),
        ("127.0.0.1", 84, None),
    ]
    assert listens[1].default_server
    assert listens[4].backlog == 10 and listens[4].reuseport
    assert [str(x) for x in listens[:4]] == [
        "*:8080",
        "127.0.0.1:81",
        "[::1]:82",
        "unix:/tmp/x.sock",
    ]


def test_duplicate_default_server() -> None:
    text = "http { server { listen 80 default_server; }\nserver { listen 80 default_server; } }"
    assert errors_of(text) == ["/etc/test.conf:2: a duplicate default server for *:80"]


def test_duplicate_location() -> None:
    text = "http { server {\nlocation /a { }\nlocation /a { } } }"
    assert errors_of(text) == ['/etc/test.conf:3: duplicate location "/a"']


def test_nested_location_must_be_inside_its_parent() -> None:
    text = "http { server {\nlocation /a {\nlocation /b { } } } }"
    assert errors_of(text) == ['/etc/test.conf:3: location "/b" is outside location "/a"']


def test_error_page_and_return_values() -> None:
    config = load("""
        http { server {
            error_page 404 500 =200 /err.html;
            return 301 https://$host$request_uri;
        } }
    """)
    values = config.http.servers[0].values
    (page,) = values["error_page"]
    assert page.codes == (404, 500) and page.response_status == 200
    assert values["return"].status == 301
    assert values["return"].body.source == "https://$host$request_uri"


def test_types_block_replaces_the_table() -> None:
    config = load("http { types { text/x-a a aa; } server { } }")
    assert dict(config.http.servers[0].values["types"]) == {"a": "text/x-a", "aa": "text/x-a"}


def test_events_section_is_required() -> None:
    with pytest.raises(ConfigErrors) as info:
        loader.load_text("http { }", "/etc/x.conf", "/etc")
    assert [str(e) for e in info.value.errors] == [
        '/etc/x.conf: no "events" section in configuration'
    ]
    with pytest.raises(ConfigErrors):
        loader.load_text("", "/etc/x.conf", "/etc")


def test_model_is_immutable() -> None:
    config = load(MINIMAL)
    with pytest.raises(AttributeError):
        config.worker_processes = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.http.servers[0].values["root"] = "/x"  # type: ignore[index]


def test_builtin_config_is_valid() -> None:
    config = loader.load(None)
    assert config.path == loader.BUILTIN_PATH
    assert [str(x) for x in config.listens] == [
        "127.0.0.1:8080",
        "127.0.0.1:8001",
        "127.0.0.1:8002",
    ]


def test_table_declares_context_docs_and_syntax() -> None:
    for directive in directives.all_directives():
        assert directive.doc, directive.name
        assert directive.syntax.startswith(directive.name), directive.name
        assert directive.contexts, directive.name

"""Directory listings in nginx's autoindex layout."""

from __future__ import annotations

import html

import pytest

from portico.static.autoindex import Entry, render_listing

MTIME = 1709547120.9  # 04-Mar-2024 10:12:00.9 UTC


def lines(uri: str, entries: list[Entry]) -> list[str]:
    body = render_listing(uri, entries).decode("utf-8", "surrogateescape")
    assert body.endswith("</pre><hr></body>\r\n</html>\r\n")
    return body.split("\r\n")[4:-3]  # the entry lines only


def test_whole_document() -> None:
    body = render_listing(
        "/dir/",
        [Entry("b.txt", False, 1234, MTIME), Entry("sub", True, 4096, MTIME)],
    )
    assert body == (
        b"<html>\r\n"
        b"<head><title>Index of /dir/</title></head>\r\n"
        b"<body>\r\n"
        b'<h1>Index of /dir/</h1><hr><pre><a href="../">../</a>\r\n'
        b'<a href="sub/">sub/</a>' + b" " * 46 + b" 04-Mar-2024 10:12                   -\r\n"
        b'<a href="b.txt">b.txt</a>' + b" " * 45 + b" 04-Mar-2024 10:12                1234\r\n"
        b"</pre><hr></body>\r\n"
        b"</html>\r\n"
    )


def test_empty_directory() -> None:
    assert render_listing("/", []) == (
        b"<html>\r\n<head><title>Index of /</title></head>\r\n<body>\r\n"
        b'<h1>Index of /</h1><hr><pre><a href="../">../</a>\r\n'
        b"</pre><hr></body>\r\n</html>\r\n"
    )


def test_line_layout() -> None:
    (line,) = lines("/", [Entry("file.txt", False, 42, MTIME)])
    assert (
        line
        == '<a href="file.txt">file.txt</a>' + " " * 42 + " 04-Mar-2024 10:12" + " " * 18 + "42"
    )
    # The date column starts at the same place whatever the name's length.
    visible = line.replace('<a href="file.txt">', "").replace("</a>", "")
    assert visible.index("04-Mar") == 51
    assert len(visible) == 50 + 1 + 17 + 1 + 19


def test_sizes_and_dates() -> None:
    entries = [
        Entry("zero", False, 0, 0.0),
        Entry("big", False, 12345678901234567, 951782399.0),
    ]
    out = lines("/", entries)
    assert out[0].endswith(" 28-Feb-2000 23:59   12345678901234567")
    assert out[1].endswith(" 01-Jan-1970 00:00 " + " " * 18 + "0")


def test_directories_first_then_bytewise_names() -> None:
    entries = [
        Entry("b", False, 1, MTIME),
        Entry("Z", False, 1, MTIME),
        Entry("a", True, 0, MTIME),
        Entry("\u00e9", False, 1, MTIME),
        Entry("A", True, 0, MTIME),
        Entry("a.txt", False, 1, MTIME),
        Entry("\udcff", False, 1, MTIME),  # a non-UTF-8 byte sorts as 0xff
    ]
    names = [line.split('"')[1] for line in lines("/", entries)]
    assert names == ["A/", "a/", "Z", "a.txt", "b", "%C3%A9", "%FF"]


@pytest.mark.parametrize(
    ("name", "href", "text"),
    [
        ("<script>alert(1)</script>", "%3Cscript%3Ealert%281%29%3C/script%3E", None),
        ("a&b", "a%26b", "a&amp;b"),
        ('say "hi"', "say%20%22hi%22", "say &quot;hi&quot;"),
        ("it's", "it%27s", "it's"),
        ("what?", "what%3F", "what?"),
        ("#1", "%231", "#1"),
        ("a b", "a%20b", "a b"),
        ("100%", "100%25", "100%"),
        ("javascript:alert(1)", "javascript%3Aalert%281%29", "javascript:alert(1)"),
        ("caf\u00e9 \u2713", "caf%C3%A9%20%E2%9C%93", "caf\u00e9 \u2713"),
    ],
)
def test_escaping(name: str, href: str, text: str | None) -> None:
    (line,) = lines("/", [Entry(name, False, 1, MTIME)])
    assert line.startswith(f'<a href="{href}">')
    if text is not None:
        assert line.startswith(f'<a href="{href}">{text}</a>')
    assert "<script" not in line
    # What the browser shows pads the name to 50 columns whatever the escaping.
    shown = html.unescape(line.removeprefix(f'<a href="{href}">').replace("</a>", "", 1))
    assert shown.startswith(name)
    assert shown.index(" 04-Mar") == 50


def test_script_name_is_escaped_in_text() -> None:
    (line,) = lines("/", [Entry("<script>", False, 1, MTIME)])
    assert line.startswith('<a href="%3Cscript%3E">&lt;script&gt;</a>')


def test_title_is_escaped() -> None:
    body = render_listing('/<b>&"x"/', [])
    assert b"<title>Index of /&lt;b&gt;&amp;&quot;x&quot;/</title>" in body
    assert b"<h1>Index of /&lt;b&gt;&amp;&quot;x&quot;/</h1>" in body


def test_unicode_and_undecodable_names_pass_through_as_bytes() -> None:
    body = render_listing("/caf\u00e9/", [Entry("\udcff.bin", False, 1, MTIME)])
    assert "Index of /caf\u00e9/".encode() in body
    assert b'<a href="%FF.bin">\xff.bin</a>' in body


def test_long_names_are_truncated() -> None:
    name = "x" * 51
    (line,) = lines("/", [Entry(name, False, 1, MTIME)])
    assert line.startswith(f'<a href="{name}">{"x" * 47}..&gt;</a> 04-Mar-2024 10:12')
    # Exactly 50 fits, untruncated and unpadded.
    (line,) = lines("/", [Entry("y" * 50, False, 1, MTIME)])
    assert line.startswith(f'<a href="{"y" * 50}">{"y" * 50}</a> 04-Mar')
    # Truncation counts characters, not bytes, and escapes only what is shown.
    e_acute = "\u00e9"
    (line,) = lines("/", [Entry(e_acute * 60, False, 1, MTIME)])
    assert f">{e_acute * 47}..&gt;</a> 04-Mar" in line
    (line,) = lines("/", [Entry("&" * 60, False, 1, MTIME)])
    assert f">{'&amp;' * 47}..&gt;</a> 04-Mar" in line


def test_directory_slash_only_when_it_fits() -> None:
    out = lines("/", [Entry("d" * 49, True, 0, MTIME), Entry("e" * 50, True, 0, MTIME)])
    assert out[0].startswith(f'<a href="{"d" * 49}/">{"d" * 49}/</a> 04-Mar')
    assert out[1].startswith(f'<a href="{"e" * 50}/">{"e" * 50}</a> 04-Mar')  # as nginx
    assert out[0].endswith(" " * 18 + "-")


def test_entry_is_frozen() -> None:
    entry = Entry("a", False, 1, 0.0)
    with pytest.raises(AttributeError):
        entry.name = "b"  # type: ignore[misc]
    assert not hasattr(entry, "__dict__")


def test_accepts_any_iterable() -> None:
    gen = (Entry(n, False, 1, MTIME) for n in ("b", "a"))
    assert [line.split('"')[1] for line in lines("/", list(gen))] == ["a", "b"]
    gen = (Entry(n, False, 1, MTIME) for n in ("b", "a"))
    assert render_listing("/", gen).count(b"<a href=") == 3

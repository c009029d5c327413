"""Access log escaping (escape=default): printable ASCII as is, everything else \\xHH."""

from __future__ import annotations

import pytest

from portico.logs import escape_default


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("", "-"),
        ("/plain?a=1&b=~", "/plain?a=1&b=~"),
        ('say "hi"\\', "say \\x22hi\\x22\\x5C"),
        ("line\nbreak\x7f", "line\\x0Abreak\\x7F"),
        ("caf\u00e9", "caf\\xE9"),  # latin-1: its byte
        ("\u20ac", "\\xE2\\x82\\xAC"),  # beyond: its UTF-8 bytes, never raw
        ("/\udcff", "/\\xFF"),  # a byte that was not UTF-8, kept by surrogateescape
    ],
)
def test_escape_default(value: str, written: str) -> None:
    assert escape_default(value) == written

"""Directory listings in the exact HTML shape of nginx's ``autoindex on;``.

Theory of operation
-------------------
The caller reads the directory (and decides whether dot-files are shown);
:func:`render_listing` only formats. Scripts and people that scrape nginx
listings rely on its layout, so this follows ``ngx_http_autoindex_html()``
with ``autoindex_exact_size on`` and ``autoindex_localtime off`` (its
defaults)::

    <a href="NAME">NAME</a>_______________________ dd-Mon-YYYY HH:MM ______SIZE

* entries are sorted directories first, then by name byte-wise (``strcmp``);
* the link text is padded with spaces to 50 columns; a longer name is cut to
  47 characters followed by ``..>``; directories get a ``/`` if it fits;
* the date is the mtime in UTC; the size is right-aligned in 19 columns, or
  ``-`` for a directory;
* names are HTML-escaped in the text and percent-encoded in the ``href``
  (:func:`portico.http.uri.quote_path`), so no file name can inject markup
  or turn a relative link into ``javascript:`` or another scheme.

Columns count characters, not bytes, as nginx does for UTF-8 names; a byte
that is not UTF-8 (a surrogate escape in the ``str``) counts as one column.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from portico.http.uri import quote_path
from portico.static.conditional import EPOCH, MONTHS

__all__ = ["Entry", "render_listing"]

NAME_COLUMNS: Final = 50  # NGX_HTTP_AUTOINDEX_NAME_LEN
# nginx's ngx_escape_html() set; "'" needs no escape in text or in our
# double-quoted attributes.
_HTML_ESCAPES: Final = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: ``name`` as ``os.fsdecode`` gives it, ``mtime`` in Unix seconds."""

    name: str
    is_dir: bool
    size: int
    mtime: float


def _escape_html(text: str) -> str:
    return text.translate(_HTML_ESCAPES)


def _sort_key(entry: Entry) -> tuple[bool, bytes]:
    # Directories first, then strcmp() order: compare the bytes on disk, which
    # for valid UTF-8 is also code point order.
    return (not entry.is_dir, entry.name.encode("utf-8", "surrogateescape"))


def _line(entry: Entry) -> str:
    href = quote_path(entry.name) + ("/" if entry.is_dir else "")
    name = entry.name
    if len(name) > NAME_COLUMNS:
        text = _escape_html(name[: NAME_COLUMNS - 3]) + "..&gt;</a>"
    else:
        width = len(name)
        text = _escape_html(name)
        if entry.is_dir and width < NAME_COLUMNS:
            text += "/"
            width += 1
        text += "</a>" + " " * (NAME_COLUMNS - width)
    t = EPOCH + datetime.timedelta(seconds=int(entry.mtime // 1))
    date = f"{t.day:02d}-{MONTHS[t.month - 1]}-{t.year} {t.hour:02d}:{t.minute:02d}"
    size = "-" if entry.is_dir else str(entry.size)
    return f'<a href="{href}">{text} {date} {size:>19}\r\n'


def render_listing(uri_path: str, entries: Iterable[Entry]) -> bytes:
    """The HTML listing of the directory at ``uri_path`` (decoded, ending in ``/``).

    Shows every entry given, in nginx's order. Returns UTF-8 bytes (bytes of
    names that are not UTF-8 pass through as they are on disk); the caller
    sends them as ``text/html``.
    """
    title = _escape_html(uri_path)
    parts = [
        f"<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n"
        f'<h1>Index of {title}</h1><hr><pre><a href="../">../</a>\r\n'
    ]
    parts.extend(_line(entry) for entry in sorted(entries, key=_sort_key))
    parts.append("</pre><hr></body>\r\n</html>\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")

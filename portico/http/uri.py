"""Request targets: split them, normalise their path the way nginx does, quote paths back.

Theory of operation
-------------------
A request line carries a raw ``request-target`` (bytes). Three steps turn it into
the path that routing and the file system see:

1. :func:`split_target` separates the raw path from the raw query, and accepts
   the absolute form (``http://host/p?q``) that proxies and some clients send.
2. :func:`normalize_path` percent-decodes the path, then resolves ``.`` and ``..``
   segments and merges slashes *on the decoded bytes*. Decoding first is what
   nginx does and it is the safe order: ``/%2e%2e/`` and ``/..%2f`` are ``..``
   and ``/`` by the time segments are resolved, so no encoding smuggles a
   traversal past the resolver. A ``..`` that would climb above ``/`` is a 400,
   never silently clamped, and so is a NUL byte (it would truncate a C path).
3. :func:`quote_path` encodes a decoded path back for a ``Location`` header or
   an ``href``.

The normalised path is a ``str`` decoded from UTF-8 with ``surrogateescape``:
regexes in ``location ~ ...`` can match non-ASCII characters, and bytes that are
not UTF-8 survive the trip, so ``os.fsencode(path)`` gives back exactly the
decoded bytes. The query stays raw bytes: it is passed through, not interpreted.

Nothing here does I/O; everything raises :class:`RemoteProtocolError` (400) on a
target the client should not have sent.
"""

from __future__ import annotations

import re
import urllib.parse

from portico.errors import RemoteProtocolError
from portico.memo import MEMO_KEY_MAX, remember

__all__ = [
    "escape_uri",
    "normalize_path",
    "parse_target",
    "quote_path",
    "split_target",
    "target_authority",
]

# RFC 9112 §3.2 (request-target) and RFC 3986:
#
#   request-target = origin-form / absolute-form / authority-form / asterisk-form
#   origin-form    = absolute-path [ "?" query ]
#   absolute-form  = absolute-URI
#   absolute-URI   = scheme ":" hier-part [ "?" query ]
#   hier-part      = "//" authority path-abempty / ...
#   path-abempty   = *( "/" segment )
#   asterisk-form  = "*"
#
# authority-form is CONNECT's and asterisk-form is server-wide OPTIONS: neither
# names a resource, so the caller deals with them before asking for a path.
# A fragment ("#...") is not part of any of these forms; nginx ends the URI at
# '#', and so do we (on the path and the query alike).

_SCHEMES = (b"http://", b"https://")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request-target into ``(raw_path, raw_query)``, without the ``?``.

    The absolute form yields its path (``/`` when empty) and its query; use
    :func:`target_authority` to get its host. ``*`` (server-wide OPTIONS) names
    no path and raises, as does anything that is neither origin- nor
    absolute-form: the caller answers ``OPTIONS *`` itself before calling this.
    """
    # Origin-form is almost every request: one byte test, then partition.
    if target[:1] != b"/":
        target = _split_absolute_form(target)[1]
    if b"#" in target:
        target = target[: target.index(b"#")]
    path, _, query = target.partition(b"?")
    return path, query


def target_authority(target: bytes) -> bytes | None:
    """The ``host[:port]`` of an absolute-form target, ``None`` for origin-form.

    RFC 9112 §3.2.2: when the target is in absolute form, its authority
    replaces the Host header. Raises like :func:`split_target` on other forms.
    """
    if target[:1] == b"/":
        return None
    return _split_absolute_form(target)[0]


def _split_absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """``(authority, path-abempty [ "?" query ])`` of an absolute-form target.

    The path part is "/" when the URI has none ("http://h?q" -> "/?q").
    """
    if target == b"*":
        raise RemoteProtocolError("'*' is only a valid request-target for OPTIONS")
    lowered = target[:8].lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            break
    else:
        raise RemoteProtocolError("request-target must start with '/' or be an http(s) URI")
    start = len(scheme)
    end = len(target)
    for stop in (b"/", b"?", b"#"):
        i = target.find(stop, start, end)
        if i != -1:
            end = i
    authority = target[start:end]
    if not authority:
        raise RemoteProtocolError("absolute-form request-target without a host")
    if b"@" in authority:
        # RFC 9110 §4.2.4: userinfo is deprecated in http(s) URIs and a
        # recipient should treat it as an error (it is a phishing tool).
        raise RemoteProtocolError("userinfo is not allowed in an http(s) request-target")
    rest = target[end:]
    if rest[:1] != b"/":
        rest = b"/" + rest
    return authority, rest


# Targets seen lately → (path, query, authority): clients ask for the same few URIs
# again and again (a bounded table, emptied when full; invalid targets are not kept,
# nor long ones, so that it stays small: at most 4096 of 512 bytes).
# One table per merge_slashes setting.
_TARGETS: dict[bool, dict[bytes, tuple[str, str, bytes | None]]] = {True: {}, False: {}}
_TARGETS_MAX = 4096


def parse_target(target: bytes, merge_slashes: bool = True) -> tuple[str, str, bytes | None]:
    """A request-target's normalized path, its raw query as a str (latin-1), and the
    authority of an absolute-form target (``None`` for origin-form).

    Raises as :func:`split_target` and :func:`normalize_path` do."""
    table = _TARGETS[merge_slashes]
    parts = table.get(target)
    if parts is None:
        raw_path, raw_query = split_target(target)
        parts = (
            normalize_path(raw_path, merge_slashes),
            raw_query.decode("latin-1"),
            target_authority(target),
        )
        if len(target) <= MEMO_KEY_MAX:
            remember(table, target, parts, _TARGETS_MAX)
    return parts


# Percent-decoding table: two hex digits (any case) -> the byte they encode.
# A dict lookup both validates and decodes, so "%zz", "%+1" and "% 1" (which
# int(x, 16) would accept) are all misses.
_HEX = "0123456789abcdefABCDEF"
_PCT: dict[bytes, bytes] = {
    (a + b).encode("ascii"): bytes([int(a + b, 16)]) for a in _HEX for b in _HEX
}


def normalize_path(raw_path: bytes, merge_slashes: bool = True) -> str:
    """Decode and normalise a raw request path as nginx does.

    ``raw_path`` starts with ``/`` (as :func:`split_target` returns it). The
    result is percent-decoded, with ``.`` and ``..`` segments resolved on the
    decoded path, runs of ``/`` merged when ``merge_slashes`` (nginx's
    ``merge_slashes on``, its default), and a trailing slash kept (``/a/.`` is
    ``/a/``). Raises :class:`RemoteProtocolError` (400) for an invalid escape,
    a NUL byte, a ``..`` climbing above ``/``, or a path not starting with ``/``.

    A backslash is an ordinary character: this is a Linux server.
    """
    # The common case: nothing to decode and no segment to resolve. Each test
    # is one C-level scan; a path that passes all four is already normal.
    if (
        raw_path[:1] == b"/"
        and b"%" not in raw_path
        and b"/." not in raw_path
        and b"//" not in raw_path
        and b"\x00" not in raw_path
    ):
        return raw_path.decode("utf-8", "surrogateescape")
    if raw_path[:1] != b"/":
        raise RemoteProtocolError("request path must start with '/'")
    decoded = _percent_decode(raw_path) if b"%" in raw_path else raw_path
    if b"\x00" in decoded:
        raise RemoteProtocolError("NUL byte in request path")
    return _resolve_segments(decoded, merge_slashes).decode("utf-8", "surrogateescape")


def _percent_decode(raw: bytes) -> bytes:
    # pct-encoded = "%" HEXDIG HEXDIG       (RFC 3986 §2.1)
    # Every '%' must start a valid escape: a lone or truncated '%' is a 400, as
    # in nginx, rather than a literal '%' that another server might decode.
    pieces = raw.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        byte = _PCT.get(piece[:2])
        if byte is None:
            raise RemoteProtocolError("invalid percent-encoding in request path")
        out.append(byte)
        out.append(piece[2:])
    return b"".join(out)


def _resolve_segments(path: bytes, merge_slashes: bool) -> bytes:
    # RFC 3986 §5.2.4 remove_dot_segments, with nginx's two differences: a ".."
    # above the root is an error instead of being dropped, and empty segments
    # ("//") may be merged away.
    #
    # path = "/" seg *( "/" seg ); the last seg decides the trailing slash: an
    # empty, "." or ".." last segment names a directory, so the result ends in
    # "/" ("/a/b/", "/a/.", "/a/b/..").
    segments = path.split(b"/")
    last = segments[-1]
    out: list[bytes] = []
    for seg in segments[1:-1]:
        if seg == b"..":
            if not out:
                raise RemoteProtocolError("request path climbs above the root")
            out.pop()
        elif seg == b"." or (not seg and merge_slashes):
            continue
        else:
            out.append(seg)
    if last == b"..":
        if not out:
            raise RemoteProtocolError("request path climbs above the root")
        out.pop()
        trailing_slash = True
    elif last in (b"", b"."):
        trailing_slash = True
    else:
        out.append(last)
        trailing_slash = False
    if not out:
        return b"/"
    return b"/" + b"/".join(out) + (b"/" if trailing_slash else b"")


# what nginx's ngx_escape_uri(NGX_ESCAPE_URI) encodes in a path it sends upstream:
# control bytes, space, "#", "%", "?", DEL and every byte beyond ASCII
_URI_UNSAFE = re.compile(rb"[\x00-\x20#%?\x7f-\xff]")


def escape_uri(path: str) -> str:
    """Percent-encode a decoded path as nginx does for an upstream request: only what
    would end or break a path (``#``, ``?``, ``%``, space, controls, non-ASCII), so
    that ``;jsessionid=``, ``/@scope/pkg`` or ``/v1/x:action`` go as they are."""
    raw = path.encode("utf-8", "surrogateescape")
    return _URI_UNSAFE.sub(lambda match: b"%%%02X" % match[0][0], raw).decode("ascii")


def quote_path(path: str) -> str:
    """Percent-encode a decoded path for a ``Location`` header or an ``href``.

    Keeps only RFC 3986 unreserved characters (``A-Z a-z 0-9 - . _ ~``) and
    ``/``; everything else, including ``%``, ``?``, ``#``, ``:``, space, quotes
    and ``&``, is encoded from its UTF-8 bytes (``surrogateescape`` bytes come
    back as the bytes they stand for). The result is also safe to put inside a
    quoted HTML attribute unescaped, and a relative reference to a name such as
    ``a:b`` cannot be mistaken for a scheme.
    """
    return urllib.parse.quote_from_bytes(path.encode("utf-8", "surrogateescape"), safe="/")

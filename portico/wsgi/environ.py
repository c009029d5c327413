"""The PEP 3333 ``environ`` of a request: pure, and cheap per request.

What is the same for every request of a location (``wsgi.*`` keys, ``SERVER_SOFTWARE``,
``wsgi_env`` values) is built once into a template dict; per request that dict is copied
and the request's own keys are set. Header names are turned into ``HTTP_*`` keys through
a memo, since clients send the same few names again and again.

PEP 3333's rules, as applied here:

- ``SCRIPT_NAME`` + ``PATH_INFO`` is the decoded path, as "bytes in a str" (latin-1);
  ``SCRIPT_NAME`` is the ``wsgi_script_name`` prefix when the path starts with it;
- ``QUERY_STRING`` is the raw query, undecoded;
- ``CONTENT_TYPE`` and ``CONTENT_LENGTH`` come without ``HTTP_``; a chunked body has no
  ``CONTENT_LENGTH`` (the input stream ends where the body ends);
- repeated headers are joined with ``, `` (``; `` for cookies, as the parser does);
- headers with ``_`` in their name are dropped, as nginx drops them by default
  (``underscores_in_headers off``): otherwise ``X_Forwarded_For`` would arrive as the
  same ``HTTP_X_FORWARDED_FOR`` as ``X-Forwarded-For`` and could impersonate it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portico import __version__

_HEADER_KEYS: dict[str, str | None] = {
    "content-type": "CONTENT_TYPE",
    "content-length": "CONTENT_LENGTH",
}


def header_key(name: str) -> str | None:
    """``user-agent`` → ``HTTP_USER_AGENT``; None for names that are dropped."""
    key = _HEADER_KEYS.get(name)
    if key is None and name not in _HEADER_KEYS:
        key = None if "_" in name else "HTTP_" + name.upper().replace("-", "_")
        if len(_HEADER_KEYS) < 4096:
            _HEADER_KEYS[name] = key
    return key


def base_environ(errors: Any, multithread: bool, extra: Mapping[str, str]) -> dict[str, Any]:
    """The keys every request of one location shares."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": errors,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # every input stream here ends where the body ends (chunked ones too): apps
        # such as Werkzeug may then read a body that has no CONTENT_LENGTH
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": f"portico/{__version__}",
        "SCRIPT_NAME": "",
        **extra,
    }


def to_wsgi_str(text: str) -> str:
    """A path decoded as UTF-8 (with surrogate escapes) → PEP 3333's latin-1 str."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def build_environ(
    base: dict[str, Any], request: Any, script_name: str, wsgi_input: Any
) -> dict[str, Any]:
    """The environ of ``request``; ``script_name`` is already in PEP 3333's form (see
    to_wsgi_str), as PATH_INFO will be, so that the two compare."""
    environ = base.copy()
    path = to_wsgi_str(request.path)
    if script_name and path.startswith(script_name):
        rest = path[len(script_name) :]
        if not rest or rest[0] == "/":
            environ["SCRIPT_NAME"] = script_name
            path = rest
    environ["PATH_INFO"] = path
    environ["REQUEST_METHOD"] = request.method
    environ["QUERY_STRING"] = request.query
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    conn = request.conn
    environ["REMOTE_ADDR"] = conn.remote_addr
    environ["REMOTE_PORT"] = str(conn.remote_port)
    environ["SERVER_NAME"] = request.server.name or conn.server_addr
    environ["SERVER_PORT"] = conn.server_port
    environ["wsgi.input"] = wsgi_input
    headers = request.headers
    for name, value in headers.items():
        key = _HEADER_KEYS.get(name) or header_key(name)
        if key is not None:
            environ[key] = value
    if request.head.chunked:
        environ.pop("CONTENT_LENGTH", None)
    return environ

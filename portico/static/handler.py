"""Serving files: root and alias, index, try_files, autoindex, validators and ranges.

Per request the handler stats the file (one system call; it must notice a changed file
at once) and compares inode, mtime and size with its cache. The cache holds, per file,
the response headers that depend only on the file (type, Last-Modified, ETag) and, for
files up to ``SMALL_FILE_SIZE``, the content: a small file then goes out in a single
write with its head and costs no open or read. Larger files stream from an open
descriptor with sendfile (http/sendfile.py).

Nothing outside the root can be named: the URI reaching here is already normalized
(decoded, ``.`` and ``..`` resolved, NUL refused: http/uri.py), so ``root + uri`` stays
below ``root`` lexically. Symbolic links are followed, as with nginx's default
``disable_symlinks off``; ``disable_symlinks on`` refuses paths that have one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from portico.config.directives import DisableSymlinks, TryFiles
from portico.http.response import encode_headers
from portico.http.sendfile import send_file
from portico.static.autoindex import Entry, render_listing
from portico.static.conditional import (
    UNSATISFIABLE,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    make_etag,
    parse_range,
)
from portico.static.mime import guess_type
from portico.static.root import FileRoot

if TYPE_CHECKING:
    from portico.http.request import Request

SMALL_FILE_SIZE = 64 * 1024
CACHE_ENTRIES = 2048
CACHE_BYTES = 32 * 1024 * 1024

_CONDITIONAL = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")


class CachedFile:
    __slots__ = ("body", "etag", "headers", "key", "mtime", "size")

    def __init__(
        self,
        key: tuple[int, int, int],
        headers: bytes,
        etag: str,
        mtime: float,
        size: int,
        body: bytes | None,
    ) -> None:
        self.key = key
        self.headers = headers
        self.etag = etag
        self.mtime = mtime
        self.size = size
        self.body = body


class FileCache:
    """The worker's cache of file heads and small file bodies, shared by its static
    locations; bounded in entries and bytes (emptied when full: files that are asked
    for come back at once)."""

    __slots__ = ("_bytes", "_entries", "_tables")

    def __init__(self) -> None:
        self._tables: dict[tuple[Any, ...], dict[str, CachedFile]] = {}
        self._entries = 0
        self._bytes = 0

    def table(self, settings: tuple[Any, ...]) -> dict[str, CachedFile]:
        """The table for locations with these settings (types, default type, etag)."""
        return self._tables.setdefault(settings, {})

    def put(self, table: dict[str, CachedFile], filename: str, entry: CachedFile) -> None:
        if self._entries >= CACHE_ENTRIES or self._bytes > CACHE_BYTES:
            for each in self._tables.values():
                each.clear()
            self._entries = self._bytes = 0
        old = table.get(filename)
        if old is None:
            self._entries += 1
        elif old.body is not None:
            self._bytes -= len(old.body)
        table[filename] = entry
        if entry.body is not None:
            self._bytes += len(entry.body)


class StaticHandler:
    """The content handler of a location that neither proxies nor runs an app."""

    __slots__ = (
        "_cache",
        "_store",
        "autoindex",
        "default_type",
        "etag",
        "files",
        "ims_mode",
        "index",
        "log_not_found",
        "sendfile",
        "symlinks",
        "try_files",
        "types",
    )

    def __init__(self, values: Mapping[str, Any], files: FileRoot, cache: FileCache) -> None:
        self.files = files  # the location's root or alias
        self.index: tuple[str, ...] = values["index"]
        self.autoindex: bool = values["autoindex"]
        self.try_files: TryFiles | None = values.get("try_files")
        self.types: Mapping[str, str] = values["types"]
        self.default_type: str = values["default_type"]
        self.sendfile: bool = values["sendfile"]
        self.etag: bool = values["etag"]
        self.ims_mode: str = values["if_modified_since"]
        self.symlinks: DisableSymlinks = values["disable_symlinks"]
        self.log_not_found: bool = values["log_not_found"]
        # what a cached entry depends on besides the file: locations alike share a table
        self._store = cache
        self._cache = cache.table((id(self.types), self.default_type, self.etag))

    # -- entry ---------------------------------------------------------------------

    def handle(self, request: Request) -> None:
        # try_files comes first (nginx runs it in an earlier phase): its fallback may
        # take any method; a file itself is only for GET and HEAD
        if self.try_files is not None:
            self._try_files(request, self.try_files)
            return
        path = request.path
        if path.endswith("/"):
            self._index(request, path)
        else:
            self._serve(request, self.files.filename(request, path), path)

    # -- files ---------------------------------------------------------------------

    def _serve(self, request: Request, filename: str, uri: str) -> None:
        conn = request.conn
        try:
            st = os.stat(filename)
        except OSError as e:
            self._stat_failed(request, filename, e)
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            conn.worker.site.redirect_to_directory(request, uri)
            return
        if not stat.S_ISREG(mode):
            conn.send_error(request, 404)
            return
        method = request.method
        if method != "GET" and method != "HEAD":
            # nginx looks for the file first: a missing one is 404, a folder 301
            conn.send_error(request, 405)
            return
        if self.symlinks.mode != "off" and not self._links_allowed(request, filename):
            conn.worker.site.error(request, f'"{filename}" has a symbolic link in it')
            conn.send_error(request, 403)
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        entry = self._cache.get(filename)
        if entry is None or entry.key != key:
            entry = self._load(filename, key, st.st_mtime, st.st_size)
        headers = request.headers
        if headers and not request.error_status:
            for name in _CONDITIONAL:
                if name in headers:
                    status = evaluate_preconditions(
                        request.method,
                        headers.get("if-match"),
                        headers.get("if-none-match"),
                        headers.get("if-modified-since"),
                        headers.get("if-unmodified-since"),
                        entry.etag,
                        entry.mtime,
                        self.ims_mode,
                    )
                    if status is not None:
                        self._precondition(request, status, entry)
                        return
                    break
            range_value = headers.get("range")
            if range_value is not None and if_range_allows(
                headers.get("if-range"), entry.etag, entry.mtime
            ):
                selected = parse_range(range_value, entry.size)
                if selected is UNSATISFIABLE:
                    conn.worker.site.send_error(
                        request, 416, extra=f"Content-Range: bytes */{entry.size}\r\n".encode()
                    )
                    return
                if selected is not None:
                    first, last = selected  # type: ignore[misc]
                    self._send(
                        request,
                        filename,
                        entry,
                        206,
                        first,
                        last - first + 1,
                        b"%bContent-Range: bytes %d-%d/%d\r\n"
                        % (entry.headers, first, last, entry.size),
                    )
                    return
        body = entry.body
        if body is not None:
            conn.send_response(request, 200, entry.headers, body)
        else:
            self._send(request, filename, entry, 200, 0, entry.size, entry.headers)

    def _send(
        self,
        request: Request,
        filename: str,
        entry: CachedFile,
        status: int,
        offset: int,
        count: int,
        headers: bytes,
    ) -> None:
        conn = request.conn
        body = entry.body
        if body is not None:
            conn.send_response(request, status, headers, body[offset : offset + count])
            return
        try:
            fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self._stat_failed(request, filename, e)
            return
        send_file(conn, request, status, headers, fd, offset, count, self.sendfile)

    def _load(
        self, filename: str, key: tuple[int, int, int], mtime: float, size: int
    ) -> CachedFile:
        etag = make_etag(mtime, size)
        lines = [
            ("Content-Type", guess_type(filename, self.types, self.default_type)),
            ("Last-Modified", http_date(mtime)),
        ]
        if self.etag:
            lines.append(("ETag", etag))
        lines.append(("Accept-Ranges", "bytes"))
        body = None
        if size <= SMALL_FILE_SIZE:
            try:
                with open(filename, "rb") as f:
                    data = f.read(size + 1)
                if len(data) == size:
                    body = data
            except OSError:
                body = None
        entry = CachedFile(key, encode_headers(lines), etag, mtime, size, body)
        self._store.put(self._cache, filename, entry)
        return entry

    def _precondition(self, request: Request, status: int, entry: CachedFile) -> None:
        conn = request.conn
        if status == 304:
            conn.send_response(request, 304, entry.headers, b"")
        else:
            conn.send_error(request, status)

    def _stat_failed(self, request: Request, filename: str, error: OSError) -> None:
        site = request.conn.worker.site
        code = error.errno
        if code in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            if self.log_not_found:
                site.error(request, f'open() "{filename}" failed ({code}: {error.strerror})')
            status = 404
        elif code == errno.EACCES:
            site.error(
                request, f'open() "{filename}" failed ({code}: {error.strerror})', level="error"
            )
            status = 403
        else:
            site.error(
                request, f'open() "{filename}" failed ({code}: {error.strerror})', level="crit"
            )
            status = 500
        request.conn.send_error(request, status)

    def _links_allowed(self, request: Request, filename: str) -> bool:
        start = self.files.folder(request) if self.symlinks.from_root else "/"
        path = start.rstrip("/")
        for part in filename[len(start.rstrip("/")) :].split("/"):
            if not part:
                continue
            path = f"{path}/{part}"
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if stat.S_ISLNK(st.st_mode):
                if self.symlinks.mode == "on":
                    return False
                try:
                    target = os.stat(path)
                except OSError:
                    return False
                if target.st_uid != st.st_uid:
                    return False
        return True

    # -- directories ---------------------------------------------------------------

    def _index(self, request: Request, uri: str) -> None:
        directory = self.files.filename(request, uri)
        site = request.conn.worker.site
        for i, name in enumerate(self.index):
            if name.startswith("/") and i == len(self.index) - 1:
                site.internal_redirect(request, name, keep_args=True)
                return
            try:
                st = os.stat(directory + name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                site.internal_redirect(request, uri + name, keep_args=True)
                return
        try:
            st = os.stat(directory)
        except OSError as e:
            self._stat_failed(request, directory, e)
            return
        if not stat.S_ISDIR(st.st_mode):
            request.conn.send_error(request, 404)
        elif self.autoindex:
            if request.method not in ("GET", "HEAD"):
                request.conn.send_error(request, 405)
            else:
                self._listing(request, directory, uri)
        else:
            site.error(request, f'directory index of "{directory}" is forbidden')
            request.conn.send_error(request, 403)

    def _listing(self, request: Request, directory: str, uri: str) -> None:
        entries = []
        try:
            with os.scandir(directory) as it:
                for item in it:
                    if item.name.startswith("."):
                        continue
                    try:
                        st = item.stat()
                    except OSError:
                        continue
                    entries.append(
                        Entry(item.name, stat.S_ISDIR(st.st_mode), st.st_size, st.st_mtime)
                    )
        except OSError as e:
            self._stat_failed(request, directory, e)
            return
        body = render_listing(uri, entries)
        request.conn.send_response(
            request, 200, b"Content-Type: text/html; charset=utf-8\r\n", body
        )

    # -- try_files -----------------------------------------------------------------

    def _try_files(self, request: Request, try_files: TryFiles) -> None:
        for template in try_files.files:
            uri = template.render(request)
            if not uri:
                continue
            want_directory = uri.endswith("/")
            filename = self.files.filename(request, uri)
            try:
                st = os.stat(filename.rstrip("/") if want_directory else filename)
            except OSError:
                continue
            if want_directory and stat.S_ISDIR(st.st_mode):
                request.path = uri
                self._index(request, uri)
                return
            if not want_directory and stat.S_ISREG(st.st_mode):
                request.path = uri
                self._serve(request, filename, uri)
                return
        site = request.conn.worker.site
        if try_files.fallback_status is not None:
            request.conn.send_error(request, try_files.fallback_status)
        elif try_files.fallback is not None:
            target = try_files.fallback.render(request)
            if target.startswith("@"):
                site.named_redirect(request, target[1:])
            else:
                site.internal_redirect(request, target)

"""MIME types by file extension, as nginx's ``types`` block and ``default_type``.

:data:`DEFAULT_TYPES` is the table nginx ships in ``conf/mime.types`` (plus the
few types it gained since: avif, woff2, wasm), and ``md``, ``mjs`` and
``map``. Like nginx, no ``charset`` parameter is added to text types: that is
the ``charset`` directive's business, not the table's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["DEFAULT_TYPES", "guess_type"]


def _table(*rows: tuple[str, str]) -> dict[str, str]:
    # Written as nginx's mime.types is (a type, then its extensions) so the two
    # can be compared line by line.
    return {ext: mime for mime, exts in rows for ext in exts.split()}


DEFAULT_TYPES: Final[dict[str, str]] = _table(
    ("text/html", "html htm shtml"),
    ("text/css", "css"),
    ("text/xml", "xml"),
    ("image/gif", "gif"),
    ("image/jpeg", "jpeg jpg"),
    # RFC 9239 made text/javascript the one type for JavaScript (nginx ships
    # application/javascript, which browsers treat the same); .mjs is a module.
    ("text/javascript", "js mjs"),
    ("application/atom+xml", "atom"),
    ("application/rss+xml", "rss"),
    ("text/mathml", "mml"),
    ("text/plain", "txt"),
    ("text/vnd.sun.j2me.app-descriptor", "jad"),
    ("text/vnd.wap.wml", "wml"),
    ("text/x-component", "htc"),
    ("text/markdown", "md"),  # RFC 7763
    ("image/avif", "avif"),
    ("image/png", "png"),
    ("image/svg+xml", "svg svgz"),
    ("image/tiff", "tif tiff"),
    ("image/vnd.wap.wbmp", "wbmp"),
    ("image/webp", "webp"),
    ("image/x-icon", "ico"),
    ("image/x-jng", "jng"),
    ("image/x-ms-bmp", "bmp"),
    ("font/woff", "woff"),
    ("font/woff2", "woff2"),
    ("application/java-archive", "jar war ear"),
    ("application/json", "json map"),  # a source map is JSON
    ("application/mac-binhex40", "hqx"),
    ("application/msword", "doc"),
    ("application/pdf", "pdf"),
    ("application/postscript", "ps eps ai"),
    ("application/rtf", "rtf"),
    ("application/vnd.apple.mpegurl", "m3u8"),
    ("application/vnd.google-earth.kml+xml", "kml"),
    ("application/vnd.google-earth.kmz", "kmz"),
    ("application/vnd.ms-excel", "xls"),
    ("application/vnd.ms-fontobject", "eot"),
    ("application/vnd.ms-powerpoint", "ppt"),
    ("application/vnd.oasis.opendocument.graphics", "odg"),
    ("application/vnd.oasis.opendocument.presentation", "odp"),
    ("application/vnd.oasis.opendocument.spreadsheet", "ods"),
    ("application/vnd.oasis.opendocument.text", "odt"),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", "pptx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("application/vnd.wap.wmlc", "wmlc"),
    ("application/wasm", "wasm"),
    ("application/x-7z-compressed", "7z"),
    ("application/x-cocoa", "cco"),
    ("application/x-java-archive-diff", "jardiff"),
    ("application/x-java-jnlp-file", "jnlp"),
    ("application/x-makeself", "run"),
    ("application/x-perl", "pl pm"),
    ("application/x-pilot", "prc pdb"),
    ("application/x-rar-compressed", "rar"),
    ("application/x-redhat-package-manager", "rpm"),
    ("application/x-sea", "sea"),
    ("application/x-shockwave-flash", "swf"),
    ("application/x-stuffit", "sit"),
    ("application/x-tcl", "tcl tk"),
    ("application/x-x509-ca-cert", "der pem crt"),
    ("application/x-xpinstall", "xpi"),
    ("application/xhtml+xml", "xhtml"),
    ("application/xspf+xml", "xspf"),
    ("application/zip", "zip"),
    ("application/octet-stream", "bin exe dll deb dmg iso img msi msp msm"),
    ("audio/midi", "mid midi kar"),
    ("audio/mpeg", "mp3"),
    ("audio/ogg", "ogg"),
    ("audio/x-m4a", "m4a"),
    ("audio/x-realaudio", "ra"),
    ("video/3gpp", "3gpp 3gp"),
    ("video/mp2t", "ts"),
    ("video/mp4", "mp4"),
    ("video/mpeg", "mpeg mpg"),
    ("video/quicktime", "mov"),
    ("video/webm", "webm"),
    ("video/x-flv", "flv"),
    ("video/x-m4v", "m4v"),
    ("video/x-mng", "mng"),
    ("video/x-ms-asf", "asx asf"),
    ("video/x-ms-wmv", "wmv"),
    ("video/x-msvideo", "avi"),
)


def guess_type(filename: str, types: Mapping[str, str], default: str) -> str:
    """The MIME type for ``filename`` from ``types``, else ``default``.

    The extension is what follows the last ``.`` of the last path segment,
    matched case-insensitively (``types`` keys must be lowercase, without the
    dot). As in nginx, a dot-file's name is its extension (``.json`` is
    ``json``), and a name without a dot, or ending in one, gets ``default``.
    """
    name = filename.rpartition("/")[2]
    dot = name.rfind(".")
    if dot == -1:
        return default
    ext = name[dot + 1 :]
    mime = types.get(ext)
    if mime is None and not ext.islower():
        mime = types.get(ext.lower())
    return default if mime is None else mime

"""The default MIME table and extension lookup."""

from __future__ import annotations

import re

import pytest

from portico.static.mime import DEFAULT_TYPES, guess_type

# Every extension nginx's conf/mime.types maps, plus md, mjs and map.
_NGINX_EXTENSION_TEXT = """
    html htm shtml css xml gif jpeg jpg js atom rss mml txt jad wml htc avif png svg svgz
    tif tiff wbmp webp ico jng bmp woff woff2 jar war ear json hqx doc pdf ps eps ai rtf
    m3u8 kml kmz xls eot ppt odg odp ods odt pptx docx xlsx wmlc wasm 7z cco jardiff jnlp
    run pl pm prc pdb rar rpm sea swf sit tcl tk der pem crt xpi xhtml xspf zip bin exe dll
    deb dmg iso img msi msp msm mid midi kar mp3 ogg m4a ra 3gpp 3gp ts mp4 mpeg mpg mov
    webm flv m4v mng asx asf wmv avi md mjs map
"""
NGINX_EXTENSIONS = frozenset(_NGINX_EXTENSION_TEXT.split())

MIME_TYPE = re.compile(r"[a-z0-9]+/[a-z0-9.+-]+")


def test_table_covers_nginx_defaults() -> None:
    assert set(NGINX_EXTENSIONS) <= set(DEFAULT_TYPES)


def test_table_is_well_formed() -> None:
    for ext, mime in DEFAULT_TYPES.items():
        assert ext == ext.lower() and "." not in ext and ext
        assert MIME_TYPE.fullmatch(mime), mime
        assert "charset" not in mime  # as nginx: the charset directive adds it


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("index.html", "text/html"),
        ("style.css", "text/css"),
        ("app.js", "text/javascript"),
        ("module.mjs", "text/javascript"),
        ("app.js.map", "application/json"),
        ("README.md", "text/markdown"),
        ("notes.txt", "text/plain"),
        ("photo.JPG", "image/jpeg"),  # case-insensitive
        ("Photo.JpEg", "image/jpeg"),
        ("archive.tar.gz", "application/x-default"),  # only the last extension counts
        ("site.tar.zip", "application/zip"),
        ("font.woff2", "font/woff2"),
        ("a.7z", "application/x-7z-compressed"),
        ("clip.3gp", "video/3gpp"),
        ("Makefile", "application/x-default"),
        ("trailing.", "application/x-default"),
        (".json", "application/json"),  # nginx: a dot-file's name is its extension
        ("/srv/www/a.b/file", "application/x-default"),  # a dot in a directory is not one
        ("/srv/www/a.b/file.png", "image/png"),
        ("file.unknown", "application/x-default"),
        ("", "application/x-default"),
    ],
)
def test_guess_type(filename: str, expected: str) -> None:
    assert guess_type(filename, DEFAULT_TYPES, "application/x-default") == expected


def test_guess_type_uses_the_given_table() -> None:
    types = {"html": "text/html; charset=utf-8", "x": "text/x"}
    assert guess_type("a.html", types, "d") == "text/html; charset=utf-8"
    assert guess_type("a.X", types, "d") == "text/x"
    assert guess_type("a.css", types, "d") == "d"

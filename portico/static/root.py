"""Where a location's files are: its ``root`` or ``alias``, and the file a URI names.

One object per location, whatever its handler: the static handler finds files with it,
and ``$document_root`` and ``$request_filename`` ask it too, so that they have nginx's
values in a location that proxies or runs an app as well, and follow the request's
current URI (after an index, try_files or an internal redirect).

- ``root PATH``: the folder is PATH (without a trailing slash, see directives.py) and a
  URI's file is PATH + URI;
- ``alias PATH`` in a prefix location: the location's prefix in the URI is replaced by
  PATH; a URI whose rest starts with ".." names no file (it would climb out of PATH);
- ``alias`` with captures, in a regex location: the rendered alias is the whole path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portico.variables import Template


class FileRoot:
    __slots__ = ("alias", "plain_root", "prefix", "root")

    def __init__(self, values: Mapping[str, Any], prefix: str) -> None:
        self.root: str | Template = values["root"]
        self.alias: str | Template | None = values.get("alias")
        self.prefix = prefix  # of a prefix location: what alias replaces
        # the common case, a root without variables: a file is that + the URI
        self.plain_root = self.root if self.alias is None and isinstance(self.root, str) else None

    def folder(self, request: Any) -> str:
        """``$document_root``."""
        folder = self.alias if self.alias is not None else self.root
        return folder if isinstance(folder, str) else folder.render(request)

    def filename(self, request: Any, uri: str) -> str:
        """The file ``uri`` names (``$request_filename`` for the request's URI); empty
        when it names none."""
        if self.plain_root is not None:
            return self.plain_root + uri
        alias = self.alias
        if alias is None:
            return self.folder(request) + uri
        if isinstance(alias, Template):
            return alias.render(request)
        rest = uri[len(self.prefix) :]
        return "" if rest.startswith("..") else alias + rest

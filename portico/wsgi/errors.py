"""``wsgi.errors``: a text stream whose lines go to the error log.

One stream serves every request of a location, from several app threads: the part of
a line not yet ended is kept per thread, and only whole lines are logged.
"""

from __future__ import annotations

import threading
from typing import Any


def wsgi_errors_stream(log: Any) -> Any:
    """``wsgi.errors``: a text stream whose lines go to the error log."""
    return _ErrorStream(log)


class _ErrorStream:
    """Whole lines to the error log; shared by the threads of a location, so the part
    of a line not yet ended is kept per thread."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._local = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        *lines, pending = pending.split("\n")
        self._local.pending = pending
        for line in lines:
            if line:
                self._log.log("error", line)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._log.log("error", pending)

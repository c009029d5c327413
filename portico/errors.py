"""The exception hierarchy: every error portico raises on purpose is a PorticoError.

Errors are named after what the caller sees. Protocol errors carry the status code
they imply, so one function turns any of them into a response.
"""

from __future__ import annotations


class PorticoError(Exception):
    """Root of every error portico raises on purpose."""


class ConfigError(PorticoError):
    """A configuration problem, located at ``file:line`` when a place is known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigErrors(PorticoError):
    """Several configuration problems found in one pass (``portico -t`` lists them all)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class ProtocolError(PorticoError):
    """The HTTP conversation cannot go on as it is; ``status`` is the answer it implies."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class RemoteProtocolError(ProtocolError):
    """The peer broke HTTP's rules (a malformed request, a bad upstream response)."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something HTTP does not allow (a bug on our side, or an app's)."""


class ClientDisconnected(PorticoError):
    """The client went away before the exchange finished."""


class UpstreamError(PorticoError):
    """Talking to a backend failed; the subclasses say how."""

    status = 502


class UpstreamConnectError(UpstreamError):
    """The backend could not be reached (refused, unreachable, reset before answering)."""


class UpstreamTimeout(UpstreamError):
    """The backend did not connect, accept the request or answer in time."""

    status = 504


class UpstreamInvalidResponse(UpstreamError):
    """The backend answered something that is not a valid HTTP response."""


class NoLiveUpstream(UpstreamError):
    """Every peer of the upstream group is down or failing."""

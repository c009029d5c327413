"""start_response with ``exc_info`` (PEP 3333): allowed to replace the headers until
they are sent; once sent, start_response re-raises the exception."""

import sys
from wsgiref.validate import validator


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/before":
        # headers not sent yet: the error answer replaces them
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "yes")])
        try:
            raise ValueError("failed before any body")
        except ValueError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"replaced by the error answer"]
    if path == "/after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return after(start_response)
    if path == "/twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"start_response twice without exc_info"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such test"]


def after(start_response):
    yield b"the headers are out\n"
    try:
        raise ValueError("failed-after-headers-81e2")
    except ValueError:
        # the server must re-raise: this aborts the answer
        start_response(
            "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
        )
    yield b"must never be sent\n"


validated = validator(app)

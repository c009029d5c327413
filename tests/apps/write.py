"""The legacy ``write()`` callable that start_response returns (PEP 3333)."""

from wsgiref.validate import validator


def app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one ")
    write(b"two ")
    if environ["PATH_INFO"] == "/only-write":
        write(b"three")
        return []
    return [b"three"]


validated = validator(app)

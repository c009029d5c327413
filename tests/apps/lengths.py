"""An app whose body does not match the Content-Length it declared.

``?declared=N&pieces=A,B,C``: declares N bytes, then yields pieces of A, B and C bytes
(the bytes count up "0123456789" again and again, so a client can tell which it got).
"""

from urllib.parse import parse_qs
from wsgiref.validate import validator


def body(size):
    return (b"0123456789" * (size // 10 + 1))[:size]


def app(environ, start_response):
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    sizes = [int(size) for size in query["pieces"].split(",")]
    data = body(sum(sizes))
    pieces = []
    for size in sizes:
        pieces.append(data[:size])
        data = data[size:]
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", query["declared"])]
    )
    return iter(pieces)


validated = validator(app)

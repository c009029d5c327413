"""Answers whose ``close()`` records that it ran, so a test can check that the server
called it even when the client went away mid-stream.

``?tag=T&chunks=N``: N chunks of 64 KiB; ``close()`` appends "T closed after K" to the
file ``CLOSE_LOG`` (from ``wsgi_env``), K being how many chunks went out.
"""

from urllib.parse import parse_qs
from wsgiref.validate import validator

from flask import Flask, Response, request

CHUNK = b"c" * 65536


def record(environ, tag, sent):
    with open(environ["CLOSE_LOG"], "a") as f:
        f.write(f"{tag} closed after {sent}\n")


class Tracked:
    def __init__(self, environ, tag, chunks):
        self.environ = environ
        self.tag = tag
        self.chunks = chunks
        self.sent = 0

    def __iter__(self):
        for _ in range(self.chunks):
            self.sent += 1
            yield CHUNK

    def close(self):
        record(self.environ, self.tag, self.sent)


def app(environ, start_response):
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Tracked(environ, query["tag"], int(query.get("chunks", 4)))


flask_app = Flask(__name__)


@flask_app.route("/")
def generated():
    """Flask closes a generator through its answer's close(): its finally block runs."""
    environ = request.environ
    tag = request.args["tag"]
    chunks = request.args.get("chunks", 4, type=int)

    def generate():
        sent = 0
        try:
            for _ in range(chunks):
                sent += 1
                yield CHUNK
        finally:
            record(environ, tag, sent)

    return Response(generate(), mimetype="application/octet-stream")


validated = validator(app)
flask_validated = validator(flask_app)

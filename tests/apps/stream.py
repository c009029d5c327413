"""Streamed answers: generators without a Content-Length."""

from wsgiref.validate import validator

from flask import Flask, Response, request

MB = b"x" * (1024 * 1024)

app = Flask(__name__)


@app.route("/lines")
def lines():
    count = request.args.get("n", 5, type=int)

    def generate():
        for i in range(count):
            yield f"line {i}\n".encode()

    return Response(generate(), mimetype="text/plain")


@app.route("/big")
def big():
    """``?mb=N`` megabytes, one at a time."""
    count = request.args.get("mb", 1, type=int)

    def generate():
        for _ in range(count):
            yield MB

    return Response(generate(), mimetype="application/octet-stream")


def plain(environ, start_response):
    """``?N``: N megabytes from a plain generator."""
    count = int(environ.get("QUERY_STRING") or 1)

    def generate():
        for _ in range(count):
            yield MB

    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return generate()


validated = validator(app)
plain_validated = validator(plain)

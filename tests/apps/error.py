"""Apps that raise: before start_response, after it but before the first chunk, and
in the middle of the body. The messages carry ``SECRET``, which a client must never
see (the traceback goes to the error log only).

Flask catches exceptions and answers its own 500; ``PROPAGATE_EXCEPTIONS`` hands them
to the server instead, as in testing mode.
"""

from wsgiref.validate import validator

from flask import Flask, Response

SECRET = "secret-detail-5f1c"


def failing(count):
    for i in range(count):
        yield f"chunk {i}\n".encode()
    raise RuntimeError(f"raised after {count} chunks: {SECRET}")


app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = True


@app.route("/before")
def before():
    raise RuntimeError(f"raised before the headers: {SECRET}")


@app.route("/first-chunk")
def first_chunk():
    return Response(failing(0), mimetype="text/plain")


@app.route("/mid")
def mid():
    return Response(failing(3), mimetype="text/plain")


@app.route("/ok")
def ok():
    return "still fine"


def plain(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/before":
        raise RuntimeError(f"raised before the headers: {SECRET}")
    if path == "/ok":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"still fine"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return failing(0 if path == "/first-chunk" else 3)


validated = validator(app)
plain_validated = validator(plain)

"""Echoes what the app was given, as JSON: environ keys, headers, flags and the body.

The body is read from ``wsgi.input`` in the way ``?mode=`` names: ``read`` (``read(n)``
until it returns b""), ``length`` (one ``read(CONTENT_LENGTH)``), ``readline``,
``readline-n`` (``readline(100)``), ``readlines`` or ``iter``; ``none`` leaves it unread.
"""

import hashlib
import json
from urllib.parse import parse_qs
from wsgiref.validate import validator

from flask import Flask, request

KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "PORTICO_TEST",
)
FLAGS = (
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
)
READ_SIZE = 7919  # an odd size, so reads straddle the chunks the server holds


def read_body(environ, mode):
    """The body, and the pieces (reads, lines) it came in."""
    stream = environ["wsgi.input"]
    pieces = []
    if mode == "read":
        while True:
            piece = stream.read(READ_SIZE)
            if not piece:
                break
            pieces.append(piece)
    elif mode == "length":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        pieces.append(stream.read(length))
    elif mode == "readline":
        while True:
            line = stream.readline()
            if not line:
                break
            pieces.append(line)
    elif mode == "readline-n":
        while True:
            line = stream.readline(100)
            if not line:
                break
            pieces.append(line)
    elif mode == "readlines":
        pieces = stream.readlines()
    elif mode == "iter":
        pieces = list(stream)
    return b"".join(pieces), pieces


def describe(environ):
    mode = parse_qs(environ.get("QUERY_STRING", "")).get("mode", ["read"])[0]
    body, pieces = read_body(environ, mode)
    return {
        "environ": {key: environ[key] for key in KEYS if key in environ},
        "headers": {key: value for key, value in environ.items() if key.startswith("HTTP_")},
        "wsgi": {key: environ[key] for key in FLAGS},
        "input_terminated": environ.get("wsgi.input_terminated"),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "pieces": len(pieces),
        "longest_piece": max((len(piece) for piece in pieces), default=0),
    }


app = Flask(__name__)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def echo(path):
    data = describe(request.environ)
    # what Flask made of it: the text a PEP 3333 app gets back from the latin-1 keys
    data["flask"] = {
        "path": request.path,
        "script_root": request.script_root,
        "args": request.args.to_dict(),
    }
    return data


def plain(environ, start_response):
    body = json.dumps(describe(environ)).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


validated = validator(app)
plain_validated = validator(plain)

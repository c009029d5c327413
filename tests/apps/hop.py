"""Apps that return a hop-by-hop header, which PEP 3333 forbids: ``?Name`` (plain),
or Flask's answer with a Connection header."""

from wsgiref.validate import validator

from flask import Flask

VALUES = {
    "Connection": "close",
    "Keep-Alive": "timeout=5",
    "Transfer-Encoding": "chunked",
    "Upgrade": "websocket",
    "TE": "trailers",
}


def app(environ, start_response):
    name = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "text/plain"), (name, VALUES[name])])
    return [b"an answer with a hop-by-hop header"]


flask_app = Flask(__name__)


@flask_app.route("/")
def connection():
    return "flask with a Connection header", 200, {"Connection": "keep-alive"}


validated = validator(app)
flask_validated = validator(flask_app)

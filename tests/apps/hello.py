"""Hello world: a Flask app, a plain WSGI callable and a factory."""

from wsgiref.validate import validator

from flask import Flask

app = Flask(__name__)


@app.route("/")
def home():
    return "hello world!"


@app.route("/hello/<name>")
def hello(name):
    return f"hello {name}!"


def plain(environ, start_response):
    body = b"hello from plain WSGI!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def lazy(environ, start_response):
    """A generator as the app: start_response runs in the first iteration, which
    PEP 3333 allows ("servers must not assume that start_response() has been called
    before they begin iterating over the iterable")."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"hello from a generator app!"


def create_app():
    """A factory: ``tests.apps.hello:create_app()``."""
    made = Flask("factory")

    @made.route("/")
    def home():
        return "hello from a factory!"

    return made


validated = validator(app)
plain_validated = validator(plain)
lazy_validated = validator(lazy)

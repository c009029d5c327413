"""The demo behind portico's built-in default config: examples/hello.py, saying which
app server answered, so that reloading the page shows the load balancing."""

from flask import Flask, request

from examples import hello

app = Flask(__name__)


@app.route("/")
def home():
    port = request.environ["SERVER_PORT"]
    return (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>portico demo</title>"
        '<link rel="stylesheet" href="/static/style.css"></head><body>'
        f"<h1>{hello.home()}</h1>"
        f"<p>Answered by the app server on port <b>{port}</b>. Reload the page: portico "
        "balances requests round robin over two app servers (ports 8001 and 8002), both "
        "running <code>examples/hello.py</code> in portico's own WSGI layer.</p>"
        "<p>This page went browser → portico on :8080 (static files and the reverse "
        "proxy) → an app server → Flask. Its stylesheet came straight from disk.</p>"
        "</body></html>"
    )

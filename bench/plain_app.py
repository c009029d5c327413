"""The smallest WSGI app: what a server costs per request when the app costs ~nothing.

bench/wsgi.py runs it beside the Flask hello world (examples/hello.py); both
answer `hello world!` (12 bytes), so the difference between the two is Flask's
own cost.
"""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"hello world!"]

"""Files: Flask's send_file (ranges, conditional requests) and ``wsgi.file_wrapper``
over a real file and over a BytesIO. ``DATA_FILE`` (from ``wsgi_env``) is the file."""

import io
from urllib.parse import parse_qs
from wsgiref.validate import validator

from flask import Flask, request, send_file

app = Flask(__name__)


@app.route("/send")
def send():
    return send_file(
        request.environ["DATA_FILE"], mimetype="application/octet-stream", conditional=True
    )


def plain(environ, start_response):
    """``/real?skip=N&length=L``: the file from offset N (L bytes declared);
    ``/bytesio``: the file's bytes through a BytesIO (no descriptor to send)."""
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in query:
        headers.append(("Content-Length", query["length"]))
    if environ["PATH_INFO"] == "/bytesio":
        with open(environ["DATA_FILE"], "rb") as f:
            filelike = io.BytesIO(f.read())
    else:
        filelike = open(environ["DATA_FILE"], "rb")  # noqa: SIM115 (closed by the server)
        filelike.seek(int(query.get("skip", 0)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](filelike, 65536)


validated = validator(app)
plain_validated = validator(plain)

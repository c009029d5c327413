"""Uploads: a multipart file (its size and sha256), and a body read as it arrives."""

import hashlib
from wsgiref.validate import validator

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/upload", methods=["POST"])
def upload():
    file = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while chunk := file.stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return {
        "name": file.filename,
        "size": size,
        "sha256": digest.hexdigest(),
        "fields": request.form.to_dict(),
    }


@app.route("/lines", methods=["POST"])
def lines():
    """Answers each line of the body as soon as it has read it (a streamed answer)."""
    stream = request.environ["wsgi.input"]

    def generate():
        while True:
            line = stream.readline()
            if not line:
                break
            yield b"got " + line

    return Response(generate(), mimetype="text/plain")


validated = validator(app)

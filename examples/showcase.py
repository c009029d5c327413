"""A second example app: forms, JSON, a file upload, a streamed answer and send_file.

.venv/bin/portico serve examples.showcase:app --bind 127.0.0.1:8000
"""

import hashlib
import io
import time

from flask import Flask, Response, jsonify, request, send_file

app = Flask(__name__)


@app.route("/")
def index():
    return (
        "<h1>portico showcase</h1><ul>"
        '<li><a href="/form">a form</a></li>'
        '<li><a href="/api/echo?x=1">JSON</a></li>'
        '<li><a href="/upload">an upload</a></li>'
        '<li><a href="/stream">a streamed answer</a></li>'
        '<li><a href="/download">send_file</a></li></ul>'
    )


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        return f"<p>Hello, {request.form.get('name', 'stranger')}!</p>"
    return '<form method="post"><input name="name"><button>Send</button></form>'


@app.route("/api/echo", methods=["GET", "POST"])
def echo():
    return jsonify(
        method=request.method,
        args=request.args.to_dict(),
        json=request.get_json(silent=True),
        path=request.path,
    )


@app.route("/upload", methods=["GET", "POST"])
def upload():
    if request.method == "POST":
        file = request.files["file"]
        digest = hashlib.sha256()
        size = 0
        while chunk := file.stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        return jsonify(name=file.filename, size=size, sha256=digest.hexdigest())
    return (
        '<form method="post" enctype="multipart/form-data">'
        '<input type="file" name="file"><button>Upload</button></form>'
    )


@app.route("/stream")
def stream():
    count = request.args.get("n", 5, type=int)

    def generate():
        for i in range(count):
            yield f"line {i}\n"
            time.sleep(request.args.get("delay", 0.0, type=float))

    return Response(generate(), mimetype="text/plain")


@app.route("/download")
def download():
    data = io.BytesIO(b"portico sends this file\n" * 100)
    return send_file(data, download_name="report.txt", mimetype="text/plain")

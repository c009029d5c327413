"""A slow endpoint and a fast one, to show that one does not hold up the other."""

import time
from wsgiref.validate import validator

from flask import Flask, request

app = Flask(__name__)


@app.route("/slow")
def slow():
    milliseconds = request.args.get("ms", 1000, type=int)
    time.sleep(milliseconds / 1000)
    return f"slept {milliseconds} ms"


@app.route("/fast")
def fast():
    return "fast"


validated = validator(app)

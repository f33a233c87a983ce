"""A Flask app for the HEAD tests: one streamed response and one of known length."""

from flask import Flask, Response

app = Flask(__name__)


@app.route("/stream")
def stream():
    """Three lines from a generator: werkzeug sets no Content-Length."""

    def generate():
        for i in range(3):
            yield f"part {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.route("/fixed")
def fixed():
    """A plain string: werkzeug sets its Content-Length."""
    return "a body of known length\n"

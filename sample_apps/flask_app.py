"""A small Flask app: text, JSON, a form, a streamed upload and a streamed download.

Serve it from the repository root with::

    python -m wsgi_zmq sample_apps.flask_app:app

then open http://127.0.0.1:8000/.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, render_template_string, request

app = Flask(__name__)
# Werkzeug answers 413 itself for bodies above this, before the view reads them.
app.config["MAX_CONTENT_LENGTH"] = 256 * 1024 * 1024

BLOCK_SIZE = 64 * 1024
MAX_DOWNLOAD = 1024 * 1024 * 1024
# The download's content: bytes 0..255 repeated, so a client can check every byte it got.
PATTERN = bytes(range(256)) * (BLOCK_SIZE // 256)

FORM_PAGE = """<!doctype html>
<title>Flask form</title>
{% if name %}<p>Hello, {{ name }}!</p>{% endif %}
<form method="post">
  <label>Name <input name="name" value="{{ name }}"></label>
  <button>Send</button>
</form>
"""


@app.get("/")
def hello() -> str:
    """The simplest response: a string becomes a ``text/html`` body with its length."""
    return "Hello from Flask behind wsgi_zmq!\n"


@app.get("/json")
def json_document() -> Response:
    """A JSON document. ``remote_addr`` is the HTTP client's address as the front saw it,
    not the handler's; ``pid`` tells which handler worker answered."""
    return jsonify(
        message="Hello, JSON!",
        remote_addr=request.remote_addr,
        pid=os.getpid(),
        method=request.method,
        path=request.path,
        args=request.args.to_dict(),
    )


@app.route("/form", methods=["GET", "POST"])
def form() -> str:
    """GET shows an HTML form; POST reads the urlencoded body through ``request.form``.

    ``render_template_string`` escapes ``name``, so markup typed into the form is shown as
    text.
    """
    name = request.form.get("name", "").strip() if request.method == "POST" else ""
    return render_template_string(FORM_PAGE, name=name)


@app.post("/upload")
def upload() -> Response:
    """A multipart upload (field ``file``): answer its name, size and sha256.

    Werkzeug's form parser spools a large part to a temporary file instead of keeping it in
    memory; the view then reads that file in blocks, so memory stays bounded by the block
    size whatever the upload's size.
    """
    sent = request.files.get("file")
    if sent is None:
        abort(400, "send the file in a multipart field named 'file'")
    digest = hashlib.sha256()
    size = 0
    while block := sent.stream.read(BLOCK_SIZE):
        digest.update(block)
        size += len(block)
    return jsonify(filename=sent.filename, size=size, sha256=digest.hexdigest())


@app.get("/download")
def download() -> Response:
    """``?size=N`` bytes (default 1 MiB) generated block by block by a generator.

    The body never exists as a whole: each block is produced when the server asks for the
    next one, and the server sends it before asking again. ``Content-Length`` is known in
    advance, so the client can show progress.
    """
    raw = request.args.get("size", str(1024 * 1024))
    if not raw.isdecimal() or int(raw) > MAX_DOWNLOAD:
        abort(400, f"size must be an integer from 0 to {MAX_DOWNLOAD}")
    size = int(raw)

    def generate() -> Iterator[bytes]:
        left = size
        while left > 0:
            block = PATTERN[:min(BLOCK_SIZE, left)]
            left -= len(block)
            yield block

    return Response(
        generate(),
        mimetype="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": 'attachment; filename="download.bin"',
        },
    )

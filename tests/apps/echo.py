"""Fixture apps for the live tests: each is a plain PEP 3333 callable."""

import hashlib
import json
import os
import time


def _environ_json(environ):
    return {k: v for k, v in environ.items() if isinstance(v, (str, int, bool, tuple))}


def read_all(environ):
    """The whole request body, read in sized pieces as PEP 3333 asks of an app."""
    return b"".join(iter(lambda: environ["wsgi.input"].read(65536), b""))


def echo(environ, start_response):
    """The environ as JSON, plus the body's length and sha256."""
    body = read_all(environ)
    data = _environ_json(environ)
    data["body_length"] = len(body)
    data["body_sha256"] = hashlib.sha256(body).hexdigest()
    data["pid"] = os.getpid()
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


def upload(environ, start_response):
    """Read the body in 64 KB pieces as it arrives; answer its length and sha256. With
    ?mark=PATH, append the pid to PATH before reading (tells a test the app runs)."""
    mark = environ["QUERY_STRING"].partition("mark=")[2]
    if mark:
        with open(mark, "a") as f:
            f.write(f"{os.getpid()}\n")
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = 0
    while True:
        block = stream.read(65536)
        if not block:
            break
        digest.update(block)
        total += len(block)
    out = json.dumps({"length": total, "sha256": digest.hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]


def big(environ, start_response):
    """Stream ?size= bytes (default 1 MB) of a repeating pattern, in ?block= pieces."""
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    size = int(query.get("size", 1 << 20))
    block = int(query.get("block", 65536))
    headers = [("Content-Type", "application/octet-stream")]
    if query.get("length") == "1":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    pattern = (bytes(range(256)) * (block // 256 + 1))[:block]

    def generate():
        left = size
        while left > 0:
            piece = pattern[:min(block, left)]
            left -= len(piece)
            yield piece

    return generate()


def slow(environ, start_response):
    """Sleep ?seconds= (default 1), then answer; with ?mark=PATH, append the pid to PATH
    first."""
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    if "mark" in query:  # tells a test the request is running
        with open(query["mark"], "a") as f:
            f.write(f"{os.getpid()}\n")
    read_all(environ)
    time.sleep(float(query.get("seconds", 1)))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept\n"]


def crash(environ, start_response):
    """Raise before the response (?when=before) or after its first block (?when=after)."""
    when = environ["QUERY_STRING"].partition("when=")[2] or "before"
    if when == "before":
        raise RuntimeError("crash before the response")
    start_response("200 OK", [("Content-Type", "text/plain")])

    def generate():
        yield b"first part\n"
        raise RuntimeError("crash after the response started")

    return generate()


class Closing:
    """An iterable whose close() records itself in a file named by ?mark=."""

    def __init__(self, path, blocks):
        self.path = path
        self.blocks = blocks

    def __iter__(self):
        return iter(self.blocks)

    def close(self):
        with open(self.path, "w") as f:
            f.write("closed")


def closing(environ, start_response):
    path = environ["QUERY_STRING"].partition("mark=")[2]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing(path, [b"a", b"b"])


def router(environ, start_response):
    """Route /echo, /upload, /big, /slow, /crash, /closing, /write, and / (hello)."""
    path = environ["PATH_INFO"]
    for name, app in (("/echo", echo), ("/upload", upload), ("/big", big), ("/slow", slow),
                      ("/crash", crash), ("/closing", closing), ("/write", write_app),
                      ("/status", status_app), ("/endless", endless), ("/noread", noread),
                      ("/gated", gated), ("/die", die), ("/excinfo", excinfo),
                      ("/barrier", barrier), ("/busy", busy)):
        if path.startswith(name):
            return app(environ, start_response)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!\n"]


def write_app(environ, start_response):
    """Use the legacy write() callable, then return more blocks."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"returned\n"]


def status_app(environ, start_response):
    """Answer the status in ?code= with a short body."""
    code = environ["QUERY_STRING"].partition("code=")[2] or "204"
    reasons = {"204": "No Content", "304": "Not Modified", "404": "Not Found",
               "500": "Internal Server Error"}
    start_response(f"{code} {reasons.get(code, 'Whatever')}", [("Content-Type", "text/plain")])
    return [b"body"]


def endless(environ, start_response):
    """Stream blocks until the client goes away; close() writes 'closed' to ?mark=."""
    path = environ["QUERY_STRING"].partition("mark=")[2]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    class Stream:
        def __iter__(self):
            block = b"x" * 65536
            while True:
                yield block

        def close(self):
            with open(path, "w") as f:
                f.write("closed")

    return Stream()


def noread(environ, start_response):
    """Answer without reading the request body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"noread\n"]


def gated(environ, start_response):
    """Wait until the file ?go=PATH exists (a test creates it), then read the body like
    upload(). Until then the body stays unread, so flow control must hold it back."""
    path = environ["QUERY_STRING"].partition("go=")[2]
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return upload(environ, start_response)


def die(environ, start_response):
    """Kill this worker process in the middle of the request, before any response: always,
    or with ?once=PATH only while PATH does not exist (it is created first)."""
    once = environ["QUERY_STRING"].partition("once=")[2]
    if once:
        if os.path.exists(once):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"survived\n"]
        with open(once, "w") as f:
            f.write("died")
    os._exit(1)


def excinfo(environ, start_response):
    """Start a 200, hit an error, replace it with a 500 through exc_info (PEP 3333)."""
    import sys

    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"recovered\n"]


def make_app(greeting="Hello"):
    """An app factory, as ``module:make_app()`` or ``module:make_app("Hi")`` names it."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{greeting} from a factory\n".encode()]

    return app


def barrier(environ, start_response):
    """Wait until ?n= requests have arrived (each leaves a file in ?dir=): only a worker that
    serves them at once gets past it. Gives up after 30 s with 503."""
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    directory, wanted = query["dir"], int(query["n"])
    with open(os.path.join(directory, f"{os.getpid()}-{id(environ)}"), "w") as f:
        f.write("here")
    deadline = time.monotonic() + 30
    while len(os.listdir(directory)) < wanted:
        if time.monotonic() > deadline:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"the others never came\n"]
        time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"all here\n"]


def busy(environ, start_response):
    """Keep the worker busy for ?ms= milliseconds of CPU, then answer."""
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    until = time.monotonic() + int(query.get("ms", 20)) / 1000
    while time.monotonic() < until:
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]

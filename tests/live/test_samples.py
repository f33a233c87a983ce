"""The sample apps of ``sample_apps/``, unmodified, through a real front and handler pool.

Each test serves one sample with ``stack.serve`` and talks HTTP to it with ``requests``, the
way a user of the README's quick start would.
"""

from __future__ import annotations

import hashlib
import os
import re

import requests

from support import ROOT

TIMEOUT = 15
FLASK = "sample_apps.flask_app:app"
DJANGO = "sample_apps.django_project.mysite.wsgi:application"
PLAIN = "sample_apps.wsgi_app:application"


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def pattern(size: int) -> bytes:
    """What the Flask sample's ``/download?size=`` sends: bytes 0..255, repeated."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# -- Flask ----------------------------------------------------------------------------------

def test_flask_hello_and_json(stack):
    """1. serve the Flask sample with 2 workers 2. GET / 3. GET /json?x=1
    4. the hello text comes back; the JSON shows the client's address 127.0.0.1 (not the
    handler's), the query, and the pid of a handler worker, not of the handler's arbiter."""
    _, handler, port = stack.serve(app=FLASK, workers=2)
    base = base_url(port)

    hello = requests.get(f"{base}/", timeout=TIMEOUT)
    assert hello.status_code == 200
    assert hello.text == "Hello from Flask behind wsgi_zmq!\n"
    assert hello.headers["Content-Type"].startswith("text/html")

    document = requests.get(f"{base}/json", params={"x": "1"}, timeout=TIMEOUT)
    assert document.status_code == 200
    assert document.headers["Content-Type"] == "application/json"
    data = document.json()
    assert data["remote_addr"] == "127.0.0.1"
    assert data["args"] == {"x": "1"}
    assert data["path"] == "/json"
    assert isinstance(data["pid"], int)
    assert data["pid"] not in (os.getpid(), handler.pid)


def test_flask_form(stack):
    """1. serve the Flask sample 2. GET /form 3. POST /form urlencoded with a name that
    contains markup 4. the GET has the form; the POST greets the name, escaped."""
    _, _, port = stack.serve(app=FLASK)
    base = base_url(port)

    page = requests.get(f"{base}/form", timeout=TIMEOUT)
    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert 'name="name"' in page.text

    posted = requests.post(f"{base}/form", data={"name": "<Ada & Co>"}, timeout=TIMEOUT)
    assert posted.status_code == 200
    assert "Hello, &lt;Ada &amp; Co&gt;!" in posted.text
    assert "<Ada" not in posted.text


def test_flask_multipart_upload(stack):
    """1. serve the Flask sample 2. POST a 3 MB random file as multipart/form-data to
    /upload 3. the answer names the file, its exact size and its sha256."""
    _, _, port = stack.serve(app=FLASK)
    data = os.urandom(3 * 1024 * 1024 + 123)

    response = requests.post(f"{base_url(port)}/upload",
                             files={"file": ("random.bin", data, "application/octet-stream")},
                             timeout=TIMEOUT)

    assert response.status_code == 200
    assert response.json() == {"filename": "random.bin", "size": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()}


def test_flask_upload_without_file_is_400(stack):
    """1. serve the Flask sample 2. POST /upload with a form field but no file
    3. the app's own 400 comes back, and the worker serves the next request."""
    _, _, port = stack.serve(app=FLASK)
    base = base_url(port)

    response = requests.post(f"{base}/upload", files={"other": ("x.txt", b"x")},
                             timeout=TIMEOUT)
    assert response.status_code == 400
    assert requests.get(f"{base}/", timeout=TIMEOUT).status_code == 200


def test_flask_streaming_download(stack):
    """1. serve the Flask sample 2. GET /download?size=20 MB, reading the body as it streams
    3. the head says application/octet-stream and the length; exactly that many bytes
    arrive, each the expected one 4. a bad size gets 400."""
    _, _, port = stack.serve(app=FLASK)
    size = 20 * 1000 * 1000 + 7

    with requests.get(f"{base_url(port)}/download", params={"size": str(size)}, stream=True,
                      timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Length"] == str(size)
        body = b"".join(response.iter_content(256 * 1024))
    assert len(body) == size
    assert body == pattern(size)

    bad = requests.get(f"{base_url(port)}/download", params={"size": "-1"}, timeout=TIMEOUT)
    assert bad.status_code == 400


# -- Django ---------------------------------------------------------------------------------

def csrf_field(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, f"no CSRF field in the form:\n{html}"
    return match.group(1)


def test_django_index(stack):
    """1. serve the Django sample 2. GET / 3. 200 with the rendered template, which shows
    the client's address 127.0.0.1 4. an unknown path gets Django's 404."""
    _, _, port = stack.serve(app=DJANGO)
    base = base_url(port)

    page = requests.get(f"{base}/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Hello from Django behind wsgi_zmq!" in page.text
    assert "Your address: 127.0.0.1;" in page.text
    assert page.headers["X-Frame-Options"] == "DENY"

    assert requests.get(f"{base}/missing/", timeout=TIMEOUT).status_code == 404


def test_django_csrf_form_and_session(stack):
    """1. serve the Django sample with 2 workers 2. GET /form/ in a requests.Session: it
    sets the csrftoken cookie and has the hidden token field 3. POST a name with the token
    and the Origin and Referer of the site 4. the POST redirects to /form/ and sets the
    signed session cookie 5. every following GET of /form/ (whichever worker serves it)
    shows the name stored in the session."""
    _, _, port = stack.serve(app=DJANGO, workers=2)
    base = base_url(port)
    with requests.Session() as client:
        form = client.get(f"{base}/form/", timeout=TIMEOUT)
        assert form.status_code == 200
        assert "csrftoken" in client.cookies
        token = csrf_field(form.text)
        assert "Your session says" not in form.text

        posted = client.post(f"{base}/form/",
                             data={"csrfmiddlewaretoken": token, "name": "Ada Lovelace"},
                             headers={"Origin": base, "Referer": f"{base}/form/"},
                             allow_redirects=False, timeout=TIMEOUT)
        assert posted.status_code == 302, posted.text
        assert posted.headers["Location"] == "/form/"
        assert "sessionid" in client.cookies

        for _ in range(4):
            again = client.get(f"{base}/form/", timeout=TIMEOUT)
            assert again.status_code == 200
            assert "Your session says your name is Ada Lovelace." in again.text


def test_django_post_without_csrf_token_is_403(stack):
    """1. serve the Django sample 2. POST /form/ with no cookie and no token 3. GET /form/
    in a session, then POST without the token field 4. both POSTs get 403 and nothing is
    stored in the session."""
    _, _, port = stack.serve(app=DJANGO)
    base = base_url(port)

    bare = requests.post(f"{base}/form/", data={"name": "Mallory"},
                         headers={"Origin": base}, timeout=TIMEOUT)
    assert bare.status_code == 403

    with requests.Session() as client:
        assert client.get(f"{base}/form/", timeout=TIMEOUT).status_code == 200
        posted = client.post(f"{base}/form/", data={"name": "Mallory"},
                             headers={"Origin": base, "Referer": f"{base}/form/"},
                             allow_redirects=False, timeout=TIMEOUT)
        assert posted.status_code == 403
        assert "sessionid" not in client.cookies
        assert "Mallory" not in client.get(f"{base}/form/", timeout=TIMEOUT).text


# -- plain WSGI -----------------------------------------------------------------------------

def test_plain_wsgi_app(stack):
    """1. serve the plain WSGI sample 2. GET / 3. POST 200 KB to /echo 4. GET /stream
    5. GET /file 6. GET an unknown path 7. the hello text; the body reversed; the lines,
    chunked; the module's source byte for byte, with its length; 404."""
    _, _, port = stack.serve(app=PLAIN)
    base = base_url(port)

    hello = requests.get(f"{base}/", timeout=TIMEOUT)
    assert hello.status_code == 200
    assert hello.text == "Hello from a plain WSGI app behind wsgi_zmq!\n"

    data = os.urandom(200 * 1024)
    echo = requests.post(f"{base}/echo", data=data, timeout=TIMEOUT)
    assert echo.status_code == 200
    assert echo.content == data[::-1]

    lines = requests.get(f"{base}/stream", params={"lines": "1000"}, timeout=TIMEOUT)
    assert lines.status_code == 200
    assert lines.headers["Transfer-Encoding"] == "chunked"
    assert lines.text == "".join(f"line {n} of 1000\n" for n in range(1, 1001))

    source = (ROOT / "sample_apps" / "wsgi_app.py").read_bytes()
    served = requests.get(f"{base}/file", timeout=TIMEOUT)
    assert served.status_code == 200
    assert served.headers["Content-Length"] == str(len(source))
    assert served.content == source

    assert requests.get(f"{base}/missing", timeout=TIMEOUT).status_code == 404

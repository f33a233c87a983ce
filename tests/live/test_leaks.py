"""Nothing leaks, through real processes: no credential or request body in the error logs
(even at debug), credential headers masked in the access logs, no traceback to the client,
and a ``Server`` header that says only what ``server_header`` says.

A front and a handler pool on loopback, each with its error log (its stderr, in the file
``LiveProcess`` keeps) and an access log file of its own. Requests carry the secrets to
routes that succeed, crash, are refused by the parser and time out; after each fault the
service must still serve a GET.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from support import Response, Stack, connect, exchange, poll_until, read_responses

SECRET1, SECRET2, SECRET3, SECRET4 = "SECRET1", "SECRET2", "SECRET3", "SECRET4"
SECRET5 = "SECRET5"  # the password of a Basic Authorization (``u`` must still work)
SECRET6 = "SECRET6"  # in the Set-Cookie of tests/apps/leaks.py
PROXY_BASIC = base64.b64encode(f"proxyuser:{SECRET3}".encode()).decode()
USER_BASIC = base64.b64encode(f"alice:{SECRET5}".encode()).decode()
#: what must never be in a log file
SECRETS = (SECRET1, SECRET2, SECRET3, SECRET4, SECRET5, SECRET6, PROXY_BASIC, USER_BASIC)
CREDENTIALS = (f"Authorization: Bearer {SECRET1}\r\n"
               f"Cookie: session={SECRET2}\r\n"
               f"Proxy-Authorization: Basic {PROXY_BASIC}\r\n")
BODY = f"user=bob&password={SECRET4}&end=1".encode()

APP = "apps.leaks:app"
FIELDS = ("worker", "s", "r", "u", "{authorization}i", "{proxy-authorization}i",
          "{cookie}i", "{set-cookie}o")
FORMAT = "|".join(f"%({atom})s" for atom in FIELDS)
ERROR_BODY = b"Internal Server Error\n"


def request(method: str, path: str, extra: str = "", body: bytes = b"",
            version: str = "1.1") -> bytes:
    """A request carrying every credential header (and ``extra`` lines), with ``body``
    sent with a Content-Length."""
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {path} HTTP/{version}\r\nHost: test\r\n{CREDENTIALS}{extra}{length}"
            "\r\n").encode() + body


def chunked(path: str, chunks: bytes) -> bytes:
    """A POST carrying every credential header, with a chunked body of raw ``chunks``."""
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\n{CREDENTIALS}"
            "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks


def servers(response: Response) -> list[str]:
    return [value.decode("latin-1") for name, value in response.headers
            if name.lower() == b"server"]


def one(port: int, data: bytes, timeout: float = 10.0) -> tuple[Response, bool]:
    responses, closed = exchange(port, data, timeout=timeout)
    assert responses, "no response"
    return responses[0], closed


def still_serves(port: int) -> None:
    """The fault left the service whole: a plain GET is answered 200."""
    response, _ = one(port, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n", timeout=20)
    assert response.status == 200
    assert response.body == b"Hello, world!\n"


def access_lines(path: Path) -> list[dict[str, str]]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [dict(zip(FIELDS, line.split("|"), strict=True)) for line in text.splitlines()]


def start(stack: Stack, tmp_path: Path, *args: str, workers: int = 2):
    """A front (``--request-timeout 0.5``) and a handler pool at debug, each with an access
    log in FORMAT; ``args`` go to both."""
    front_access, handler_access = tmp_path / "front-access.log", tmp_path / "handler-access.log"
    common = ("--log-level", "debug", "--access-logformat", FORMAT, *args)
    front, handler, port = stack.serve(
        APP, workers=workers,
        front_args=(*common, "--access-logfile", str(front_access), "--request-timeout",
                    "0.5"),
        handler_args=(*common, "--access-logfile", str(handler_access)))
    return front, handler, port, front_access, handler_access


def test_no_secret_reaches_a_log_and_credentials_are_masked(stack, tmp_path):
    """1. a front and a handler pool at --log-level debug, with access logs whose format
    has u, {authorization}i, {proxy-authorization}i, {cookie}i, {set-cookie}o 2. requests
    carrying Authorization (Bearer SECRET1), Cookie (SECRET2), Proxy-Authorization (Basic,
    SECRET3) and a body with SECRET4: served (Content-Length and chunked bodies), crashing
    before the response (500) and after it (cut), refused by the parser (a malformed chunk
    after the head; a control character in the Cookie value), timed out (504); a response
    with a Set-Cookie (SECRET6); a Basic Authorization (alice, SECRET5) 3. the 500 is the
    plain text ``Internal Server Error`` without traceback text 4. after each fault a GET
    is served 5. no secret (nor the base64 of a Basic credential) is in any error log or
    access log 6. the access lines show ``***`` for each credential header present and
    ``alice`` for ``u``."""
    front, handler, port, front_access, handler_access = start(stack, tmp_path)

    served, _ = one(port, request("POST", "/echo", body=BODY))
    assert served.status == 200
    assert served.header("Server") == "wsgi_zmq"
    body = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY, 5, b"tail!")
    streamed, _ = one(port, chunked("/echo", body))
    assert streamed.status == 200
    still_serves(port)

    crashed, _ = one(port, request("POST", "/crash", body=BODY))
    assert crashed.status == 500
    assert crashed.reason == b"Internal Server Error"
    assert crashed.body == ERROR_BODY
    assert crashed.header("Content-Type") == "text/plain; charset=utf-8"
    assert b"Traceback" not in crashed.body and b"RuntimeError" not in crashed.body
    still_serves(port)

    with connect(port) as sock:  # the head is out: the response is cut, not completed
        sock.sendall(request("GET", "/crash?when=after"))
        responses, closed = read_responses(sock, 1)
    assert closed and not responses
    still_serves(port)

    # the head is good and the app reads the body; then a chunk size that is not hex
    mark = tmp_path / "reading"
    with connect(port) as sock:
        sock.sendall(chunked(f"/upload?mark={mark}", b"%x\r\n%b\r\n" % (len(BODY), BODY)))
        poll_until(mark.exists, 10, message="the app to read the body")
        sock.sendall(b"zz\r\n%b\r\n" % BODY)
        [refused], _ = read_responses(sock, 1)
    assert refused.status == 400 and refused.header("Connection") == "close"
    assert refused.header("Server") == "wsgi_zmq"
    still_serves(port)
    # all of it in one piece: refused before a worker sees it
    refused, _ = one(port, chunked("/echo", b"%x\r\n%b\r\nzz\r\n%b\r\n"
                                   % (len(BODY), BODY, BODY)))
    assert refused.status == 400 and refused.header("Connection") == "close"
    still_serves(port)

    bad_head = (f"POST /echo HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {SECRET1}\r\n"
                f"Cookie: session={SECRET2}\x01\r\nContent-Length: {len(BODY)}\r\n\r\n"
                ).encode() + BODY
    refused, _ = one(port, bad_head)
    assert refused.status == 400 and refused.header("Connection") == "close"
    still_serves(port)

    timed_out, _ = one(port, request("POST", "/slow?seconds=1.5", body=BODY), timeout=20)
    assert timed_out.status == 504
    assert timed_out.header("Server") == "wsgi_zmq"
    still_serves(port)

    cookie, _ = one(port, request("GET", "/set-cookie"))
    assert cookie.status == 200 and SECRET6 in (cookie.header("Set-Cookie") or "")
    user, _ = one(port, f"GET /user HTTP/1.1\r\nHost: test\r\nAuthorization: Basic "
                        f"{USER_BASIC}\r\n\r\n".encode())
    assert user.status == 200
    still_serves(port)

    def logged() -> bool:
        worker = [line["r"] for line in access_lines(handler_access)]
        refusals = [line["s"] for line in access_lines(front_access)]
        # the timed-out request's worker writes its line once the app is done with it
        return ("POST /slow?seconds=1.5 HTTP/1.1" in worker and "GET /user HTTP/1.1" in worker
                and refusals.count("400") == 3 and "504" in refusals)

    poll_until(logged, 20, interval=0.1, message="the access lines of every request")
    front_log, handler_log = front.log(), handler.log()
    assert re.search(r"\[DEBUG\] ", front_log), "the front does not log at debug"
    assert re.search(r"\[DEBUG\] ", handler_log), "the handler does not log at debug"
    assert "Error handling request POST /crash" in handler_log  # the 500 was logged...
    assert "Traceback" in handler_log  # ...with its traceback, in the log only
    stack.stop_all()  # whatever is logged at the end too

    files = {"front error log": front.log(), "handler error log": handler.log(),
             "front access log": front_access.read_text(errors="replace"),
             "handler access log": handler_access.read_text(errors="replace")}
    for name, text in files.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in the {name}:\n{text[-3000:]}"
        assert "session=" not in text, name

    worker_lines = access_lines(handler_access)
    posted = [line for line in worker_lines if line["r"] == "POST /echo HTTP/1.1"]
    assert len(posted) >= 2  # Content-Length and chunked (the refused one may be there too)
    crashed_line = next(line for line in worker_lines if line["r"] == "POST /crash HTTP/1.1")
    slow_line = next(line for line in worker_lines if line["r"].startswith("POST /slow"))
    cut_line = next(line for line in worker_lines if line["r"].startswith("POST /upload"))
    for line in (*posted, crashed_line, slow_line, cut_line):
        assert line["{authorization}i"] == "***", line
        assert line["{proxy-authorization}i"] == "***", line
        assert line["{cookie}i"] == "***", line
        assert line["u"] == "-", line  # a Bearer token names no user
        assert line["{set-cookie}o"] == "-", line
    assert crashed_line["s"] == "500"
    cookie_line = next(line for line in worker_lines if line["r"] == "GET /set-cookie HTTP/1.1")
    assert cookie_line["{set-cookie}o"] == "***"
    user_line = next(line for line in worker_lines if line["r"] == "GET /user HTTP/1.1")
    assert user_line["u"] == "alice"
    assert user_line["{authorization}i"] == "***"
    assert user_line["{cookie}i"] == user_line["{proxy-authorization}i"] == "-"
    plain = next(line for line in worker_lines if line["r"] == "GET / HTTP/1.1")
    assert plain["{authorization}i"] == plain["{cookie}i"] == plain["u"] == "-"

    front_lines = access_lines(front_access)
    assert all(line["worker"] == "front" for line in front_lines)
    [timeout_line] = [line for line in front_lines if line["s"] == "504"]
    assert timeout_line["r"] == "POST /slow?seconds=1.5 HTTP/1.1"
    assert timeout_line["{authorization}i"] == "***"
    assert timeout_line["{proxy-authorization}i"] == "***"
    assert timeout_line["{cookie}i"] == "***"


def test_access_log_secrets_shows_the_values(stack, tmp_path):
    """1. --access-log-secrets on both 2. a request with every credential header 3. the
    worker's access line holds the values (the operator asked for them)."""
    _, _, port, _, handler_access = start(stack, tmp_path, "--access-log-secrets",
                                          workers=1)
    served, _ = one(port, request("GET", "/echo"))
    assert served.status == 200
    poll_until(lambda: access_lines(handler_access), 10, message="the access line")
    [line] = access_lines(handler_access)
    assert line["{authorization}i"] == f"Bearer {SECRET1}"
    assert line["{cookie}i"] == f"session={SECRET2}"
    assert line["{proxy-authorization}i"] == f"Basic {PROXY_BASIC}"


@pytest.mark.parametrize(("args", "expected"), [
    ((), "wsgi_zmq"),
    (("--server-header", ""), None),
    (("--server-header", "Foo"), "Foo"),
], ids=["default", "empty", "custom"])
def test_server_header(stack, tmp_path, args, expected):
    """1. a front and a handler pool with ``args`` 2. the head a worker renders (a list
    body, a streamed chunked body, a HEAD), a worker's 500, the front's own 400 (no Host)
    and 504 (timeout) 3. each carries ``Server: EXPECTED`` once, or none when the setting
    is empty 4. an app that sets its own ``server`` header gets exactly that one, always."""
    _, _, port, _, _ = start(stack, tmp_path, *args)
    want = [expected] if expected else []

    plain, _ = one(port, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert plain.status == 200 and servers(plain) == want
    streamed, _ = one(port, b"GET /big?size=1000 HTTP/1.1\r\nHost: test\r\n\r\n")
    assert streamed.header("Transfer-Encoding") == "chunked" and servers(streamed) == want
    old, _ = one(port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert old.status == 200 and servers(old) == want
    [head], _ = exchange(port, b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n", head=True)
    assert [v.decode() for k, v in head.headers if k.lower() == b"server"] == want

    crashed, _ = one(port, b"GET /crash HTTP/1.1\r\nHost: test\r\n\r\n")
    assert crashed.status == 500 and crashed.body == ERROR_BODY
    assert servers(crashed) == want
    refused, _ = one(port, b"GET / HTTP/1.1\r\n\r\n")
    assert refused.status == 400 and servers(refused) == want
    timed_out, _ = one(port, b"GET /slow?seconds=1 HTTP/1.1\r\nHost: test\r\n\r\n",
                       timeout=20)
    assert timed_out.status == 504 and servers(timed_out) == want

    own, _ = one(port, b"GET /own-server HTTP/1.1\r\nHost: test\r\n\r\n")
    assert own.status == 200 and servers(own) == ["AppServer/1"]
    still_serves(port)

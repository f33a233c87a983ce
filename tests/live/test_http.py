"""HTTP/1.1 behaviour of the front, through a real front and handler pool, over raw sockets."""

from __future__ import annotations

import hashlib
import json

import pytest

from support import connect, exchange, get, poll_until, read_responses, wait_closed


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """One front and one handler pool (2 workers) shared by the tests of this module."""
    from support import Stack

    stack = Stack(tmp_path_factory.mktemp("http"))
    try:
        _, _, http_port = stack.serve(
            workers=2,
            front_args=("--limit-request-body", "1000000", "--limit-request-line", "4096",
                        "--limit-request-fields", "20", "--limit-request-field-size", "2048"))
        yield http_port
    finally:
        stack.stop_all()




def test_keep_alive_serves_several_requests_on_one_connection(port):
    """1. open one connection 2. send three requests one after the other 3. each gets 200
    and the connection stays open."""
    with connect(port) as sock:
        for i in range(3):
            sock.sendall(get(f"/echo?n={i}"))
            [response], closed = read_responses(sock, 1)
            assert response.status == 200
            assert json.loads(response.body)["QUERY_STRING"] == f"n={i}"
            assert not closed


def test_http10_closes_after_the_response(port):
    """1. send an HTTP/1.0 request without keep-alive 2. it is answered 3. the server
    closes the connection."""
    [response], closed = exchange(port, b"GET / HTTP/1.0\r\n\r\n", count=2)
    assert response.status == 200
    assert response.body == b"Hello, world!\n"
    assert closed


def test_http10_keep_alive_is_honoured(port):
    """1. HTTP/1.0 with Connection: keep-alive 2. the response says keep-alive 3. a second
    request on the same connection is served."""
    with connect(port) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            [response], closed = read_responses(sock, 1)
            assert response.status == 200
            assert response.header("Connection") == "keep-alive"
            assert not closed


def test_http10_streamed_response_is_close_delimited(port):
    """1. HTTP/1.0 asks for a generated body of unknown length 2. no chunked coding is used
    3. the body ends with the connection."""
    [response], closed = exchange(port, b"GET /big?size=200000 HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.header("Transfer-Encoding") is None
    assert len(response.body) == 200000
    assert closed


def test_pipelined_requests_are_answered_in_order(port):
    """1. send a GET, a POST with a body and another GET in one write 2. three responses
    come back in the order of the requests, each with the right content."""
    body = b"x" * 5000
    data = (get("/echo?n=1")
            + b"POST /echo?n=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + body
            + get("/echo?n=3"))
    responses, closed = exchange(port, data, count=3)
    assert [json.loads(r.body)["QUERY_STRING"] for r in responses] == ["n=1", "n=2", "n=3"]
    assert json.loads(responses[1].body)["body_length"] == 5000
    assert not closed


def test_chunked_request_body(port):
    """1. POST a body in chunked coding, split in several chunks and writes 2. the app reads
    all of it: same length and sha256."""
    payload = bytes(range(256)) * 400
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(payload), 30000):
            piece = payload[start:start + 30000]
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        [response], _ = read_responses(sock, 1)
    result = json.loads(response.body)
    assert result == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_expect_100_continue_when_the_app_reads_the_body(port):
    """1. send only the head with Expect: 100-continue 2. the front answers 100 Continue
    once the app asks for the body 3. send the body 4. the final answer has its length."""
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"z" * 300000)
        [response], _ = read_responses(sock, 1)
    assert response.status == 200
    assert json.loads(response.body)["length"] == 300000


def test_expect_100_continue_when_the_app_does_not_read(port):
    """1. Expect: 100-continue to an app that answers without reading 2. the answer comes
    with no 100 before it 3. the connection is closed (the unread body cannot be
    skipped)."""
    with connect(port) as sock:
        sock.sendall(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        [response], _ = read_responses(sock, 1)
        assert response.status == 200
        assert response.body == b"noread\n"
        assert wait_closed(sock)


def test_head_has_no_body_but_the_get_headers(port):
    """1. GET / and HEAD / 2. the HEAD answer has the same Content-Length and no body."""
    [got], _ = exchange(port, get("/"))
    with connect(port) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        [head], _ = read_responses(sock, 1, head=True)
        sock.sendall(get("/"))
        [after], _ = read_responses(sock, 1)  # nothing stray between the two answers
    assert head.status == 200
    assert head.header("Content-Length") == got.header("Content-Length")
    assert after.body == b"Hello, world!\n"


def test_response_without_length_is_chunked(port):
    """1. the app streams a generator without Content-Length 2. HTTP/1.1 gets chunked coding
    3. the body is complete and the connection stays usable."""
    with connect(port) as sock:
        sock.sendall(get("/big?size=300000&block=10000") + get("/"))
        responses, closed = read_responses(sock, 2)
    assert responses[0].header("Transfer-Encoding") == "chunked"
    assert len(responses[0].body) == 300000
    assert responses[1].body == b"Hello, world!\n"
    assert not closed


def test_streamed_response_with_content_length(port):
    """1. the app streams with its own Content-Length 2. it is kept and no chunked coding
    is added."""
    [response], _ = exchange(port, get("/big?size=1000000&length=1"))
    assert response.header("Content-Length") == "1000000"
    assert response.header("Transfer-Encoding") is None
    assert len(response.body) == 1000000


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                  # no Host
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),              # smuggling
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 25 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n", 413),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),             # TLS to a plain port
])
def test_malformed_requests_get_the_right_4xx_and_a_close(port, request_bytes, status):
    """1. send a request RFC 9112 (or a limit) refuses 2. the answer has the status, a short
    body and Connection: close 3. the connection is closed."""
    responses, closed = exchange(port, request_bytes, count=2)
    assert [r.status for r in responses] == [status]
    assert responses[0].header("Connection") == "close"
    assert 0 < len(responses[0].body) < 200
    assert closed


def test_chunked_body_over_the_limit_gets_413(port):
    """1. stream a chunked body past --limit-request-body 2. the front answers 413 and
    closes."""
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(40):
                sock.sendall(b"%x\r\n%b\r\n" % (50000, b"q" * 50000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        responses, closed = read_responses(sock, 2)
    assert [r.status for r in responses] == [413]
    assert closed


def test_requests_before_a_bad_one_are_answered_first(port):
    """1. pipeline a good request, then garbage 2. the good one is answered 3. then 400 and
    the connection closes."""
    responses, closed = exchange(port, get("/") + b"GET /\x01 HTTP/1.1\r\n\r\n", count=3)
    assert [r.status for r in responses] == [200, 400]
    assert closed


def test_environ_is_complete(port):
    """1. GET /echo with a query and duplicate headers 2. the environ has every PEP 3333 key
    with the right values."""
    [response], _ = exchange(port, b"GET /echo/a%20b?x=1&y=2 HTTP/1.1\r\nHost: example.org\r\n"
                                   b"X-Dup: 1\r\nX-Dup: 2\r\nX_Under: dropped\r\n\r\n")
    env = json.loads(response.body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/echo/a b"
    assert env["QUERY_STRING"] == "x=1&y=2"
    assert env["RAW_URI"] == "/echo/a%20b?x=1&y=2"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert int(env["REMOTE_PORT"]) > 0
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(port)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False
    assert env["wsgi.run_once"] is False
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_HOST"] == "example.org"
    assert env["HTTP_X_DUP"] == "1,2"
    assert "HTTP_X_UNDER" not in env


def test_write_callable(port):
    """1. the app writes with the legacy write() and returns more 2. both parts arrive in
    order."""
    [response], _ = exchange(port, get("/write"))
    assert response.body == b"written returned\n"


@pytest.mark.parametrize("code", ["204", "304"])
def test_no_body_statuses(port, code):
    """1. the app answers 204 or 304 with a body 2. no body reaches the client and the
    connection stays in sync for a next request."""
    with connect(port) as sock:
        sock.sendall(get(f"/status?code={code}"))
        [first], _ = read_responses(sock, 1, head=True)
        sock.sendall(get("/"))
        [second], _ = read_responses(sock, 1)
    assert first.status == int(code)
    assert second.body == b"Hello, world!\n"


def test_app_exception_gives_500_and_the_worker_lives_on(port):
    """1. the app raises before starting its response 2. the client gets 500 3. the next
    requests are served by the same workers (no restart)."""
    pids = {json.loads(exchange(port, get("/echo"))[0][0].body)["pid"] for _ in range(6)}
    [response], _ = exchange(port, get("/crash"))
    assert response.status == 500
    after = {json.loads(exchange(port, get("/echo"))[0][0].body)["pid"] for _ in range(6)}
    assert after <= pids


def test_app_exception_after_the_head_cuts_the_connection(port):
    """1. the app raises after its first block 2. the client sees the head and first block,
    then the connection closes without the chunked terminator (a truncated response, not a
    complete wrong one)."""
    with connect(port) as sock:
        sock.sendall(get("/crash?when=after"))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"first part" in data
    assert not data.endswith(b"0\r\n\r\n")


def test_close_is_called_on_the_app_iterator(port, tmp_path):
    """1. the app returns an iterable with close() 2. after the response, close() ran."""
    mark = tmp_path / "closed"
    [response], _ = exchange(port, get(f"/closing?mark={mark}"))
    assert response.body == b"ab"
    poll_until(mark.exists, 10, message="close() to run")


def test_client_going_away_cancels_the_stream(port, tmp_path):
    """1. the app streams without end 2. the client reads a little and closes 3. the worker
    is told (CANCEL), stops and calls close() on the iterator 4. the worker serves the next
    request."""
    mark = tmp_path / "closed"
    with connect(port) as sock:
        sock.sendall(get(f"/endless?mark={mark}"))
        received = 0
        while received < 500000:
            received += len(sock.recv(65536))
    poll_until(mark.exists, 10, message="close() after the client left")
    for _ in range(4):
        [response], _ = exchange(port, get("/"))
        assert response.status == 200


def test_start_response_with_exc_info_replaces_the_head(port):
    """1. the app starts a 200, then calls start_response again with exc_info before any
    body 2. the client gets the 500 it asked for second, with its body."""
    [response], _ = exchange(port, get("/excinfo"))
    assert response.status == 500
    assert response.body == b"recovered\n"


def test_app_wrapped_in_wsgiref_validator(stack):
    """1. serve the echo router wrapped in wsgiref.validate.validator 2. GET, POST with a
    body, a streamed response, write(), HEAD 3. every answer is right: the validator found
    no PEP 3333 violation in the environ, input, start_response or iteration (it would
    raise AssertionError and the worker would answer 500) 4. the worker logged no error."""
    _, handler, port = stack.serve(app="apps.validated:application")
    [response], _ = exchange(port, get("/echo?x=1"))
    assert response.status == 200
    assert json.loads(response.body)["QUERY_STRING"] == "x=1"
    [response], _ = exchange(port, b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 70000"
                                   b"\r\n\r\n" + b"p" * 70000)
    assert json.loads(response.body)["length"] == 70000
    [response], _ = exchange(port, get("/big?size=300000"))
    assert len(response.body) == 300000
    [response], _ = exchange(port, get("/write"))
    assert response.body == b"written returned\n"
    with connect(port) as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        [response], _ = read_responses(sock, 1, head=True)
    assert response.status == 200
    assert "[ERROR]" not in handler.log()


def test_an_answer_before_the_body_skips_the_rest_and_serves_on(port):
    """1. PUT /noread with Content-Length 5, and only the head at first 2. the app answers
    200 without reading the body, and the answer does not say Connection: close 3. the body
    and a GET then arrive on the same connection 4. the front skips the 5 bytes and answers
    the GET (a client may reuse a connection whose answer did not announce a close)."""
    with connect(port) as sock:
        sock.sendall(b"PUT /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        [early], closed = read_responses(sock, 1)
        assert early.status == 200 and early.header("Connection") is None and not closed
        sock.sendall(b"hello" + get("/"))
        [after], _ = read_responses(sock, 1)
        assert after.body == b"Hello, world!\n"


def test_an_answer_before_a_large_body_closes_the_connection(port):
    """1. POST /noread announcing 900 KB, and 64 KB of it 2. the app answers 200 without
    reading 3. more than 256 KB is still to come: the front closes after the answer, as
    RFC 9112 section 9.3 allows, and its answer says so."""
    with connect(port) as sock:
        sock.sendall(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 900000\r\n\r\n"
                     + b"x" * 65536)
        [response], closed = read_responses(sock, 1)
        assert response.status == 200
        assert response.header("Connection") == "close"  # the client is told
        assert closed or wait_closed(sock)


def test_an_answer_before_a_chunked_body_says_it_closes(port):
    """1. a chunked POST /noread, its head and a first chunk 2. the app answers without
    reading: how much body is left cannot be known, so the answer says Connection: close
    3. the connection closes after it."""
    with connect(port) as sock:
        sock.sendall(b"POST /noread HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n4\r\nWiki\r\n")
        [response], closed = read_responses(sock, 1)
        assert response.status == 200
        assert response.header("Connection") == "close"
        assert closed or wait_closed(sock)

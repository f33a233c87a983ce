"""HEAD through a real all-in-one service: the headers the GET would have, framing included.

RFC 9110 section 9.3.2: a HEAD answer carries the header fields a GET of the same URL would,
and a server must not make up a ``Content-Length``. A response the app streams without a
length gets neither ``Content-Length`` nor ``Transfer-Encoding`` for HEAD (as gunicorn
answers it), even when the app, as werkzeug does, returns an empty body for HEAD; a response
of known length gets the GET's ``Content-Length``.
"""

from __future__ import annotations

import pytest

from support import connect, exchange, get, read_responses

#: (app, a URL it streams without a length, URLs it answers with a length)
APPS = [
    pytest.param("apps.flask_stream:app", "/stream", ["/fixed"], id="flask"),
    pytest.param("apps.echo:router", "/big?size=200000",
                 ["/big?size=200000&length=1", "/"], id="plain-wsgi"),
]


def head(target: str) -> bytes:
    return f"HEAD {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


@pytest.mark.parametrize(("app", "streamed", "fixed"), APPS)
def test_head_has_the_framing_of_the_get_and_no_other(stack, app, streamed, fixed):
    """1. GET and HEAD of a streamed URL and of URLs of known length, the HEADs on one
    keep-alive connection 2. the streamed GET is chunked; its HEAD has no Content-Length and
    no Transfer-Encoding 3. each HEAD of known length has its GET's Content-Length 4. then a
    GET on the same connection is answered 200 with its whole body: nothing stray came
    after a HEAD answer."""
    _, port = stack.all_in_one(app)
    [streamed_get], _ = exchange(port, get(streamed))
    assert streamed_get.status == 200
    assert streamed_get.header("Transfer-Encoding") == "chunked"
    assert streamed_get.header("Content-Length") is None
    fixed_gets = [exchange(port, get(target))[0][0] for target in fixed]
    with connect(port) as sock:
        sock.sendall(head(streamed))
        [answer], closed = read_responses(sock, 1, head=True)
        assert answer.status == 200 and not closed
        assert answer.header("Content-Length") is None
        assert answer.header("Transfer-Encoding") is None
        assert answer.header("Content-Type") == streamed_get.header("Content-Type")
        for target, got in zip(fixed, fixed_gets, strict=True):
            sock.sendall(head(target))
            [answer], closed = read_responses(sock, 1, head=True)
            assert answer.status == 200 and not closed
            assert got.header("Content-Length") == str(len(got.body))
            assert answer.header("Content-Length") == got.header("Content-Length")
            assert answer.header("Transfer-Encoding") is None
        sock.sendall(get(fixed[0]))
        [after], _ = read_responses(sock, 1)
    assert after.status == 200
    assert after.body == fixed_gets[0].body

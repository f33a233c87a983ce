"""``wsgi_zmq.front.routes``: which pool a request goes to, and the version it asks for or
sticks to. Pure: a ``Router`` built from a real ``Config``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_zmq.config import Config
from wsgi_zmq.front.routes import Router, host_of, parse_cookies, path_of


def router(*routes: str, **settings: str) -> Router:
    cfg = Config("front")
    cfg.set("route", list(routes))
    for name, value in settings.items():
        cfg.set(name, value)
    return Router(cfg)


ROUTES = ("/api=api:strip", "/api/v2=api2", "shop.example.com/=shop",
          "shop.example.com/api=shopapi", "*.example.com/=sub", "*.eu.example.com/v=eu",
          "/=web")


@pytest.mark.parametrize("host, target, pool, script", [
    (b"x", b"/", "web", None),
    (b"x", b"/api", "api", b"/api"),
    (b"x", b"/api/users?q=1", "api", b"/api"),
    (b"x", b"/apis", "web", None),                     # not under /api
    (b"x", b"/api/v2/x", "api2", None),                # the longer prefix
    (b"x", b"/api/v2x", "api", b"/api"),
    (b"shop.example.com", b"/cart", "shop", None),
    (b"SHOP.example.com:8443", b"/cart", "shop", None),  # case and port ignored
    (b"shop.example.com", b"/api/x", "shopapi", None),   # the host's routes come first
    (b"shop.example.com", b"/api/v2/x", "shopapi", None),  # even before a longer prefix
    (b"eu.example.com", b"/", "sub", None),
    (b"fr.eu.example.com", b"/v/1", "eu", None),       # the longer pattern first
    (b"fr.eu.example.com", b"/w", "sub", None),        # then the shorter
    (b"example.com", b"/", "web", None),                # *.example.com is subdomains only
    (b"x", b"http://other/api/y", "api", b"/api"),     # absolute form: its path
])
def test_routes_pick_the_pool(host: bytes, target: bytes, pool: str,
                              script: bytes | None) -> None:
    choice = router(*ROUTES).pick(target, [b"Host", host])
    assert (choice.pool, choice.script_name) == (pool, script)


def test_without_routes_everything_goes_to_default() -> None:
    r = router()
    assert not r.needed
    assert r.pick(b"/api", [b"Host", b"x"]).pool == "default"


def test_version_header_and_cookies() -> None:
    r = router(version_header="X-Version", version_cookie="wv", sticky_cookie="stick")
    assert r.needed
    choice = r.pick(b"/", [b"x-version", b" v2 ", b"Cookie", b"a=1; stick=v1"])
    assert (choice.asked, choice.sticky) == ("v2", "v1")
    choice = r.pick(b"/", [b"Cookie", b"wv=v3", b"Cookie", b"stick=\"v1\""])
    assert (choice.asked, choice.sticky) == ("v3", "v1")
    assert r.pick(b"/", [b"Cookie", b"wv="]).asked is None
    assert r.set_cookie("v1") == b"Set-Cookie: stick=v1; Path=/; HttpOnly; SameSite=Lax\r\n"


def test_helpers() -> None:
    assert host_of(b"[::1]:8000") == b"[::1]"
    assert host_of(b"Example.COM.") == b"example.com"
    assert path_of(b"/a/b?c") == b"/a/b"
    assert path_of(b"https://h") == b"/"
    cookies = parse_cookies([b"a=1; a=2; b=\"x\"; junk; =v"])
    assert cookies == {"a": "1", "b": "x"}
    assert len(parse_cookies([b"; ".join(b"c%d=1" % i for i in range(500))])) == 64


@given(st.binary(max_size=200), st.lists(st.binary(max_size=40), max_size=12))
def test_pick_takes_any_bytes(target: bytes, headers: list[bytes]) -> None:
    r = router(*ROUTES, version_header="X-Version", version_cookie="wv", sticky_cookie="s")
    choice = r.pick(target, headers)
    assert choice.pool in {"api", "api2", "shop", "shopapi", "sub", "eu", "web"}


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z-]{1,12}", fullmatch=True),
                          st.from_regex(r"[ -~]{0,30}", fullmatch=True)), max_size=6),
       st.binary(max_size=50), st.booleans())
def test_a_sticky_cookie_goes_into_the_response_head(fields: list[tuple[str, str]],
                                                     body: bytes, end: bool) -> None:
    """``_with_header`` adds the line as the head's last field and keeps the body; a head
    without its blank line (RAW mode) is left alone."""
    from wsgi_zmq import protocol as p
    from wsgi_zmq.front.server import _with_header

    head = ("HTTP/1.1 200 OK\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
            + "\r\n").encode()
    record = p.encode_response(1, p.RESP_END if end else 0, head, body)
    payload = p.split_frame(p.frame([record]))[0].payload
    line = b"Set-Cookie: s=v1; Path=/\r\n"
    out = p.decode_response(_with_header(payload, line))
    assert out.head == head[:-2] + line + b"\r\n"
    assert out.body == body and out.flags == (p.RESP_END if end else 0)
    raw = p.split_frame(p.frame([p.encode_response(1, 0, b"HTTP/1.1 200 OK\r\n", body)]))
    assert _with_header(raw[0].payload, line) == raw[0].payload

"""The PEP 3333 environ built from a decoded REQUEST (``wsgi_zmq.handler.environ``).

Pure: each test builds a ``RequestHead`` by hand (or decodes one from the wire) and checks
``build_environ`` key by key against PEP 3333, CGI (RFC 3875) and what gunicorn users expect.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from wsgi_zmq import protocol
from wsgi_zmq.handler import environ as environ_mod
from wsgi_zmq.handler.environ import build_environ, environ_key, split_target
from wsgi_zmq.protocol import RequestHead

BASE: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.errors": sys.stderr,
    "SCRIPT_NAME": "",
}


def head(target: str = "/", headers: list[str] | None = None, **fields: Any) -> RequestHead:
    """A RequestHead with sensible defaults; ``fields`` override any of them."""
    values: dict[str, Any] = {
        "flags": protocol.REQ_BODY_COMPLETE | protocol.REQ_KEEP_ALIVE, "window": 8,
        "method": "GET", "target": target, "version": "HTTP/1.1",
        "remote_addr": "192.0.2.7", "remote_port": 50123, "server_name": "front.example",
        "server_port": 8000, "url_scheme": "http",
        "headers": ["Host", "example.com"] if headers is None else headers, "body": b"",
    }
    values.update(fields)
    return RequestHead(**values)


def env(target: str = "/", headers: list[str] | None = None,
        base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return build_environ(head(target, headers, **fields), BASE if base is None else base)


@pytest.fixture(autouse=True)
def fresh_key_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty header-name cache, so caching cannot hide a bug."""
    monkeypatch.setattr(environ_mod, "_keys", {})


# -- the CGI keys --------------------------------------------------------------------------

def test_every_cgi_key_of_a_simple_request() -> None:
    environ = env("/hello/world?a=1&b=%20", method="POST", version="HTTP/1.0",
                  remote_addr="2001:db8::1", remote_port=65535, server_name="front.example",
                  server_port=443, url_scheme="https",
                  headers=["Host", "example.com:8443", "Content-Type", "text/plain",
                           "Content-Length", "5", "User-Agent", "t/1"])
    expected = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/hello/world",
        "QUERY_STRING": "a=1&b=%20",
        "RAW_URI": "/hello/world?a=1&b=%20",
        "REQUEST_URI": "/hello/world?a=1&b=%20",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "REMOTE_ADDR": "2001:db8::1",
        "REMOTE_PORT": "65535",
        "SERVER_NAME": "front.example",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "5",
        "HTTP_HOST": "example.com:8443",
        "HTTP_USER_AGENT": "t/1",
    }
    for key, value in expected.items():
        assert environ[key] == value, key
    assert set(environ) == set(expected) | set(BASE)


def test_pep3333_types_every_cgi_value_is_a_native_str() -> None:
    environ = env("/x?y", headers=["Host", "h", "Content-Length", "0", "X-A", "b"])
    for key, value in environ.items():
        if not key.startswith("wsgi."):
            assert type(value) is str, key
    # PEP 3333: SERVER_PORT and REMOTE_PORT are strings, never ints
    assert environ["SERVER_PORT"] == "8000"
    assert environ["REMOTE_PORT"] == "50123"


def test_the_base_keys_are_in_every_environ() -> None:
    environ = env()
    for key, value in BASE.items():
        assert environ[key] is value


@pytest.mark.parametrize("script_name", ["", "/app"])
def test_script_name_comes_from_base(script_name: str) -> None:
    environ = env("/app/x", base={**BASE, "SCRIPT_NAME": script_name})
    assert environ["SCRIPT_NAME"] == script_name


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "PROPFIND"])
def test_request_method_as_received(method: str) -> None:
    assert env(method=method)["REQUEST_METHOD"] == method


def test_an_empty_query_is_an_empty_string() -> None:
    assert env("/p")["QUERY_STRING"] == ""
    assert env("/p?")["QUERY_STRING"] == ""


def test_no_content_type_or_length_when_not_sent() -> None:
    environ = env(headers=["Host", "h"])
    assert "CONTENT_TYPE" not in environ
    assert "CONTENT_LENGTH" not in environ


# -- PATH_INFO: percent-decoded, bytes as latin-1 ------------------------------------------------

@pytest.mark.parametrize("target, path", [
    ("/", "/"),
    ("/plain/path", "/plain/path"),
    ("/a%20b", "/a b"),
    ("/a%2Fb", "/a/b"),          # %2F decodes to a slash, as in gunicorn and CGI
    ("/a%2fb", "/a/b"),
    ("/%25", "/%"),              # decoded once, not twice
    ("/%2525", "/%25"),
    ("/caf%C3%A9", "/caf\xc3\xa9"),  # utf-8 bytes, each one latin-1 char (PEP 3333)
    ("/%E9t%E9", "/\xe9t\xe9"),      # latin-1 bytes stay single chars
    ("/%00%FF", "/\x00\xff"),
    ("/%zz%4", "/%zz%4"),        # malformed escapes are left as they are
    ("/a+b", "/a+b"),            # + is only a space in a query
])
def test_path_info_is_percent_decoded_to_latin1(target: str, path: str) -> None:
    environ = env(target + "?q=%2F")
    assert environ["PATH_INFO"] == path
    assert environ["QUERY_STRING"] == "q=%2F"
    # PEP 3333: each char is one byte of the decoded path
    assert environ["PATH_INFO"].encode("latin-1") == path.encode("latin-1")


@pytest.mark.parametrize("with_escape", [False, True])
def test_raw_non_ascii_bytes_in_the_target_stay_one_char_per_byte(with_escape: bool) -> None:
    """A target holding raw bytes over 0x7F (the wire bytes arrive as latin-1 chars) gives
    the same PATH_INFO chars whether or not a percent escape sits beside them: each byte
    stays one latin-1 char, never re-encoded as utf-8."""
    wire = b"/caf\xc3\xa9" + (b"/%41" if with_escape else b"/A")
    environ = env(wire.decode("latin-1"))
    assert environ["PATH_INFO"].encode("latin-1") == b"/caf\xc3\xa9/A"


def test_query_string_and_raw_uri_are_untouched() -> None:
    target = "/p%20q?a=%2F&b=caf%C3%A9&c=+&d=%zz"
    environ = env(target)
    assert environ["QUERY_STRING"] == "a=%2F&b=caf%C3%A9&c=+&d=%zz"
    assert environ["RAW_URI"] == target
    assert environ["REQUEST_URI"] == target


# -- headers ---------------------------------------------------------------------------------

def test_headers_become_http_keys() -> None:
    environ = env(headers=["Host", "h", "X-Forwarded-Proto", "https", "accept-encoding", "gzip",
                           "DNT", "1", "X-Custom.Name", "v"])
    assert environ["HTTP_HOST"] == "h"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
    assert environ["HTTP_ACCEPT_ENCODING"] == "gzip"
    assert environ["HTTP_DNT"] == "1"
    assert environ["HTTP_X_CUSTOM.NAME"] == "v"


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_content_type_has_no_http_prefix(name: str) -> None:
    environ = env(headers=["Host", "h", name, "application/json"])
    assert environ["CONTENT_TYPE"] == "application/json"
    assert "HTTP_CONTENT_TYPE" not in environ


@pytest.mark.parametrize("name", ["Content-Length", "content-length"])
def test_content_length_has_no_http_prefix(name: str) -> None:
    environ = env(headers=["Host", "h", name, "42"])
    assert environ["CONTENT_LENGTH"] == "42"
    assert "HTTP_CONTENT_LENGTH" not in environ


def test_duplicate_headers_are_joined_with_comma_in_order() -> None:
    environ = env(headers=["Host", "h", "Accept", "text/html", "X-Other", "o",
                           "accept", "application/json", "ACCEPT", "*/*"])
    assert environ["HTTP_ACCEPT"] == "text/html,application/json,*/*"
    assert environ["HTTP_X_OTHER"] == "o"


def test_duplicate_cookies_are_joined_with_semicolon() -> None:
    # RFC 6265 section 5.4: the cookie-string is joined with "; "
    environ = env(headers=["Host", "h", "Cookie", "a=1", "cookie", "b=2; c=3", "Cookie", "d=4"])
    assert environ["HTTP_COOKIE"] == "a=1; b=2; c=3; d=4"


def test_empty_header_values_are_kept() -> None:
    environ = env(headers=["Host", "h", "X-Empty", "", "X-Twice", "", "X-Twice", "b"])
    assert environ["HTTP_X_EMPTY"] == ""
    assert environ["HTTP_X_TWICE"] == ",b"


@pytest.mark.parametrize("name", ["X_Forwarded_For", "x_forwarded-for", "_", "Content_Length"])
def test_header_names_with_underscore_are_dropped(name: str) -> None:
    """``X_Forwarded_For`` would collide with what a proxy set in ``X-Forwarded-For``."""
    environ = env(headers=["Host", "h", "X-Forwarded-For", "10.0.0.1", name, "6.6.6.6"])
    assert "6.6.6.6" not in environ.values()
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "CONTENT_LENGTH" not in environ


def test_latin1_header_values_pass_through() -> None:
    value = "caf\xe9 \xa0\xff"
    assert env(headers=["Host", "h", "X-Name", value])["HTTP_X_NAME"] == value


def test_a_request_from_the_wire() -> None:
    """encode -> frame -> split -> decode -> environ: the header bytes reach the app as
    latin-1 chars, in order, duplicates joined."""
    record = protocol.encode_request(
        9, protocol.REQ_BODY_COMPLETE, b"PUT", b"/caf%C3%A9?x=%C3%A9", b"HTTP/1.1",
        b"127.0.0.1", 4000, b"localhost", 8000, b"http",
        [b"Host", b"localhost", b"X-L", b"\xe9", b"x-l", b"\xff", b"Content-Length", b"3"],
        8, b"abc")
    [rec] = protocol.split_frame(protocol.frame([record]))
    environ = build_environ(protocol.decode_request(rec.payload), BASE)
    assert environ["REQUEST_METHOD"] == "PUT"
    assert environ["PATH_INFO"] == "/caf\xc3\xa9"
    assert environ["QUERY_STRING"] == "x=%C3%A9"
    assert environ["HTTP_X_L"] == "\xe9,\xff"
    assert environ["CONTENT_LENGTH"] == "3"
    assert environ["REMOTE_PORT"] == "4000"


# -- request-target forms (RFC 9112 section 3.2) ---------------------------------------------

@pytest.mark.parametrize("target, path, query, host", [
    ("http://example.org/a/b?x=1", "/a/b", "x=1", "example.org"),
    ("http://example.org:8080/a%2Fb", "/a/b", "", "example.org:8080"),
    ("https://example.org/", "/", "", "example.org"),
    ("http://example.org", "/", "", "example.org"),
    ("http://example.org?x=1", "/", "x=1", "example.org"),
    ("http://[2001:db8::1]:81/p?q", "/p", "q", "[2001:db8::1]:81"),
    ("HTTP://EXAMPLE.org/P", "/P", "", "EXAMPLE.org"),
])
def test_absolute_form(target: str, path: str, query: str, host: str) -> None:
    """RFC 9112 section 3.2.2: the target's authority replaces the Host header."""
    environ = env(target, headers=["Host", "ignored.example", "Accept", "*/*"])
    assert environ["PATH_INFO"] == path
    assert environ["QUERY_STRING"] == query
    assert environ["HTTP_HOST"] == host
    assert environ["RAW_URI"] == target
    assert environ["REQUEST_URI"] == target
    assert environ["HTTP_ACCEPT"] == "*/*"


def test_absolute_form_without_a_host_header() -> None:
    assert env("http://example.org/x", headers=[])["HTTP_HOST"] == "example.org"


def test_origin_form_with_a_url_in_its_query_is_not_absolute() -> None:
    environ = env("/redirect?to=http://evil.example/", headers=["Host", "h"])
    assert environ["PATH_INFO"] == "/redirect"
    assert environ["QUERY_STRING"] == "to=http://evil.example/"
    assert environ["HTTP_HOST"] == "h"


def test_asterisk_form() -> None:
    environ = env("*", method="OPTIONS")
    assert environ["REQUEST_METHOD"] == "OPTIONS"
    assert environ["PATH_INFO"] == "*"
    assert environ["QUERY_STRING"] == ""
    assert environ["RAW_URI"] == "*"
    assert environ["HTTP_HOST"] == "example.com"


def test_split_target() -> None:
    assert split_target("/a%20b?c%20d") == ("/a b", "c%20d", None)
    assert split_target("*") == ("*", "", None)
    assert split_target("http://h:1/p?q") == ("/p", "q", "h:1")


# -- base copied, not shared ------------------------------------------------------------------

def test_base_is_copied_not_shared() -> None:
    base = dict(BASE)
    snapshot = dict(base)
    first = build_environ(head("/one", ["Host", "a", "X-A", "1"]), base)
    first["wsgi.input"] = io.BytesIO(b"")
    first["SCRIPT_NAME"] = "/mutated"
    first["HTTP_X_LEAK"] = "leak"
    second = build_environ(head("/two", ["Host", "b"]), base)
    assert base == snapshot
    assert first is not second and first is not base
    assert second["SCRIPT_NAME"] == ""
    assert "wsgi.input" not in second
    assert "HTTP_X_LEAK" not in second and "HTTP_X_A" not in second
    assert second["PATH_INFO"] == "/two"
    assert second["HTTP_HOST"] == "b"


def test_duplicates_do_not_join_across_requests() -> None:
    build_environ(head(headers=["Host", "a", "Cookie", "x=1"]), BASE)
    assert env(headers=["Host", "b", "Cookie", "y=2"])["HTTP_COOKIE"] == "y=2"


# -- environ_key and its cache ------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [
    ("Host", "HTTP_HOST"),
    ("x-forwarded-for", "HTTP_X_FORWARDED_FOR"),
    ("Content-Type", "CONTENT_TYPE"),
    ("content-length", "CONTENT_LENGTH"),
    ("Content-MD5", "HTTP_CONTENT_MD5"),
    ("X_Bad", None),
    ("_", None),
])
def test_environ_key(name: str, key: str | None) -> None:
    assert environ_key(name) == key
    assert environ_mod._keys[name] == key  # cached, including a dropped name
    assert environ_key(name) == key        # and answered from the cache


def test_environ_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header names are client input: the cache stops growing at its limit, and names past
    it are still mapped correctly."""
    monkeypatch.setattr(environ_mod, "_CACHE_LIMIT", 4)
    for i in range(10):
        assert environ_key(f"X-N{i}") == f"HTTP_X_N{i}"
    assert len(environ_mod._keys) == 4
    assert environ_key("X-N9") == "HTTP_X_N9"
    assert env(headers=["Host", "h", "X-N8", "v"])["HTTP_X_N8"] == "v"


def test_build_environ_fills_and_uses_the_cache() -> None:
    env(headers=["Host", "h", "X_Dropped", "v"])
    assert environ_mod._keys == {"Host": "HTTP_HOST", "X_Dropped": None}
    environ_mod._keys["Host"] = "HTTP_FROM_CACHE"  # prove the cached value is what is used
    assert env(headers=["Host", "h"])["HTTP_FROM_CACHE"] == "h"

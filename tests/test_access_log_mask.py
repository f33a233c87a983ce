"""The access log hides credentials: ``Atoms`` and ``AccessLog`` print ``***`` for the
atoms of credential headers unless ``access_log_secrets`` is on. Pure code: a real
``Config``, the access logger captured in memory."""

from __future__ import annotations

import base64
import logging

import pytest

from support.recording import Lines
from wsgi_zmq.config import Config
from wsgi_zmq.log import ACCESS_LOGGER, MASK, AccessLog, Atoms

BASIC = "Basic " + base64.b64encode(b"alice:SECRET3").decode()
ENVIRON = {
    "REMOTE_ADDR": "127.0.0.1",
    "REQUEST_METHOD": "GET",
    "RAW_URI": "/x",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_AUTHORIZATION": BASIC,
    "HTTP_PROXY_AUTHORIZATION": "Bearer SECRET1",
    "HTTP_COOKIE": "session=SECRET2",
    "HTTP_X_TEST": "visible",
}
HEADERS = [("Content-Type", "text/plain"), ("Set-Cookie", "session=SECRET4; HttpOnly"),
           ("set-cookie", "other=SECRET5")]
SECRET_ATOMS = ("{authorization}i", "{Authorization}i", "{AUTHORIZATION}i",
                "{proxy-authorization}i", "{Proxy-Authorization}i", "{proxy_authorization}i",
                "{cookie}i", "{Cookie}i", "{set-cookie}o", "{Set-Cookie}o", "{SET-COOKIE}o",
                "{HTTP_AUTHORIZATION}e", "{http_cookie}e", "{HTTP_PROXY_AUTHORIZATION}e")


def atoms(environ: dict | None = None, headers: list | None = None,
          secrets: bool = False) -> Atoms:
    return Atoms(ENVIRON if environ is None else environ,
                 "200 OK", HEADERS if headers is None else headers, 5, 0.0, 0.001, "1@h",
                 0.0, secrets)


@pytest.mark.parametrize("key", SECRET_ATOMS)
def test_credential_atoms_are_masked_by_default(key):
    """1. every spelling of a credential header's atom 2. it prints ``***``."""
    assert atoms()[key] == MASK


@pytest.mark.parametrize("key", SECRET_ATOMS)
def test_credential_atoms_absent_print_a_dash(key):
    """1. a request and a response without credential headers 2. ``-``, as any header atom
    of a header that is not there."""
    assert atoms(environ={"REQUEST_METHOD": "GET"}, headers=[])[key] == "-"


def test_secrets_on_shows_the_values():
    """1. ``secrets`` true 2. the atoms print the header values (the first Set-Cookie)."""
    shown = atoms(secrets=True)
    assert shown["{authorization}i"] == BASIC
    assert shown["{proxy-authorization}i"] == "Bearer SECRET1"
    assert shown["{cookie}i"] == "session=SECRET2"
    assert shown["{set-cookie}o"] == "session=SECRET4; HttpOnly"
    assert shown["{HTTP_COOKIE}e"] == "session=SECRET2"


def test_other_atoms_are_untouched_and_basic_user_still_works():
    """1. masking on 2. ``u`` is the Basic user name; other header atoms print their
    values."""
    masked = atoms()
    assert masked["u"] == "alice"
    assert masked["{x-test}i"] == "visible"
    assert masked["{content-type}o"] == "text/plain"
    assert masked["h"] == "127.0.0.1"
    assert masked["r"] == "GET /x HTTP/1.1"


def test_the_default_of_atoms_is_masking():
    """``Atoms`` built without ``secrets`` (as older callers do) masks."""
    plain = Atoms(ENVIRON, "200 OK", HEADERS, 5, 0.0, 0.001, "1@h", 0.0)
    assert plain["{cookie}i"] == MASK


@pytest.fixture
def access_lines():
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Lines()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


FORMAT = ("%(u)s|%({authorization}i)s|%({proxy-authorization}i)s|%({cookie}i)s|"
          "%({set-cookie}o)s|%({x-test}i)s")


def access_log(secrets: bool | None) -> AccessLog:
    cfg = Config("handler")
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", FORMAT)
    if secrets is not None:
        cfg.set("access_log_secrets", secrets)
    return AccessLog(cfg, "1@h")


def test_access_log_masks_by_default(access_lines):
    """1. an ``AccessLog`` from a ``Config`` left at its defaults 2. one line 3. the
    credential atoms print ``***``, the rest their values; no secret in the line."""
    access_log(None).write(ENVIRON, "200 OK", HEADERS, 5, 0.0, 0.001)
    [line] = access_lines
    assert line == "alice|***|***|***|***|visible"
    assert "SECRET" not in line


def test_access_log_secrets_on_shows_them(access_lines):
    """1. ``access_log_secrets`` on 2. the line holds the header values."""
    access_log(True).write(ENVIRON, "200 OK", HEADERS, 5, 0.0, 0.001)
    [line] = access_lines
    assert line == (f"alice|{BASIC}|Bearer SECRET1|session=SECRET2|"
                    "session=SECRET4; HttpOnly|visible")


def test_access_log_absent_headers_print_a_dash(access_lines):
    """1. masking on 2. a request without credentials 3. ``-`` for each."""
    access_log(False).write({"REQUEST_METHOD": "GET"}, "200 OK", [], 0, 0.0, 0.001)
    assert access_lines == ["-|-|-|-|-|-"]

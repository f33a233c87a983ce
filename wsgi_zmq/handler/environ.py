"""Build the PEP 3333 environ of a request from its decoded REQUEST record. Pure.

``build_environ(req, base)`` returns a new dict: ``base`` (the per-process keys: the
``wsgi.*`` constants, ``wsgi.errors``, ``wsgi.file_wrapper``, ``SCRIPT_NAME``) plus the
request's own keys. ``wsgi.input`` and ``wsgi.input_terminated`` are added by the caller,
which owns the body stream.

Rules, after PEP 3333 and CGI (RFC 3875), and what users of gunicorn expect:

- ``PATH_INFO`` is the percent-decoded path, as a latin-1 ``str`` (PEP 3333 "bytes as
  str"); ``QUERY_STRING`` is left encoded; ``RAW_URI`` and ``REQUEST_URI`` carry the target
  as received.
- An absolute-form target (``GET http://host/path``) gives its path to ``PATH_INFO`` and
  its authority to ``HTTP_HOST`` (RFC 9112 section 3.2.2: the Host header is ignored then).
- Header ``Foo-Bar`` becomes ``HTTP_FOO_BAR``; ``Content-Type`` and ``Content-Length`` become
  ``CONTENT_TYPE`` and ``CONTENT_LENGTH``. Repeated fields are joined with ``,`` (``; `` for
  ``Cookie``, RFC 6265 section 5.4). A field whose name contains ``_`` is dropped, as
  gunicorn does: ``X_Forwarded_For`` and ``X-Forwarded-For`` would otherwise collide in
  ``HTTP_X_FORWARDED_FOR`` and a client could spoof what a proxy set.
- A field whose name starts with ``:`` is a *pseudo field* the front adds itself; a client
  cannot send one, since such a name is no token (RFC 9110 section 5.6.2) and the front's
  parser refuses the request. ``:ssl-client-s-dn`` (``CLIENT_DN_FIELD``) carries the
  subject of the client certificate a TLS bind verified and becomes ``SSL_CLIENT_S_DN``
  (RFC 4514, e.g. ``CN=client,O=test``, every byte outside printable ASCII escaped as
  ``\\XX``); ``:script-name`` (``SCRIPT_NAME_FIELD``) carries the prefix of a route that
  strips it: it becomes ``SCRIPT_NAME`` and is cut from the start of ``PATH_INFO``; any
  other pseudo field is dropped.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote_to_bytes

from wsgi_zmq.protocol import RequestHead

_CACHE_LIMIT: Final = 512
_keys: dict[str, str | None] = {}

#: The pseudo field (see the module docstring) by which the front passes the subject of a
#: verified client certificate; it is appended to the REQUEST record's header list.
CLIENT_DN_FIELD: Final = ":ssl-client-s-dn"
#: The pseudo field by which the front passes the prefix a route strips: the app's
#: ``SCRIPT_NAME``, cut from the start of ``PATH_INFO``.
SCRIPT_NAME_FIELD: Final = ":script-name"
_SCRIPT_KEY: Final = "wsgi_zmq.script_name"
_PSEUDO_FIELDS: Final = {CLIENT_DN_FIELD: "SSL_CLIENT_S_DN", SCRIPT_NAME_FIELD: _SCRIPT_KEY}


def environ_key(name: str) -> str | None:
    """The environ key of a header field name, or None if the field is dropped."""
    key = _keys.get(name)
    if key is None and name not in _keys:
        if "_" in name:
            key = None
        elif name[:1] == ":":
            key = _PSEUDO_FIELDS.get(name)  # set by the front, never by a client
        else:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
        if len(_keys) < _CACHE_LIMIT:
            _keys[name] = key
    return key


def split_target(target: str) -> tuple[str, str, str | None]:
    """Split a request target into (path, query, authority or None).

    The path is percent-decoded to latin-1. ``*`` (OPTIONS) stays ``*``.
    """
    authority = None
    if target[:1] != "/" and "://" in target[:10]:
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query_at = rest.find("?")
        cut = min(i for i in (slash, query_at, len(rest)) if i >= 0)
        authority = rest[:cut].rpartition("@")[2]  # userinfo is not part of the host
        target = rest[cut:]
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    if "%" in path:
        # the str holds the wire bytes as latin-1: unquote_to_bytes would encode it as utf-8
        path = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
    return path, query, authority


def build_environ(req: RequestHead, base: dict[str, Any]) -> dict[str, Any]:
    """Return the environ of ``req``; see the module docstring for the rules."""
    environ = base.copy()
    target = req.target
    path, query, authority = split_target(target)
    environ["REQUEST_METHOD"] = req.method
    environ["PATH_INFO"] = path
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = target
    environ["REQUEST_URI"] = target
    environ["SERVER_PROTOCOL"] = req.version
    environ["REMOTE_ADDR"] = req.remote_addr
    environ["REMOTE_PORT"] = str(req.remote_port)
    environ["SERVER_NAME"] = req.server_name
    environ["SERVER_PORT"] = str(req.server_port)
    environ["wsgi.url_scheme"] = req.url_scheme
    headers = req.headers
    keys = _keys
    for i in range(0, len(headers), 2):
        name = headers[i]
        key = keys.get(name) if name in keys else environ_key(name)
        if key is None:
            continue
        value = headers[i + 1]
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    if authority is not None:
        environ["HTTP_HOST"] = authority
    script_name = environ.pop(_SCRIPT_KEY, None)
    if script_name is not None and path.startswith(script_name) and \
            path[len(script_name):len(script_name) + 1] in ("", "/"):
        # a route that strips its prefix (``--route /api=api:strip``): the app is mounted
        # there, so the URLs it builds start with it
        environ["SCRIPT_NAME"] = script_name
        environ["PATH_INFO"] = path[len(script_name):]
    return environ

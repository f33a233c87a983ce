"""Which handler pool and version an HTTP request goes to: the front's ``route`` settings,
and the version a request asks for (``version_header``, ``version_cookie``) or sticks to
(``sticky_cookie``). Pure: no sockets, no loop.

Usage (in the front)::

    router = Router(cfg)
    choice = router.pick(head.target, head.headers)   # Choice(pool, script_name, asked,
                                                      #        sticky)
    key, picked = dispatcher.route(choice.pool, choice.asked, choice.sticky)
    if picked is not None and router.sticky_cookie: set the cookie to ``picked``

Routes are tried host first, as Mongrel2 picks a host before its routes: those that name
the request's host exactly, then those whose ``*.`` pattern it matches (the longest
pattern first), then those for any host; within each, the longest prefix first. So
``shop.example.com/=shop`` takes every request for that host, whatever routes for any host
say. A prefix matches the path itself and anything below it (``/api`` matches ``/api``,
``/api/x`` and ``/api?q``, not ``/apix``). Hosts are matched on the ``Host`` header without
its port, ignoring case; ``*.example.com`` matches every name that ends in
``.example.com``.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from wsgi_zmq.protocol import DEFAULT_POOL

#: At most this many cookies of a request are looked at (a client controls the header).
MAX_COOKIES: Final = 64


class Choice(NamedTuple):
    """Where ``Router.pick`` sends a request."""

    pool: str
    script_name: bytes | None  # the prefix a ``:strip`` route cuts; None: nothing cut
    asked: str | None  # the version the request asks for (header or cookie)
    sticky: str | None  # the version its sticky cookie names


class _Route(NamedTuple):
    host: bytes | None  # exact host, or the suffix after "*" (b".example.com")
    wildcard: bool
    prefix: bytes
    pool: str
    strip: bool


class Router:
    """Routes from ``cfg.route`` plus the version header and cookies; see the module
    docstring."""

    def __init__(self, cfg: Any) -> None:
        routes = []
        for route in cfg.route:
            host = route.host.encode("ascii") if route.host else None
            wildcard = bool(host and host.startswith(b"*."))
            routes.append(_Route(host[1:] if wildcard and host else host, wildcard,
                                 route.prefix.encode("ascii"), route.pool, route.strip))
        # the order of ``match``: an exact host, then patterns (longest first), then any
        # host; within each, the longest prefix
        routes.sort(key=lambda r: (0 if r.host and not r.wildcard else 1 if r.wildcard
                                   else 2, -len(r.host or b""), -len(r.prefix)))
        self.routes = routes
        self.hosts = any(r.host for r in routes)
        self.version_header = _lower(cfg.version_header)
        self.version_cookie = _lower_str(cfg.version_cookie)
        self.sticky_cookie = _lower_str(cfg.sticky_cookie)
        self.cookies = bool(self.version_cookie or self.sticky_cookie)

    @property
    def needed(self) -> bool:
        """Does a request need this router at all? (Without routes and version settings,
        every request goes to the pool ``default`` by weight.)"""
        return bool(self.routes or self.version_header or self.cookies)

    def pick(self, target: bytes, headers: list[bytes]) -> Choice:
        host = b""
        asked: str | None = None
        cookie_header: list[bytes] = []
        if self.hosts or self.version_header or self.cookies:
            version_header = self.version_header
            for i in range(0, len(headers) - 1, 2):
                name = headers[i].lower()
                if name == b"host":
                    host = headers[i + 1]
                elif name == version_header and asked is None:
                    asked = headers[i + 1].strip().decode("latin-1")
                elif name == b"cookie" and self.cookies:
                    cookie_header.append(headers[i + 1])
        sticky = None
        if cookie_header:
            cookies = parse_cookies(cookie_header)
            if asked is None and self.version_cookie:
                asked = cookies.get(self.version_cookie)
            if self.sticky_cookie:
                sticky = cookies.get(self.sticky_cookie)
        pool = DEFAULT_POOL
        script_name = None
        if self.routes:
            route = self.match(host_of(host) if self.hosts else b"", path_of(target))
            if route is not None:
                pool = route.pool
                if route.strip:
                    script_name = route.prefix
        return Choice(pool, script_name, asked or None, sticky or None)

    def match(self, host: bytes, path: bytes) -> _Route | None:
        for route in self.routes:
            if route.host is not None:
                if route.wildcard:
                    if not host.endswith(route.host):
                        continue
                elif host != route.host:
                    continue
            prefix = route.prefix
            if prefix == b"/" or (path.startswith(prefix) and
                                  path[len(prefix):len(prefix) + 1] in (b"", b"/")):
                return route
        return None

    def set_cookie(self, version: str) -> bytes:
        """The header line (with its CRLF) that makes a client stick to ``version``."""
        return (f"Set-Cookie: {self.sticky_cookie}={version}; Path=/; HttpOnly; "
                f"SameSite=Lax\r\n").encode("latin-1")


def _lower(name: str | None) -> bytes | None:
    return name.lower().encode("ascii") if name else None


def _lower_str(name: str | None) -> str | None:
    return name if name else None


def host_of(value: bytes) -> bytes:
    """The Host header's name, lower case, without its port (``[v6]:port`` too)."""
    value = value.strip().lower()
    if value.startswith(b"["):
        return value.partition(b"]")[0] + b"]"
    return value.partition(b":")[0].rstrip(b".")


def path_of(target: bytes) -> bytes:
    """The path of a request target: origin-form up to ``?``; absolute-form after its
    authority; ``*`` stays ``*``."""
    if target[:1] != b"/" and b"://" in target[:10]:
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    return target.partition(b"?")[0]


def parse_cookies(headers: list[bytes]) -> dict[str, str]:
    """``name=value`` pairs of the Cookie headers (RFC 6265 section 5.4); the first of a
    name wins; at most ``MAX_COOKIES``; values as latin-1 text, quotes removed."""
    cookies: dict[str, str] = {}
    count = 0
    for header in headers:
        for pair in header.split(b";"):
            count += 1
            if count > MAX_COOKIES:
                return cookies
            name, eq, value = pair.strip().partition(b"=")
            if not eq or not name:
                continue
            key = name.decode("latin-1")
            if key not in cookies:
                cookies[key] = value.strip().strip(b'"').decode("latin-1")
    return cookies

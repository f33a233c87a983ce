"""Every setting of every entry point, declared once; and the ``Config`` object that holds them.

A setting is a subclass of ``Setting``. Its class attributes say everything about it: the
name (the config-file key and ``cfg.<name>``), the ``--help`` section, the roles (entry
points) that accept it, its command-line flags, the validator that turns any input into a
typed value (raising ``ConfigError`` that names the setting), its default, its description
(Markdown; the first line is the ``--help`` text) and the version that added it. Subclasses
register themselves; the argparse parsers (``wsgi_zmq.cli``), the config-file keys,
``--print-config`` and ``docs/settings.md`` all come from this registry.

Usage::

    cfg = Config("front")
    cfg.set("bind", ["127.0.0.1:0"])      # validated; raises ConfigError naming "bind"
    cfg.bind                               # ["127.0.0.1:0"]

This module is pure: it imports neither gevent nor zmq and logs nothing at import.
"""

from __future__ import annotations

import grp
import inspect
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, NamedTuple

from wsgi_zmq import protocol
from wsgi_zmq.errors import ConfigError

#: The entry points. "all" is ``python -m wsgi_zmq`` (front and handler pool together).
ROLES: Final = ("all", "front", "handler")

FRONT: Final = frozenset({"all", "front"})
HANDLER: Final = frozenset({"all", "handler"})
EVERY: Final = frozenset(ROLES)

DEFAULT_BIND: Final = "127.0.0.1:8000"
DEFAULT_BACKEND: Final = "tcp://127.0.0.1:5556"

#: Sections in the order ``--help`` and the docs show them.
SECTIONS: Final = ("Config File", "Server Socket", "SSL", "Backend", "Routing", "Jobs",
                   "Worker Processes",
                   "Limits", "Flow Control", "Logging", "Process Naming", "Server Mechanics",
                   "Server Hooks")

REGISTRY: dict[str, type[Setting]] = {}


# -- validators ---------------------------------------------------------------------------
# Each takes the raw value (from a config file: any Python value; from the command line or
# WSGI_ZMQ_CMD_ARGS: a string) and returns the typed value or raises ValueError; Setting
# turns that into a ConfigError naming the setting.

def validate_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError("expected an integer")


def validate_pos_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError("expected an integer of at least 1")
    return number


def validate_window(value: Any) -> int:
    number = validate_pos_int(value)
    if number > protocol.MAX_WINDOW:
        raise ValueError(f"expected at most {protocol.MAX_WINDOW} chunks")
    return number


def validate_nonneg_int(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError("expected an integer of at least 0")
    return number


def validate_body_ring(value: Any) -> int:
    number = validate_nonneg_int(value)
    if number > 64:
        raise ValueError("expected 0 to 64 requests")
    return number


def validate_pos_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not 0 < number < 1e9:  # also refuses inf and nan
        raise ValueError("expected a number of seconds greater than 0")
    return number


def validate_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def validate_optional_string(value: Any) -> str | None:
    return None if value is None else validate_string(value)


def validate_choice(choices: Iterable[str]) -> Callable[[Any], str]:
    allowed = tuple(choices)

    def check(value: Any) -> str:
        text = validate_string(value).lower()
        if text not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return text

    return check


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("expected a string or a list of strings")


def bind_scheme(address: str) -> str:
    """``https`` for a bind written ``https://HOST:PORT``, else ``http``."""
    return "https" if address.strip().lower().startswith("https://") else "http"


def parse_bind(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6; a bare ``PORT`` means 127.0.0.1) into a
    host and a port; an ``http://`` or ``https://`` in front is allowed. Raises ValueError."""
    address = re.sub(r"^https?://", "", address.strip(), flags=re.IGNORECASE)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]*):(\d+)|(\d+)", address)
    if not match:
        raise ValueError(f"{address!r} is not HOST:PORT")
    host = match.group(1) or match.group(3) or ("127.0.0.1" if match.group(5) else "")
    port = int(match.group(2) or match.group(4) or match.group(5))
    if port > 65535:
        raise ValueError(f"{address!r}: port {port} is out of range")
    if not host:
        host = "0.0.0.0"
    return host, port


def validate_binds(value: Any) -> list[str]:
    binds = _list(value)
    if not binds:
        raise ValueError("expected at least one HOST:PORT")
    for address in binds:
        parse_bind(address)
    return binds


def validate_optional_address(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = validate_string(value)
    parse_bind(text)
    return text


_ENDPOINT: Final = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(\d+|\*)|ipc://\S+")


def validate_endpoints(value: Any) -> list[str]:
    endpoints = _list(value)
    if not endpoints:
        raise ValueError("expected at least one endpoint")
    for endpoint in endpoints:
        if not _ENDPOINT.fullmatch(endpoint):
            raise ValueError(f"{endpoint!r} is not tcp://HOST:PORT, tcp://HOST:* or ipc://PATH")
        port = endpoint.rsplit(":", 1)[-1]
        if endpoint.startswith("tcp://") and port != "*" and int(port) > 65535:
            raise ValueError(f"{endpoint!r}: port {port} is out of range")
    return endpoints


def validate_connect_endpoints(value: Any) -> list[str]:
    endpoints = validate_endpoints(value)
    for endpoint in endpoints:
        if endpoint.endswith(":*"):
            raise ValueError(f"{endpoint!r}: a handler connects to a real port, not *")
    return endpoints


def validate_service(value: Any) -> str | None:
    if value is None:
        return None
    text = validate_string(value)
    if not 0 < len(text.encode("utf-8")) <= 255 or "\0" in text:
        raise ValueError("a service name has 1 to 255 bytes and no NUL")
    if text.startswith("mmi."):
        raise ValueError("names starting with mmi. are the broker's own (RFC 8/MMI)")
    return text


def validate_optional_endpoints(value: Any) -> list[str]:
    return validate_endpoints(value) if _list(value) else []


def validate_app_uri(value: Any) -> str | None:
    if value is None:
        return None
    text = validate_string(value)
    if not re.fullmatch(r"[\w.]+(:[\w.]+(\(.*\))?)?", text):
        raise ValueError(f"{text!r} is not MODULE:CALLABLE")
    return text


def validate_optional_path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return validate_string(value)


def validate_optional_file(value: Any) -> str | None:
    """A path to a file that must exist and be readable; None or "" for none."""
    if value is None or value == "":
        return None
    path = os.path.abspath(validate_string(value))
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not readable")
    return path


def validate_optional_directory(value: Any) -> str | None:
    return None if value is None or value == "" else validate_directory(value)


def validate_cert_reqs(value: Any) -> int:
    """gunicorn's ``cert_reqs``: 0 (none), 1 (optional) or 2 (required), or those names."""
    names = {"none": 0, "optional": 1, "required": 2}
    if isinstance(value, str) and value.strip().lower() in names:
        return names[value.strip().lower()]
    number = _int(value)
    if number not in (0, 1, 2):
        raise ValueError("expected 0 (none), 1 (optional) or 2 (required)")
    return number


def validate_directory(value: Any) -> str:
    path = os.path.abspath(validate_string(value))
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory")
    return path


def validate_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a dict")
    return dict(value)


def validate_scheme_headers(value: Any) -> dict[str, str]:
    headers = validate_dict(value)
    for name, expected in headers.items():
        if not isinstance(name, str) or not isinstance(expected, str):
            raise ValueError("expected a dict of header name to value, both strings")
    return {name.upper(): expected for name, expected in headers.items()}


def validate_env(value: Any) -> list[str]:
    pairs = [] if value is None else _list(value)
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise ValueError(f"{pair!r} is not KEY=VALUE")
    return pairs


def validate_paths(value: Any) -> list[str]:
    """A comma-separated string (or a list) of directories for sys.path."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else _list(value)
    return [os.path.abspath(item.strip()) for item in items if item.strip()]


def _validate_id(kind: str, lookup: Callable[[str], Any], field: str
                 ) -> Callable[[Any], int | None]:
    """A user or group given by name or number, as its number; None keeps the current."""

    def check(value: Any) -> int | None:
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = validate_string(value)
        if text.isdigit():
            return int(text)
        try:
            number: int = getattr(lookup(text), field)
        except KeyError:
            raise ValueError(f"no such {kind} {text!r}") from None
        return number

    return check


validate_user = _validate_id("user", pwd.getpwnam, "pw_uid")
validate_group = _validate_id("group", grp.getgrnam, "gr_gid")


def validate_umask(value: Any) -> int | None:
    """An octal umask: 18, "022", "0o022"; None leaves it alone."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        mask = value
    else:
        text = validate_string(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError("expected an octal mode such as 022")
        mask = int(text, 8)
    if not 0 <= mask <= 0o777:
        raise ValueError("expected an octal mode between 000 and 777")
    return mask


def validate_addr_list(value: Any) -> list[str]:
    """Comma-separated IP addresses or CIDR networks, or "*" for any."""
    items = value.split(",") if isinstance(value, str) else _list(value)
    items = [item.strip() for item in items if item.strip()]
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return items


def validate_hook(arity: int) -> Callable[[Any], Callable[..., Any]]:
    """A callable taking ``arity`` positional arguments."""

    def check(value: Any) -> Callable[..., Any]:
        if isinstance(value, str):
            module, _, name = value.rpartition(".")
            if not module:
                raise ValueError(f"{value!r} is not MODULE.FUNCTION")
            import importlib

            try:
                value = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"cannot load {value!r}: {exc}") from None
        if not callable(value):
            raise ValueError("expected a callable")
        try:
            signature = inspect.signature(value)
            signature.bind(*range(arity))
        except TypeError:
            raise ValueError(f"the hook must take {arity} positional argument(s)") from None
        except ValueError:
            pass  # no signature to inspect (a builtin): trust it
        return value  # type: ignore[no-any-return]

    return check


def addr_allowed(address: str, allowed: list[str]) -> bool:
    """Is ``address`` in one of the networks of an ``*_allow_ips`` setting?"""
    if "*" in allowed:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return not address  # a UNIX socket peer has no address: allowed, as in gunicorn
    return any(ip in ipaddress.ip_network(net, strict=False) for net in allowed)


# -- the registry -------------------------------------------------------------------------

class Setting:
    """One setting. Subclasses set the class attributes and are registered by name."""

    name: ClassVar[str]
    section: ClassVar[str]
    roles: ClassVar[frozenset[str]]
    cli: ClassVar[tuple[str, ...]] = ()
    meta: ClassVar[str | None] = None
    #: "store" (takes a value), "append" (repeatable; a later source replaces the list),
    #: "flag" (no value: sets True), "optional" (the value may be left out: ``const``)
    action: ClassVar[str] = "store"
    const: ClassVar[Any] = None
    validator: ClassVar[staticmethod[[Any], Any]]
    default: ClassVar[Any] = None
    desc: ClassVar[str]
    since: ClassVar[str] = "0.1.0"
    #: shown in the docs next to the default when it differs from repr(default)
    default_doc: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name in REGISTRY:
            raise TypeError(f"setting {cls.name!r} declared twice")
        if cls.section not in SECTIONS:
            raise TypeError(f"setting {cls.name!r}: unknown section {cls.section!r}")
        REGISTRY[cls.name] = cls

    @classmethod
    def validate(cls, value: Any) -> Any:
        """Return the typed value, or raise ``ConfigError`` naming this setting."""
        try:
            return cls.validator(value)
        except ValueError as exc:
            raise ConfigError(f"Invalid value for {cls.name}: {value!r}: {exc}") from None

    @classmethod
    def short_help(cls) -> str:
        return cls.desc.strip().splitlines()[0]


def settings_for(role: str) -> list[type[Setting]]:
    """The settings an entry point accepts, in section order then declaration order."""
    chosen = [s for s in REGISTRY.values() if role in s.roles]
    return sorted(chosen, key=lambda s: SECTIONS.index(s.section))


class Config:
    """The settings of one process: defaults, then whatever ``set`` was given, validated.

    Reading ``cfg.<name>`` of a setting this role does not accept raises AttributeError, so
    a role can never depend on a setting its command line does not offer.
    """

    role: str
    values: dict[str, Any]
    given: set[str]

    def __init__(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.role = role
        self.values = {s.name: s.validate(s.default) if s.default is not None else None
                       for s in settings_for(role)}
        self.given: set[str] = set()  # names a source set (the rest are defaults)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"no setting {name!r} for role {self.role}") from None

    def set(self, name: str, value: Any) -> None:
        """Validate and store a setting. Raises ``ConfigError`` for an unknown or bad one."""
        setting = REGISTRY.get(name)
        if setting is None or name not in self.values:
            raise ConfigError(f"Unknown setting {name!r} for wsgi_zmq {self.role}")
        self.values[name] = setting.validate(value)
        self.given.add(name)

    def accepts(self, name: str) -> bool:
        return name in self.values

    def printable(self) -> list[tuple[str, Any]]:
        """(name, value) of every setting of this role, sorted by name, for --print-config."""
        return sorted(self.values.items())

    def check(self) -> None:
        """Check the rules that concern several settings at once; raise ``ConfigError``
        with one line that names them and says what to do. Called once all sources are
        applied, before anything starts."""
        values = self.values
        serves_http = "bind" in values  # a front (lone or all-in-one)
        if serves_http and values["job_bind"] and "bind" not in self.given:
            values["bind"] = []  # a pure job broker: HTTP only where a bind is given
        if self.role != "front" and values["job"] is not None and values["wsgi_app"]:
            raise ConfigError(f"Give either a WSGI app ({values['wsgi_app']}) or --job "
                              f"{values['job']}, not both: a pool hosts one of them")
        if self.role != "front" and values["job"] is not None and values["profile"]:
            raise ConfigError(f"profile works for WSGI pools, not for the job pool of "
                              f"{values['job']}: leave out --profile")
        if self.role != "front" and values["job"] is not None and values["standby"]:
            raise ConfigError(f"standby is for the versions of HTTP pools, not for the job "
                              f"pool of {values['job']}: leave out --standby")
        if serves_http:
            secure = values["curve_secret_key"] is not None
            if values["curve_allow"] is not None and not secure:
                raise ConfigError("curve_allow needs curve_secret_key, the front's own key pair")
            if secure and values["curve_allow"] is None and self.role == "front":
                raise ConfigError("curve_secret_key needs curve_allow, the directory of the "
                                  "public keys of the workers to admit")
            if not secure and not values["insecure_backend"]:
                named = [("backend", e) for e in values["backend"]] + \
                    [("job endpoint", e) for e in values["job_bind"]]
                for what, endpoint in named:
                    if not endpoint_is_private(endpoint):
                        raise ConfigError(
                            f"The {what} {endpoint} is plaintext on an address others can "
                            "reach: anyone there could take requests as a worker. Set "
                            "curve_secret_key and curve_allow (python -m wsgi_zmq.keys), or "
                            "pass --insecure-backend if that network is trusted")
            https = [b for b in values["bind"] if bind_scheme(b) == "https"]
            if https and not values["certfile"]:
                raise ConfigError(f"The HTTPS bind {https[0]} needs certfile (and keyfile, "
                                  "unless the key is in certfile)")
            if values["cert_reqs"] and values["ca_certs"] is None:
                raise ConfigError("cert_reqs 1 or 2 needs ca_certs, the CA certificates that "
                                  "client certificates are checked against")
        if self.role == "handler" and (values["curve_secret_key"] is None) != (
                values["curve_server_key"] is None):
            raise ConfigError("CURVE needs both curve_secret_key (this pool's key pair) and "
                              "curve_server_key (the front's public key)")


def endpoint_is_private(endpoint: str) -> bool:
    """Can only this host reach ``endpoint``? ``ipc://`` and loopback ``tcp://`` can."""
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or * for every interface


def bind_addresses(cfg: Config) -> list[tuple[str, int]]:
    """The front's ``bind`` setting as (host, port) pairs."""
    return [parse_bind(address) for address in cfg.bind]


# -- the settings -------------------------------------------------------------------------
# Names, flags and defaults follow gunicorn wherever the meaning is the same.

class ConfigFile(Setting):
    name = "config"
    section = "Config File"
    roles = EVERY
    cli = ("-c", "--config")
    meta = "FILE"
    validator = staticmethod(validate_optional_string)
    desc = """A Python configuration file, as in gunicorn.

    Every setting of this page is a module-level name in it (``workers = 4``); hooks are
    functions. An unknown name is reported as a warning that names it. Values set in the
    file are overridden by ``WSGI_ZMQ_CMD_ARGS`` and then by the command line.
    """


class CheckConfig(Setting):
    name = "check_config"
    section = "Config File"
    roles = EVERY
    cli = ("--check-config",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    desc = """Check the configuration and the application, then exit: 0 if both load, else 2.
    """


class PrintConfig(Setting):
    name = "print_config"
    section = "Config File"
    roles = EVERY
    cli = ("--print-config",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    desc = """Print every setting with its value after all sources are applied, then exit.
    """


class WSGIApp(Setting):
    name = "wsgi_app"
    section = "Config File"
    roles = HANDLER
    meta = "APP"
    validator = staticmethod(validate_app_uri)
    desc = """The WSGI application, ``MODULE:CALLABLE`` (``pkg.mod:app``, ``mod:create_app()``).

    Usually given as the positional argument; a config file may set it instead. The current
    directory is on ``sys.path``.
    """


class Bind(Setting):
    name = "bind"
    section = "Server Socket"
    roles = FRONT
    cli = ("-b", "--bind")
    meta = "ADDRESS"
    action = "append"
    validator = staticmethod(validate_binds)
    default = [DEFAULT_BIND]
    desc = """The HTTP address to listen on, ``HOST:PORT`` or ``[IPV6]:PORT``; repeatable.

    Port 0 asks the system for a free port; the startup line ``Listening at:`` prints the
    address really bound. ``https://HOST:PORT`` serves HTTPS there (with ``certfile`` and
    ``keyfile``), beside plain HTTP on the other binds; with ``certfile`` set and no bind
    written ``https://``, every bind is HTTPS, as in gunicorn.
    """


class ServerHeader(Setting):
    name = "server_header"
    section = "Server Socket"
    roles = EVERY
    cli = ("--server-header",)
    meta = "STRING"
    validator = staticmethod(validate_string)
    default = "wsgi_zmq"
    since = "0.2.0"
    desc = """The ``Server`` header of every response; ``""`` sends none.

    The default names no version. A ``Server`` header the app sets itself wins.
    """


def validate_health_path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = validate_string(value)
    if not text.startswith("/") or any(c in text for c in "? #") or not text.isascii():
        raise ValueError("a path such as /healthz: ASCII, starting with /, no query")
    return text


class HealthPath(Setting):
    name = "health_path"
    section = "Server Socket"
    roles = FRONT
    cli = ("--health-path",)
    meta = "PATH"
    validator = staticmethod(validate_health_path)
    since = "0.3.0"
    desc = """A path the front answers itself, for load balancers: ``/healthz``. Off by default.

    A GET or HEAD of it is answered by the front, never queued and never sent to the app
    (the path is then not the app's): 200 while at least one HTTP worker that takes work is
    connected, 503 with the reason while the front drains or while none is. It is answered
    at once even when every worker is busy and the queue is full, and writes no access
    line.
    """


_ROUTE: Final = re.compile(r"(?P<host>(\*\.)?[A-Za-z0-9][A-Za-z0-9.-]*)?"
                           r"(?P<prefix>/[A-Za-z0-9._~!$&'()*+,;:@/-]*)="
                           r"(?P<pool>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?P<strip>:strip)?")


class Route(NamedTuple):
    """One ``route``: requests for ``host`` (exact, or ``*.suffix``; None: any) whose path
    is ``prefix`` or below go to ``pool``; ``strip`` makes the prefix their SCRIPT_NAME."""

    host: str | None
    prefix: str
    pool: str
    strip: bool
    text: str


def parse_route(text: str) -> Route:
    match = _ROUTE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not [HOST]PATH-PREFIX=POOL[:strip], e.g. "
                         f"/api=api:strip or *.example.com/=web")
    host = match["host"].lower() if match["host"] else None
    prefix = match["prefix"]
    if len(prefix) > 1:
        prefix = prefix.rstrip("/") or "/"
    if match["strip"] and prefix == "/":
        raise ValueError(f"{text!r}: there is nothing to strip from /")
    return Route(host, prefix, match["pool"], bool(match["strip"]), text)


def validate_routes(value: Any) -> list[Route]:
    routes = [parse_route(text) for text in _list(value)]
    seen: dict[tuple[str | None, str], str] = {}
    for route in routes:
        key = (route.host, route.prefix)
        if key in seen:
            raise ValueError(f"{route.text!r} and {seen[key]!r} route the same host and path")
        seen[key] = route.text
    return routes


class Routes(Setting):
    name = "route"
    section = "Routing"
    roles = FRONT
    cli = ("--route",)
    meta = "[HOST]PREFIX=POOL[:strip]"
    action = "append"
    validator = staticmethod(validate_routes)
    default: ClassVar[list[str]] = []
    default_doc = "[]"
    since = "0.3.0"
    desc = """Send requests to a handler pool by host and path (repeatable), as in Mongrel2.

    Requests no route takes go to the pool ``default``.

    ``/api=api`` sends ``/api`` and everything under it (``/api/users``, not ``/apis``)
    to the pool ``api``; ``shop.example.com/=shop`` the requests whose ``Host`` is
    ``shop.example.com``; ``*.example.com/=web`` those of every subdomain of
    ``example.com``. Routes that name the request's host come first (an exact name, then
    ``*.`` patterns), then those for any host; among them the longest prefix wins, so
    ``shop.example.com/=shop`` takes all of that host. ``:strip`` mounts the app at the
    prefix: ``SCRIPT_NAME`` becomes
    ``/api`` and ``PATH_INFO`` the rest, so the URLs the app builds start with ``/api``.
    A request for a pool that has no worker waits up to ``queue_timeout``, then gets 503.
    """


def validate_field_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = validate_string(value)
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", text):
        raise ValueError("expected a header or cookie name (a token)")
    return text


class VersionHeader(Setting):
    name = "version_header"
    section = "Routing"
    roles = FRONT
    cli = ("--version-header",)
    meta = "NAME"
    validator = staticmethod(validate_field_name)
    since = "0.3.0"
    desc = """A request header that asks for a pool version, e.g. ``X-Version``; off by default.

    A request with ``X-Version: v2`` goes to version ``v2`` of its pool when that version
    has a worker that takes work, even in standby: the way to try a new version before it
    gets traffic. Otherwise the header is ignored. Anyone who can send the header can
    reach a standby version: turn it on where that is acceptable, or strip the header at
    the proxy in front.
    """


class VersionCookie(Setting):
    name = "version_cookie"
    section = "Routing"
    roles = FRONT
    cli = ("--version-cookie",)
    meta = "NAME"
    validator = staticmethod(validate_field_name)
    since = "0.3.0"
    desc = """A cookie that asks for a pool version, as ``version_header`` does; off by default.

    For trying a version in a browser: set the cookie (``document.cookie =
    "wsgi_version=v2"``) and every request of that browser asks for ``v2``.
    """


class StickyCookie(Setting):
    name = "sticky_cookie"
    section = "Routing"
    roles = FRONT
    cli = ("--sticky-cookie",)
    meta = "NAME"
    validator = staticmethod(validate_field_name)
    since = "0.3.0"
    desc = """Keep each client on one version of a pool: a cookie the front sets; off by default.

    When the front picks a version by weight for a request without this cookie, the
    answer sets it (``Path=/; HttpOnly; SameSite=Lax``, a session cookie) and later
    requests carrying it go to that version while it takes traffic. When it no longer
    does (it was put in standby or its workers left), the front picks again and sets the
    cookie anew: a rollback moves every client.
    """


class MetricsBind(Setting):
    name = "metrics_bind"
    section = "Server Socket"
    roles = FRONT
    cli = ("--metrics-bind",)
    meta = "ADDRESS"
    validator = staticmethod(validate_optional_address)
    since = "0.3.0"
    desc = """Where the front serves its Prometheus metrics (``GET /metrics``); off by default.

    ``HOST:PORT`` of a listener of its own, which also answers the health check (at
    ``health_path``, or ``/healthz`` when that is unset). ``docs/metrics.md`` lists every
    metric. Keep it off the public network: it tells anyone who asks how loaded the front
    is. Counting costs the request path little; with it unset, nothing.
    """


def validate_control_socket(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = validate_string(value)
    if text.startswith("tcp://") or re.fullmatch(r"[^/]*:\d+", text):
        raise ValueError("the control socket is a Unix socket path (or ipc://PATH): its file "
                         "mode keeps it to its owner, which no TCP port can")
    path = text.removeprefix("ipc://")
    if not path or "\0" in path:
        raise ValueError("expected a file system path")
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"{path} is longer than a Unix socket path may be (107 bytes)")
    return path


class ControlSocket(Setting):
    name = "control_socket"
    section = "Server Socket"
    roles = EVERY
    cli = ("--control-socket",)
    meta = "PATH"
    validator = staticmethod(validate_control_socket)
    since = "0.3.0"
    desc = """A Unix socket for ``python -m wsgi_zmq.ctl PATH COMMAND``; off by default.

    A front answers ``status``, ``drain`` and ``resume``; a handler pool's master answers
    ``status``, ``workers N`` and ``reload``; all-in-one, the front answers all of them.
    The socket is created owner-only (mode 0600): whoever may use it may stop the service.
    A stale socket file left by a process that died is replaced; one a live process
    answers on refuses the start. ``ipc://PATH`` is accepted for the same path.
    """


def validate_pool_name(value: Any) -> str:
    text = validate_string(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
        raise ValueError("a pool name has 1 to 64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    return text


def validate_pool_version(value: Any) -> str:
    text = validate_string(value)
    if text and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", text):
        raise ValueError("a version tag has up to 64 letters, digits, '_', '.', '+' or '-', "
                         "starting with a letter or digit")
    return text


class Pool(Setting):
    name = "pool"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--pool",)
    meta = "NAME"
    validator = staticmethod(validate_pool_name)
    default = "default"
    since = "0.3.0"
    desc = """The name this handler pool announces to its fronts.

    The front shows it in ``ctl status`` and its metrics; the access log atom
    ``%(pool)s`` writes it (and ``%(version)s`` the ``pool_version``).
    """


def validate_weight(value: Any) -> int:
    weight = _int(value)
    if not 0 <= weight <= 1_000_000:
        raise ValueError("a weight is 0 to 1000000")
    return weight


class Weight(Setting):
    name = "weight"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--weight",)
    meta = "INT"
    validator = staticmethod(validate_weight)
    default = 100
    since = "0.3.0"
    desc = """This pool version's share of its pool's traffic, against the other versions'.

    A front splits a pool's requests across its versions in proportion to their weights:
    100 and 10 send about 91% and 9%. 0 sends it nothing unless a request asks for its
    version. The first worker of a version to connect sets the weight in the front; from
    then on ``ctl FRONT weight POOL VERSION N`` changes it.
    """


class Standby(Setting):
    name = "standby"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--standby",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    since = "0.3.0"
    desc = """Start this pool version in standby: connected, but sent only requests asking for it.

    A standby version is connected and health-checked, and gets only the requests that ask
    for its version (``version_header``, ``version_cookie``).

    ``ctl FRONT promote POOL VERSION`` gives it the traffic and puts the pool's other
    versions in standby.
    """


class PoolVersion(Setting):
    name = "pool_version"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--pool-version",)
    meta = "TAG"
    validator = staticmethod(validate_pool_version)
    default = ""
    since = "0.3.0"
    desc = """The version of the app this pool runs (a release tag), announced to its fronts.

    Shown beside the pool's name. ``--version`` keeps its usual meaning (print wsgi_zmq's
    version and exit), so the tag has a name of its own.
    """


def validate_profile_dir(value: Any) -> str | None:
    """A directory this process can write in, or make (its nearest existing ancestor is a
    directory it can write in); None or "" for none. Made by the workers, not here."""
    if value is None or value == "":
        return None
    path = os.path.abspath(validate_string(value))
    probe = path
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{path} is not writable" if probe == path else
                         f"{path} cannot be made: {probe} is not writable")
    return path


def validate_profile_rate(value: Any) -> float:
    problem = "expected a share of requests greater than 0 and at most 1 (0.05 is 5%)"
    if isinstance(value, bool):
        raise ValueError(problem)
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if not 0 < rate <= 1:  # also refuses nan
        raise ValueError(problem)
    return rate


class Profile(Setting):
    name = "profile"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--profile",)
    meta = "DIR"
    validator = staticmethod(validate_profile_dir)
    since = "0.3.0"
    desc = """Profile a sampled share of this pool's requests (``profile_rate``) into DIR.

    Each profiled request is run under cProfile (werkzeug's ``ProfilerMiddleware``) and
    leaves one file in DIR, which ``python -m pstats FILE`` and snakeviz read, named by the
    request's time, method and path, its duration and the worker's pid. DIR is made if it
    is missing (it must be writable, or its nearest existing parent). A profiled request's
    response is buffered: the client gets it once it is complete. WSGI pools only. Other
    pools of the same front are not affected; ``docs/profiling.md`` has the details.
    """


class ProfileRate(Setting):
    name = "profile_rate"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--profile-rate",)
    meta = "FLOAT"
    validator = staticmethod(validate_profile_rate)
    default = 0.01
    since = "0.3.0"
    desc = """The share of requests ``profile`` profiles: above 0, at most 1 (every request).

    Drawn at random for each request; an unprofiled request pays one ``random()`` call.
    """


class Backlog(Setting):
    name = "backlog"
    section = "Server Socket"
    roles = FRONT
    cli = ("--backlog",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 2048
    desc = """The maximum number of pending connections (the ``listen()`` backlog).
    """


class Certfile(Setting):
    name = "certfile"
    section = "SSL"
    roles = FRONT
    cli = ("--certfile",)
    meta = "FILE"
    validator = staticmethod(validate_optional_file)
    since = "0.2.0"
    desc = """The certificate (PEM, with its chain) of the HTTPS binds.
    """


class Keyfile(Setting):
    name = "keyfile"
    section = "SSL"
    roles = FRONT
    cli = ("--keyfile",)
    meta = "FILE"
    validator = staticmethod(validate_optional_file)
    since = "0.2.0"
    desc = """The private key (PEM) of ``certfile``; not needed if ``certfile`` holds it too.
    """


class CaCerts(Setting):
    name = "ca_certs"
    section = "SSL"
    roles = FRONT
    cli = ("--ca-certs",)
    meta = "FILE"
    validator = staticmethod(validate_optional_file)
    since = "0.2.0"
    desc = """The CA certificates (PEM) that client certificates are checked against.
    """


class CertReqs(Setting):
    name = "cert_reqs"
    section = "SSL"
    roles = FRONT
    cli = ("--cert-reqs",)
    meta = "INT"
    validator = staticmethod(validate_cert_reqs)
    default = 0
    since = "0.2.0"
    desc = """Whether a client certificate is asked for: 0 no, 1 optional, 2 required.

    As gunicorn's (the ``ssl.CERT_*`` values). With 1 or 2 a certificate the client sends is
    checked against ``ca_certs``, and its subject is in the environ (``SSL_CLIENT_S_DN``).
    """


class Ciphers(Setting):
    name = "ciphers"
    section = "SSL"
    roles = FRONT
    cli = ("--ciphers",)
    meta = "STRING"
    validator = staticmethod(validate_optional_string)
    since = "0.2.0"
    desc = """The TLS 1.2 cipher list, in OpenSSL's format; by default Python's.
    """


class DoHandshakeOnConnect(Setting):
    name = "do_handshake_on_connect"
    section = "SSL"
    roles = FRONT
    cli = ("--do-handshake-on-connect",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    since = "0.2.0"
    desc = """Complete the TLS handshake as soon as a connection is accepted.

    By default, as in gunicorn, the handshake completes with the first read. Either way it
    never blocks the front: it runs on the event loop, bounded by ``header_timeout``.
    """


class SslMinVersion(Setting):
    name = "ssl_min_version"
    section = "SSL"
    roles = FRONT
    cli = ("--ssl-min-version",)
    meta = "VERSION"
    validator = staticmethod(validate_choice(("tlsv1.2", "tlsv1.3")))
    default = "tlsv1.2"
    since = "0.2.0"
    desc = """The oldest TLS version the HTTPS binds accept: ``TLSv1.2`` or ``TLSv1.3``.
    """


class Backend(Setting):
    name = "backend"
    section = "Backend"
    roles = FRONT
    cli = ("--backend",)
    meta = "ENDPOINT"
    action = "append"
    validator = staticmethod(validate_endpoints)
    default = [DEFAULT_BACKEND]
    desc = """The ZeroMQ endpoint the front binds for handler workers; repeatable.

    ``tcp://HOST:PORT``, ``tcp://HOST:*`` (a free port, printed in the startup line
    ``Backend at:``) or ``ipc://PATH``. Handlers on other hosts need a reachable address.
    """


class JobBind(Setting):
    name = "job_bind"
    section = "Jobs"
    roles = FRONT
    cli = ("--job-bind",)
    meta = "ENDPOINT"
    action = "append"
    validator = staticmethod(validate_optional_endpoints)
    default: ClassVar[Any] = []
    since = "0.3.0"
    desc = """The ZeroMQ endpoint the front binds for job clients (Majordomo); repeatable.

    Off by default. Clients speak MDP/0.1 or MDP/0.2 (``docs/jobs.md``) or send a bare
    payload from a REQ socket; MDP workers written by others may connect here too. With
    ``job_bind`` and no ``bind`` given, the front is a pure job broker: no HTTP listener.
    """


class DefaultService(Setting):
    name = "default_service"
    section = "Jobs"
    roles = FRONT
    cli = ("--default-service",)
    meta = "NAME"
    validator = staticmethod(validate_service)
    since = "0.3.0"
    desc = """The service that serves bare requests (a payload with no Majordomo header).

    Without it, a bare request is answered with an error reply that names this setting.
    """


class Job(Setting):
    name = "job"
    section = "Jobs"
    roles = HANDLER
    cli = ("--job",)
    meta = "MODULE:FUNC"
    validator = staticmethod(validate_app_uri)
    since = "0.3.0"
    desc = """Host a job function instead of a WSGI app: ``FUNC(payload) -> bytes``.

    ``FUNC`` takes the request's one frame (``bytes``) and returns ``bytes``; or, declared
    with a parameter annotated ``list``, takes and returns a list of frames; a generator's
    items are sent as partial replies. A second parameter receives a ``JobContext`` (the
    client's address and key, the request id, the service). ``docs/jobs.md`` has the
    details.
    """


class Service(Setting):
    name = "service"
    section = "Jobs"
    roles = HANDLER
    cli = ("--service",)
    meta = "NAME"
    validator = staticmethod(validate_service)
    since = "0.3.0"
    desc = """The service a job pool registers with the front; by default the function's name.
    """


class JobIdempotent(Setting):
    name = "job_idempotent"
    section = "Jobs"
    roles = HANDLER
    cli = ("--job-idempotent",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    since = "0.3.0"
    desc = """The pool's jobs may run twice: one whose worker died is sent to another worker.

    Without it, a job whose worker died while possibly running it is answered with an
    error reply (502), as a non-idempotent HTTP request is.
    """


class CurveSecretKey(Setting):
    name = "curve_secret_key"
    section = "Backend"
    roles = EVERY
    cli = ("--curve-secret-key",)
    meta = "FILE"
    validator = staticmethod(validate_optional_file)
    since = "0.2.0"
    desc = """This process's CurveZMQ key pair: the ``NAME.key_secret`` from ``keys generate``.

    With it the backend link is authenticated and encrypted (CURVE). A front uses it as the
    server key and admits only the workers whose public keys are in ``curve_allow``; a
    handler pool uses it as its own key and needs the front's public key,
    ``curve_server_key``. The file is read with ``zmq.auth.load_certificate``.
    """


class CurveServerKey(Setting):
    name = "curve_server_key"
    section = "Backend"
    roles = HANDLER
    cli = ("--curve-server-key",)
    meta = "FILE"
    validator = staticmethod(validate_optional_file)
    since = "0.2.0"
    desc = """The front's public key (its ``NAME.key`` file), for a handler pool using CURVE.

    A worker connects only to a front that proves it holds the matching secret key.
    """


class CurveAllow(Setting):
    name = "curve_allow"
    section = "Backend"
    roles = FRONT
    cli = ("--curve-allow",)
    meta = "DIRECTORY"
    validator = staticmethod(validate_optional_directory)
    since = "0.2.0"
    desc = """A directory of the public keys (``NAME.key`` files) of the workers a front admits.

    Read again on ``HUP``, without a restart: a worker whose key was removed is sent nothing
    more and is told to disconnect; one with no key, a wrong key or an unlisted key receives
    nothing and is logged as refused (a few lines a minute). Needs ``curve_secret_key``.
    """


class InsecureBackend(Setting):
    name = "insecure_backend"
    section = "Backend"
    roles = FRONT
    cli = ("--insecure-backend",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    since = "0.2.0"
    desc = """Allow a plaintext ``tcp://`` backend on an address other than loopback.

    Without CURVE anyone who reaches the backend endpoint can connect as a worker and
    receive every request, so the front refuses to bind one (exit 2) unless CURVE is set up
    or this flag says the network is trusted.
    """


class Connect(Setting):
    name = "connect"
    section = "Backend"
    roles = frozenset({"handler"})
    cli = ("--connect",)
    meta = "ENDPOINT"
    action = "append"
    validator = staticmethod(validate_connect_endpoints)
    default = [DEFAULT_BACKEND]
    desc = """A front's backend endpoint to serve; repeatable (one connection to each).

    Handlers may start before or after the front and reconnect by themselves when it
    restarts. In all-in-one mode the handler pool connects to the front's ``backend``.
    """


class Workers(Setting):
    name = "workers"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("-w", "--workers")
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = int(os.environ.get("WEB_CONCURRENCY", "1") or 1)
    default_doc = "1, or $WEB_CONCURRENCY"
    desc = """The number of handler worker processes.

    As in gunicorn: 1 by default, or the ``WEB_CONCURRENCY`` environment variable;
    (2 x cores) + 1 is the usual start for a CPU-bound app. ``TTIN`` and ``TTOU`` change it
    at run time.
    """


class Capacity(Setting):
    name = "capacity"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--capacity",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 32
    desc = """How many requests the front may hand one worker before the worker answers one.

    A sync worker still runs one request at a time, in order; holding several lets it
    answer them in one message and hides the round trip to the front, which is most of its
    speed under load (hello world, one worker: capacity 8 gives about half the throughput of
    32). The cost is that a request could wait behind a slow one in the same worker, so:
    an idle worker is always chosen first; a busy worker that has finished nothing for
    20 ms gets nothing new until it does; and a worker whose current request has run
    40 ms hands the requests waiting behind it back to the front, which dispatches them
    elsewhere (this uses ``SIGALRM`` in the worker, unless the app installed its own
    handler). Set 1 for strict one-request-per-worker dispatch, as gunicorn's sync worker.
    """


class MinWorkers(Setting):
    name = "min_workers"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--min-workers",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 1
    desc = """With ``max_workers``: the pool never scales below this many workers.
    """


class MaxWorkers(Setting):
    name = "max_workers"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--max-workers",)
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 0
    desc = """Scale the pool by load between ``min_workers`` and this many. 0: off.

    Off by default: the pool keeps ``workers``. When on, it starts with ``workers`` (kept
    within the bounds) and the master adds a worker while requests wait in a front's queue
    or the workers are busy more than 80% of the time, and removes one (gracefully) while
    nothing waits and they are busy less than 30% of the time; at most one change per
    ``scale_cooldown``. Each change is logged and calls ``nworkers_changed``. The front
    tells the workers its queue depth in its heartbeats; each worker reports it and its
    own busy share to the master.
    """


class ScaleCooldown(Setting):
    name = "scale_cooldown"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--scale-cooldown",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 10.0
    desc = """With ``max_workers``: the least time between two changes of the pool's size.
    """


class WorkerClass(Setting):
    name = "worker_class"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("-k", "--worker-class")
    meta = "STRING"
    validator = staticmethod(validate_choice(("sync", "gevent")))
    default = "sync"
    desc = """The kind of worker: ``sync`` (one request at a time) or ``gevent``.

    A ``gevent`` worker patches the standard library (``gevent.monkey.patch_all()``) before
    it imports the app and serves up to ``worker_connections`` requests at once, each in a
    greenlet: for apps that wait on I/O. It announces ``worker_connections`` as its
    capacity (``capacity`` is for sync workers).
    """


class WorkerConnections(Setting):
    name = "worker_connections"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--worker-connections",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 1000
    desc = """How many requests one gevent worker serves at once.
    """


class GracefulTimeout(Setting):
    name = "graceful_timeout"
    section = "Worker Processes"
    roles = EVERY
    cli = ("--graceful-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 30.0
    desc = """After ``TERM``, how long the front and the workers may take to finish requests.

    The front stops accepting and finishes the requests it holds; workers say BYE and finish
    theirs. Whatever still runs after that is killed.
    """


class QueueSize(Setting):
    name = "queue_size"
    section = "Backend"
    roles = FRONT
    cli = ("--queue-size",)
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 1024
    desc = """How many requests may wait in the front for a free worker.

    A request that finds the queue full is answered 503 with ``Retry-After``.
    """


class MaxQueueBytes(Setting):
    name = "max_queue_bytes"
    section = "Backend"
    roles = FRONT
    cli = ("--max-queue-bytes",)
    meta = "BYTES"
    validator = staticmethod(validate_pos_int)
    default = 256 * 1024 * 1024
    default_doc = "268435456 (256 MiB)"
    since = "0.3.0"
    desc = """How many bytes the requests and jobs waiting in the front may hold, all together.

    A job carries its frames whole (up to 64 MiB each), so ``queue_size`` alone would let
    clients park gigabytes in the front. A request or job that would take the waiting ones
    past this bound is answered at once, 503 (a job: an error reply) with ``Retry-After``.
    HTTP requests hold only their head (their body streams under credit), so this bounds
    the jobs in practice.
    """


class RequestTimeout(Setting):
    name = "request_timeout"
    section = "Backend"
    roles = FRONT
    cli = ("--request-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 30.0
    desc = """How long a worker may hold a request without progress before it starts the response.

    Counted from the moment a worker takes the request, and restarted by every chunk of
    request body that moves. Past it the client gets 504 (the app is slow) and the worker
    is told to stop (the app iterator is closed). A response that has started is not
    limited. Time spent in the front's queue counts against ``queue_timeout`` instead.
    """


class QueueTimeout(Setting):
    name = "queue_timeout"
    section = "Backend"
    roles = FRONT
    cli = ("--queue-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 30.0
    since = "0.2.0"
    desc = """How long a request may wait in the front's queue for a free worker.

    Past it the client gets 503 with ``Retry-After`` (the service is overloaded), not 504,
    which stays for a worker that took the request and did not answer in time.
    """


class EjectAfter(Setting):
    name = "eject_after"
    section = "Backend"
    roles = FRONT
    cli = ("--eject-after",)
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 3
    since = "0.2.0"
    desc = """Eject a worker whose last INT requests in a row failed; 0: never.

    A failure is a request that timed out on the worker (504), an ERROR answer of 500 or
    more from it, or a reply that breaks the protocol. An ejected worker gets nothing new;
    what it holds and has not started goes to other workers. After five heartbeats (ten the
    second time, and so on up to sixty) the front probes it every heartbeat, and it returns
    to dispatch when it answers. Each ejection and return is logged.
    """


class Heartbeat(Setting):
    name = "heartbeat"
    section = "Backend"
    roles = EVERY
    cli = ("--heartbeat",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 1.0
    desc = """The interval of ZeroMQ heartbeats between the front and the workers.

    A peer silent for three intervals is dropped: the front re-dispatches or answers (502)
    the requests that worker held, and a worker reconnects to its front.
    """


class Keepalive(Setting):
    name = "keepalive"
    section = "Server Socket"
    roles = FRONT
    cli = ("--keep-alive",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 2.0
    desc = """How long an idle connection is kept: between requests, or before the first byte.
    """


class HeaderTimeout(Setting):
    name = "header_timeout"
    section = "Server Socket"
    roles = FRONT
    cli = ("--header-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 10.0
    since = "0.2.0"
    desc = """How long a client may take to send a whole request head, from its first byte.

    Past it the client gets 408 and the connection is closed, however steadily the bytes
    trickle in: one byte a second keeps no connection open for longer (slowloris).
    """


class BodyTimeout(Setting):
    name = "body_timeout"
    section = "Server Socket"
    roles = FRONT
    cli = ("--body-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 30.0
    since = "0.2.0"
    desc = """How long a request body may stall: no byte while the app waits for more.

    Past it the app's ``wsgi.input`` read fails (the worker is told the client is gone)
    and, if no response started, the client gets 408 and the connection is closed. Time
    the front spends waiting for the worker to take more of the body does not count.
    """


class MaxConnections(Setting):
    name = "max_connections"
    section = "Server Socket"
    roles = FRONT
    cli = ("--max-connections",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 1000
    since = "0.2.0"
    desc = """The most client connections the front keeps open at once.

    At the limit it stops accepting, and new connections wait in the kernel's backlog
    (``backlog``) until one closes, so memory does not grow with the number of clients.
    The front raises its open-file limit to fit, where the hard limit allows.
    """


class LimitRequestLine(Setting):
    name = "limit_request_line"
    section = "Limits"
    roles = FRONT
    cli = ("--limit-request-line",)
    meta = "BYTES"
    validator = staticmethod(validate_pos_int)
    default = 8190
    desc = """The maximum size of the request line, in bytes; longer gets 414.

    The one default that differs from gunicorn's (4094): RFC 9112 section 3 recommends
    accepting request lines of at least 8000 octets.
    """


class LimitRequestFields(Setting):
    name = "limit_request_fields"
    section = "Limits"
    roles = FRONT
    cli = ("--limit-request-fields",)
    meta = "INT"
    validator = staticmethod(validate_pos_int)
    default = 100
    desc = """The maximum number of header fields in a request; more gets 431.
    """


class LimitRequestFieldSize(Setting):
    name = "limit_request_field_size"
    section = "Limits"
    roles = FRONT
    cli = ("--limit-request-field_size", "--limit-request-field-size")
    meta = "BYTES"
    validator = staticmethod(validate_pos_int)
    default = 8190
    desc = """The maximum size of one header field (name, colon, value), in bytes; more gets 431.
    """


class LimitRequestBody(Setting):
    name = "limit_request_body"
    section = "Limits"
    roles = FRONT
    cli = ("--limit-request-body",)
    meta = "BYTES"
    validator = staticmethod(validate_nonneg_int)
    default = 0
    desc = """The maximum size of a request body, in bytes; larger gets 413. 0: no limit.

    A declared ``Content-Length`` over the limit is refused before any of the body is read; a
    chunked body is refused when it crosses the limit. Bodies stream to the worker under
    flow control, so memory does not grow with their size whatever this is.
    """


class Window(Setting):
    name = "window"
    section = "Flow Control"
    roles = EVERY
    cli = ("--window",)
    meta = "CHUNKS"
    validator = staticmethod(validate_window)
    default = 8
    desc = """How many body chunks may travel to a receiver before it acknowledges one (1 to
    1024).

    The receiver sets it: the front for response chunks, a worker for request-body chunks.
    With ``chunk_size`` it bounds the memory one streamed body costs each side. A worker's
    credit past the window it announced is cut back to it (and logged), so no worker can
    make the front hold more of a request body than that.
    """


class ChunkSize(Setting):
    name = "chunk_size"
    section = "Flow Control"
    roles = EVERY
    cli = ("--chunk-size",)
    meta = "BYTES"
    validator = staticmethod(validate_pos_int)
    default = 65536
    desc = """The largest body chunk sent in one message, in bytes.

    A worker splits larger blocks from the app; the front reads request bodies in pieces of
    this size.
    """


class BodyRing(Setting):
    name = "body_ring"
    section = "Flow Control"
    roles = EVERY
    cli = ("--body-ring",)
    meta = "REQUESTS"
    validator = staticmethod(validate_body_ring)
    default = 4
    since = "0.4.0"
    desc = """How many request bodies at once a worker on the front's host takes through shared
    memory instead of through ZeroMQ (0 to 64; 0 turns it off).

    Each worker makes a ring of this many times ``window`` slots of 256 KiB (or
    ``chunk_size``, if larger): 8 MiB at the defaults, whose pages are allocated as bodies
    first touch them. It offers the ring to the front, which takes it only after checking
    that it is a sealed memfd of its own user on its own host, then reads ``Content-Length``
    bodies straight from the client into it. Bodies beyond that many at once, and all
    bodies of a worker on another host, travel in messages as before. On a front, 0 takes
    no worker's ring. Uploads took 0.5-0.75x the time with rings as without (the README's
    "Big uploads").

    With its ring a worker offers two pipes (``frame_pipes``); 0 turns those off too.
    """


class FramePipes(Setting):
    name = "frame_pipes"
    section = "Flow Control"
    roles = EVERY
    cli = ("--frame-pipes",)
    meta = "BOOL"
    validator = staticmethod(validate_bool)
    default = True
    since = "0.5.0"
    desc = """Whether a worker whose body ring the front took and the front send each other
    their messages through two pipes instead of ZeroMQ (``on`` or ``off``).

    A ZeroMQ message wakes an I/O thread on each side before the receiver's own thread; a
    write into a pipe wakes the receiver's thread at once. The worker offers the pipes with
    its ring, and the front takes them only from the process whose ring it took, after
    checking that each is a pipe of its own user (``docs/protocol.md``, "The frame
    pipes"). Uploads took 0.65-0.91x the time with the pipes as with ``off``, hello world
    1.04-1.11x the requests per second of the code before them (the README's "Big
    uploads"). ``off`` on a worker offers none; on a front, takes none. Needs
    ``body_ring``.
    """

class LogLevel(Setting):
    name = "loglevel"
    section = "Logging"
    roles = EVERY
    cli = ("--log-level",)
    meta = "LEVEL"
    validator = staticmethod(validate_choice(("debug", "info", "warning", "error", "critical")))
    default = "info"
    desc = """The granularity of the error log: debug, info, warning, error or critical.
    """


class LogFormat(Setting):
    name = "log_format"
    section = "Logging"
    roles = EVERY
    cli = ("--log-format",)
    meta = "FORMAT"
    validator = staticmethod(validate_choice(("text", "json")))
    default = "text"
    since = "0.3.0"
    desc = """The form of the error and access logs: ``text`` (gunicorn's lines) or ``json``.

    ``json`` writes one JSON object per line, for log pipelines. Error log: ``time``
    (ISO 8601, UTC), ``level``, ``pid``, ``logger``, ``message``, and ``exc_info`` with the
    traceback when there is one. Access log: ``time``, ``remote_addr``, ``user``,
    ``method``, ``uri``, ``protocol``, ``status`` (a number), ``bytes``, ``referer``,
    ``user_agent``, ``duration_s``, ``queue_ms``, ``worker``, ``pool``, ``version`` and
    ``pid``, whatever ``access_log_format`` says. No header but the referer and the user
    agent is written, so no credential can reach it.
    """


#: statsd's port, when ``statsd_host`` names a host alone (as in gunicorn).
STATSD_PORT: Final = 8125


def parse_statsd_host(text: str) -> tuple[str, int] | str:
    """A ``statsd_host``: ``(host, port)`` for UDP (``HOST:PORT``, ``[IPv6]:PORT``, or
    ``HOST`` for port 8125), or the path of a Unix datagram socket (``unix:PATH`` or
    ``unix://PATH``). ``unix:8125`` is the host ``unix``, as gunicorn reads it. Raises
    ValueError."""
    text = text.strip()
    if text.startswith("unix:") and not re.fullmatch(r"unix:\d+", text):
        path = text.removeprefix("unix://") if text.startswith("unix://") else text[5:]
        if not path or "\0" in path:
            raise ValueError("expected unix:PATH")
        return path
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]/]+)(?::(\d+))?", text)
    if not match:
        raise ValueError("expected HOST:PORT, HOST (port 8125) or unix:PATH")
    port = int(match.group(2) or match.group(4) or STATSD_PORT)
    if not 0 < port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return match.group(1) or match.group(3), port


def validate_statsd_host(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = validate_string(value).strip()
    parse_statsd_host(text)
    return text


def validate_statsd_prefix(value: Any) -> str:
    text = validate_string(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]*", text):
        raise ValueError("a statsd prefix has letters, digits, '_', '-' and '.' only")
    return text


def validate_dogstatsd_tags(value: Any) -> str:
    tags = [tag.strip() for tag in validate_string(value).split(",")]
    if tags == [""]:
        return ""
    for tag in tags:
        if not re.fullmatch(r"[A-Za-z0-9_.:/\-]+", tag):
            raise ValueError(f"{tag!r}: a tag is key:value (or a bare value) of letters, "
                             "digits, '_', '-', '.', '/' and ':', comma-separated")
    return ",".join(tags)


class StatsdHost(Setting):
    name = "statsd_host"
    section = "Logging"
    roles = FRONT
    cli = ("--statsd-host",)
    meta = "STATSD_ADDR"
    validator = staticmethod(validate_statsd_host)
    since = "0.3.0"
    desc = """Where the front sends statsd metrics (``HOST:PORT`` or ``unix:PATH``); off by default.

    gunicorn's setting and metric names (``gunicorn.requests``,
    ``gunicorn.request.duration``, ``gunicorn.request.status.<code>``, ``gunicorn.workers``),
    so its dashboards work; ``docs/metrics.md`` lists them and the front's own. ``HOST``
    alone means port 8125; ``unix://PATH`` is a Unix datagram socket too. The name is
    resolved once, at start (a name that does not resolve is logged, and nothing is sent).
    Lines are batched into datagrams of at most 1400 bytes, sent every 0.5 s or when full;
    a datagram nobody receives is lost without slowing the front (failures are logged a few
    times a minute at most).
    """


class StatsdPrefix(Setting):
    name = "statsd_prefix"
    section = "Logging"
    roles = FRONT
    cli = ("--statsd-prefix",)
    meta = "STATSD_PREFIX"
    validator = staticmethod(validate_statsd_prefix)
    default = ""
    since = "0.3.0"
    desc = """A prefix for every statsd metric name (a trailing ``.`` is added if missing).
    """


class DogstatsdTags(Setting):
    name = "dogstatsd_tags"
    section = "Logging"
    roles = FRONT
    cli = ("--dogstatsd-tags",)
    meta = "DOGSTATSD_TAGS"
    validator = staticmethod(validate_dogstatsd_tags)
    default = ""
    since = "0.3.0"
    desc = """Comma-separated DogStatsD tags added to every statsd line, as ``|#TAGS``.

    For example ``env:prod,service:web``. Plain statsd servers do not read tags: leave it
    empty for them.
    """


class ErrorLog(Setting):
    name = "errorlog"
    section = "Logging"
    roles = EVERY
    cli = ("--error-logfile", "--log-file")
    meta = "FILE"
    validator = staticmethod(validate_string)
    default = "-"
    desc = """Where the error log goes: a file path, or ``-`` for stderr.
    """


class AccessLog(Setting):
    name = "accesslog"
    section = "Logging"
    roles = EVERY
    cli = ("--access-logfile",)
    meta = "FILE"
    validator = staticmethod(validate_optional_path)
    desc = """Where the access log goes: a file path, or ``-`` for stdout. Off by default.

    A worker writes the line of each request it answered, after its last record left; the
    front writes lines only for the requests it answered itself (400, 408, 413, 414, 417,
    431, 501, 505 from the parser; 502, 503, 504). The front is the one process every
    request crosses, so it does no per-request logging work: the cost stays with the
    workers, of which there can be many.
    """


class AccessLogFormat(Setting):
    name = "access_log_format"
    section = "Logging"
    roles = EVERY
    cli = ("--access-logformat",)
    meta = "STRING"
    validator = staticmethod(validate_string)
    default = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    desc = """The access log line, in gunicorn's atoms.

    ``h`` remote address, ``l`` ``-``, ``u`` user name (HTTP Basic), ``t`` date of the
    request, ``r`` request line, ``m`` method, ``U`` path, ``q`` query string, ``H``
    protocol, ``s`` status, ``B`` response body length, ``b`` the same or ``-``, ``f``
    referer, ``a`` user agent, ``T`` request time in seconds, ``M`` milliseconds, ``D``
    microseconds, ``L`` decimal seconds, ``p`` process id, ``{name}i`` a request header,
    ``{name}o`` a response header, ``{name}e`` an environ variable. Ours: ``worker``, the
    worker that answered (``pid@host``, ``front`` for the front's own answers), and
    ``queue_ms``, the milliseconds the request waited in the front for a free worker.
    """


class AccessLogSecrets(Setting):
    name = "access_log_secrets"
    section = "Logging"
    roles = EVERY
    cli = ("--access-log-secrets",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    since = "0.2.0"
    desc = """Show the values of credential headers in the access log.

    By default the atoms ``{authorization}i``, ``{proxy-authorization}i``, ``{cookie}i`` and
    ``{set-cookie}o`` print ``***`` (and ``u``, the user name of HTTP Basic, still works).
    """


class CaptureOutput(Setting):
    name = "capture_output"
    section = "Logging"
    roles = EVERY
    cli = ("--capture-output",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    desc = """Send the stdout and stderr of the processes to the error log file.

    Useful when ``errorlog`` is a file and the app prints; has no effect with ``-``.
    """


class LogConfigDict(Setting):
    name = "logconfig_dict"
    section = "Logging"
    roles = EVERY
    validator = staticmethod(validate_dict)
    default: ClassVar[dict[str, Any]] = {}
    desc = """A ``logging.config.dictConfig`` dictionary, applied after the defaults.

    Config file only. The loggers are ``wsgi_zmq.error`` (with ``.front``, ``.dispatcher``,
    ``.arbiter``, ``.worker``) and ``wsgi_zmq.access``.
    """


class ProcName(Setting):
    name = "proc_name"
    section = "Process Naming"
    roles = EVERY
    cli = ("-n", "--name")
    meta = "STRING"
    validator = staticmethod(validate_optional_string)
    desc = """A name shown in the process titles (``wsgi_zmq: worker [NAME]``).

    Process titles need the ``setproctitle`` package (``pip install 'wsgi_zmq[proctitle]'``);
    without it this only names the processes in the logs. The default is the app.
    """


class PidFile(Setting):
    name = "pidfile"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("-p", "--pid")
    meta = "FILE"
    validator = staticmethod(validate_optional_path)
    desc = """A file to write the master's PID to (the front's, for ``wsgi_zmq.front``).

    Removed at exit. A file that names a running process refuses the start (exit 2).
    """


class Chdir(Setting):
    name = "chdir"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("--chdir",)
    meta = "DIR"
    validator = staticmethod(validate_directory)
    default = os.getcwd()
    default_doc = "the current directory"
    desc = """Change to this directory before loading the app.
    """


class RawEnv(Setting):
    name = "raw_env"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("-e", "--env")
    meta = "ENV"
    action = "append"
    validator = staticmethod(validate_env)
    default: ClassVar[list[str]] = []
    desc = """Set an environment variable, ``KEY=VALUE``, in every process; repeatable.
    """


class PythonPath(Setting):
    name = "pythonpath"
    section = "Server Mechanics"
    roles = HANDLER
    cli = ("--pythonpath",)
    meta = "PATHS"
    validator = staticmethod(validate_paths)
    default: ClassVar[list[str]] = []
    desc = """Comma-separated directories to add to ``sys.path`` before loading the app.
    """


class User(Setting):
    name = "user"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("-u", "--user")
    meta = "USER"
    validator = staticmethod(validate_user)
    default_doc = "the current user"
    desc = """Run the workers (and the front, once its sockets are bound) as this user.

    A name or a uid. Needs the privilege to switch (root). The master keeps its user.
    """


class Group(Setting):
    name = "group"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("-g", "--group")
    meta = "GROUP"
    validator = staticmethod(validate_group)
    default_doc = "the current group"
    desc = """Run the workers (and the front, once its sockets are bound) as this group.
    """


class Umask(Setting):
    name = "umask"
    section = "Server Mechanics"
    roles = EVERY
    cli = ("-m", "--umask")
    meta = "INT"
    validator = staticmethod(validate_umask)
    default_doc = "unchanged"
    desc = """A bit mask for the file mode of files the processes create, in octal (``022``).
    """


class PreloadApp(Setting):
    name = "preload_app"
    section = "Server Mechanics"
    roles = HANDLER
    cli = ("--preload",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    desc = """Load the app in the master before forking the workers.

    Saves memory (pages shared until written) and boot time, and an import error stops the
    start at once; but ``HUP`` then reuses the master's copy of the code, so a new version
    needs a new pool (see "Deploying a new version" in the README). Anything the app
    opens at import (a database connection) is shared by every worker: open it in
    ``post_fork`` instead.
    """


class Reload(Setting):
    name = "reload"
    section = "Server Mechanics"
    roles = HANDLER
    cli = ("--reload",)
    action = "flag"
    validator = staticmethod(validate_bool)
    default = False
    desc = """Restart a worker when a Python file it imported changes. For development.

    Each worker checks the modification times of its modules once a second while idle, and
    leaves (gracefully) when one changed; the master forks a fresh one.
    """


class Timeout(Setting):
    name = "timeout"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("-t", "--timeout")
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 30
    desc = """Workers silent for more than this many seconds are aborted and replaced.

    A worker tells the master it is alive at least once a second (twice per ``timeout``)
    while it waits for work and as it takes each request; one stuck longer than this in
    the app (to within half a second) gets ``SIGABRT``: the front answers its request 504,
    its ``worker_abort`` hook runs and it exits; ``SIGKILL`` follows two seconds later if
    it has not. 0 disables the check.
    """


class MaxRequests(Setting):
    name = "max_requests"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--max-requests",)
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 0
    desc = """Recycle a worker after it served this many requests. 0 disables.

    The worker leaves gracefully (BYE, finish what it holds, hand back what it had not
    started) and the master forks a fresh one: no request fails. A simple defence against
    memory leaks in the app.
    """


class MaxRequestsJitter(Setting):
    name = "max_requests_jitter"
    section = "Worker Processes"
    roles = HANDLER
    cli = ("--max-requests-jitter",)
    meta = "INT"
    validator = staticmethod(validate_nonneg_int)
    default = 0
    desc = """Add a random 0 to this many requests to ``max_requests``, per worker, so that
    workers do not all recycle at once.
    """


class ForwardedAllowIps(Setting):
    name = "forwarded_allow_ips"
    section = "Server Mechanics"
    roles = FRONT
    cli = ("--forwarded-allow-ips",)
    meta = "STRING"
    validator = staticmethod(validate_addr_list)
    default = validate_addr_list(os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"))
    default_doc = "127.0.0.1,::1 (or $FORWARDED_ALLOW_IPS)"
    desc = """Addresses (or networks) of proxies trusted to say the request came over HTTPS.

    Comma-separated IP addresses or CIDR networks; ``*`` trusts every peer. From a trusted
    peer, a header of ``secure_scheme_headers`` with its value makes ``wsgi.url_scheme``
    ``https``; from any other, those headers are ignored. The front decides it, since it
    is the one that sees the peer's address.
    """


class SecureSchemeHeaders(Setting):
    name = "secure_scheme_headers"
    section = "Server Mechanics"
    roles = FRONT
    validator = staticmethod(validate_scheme_headers)
    default = {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
               "X-FORWARDED-SSL": "on"}
    desc = """Headers, and their values, by which a trusted proxy says the request is HTTPS.

    Config file only. Names are case-insensitive; values are compared exactly (``https``).
    """


class ProxyProtocol(Setting):
    name = "proxy_protocol"
    section = "Server Mechanics"
    roles = FRONT
    cli = ("--proxy-protocol",)
    meta = "MODE"
    action = "optional"
    const = "auto"
    validator = staticmethod(validate_choice(("off", "v1", "v2", "auto")))
    default = "off"
    desc = """Read a PROXY protocol header (HAProxy, stunnel) at the start of each connection.

    ``off``, ``v1`` (text), ``v2`` (binary) or ``auto``; ``--proxy-protocol`` alone means
    ``auto``. From a peer in ``proxy_allow_ips`` the header is required and gives
    ``REMOTE_ADDR`` and ``REMOTE_PORT``; other peers are served as plain HTTP.
    """


class ProxyAllowIps(Setting):
    name = "proxy_allow_ips"
    section = "Server Mechanics"
    roles = FRONT
    cli = ("--proxy-allow-from",)
    meta = "STRING"
    validator = staticmethod(validate_addr_list)
    default = ["127.0.0.1", "::1"]
    default_doc = "127.0.0.1,::1"
    desc = """Addresses (or networks) allowed to send a PROXY protocol header; ``*`` for any.
    """


_DEFAULT_HOOKS: set[Any] = set()


def is_default_hook(hook: Any) -> bool:
    """Is ``hook`` the no-op default (so calling it per request can be skipped)?"""
    return hook in _DEFAULT_HOOKS


def _hook(name: str, arity: int, roles: frozenset[str], doc: str, args: str) -> None:
    """Declare a server hook setting: a callable of ``arity`` arguments, no-op default."""

    def default(*_args: Any) -> None:
        return None

    _DEFAULT_HOOKS.add(default)
    default.__name__ = name
    default.__qualname__ = name
    cls = type(name.title().replace("_", ""), (Setting,), {
        "name": name, "section": "Server Hooks", "roles": roles,
        "validator": staticmethod(validate_hook(arity)), "default": default,
        "default_doc": f"def {name}({args}): pass", "desc": doc,
    })
    globals()[cls.__name__] = cls


_hook("on_starting", 1, EVERY, """Called as the master (or a lone front) starts.

    Before anything is forked or bound: ``on_starting(server)``.
    """, "server")
_hook("on_reload", 1, HANDLER, """Called when the master reloads on ``HUP``.

    ``on_reload(server)``, before the new workers are forked.
    """, "server")
_hook("when_ready", 1, EVERY, """Called once the master has forked its first workers.

    ``when_ready(server)``; for a lone front, once its sockets are bound.
    """, "server")
_hook("pre_fork", 2, HANDLER, """Called in the master just before a worker is forked.

    ``pre_fork(server, worker)``.
    """, "server, worker")
_hook("post_fork", 2, HANDLER, """Called in a worker just after it was forked.

    ``post_fork(server, worker)``, before the app is imported (unless ``preload_app``).
    """, "server, worker")
_hook("post_worker_init", 1, HANDLER, """Called in a worker once its app and sockets are ready.

    ``post_worker_init(worker)``.
    """, "worker")
_hook("worker_int", 1, HANDLER, """Called in a worker when it gets ``INT`` or ``QUIT``.

    ``worker_int(worker)``.
    """, "worker")
_hook("worker_abort", 1, HANDLER, """Called in a worker when it gets ``SIGABRT``.

    ``worker_abort(worker)``; the master sends it to a worker past ``timeout``.
    """, "worker")
_hook("pre_exec", 1, frozenset({"handler"}), """Called just before ``USR2`` re-executes the pool.

    ``pre_exec(server)``, in the forked process that becomes the new master.
    """, "server")
_hook("pre_request", 2, HANDLER, """Called in a worker before it runs a request.

    ``pre_request(worker, req)``; ``req`` has ``method``, ``uri``, ``path``, ``query``,
    ``version`` and ``headers`` (a list of (NAME, value)), as gunicorn's.
    """, "worker, req")
_hook("post_request", 4, HANDLER, """Called in a worker after a request.

    ``post_request(worker, req, environ, resp)``; ``resp`` has ``status`` (``"200 OK"``),
    ``status_code``, ``headers`` and ``sent`` (body bytes).
    """, "worker, req, environ, resp")
_hook("child_exit", 2, HANDLER, """Called in the master when a worker has exited.

    ``child_exit(server, worker)``.
    """, "server, worker")
_hook("worker_exit", 2, HANDLER, """Called in a worker as it exits.

    ``worker_exit(server, worker)``.
    """, "server, worker")
_hook("nworkers_changed", 3, HANDLER, """Called when the number of workers changed.

    ``nworkers_changed(server, new_value, old_value)``, after ``TTIN``, ``TTOU``, a reload
    with another ``workers`` or the autoscaler.
    """, "server, new_value, old_value")
_hook("on_exit", 1, EVERY, """Called just before the master (or a lone front) exits.

    ``on_exit(server)``.
    """, "server")

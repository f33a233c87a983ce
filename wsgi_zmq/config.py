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

import re
import socket
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

from wsgi_zmq.errors import ConfigError

#: The entry points. "all" is ``python -m wsgi_zmq`` (front and handler pool together).
ROLES: Final = ("all", "front", "handler")

FRONT: Final = frozenset({"all", "front"})
HANDLER: Final = frozenset({"all", "handler"})
EVERY: Final = frozenset(ROLES)

DEFAULT_BIND: Final = "127.0.0.1:8000"
DEFAULT_BACKEND: Final = "tcp://127.0.0.1:5556"

#: Sections in the order ``--help`` and the docs show them.
SECTIONS: Final = ("Config File", "Server Socket", "Backend", "Worker Processes", "Limits",
                   "Flow Control", "Logging")

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


def validate_nonneg_int(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError("expected an integer of at least 0")
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


def parse_bind(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6; a bare ``PORT`` means 127.0.0.1) into a
    host and a port. Raises ValueError."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]*):(\d+)|(\d+)", address.strip())
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


def validate_app_uri(value: Any) -> str | None:
    if value is None:
        return None
    text = validate_string(value)
    if not re.fullmatch(r"[\w.]+(:[\w.]+(\(.*\))?)?", text):
        raise ValueError(f"{text!r} is not MODULE:CALLABLE")
    return text


# -- the registry -------------------------------------------------------------------------

class Setting:
    """One setting. Subclasses set the class attributes and are registered by name."""

    name: ClassVar[str]
    section: ClassVar[str]
    roles: ClassVar[frozenset[str]]
    cli: ClassVar[tuple[str, ...]] = ()
    meta: ClassVar[str | None] = None
    #: "store" (takes a value), "append" (repeatable; a later source replaces the list),
    #: "flag" (no value: sets True)
    action: ClassVar[str] = "store"
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

    def __init__(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.role = role
        self.values = {s.name: s.validate(s.default) if s.default is not None else None
                       for s in settings_for(role)}

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

    def accepts(self, name: str) -> bool:
        return name in self.values

    def printable(self) -> list[tuple[str, Any]]:
        """(name, value) of every setting of this role, sorted by name, for --print-config."""
        return sorted(self.values.items())


def bind_addresses(cfg: Config) -> list[tuple[str, int]]:
    """The front's ``bind`` setting as (host, port) pairs."""
    return [parse_bind(address) for address in cfg.bind]


def host_name() -> str:
    return socket.gethostname()


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
    address really bound.
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
    default = 1
    desc = """The number of handler worker processes.

    As in gunicorn, 1 by default; (2 x cores) + 1 is the usual start for a CPU-bound app.
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


class RequestTimeout(Setting):
    name = "request_timeout"
    section = "Backend"
    roles = FRONT
    cli = ("--request-timeout",)
    meta = "SECONDS"
    validator = staticmethod(validate_pos_number)
    default = 30.0
    desc = """How long a request may wait without progress for its response to start.

    Counted from the moment it is accepted, queue wait included, and restarted by every
    chunk of request body that moves. Past it the client gets 504 and the worker is told to
    stop (the app iterator is closed). A response that has started is not limited.
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
    desc = """How long an idle keep-alive connection, or one sending its request head, is kept.
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

    RFC 9112 section 3 recommends accepting at least 8000 octets.
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
    validator = staticmethod(validate_pos_int)
    default = 8
    desc = """How many body chunks may travel to a receiver before it acknowledges one.

    The receiver sets it: the front for response chunks, a worker for request-body chunks.
    With ``chunk_size`` it bounds the memory one streamed body costs each side.
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

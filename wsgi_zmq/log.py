"""The error log and the access log of every process: names, formats, reopening files.

Loggers: ``wsgi_zmq.error`` with one child per part (``.front``, ``.dispatcher``,
``.arbiter``, ``.worker``, ``.config``), and ``wsgi_zmq.access``. An error line reads like
gunicorn's::

    [2026-11-23 23:11:57 +0000] [4242] [INFO] Listening at: http://127.0.0.1:8000

The access log is off unless ``accesslog`` is set (``-`` is stdout, as in gunicorn); its
lines follow ``access_log_format`` in gunicorn's atoms (``AccessLog``). Only the atoms a
format uses are computed. Unless ``access_log_secrets`` is on, the atoms of credential
headers (``{authorization}i``, ``{proxy-authorization}i``, ``{cookie}i``, ``{set-cookie}o``,
and the ``{HTTP_...}e`` atoms of the same request headers) print ``***`` when the header is
there; ``u``, the HTTP Basic user name, still works.

``setup(cfg)`` is called once per process (again in a forked child is harmless); it applies
``logconfig_dict`` last. ``reopen()`` reopens the log files after rotation: the ``USR1``
handlers set a flag and the main loops call it, never the signal handler itself.
"""

from __future__ import annotations

import base64
import json
import logging
import logging.config
import os
import re
import sys
import time
from typing import Any

ERROR_LOGGER = "wsgi_zmq.error"
ACCESS_LOGGER = "wsgi_zmq.access"

LINE_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

_ATOM = re.compile(r"%\(([^)]+)\)")

#: what a credential header's atom prints unless ``access_log_secrets`` is on
MASK = "***"
#: the environ keys of the request headers that carry credentials
SECRET_REQUEST_KEYS = frozenset({"HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION",
                                 "HTTP_COOKIE"})
#: the response headers that carry credentials (lower case)
SECRET_RESPONSE_HEADERS = frozenset({"set-cookie"})


def get_logger(part: str) -> logging.Logger:
    """The error logger of one part: ``wsgi_zmq.error.<part>``."""
    return logging.getLogger(f"{ERROR_LOGGER}.{part}")


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate moved it."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def _handler(target: str, stream: Any) -> logging.Handler:
    if target == "-":
        return logging.StreamHandler(stream)
    return ReopenableFileHandler(target, delay=False)


def setup(cfg: Any) -> None:
    """Configure both loggers from ``cfg``: targets, level, format, ``logconfig_dict``."""
    error = logging.getLogger(ERROR_LOGGER)
    access = logging.getLogger(ACCESS_LOGGER)
    for logger in (error, access):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.propagate = False
    as_json = getattr(cfg, "log_format", "text") == "json"
    handler = _handler(cfg.errorlog, sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else
                         logging.Formatter(LINE_FORMAT, DATE_FORMAT))
    error.addHandler(handler)
    error.setLevel(cfg.loglevel.upper())
    if cfg.accesslog:
        handler = _handler(cfg.accesslog, sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.CRITICAL + 1)
    if cfg.capture_output:
        _capture(cfg.errorlog)
    if cfg.logconfig_dict:
        config = dict(cfg.logconfig_dict)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)


def _capture(errorlog: str) -> None:
    """Point stdout and stderr (the file descriptors, so C code too) at the error log."""
    if errorlog == "-":
        return
    fd = os.open(errorlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def reopen(cfg: Any = None) -> None:
    """Reopen every log file (and the captured stdout/stderr) after rotation."""
    for name in (ERROR_LOGGER, ACCESS_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, ReopenableFileHandler):
                handler.reopen()
    if cfg is not None and cfg.capture_output:
        _capture(cfg.errorlog)


def _iso_time(seconds: float) -> str:
    """``2026-11-23T23:11:57.123Z``"""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per error log record (``log_format = "json"``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _iso_time(record.created), "level": record.levelname,
                 "pid": record.process, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class LogLimiter:
    """Log one kind of message at most ``burst`` times per ``period`` seconds.

    For what a peer can cause as often as it likes (malformed frames on the backend): the
    first ``burst`` lines of a period are written, the rest only counted, and ``flush()``
    (called from a timer, or by the next line after the period) writes one line with how
    many were left out. ``total`` counts every occurrence, written or not.
    """

    __slots__ = ("logger", "what", "burst", "period", "clock", "total", "_window", "_written",
                 "_suppressed")

    def __init__(self, logger: logging.Logger, what: str, burst: int = 5,
                 period: float = 60.0, clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.what = what  # names the lines left out, in the summary
        self.burst = burst
        self.period = period
        self.clock = clock
        self.total = 0
        self._window = clock()
        self._written = 0
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        """Count one occurrence; write it unless this period's burst is used up."""
        self._log(logging.WARNING, message, args)

    def info(self, message: str, *args: Any) -> None:
        """The same, at level INFO."""
        self._log(logging.INFO, message, args)

    def _log(self, level: int, message: str, args: tuple[Any, ...]) -> None:
        self.total += 1
        self.flush()
        if self._written < self.burst:
            self._written += 1
            self.logger.log(level, message, *args)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """If the period is over: write how many lines it left out, and start a new one."""
        now = self.clock()
        if now - self._window < self.period:
            return
        if self._suppressed:
            self.logger.warning("Left out %d more lines of %s in the last %.0f s (%d in all)",
                                self._suppressed, self.what, now - self._window, self.total)
        self._window = now
        self._written = 0
        self._suppressed = 0


# -- the access log ------------------------------------------------------------------------

class Atoms(dict[str, Any]):
    """The values of gunicorn's access log atoms for one request, computed on demand.

    ``environ`` gives the request side; ``status`` (``"200 OK"``), ``headers`` (the
    response headers), ``sent`` (body bytes) and the timings the response side. Unless
    ``secrets`` is true, a credential header present prints ``MASK``.
    """

    def __init__(self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]],
                 sent: int | None, started: float, duration: float, worker: str,
                 queue_ms: float, secrets: bool = False, pool: str = "-",
                 version: str = "-") -> None:
        super().__init__()
        self.secrets = secrets
        self.environ = environ
        self.status = status
        self.headers = headers
        self.sent = sent
        self.started = started
        self.duration = duration
        self.worker = worker
        self.queue_ms = queue_ms
        self.pool = pool
        self.version = version

    def __missing__(self, key: str) -> Any:
        env = self.environ
        value: Any
        if key == "h":
            value = env.get("REMOTE_ADDR") or "-"
        elif key == "l":
            value = "-"
        elif key == "u":
            value = _basic_user(env.get("HTTP_AUTHORIZATION", "")) or "-"
        elif key == "t":
            value = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(self.started))
        elif key == "r":
            value = (f"{env.get('REQUEST_METHOD', '-')} {env.get('RAW_URI', '-')} "
                     f"{env.get('SERVER_PROTOCOL', '-')}")
        elif key == "m":
            value = env.get("REQUEST_METHOD", "-")
        elif key == "U":
            value = env.get("PATH_INFO", "-")
        elif key == "q":
            value = env.get("QUERY_STRING", "-")
        elif key == "H":
            value = env.get("SERVER_PROTOCOL", "-")
        elif key == "s":
            value = self.status.split(" ", 1)[0] if self.status else "-"
        elif key == "B":
            value = self.sent if self.sent is not None else "-"
        elif key == "b":
            value = str(self.sent) if self.sent else "-"
        elif key == "f":
            value = env.get("HTTP_REFERER", "-")
        elif key == "a":
            value = env.get("HTTP_USER_AGENT", "-")
        elif key == "T":
            value = int(self.duration)
        elif key == "M":
            value = int(self.duration * 1e3)
        elif key == "D":
            value = int(self.duration * 1e6)
        elif key == "L":
            value = f"{self.duration:.6f}"
        elif key == "p":
            value = f"<{os.getpid()}>"
        elif key == "worker":
            value = self.worker
        elif key == "queue_ms":
            value = f"{self.queue_ms:.3f}"
        elif key == "pool":
            value = self.pool
        elif key == "version":
            value = self.version
        elif key.startswith("{") and key.endswith("}i"):
            name = key[1:-2].upper().replace("-", "_")
            if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = "HTTP_" + name
            value = env.get(name, "-")
            if name in SECRET_REQUEST_KEYS and value != "-" and not self.secrets:
                value = MASK
        elif key.startswith("{") and key.endswith("}o"):
            wanted = key[1:-2].lower()
            value = next((v for n, v in self.headers if n.lower() == wanted), "-")
            if wanted in SECRET_RESPONSE_HEADERS and value != "-" and not self.secrets:
                value = MASK
        elif key.startswith("{") and key.endswith("}e"):
            name = key[1:-2]
            value = env.get(name, env.get(name.upper(), "-"))
            if name.upper() in SECRET_REQUEST_KEYS and value != "-" and not self.secrets:
                value = MASK
        else:
            value = "-"
        self[key] = value
        return value


def _basic_user(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip()).decode("utf-8", "replace")
    except ValueError:
        return None
    return decoded.split(":", 1)[0] or None


class AccessLog:
    """Writes access lines for one process, when ``accesslog`` is set."""

    def __init__(self, cfg: Any, worker: str) -> None:
        self.enabled = bool(cfg.accesslog)
        self.format: str = cfg.access_log_format
        self.worker = worker
        self.secrets = bool(getattr(cfg, "access_log_secrets", False))
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.keys = _ATOM.findall(self.format)
        self.json = getattr(cfg, "log_format", "text") == "json"
        # the handler pool's name and version (a front has neither)
        self.pool: str = getattr(cfg, "pool", None) or "-"
        self.version: str = getattr(cfg, "pool_version", None) or "-"

    def write(self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]],
              sent: int | None, started: float, duration: float, queue_ms: float = 0.0,
              request_line: str | None = None) -> None:
        """Format and write one line; a broken format is reported in the error log.
        ``request_line`` replaces the ``r`` atom (a job's is ``JOB service``)."""
        atoms = Atoms(environ, status, headers, sent, started, duration, self.worker,
                      queue_ms, self.secrets, self.pool, self.version)
        if request_line is not None:
            atoms["r"] = request_line
        if self.json:
            self.logger.info("%s", json.dumps(self.entry(atoms, started), ensure_ascii=False))
            return
        try:
            line = self.format % atoms
        except (TypeError, ValueError, KeyError) as exc:
            get_logger("access").error("Bad access_log_format %r: %s", self.format, exc)
            return
        self.logger.info("%s", line)

    @staticmethod
    def entry(atoms: Atoms, started: float) -> dict[str, Any]:
        """The access log's JSON object for one request (see the ``log_format`` setting)."""
        code = atoms["s"]
        sent = atoms["B"]
        return {"time": _iso_time(started), "remote_addr": atoms["h"],
                "user": None if atoms["u"] == "-" else atoms["u"],
                "method": atoms["m"], "uri": atoms.environ.get("RAW_URI", "-"),
                "protocol": atoms["H"], "status": int(code) if code.isdigit() else None,
                "bytes": sent if isinstance(sent, int) else 0, "referer": atoms["f"],
                "user_agent": atoms["a"], "duration_s": round(atoms.duration, 6),
                "queue_ms": round(atoms.queue_ms, 3), "worker": atoms.worker,
                "pool": atoms.pool, "version": atoms.version, "pid": os.getpid()}

"""The command lines of every entry point, built from the settings registry.

``python -m wsgi_zmq APP`` (``main_all``), ``python -m wsgi_zmq.front`` (``main_front``) and
``python -m wsgi_zmq.handler APP`` (``main_handler``) each offer exactly the settings whose
``roles`` name them, grouped by section. A handler pool (alone or all-in-one) hosts either
a WSGI app (``APP``) or a job function (``--job MODULE:FUNC``, no ``APP``).

Values are applied in this order, each overriding the one before: the defaults, the config
file (``-c FILE``), the environment variable ``WSGI_ZMQ_CMD_ARGS`` (parsed like a command
line), the command line.

Exit codes (``wsgi_zmq.errors``): 0 stopped on request, 1 failed at run time, 2 bad
configuration (one line on stderr names the problem), 3 a worker failed to boot.

This module imports neither gevent nor zmq: the front and the workers import what they need
after the fork.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import shlex
import sys
import types
from collections.abc import Iterator
from typing import Any, NoReturn

from wsgi_zmq import __version__
from wsgi_zmq import log as wlog
from wsgi_zmq.config import REGISTRY, SECTIONS, Config, settings_for
from wsgi_zmq.errors import EXIT_CONFIG, EXIT_OK, ConfigError

ENV_ARGS = "WSGI_ZMQ_CMD_ARGS"

PROGRAMS = {
    "all": ("python -m wsgi_zmq", "Run an HTTP front and a handler pool for APP together."),
    "front": ("python -m wsgi_zmq.front", "Run the HTTP front and broker alone."),
    "handler": ("python -m wsgi_zmq.handler",
                "Run a pool of handler workers for APP, or for a job function (--job)."),
}


class UsageParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit ``status``: every
    command line tool of wsgi_zmq subclasses it with its own status and line."""

    status = EXIT_CONFIG

    def line(self, message: str) -> str:
        return f"Error: {message}"

    def error(self, message: str) -> NoReturn:
        self.exit(self.status, self.line(message) + "\n")


class _Parser(UsageParser):
    pass


@contextlib.contextmanager
def tool_exits(broken_pipe_status: int) -> Iterator[None]:
    """How every command line tool ends when its output goes away: stdout closed early
    (``| head``) exits ``broken_pipe_status`` with nothing more said, Ctrl-C exits 130."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(broken_pipe_status)
    except KeyboardInterrupt:
        sys.exit(130)


def build_parser(role: str) -> argparse.ArgumentParser:
    """The argparse parser of one entry point; every default is SUPPRESS so that only what
    was given is applied over the config file."""
    prog, description = PROGRAMS[role]
    if not sys.argv[0].endswith("__main__.py"):
        prog = os.path.basename(sys.argv[0])  # bin/wsgi-zmq and the console scripts
    parser = _Parser(prog=prog, description=description,
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"wsgi_zmq {__version__}")
    if role in ("all", "handler"):
        parser.add_argument("app", nargs="?", metavar="APP",
                            help="the WSGI application, MODULE:CALLABLE")
    groups = {section: parser.add_argument_group(section) for section in SECTIONS}
    for setting in settings_for(role):
        if not setting.cli:
            continue
        group = groups[setting.section]
        kwargs: dict[str, Any] = {"dest": setting.name, "help": setting.short_help()}
        if setting.action == "flag":
            kwargs["action"] = "store_true"
        elif setting.action == "optional":
            kwargs["metavar"] = setting.meta or "VALUE"
            kwargs["nargs"] = "?"
            kwargs["const"] = setting.const
        else:
            kwargs["metavar"] = setting.meta or "VALUE"
            if setting.action == "append":
                kwargs["action"] = "append"
        group.add_argument(*setting.cli, **kwargs)
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """Execute a Python config file and return its settings (public, non-module names)."""
    if not os.path.exists(path):
        raise ConfigError(f"Config file {path!r} not found")
    try:
        namespace = runpy.run_path(path)
    except Exception as exc:
        raise ConfigError(f"Config file {path!r} failed to load: {exc!r}") from exc
    return {name: value for name, value in namespace.items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def apply_file(cfg: Config, values: dict[str, Any], path: str) -> None:
    for name, value in values.items():
        if cfg.accepts(name):
            cfg.set(name, value)
        elif name not in REGISTRY:  # helpers in a config file start with "_"
            # logging is not set up yet (the file may configure it): one line on stderr
            print(f"Warning: unknown setting {name!r} in {path}: ignored", file=sys.stderr)


def apply_args(cfg: Config, namespace: argparse.Namespace) -> None:
    for name, value in vars(namespace).items():
        if name == "app":
            if value is not None:
                cfg.set("wsgi_app", value)
        else:
            cfg.set(name, value)


def load_config(role: str, argv: list[str] | None = None) -> Config:
    """Parse the command line, the environment and the config file into a ``Config``."""
    parser = build_parser(role)
    args = parser.parse_args(argv)
    env_args = argparse.Namespace()
    if os.environ.get(ENV_ARGS):
        env_args = parser.parse_args(shlex.split(os.environ[ENV_ARGS]))
    cfg = Config(role)
    path = getattr(args, "config", None) or getattr(env_args, "config", None)
    if path:
        apply_file(cfg, read_config_file(path), path)
    apply_args(cfg, env_args)
    apply_args(cfg, args)
    cfg.check()
    return cfg


def print_config(cfg: Config) -> None:
    for name, value in cfg.printable():
        print(f"{name:<28} = {value!r}")


def _fail(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def setup_process(cfg: Config) -> None:
    """Apply the settings that shape the process itself, before anything is loaded:
    ``raw_env``, ``umask``, ``chdir``, ``pythonpath``. Children inherit all of them."""
    for pair in cfg.raw_env:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    if cfg.umask is not None:
        os.umask(cfg.umask)
    os.chdir(cfg.chdir)
    if cfg.accepts("pythonpath"):
        for path in reversed(cfg.pythonpath):
            if path not in sys.path:
                sys.path.insert(0, path)


def _prepare(role: str, argv: list[str] | None) -> Config:
    try:
        cfg = load_config(role, argv)
    except ConfigError as exc:
        _fail(str(exc))
    if cfg.print_config:
        print_config(cfg)
        sys.exit(EXIT_OK)
    try:
        wlog.setup(cfg)
    except (OSError, ValueError, TypeError) as exc:
        _fail(f"Cannot set up logging: {exc}")
    setup_process(cfg)
    return cfg


def _check_app(cfg: Config) -> str:
    """The URI of the app, or of the job function (``job``), imported once here when
    ``--check-config`` asks for it (a job function's signature is checked too)."""
    uri = cfg.job or cfg.wsgi_app
    if not uri:
        _fail("No application given: pass MODULE:CALLABLE (or --job MODULE:FUNC), or set "
              "wsgi_app (or job) in the config file")
    if cfg.check_config:
        from wsgi_zmq.handler.worker import layer_class
        try:
            layer_class(cfg).load(uri)
        except ConfigError as exc:
            wlog.get_logger("config").debug("Traceback", exc_info=exc.__cause__)
            _fail(str(exc))
        sys.exit(EXIT_OK)
    return str(uri)


def _check_keys(cfg: Config) -> None:
    """Read the CURVE key files once before anything starts: a bad one is one line and
    exit 2 here, not a worker that fails to boot."""
    if cfg.curve_secret_key is None:
        return
    from wsgi_zmq.handler.worker import curve_keys

    try:
        curve_keys(cfg)
    except (OSError, ValueError) as exc:
        _fail(f"Cannot read the CURVE keys: {exc}")
    except ConfigError as exc:
        _fail(str(exc))


def main_front(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq.front``"""
    cfg = _prepare("front", argv)
    _check_keys(cfg)
    if cfg.check_config:
        sys.exit(EXIT_OK)
    from wsgi_zmq.front.server import serve
    sys.exit(serve(cfg))


def main_handler(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq.handler APP`` or ``python -m wsgi_zmq.handler --job MODULE:FUNC``"""
    cfg = _prepare("handler", argv)
    _check_keys(cfg)
    uri = _check_app(cfg)
    from wsgi_zmq.arbiter import Arbiter
    try:
        status = Arbiter(cfg, uri, endpoints=cfg.connect,
                         reload_config=lambda: load_config("handler", argv)).run()
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(status)


def main_all(argv: list[str] | None = None) -> NoReturn:
    """``python -m wsgi_zmq APP`` or ``python -m wsgi_zmq --job MODULE:FUNC``"""
    cfg = _prepare("all", argv)
    _check_keys(cfg)
    uri = _check_app(cfg)
    from wsgi_zmq.arbiter import Arbiter
    try:
        status = Arbiter(cfg, uri, front=True,
                         reload_config=lambda: load_config("all", argv)).run()
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(status)

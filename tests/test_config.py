"""Settings (``wsgi_zmq.config``) and command lines (``wsgi_zmq.cli``).

Registry invariants, every validator (a bad value raises ``ConfigError`` naming the
setting), ``Config`` per role, the load order end to end (defaults < config file <
``WSGI_ZMQ_CMD_ARGS`` < command line), and the real entry points run as subprocesses for
their exit codes: 2 with one line on stderr for bad configuration, 0 for ``--version``,
``--print-config`` and a ``--check-config`` that finds the app.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from wsgi_zmq import __version__, cli
from wsgi_zmq.config import (
    DEFAULT_BIND,
    REGISTRY,
    ROLES,
    SECTIONS,
    Config,
    Setting,
    parse_bind,
    settings_for,
)
from wsgi_zmq.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
ENTRY_POINTS = {"all": "wsgi_zmq", "front": "wsgi_zmq.front", "handler": "wsgi_zmq.handler"}

#: Long flags that are not ``--`` + name with ``_`` as ``-``, because gunicorn spells them
#: that way and its users type them from memory. ``limit_request_field_size`` also has the
#: regular ``--limit-request-field-size``; gunicorn's mixed spelling is kept beside it.
GUNICORN_SPELLING = {
    "keepalive": "--keep-alive",
    "loglevel": "--log-level",
    "errorlog": "--error-logfile",
    "limit_request_field_size": "--limit-request-field_size",
    "accesslog": "--access-logfile",
    "access_log_format": "--access-logformat",
    "proc_name": "--name",
    "pidfile": "--pid",
    "raw_env": "--env",
    "preload_app": "--preload",
    "proxy_allow_ips": "--proxy-allow-from",
}
#: gunicorn's one-letter flags, the only flags that do not start with ``--``.
SHORT_FLAGS = {"config": "-c", "bind": "-b", "workers": "-w", "timeout": "-t",
               "proc_name": "-n", "pidfile": "-p", "raw_env": "-e", "user": "-u",
               "group": "-g", "umask": "-m", "worker_class": "-k"}
#: Settings with no flag: ``wsgi_app`` is the positional APP (as in gunicorn); the others are
#: dicts and functions, which only a config file can give (as in gunicorn).
NO_FLAG = {"wsgi_app", "logconfig_dict", "secure_scheme_headers", "on_starting", "on_reload",
           "when_ready", "pre_fork", "post_fork", "post_worker_init", "worker_int",
           "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
           "worker_exit", "nworkers_changed", "on_exit"}


# -- the registry ------------------------------------------------------------------------------

def test_exception_tables_name_real_settings() -> None:
    for table in (GUNICORN_SPELLING, SHORT_FLAGS, NO_FLAG):
        assert set(table) <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_setting_is_fully_declared(name: str) -> None:
    setting = REGISTRY[name]
    assert setting.name == name
    assert setting.desc.strip(), "desc is empty"
    assert setting.short_help() == setting.desc.strip().splitlines()[0].strip()
    assert setting.section in SECTIONS
    assert setting.roles, "no role accepts it"
    assert set(setting.roles) <= set(ROLES)
    assert re.fullmatch(r"\d+\.\d+\.\d+", setting.since)
    assert setting.action in ("store", "append", "flag", "optional")
    assert callable(setting.validator)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_default_passes_its_validator(name: str) -> None:
    setting = REGISTRY[name]
    assert setting.validate(setting.default) == setting.default
    if setting.action == "flag":
        assert setting.default is False
    if setting.action == "append":
        assert isinstance(setting.default, list)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cli_flags_follow_the_naming_rule(name: str) -> None:
    setting = REGISTRY[name]
    if name in NO_FLAG:
        assert setting.cli == ()
        return
    assert setting.cli, "a setting without a flag must be listed in NO_FLAG"
    for flag in setting.cli:
        if flag == SHORT_FLAGS.get(name):
            assert re.fullmatch(r"-[a-z]", flag)
        else:
            assert flag.startswith("--"), flag
    assert (GUNICORN_SPELLING.get(name) or "--" + name.replace("_", "-")) in setting.cli


def test_names_and_flags_are_unique() -> None:
    names = [s.name for s in REGISTRY.values()]
    assert len(names) == len(set(names))
    flags = [flag for s in REGISTRY.values() for flag in s.cli]
    assert len(flags) == len(set(flags))
    assert not {"-h", "--help", "--version"} & set(flags)


def test_declaring_a_name_twice_is_refused() -> None:
    before = dict(REGISTRY)
    with pytest.raises(TypeError, match="declared twice"):
        class Workers2(Setting):  # noqa: F841 - the class statement is the test
            name = "workers"
            section = "Worker Processes"
            roles = frozenset({"handler"})
            desc = "again"
    assert REGISTRY == before


def test_unknown_section_is_refused() -> None:
    before = dict(REGISTRY)
    with pytest.raises(TypeError, match="unknown section"):
        class Nowhere(Setting):  # noqa: F841 - the class statement is the test
            name = "nowhere_at_all"
            section = "No Such Section"
            roles = frozenset({"front"})
            desc = "x"
    assert REGISTRY == before


def test_gunicorn_flags_are_offered() -> None:
    """Every setting that shares its name with a gunicorn setting accepts gunicorn's flags."""
    gunicorn_config = pytest.importorskip("gunicorn.config")
    known = {s.name: s for s in gunicorn_config.KNOWN_SETTINGS}
    shared = [name for name in REGISTRY if name in known]
    assert len(shared) >= 10
    for name in shared:
        assert set(known[name].cli or ()) <= set(REGISTRY[name].cli), name


def test_settings_for_is_in_section_order() -> None:
    for role in ROLES:
        chosen = settings_for(role)
        assert chosen == [s for s in chosen if role in s.roles]
        order = [SECTIONS.index(s.section) for s in chosen]
        assert order == sorted(order)
        assert {s.name for s in chosen} == {s.name for s in REGISTRY.values()
                                            if role in s.roles}


@pytest.mark.parametrize("role", ROLES)
def test_each_parser_offers_exactly_its_roles_flags(role: str) -> None:
    text = cli.build_parser(role).format_help()
    offered = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text))
    for setting in REGISTRY.values():
        for flag in setting.cli:
            assert (flag in offered) == (role in setting.roles), (role, flag)


# -- validators --------------------------------------------------------------------------------

GOOD: list[tuple[str, Any, Any]] = [
    # bools
    ("check_config", True, True), ("check_config", False, False),
    ("check_config", "yes", True), ("check_config", "On", True), ("check_config", "1", True),
    ("check_config", "TRUE", True), ("check_config", "no", False),
    ("check_config", "off", False), ("check_config", "0", False),
    ("check_config", "False", False),
    # positive ints
    ("workers", 1, 1), ("workers", "4", 4), ("workers", " 7 ", 7), ("workers", "+2", 2),
    ("workers", 2**40, 2**40), ("backlog", "2048", 2048),
    # non-negative ints
    ("limit_request_body", 0, 0), ("limit_request_body", "0", 0), ("queue_size", 5, 5),
    # positive numbers
    ("heartbeat", 1, 1.0), ("heartbeat", 0.25, 0.25), ("request_timeout", "2", 2.0),
    ("graceful_timeout", "0.5", 0.5), ("keepalive", "1e-3", 0.001),
    # bind addresses
    ("bind", "127.0.0.1:8000", ["127.0.0.1:8000"]), ("bind", "[::1]:80", ["[::1]:80"]),
    ("bind", "8000", ["8000"]), ("bind", "localhost:0", ["localhost:0"]),
    ("bind", ":80", [":80"]), ("bind", "0.0.0.0:65535", ["0.0.0.0:65535"]),
    ("bind", ["a:1", "[2001:db8::1]:2"], ["a:1", "[2001:db8::1]:2"]),
    ("bind", ("a:1",), ["a:1"]),
    # endpoints
    ("backend", "tcp://127.0.0.1:5556", ["tcp://127.0.0.1:5556"]),
    ("backend", "tcp://127.0.0.1:*", ["tcp://127.0.0.1:*"]),
    ("backend", "tcp://*:5556", ["tcp://*:5556"]),
    ("backend", "tcp://[::1]:5556", ["tcp://[::1]:5556"]),
    ("backend", "ipc:///tmp/wsgi_zmq.sock", ["ipc:///tmp/wsgi_zmq.sock"]),
    ("backend", "ipc://relative.sock", ["ipc://relative.sock"]),
    ("backend", ["tcp://a:1", "ipc://b"], ["tcp://a:1", "ipc://b"]),
    ("connect", "tcp://front.example:5556", ["tcp://front.example:5556"]),
    # choices and strings
    ("loglevel", "DEBUG", "debug"), ("loglevel", "warning", "warning"),
    ("errorlog", "-", "-"), ("errorlog", "/var/log/x.log", "/var/log/x.log"),
    ("config", None, None), ("config", "conf.py", "conf.py"),
    # app URIs
    ("wsgi_app", "mod:app", "mod:app"), ("wsgi_app", "pkg.mod:create_app()",
                                         "pkg.mod:create_app()"),
    ("wsgi_app", 'pkg.mod:make("prod", debug=False)', 'pkg.mod:make("prod", debug=False)'),
    ("wsgi_app", "mod", "mod"), ("wsgi_app", None, None),
]

BAD: list[tuple[str, Any]] = [
    # bools
    ("check_config", "maybe"), ("check_config", ""), ("check_config", 1),
    ("print_config", None), ("print_config", "2"),
    # ints
    ("workers", 0), ("workers", "0"), ("workers", -1), ("workers", "x"), ("workers", "1.5"),
    ("workers", 1.5), ("workers", True), ("workers", None), ("workers", ""),
    ("workers", "1 2"), ("backlog", "0x10"),
    ("queue_size", -1), ("limit_request_body", "-1"), ("limit_request_line", 0),
    # positive numbers
    ("heartbeat", 0), ("heartbeat", "0"), ("heartbeat", -1), ("heartbeat", "x"),
    ("heartbeat", True), ("heartbeat", None), ("heartbeat", "nan"), ("heartbeat", ""),
    ("request_timeout", "-0.5"),
    # bind addresses
    ("bind", "host:65536"), ("bind", "99999"), ("bind", "host"), ("bind", "[::1]"),
    ("bind", "::1:80"), ("bind", "host:port"), ("bind", ""), ("bind", []),
    ("bind", 80), ("bind", ["a:1", 2]), ("bind", "a:1 b:2"),
    # endpoints
    ("backend", "tcp://host"), ("backend", "tcp://host:70000"), ("backend", "udp://h:1"),
    ("backend", "h:1"), ("backend", "tcp://:1"), ("backend", "ipc://"), ("backend", ""),
    ("backend", "tcp://h:1/x"), ("backend", "tcp://h:port"), ("backend", []),
    ("backend", 5556),
    ("connect", "tcp://127.0.0.1:*"), ("connect", "tcp://h"),
    # choices and strings
    ("loglevel", "verbose"), ("loglevel", 10), ("errorlog", 5), ("errorlog", None),
    ("config", 3),
    # app URIs
    ("wsgi_app", "mod:"), ("wsgi_app", "not an app"), ("wsgi_app", "mod:app-x"),
    ("wsgi_app", 3),
]


@pytest.mark.parametrize("name, value, expected", GOOD)
def test_validator_accepts(name: str, value: Any, expected: Any) -> None:
    result = REGISTRY[name].validate(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("name, value", BAD)
def test_validator_refuses_naming_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\b{name}\b") as info:
        REGISTRY[name].validate(value)
    assert "\n" not in str(info.value)  # it becomes one line on stderr


@pytest.mark.parametrize("value", ["inf", float("inf"), "nan"], ids=["str", "float", "nan"])
def test_infinite_seconds_are_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        REGISTRY["heartbeat"].validate(value)


@pytest.mark.parametrize("address, host_port", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("[::1]:80", ("::1", 80)),
    ("[2001:db8::1]:0", ("2001:db8::1", 0)),
    ("8000", ("127.0.0.1", 8000)),
    (":80", ("0.0.0.0", 80)),
    ("example.org:443", ("example.org", 443)),
    (" localhost:1 ", ("localhost", 1)),
])
def test_parse_bind(address: str, host_port: tuple[str, int]) -> None:
    assert parse_bind(address) == host_port


# -- Config per role ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_config_holds_exactly_its_roles_settings(role: str) -> None:
    cfg = Config(role)
    for setting in REGISTRY.values():
        if role in setting.roles:
            assert cfg.accepts(setting.name)
            assert getattr(cfg, setting.name) == setting.default
        else:
            assert not cfg.accepts(setting.name)
            with pytest.raises(AttributeError, match=setting.name):
                getattr(cfg, setting.name)
            with pytest.raises(ConfigError, match=setting.name):
                cfg.set(setting.name, setting.default)


def test_config_set_validates() -> None:
    cfg = Config("handler")
    cfg.set("workers", "3")
    assert cfg.workers == 3
    with pytest.raises(ConfigError, match="workers"):
        cfg.set("workers", "three")
    assert cfg.workers == 3  # a refused value changes nothing
    with pytest.raises(ConfigError, match="no_such_setting"):
        cfg.set("no_such_setting", 1)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="client-ish"):
        Config("client-ish")


def test_list_defaults_are_not_shared() -> None:
    first = Config("front")
    first.bind.append("0.0.0.0:1")
    assert Config("front").bind == [DEFAULT_BIND]
    assert REGISTRY["bind"].default == [DEFAULT_BIND]


def test_printable_is_every_setting_sorted() -> None:
    cfg = Config("front")
    names = [name for name, _ in cfg.printable()]
    assert names == sorted(s.name for s in settings_for("front"))


# -- load order, end to end -------------------------------------------------------------------

@pytest.fixture
def no_env_args(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(cli.ENV_ARGS, raising=False)
    return monkeypatch


def write_config(tmp_path: Path, text: str, name: str = "conf.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


#: The value of ``workers`` each source gives in the precedence tests.
SOURCE_WORKERS = {"default": REGISTRY["workers"].default, "file": 102, "env": 103, "cli": 104}


@pytest.mark.parametrize("use_file, env, argv, winner", [
    (False, None, [], "default"),
    (True, None, [], "file"),
    (True, "--workers 103", [], "env"),
    (True, "--workers 103", ["--workers", "104"], "cli"),
    (True, None, ["-w", "104"], "cli"),
    (False, "--workers 103", [], "env"),
    (False, "--workers 103", ["--workers", "104"], "cli"),
], ids=["defaults", "file", "env over file", "cli over env", "cli over file", "env",
        "cli over env, no file"])
def test_precedence(tmp_path: Path, no_env_args: pytest.MonkeyPatch, use_file: bool,
                    env: str | None, argv: list[str], winner: str) -> None:
    """defaults < config file < WSGI_ZMQ_CMD_ARGS < command line."""
    path = write_config(tmp_path, "workers = 102\n")
    if env is not None:
        no_env_args.setenv(cli.ENV_ARGS, env)
    cfg = cli.load_config("handler", (["-c", path] if use_file else []) + argv)
    assert cfg.workers == SOURCE_WORKERS[winner]


def test_each_source_keeps_the_settings_it_alone_sets(tmp_path: Path,
                                                      no_env_args: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, """
        capacity = 3
        window = 5
        heartbeat = 0.5
    """)
    no_env_args.setenv(cli.ENV_ARGS, "--window 6 --chunk-size 1024")
    cfg = cli.load_config("handler", ["-c", path, "--heartbeat", "2", "mod:app"])
    assert (cfg.capacity, cfg.window, cfg.chunk_size, cfg.heartbeat) == (3, 6, 1024, 2.0)
    assert cfg.workers == REGISTRY["workers"].default
    assert cfg.wsgi_app == "mod:app"
    assert cfg.config == path


def test_config_file_named_in_the_environment(tmp_path: Path,
                                              no_env_args: pytest.MonkeyPatch) -> None:
    from_env = write_config(tmp_path, "workers = 5\ncapacity = 77\n", "env.py")
    from_cli = write_config(tmp_path, "workers = 6\n", "cli.py")
    no_env_args.setenv(cli.ENV_ARGS, f"-c {from_env}")
    assert cli.load_config("handler", []).workers == 5
    cfg = cli.load_config("handler", ["-c", from_cli])
    # the command line's file, not both
    assert (cfg.workers, cfg.capacity) == (6, REGISTRY["capacity"].default)


def test_a_repeated_option_replaces_the_files_list(tmp_path: Path,
                                                   no_env_args: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, 'bind = ["127.0.0.1:1", "127.0.0.1:2"]\n')
    assert cli.load_config("front", ["-c", path]).bind == ["127.0.0.1:1", "127.0.0.1:2"]
    cfg = cli.load_config("front", ["-c", path, "-b", "127.0.0.1:3", "--bind", "[::1]:4"])
    assert cfg.bind == ["127.0.0.1:3", "[::1]:4"]
    no_env_args.setenv(cli.ENV_ARGS, "--bind 127.0.0.1:5")
    assert cli.load_config("front", ["-c", path]).bind == ["127.0.0.1:5"]


def test_app_from_file_is_overridden_by_the_positional(tmp_path: Path,
                                                       no_env_args: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, 'wsgi_app = "fromfile:app"\n')
    assert cli.load_config("handler", ["-c", path]).wsgi_app == "fromfile:app"
    assert cli.load_config("handler", ["-c", path, "cli:app"]).wsgi_app == "cli:app"
    assert cli.load_config("all", ["-c", path, "cli:app"]).wsgi_app == "cli:app"


def test_flags_from_the_environment(no_env_args: pytest.MonkeyPatch) -> None:
    no_env_args.setenv(cli.ENV_ARGS, "--print-config --log-level DEBUG")
    cfg = cli.load_config("front", [])
    assert cfg.print_config is True
    assert cfg.loglevel == "debug"


def test_unknown_name_in_config_file_is_a_warning(tmp_path: Path, no_env_args: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, """
        import os
        workers = 2
        wrokers = 3
        _private = 4
    """)
    cfg = cli.load_config("handler", ["-c", path])
    assert cfg.workers == 2
    err = capsys.readouterr().err
    assert "'wrokers'" in err and path in err
    assert "_private" not in err and "'os'" not in err


def test_settings_of_another_role_in_a_shared_file_are_quiet(
        tmp_path: Path, no_env_args: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """One file may configure a front and its handlers: a front setting is not an unknown
    name for the handler, it is just not applied."""
    path = write_config(tmp_path, 'bind = ["127.0.0.1:9"]\nworkers = 2\n')
    assert cli.load_config("handler", ["-c", path]).workers == 2
    assert cli.load_config("front", ["-c", path]).bind == ["127.0.0.1:9"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("text, message", [
    ("workers = 'many'\n", "workers"),
    ("capacity = 0\n", "capacity"),
    ("raise RuntimeError('broken config')\n", "broken config"),
    ("workers = = 2\n", "failed to load"),
])
def test_bad_config_file(tmp_path: Path, no_env_args: Any, text: str, message: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        cli.load_config("handler", ["-c", path])


def test_missing_config_file(tmp_path: Path, no_env_args: Any) -> None:
    with pytest.raises(ConfigError, match="not found"):
        cli.load_config("handler", ["-c", str(tmp_path / "absent.py")])


def test_bad_value_from_the_environment(no_env_args: pytest.MonkeyPatch) -> None:
    no_env_args.setenv(cli.ENV_ARGS, "--capacity none")
    with pytest.raises(ConfigError, match="capacity"):
        cli.load_config("handler", [])


# -- the real entry points -------------------------------------------------------------------

def run(role: str, *args: str, cwd: Path | None = None, pythonpath: tuple[Path, ...] = (),
        env: dict[str, str] | None = None, timeout: float = 20.0
        ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <entry point of role> args`` to completion; kill its session if it is
    still running after ``timeout`` (a bad value that was not caught starts a server)."""
    environ = {k: v for k, v in os.environ.items() if k != cli.ENV_ARGS}
    environ["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ROOT, *pythonpath))
    environ.update(env or {})
    proc = subprocess.Popen([sys.executable, "-m", ENTRY_POINTS[role], *args], cwd=cwd or ROOT,
                            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{ENTRY_POINTS[role]} {' '.join(args)} still ran after {timeout}s:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_config_error(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode == EXIT_CONFIG == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert result.stdout == ""


# Fronts get free ports so a value that slipped through cannot collide with anything.
FREE = ("--bind", "127.0.0.1:0", "--backend", "tcp://127.0.0.1:*")


@pytest.mark.parametrize("role, args, name", [
    ("front", ("--backlog", "x", *FREE), "backlog"),
    ("front", ("--bind", "127.0.0.1:99999"), "bind"),
    ("front", ("--bind", "127.0.0.1:0", "--backend", "udp://127.0.0.1:1"), "backend"),
    ("front", ("--heartbeat", "0", *FREE), "heartbeat"),
    ("front", ("--request-timeout", "soon", *FREE), "request_timeout"),
    ("handler", ("--workers", "x", "apps.echo:router"), "workers"),
    ("handler", ("--connect", "tcp://127.0.0.1:*", "apps.echo:router"), "connect"),
    ("handler", ("--capacity", "0", "apps.echo:router"), "capacity"),
    ("all", ("--window", "0", "apps.echo:router", *FREE), "window"),
    ("handler", ("--window", "1025", "apps.echo:router"), "window"),
    ("all", ("--log-level", "loud", "apps.echo:router", *FREE), "loglevel"),
    ("all", ("-w", "-3", "apps.echo:router", *FREE), "workers"),
])
def test_bad_value_exits_2_with_one_line(role: str, args: tuple[str, ...], name: str) -> None:
    assert_config_error(run(role, *args), name)


def test_flag_of_another_role_exits_2() -> None:
    assert_config_error(run("front", "--workers", "2", *FREE), "--workers")


def test_bad_value_in_the_environment_exits_2() -> None:
    result = run("front", *FREE, env={cli.ENV_ARGS: "--queue-size many"})
    assert_config_error(result, "queue_size")


def test_bad_value_in_the_config_file_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backlog = -5\n")
    assert_config_error(run("front", "-c", path, *FREE), "backlog")


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    assert_config_error(run("front", "-c", str(tmp_path / "nope.py"), *FREE), "nope.py")


@pytest.mark.parametrize("role", sorted(ENTRY_POINTS))
def test_version(role: str) -> None:
    result = run(role, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wsgi_zmq {__version__}\n"


@pytest.mark.parametrize("role, args", [
    ("front", ("--backlog", "7")),
    ("handler", ("apps.echo:router", "-w", "3")),
    ("all", ("apps.echo:router", "--backlog", "7", "-w", "3")),
])
def test_print_config(role: str, args: tuple[str, ...]) -> None:
    result = run(role, "--print-config", *args)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    names = {name.strip() for name in printed}
    assert names == {s.name for s in settings_for(role)}
    values = {name.strip(): value for name, value in printed.items()}
    if role != "handler":
        assert values["backlog"] == "7"
    if role != "front":
        assert values["workers"] == "3"
        assert values["wsgi_app"] == "'apps.echo:router'"
    assert values["print_config"] == "True"


@pytest.mark.parametrize("role", ["handler", "all"])
def test_check_config_with_a_good_app(role: str) -> None:
    result = run(role, "--check-config", "apps.echo:router", cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_check_config_of_a_front() -> None:
    result = run("front", "--check-config", *FREE)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def bad_apps(tmp_path: Path) -> Path:
    (tmp_path / "exploding_app.py").write_text(
        "raise RuntimeError('exploding at import')\n\n"
        "def app(environ, start_response):\n    return []\n")
    (tmp_path / "importing_app.py").write_text(
        "import no_such_dependency_xyz\n\napp = None\n")
    (tmp_path / "plain_app.py").write_text("app = 42\n")
    return tmp_path


@pytest.mark.parametrize("role", ["handler", "all"])
@pytest.mark.parametrize("uri, names", [
    ("no_such_module_xyz:app", ("no_such_module_xyz",)),
    ("apps.no_such_module:app", ("apps.no_such_module",)),
    ("apps.echo:no_such_attribute", ("no_such_attribute", "apps.echo")),
    ("exploding_app:app", ("exploding_app", "exploding at import")),
    ("importing_app:app", ("importing_app", "no_such_dependency_xyz")),
    ("plain_app:app", ("plain_app:app", "not callable")),
], ids=["missing module", "missing submodule", "missing attribute", "raises on import",
        "import inside fails", "not callable"])
def test_check_config_with_a_bad_app(bad_apps: Path, role: str, uri: str,
                                     names: tuple[str, ...]) -> None:
    result = run(role, "--check-config", uri, cwd=TESTS, pythonpath=(TESTS, bad_apps))
    assert_config_error(result, *names)


def test_check_config_without_an_app() -> None:
    assert_config_error(run("handler", "--check-config"), "No application")


def test_routes_from_a_config_file_list_and_the_command_line(
        tmp_path: Path, no_env_args: pytest.MonkeyPatch) -> None:
    """``route`` is a list in a config file and repeatable on the command line, which
    replaces the file's list; each is parsed into host, prefix, pool and strip."""
    from wsgi_zmq.config import Route

    path = write_config(tmp_path, 'route = ["/api/=api:strip", "*.Example.com/=web"]\n')
    cfg = cli.load_config("front", ["-c", path])
    assert cfg.route == [Route(None, "/api", "api", True, "/api/=api:strip"),
                         Route("*.example.com", "/", "web", False, "*.Example.com/=web")]
    cfg = cli.load_config("front", ["-c", path, "--route", "shop.example.com/v1=shop"])
    assert [(r.host, r.prefix, r.pool) for r in cfg.route] == [
        ("shop.example.com", "/v1", "shop")]


@pytest.mark.parametrize("value, message", [
    ("api=x", "is not \\[HOST\\]PATH-PREFIX=POOL"),
    ("/=x:strip", "nothing to strip"),
    ("/a=b=c", "is not"),
    ("/a b=x", "is not"),
])
def test_bad_routes_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        REGISTRY["route"].validate([value])


def test_two_routes_for_the_same_host_and_prefix_are_refused() -> None:
    with pytest.raises(ConfigError, match="route the same host and path"):
        REGISTRY["route"].validate(["/api=a", "/api/=b"])

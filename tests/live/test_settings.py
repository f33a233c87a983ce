"""Settings, hooks, logs and signals through real processes, observed from the outside.

Each test starts real entry points on loopback (ports read from the startup lines), sets
what it tests the way an operator would (a gunicorn-style config file, the environment
variable ``WSGI_ZMQ_CMD_ARGS``, the command line, signals by PID) and checks the effect on
requests, on the logs and on the processes. Nothing is mocked.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import (
    ROOT,
    TESTS,
    LiveProcess,
    connect,
    exchange,
    listening_port,
    pid_alive,
    poll_until,
    python_env,
    read_responses,
)
from wsgi_zmq import __version__

CONF = str(TESTS / "apps" / "gunicorn_conf.py")
LOGCONF = str(TESTS / "apps" / "logconfig_conf.py")
FREE = ("--bind", "127.0.0.1:0", "--backend", "tcp://127.0.0.1:*")
CONNECTED = r"Worker \d+@\S+ connected"

#: one error-log line: ``[date] [pid] [LEVEL] message``
LINE = re.compile(r"^\[[^\]]+\] \[(\d+)\] \[([A-Z]+)\] (.*)$", re.M)


# -- helpers -------------------------------------------------------------------------------

def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def request_json(port: int, path: str, *headers: str) -> dict:
    [response], _ = exchange(port, get(path, *headers))
    assert response.status == 200, response.body
    return json.loads(response.body)


def records(text: str) -> list[tuple[int, str, str]]:
    """The error-log lines of ``text`` as (pid, level, message)."""
    return [(int(pid), level, message) for pid, level, message in LINE.findall(text)]


def hook_pids(text: str, hook: str) -> list[int]:
    """The pids of the processes that logged ``hook NAME`` (tests/apps/gunicorn_conf.py)."""
    return [pid for pid, _, message in records(text)
            if re.match(rf"hook {hook}\b", message)]


def booted_workers(text: str, master: int | None = None) -> list[int]:
    return [int(child) for pid, _, message in records(text)
            if (master is None or pid == master)
            for child in re.findall(r"^Booting worker with pid: (\d+)$", message)]


def front_pid(text: str) -> int:
    return int(re.search(r"Booting front with pid: (\d+)", text).group(1))




def title(pid: int) -> str:
    """The process title as ps shows it (``/proc/PID/cmdline``)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


def run(args: list[str], env: dict[str, str] | None = None, module: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run an entry point to its end: ``python -m ARGS`` (or ``python ARGS``)."""
    command = [sys.executable, "-m", *args] if module else [sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, env=python_env(env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def printed_config(args: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """``--print-config``: each setting's name and the repr of its value."""
    result = run([*args, "--print-config"], env)
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.M))


def file_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_file(path: Path, pattern: str, proc: LiveProcess, timeout: float = 20.0,
                  count: int = 1) -> re.Match[str]:
    """Poll a log file other than the process's own until ``pattern`` matched ``count``
    times; fail at once if the process exited."""
    regex = re.compile(pattern, re.M)

    def found() -> re.Match[str] | None:
        matches = list(regex.finditer(file_text(path)))
        if len(matches) >= count:
            return matches[count - 1]
        if not proc.alive():
            raise AssertionError(f"process exited ({proc.proc.returncode}):\n"
                                 f"{file_text(path)[-3000:]}{proc.log()[-2000:]}")
        return None

    return poll_until(found, timeout, message=f"{pattern!r} in {path.name}")


def stop_foreign(pid: int) -> None:
    """Stop a process this test did not start itself (a master forked by USR2) by its PID:
    TERM, then KILL after a deadline."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        poll_until(lambda: not pid_alive(pid), 15, message=f"pid {pid} to exit")
    except AssertionError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise


# -- 1. a config file written as gunicorn's docs show one -----------------------------------

def test_gunicorn_style_config_file_drives_an_all_in_one(stack):
    """1. start ``python -m wsgi_zmq APP -c tests/apps/gunicorn_conf.py`` with only --bind
    and --backend on the command line 2. the file's settings apply: 2 workers, its
    access_log_format, proc_name in the process titles, keepalive/timeout/loglevel in
    --print-config 3. the master ran on_starting, pre_fork (x2), when_ready; each worker ran
    post_fork (logging its own pid) and post_worker_init 4. requests are served; pre_request
    and post_request ran for them in the worker that served them 5. TERM: each worker ran
    worker_exit, the master child_exit for each and on_exit last; exit status 0."""
    config = printed_config(["wsgi_zmq", "apps.echo:router", "-c", CONF, *FREE])
    assert config["workers"] == "2"
    assert config["keepalive"] == "2.0"
    assert config["timeout"] == "30"
    assert config["loglevel"] == "'info'"
    assert config["accesslog"] == "'-'"
    assert config["proc_name"] == "'gunicorn-style'"
    assert config["bind"] == "['127.0.0.1:0']"  # the command line wins over the file

    proc = stack.start(["wsgi_zmq", "apps.echo:router", "-c", CONF, *FREE], "all")
    port = listening_port(proc)
    proc.wait_for_log(CONNECTED, count=2)
    proc.wait_for_log(r"hook post_worker_init", count=2)
    text = proc.log()
    master = proc.pid
    workers = booted_workers(text)
    assert len(workers) == 2
    assert hook_pids(text, "on_starting") == [master]
    assert hook_pids(text, "pre_fork") == [master, master]
    assert hook_pids(text, "when_ready") == [master]
    assert sorted(hook_pids(text, "post_fork")) == sorted(workers)
    for pid in workers:
        assert f"[{pid}] [INFO] hook post_fork: Worker spawned (pid: {pid})" in text
    assert sorted(hook_pids(text, "post_worker_init")) == sorted(workers)
    if importlib.util.find_spec("setproctitle") is not None:
        assert "[gunicorn-style]" in title(workers[0])

    served = request_json(port, "/echo?x=1")["pid"]
    [missing], _ = exchange(port, get("/status?code=404"))
    assert missing.status == 404
    assert served in workers
    proc.wait_for_log(r"hook post_request GET /status -> 404 Not Found")
    proc.wait_for_log(r'access 127\.0\.0\.1 "GET /status\?code=404 HTTP/1\.1" 404 4 '
                      r"worker=\d+@\S+")
    text = proc.log()
    assert f"[{served}] [INFO] hook pre_request GET /echo" in text
    assert f"[{served}] [INFO] hook post_request GET /echo -> 200 OK" in text
    assert re.search(rf'access 127\.0\.0\.1 "GET /echo\?x=1 HTTP/1\.1" 200 \d+ '
                     rf"worker={served}@\S+", text)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    text = proc.log()
    assert sorted(hook_pids(text, "worker_exit")) == sorted(workers)
    for pid in workers:
        assert f"[{pid}] [INFO] hook worker_exit {pid}" in text
        assert f"[{master}] [INFO] hook child_exit {pid}" in text
    assert hook_pids(text, "on_exit") == [master]
    last_hook = [m for _, _, m in records(text) if m.startswith("hook ")][-1]
    assert last_hook == "hook on_exit"


# -- 2. precedence: file < WSGI_ZMQ_CMD_ARGS < command line -----------------------------------

def test_precedence_in_print_config(tmp_path):
    """1. a config file sets workers, keepalive, bind and loglevel 2. --print-config with the
    file alone shows the file's values 3. with WSGI_ZMQ_CMD_ARGS overriding workers,
    keepalive and bind, the variable wins over the file 4. with -w and --bind on the command
    line as well, the command line wins over both; loglevel, set only in the file, stays
    5. the config file itself may be named in WSGI_ZMQ_CMD_ARGS."""
    conf = tmp_path / "conf.py"
    conf.write_text('workers = 2\nkeepalive = 5\nbind = "127.0.0.1:1111"\n'
                    'loglevel = "warning"\n')
    app = ["wsgi_zmq", "apps.echo:router"]
    env = {"WSGI_ZMQ_CMD_ARGS": "-w 3 --keep-alive 6 --bind 127.0.0.1:2222"}

    from_file = printed_config([*app, "-c", str(conf)])
    assert (from_file["workers"], from_file["keepalive"], from_file["bind"]) == \
        ("2", "5.0", "['127.0.0.1:1111']")

    from_env = printed_config([*app, "-c", str(conf)], env)
    assert (from_env["workers"], from_env["keepalive"], from_env["bind"]) == \
        ("3", "6.0", "['127.0.0.1:2222']")

    from_cli = printed_config([*app, "-c", str(conf), "-w", "4", "--bind", "127.0.0.1:3333"],
                              env)
    assert (from_cli["workers"], from_cli["keepalive"], from_cli["bind"]) == \
        ("4", "6.0", "['127.0.0.1:3333']")
    assert from_cli["loglevel"] == "'warning'"

    via_env = printed_config(app, {"WSGI_ZMQ_CMD_ARGS": f"-c {conf}"})
    assert (via_env["workers"], via_env["loglevel"]) == ("2", "'warning'")


def test_precedence_in_running_pools(stack, tmp_path):
    """1. a front; a config file with workers = 2 2. three handler pools against it: the
    file alone, the file with WSGI_ZMQ_CMD_ARGS="-w 3", and both with -w 1 on the command
    line 3. each pool boots the number of workers its winning source says (2, 3, 1) and all
    six connect to the front 4. requests are served."""
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 2\n")
    front, port, endpoint = stack.front()
    env = {"WSGI_ZMQ_CMD_ARGS": "-w 3"}
    pools = [
        (stack.handler("apps.echo:router", endpoint, "-c", str(conf)), 2),
        (stack.handler("apps.echo:router", endpoint, "-c", str(conf), env=env), 3),
        (stack.handler("apps.echo:router", endpoint, "-c", str(conf), "-w", "1", env=env), 1),
    ]
    front.wait_for_log(CONNECTED, count=6)
    for pool, expected in pools:
        pool.wait_for_log(rf"Handler pool {pool.pid} serving apps\.echo:router with "
                          rf"{expected} worker\(s\)")
        assert len(booted_workers(pool.log())) == expected
    assert request_json(port, "/echo")["REQUEST_METHOD"] == "GET"


# -- 3. errors: exit codes and messages --------------------------------------------------------

def test_config_errors_exit_2_with_one_line(tmp_path):
    """1. run the all-in-one with: a missing config file, a config file that raises, a file
    with workers = "x", a malformed backend, a backend that cannot be bound (192.0.2.1, a
    documentation address), and a handler told to connect to ``*`` 2. each exits 2 3. stderr
    has exactly one line naming the problem (the error line of the process that met it, plus
    at most the master's INFO line that it shuts down) and no traceback."""
    raising = tmp_path / "raising.py"
    raising.write_text('raise RuntimeError("config file boom")\n')
    bad_value = tmp_path / "bad_value.py"
    bad_value.write_text('workers = "x"\n')
    app = ["wsgi_zmq", "apps.echo:router"]
    cases = [
        ([*app, "-c", str(tmp_path / "missing.py"), *FREE], "missing.py' not found"),
        ([*app, "-c", str(raising), *FREE], "config file boom"),
        ([*app, "-c", str(bad_value), *FREE], "Invalid value for workers: 'x'"),
        ([*app, "--bind", "127.0.0.1:0", "--backend", "tcp://nohost"], "tcp://nohost"),
        ([*app, "--bind", "127.0.0.1:0", "--backend", "tcp://192.0.2.1:5999",
          "--insecure-backend"], "Cannot bind the backend tcp://192.0.2.1:5999"),
        (["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend", "tcp://192.0.2.1:5999",
          "--insecure-backend"], "Cannot bind the backend tcp://192.0.2.1:5999"),
        (["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend", "tcp://192.0.2.1:5999"],
         "The backend tcp://192.0.2.1:5999 is plaintext on an address others can reach"),
        (["wsgi_zmq.front", "--curve-allow", str(tmp_path)],
         "curve_allow needs curve_secret_key"),
        (["wsgi_zmq.handler", "apps.echo:router", "--curve-secret-key", str(raising)],
         "CURVE needs both curve_secret_key"),
        (["wsgi_zmq.handler", "apps.echo:router", "--connect", "tcp://127.0.0.1:*"],
         "a handler connects to a real port"),
    ]
    for args, message in cases:
        result = run(args)
        assert result.returncode == 2, (args, result.stderr)
        problems = [line for line in result.stderr.splitlines()
                    if "[INFO]" not in line and line.strip()]
        assert len(problems) == 1, (args, result.stderr)
        assert message in problems[0], (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_unknown_name_in_config_file_is_a_warning(tmp_path):
    """1. a config file with a misspelt setting (``wokers``) and a private helper
    (``_helper``) 2. --check-config exits 0 3. stderr warns and names ``wokers``; the
    ``_helper`` name is not reported."""
    conf = tmp_path / "conf.py"
    conf.write_text("wokers = 2\n_helper = 1\n")
    result = run(["wsgi_zmq", "apps.echo:router", "-c", str(conf), "--check-config"])
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "wokers" in line]
    assert warnings, result.stderr
    assert all(re.search("unknown setting", line, re.I) for line in warnings)
    assert "_helper" not in result.stderr


def test_unimportable_app_traceback_only_at_debug(tmp_path):
    """1. an app module that raises at import (tests/apps/raises_at_import.py) 2. the
    handler pool at --log-level info: exit 2, one ERROR line naming the module and the
    exception, no traceback 3. the same at --log-level debug, and --check-config at debug:
    exit 2 and the traceback down to the line that raised."""
    base = ["wsgi_zmq.handler", "apps.raises_at_import:app", "--connect",
            f"ipc://{tmp_path}/nowhere"]
    quiet = run([*base, "--log-level", "info"])
    assert quiet.returncode == 2, quiet.stderr
    errors = [line for line in quiet.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, quiet.stderr
    assert "apps.raises_at_import" in errors[0]
    assert "raises_at_import is broken on purpose" in errors[0]
    assert "Traceback" not in quiet.stderr
    for extra in ([], ["--check-config"]):
        loud = run([*base, "--log-level", "debug", *extra])
        assert loud.returncode == 2, loud.stderr
        assert "Traceback (most recent call last)" in loud.stderr
        assert 'raises_at_import.py", line 5, in _broken' in loud.stderr
        assert "RuntimeError: raises_at_import is broken on purpose" in loud.stderr


# -- 4. the access log -----------------------------------------------------------------------

ATOMS = ("h", "r", "s", "b", "D", "{x-test}i", "{content-type}o", "worker", "queue_ms")


def test_access_log_file_with_custom_format(stack, tmp_path):
    """1. all-in-one with --access-logfile FILE and a format of h r s b D {x-test}i
    {content-type}o worker queue_ms 2. GET /echo with X-Test, GET /status 404 and 204, and
    an HTTP/1.1 request without Host (the front answers 400 itself) 3. each line parses:
    the worker's lines carry the request, status, body length, duration, the header, the
    response type, ``PID@host`` of a booted worker and a queue time; the 400 line has
    worker ``front``."""
    access = tmp_path / "access.log"
    fmt = "|".join(f"%({atom})s" for atom in ATOMS)
    proc, port = stack.all_in_one("apps.echo:router", "--access-logfile", str(access),
                                  "--access-logformat", fmt)
    echoed = request_json(port, "/echo", "X-Test: hello")
    assert exchange(port, get("/status?code=404"))[0][0].status == 404
    assert exchange(port, get("/status?code=204"))[0][0].status == 204
    [refused], _ = exchange(port, b"GET /nohost HTTP/1.1\r\n\r\n")
    assert refused.status == 400
    wait_for_file(access, r"^.*$\n", proc, count=4)
    lines = [dict(zip(ATOMS, line.split("|"), strict=True))
             for line in access.read_text().splitlines()]
    by_status = {line["s"]: line for line in lines}
    assert set(by_status) == {"200", "404", "204", "400"}
    workers = booted_workers(proc.log())

    ok = by_status["200"]
    assert ok["h"] == "127.0.0.1"
    assert ok["r"] == "GET /echo HTTP/1.1"
    assert int(ok["b"]) > 0
    assert int(ok["D"]) >= 0
    assert ok["{x-test}i"] == "hello"
    assert ok["{content-type}o"] == "application/json"
    assert ok["worker"] == f"{echoed['pid']}@{ok['worker'].split('@')[1]}"
    assert int(ok["worker"].split("@")[0]) in workers
    assert float(ok["queue_ms"]) >= 0
    assert by_status["404"]["b"] == "4"
    assert by_status["404"]["{x-test}i"] == "-"
    assert by_status["204"]["b"] == "-"  # no body may follow a 204

    front = by_status["400"]
    assert front["worker"] == "front"
    assert front["h"] == "127.0.0.1"
    assert front["{content-type}o"].startswith("text/plain")
    assert int(front["b"]) > 0


def test_access_log_dash_is_stdout_and_off_by_default(stack, tmp_path):
    """1. all-in-one with --access-logfile - and its stderr sent to a file of its own 2. a
    request 3. the access line appears on stdout, not on stderr 4. an all-in-one without the
    flag, a request, a TERM: no access line anywhere in its output."""
    errors = tmp_path / "stderr.log"
    proc = LiveProcess(["sh", "-c", f'exec "$0" "$@" 2>{errors}', sys.executable, "-m",
                        "wsgi_zmq", "apps.echo:router", *FREE, "--access-logfile", "-"],
                       tmp_path / "stdout.log")
    stack.procs.append(proc)  # the fixture stops it by its PID (exec kept the shell's)
    wait_for_file(errors, CONNECTED, proc)
    port = int(re.search(r"Listening at: http://[\d.]+:(\d+)", errors.read_text()).group(1))
    assert exchange(port, get("/status?code=404"))[0][0].status == 404
    proc.wait_for_log(r'"GET /status\?code=404 HTTP/1\.1" 404')
    assert "GET /status" not in errors.read_text()

    quiet, port = stack.all_in_one("apps.echo:router")
    assert exchange(port, get("/status?code=404"))[0][0].status == 404
    quiet.send_signal(signal.SIGTERM)
    assert quiet.wait(20) == 0
    assert "GET /status" not in quiet.log()


# -- 5. USR1 reopens the log files --------------------------------------------------------------

def test_usr1_reopens_error_and_access_logs(stack, tmp_path):
    """1. all-in-one with --error-logfile and --access-logfile files 2. rename both, as
    logrotate does 3. USR1 to the master 4. poll: requests whose answer makes the front and
    the worker log (a response the app aborts after its head; a request without Host that
    the front refuses) 5. new files exist; the new error log has lines of the front and of
    the worker, the new access log lines of both."""
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    proc = stack.start(["wsgi_zmq", "apps.echo:router", *FREE, "--error-logfile", str(errors),
                        "--access-logfile", str(access), "--access-logformat",
                        "%(worker)s %(s)s"], "all")
    wait_for_file(errors, CONNECTED, proc)
    text = errors.read_text()
    port = int(re.search(r"Listening at: http://[\d.]+:(\d+)", text).group(1))
    front, [worker] = front_pid(text), booted_workers(text)
    assert exchange(port, get("/"))[0][0].status == 200
    wait_for_file(access, r"@\S+ 200", proc)

    errors.rename(tmp_path / "error.log.1")
    access.rename(tmp_path / "access.log.1")
    proc.send_signal(signal.SIGUSR1)

    def reopened() -> bool:
        exchange(port, get("/crash?when=after"))
        exchange(port, b"GET / HTTP/1.1\r\n\r\n")
        pids = {pid for pid, _, _ in records(file_text(errors))}
        lines = file_text(access)
        return {front, worker} <= pids and f"{worker}@" in lines and "front 400" in lines

    poll_until(reopened, 15, interval=0.2, message="the new log files to get lines")


# -- 6. pidfile ------------------------------------------------------------------------------------

def test_pidfile_holds_the_master_and_refuses_a_second_start(stack, tmp_path):
    """1. all-in-one with --pid FILE 2. FILE holds the master's pid 3. a second all-in-one
    with the same FILE exits 2 with one line naming it, and leaves FILE alone 4. TERM the
    first: it exits 0 and FILE is gone."""
    pidfile = tmp_path / "master.pid"
    proc, _ = stack.all_in_one("apps.echo:router", "--pid", str(pidfile))
    assert pidfile.read_text().strip() == str(proc.pid)

    second = run(["wsgi_zmq", "apps.echo:router", *FREE, "--pid", str(pidfile)])
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(pidfile) in lines[0] and str(proc.pid) in lines[0]
    assert pidfile.read_text().strip() == str(proc.pid)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not pidfile.exists()


# -- 7. max_requests ---------------------------------------------------------------------------

def test_max_requests_recycles_workers_without_failing_a_request(stack):
    """1. all-in-one, one worker, --max-requests 5 2. 23 sequential requests 3. every one
    gets 200 4. the log shows at least 4 worker boots and the recycling line, and at least 4
    different workers answered."""
    proc, port = stack.all_in_one("apps.echo:router", "--max-requests", "5")
    pids = [request_json(port, f"/echo?n={n}")["pid"] for n in range(23)]
    assert len(set(pids)) >= 4, pids
    proc.wait_for_log(r"Booting worker with pid", count=4)
    proc.wait_for_log(r"Worker \d+ served \d+ requests \(max_requests\): recycling")


# -- 8. timeout ------------------------------------------------------------------------------------

def test_timeout_aborts_a_stuck_worker_with_one_504(stack):
    """1. all-in-one with the config file (its worker_abort hook logs), -w 1, --timeout 2
    2. GET /slow?seconds=60 on a keep-alive connection 3. exactly one response, a 504
    (not 502); WORKER TIMEOUT is logged for that worker and its worker_abort hook ran there
    4. a new worker boots and connects 5. the next request on the same connection (or a new
    one, if the front closed it) gets 200 from the new worker."""
    proc = stack.start(["wsgi_zmq", "apps.echo:router", "-c", CONF, *FREE, "-w", "1",
                        "--timeout", "2"], "all")
    port = listening_port(proc)
    proc.wait_for_log(CONNECTED)
    [stuck] = booted_workers(proc.log())
    with connect(port) as sock:
        sock.sendall(get("/slow?seconds=60"))
        responses, closed = read_responses(sock, 1, timeout=15)
        assert [r.status for r in responses] == [504]
        proc.wait_for_log(rf"WORKER TIMEOUT \(pid:{stuck}\)")
        proc.wait_for_log(rf"\[{stuck}\] \[INFO\] hook worker_abort")
        proc.wait_for_log(CONNECTED, count=2)
        if not closed:
            sock.sendall(get("/echo"))
            more, _ = read_responses(sock, 1, timeout=10)
            assert [r.status for r in more] == [200]
            after = json.loads(more[0].body)["pid"]
        else:
            after = request_json(port, "/echo")["pid"]
    assert after != stuck
    assert after in booted_workers(proc.log())
    assert not re.search(r"\] 502 for ", proc.log())


def test_request_sent_right_after_a_timeout_abort_is_served(stack):
    """1. all-in-one, one worker, --timeout 1 2. GET /slow?seconds=30 gets its 504 (the
    worker was aborted) 3. at once, a POST on a connection opened before 4. the POST is
    served (200, by the replacement worker): the aborted worker must not be handed new work
    as it dies (a non-idempotent request cannot be replayed, so it would get 502)."""
    proc, port = stack.all_in_one("apps.echo:router", "--timeout", "1")
    [stuck] = booted_workers(proc.log())
    with connect(port) as slow, connect(port) as post:
        slow.sendall(get("/slow?seconds=30"))
        [aborted], _ = read_responses(slow, 1, timeout=15)
        assert aborted.status == 504
        post.sendall(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi")
        [response], _ = read_responses(post, 1, timeout=15)
    assert response.status == 200, (response.status, proc.log()[-1500:])
    assert json.loads(response.body)["pid"] != stuck


def test_idle_workers_are_not_timed_out_when_heartbeat_exceeds_timeout(stack):
    """1. all-in-one with --timeout 1 --heartbeat 3 (the docs of ``timeout``: "a worker tells
    the master it is alive at least once a second while it waits for work") 2. one request,
    200 3. for 4 s, the idle pool is watched 4. no WORKER TIMEOUT, and the worker that
    answered is still the only one."""
    proc, port = stack.all_in_one("apps.echo:router", "--timeout", "1", "--heartbeat", "3")
    worker = request_json(port, "/echo")["pid"]
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # an observation window: nothing may happen in it
        assert "WORKER TIMEOUT" not in proc.log(), proc.log()[-2000:]
        time.sleep(0.1)
    assert booted_workers(proc.log()) == [worker]


# -- 9. reload -------------------------------------------------------------------------------------

def test_reload_serves_the_changed_app(stack, tmp_path):
    """1. an app module written to tmp_path, served with --pythonpath tmp_path --reload
    2. it answers "version 1" 3. the file is rewritten to answer "version 2" (a new mtime)
    4. poll: the new text is served 5. the worker logged that it reloads for that file."""
    module = tmp_path / "reloadable_app.py"
    source = ("def app(environ, start_response):\n"
              "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
              "    return [b'version {}\\n']\n")
    module.write_text(source.format(1))
    proc, port = stack.all_in_one("reloadable_app:app", "--pythonpath", str(tmp_path),
                                  "--reload")
    assert exchange(port, get("/"))[0][0].body == b"version 1\n"
    mtime = module.stat().st_mtime
    module.write_text(source.format(2))
    os.utime(module, (mtime + 5, mtime + 5))

    def served() -> bool:
        [response], _ = exchange(port, get("/"))
        assert response.status == 200
        return response.body == b"version 2\n"

    poll_until(served, 15, interval=0.1, message="the new version to be served")
    proc.wait_for_log(rf"Worker \d+ reloading: {re.escape(str(module))} changed")


# -- 10. process settings ---------------------------------------------------------------------

def test_env_chdir_pythonpath_umask(stack, tmp_path):
    """1. all-in-one of tests/apps/process_info.py with -e FOO=bar, --chdir DIR,
    --pythonpath DIR2, -m 077 2. the worker sees FOO=bar, runs in DIR, has DIR2 on sys.path
    3. a file the app creates has mode 0600."""
    work, extra = tmp_path / "work", tmp_path / "extra"
    work.mkdir()
    extra.mkdir()
    _, port = stack.all_in_one("apps.process_info:app", "-e", "FOO=bar", "--chdir", str(work),
                               "--pythonpath", str(extra), "-m", "077")
    info = request_json(port, f"/?env=FOO&create={work}/made.txt")
    assert info["env"] == {"FOO": "bar"}
    assert info["cwd"] == str(work)
    assert str(extra) in info["sys_path"]
    assert oct(info["mode"]) == oct(0o600)


def test_preload_imports_the_app_once_in_the_master(stack, tmp_path):
    """1. all-in-one, 2 workers, --preload, an app module that appends its importing pid to
    a file 2. the file has one line, the master's pid 3. the same without --preload: one
    line per worker, the workers' pids."""
    mark = tmp_path / "preloaded"
    proc, _ = stack.all_in_one("apps.preload_marker:app", "--preload", workers=2,
                               env={"PRELOAD_MARK": str(mark)})
    assert mark.read_text().split() == [str(proc.pid)]

    mark = tmp_path / "not-preloaded"
    proc, _ = stack.all_in_one("apps.preload_marker:app", workers=2,
                               env={"PRELOAD_MARK": str(mark)})
    assert sorted(mark.read_text().split()) == sorted(map(str, booted_workers(proc.log())))


def test_capture_output_sends_app_prints_to_the_error_log(stack, tmp_path):
    """1. all-in-one with --capture-output --error-logfile FILE 2. the app prints a text to
    stdout 3. the text lands in FILE (poll)."""
    errors = tmp_path / "error.log"
    proc = stack.start(["wsgi_zmq", "apps.process_info:app", *FREE, "--capture-output",
                        "--error-logfile", str(errors)], "all")
    wait_for_file(errors, CONNECTED, proc)
    port = int(re.search(r"Listening at: http://[\d.]+:(\d+)", errors.read_text()).group(1))
    request_json(port, "/?say=printed-by-the-app")
    wait_for_file(errors, r"^printed-by-the-app$", proc)
    assert "printed-by-the-app" not in proc.log()


def test_logconfig_dict_formats_the_error_log(stack):
    """1. all-in-one with a config file whose logconfig_dict gives wsgi_zmq.error a custom
    formatter 2. the master's, the front's and the worker's lines are in that format (with
    their logger names); no line keeps the default format."""
    proc = stack.start(["wsgi_zmq", "apps.echo:router", "-c", LOGCONF, *FREE], "all")
    listening_port(proc)
    proc.wait_for_log(CONNECTED)
    text = proc.log()
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith("CUSTOM|") for line in lines), text
    assert re.search(r"^CUSTOM\|\d+\|INFO\|wsgi_zmq\.error\.arbiter\|Booting worker", text, re.M)
    assert re.search(r"^CUSTOM\|\d+\|INFO\|wsgi_zmq\.error\.front\|Listening at", text, re.M)
    assert re.search(r"^CUSTOM\|\d+\|INFO\|wsgi_zmq\.error\.worker\|Worker \d+ serving", text,
                     re.M)


def test_name_shows_in_process_titles(stack):
    """1. setproctitle is importable 2. all-in-one with --name NAME 3. the titles in
    /proc/PID/cmdline: ``wsgi_zmq: worker [NAME]``, ``wsgi_zmq: front [NAME]`` and the
    master's with ``[NAME]``."""
    pytest.importorskip("setproctitle")
    proc, _ = stack.all_in_one("apps.echo:router", "--name", "settings-test")
    text = proc.log()
    [worker] = booted_workers(text)
    assert "wsgi_zmq: worker [settings-test]" in title(worker)
    assert "wsgi_zmq: front [settings-test]" in title(front_pid(text))
    assert "[settings-test]" in title(proc.pid)


def test_proc_name_defaults_to_the_app(stack):
    """1. setproctitle is importable 2. all-in-one of apps.echo:router without --name
    3. docs/settings.md (proc_name: "The default is the app.") : the worker's title is
    ``wsgi_zmq: worker [apps.echo:router]``."""
    pytest.importorskip("setproctitle")
    proc, _ = stack.all_in_one("apps.echo:router")
    [worker] = booted_workers(proc.log())
    assert "wsgi_zmq: worker [apps.echo:router]" in title(worker)


def test_user_and_group(stack):
    """1. (root only) all-in-one with --user nobody --group nogroup 2. the app reports
    nobody's uid and nogroup's gid 3. the front runs as nobody too, the master stays
    root."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root; this run is not root")
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup").gr_gid
    proc, port = stack.all_in_one("apps.process_info:app", "--user", "nobody", "--group",
                                  "nogroup")
    info = request_json(port, "/")
    assert (info["uid"], info["gid"]) == (nobody.pw_uid, nogroup)
    assert uid_of(front_pid(proc.log())) == nobody.pw_uid
    assert uid_of(proc.pid) == 0


# -- 11. forwarded_allow_ips -------------------------------------------------------------------

def test_forwarded_allow_ips(stack):
    """1. two fronts: one with the default forwarded_allow_ips (127.0.0.1 is trusted), one
    with --forwarded-allow-ips 10.0.0.1; one handler connected to both 2. from 127.0.0.1
    with X-Forwarded-Proto: https 3. the first front gives wsgi.url_scheme https, the
    second http; without the header, both http."""
    trusting, trusting_port, trusting_endpoint = stack.front()
    strict, strict_port, strict_endpoint = stack.front("--forwarded-allow-ips", "10.0.0.1")
    stack.handler("apps.echo:router", trusting_endpoint, "--connect", strict_endpoint)
    trusting.wait_for_log(CONNECTED)
    strict.wait_for_log(CONNECTED)
    proto = "X-Forwarded-Proto: https"
    assert request_json(trusting_port, "/echo", proto)["wsgi.url_scheme"] == "https"
    assert request_json(strict_port, "/echo", proto)["wsgi.url_scheme"] == "http"
    assert request_json(trusting_port, "/echo")["wsgi.url_scheme"] == "http"


# -- 12. signals and their hooks ------------------------------------------------------------

def test_ttin_ttou_change_the_pool_and_call_nworkers_changed(stack):
    """1. all-in-one with the config file, -w 1 2. TTIN: the master logs "2 worker(s), was
    1", the nworkers_changed hook logs 1 -> 2, a second worker connects 3. TTOU: "1
    worker(s), was 2", the hook logs 2 -> 1, the oldest worker exits 4. requests are then
    served by the remaining worker."""
    proc = stack.start(["wsgi_zmq", "apps.echo:router", "-c", CONF, *FREE, "-w", "1"], "all")
    port = listening_port(proc)
    proc.wait_for_log(CONNECTED)
    proc.send_signal(signal.SIGTTIN)
    proc.wait_for_log(r"2 worker\(s\), was 1")
    proc.wait_for_log(rf"\[{proc.pid}\] \[INFO\] hook nworkers_changed 1 -> 2")
    proc.wait_for_log(CONNECTED, count=2)
    oldest, newest = booted_workers(proc.log())

    proc.send_signal(signal.SIGTTOU)
    proc.wait_for_log(r"1 worker\(s\), was 2")
    proc.wait_for_log(rf"\[{proc.pid}\] \[INFO\] hook nworkers_changed 2 -> 1")
    proc.wait_for_log(rf"Worker {oldest} exited")
    poll_until(lambda: not pid_alive(oldest), 10, message="the oldest worker to exit")
    assert pid_alive(newest)
    assert {request_json(port, "/echo")["pid"] for _ in range(3)} == {newest}


def test_hup_reloads_without_failing_a_request(stack):
    """1. all-in-one with the config file, 2 workers 2. a client loop sends requests one
    after another 3. HUP: the on_reload hook runs, two new workers boot and connect, "Reload
    done" is logged and the old workers exit 4. the loop gets answers from a new worker
    5. every request of the loop got 200."""
    proc = stack.start(["wsgi_zmq", "apps.echo:router", "-c", CONF, *FREE, "-w", "2"], "all")
    port = listening_port(proc)
    proc.wait_for_log(CONNECTED, count=2)
    old = booted_workers(proc.log())
    answers: list[tuple[int, int | None]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        try:
            while not stop.is_set():
                [response], _ = exchange(port, get("/echo"))
                pid = json.loads(response.body)["pid"] if response.status == 200 else None
                answers.append((response.status, pid))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    loop = threading.Thread(target=client, daemon=True)
    loop.start()
    try:
        poll_until(lambda: len(answers) >= 5, 10, message="the client loop to run")
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(rf"\[{proc.pid}\] \[INFO\] hook on_reload")
        proc.wait_for_log(r"Reload done")
        proc.wait_for_log(CONNECTED, count=4)
        for pid in old:
            proc.wait_for_log(rf"Worker {pid} exited")
        new = [pid for pid in booted_workers(proc.log()) if pid not in old]
        assert len(new) == 2
        seen = len(answers)
        poll_until(lambda: any(pid in new for _, pid in answers[seen:]), 10,
                   message="an answer from a new worker")
    finally:
        stop.set()
        loop.join(15)
    assert not failures, failures
    assert [status for status, _ in answers] == [200] * len(answers)


def test_usr2_starts_a_new_handler_master(stack):
    """1. a front and a handler pool (with the config file, -w 1) 2. USR2 to the pool's
    master: "Started a new master, pid N"; the new master ran pre_exec, and its worker
    connects to the front 3. TERM the old master: it exits 0 4. requests are served by the
    new master's worker 5. the new master is stopped by its pid (finally)."""
    front, port, endpoint = stack.front()
    old = stack.handler("apps.echo:router", endpoint, "-c", CONF, "-w", "1")
    front.wait_for_log(CONNECTED)
    old.send_signal(signal.SIGUSR2)
    new_master = int(old.wait_for_log(r"Started a new master, pid (\d+)").group(1))
    try:
        old.wait_for_log(rf"\[{new_master}\] \[INFO\] hook pre_exec")
        worker = int(old.wait_for_log(rf"\[{new_master}\] \[INFO\] Booting worker with "
                                      rf"pid: (\d+)").group(1))
        front.wait_for_log(rf"Worker {worker}@\S+ connected")
        old.send_signal(signal.SIGTERM)
        assert old.wait(20) == 0
        assert pid_alive(new_master)
        assert {request_json(port, "/echo")["pid"] for _ in range(3)} == {worker}
    finally:
        stop_foreign(new_master)


# -- 13. the bin/ wrappers ------------------------------------------------------------------

def test_bin_wrappers_run():
    """1. ``python bin/wsgi-zmq --version`` and ``python bin/wsgi-zmq-front --version``
    print the version, exit 0 2. ``python bin/wsgi-zmq-handler --help`` prints the
    handler's usage, exit 0."""
    for script in ("bin/wsgi-zmq", "bin/wsgi-zmq-front"):
        result = run([script, "--version"], module=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"wsgi_zmq {__version__}"
    result = run(["bin/wsgi-zmq-handler", "--help"], module=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "--connect" in result.stdout and "--max-requests" in result.stdout

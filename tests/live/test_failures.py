"""Failures through real processes: dead workers, full queues, timeouts, restarts, bad
messages, stopping. Nothing is mocked; processes are killed with real signals by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import zmq

from support import (
    ROOT,
    connect,
    exchange,
    get,
    logged_pids,
    pid_alive,
    poll_until,
    python_env,
    read_responses,
    send_async,
    term_during_request,
)
from wsgi_zmq import protocol


def test_worker_death_replays_an_idempotent_request(stack, tmp_path):
    """1. a GET whose worker dies before answering (the app calls os._exit the first time)
    2. the front dispatches it again, to the worker the arbiter forks in place of the dead
    one: 200 3. the same with a POST: not replayed, 502 4. a GET that kills every worker it
    touches is tried twice, then 502: it cannot take down the pool 5. the pool serves."""
    front, handler, port = stack.serve()
    once = tmp_path / "died"
    [response], _ = exchange(port, get(f"/die?once={once}"), timeout=30)
    assert (response.status, response.body) == (200, b"survived\n")
    assert "again" in front.log()

    once_post = tmp_path / "died-post"
    [response], _ = exchange(port, f"POST /die?once={once_post} HTTP/1.1\r\nHost: t\r\n"
                                   f"Content-Length: 2\r\n\r\nhi".encode(), timeout=30)
    assert response.status == 502

    [response], _ = exchange(port, get("/die"), timeout=30)
    assert response.status == 502
    assert len(logged_pids(handler)) >= 4  # the first, and one per death
    front.wait_for_log(r"Worker \d+@\S+ connected", count=len(logged_pids(handler)))
    [response], _ = exchange(port, get("/"), timeout=30)
    assert response.status == 200


def test_killed_worker_fails_its_started_request_with_502(stack, tmp_path):
    """1. a slow POST runs on the only worker 2. kill -9 the worker 3. the client gets 502
    at once, not a hang 4. the arbiter forks a new worker, which serves."""
    front, handler, port = stack.serve()
    [first] = logged_pids(handler)
    mark = tmp_path / "running"
    results: list = []
    thread = send_async(port, f"POST /slow?seconds=30&mark={mark} HTTP/1.1\r\nHost: t\r\n"
                              f"Content-Length: 2\r\n\r\nhi".encode(), results)
    poll_until(mark.exists, 10, message="the POST to run")
    os.kill(first, signal.SIGKILL)
    thread.join(20)
    assert results and results[0][0] == 502
    handler.wait_for_log(rf"Booting worker with pid: (?!{first})\d+")
    front.wait_for_log(r"Worker \d+@\S+ connected", count=2)
    [response], _ = exchange(port, get("/"))
    assert response.status == 200


def test_full_queue_answers_503_with_retry_after(stack, tmp_path):
    """1. one worker of capacity 1, a queue of 1 2. three slow requests at once 3. one is
    served, one waits and is served, the third gets 503 with Retry-After at once."""
    front, _, port = stack.serve(front_args=("--queue-size", "1", "--log-level", "debug"),
                                 handler_args=("--capacity", "1"))
    mark = tmp_path / "running"
    results: list = []
    busy = send_async(port, get(f"/slow?seconds=2&mark={mark}"), results)
    poll_until(mark.exists, 10, message="the first request to run")
    queued = send_async(port, get("/slow?seconds=0.1"), results)
    front.wait_for_log(r"Queued request \w+: 1 waiting")
    [refused], closed = exchange(port, get("/"))
    assert refused.status == 503
    assert refused.header("Retry-After") == "1"
    assert not closed
    busy.join(20)
    queued.join(20)
    assert sorted(r[0] for r in results) == [200, 200]


def test_request_timeout_answers_504_and_cancels(stack):
    """1. --request-timeout 1, two workers, an app that takes 3 s 2. the client gets 504
    after about a second 3. the other worker serves the next requests at once 4. the slow
    worker finishes, its late answer is dropped, and it serves again."""
    front, _, port = stack.serve(front_args=("--request-timeout", "1"), workers=2)
    [response], _ = exchange(port, get("/slow?seconds=3"))
    assert response.status == 504
    for _ in range(5):
        [after], _ = exchange(port, get("/echo"), timeout=20)
        assert after.status == 200
    pids: set[int] = set()

    def both_workers_serve() -> bool:
        [reply], _ = exchange(port, get("/echo"))
        pids.add(json.loads(reply.body)["pid"])
        return len(pids) == 2

    poll_until(both_workers_serve, 15, interval=0.05, message="the slow worker to serve again")


def test_stalled_worker_gets_no_new_requests(stack, tmp_path):
    """1. two workers of capacity 4 2. one runs a 3 s request 3. eight clients send fast
    requests for a while 4. none waits behind the slow request: requests the front sent to
    the busy worker before it looked stalled are handed back after STEAL_SECONDS, and a
    stalled worker gets nothing new while it finishes nothing."""
    _, _, port = stack.serve(workers=2, handler_args=("--capacity", "4"))
    mark = tmp_path / "running"
    results: list = []
    slow = send_async(port, get(f"/slow?seconds=3&mark={mark}"), results)
    poll_until(mark.exists, 10, message="the slow request to run")
    latencies: list[float] = []

    def client() -> None:
        for _ in range(30):
            started = time.monotonic()
            [reply], _ = exchange(port, get("/"), timeout=20)
            assert reply.status == 200
            latencies.append(time.monotonic() - started)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    slow.join(30)
    assert len(latencies) == 240
    assert max(latencies) < 2.0, sorted(latencies)[-5:]
    assert results == [(200, b"slept\n")]


def test_handler_may_start_before_the_front_and_survives_its_restart(stack, tmp_path):
    """1. start the handler first, on an ipc endpoint nobody binds yet 2. start the front
    3. requests are served 4. stop the front (TERM) and start a new one on the same endpoint
    5. the handler reconnects by itself and requests are served again."""
    endpoint = f"ipc://{tmp_path}/backend.sock"
    handler = stack.handler("apps.echo:router", endpoint)
    handler.wait_for_log(r"Worker \d+ serving")
    front = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend", endpoint],
                        "front1")
    front.wait_for_log(r"Worker \d+@\S+ connected")
    port = int(front.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    assert exchange(port, get("/"))[0][0].status == 200
    front.stop()
    again = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend", endpoint],
                        "front2")
    again.wait_for_log(r"Worker \d+@\S+ connected", timeout=30)
    port = int(again.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    assert exchange(port, get("/"))[0][0].status == 200


def test_malformed_zmq_messages_are_dropped_by_the_front(stack):
    """1. a raw DEALER connects to the front's backend 2. it sends an empty frame, a wrong
    version, an unknown kind, a truncated record, a three-part message and a RESPONSE for
    an unknown request 3. the front logs each and keeps serving real requests."""
    front, _, port = stack.serve()
    endpoint = re.search(r"Backend at: (\S+)", front.log()).group(1)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        bad = [b"", b"\x09" + protocol.encode_signal(protocol.HEARTBEAT), b"\x01\x63" + b"\0" * 12,
               b"\x01\x03\x00", protocol.frame([protocol.encode_ready(1, 8, 1, "x")])
               + b"\x05"]
        for frame in bad:
            sock.send(frame)
        sock.send_multipart([b"a", b"b"])
        sock.send(protocol.frame([protocol.encode_ready(1, 8, 99999, "fake"),
                                  protocol.encode_response(12345, protocol.RESP_END, b"x")]))
        poll_until(lambda: front.log().count("Dropped") >= 5, 10, message="drop warnings")
    finally:
        ctx.destroy(linger=0)
    for _ in range(5):
        [response], _ = exchange(port, get("/"))
        assert response.status == 200


def next_records(router):
    """The records of the worker's next frame that is not its master's STATS or the offer
    of its body ring (RING) or pipe (PIPE): frames of their own, whenever they come."""
    while True:
        records = protocol.split_frame(router.recv_multipart()[1])
        if [r.kind for r in records] not in ([protocol.STATS], [protocol.RING],
                                             [protocol.PIPE]):
            return records


def test_malformed_zmq_messages_are_dropped_by_a_worker(stack):
    """1. the test binds a ROUTER and a handler connects to it 2. it sends the worker
    garbage: wrong version, unknown kind, truncated, a REQUEST whose strings are broken
    3. the worker logs and drops each (the broken REQUEST is answered with ERROR 502)
    4. a valid REQUEST then gets its RESPONSE."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVTIMEO, 20000)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        handler = stack.handler("apps.echo:router", f"tcp://127.0.0.1:{port}")
        ident, data = router.recv_multipart()
        [ready] = protocol.split_frame(data)
        assert ready.kind == protocol.READY
        for garbage in (b"\x02", b"\x01\x63" + b"\0" * 12, b"\x01\x01\x00"):
            router.send_multipart([ident, garbage])
        broken = protocol.encode_request(7, protocol.REQ_BODY_COMPLETE, b"GET", b"/", b"HTTP/1.1",
                                         b"127.0.0.1", 1, b"x", 80, b"http", [b"Host", b"x"], 8)
        at = protocol.RECORD_HEAD.size + 5  # nheaders: claim 5 headers, carry 1
        broken = broken[:at] + (5).to_bytes(2, "big") + broken[at + 2:]
        router.send_multipart([ident, protocol.frame([broken])])
        [error] = next_records(router)
        assert (error.kind, error.rid) == (protocol.ERROR, 7)
        good = protocol.encode_request(8, protocol.REQ_BODY_COMPLETE | protocol.REQ_KEEP_ALIVE,
                                       b"GET", b"/", b"HTTP/1.1", b"127.0.0.1", 1, b"x", 80,
                                       b"http", [b"Host", b"x"], 8)
        router.send_multipart([ident, protocol.frame([good])])
        [reply] = next_records(router)
        assert (reply.kind, reply.rid) == (protocol.RESPONSE, 8)
        assert protocol.decode_response(reply.payload).body == b"Hello, world!\n"
        assert handler.log().count("Dropped") >= 3
    finally:
        ctx.destroy(linger=0)


def test_all_in_one_stops_every_process_on_sigint_and_sigterm(stack):
    """1. start python -m wsgi_zmq with two workers 2. read the pids of the front and the
    workers from the log 3. SIGINT the master 4. every process it started is gone; then the
    same with SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc, port = stack.all_in_one(workers=2)
        assert exchange(port, get("/"))[0][0].status == 200
        children = [int(p) for p in re.findall(r"Booting (?:worker|front) with pid: (\d+)",
                                               proc.log())]
        assert len(children) == 3
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        poll_until(lambda pids=children: not any(pid_alive(pid) for pid in pids), 10,
                   message="children to exit")


def test_term_finishes_requests_in_flight(stack, tmp_path):
    """1. all-in-one, a 1 s request in flight 2. SIGTERM the master 3. the request still gets
    its 200 4. everything exits with status 0."""
    proc, port = stack.all_in_one()
    assert term_during_request(proc, port, tmp_path).status == 200


def _run(args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=python_env(),
                          capture_output=True, text=True, timeout=60)


def test_unimportable_app_exits_2_with_one_line(tmp_path):
    """1. start the handler pool, then the all-in-one, with an app that does not exist
    2. each exits 2 3. stderr names the module in one error line, no traceback."""
    for args in (["wsgi_zmq.handler", "no_such_module:app", "--connect",
                  f"ipc://{tmp_path}/x"],
                 ["wsgi_zmq", "no_such_module:app", "--bind", "127.0.0.1:0",
                  "--backend", "tcp://127.0.0.1:*"],
                 ["wsgi_zmq.handler", "apps.echo:no_such_app", "--connect",
                  f"ipc://{tmp_path}/x"]):
        result = _run(args)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, result.stderr
        assert "no_such" in errors[0]
        assert "Traceback" not in result.stderr


def test_port_in_use_exits_2_with_one_line():
    """1. occupy a port 2. start the front on it 3. exit 2 and one line saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["wsgi_zmq.front", "--bind", f"127.0.0.1:{port}", "--backend",
                      "tcp://127.0.0.1:*"],
                     ["wsgi_zmq", "apps.echo:router", "--bind", f"127.0.0.1:{port}",
                      "--backend", "tcp://127.0.0.1:*"]):
            result = _run(args)
            assert result.returncode == 2, result.stderr
            assert f"127.0.0.1:{port}" in result.stderr
            assert "Traceback" not in result.stderr


def test_environ_remote_addr_is_the_client(stack):
    """1. request /echo 2. REMOTE_ADDR and REMOTE_PORT are the client's socket address."""
    _, _, port = stack.serve()
    with connect(port) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(get("/echo"))
        [response], _ = read_responses(sock, 1)
    env = json.loads(response.body)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)


def test_children_exit_when_the_master_is_killed(stack):
    """1. all-in-one with two workers 2. kill -9 the master 3. the front and the workers
    notice their parent is gone and exit by themselves (no orphan keeps the port)."""
    proc, port = stack.all_in_one(workers=2)
    children = [int(p) for p in re.findall(r"Booting (?:worker|front) with pid: (\d+)",
                                           proc.log())]
    proc.send_signal(signal.SIGKILL)
    poll_until(lambda: not any(pid_alive(pid) for pid in children), 15,
               message="the children of a killed master to exit")


def test_all_in_one_restarts_a_dead_front_on_the_same_port(stack):
    """1. all-in-one, one request served 2. kill -9 the front process 3. the master forks a
    new front on the same port (it owns the listening socket) 4. the workers reconnect to
    it and requests are served again."""
    proc, port = stack.all_in_one(workers=2)
    assert exchange(port, get("/"))[0][0].status == 200
    [front] = [int(p) for p in re.findall(r"Booting front with pid: (\d+)", proc.log())]
    connected = proc.log().count(" connected, capacity")
    os.kill(front, signal.SIGKILL)
    proc.wait_for_log(rf"Front {front} died")
    proc.wait_for_log(r"Booting front with pid: \d+", count=2)
    proc.wait_for_log(r"Worker \d+@\S+ connected", count=connected + 2, timeout=30)
    [response], _ = exchange(port, get("/"))
    assert response.status == 200

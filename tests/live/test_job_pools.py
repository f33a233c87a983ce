"""Our job pools behind a real front: every client form, several services with HTTP, an MDP
worker of others beside a pool, workers killed mid-job, a raising function, retries.

Everything is a real process: ``python -m wsgi_zmq.front --job-bind``, ``python -m
wsgi_zmq.handler --job apps.jobs:NAME``, MDP workers in plain pyzmq, clients in plain pyzmq,
majortomo and ``wsgi_zmq.client``. Processes are stopped by their PIDs.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import zmq

from support import exchange, get, keys, poll_until
from support.jobs import Client, broker, is_error, mdp02, start_mdp_worker, stop
from wsgi_zmq.client import JobClient, JobError, JobTimeout


def pool(stack, backend: str, function: str, *args: str, workers: int = 1):
    """A job pool of ``apps.jobs:FUNCTION``; returns it once the broker saw its workers."""
    return stack.start(["wsgi_zmq.handler", "--job", f"apps.jobs:{function}", "--connect",
                        backend, "--workers", str(workers), *args], f"pool-{function}")


@pytest.fixture
def echo(stack):
    """A broker with ``--default-service echo`` and a pool of two ``echo`` workers."""
    proc, jobs, backend = broker(stack, "--default-service", "echo")
    handler = pool(stack, backend, "echo", workers=2)
    proc.wait_for_log(r"connected for service 'echo'", count=2)
    return proc, jobs, handler


def test_every_client_form_against_a_pool(echo):
    """MDP/0.1 over REQ, MDP/0.2 over DEALER (with and without the empty frame), a bare
    payload over REQ, majortomo's client and ours: each gets the pool's answer in its form."""
    _, jobs, _ = echo
    with Client(jobs, zmq.REQ) as client:
        assert client.call([b"MDPC01", b"echo", b"one"]) == [b"MDPC01", b"echo", b"one"]
        assert client.call([b"bare"]) == [b"bare"]
    with Client(jobs) as client:
        assert client.call(mdp02(b"echo", b"two")) == [b"MDPC02", b"\x03", b"echo", b"two"]
        assert client.call([b"", *mdp02(b"echo", b"3")]) == [b"", b"MDPC02", b"\x03", b"echo",
                                                             b"3"]
    majortomo = pytest.importorskip("majortomo")
    theirs = majortomo.Client(jobs)
    theirs.connect()
    try:
        theirs.send(b"echo", b"four")
        assert theirs.recv_all_as_list(timeout=10) == [b"four"]
    finally:
        theirs.close()
    with JobClient(jobs, service="echo", timeout=10, retries=0) as ours:
        assert ours.call(b"five") == b"five"
        assert ours.map([b"%d" % i for i in range(50)]) == [[b"%d" % i] for i in range(50)]


def test_several_services_and_http_on_one_front(stack):
    """1. a front with an HTTP bind and a job endpoint 2. an HTTP pool and two job pools
    (``echo``, ``swap``) 3. each answers its own traffic, none gets the others'."""
    front = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--job-bind",
                         "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"], "front")
    port = int(front.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    jobs = front.wait_for_log(r"Jobs at: (\S+) \(").group(1)
    backend = front.wait_for_log(r"Backend at: (\S+)").group(1)
    stack.handler("apps.echo:router", backend)
    pool(stack, backend, "echo")
    pool(stack, backend, "swap")
    front.wait_for_log(r"Worker \d+@\S+ connected, capacity")
    front.wait_for_log(r"connected for service 'echo'")
    front.wait_for_log(r"connected for service 'swap'")
    [response], _ = exchange(port, get("/"))
    assert response.status == 200
    with JobClient(jobs, timeout=10, retries=0) as client:
        assert client.request([b"ab", b"cd"], service="swap") == [b"dc", b"ba"]
        assert client.request([b"x"], service="echo") == [b"x"]
        assert client.has_service("swap") and not client.has_service("http")
    [response], _ = exchange(port, get("/again"))
    assert response.status == 200


def test_an_mdp_worker_of_others_serves_beside_a_pool(stack, tmp_path):
    """1. a pool of ``mutable`` (the payload upper-cased) registered as ``upper`` 2. an
    RFC 18 worker written in plain pyzmq registers ``upper`` too 3. 16 clients send 20 jobs
    each: all answered right, and both kinds of worker served some."""
    proc, jobs, backend = broker(stack)
    pool(stack, backend, "mutable", "--service", "upper", "--capacity", "1")
    theirs = start_mdp_worker(tmp_path, jobs, 2, "upper")
    try:
        proc.wait_for_log(r"connected for service 'upper'", count=2)
        failures: list[str] = []

        def run(n: int) -> None:
            with Client(jobs) as client:
                for i in range(20):
                    body = f"client {n} job {i}".encode()
                    if client.call(mdp02(b"upper", body), 30)[-1] != body.upper():
                        failures.append(body.decode())

        threads = [threading.Thread(target=run, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures
        served_by_theirs = theirs.log_path.read_text().count("served")
        assert 0 < served_by_theirs < 320, served_by_theirs
    finally:
        stop(theirs)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_pool_worker_killed_during_a_job(stack, tmp_path, idempotent):
    """1. a pool of two workers (``--job-idempotent`` or not) 2. a 3 s job 3. the worker
    running it is killed with SIGKILL 4. idempotent: the job runs again on the other worker
    and the client gets its answer; otherwise the client gets error 502 at once 5. either
    way no hang, and the pool serves on (the master replaces the worker)."""
    proc, jobs, backend = broker(stack)
    extra = ("--job-idempotent",) if idempotent else ()
    pool(stack, backend, "slow_pid", "--service", "slow", *extra, workers=2)
    proc.wait_for_log(r"connected for service 'slow'", count=2)
    mark = tmp_path / "pid"
    results: list[object] = []
    with JobClient(jobs, service="slow", timeout=30, retries=0) as client:
        def ask() -> None:
            try:
                results.append(client.call(json.dumps({"seconds": 3, "mark": str(mark)})
                                           .encode()))
            except JobError as exc:
                results.append(exc)

        thread = threading.Thread(target=ask)
        thread.start()
        victim = int(poll_until(lambda: mark.exists() and mark.read_text(), 10))
        os.kill(victim, signal.SIGKILL)
        thread.join(30)
    [result] = results
    if idempotent:
        assert isinstance(result, bytes) and result.startswith(b"done by ")
        assert int(result.split()[-1]) != victim
    else:
        assert isinstance(result, JobError) and result.code == 502, result
    proc.wait_for_log(r"connected for service 'slow'", count=3)  # the replacement
    with JobClient(jobs, service="slow", timeout=30, retries=0) as client:
        mark.unlink()
        assert client.call(json.dumps({"seconds": 0, "mark": str(mark)}).encode()) \
            .startswith(b"done by ")


def test_a_raising_function_gets_an_error_reply_and_the_worker_serves_on(stack):
    proc, jobs, backend = broker(stack)
    pool(stack, backend, "picky")
    proc.wait_for_log(r"connected for service 'picky'")
    with Client(jobs) as client:
        reply = client.call(mdp02(b"picky", b"raise it"))
        assert is_error(reply, 500) and reply[-1] == b"ValueError: no good"
        assert client.call(mdp02(b"picky", b"fine"))[-1] == b"fine"
    with JobClient(jobs, service="picky", timeout=10, retries=0) as ours:
        with pytest.raises(JobError) as caught:
            ours.call(b"raise")
        assert (caught.value.code, caught.value.message) == (500, "ValueError: no good")
        assert ours.call(b"still") == b"still"
    assert "Traceback" not in proc.log()  # the app's traceback is in the pool's log only


def test_a_client_that_times_out_retries_on_a_fresh_socket(stack, tmp_path):
    """1. a pool of two workers 2. the first attempt takes 3 s, longer than the client's
    1 s timeout 3. the client retries on a new socket; the other worker answers at once."""
    proc, jobs, backend = broker(stack)
    pool(stack, backend, "slow_once", workers=2)
    proc.wait_for_log(r"connected for service 'slow_once'", count=2)
    spec = json.dumps({"seconds": 3, "mark": str(tmp_path / "first")}).encode()
    with JobClient(jobs, service="slow_once", timeout=1, retries=2) as client:
        assert client.call(spec) == b"attempt 2"


def test_pools_scale_with_ttin_and_drain_with_term(stack):
    """1. a pool of one worker 2. TTIN: a second connects 3. TERM: both leave gracefully,
    the broker sees them go, and a job asked after waits, then gets 503 naming the service."""
    proc, jobs, backend = broker(stack, "--queue-timeout", "1")
    handler = pool(stack, backend, "echo")
    proc.wait_for_log(r"connected for service 'echo'")
    handler.send_signal(signal.SIGTTIN)
    proc.wait_for_log(r"connected for service 'echo'", count=2)
    handler.send_signal(signal.SIGTERM)
    assert handler.wait(30) == 0
    proc.wait_for_log(r"leaves", count=2)
    with Client(jobs) as client:
        reply = client.call(mdp02(b"echo", b"anyone?"), timeout=10)
    assert is_error(reply, 503) and b"'echo'" in reply[-1]


def test_curve_on_the_job_endpoint_and_the_backend(stack, tmp_path):
    """1. a broker with CURVE admitting one pool's and one client's keys 2. the pool serves
    jobs of the admitted client, whose key reaches the function (JobContext.key) 3. a client
    with an unlisted key and a plaintext client get no reply 4. the admitted one still does."""
    made = keys(tmp_path / "keys", "front", "pool", "client", "rogue")
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("pool", "client"):
        (allow / f"{name}.key").write_bytes(made[name][0].read_bytes())
    proc, jobs, backend = broker(stack, "--curve-secret-key", str(made["front"][1]),
                                 "--curve-allow", str(allow))
    pool(stack, backend, "context", "--curve-secret-key", str(made["pool"][1]),
         "--curve-server-key", str(made["front"][0]))
    proc.wait_for_log(r"connected for service 'context'")

    def client(name: str | None, timeout: float = 10) -> JobClient:
        if name is None:
            return JobClient(jobs, service="context", timeout=timeout, retries=0)
        return JobClient(jobs, service="context", timeout=timeout, retries=0,
                         curve_secret_key=str(made[name][1]),
                         curve_server_key=str(made["front"][0]))

    with client("client") as admitted:
        context = json.loads(admitted.call(b"x"))
    public = made["client"][0].read_text()
    assert context["key"] and context["key"] in public
    assert context["service"] == "context" and context["client"] == "127.0.0.1"
    for name in ("rogue", None):
        with client(name, timeout=1) as refused:
            with pytest.raises(JobTimeout):
                refused.call(b"x")
    proc.wait_for_log(r"Refused")
    with client("client") as admitted:
        assert json.loads(admitted.call(b"again"))["service"] == "context"


def test_a_job_stuck_past_timeout_gets_504_and_the_pool_serves_on(stack, tmp_path):
    """1. a pool with --timeout 2 2. a job that sleeps 30 s 3. the master aborts its worker:
    the client gets error 504 4. a new worker connects and serves."""
    proc, jobs, backend = broker(stack)
    handler = pool(stack, backend, "slow_pid", "--service", "slow", "--timeout", "2")
    proc.wait_for_log(r"connected for service 'slow'")
    mark = tmp_path / "pid"
    with JobClient(jobs, service="slow", timeout=30, retries=0) as client:
        with pytest.raises(JobError) as caught:
            client.call(json.dumps({"seconds": 30, "mark": str(mark)}).encode())
        assert caught.value.code == 504
        handler.wait_for_log(r"Booting worker with pid", count=2)
        proc.wait_for_log(r"connected for service 'slow'", count=2)
        assert client.call(json.dumps({"seconds": 0, "mark": str(mark)}).encode()) \
            .startswith(b"done by ")


def test_hup_replaces_a_job_pool_without_failing_a_job(stack):
    """1. a pool of two workers under a steady job load 2. HUP: new workers connect, the old
    ones leave 3. every job of the load is answered right."""
    proc, jobs, backend = broker(stack)
    handler = pool(stack, backend, "echo", workers=2)
    proc.wait_for_log(r"connected for service 'echo'", count=2)
    stop_load = threading.Event()
    failures: list[str] = []
    done = [0]

    def load() -> None:
        with Client(jobs) as client:
            while not stop_load.is_set():
                body = b"job %d" % done[0]
                reply = client.call(mdp02(b"echo", body), 20)
                if reply[-1] != body:
                    failures.append(repr(reply))
                done[0] += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        poll_until(lambda: done[0] > 50, 20)
        handler.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"connected for service 'echo'", count=4, timeout=30)
        proc.wait_for_log(r"leaves", count=2, timeout=30)
        before = done[0]
        poll_until(lambda: done[0] > before + 50, 20)
    finally:
        stop_load.set()
        thread.join(30)
    assert not failures and done[0] > 100


def test_a_job_pool_autoscales_on_its_queue(stack, tmp_path):
    """1. a pool of one worker (capacity 1) with --max-workers 2 2. eight 1 s jobs at once:
    they wait in the service's queue 3. the pool grows to two workers, and every job is
    answered."""
    proc, jobs, backend = broker(stack)
    handler = pool(stack, backend, "slow_pid", "--service", "slow", "--capacity", "1",
                   "--min-workers", "1", "--max-workers", "2", "--scale-cooldown", "0.5")
    proc.wait_for_log(r"connected for service 'slow'")
    with JobClient(jobs, service="slow", timeout=60, retries=0) as client:
        specs = [json.dumps({"seconds": 1, "mark": str(tmp_path / f"m{i}")}).encode()
                 for i in range(8)]
        replies = client.map(specs)
    assert all(reply[0].startswith(b"done by ") for reply in replies)
    handler.wait_for_log(r"Autoscale: 2 worker\(s\), was 1", timeout=5)
    assert len({reply[0] for reply in replies}) == 2  # both workers served


def test_all_in_one_job_broker_serves_the_sample(stack):
    """``python -m wsgi_zmq --job sample_apps.job:handle --job-bind ...``: a pure broker and
    its pool under one supervisor, no HTTP listener; the sample answers, and a bad payload
    gets its ValueError as an error reply."""
    proc = stack.start(["wsgi_zmq", "--job", "sample_apps.job:handle", "--job-bind",
                        "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                        "--workers", "2"], "all")
    jobs = proc.wait_for_log(r"Jobs at: (\S+) \(").group(1)
    proc.wait_for_log(r"connected for service 'handle'", count=2)
    assert "Listening at" not in proc.log()
    with JobClient(jobs, service="handle", timeout=10, retries=0) as client:
        assert json.loads(client.call(b'{"text": "Hello"}')) == {
            "text": "HELLO", "reversed": "olleH", "length": 5}
        with pytest.raises(JobError) as caught:
            client.call(b"not json")
    assert caught.value.code == 500 and caught.value.message.startswith("JSONDecodeError")


def test_a_burst_through_a_pool_and_an_mdp_worker_loses_no_reply(stack, tmp_path):
    """Regression (found running the ZeroMQ guide's mdclient2 against the front): 300
    requests sent at once on one DEALER, served by a pool and an MDP/0.1 worker. A reply
    the MDP worker sent while the front was sending on the job endpoint used to wait for the
    next event on that socket (the descriptor is edge-triggered, and the send took the
    edge): one request in a few hundred was answered only when the client left."""
    proc, jobs, backend = broker(stack)
    pool(stack, backend, "mutable", "--service", "upper")
    theirs = start_mdp_worker(tmp_path, jobs, 1, "upper")
    try:
        proc.wait_for_log(r"connected for service 'upper'", count=2)
        for _ in range(3):
            with Client(jobs) as client:
                for i in range(300):
                    client.send([b"", b"MDPC01", b"upper", b"job %d" % i])
                replies = {client.recv(10)[-1] for _ in range(300)}
            assert replies == {b"JOB %d" % i for i in range(300)}
        assert theirs.log_path.read_text().count("served") > 0
    finally:
        stop(theirs)

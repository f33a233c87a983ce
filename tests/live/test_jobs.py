"""The job endpoint against real processes: every client form, MMI, MDP workers of others,
services without workers, dying workers, hostile messages.

The broker is a real ``python -m wsgi_zmq.front --job-bind``; the MDP workers are scripts in
plain pyzmq (``support.jobs.MDP_WORKER``), the clients plain sockets, majortomo's own client
and worker, and our ``wsgi_zmq.client``. After every refusal or fault a test checks that the
broker still serves.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest
import zmq

from support import poll_until, python_env
from support.jobs import Client, broker, is_error, mdp02, start_mdp_worker, stop
from wsgi_zmq.client import JobClient, JobError


@pytest.fixture
def upper(stack, tmp_path):
    """A broker with one MDP/0.2 worker of service ``upper``: (broker, job endpoint)."""
    proc, jobs, _ = broker(stack, "--default-service", "upper")
    worker = start_mdp_worker(tmp_path, jobs, 2)
    proc.wait_for_log(r"connected for service 'upper'")
    try:
        yield proc, jobs
    finally:
        stop(worker)


def serves(jobs: str) -> bool:
    """The broker still answers an RFC 18 request for ``upper``."""
    with Client(jobs) as client:
        return client.call(mdp02(b"upper", b"still here")) == [
            b"MDPC02", b"\x03", b"upper", b"STILL HERE"]


# -- the client forms ----------------------------------------------------------------------

def test_an_rfc18_dealer_client_with_and_without_the_empty_frame(upper):
    """1. an RFC 18 REQUEST without an empty frame 2. FINAL with the service frame 3. the
    same with a leading empty frame 4. the reply has one too."""
    _, jobs = upper
    with Client(jobs) as client:
        assert client.call(mdp02(b"upper", b"a", b"b")) == [b"MDPC02", b"\x03", b"upper",
                                                             b"A", b"B"]
        assert client.call([b"", *mdp02(b"upper", b"c")]) == [b"", b"MDPC02", b"\x03",
                                                              b"upper", b"C"]


def test_an_rfc7_req_client(upper):
    """1. a REQ socket sends MDPC01, service, body (REQ adds the empty frame) 2. the reply
    is MDPC01, service, body, as the guide's mdcliapi expects; the same from a DEALER that
    adds the empty frame itself (mdcliapi2)."""
    _, jobs = upper
    with Client(jobs, zmq.REQ) as client:
        assert client.call([b"MDPC01", b"upper", b"hello"]) == [b"MDPC01", b"upper", b"HELLO"]
    with Client(jobs) as client:
        assert client.call([b"", b"MDPC01", b"upper", b"x"]) == [b"", b"MDPC01", b"upper",
                                                                 b"X"]


def test_a_bare_req_client_goes_to_the_default_service(upper):
    """1. a REQ sends a payload with no MDP header, as Net::Server::ZMQ clients do 2. the
    default service answers it with just the payload."""
    _, jobs = upper
    with Client(jobs, zmq.REQ) as client:
        assert client.call([b"plain payload"]) == [b"PLAIN PAYLOAD"]
        assert client.call([b"two", b"frames"]) == [b"TWO", b"FRAMES"]


def test_a_bare_request_without_a_default_service_gets_an_error_naming_the_setting(stack):
    proc, jobs, _ = broker(stack)
    with Client(jobs, zmq.REQ) as client:
        reply = client.call([b"payload"])
    assert is_error(reply, 404) and b"default_service" in reply[-1]


def test_majortomo_client_and_worker(stack, tmp_path):
    """1. majortomo's worker registers ``mt`` 2. majortomo's client asks ``mt`` and gets
    its answer 3. it asks the RFC 18 worker's ``upper`` too 4. our client asks ``mt``."""
    majortomo = pytest.importorskip("majortomo")
    proc, jobs, _ = broker(stack)
    script = ("import sys\nfrom majortomo import Worker\n"
              "w = Worker(sys.argv[1], b'mt')\nw.connect()\n"
              "while True:\n    client, frames = w.wait_for_request()\n"
              "    w.send_reply_final(client, [f[::-1] for f in frames])\n")
    mt = subprocess.Popen([sys.executable, "-c", script, jobs], env=python_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    rfc18 = start_mdp_worker(tmp_path, jobs, 2)
    try:
        proc.wait_for_log(r"connected for service 'mt'")
        proc.wait_for_log(r"connected for service 'upper'")
        client = majortomo.Client(jobs)
        client.connect()
        try:
            client.send(b"mt", b"abc", b"de")
            assert client.recv_all_as_list(timeout=10) == [b"cba", b"ed"]
            client.send(b"upper", b"via majortomo")
            assert client.recv_all_as_list(timeout=10) == [b"VIA MAJORTOMO"]
        finally:
            client.close()
        with JobClient(jobs, service="mt", timeout=10, retries=0) as ours:
            assert ours.request([b"xyz"]) == [b"zyx"]
    finally:
        stop(mt)
        stop(rfc18)


def test_our_client_command_line(upper):
    _, jobs = upper
    out = subprocess.run([sys.executable, "-m", "wsgi_zmq.client", jobs, "hi", "--service",
                          "upper"], capture_output=True, env=python_env(), timeout=30)
    assert (out.returncode, out.stdout) == (0, b"HI\n")


# -- MMI ---------------------------------------------------------------------------------------

def test_mmi_service_answers_200_404_and_other_names_501(upper):
    _, jobs = upper
    with Client(jobs) as client:
        assert client.call(mdp02(b"mmi.service", b"upper"))[-1] == b"200"
        assert client.call(mdp02(b"mmi.service", b"nobody"))[-1] == b"404"
        assert client.call(mdp02(b"mmi.echo", b"x"))[-1] == b"501"
    with Client(jobs, zmq.REQ) as client:
        assert client.call([b"MDPC01", b"mmi.service", b"upper"]) == [b"MDPC01",
                                                                      b"mmi.service", b"200"]
    with JobClient(jobs, timeout=10, retries=0) as ours:
        assert ours.has_service("upper") and not ours.has_service("nobody")


# -- workers of others -------------------------------------------------------------------------

def test_mdp01_and_mdp02_workers_share_a_service(stack, tmp_path):
    """1. an MDP/0.1 and an MDP/0.2 worker register ``upper`` 2. two slow jobs at once: one
    runs on each (the second does not wait for the first) 3. both answer."""
    proc, jobs, _ = broker(stack)
    workers = [start_mdp_worker(tmp_path, jobs, 1), start_mdp_worker(tmp_path, jobs, 2)]
    try:
        proc.wait_for_log(r"connected for service 'upper'", count=2)
        clients = [Client(jobs), Client(jobs)]
        for client in clients:
            client.send(mdp02(b"upper", b"sleep:1", b"x"))
        replies = [client.recv(10) for client in clients]
        assert all(reply[-1] == b"X" for reply in replies)
        for client in clients:
            client.close()
    finally:
        for worker in workers:
            stop(worker)


def test_a_worker_that_comes_while_a_job_waits_serves_it(stack, tmp_path):
    proc, jobs, _ = broker(stack)
    with Client(jobs) as client:
        client.send(mdp02(b"upper", b"early"))
        proc.wait_for_log(r"Jobs at")  # the job waits: no worker yet
        worker = start_mdp_worker(tmp_path, jobs, 1)
        try:
            assert client.recv(10)[-1] == b"EARLY"
        finally:
            stop(worker)


def test_a_service_with_no_worker_gets_503_naming_it_after_the_queue_timeout(stack):
    proc, jobs, _ = broker(stack, "--queue-timeout", "1")
    with Client(jobs) as client:
        reply = client.call(mdp02(b"nobody", b"x"), timeout=10)
    assert reply[:3] == [b"MDPC02", b"\x03", b"nobody"]
    assert is_error(reply, 503) and b"'nobody'" in reply[-1]
    with JobClient(jobs, service="nobody", timeout=10, retries=0) as ours:
        with pytest.raises(JobError) as caught:
            ours.call(b"x")
    assert caught.value.code == 503


def test_a_job_times_out_with_504_and_the_worker_serves_on(stack, tmp_path):
    proc, jobs, _ = broker(stack, "--request-timeout", "1")
    worker = start_mdp_worker(tmp_path, jobs, 2)
    try:
        proc.wait_for_log(r"connected for service 'upper'")
        with Client(jobs) as client:
            assert is_error(client.call(mdp02(b"upper", b"sleep:2"), timeout=10), 504)
        poll_until(lambda: serves(jobs), 15)  # once it finished the late job
    finally:
        stop(worker)


def test_an_mdp_worker_killed_during_a_job(stack, tmp_path):
    """1. two MDP workers 2. a slow job; its worker is killed with SIGKILL while it runs
    3. the client gets an error reply (502: the job may have run, and MDP workers are not
    known to be idempotent) within seconds, not a hang 4. the other worker serves on."""
    proc, jobs, _ = broker(stack, "--heartbeat", "0.5")
    workers = [start_mdp_worker(tmp_path, jobs, 2), start_mdp_worker(tmp_path, jobs, 2)]
    try:
        proc.wait_for_log(r"connected for service 'upper'", count=2)
        with Client(jobs) as client:
            client.send(mdp02(b"upper", b"sleep:60"))
            busy = poll_until(lambda: [w for w in workers if w.said("working")], 10)[0]
            busy.kill(signal.SIGKILL)
            reply = client.recv(20)
        assert is_error(reply, 502) and b"worker was lost" in reply[-1], reply
        assert serves(jobs)
    finally:
        for worker in workers:
            stop(worker)


def test_an_idempotent_job_goes_to_another_worker_when_its_worker_dies(stack, tmp_path):
    """1. two MDP workers 2. a client that marks its jobs idempotent (ZMTP property
    X-Idempotent, JobClient(idempotent=True)) sends a 3 s job 3. its worker is killed while
    it runs 4. the job runs again on the other worker and the client gets its answer."""
    proc, jobs, _ = broker(stack, "--heartbeat", "0.5")
    workers = [start_mdp_worker(tmp_path, jobs, 2), start_mdp_worker(tmp_path, jobs, 2)]
    try:
        proc.wait_for_log(r"connected for service 'upper'", count=2)
        results: list[object] = []
        with JobClient(jobs, service="upper", timeout=30, retries=0,
                       idempotent=True) as client:
            thread = threading.Thread(target=lambda: results.append(
                client.request([b"sleep:3", b"again"])))
            thread.start()
            busy = poll_until(lambda: [w for w in workers if w.said("working")], 10)[0]
            busy.kill(signal.SIGKILL)
            thread.join(30)
        assert results == [[b"SLEEP:3", b"AGAIN"]]
        [survivor] = [w for w in workers if w is not busy]
        assert survivor.said("working")
        proc.wait_for_log(r"Dispatching request \w+ again: its worker was lost")
    finally:
        for worker in workers:
            stop(worker)


# -- hostile input -----------------------------------------------------------------------------

HOSTILE = [
    [b"MDPC02"],                                 # no command
    [b"MDPC02", b"\x09", b"upper", b"x"],        # unknown command
    [b"MDPC02", b"\x01\x01", b"upper", b"x"],    # a two-byte command
    [b"MDPC02", b"\x01", b"", b"x"],             # empty service
    [b"MDPC02", b"\x01", b"s" * 300, b"x"],      # a service name over 255 bytes
    [b"MDPC03", b"\x01", b"upper", b"x"],        # an MDP version we do not speak
    [b"MDPW02", b"\x03", b"\x00" * 8, b"", b"forged reply"],  # a "reply" from no worker
    [b"MDPW01", b"\x02", b"x", b"", b"y"],       # REQUEST from a "worker"
    [b""],                                       # a lone empty frame
]


def test_hostile_messages_are_dropped_and_the_broker_serves_on(upper):
    proc, jobs = upper
    with Client(jobs) as client:
        for frames in HOSTILE * 20:
            client.send(frames)
        client.send([b"x"] * 2000)  # more frames than a job may have
        # on the same connection, so the front has taken all of the above first; the
        # "worker" messages were answered DISCONNECT (RFC 7), and nothing else
        client.send(mdp02(b"upper", b"after"))
        replies = [client.recv()]
        while replies[-1][0] != b"MDPC02":
            replies.append(client.recv())
        assert replies[-1] == [b"MDPC02", b"\x03", b"upper", b"AFTER"]
        assert all(reply == [b"MDPW02", b"\x06"] or reply == [b"", b"MDPW01", b"\x05"]
                   for reply in replies[:-1]), replies
    assert serves(jobs)
    lines = [line for line in proc.log().splitlines() if "Dropped" in line or
             "Disconnected" in line]
    assert 1 <= len(lines) <= 12, lines  # rate limited: not one line per message
    assert "Traceback" not in proc.log()


def test_many_clients_at_once(upper):
    """64 DEALER clients with 20 requests each through one MDP worker: every reply is the
    right one."""
    _, jobs = upper
    failures: list[str] = []

    def run(n: int) -> None:
        with Client(jobs) as client:
            for i in range(20):
                body = f"client {n} job {i}".encode()
                reply = client.call(mdp02(b"upper", body), timeout=30)
                if reply[-1] != body.upper():
                    failures.append(f"{body!r} -> {reply!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert serves(jobs)


def test_service_names_with_nul_are_refused_and_the_broker_serves_on(upper):
    """Regression (found by a random-message flood): a READY for service "\\0" made a JOB
    record that could not be decoded when the front passed the job on, and the exception
    left the dispatcher's flush half done. Now such a worker is told DISCONNECT, such a
    request gets error 400, and MDP workers coming and going are logged rate limited."""
    proc, jobs = upper
    with Client(jobs) as worker:
        worker.send([b"MDPW02", b"\x01", b"a\0b"])
        assert worker.recv(10) == [b"MDPW02", b"\x06"]
    with Client(jobs) as client:
        reply = client.call(mdp02(b"a\0b", b"x"))
        assert is_error(reply, 400) and b"NUL" in reply[-1]
        for i in range(60):  # workers that come and go
            with Client(jobs) as passing:
                passing.sock.setsockopt(zmq.LINGER, 5000)  # let both messages leave
                passing.send([b"MDPW02", b"\x01", b"svc%d" % i])
                passing.send([b"MDPW02", b"\x06"])
    assert serves(jobs)
    assert "Traceback" not in proc.log()
    poll_until(lambda: proc.log().count("connected for service 'svc") >= 1, 10)
    assert proc.log().count("connected for service 'svc") <= 20  # rate limited

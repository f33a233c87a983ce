"""The job client (``wsgi_zmq.client``) against a scripted MDP/0.2 peer on real sockets.

``MDPServer`` is a plain pyzmq ROUTER bound to ``tcp://127.0.0.1:*`` (the port the OS chose
is read from ``LAST_ENDPOINT``), served by a thread of its own. It is a test peer, not a mock:
it checks that every request is an MDP/0.2 REQUEST, records it with the routing id of the
socket it came from, and lets the test's *behaviour* (run in the server thread) decide what
to send back: echo, silence, partials, the error triple, replies held back and sent late or
out of order. Nothing of zmq is replaced.

Every wait has a deadline: the clients' timeouts, ``join`` and ``joinall`` with timeouts,
``subprocess.run(timeout=...)``. Every server thread is joined and every socket closed with
linger 0 at teardown, and an error inside a behaviour fails the test that caused it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from support import poll_until, python_env
from wsgi_zmq.client import (
    EXIT_JOB_ERROR,
    FINAL,
    MDP_CLIENT,
    PARTIAL,
    REQUEST,
    Body,
    JobClient,
    JobError,
    JobTimeout,
    check_final,
    decode_reply,
    encode_request,
    load_curve_keys,
)
from wsgi_zmq.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, ProtocolError

#: How long a test waits for anything that should happen at once (a generous bound).
DEADLINE = 10.0
#: A client timeout for requests that are answered at once: failures show, slowness does not.
PATIENT = 5.0


# -- the scripted MDP/0.2 peer ----------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    """One REQUEST as the server received it."""

    peer: bytes  # the routing id of the client socket it came on
    service: str
    body: list[bytes]


Behaviour = Callable[["MDPServer", Incoming], None]
Serve = Callable[..., "MDPServer"]
Connect = Callable[..., JobClient]


class MDPServer(threading.Thread):
    """A ROUTER speaking MDP/Client 0.2 in its own thread; ``behaviour`` answers requests."""

    def __init__(self, behaviour: Behaviour, curve_secret: bytes | None = None) -> None:
        super().__init__(name="mdp-server", daemon=True)
        self.behaviour = behaviour
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.linger = 0
        if curve_secret is not None:
            self.router.curve_server = True
            self.router.curve_secretkey = curve_secret
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests: list[Incoming] = []
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    @property
    def peers(self) -> list[bytes]:
        """The routing ids of the requests, in order (one per client socket)."""
        return [request.peer for request in self.requests]

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.router.poll(20):
                    continue
                peer, *frames = self.router.recv_multipart()
                assert len(frames) >= 4, frames
                assert frames[:2] == [MDP_CLIENT, REQUEST], frames
                incoming = Incoming(peer, frames[2].decode(), frames[3:])
                self.requests.append(incoming)
                self.behaviour(self, incoming)
        except BaseException as exc:  # reported by stop(), in the test
            self.error = exc
        finally:
            self.router.close(linger=0)

    # called by behaviours, in the server thread
    def send(self, to: Incoming, command: bytes, *body: bytes) -> None:
        self.router.send_multipart([to.peer, MDP_CLIENT, command, to.service.encode(), *body])

    def final(self, to: Incoming, *body: bytes) -> None:
        self.send(to, FINAL, *body)

    def partial(self, to: Incoming, *body: bytes) -> None:
        self.send(to, PARTIAL, *body)

    def stop(self) -> None:
        self._stopping.set()
        self.join(DEADLINE)
        assert not self.is_alive(), "the MDP server thread did not stop"
        self.context.term()
        if self.error is not None:
            raise self.error


# behaviours

def echo(server: MDPServer, request: Incoming) -> None:
    server.final(request, *request.body)


def silent(server: MDPServer, request: Incoming) -> None:
    pass


def drop_first(n: int) -> Behaviour:
    """Ignore the first ``n`` requests, echo the others."""
    def behaviour(server: MDPServer, request: Incoming) -> None:
        if len(server.requests) > n:
            echo(server, request)
    return behaviour


def in_reverse_batches(size: int) -> Behaviour:
    """Hold requests until ``size`` are waiting, then echo them last first."""
    held: list[Incoming] = []

    def behaviour(server: MDPServer, request: Incoming) -> None:
        held.append(request)
        if len(held) == size:
            for waiting in reversed(held):
                echo(server, waiting)
            held.clear()
    return behaviour


def streaming(server: MDPServer, request: Incoming) -> None:
    server.partial(request, b"1")
    server.partial(request, b"2", b"2b")
    server.final(request, b"done")


def failing(code: bytes, message: bytes) -> Behaviour:
    def behaviour(server: MDPServer, request: Incoming) -> None:
        server.final(request, b"wsgi_zmq.error", code, message)
    return behaviour


def with_mmi(known: set[bytes]) -> Behaviour:
    """``mmi.service`` answers 200 for the names in ``known``, 404 for others; ``mmi.x``
    answers 501 (RFC 8/MMI); other services echo."""
    def behaviour(server: MDPServer, request: Incoming) -> None:
        if request.service == "mmi.service":
            server.final(request, b"200" if request.body[0] in known else b"404")
        elif request.service.startswith("mmi."):
            server.final(request, b"501")
        else:
            echo(server, request)
    return behaviour


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an ``MDPServer`` with a behaviour; every one is stopped and joined after."""
    servers: list[MDPServer] = []

    def start(behaviour: Behaviour, curve_secret: bytes | None = None) -> MDPServer:
        server = MDPServer(behaviour, curve_secret)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Make ``JobClient``s (plain zmq unless told); every one is closed after."""
    clients: list[JobClient] = []

    def make(endpoint: str, **options: object) -> JobClient:
        options.setdefault("service", "echo")
        options.setdefault("green", False)
        client = JobClient(endpoint, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- the wire format, without sockets ---------------------------------------------------------

def test_encode_request_frames() -> None:
    assert encode_request("echo", b"x") == [b"MDPC02", b"\x01", b"echo", b"x"]
    assert encode_request("echo", [b"a", bytearray(b"b"), memoryview(b"")]) == [
        b"MDPC02", b"\x01", b"echo", b"a", b"b", b""]
    with pytest.raises(ValueError, match="at least one body frame"):
        encode_request("echo", [])
    with pytest.raises(ValueError, match="service name is empty"):
        encode_request("", b"x")
    with pytest.raises(TypeError):
        encode_request("echo", "text")  # type: ignore[arg-type]


def test_decode_reply_and_check_final() -> None:
    assert decode_reply([b"MDPC02", b"\x02", b"echo", b"p"], "echo") == (False, [b"p"])
    assert decode_reply([b"MDPC02", b"\x03", b"echo", b"a", b"b"], "echo") == (
        True, [b"a", b"b"])
    for frames, words in [([b"MDPC02", b"\x03"], "2 frames"),
                          ([b"MDPC01", b"\x03", b"echo", b"x"], "starts with b'MDPC01'"),
                          ([b"MDPC02", b"\x01", b"echo", b"x"], "neither PARTIAL"),
                          ([b"MDPC02", b"\x03", b"other", b"x"], "service b'other'")]:
        with pytest.raises(ProtocolError, match=words):
            decode_reply(frames, "echo")
    assert check_final([b"wsgi_zmq.error", b"503"]) == [b"wsgi_zmq.error", b"503"]
    with pytest.raises(JobError) as raised:
        check_final([b"wsgi_zmq.error", b"500", "ValueError: é".encode()])
    assert (raised.value.code, raised.value.message) == (500, "ValueError: é")
    assert str(raised.value) == "500 ValueError: é"
    with pytest.raises(ProtocolError, match="not 3 digits"):
        check_final([b"wsgi_zmq.error", b"5x3", b"m"])


# -- request, call, stream --------------------------------------------------------------------

def test_request_echoes_frames_and_reuses_one_socket(serve: Serve, connect: Connect) -> None:
    """1. three requests one after the other, one and several frames
    2. each returns its own FINAL's frames
    3. they all came on one socket: a socket goes back to the pool after its FINAL"""
    server = serve(echo)
    client = connect(server.endpoint, timeout=PATIENT)
    assert client.request(b"one") == [b"one"]
    assert client.request([b"a", b"", b"c"]) == [b"a", b"", b"c"]
    assert client.call(b"three") == b"three"
    assert len(set(server.peers)) == 1
    assert [r.service for r in server.requests] == ["echo"] * 3


def test_call_refuses_a_reply_of_several_frames(serve: Serve, connect: Connect) -> None:
    def twice(server: MDPServer, request: Incoming) -> None:
        server.final(request, *request.body, *request.body)

    server = serve(twice)
    client = connect(server.endpoint, timeout=PATIENT)
    assert client.request(b"x") == [b"x", b"x"]
    with pytest.raises(ValueError, match="one frame, got 2"):
        client.call(b"x")


def test_service_is_required_and_per_call(serve: Serve, connect: Connect) -> None:
    server = serve(echo)
    client = connect(server.endpoint, service=None, timeout=PATIENT)
    with pytest.raises(ValueError, match="no service given"):
        client.request(b"x")
    assert client.request(b"x", service="other") == [b"x"]
    assert server.requests[-1].service == "other"


def test_bad_arguments_are_refused() -> None:
    for options, words in [({"timeout": 0}, "timeout=0"), ({"timeout": -1.0}, "timeout=-1"),
                           ({"retries": -1}, "retries=-1"), ({"retries": 1.5}, "retries=1.5")]:
        with pytest.raises(ValueError, match=words):
            JobClient("tcp://127.0.0.1:9", service="x", **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Bad endpoint"):
        JobClient("127.0.0.1:9", service="x")


def test_closed_client_refuses_requests(connect: Connect) -> None:
    client = connect("tcp://127.0.0.1:9")
    client.close()
    client.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        client.request(b"x")


def test_retry_uses_a_fresh_socket_until_answered(serve: Serve, connect: Connect) -> None:
    """1. the server ignores the first 2 requests, then echoes
    2. the client, timeout 0.3 s, retries: it gets the echo
    3. the server saw every attempt on a different socket (lazy pirate: close, reopen)"""
    server = serve(drop_first(2))
    client = connect(server.endpoint, timeout=0.3, retries=5)
    assert client.request(b"job") == [b"job"]
    assert len(server.requests) >= 3
    assert len(set(server.peers)) == len(server.requests)
    assert all(r.body == [b"job"] for r in server.requests)


def test_no_reply_raises_job_timeout_after_every_attempt(serve: Serve, connect: Connect) -> None:
    """1. the server never answers; the client has timeout 0.2 s and 2 retries
    2. ``JobTimeout`` says 3 attempts of 0.2 s, within a generous bound of time
    3. the server saw 3 requests, each on its own socket"""
    server = serve(silent)
    client = connect(server.endpoint, timeout=0.2, retries=2)
    started = time.monotonic()
    with pytest.raises(JobTimeout) as raised:
        client.request(b"job")
    assert time.monotonic() - started < DEADLINE
    assert raised.value.attempts == 3
    assert str(raised.value) == (f"no reply from {server.endpoint} for service 'echo' after "
                                 "3 attempts of 0.2 s")
    poll_until(lambda: len(server.requests) >= 3, DEADLINE, message="3 requests")
    assert len(server.requests) == 3
    assert len(set(server.peers)) == 3


def test_retries_zero_sends_once(serve: Serve, connect: Connect) -> None:
    server = serve(silent)
    client = connect(server.endpoint, timeout=0.2, retries=5)
    with pytest.raises(JobTimeout, match="after 1 attempt of 0.2 s"):
        client.request(b"job", retries=0)


def test_a_late_reply_is_never_taken_for_a_later_request(serve: Serve, connect: Connect) -> None:
    """1. request ``first`` times out (retries 0); the server held it back
    2. request ``second``: the server first sends the late reply to ``first``, then
       answers ``second``
    3. the client returns ``second``'s reply: ``first``'s socket was closed, not reused
       (the late reply went to a routing id that no longer exists)
    4. a third request still gets its own reply"""
    held: list[Incoming] = []

    def late(server: MDPServer, request: Incoming) -> None:
        if request.body == [b"first"]:
            held.append(request)
            return
        for old in held:
            server.final(old, b"late reply to first")
        held.clear()
        echo(server, request)

    server = serve(late)
    client = connect(server.endpoint, timeout=0.2, retries=0)
    with pytest.raises(JobTimeout):
        client.request(b"first")
    assert client.request(b"second", timeout=PATIENT) == [b"second"]
    assert client.request(b"third", timeout=PATIENT) == [b"third"]
    assert server.peers[0] != server.peers[1]


def test_a_late_reply_to_a_retried_attempt_is_dropped(serve: Serve, connect: Connect) -> None:
    """1. the server holds the first attempt, and answers it late, before the retry's
       answer, while the retry is in flight
    2. the request returns the retry's answer, never the stale one"""
    held: list[Incoming] = []

    def late(server: MDPServer, request: Incoming) -> None:
        if not held:
            held.append(request)
            return
        server.final(held[0], b"stale")
        server.final(request, b"fresh")

    server = serve(late)
    client = connect(server.endpoint, timeout=0.3, retries=3)
    assert client.request(b"job") == [b"fresh"]
    assert client.request(b"again", timeout=PATIENT) == [b"fresh"]
    assert server.peers[0] != server.peers[1]


def test_stream_yields_partials_then_final(serve: Serve, connect: Connect) -> None:
    server = serve(streaming)
    client = connect(server.endpoint, timeout=PATIENT)
    assert list(client.stream(b"go")) == [[b"1"], [b"2", b"2b"], [b"done"]]
    assert client.request(b"go") == [b"done"]  # request() reads and drops the partials
    assert len(set(server.peers)) == 1


def test_an_abandoned_stream_closes_its_socket(serve: Serve, connect: Connect) -> None:
    """1. read the first PARTIAL of a stream, then leave the loop
    2. the next request comes on a new socket (the old one had replies pending) and gets
       its own replies"""
    server = serve(streaming)
    client = connect(server.endpoint, timeout=PATIENT)
    for frames in client.stream(b"go"):
        assert frames == [b"1"]
        break
    assert list(client.stream(b"again")) == [[b"1"], [b"2", b"2b"], [b"done"]]
    assert server.peers[0] != server.peers[1]


def test_a_stream_is_not_retried_once_it_has_begun(serve: Serve, connect: Connect) -> None:
    """1. the server sends one PARTIAL and then nothing; the client has retries
    2. the stream yields the PARTIAL, then raises JobTimeout naming it
    3. the request was sent once: a retry would run the job's output again"""
    def one_partial(server: MDPServer, request: Incoming) -> None:
        server.partial(request, b"1")

    server = serve(one_partial)
    client = connect(server.endpoint, timeout=0.2, retries=3)
    seen: list[list[bytes]] = []
    with pytest.raises(JobTimeout, match="after 1 partial reply") as raised:
        for frames in client.stream(b"go"):
            seen.append(frames)
    assert seen == [[b"1"]]
    assert raised.value.partials == 1
    assert len(server.requests) == 1


def test_error_reply_raises_job_error_without_retry(serve: Serve, connect: Connect) -> None:
    server = serve(failing(b"503", b"no worker free for 'echo' within 1 s"))
    client = connect(server.endpoint, timeout=PATIENT, retries=3)
    with pytest.raises(JobError) as raised:
        client.request(b"job")
    assert raised.value.code == 503
    assert raised.value.message == "no worker free for 'echo' within 1 s"
    assert len(server.requests) == 1
    # the socket is clean after a FINAL, even an error one: it is reused
    with pytest.raises(JobError):
        client.call(b"job")
    assert len(set(server.peers)) == 1


def test_a_reply_that_is_not_mdp_raises_protocol_error(serve: Serve, connect: Connect) -> None:
    def garbage(server: MDPServer, request: Incoming) -> None:
        server.router.send_multipart([request.peer, b"HTTP/1.1 200 OK"])

    server = serve(garbage)
    client = connect(server.endpoint, timeout=PATIENT, retries=3)
    with pytest.raises(ProtocolError, match=f"{server.endpoint}: not an MDP/0.2 reply"):
        client.request(b"job")
    assert len(server.requests) == 1


def test_has_service_asks_mmi(serve: Serve, connect: Connect) -> None:
    server = serve(with_mmi({b"echo"}))
    client = connect(server.endpoint, timeout=PATIENT)
    assert client.has_service("echo") is True
    assert client.has_service("resize") is False
    assert server.requests[0].service == "mmi.service"
    assert server.requests[0].body == [b"echo"]


def test_has_service_on_a_broker_without_mmi(serve: Serve, connect: Connect) -> None:
    server = serve(failing(b"501", b"mmi.service is not implemented"))
    client = connect(server.endpoint, timeout=PATIENT)
    with pytest.raises(JobError) as raised:
        client.has_service("echo")
    assert raised.value.code == 501


# -- map --------------------------------------------------------------------------------------

def test_map_keeps_input_order_when_answers_come_reversed(serve: Serve, connect: Connect) -> None:
    """1. the server answers only once 4 requests wait, last first
    2. ``map`` of 4 bodies (one and several frames) has them in flight at once and returns
       the replies in input order, each on its own socket"""
    server = serve(in_reverse_batches(4))
    client = connect(server.endpoint, timeout=PATIENT, retries=0)
    bodies: list[Body] = [b"0", [b"1", b"1b"], b"2", [b"3"]]
    assert client.map(bodies) == [[b"0"], [b"1", b"1b"], [b"2"], [b"3"]]
    assert len(set(server.peers)) == 4


def test_map_bounds_its_requests_in_flight_and_retries_each(serve: Serve, connect: Connect) -> None:
    """1. 7 bodies, at most 2 in flight; the server drops the first request it sees
    2. every reply comes back in order; the dropped one was sent again on a new socket"""
    server = serve(drop_first(1))
    client = connect(server.endpoint, timeout=0.3, retries=3)
    bodies = [b"%d" % i for i in range(7)]
    assert client.map(bodies, max_in_flight=2) == [[body] for body in bodies]
    assert len(server.requests) >= 8
    dropped = server.requests[0].body  # b"0" or b"1": their sockets connect at once
    assert dropped in ([b"0"], [b"1"])
    assert len({r.peer for r in server.requests if r.body == dropped}) >= 2
    assert client.map([]) == []


def test_map_errors_raise_or_take_their_place(serve: Serve, connect: Connect) -> None:
    def picky(server: MDPServer, request: Incoming) -> None:
        if request.body == [b"bad"]:
            server.final(request, b"wsgi_zmq.error", b"500", b"ValueError: bad")
        elif request.body != [b"mute"]:
            echo(server, request)

    server = serve(picky)
    client = connect(server.endpoint, timeout=0.2, retries=1)
    results = client.map([b"ok", b"bad", b"mute", b"fine"], return_exceptions=True)
    assert results[0] == [b"ok"] and results[3] == [b"fine"]
    assert isinstance(results[1], JobError) and results[1].code == 500
    assert isinstance(results[2], JobTimeout) and results[2].attempts == 2
    with pytest.raises(JobError, match="500 ValueError: bad"):
        client.map([b"ok", b"bad"], timeout=PATIENT)


# -- CURVE ------------------------------------------------------------------------------------

curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@curve
def test_curve_link(serve: Serve, connect: Connect, tmp_path: Path) -> None:
    """1. a broker with a CURVE key pair; the client with its own pair and the broker's
       public key file
    2. a request gets its echo over the encrypted link"""
    broker_public, broker_secret = zmq.auth.create_certificates(tmp_path, "broker")
    _, client_secret = zmq.auth.create_certificates(tmp_path, "client")
    server = serve(echo, curve_secret=zmq.auth.load_certificate(broker_secret)[1])
    client = connect(server.endpoint, timeout=PATIENT, curve_secret_key=client_secret,
                     curve_server_key=broker_public)
    assert client.call(b"secret") == b"secret"


@curve
def test_curve_key_files_are_checked(tmp_path: Path) -> None:
    public, secret = zmq.auth.create_certificates(tmp_path, "client")
    assert load_curve_keys(None, None) is None
    keys = load_curve_keys(secret, public)
    assert keys is not None and keys.public == keys.server
    with pytest.raises(ConfigError, match="without curve_secret_key"):
        load_curve_keys(None, public)
    with pytest.raises(ConfigError, match="without curve_server_key"):
        load_curve_keys(secret, None)
    with pytest.raises(ConfigError, match="holds no secret key"):
        load_curve_keys(public, public)
    with pytest.raises(ConfigError, match="no such file"):
        load_curve_keys(secret, str(tmp_path / "missing.key"))


# -- gevent -----------------------------------------------------------------------------------

def test_greenlets_share_one_green_client(serve: Serve, connect: Connect) -> None:
    """1. the server answers only once 5 requests wait, last first
    2. 5 greenlets call ``request`` on one green client at once (no retries, so a client
       that made them wait for each other would time out)
    3. each greenlet gets its own reply; the server saw 5 sockets"""
    gevent = pytest.importorskip("gevent")
    server = serve(in_reverse_batches(5))
    client = connect(server.endpoint, green=True, timeout=PATIENT, retries=0)
    assert client.green
    greenlets = [gevent.spawn(client.request, [b"%d" % i]) for i in range(5)]
    gevent.joinall(greenlets, timeout=DEADLINE, raise_error=True)
    assert all(g.ready() for g in greenlets)
    assert [g.value for g in greenlets] == [[b"%d" % i] for i in range(5)]
    assert len(set(server.peers)) == 5


def test_close_ends_green_requests_in_flight(serve: Serve) -> None:
    """1. a greenlet waits (timeout 5 s) on a server that never answers
    2. another closes the client: the waiting request raises ValueError, well before its
       timeout would have ended it"""
    gevent = pytest.importorskip("gevent")
    server = serve(silent)
    client = JobClient(server.endpoint, service="x", green=True, timeout=PATIENT, retries=0)
    waiting = gevent.spawn(client.request, b"x")
    deadline = time.monotonic() + DEADLINE
    while not server.requests and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert server.requests
    client.close()
    waiting.join(timeout=DEADLINE)
    assert waiting.ready()
    assert isinstance(waiting.exception, ValueError)
    assert "closed while the request was in flight" in str(waiting.exception)


@pytest.mark.parametrize("green", [False, True])
def test_a_given_context_is_used_and_left_open(serve: Serve, green: bool) -> None:
    """A plain ``zmq.Context`` serves a plain client, and a green one through a shadow;
    ``close`` leaves the caller's context open."""
    if green:
        pytest.importorskip("gevent")
    server = serve(echo)
    context = zmq.Context()
    try:
        with JobClient(server.endpoint, service="echo", context=context, green=green,
                       timeout=PATIENT) as client:
            assert client.call(b"x") == b"x"
        assert not context.closed
    finally:
        context.term()


def test_green_is_chosen_when_gevent_patched_socket() -> None:
    """In a fresh interpreter: importing the client imports no gevent and picks plain zmq;
    after ``gevent.monkey.patch_all()`` a new client picks ``zmq.green``."""
    code = (
        "import sys\n"
        "from wsgi_zmq.client import JobClient\n"
        "assert not [m for m in sys.modules if m.startswith(('gevent', 'zmq.green'))]\n"
        "client = JobClient('tcp://127.0.0.1:9', service='x'); print(client.green)\n"
        "client.close()\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "client = JobClient('tcp://127.0.0.1:9', service='x'); print(client.green)\n"
        "client.close()\n")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=python_env(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


# -- the command line -------------------------------------------------------------------------

def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m wsgi_zmq.client ARGS``."""
    return subprocess.run([sys.executable, "-m", "wsgi_zmq.client", *args], input=stdin,
                          env=python_env(), capture_output=True, timeout=60, check=False)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("wsgi_zmq.client: ")
    return lines[0]


def test_cli_prints_the_reply(serve: Serve) -> None:
    server = serve(echo)
    result = cli(server.endpoint, "--service", "echo", "hello", "two\n", "")
    assert (result.returncode, result.stderr) == (EXIT_OK, b"")
    assert result.stdout == b"hello\ntwo\n\n"


def test_cli_prints_partials_as_they_come(serve: Serve) -> None:
    server = serve(streaming)
    result = cli(server.endpoint, "--service", "report", "go")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == b"1\n2\n2b\ndone\n"


def test_cli_reads_a_frame_from_stdin(serve: Serve) -> None:
    server = serve(echo)
    result = cli(server.endpoint, "--service", "echo", "name", "-", stdin=b"\x00\xff bytes")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == b"name\n\x00\xff bytes\n"
    assert server.requests[0].body == [b"name", b"\x00\xff bytes"]


def test_cli_no_reply_exits_1(serve: Serve) -> None:
    """1. a server that never answers; --timeout 0.2 --retries 1
    2. exit 1; stderr has the retry line, then one line naming endpoint, service, attempts
    3. with --quiet only that last line"""
    server = serve(silent)
    result = cli(server.endpoint, "--service", "x", "--timeout", "0.2", "--retries", "1", "p")
    assert result.returncode == EXIT_FAILURE
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines == [
        f"wsgi_zmq.client: no reply from {server.endpoint} for service 'x' within 0.2 s: "
        "retrying (1/1)",
        f"wsgi_zmq.client: no reply from {server.endpoint} for service 'x' after 2 attempts "
        "of 0.2 s"]
    quiet = cli(server.endpoint, "--service", "x", "--timeout", "0.2", "--retries", "1",
                "--quiet", "p")
    assert quiet.returncode == EXIT_FAILURE
    assert one_line(quiet.stderr) == lines[1]


def test_cli_reply_not_mdp_exits_1(serve: Serve) -> None:
    def garbage(server: MDPServer, request: Incoming) -> None:
        server.router.send_multipart([request.peer, b"HTTP/1.1 200 OK"])

    server = serve(garbage)
    result = cli(server.endpoint, "--service", "x", "p")
    assert result.returncode == EXIT_FAILURE
    assert "not an MDP/0.2 reply" in one_line(result.stderr)


def test_cli_error_reply_exits_3(serve: Serve) -> None:
    server = serve(failing(b"503", b"no worker free for 'x' within 1 s"))
    result = cli(server.endpoint, "--service", "x", "p")
    assert result.returncode == EXIT_JOB_ERROR == 3
    assert one_line(result.stderr) == "wsgi_zmq.client: 503 no worker free for 'x' within 1 s"


@pytest.mark.parametrize("args, words", [
    (["tcp://127.0.0.1:9", "p"], "required: --service"),
    (["tcp://127.0.0.1:9", "--service", "x"], "PAYLOAD"),
    (["tcp://127.0.0.1:9", "--service", "x", "--timeout", "0", "p"], "'0' is not a number"),
    (["tcp://127.0.0.1:9", "--service", "x", "--retries", "-1", "p"], "'-1' is not a whole"),
    (["nowhere", "--service", "x", "p"], "Bad endpoint 'nowhere'"),
    (["tcp://127.0.0.1:9", "--service", "x", "-", "-"], "stdin can be read only once"),
    (["tcp://127.0.0.1:9", "--service", "x", "--curve-server-key", "missing.key", "p"],
     "without curve_secret_key"),
])
def test_cli_bad_usage_exits_2(args: list[str], words: str) -> None:
    result = cli(*args)
    assert result.returncode == EXIT_CONFIG
    assert result.stdout == b""
    assert words in one_line(result.stderr)


@curve
def test_cli_unreadable_key_file_exits_2(tmp_path: Path) -> None:
    _, secret = zmq.auth.create_certificates(tmp_path, "client")
    result = cli("tcp://127.0.0.1:9", "--service", "x", "--curve-secret-key", secret,
                 "--curve-server-key", str(tmp_path / "missing.key"), "p")
    assert result.returncode == EXIT_CONFIG
    assert "missing.key: no such file" in one_line(result.stderr)


def test_cli_help_lists_the_exit_codes() -> None:
    result = cli("--help")
    assert result.returncode == EXIT_OK
    assert b"Exit codes:" in result.stdout and b"--service NAME" in result.stdout

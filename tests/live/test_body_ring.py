"""Body rings, live: request bodies through shared memory between a front and a worker on
its host (``body_ring``), and the offers a front refuses.

The first tests run a real front and real workers and check every upload's bytes (the app
answers their sha256) in every shape a body comes in; ``wsgi_zmq_body_ring_bytes_total``
shows they went through the ring. The others connect raw workers written in the test: a
DEALER that offers a ring the test made (a real ``WorkerRing``, or a memfd or file built to
fail one check) and reads what the front sends, record by record. After each refusal the
front still serves."""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import re
import select
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from support import connect, get, poll_until, read_responses
from wsgi_zmq import protocol
from wsgi_zmq.control import call
from wsgi_zmq.protocol import RING_HEADER, RING_MAGIC
from wsgi_zmq.ring import SUPPORTED, WorkerPipe, WorkerRing, write_frame

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="no memfd seals on this system")

HOST = socket.gethostname()
UPLOAD = "/upload"


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(rf"^wsgi_zmq_{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in the metrics"
    return float(match.group(1))


def _request(body: bytes, how: str) -> bytes:
    """A PUT of ``body``: ``length`` (Content-Length), ``chunked`` (in pieces of varied
    size), ``expect`` (Content-Length and Expect: 100-continue, sent without waiting)."""
    head = f"PUT {UPLOAD} HTTP/1.1\r\nHost: x\r\n"
    if how == "chunked":
        pieces, at, size = [], 0, 1
        while at < len(body):
            piece = body[at:at + size]
            pieces.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            at += len(piece)
            size = size * 7 % 300_001 + 1
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(pieces) + \
            b"0\r\n\r\n"
    if how == "expect":
        head += "Expect: 100-continue\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _upload(port: int, body: bytes, how: str = "length") -> dict[str, object]:
    with connect(port, timeout=60) as sock:
        sock.sendall(_request(body, how))
        responses, _ = read_responses(sock, 2 if how == "expect" else 1, timeout=60)
    final = responses[-1]
    assert final.status == 200, final
    answer: dict[str, object] = json.loads(final.body)
    return answer


def _check(port: int, body: bytes, how: str = "length") -> None:
    answer = _upload(port, body, how)
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}, how


def _hello(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get("/"))
        [response], _ = read_responses(sock, 1)
    assert response.status == 200 and response.body == b"Hello, world!\n"


def test_uploads_go_through_the_ring_whole_in_every_shape(stack):
    """1. a front and one sync worker (default settings): the worker offers its ring, the
    front takes it (logged) 2. uploads of 1 B to 3 MiB with Content-Length (a piece that
    fills a slot, one byte more), chunked in odd pieces, and with Expect: 100-continue:
    every byte arrives, in order 3. the metric of ring bytes grew by at least the
    Content-Length bodies past their first read 4. a GET after them is served."""
    front, handler, port = stack.serve(front_args=("--metrics-bind", "127.0.0.1:0"))
    front.wait_for_log(r"Worker \d+@\S+ shares a body ring: 4 request\(s\) of 8 pieces of "
                       r"256 KiB")
    metrics_port = int(front.wait_for_log(r"Metrics at: http://[\d.]+:(\d+)").group(1))
    before = _metric(metrics_port, "body_ring_bytes_total")
    sizes = (1, 65535, 262144, 262145, 1 << 20, 3 * (1 << 20) + 7)
    for size in sizes:
        _check(port, os.urandom(size))
    _check(port, os.urandom(2 << 20), "chunked")
    _check(port, os.urandom(1 << 20), "expect")
    grown = _metric(metrics_port, "body_ring_bytes_total") - before
    assert grown >= (3 << 20), f"only {grown} bytes went through the ring"
    _hello(port)


def test_concurrent_uploads_past_the_ring_share_it_and_go_inline(stack):
    """1. a gevent worker with a ring of 2 requests and a window of 2 (a slot is reused
    every 2 pieces) 2. eight clients upload 2 MiB each at once: at most 2 go through the
    ring at a time, the rest in messages; every upload arrives whole and unmixed 3. the
    same again, to reuse groups that were freed 4. a GET is served."""
    front, handler, port = stack.serve(
        handler_args=("--worker-class", "gevent", "--body-ring", "2", "--window", "2"))
    front.wait_for_log(r"shares a body ring: 2 request\(s\) of 2 pieces")
    failures: list[BaseException] = []

    def run(body: bytes) -> None:
        try:
            _check(port, body)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    for _ in range(2):
        bodies = [os.urandom(2 << 20) for _ in range(8)]
        threads = [threading.Thread(target=run, args=(body,)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
    _hello(port)


def test_a_worker_or_front_with_body_ring_0_sends_bodies_in_messages(stack):
    """``--body-ring 0`` on the worker: it offers no ring; on the front: it takes none.
    Uploads arrive whole either way."""
    front, handler, port = stack.serve(handler_args=("--body-ring", "0"))
    body = os.urandom(1 << 20)
    _check(port, body)
    assert "shares a body ring" not in front.log()
    other, _, other_port = stack.serve(front_args=("--body-ring", "0"))
    _check(other_port, body)
    assert "shares a body ring" not in other.log()


def test_a_worker_killed_mid_upload_takes_its_ring_with_it(stack):
    """1. a front and a pool of one worker 2. an upload that the app reads slowly, its
    body in the ring 3. SIGKILL of the worker: the front unmaps the ring with the worker
    (the client gets 502: a PUT that ran cannot be replayed) 4. the pool's next worker
    offers a new ring, and uploads through it arrive whole."""
    front, handler, port = stack.serve()
    front.wait_for_log(r"shares a body ring", count=1)
    mark = stack.tmp_path / "reading"
    pid = {}

    def upload_slowly() -> None:
        with connect(port, timeout=60) as sock:
            body = b"z" * (8 << 20)
            sock.sendall(f"PUT /upload?mark={mark} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            try:
                sock.sendall(body[:1 << 20])
                poll_until(mark.exists, 20, message="the app to read")
                pid["worker"] = int(mark.read_text().split()[0])
                os.kill(pid["worker"], signal.SIGKILL)
                sock.sendall(body[1 << 20:])
            except OSError:
                pass  # the front may close the connection before all of it is sent
            try:
                responses, _ = read_responses(sock, 1, timeout=30)
            except (OSError, AssertionError):
                responses = []
            pid["status"] = responses[0].status if responses else 0

    client = threading.Thread(target=upload_slowly)
    client.start()
    client.join(60)
    assert pid.get("status") in (0, 502), pid
    front.wait_for_log(rf"Worker {pid['worker']}@\S+ lost")
    front.wait_for_log(r"shares a body ring", count=2)
    _check(port, os.urandom(3 << 20))
    _hello(port)


# -- raw workers -------------------------------------------------------------------------------

class RawWorker:
    """A DEALER that says READY (capacity 1, window 4) from this host and offers what the
    test gives it; it serves one upload at a time by hand (``serve_upload``)."""

    WINDOW = 4

    def __init__(self, ctx: zmq.Context, endpoint: str, pid: int) -> None:
        self.pid = pid
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ring: WorkerRing | None = None
        self.pipe: WorkerPipe | None = None  # once PIPED came (``on``), the front's frames
        self.kinds: list[int] = []  # of the body records of the last upload
        self.send(protocol.encode_ready(1, self.WINDOW, pid, HOST))

    def send(self, record: bytes) -> None:
        frame = protocol.frame([record])
        if self.pipe is not None and self.pipe.sending:
            assert write_frame(self.pipe.back, frame, 10), "the front does not read our pipe"
        else:
            self.sock.send(frame)

    def share_ring(self, front: Any) -> None:
        """Offer a ring of 2 requests of a window of pieces of 256 KiB; wait until
        ``front`` took it."""
        self.ring = WorkerRing(2, self.WINDOW, 262144)
        self.send(self.ring.offer(os.getpid()))
        front.wait_for_log(rf"Worker {self.pid}@\S+ shares a body ring: 2 request\(s\) of "
                           rf"{self.WINDOW} pieces")

    def offer_pipe(self, pid: int | None = None, fd: int | None = None,
                   back: int | None = None) -> None:
        """Offer pipes (PIPE): this process's own, unless ``pid``, ``fd`` or ``back`` say
        else. On PIPED it switches, as ours does: PIPED back, then its frames through the
        back pipe."""
        self.pipe = WorkerPipe()
        self.send(protocol.encode_pipe(os.getpid() if pid is None else pid,
                                       self.pipe.fd if fd is None else fd,
                                       self.pipe.back if back is None else back))

    def records(self, timeout: float) -> Iterator[protocol.Record]:
        """What the front sends, through the socket until PIPED, then through the pipe
        (nothing may come through the socket after PIPED)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the front sent nothing in time"
            pipe = self.pipe
            if pipe is not None and pipe.on:
                assert not self.sock.poll(0), "a frame through the socket after PIPED"
                if select.select([pipe.fd], [], [], min(left, 0.5))[0]:
                    frames, ended = pipe.frames()
                    assert not ended, "the front closed the pipe"
                    for data in frames:
                        yield from protocol.split_frame(data)
                continue
            if self.sock.poll(int(left * 1000)):
                for record in protocol.split_frame(self.sock.recv()):
                    if record.kind == protocol.PIPED:
                        assert pipe is not None and not pipe.on, "PIPED, no pipe offered"
                        pipe.on = True
                        self.send(protocol.encode_signal(protocol.PIPED))
                        pipe.sending = True
                    yield record

    def serve_upload(self, timeout: float = 30.0) -> bytes:
        """Take a REQUEST, grant a window, take its body (BODY or BODY_AT, granting one
        per piece taken) until END, answer 200; return the body."""
        rid = 0
        body = []
        self.kinds = []
        for record in self.records(timeout):
            if record.kind == protocol.REQUEST:
                rid = record.rid
                body.append(protocol.decode_request(record.payload).body)
                self.send(protocol.encode_credit(rid, self.WINDOW))
            elif record.kind in (protocol.BODY, protocol.BODY_AT) and record.rid == rid:
                self.kinds.append(record.kind)
                if record.kind == protocol.BODY:
                    body.append(record.payload)
                else:
                    assert self.ring is not None, "BODY_AT to a worker without a ring"
                    piece = self.ring.read(record.payload)
                    assert piece is not None, "BODY_AT names no slot"
                    body.append(piece)
                self.send(protocol.encode_credit(rid, 1))
            elif record.kind == protocol.END and record.rid == rid:
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                self.send(protocol.encode_response(rid, protocol.RESP_END, head))
                return b"".join(body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.ring is not None:
            self.ring.close()
        if self.pipe is not None:
            self.pipe.close()


def _put_async(port: int, body: bytes, statuses: list[int]) -> threading.Thread:
    def run() -> None:
        with connect(port, timeout=60) as sock:
            sock.sendall(_request(body, "length"))
            [response], _ = read_responses(sock, 1, timeout=60)
            statuses.append(response.status)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _serve_one(raw: RawWorker, port: int, size: int = 3 << 20) -> list[int]:
    """One upload through ``raw``: the bytes arrive whole; the kinds of its body records."""
    body = os.urandom(size)
    statuses: list[int] = []
    client = _put_async(port, body, statuses)
    got = raw.serve_upload()
    client.join(60)
    assert got == body and statuses == [200]
    return raw.kinds


def _memfd(slots: int, header: bytes, seals: int) -> int:
    fd = os.memfd_create("hostile-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, RING_HEADER + slots * 262144)
    os.pwrite(fd, header, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_a_raw_worker_gets_its_body_through_its_ring_and_cannot_shrink_it(stack):
    """1. a raw worker offers a real ring of its own: the front takes it 2. a 3 MiB
    upload: every piece after the first comes as BODY_AT naming a slot of the ring (at most
    a window of slots in use), and the bytes read from the slots are the body 3. the ring
    is sealed: the worker cannot shrink it under the front's mapping 4. a second RING on
    the same connection is dropped and logged; the ring in use stays."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    raw = RawWorker(ctx, endpoint, 4301)
    try:
        front.wait_for_log(r"Worker 4301@\S+ connected")
        raw.share_ring(front)
        kinds = _serve_one(raw, port)
        assert kinds.count(protocol.BODY_AT) >= 10, kinds
        with pytest.raises(PermissionError):
            os.ftruncate(raw.ring.fd, RING_HEADER)
        raw.send(raw.ring.offer(os.getpid()))
        front.wait_for_log(r"Dropped a second RING from <worker 4301")
        assert _serve_one(raw, port).count(protocol.BODY_AT) >= 10
    finally:
        raw.close()
        ctx.term()


@pytest.mark.parametrize("case", ["unsealed", "nonce", "file", "replay", "pid"])
def test_an_offer_that_fails_a_check_is_refused_and_bodies_go_in_messages(stack, case):
    """A raw worker offers a ring that fails one check: a memfd that may shrink, one whose
    header holds another nonce, a file on disk, another worker's ring (the offer replayed),
    a pid with no such descriptor. The front refuses it (logged with the reason), sends
    that worker's upload in BODY records, and serves on."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    owner: RawWorker | None = None
    raw = RawWorker(ctx, endpoint, 4401)
    closing: list[int] = []
    try:
        front.wait_for_log(r"Worker 4401@\S+ connected")
        nonce = b"k" * 16
        if case == "unsealed":
            fd = _memfd(8, RING_MAGIC + nonce, 0)
            closing.append(fd)
            offer = protocol.encode_ring(os.getpid(), fd, 8, 262144, nonce)
            reason = "not sealed against shrinking"
        elif case == "nonce":
            fd = _memfd(8, RING_MAGIC + nonce, fcntl.F_SEAL_SHRINK)
            closing.append(fd)
            offer = protocol.encode_ring(os.getpid(), fd, 8, 262144, b"j" * 16)
            reason = "does not hold the ring offered"
        elif case == "file":
            path = stack.tmp_path / "ring"
            path.write_bytes(RING_MAGIC + nonce + bytes(RING_HEADER - 48 + 8 * 262144))
            fd = os.open(path, os.O_RDWR)
            closing.append(fd)
            offer = protocol.encode_ring(os.getpid(), fd, 8, 262144, nonce)
            reason = "is no memfd"
        elif case == "replay":
            owner = RawWorker(ctx, endpoint, 4402)
            front.wait_for_log(r"Worker 4402@\S+ connected")
            owner.share_ring(front)
            assert owner.ring is not None
            offer = owner.ring.offer(os.getpid())
            reason = "another worker's ring"
        else:
            offer = protocol.encode_ring(2 ** 31, 3, 8, 262144, nonce)
            reason = "No such file"
        raw.send(offer)
        front.wait_for_log(rf"Refused the body ring of <worker 4401\S* [^\n]*(?:{reason})")
        if owner is not None:  # the ring's owner leaves, so the upload goes to ``raw``
            owner.close()
            owner = None
            front.wait_for_log(r"Worker 4402@\S+ lost")
        kinds = _serve_one(raw, port)
        assert set(kinds) == {protocol.BODY}, kinds
        assert "Worker 4401" not in "".join(
            line for line in front.log().splitlines() if "shares a body ring" in line)
    finally:
        raw.close()
        if owner is not None:
            owner.close()
        ctx.term()
        for fd in closing:
            os.close(fd)


def test_a_malformed_ring_offer_is_dropped_and_the_worker_serves_on(stack):
    """A RING whose slots are no whole pages is malformed: dropped and logged; the worker
    still serves, its bodies in BODY records."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    raw = RawWorker(ctx, endpoint, 4501)
    try:
        front.wait_for_log(r"Worker 4501@\S+ connected")
        raw.send(protocol.RECORD_HEAD.pack(protocol.RING, 0, protocol.RING_HEAD.size)
                 + protocol.RING_HEAD.pack(os.getpid(), 3, 8, 100, bytes(16)))
        front.wait_for_log(r"Dropped a malformed RING from <worker 4501")
        assert set(_serve_one(raw, port, 1 << 20)) == {protocol.BODY}
    finally:
        raw.close()
        ctx.term()


# -- early credit -------------------------------------------------------------------------------

def _body_records(raw: RawWorker, seconds: float) -> list[protocol.Record]:
    """Every record the front sends ``raw`` for ``seconds``, in order (no deadline fails)."""
    got: list[protocol.Record] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if raw.sock.poll(int(left * 1000)):
            got.extend(r for r in protocol.split_frame(raw.sock.recv())
                       if r.kind != protocol.HEARTBEAT)
    return got


def _ringed(ctx: zmq.Context, endpoint: str, front, pid: int) -> RawWorker:
    raw = RawWorker(ctx, endpoint, pid)
    front.wait_for_log(rf"Worker {pid}@\S+ connected")
    raw.share_ring(front)
    return raw


def test_early_pieces_count_against_the_first_credit_and_come_back_after_reject(stack):
    """1. a raw worker with a ring (window 4 of 256 KiB); a client PUTs 3 MiB 2. before the
    worker grants anything, the first pieces of the body come in BODY_AT records (early
    credit: at most 1 MiB, and at most its window), then nothing more 3. the worker writes
    over its whole ring (it may: the memfd is its own) and hands the request back (REJECT)
    without reading a byte; a second raw worker, with a ring of its own, gets the REQUEST
    and the same first pieces again, early, from the front's copies: the client's bytes 4.
    its first CREDIT (its window) counts the pieces already sent: no more come until it
    grants more, and then exactly as many as it grants 5. it takes the rest; the body is
    the client's, and the client gets the second worker's 200 6. the front serves on (its
    invariants held throughout: ``Dispatcher.check`` asserts the early credit)."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    first = _ringed(ctx, endpoint, front, 4601)
    second: RawWorker | None = None
    try:
        body = os.urandom(3 << 20)
        statuses: list[int] = []
        client = _put_async(port, body, statuses)
        records = _body_records(first, 1.0)
        [request] = [r for r in records if r.kind == protocol.REQUEST]
        early = [r for r in records if r.kind == protocol.BODY_AT]
        assert 1 <= len(early) <= RawWorker.WINDOW, records
        assert not [r for r in records if r.kind == protocol.BODY], "early BODY, not BODY_AT"
        assert first.ring is not None
        start = protocol.decode_request(request.payload).body
        seen = start + b"".join(first.ring.read(r.payload) or b"!" for r in early)
        assert 0 < len(seen) - len(start) < (1 << 20) + 262144 and body.startswith(seen)
        second = _ringed(ctx, endpoint, front, 4602)
        # a hostile worker may write its own ring (it has the memfd): the front sends
        # the copies it kept, never what the slots hold now
        scribble = mmap.mmap(first.ring.fd, len(first.ring.mm), mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        scribble[RING_HEADER:] = b"!" * (len(scribble) - RING_HEADER)
        scribble.close()
        first.send(protocol.encode_signal(protocol.REJECT, request.rid))
        records = _body_records(second, 1.0)
        [again] = [r for r in records if r.kind == protocol.REQUEST]
        early = [r for r in records if r.kind == protocol.BODY_AT]
        assert second.ring is not None and early
        body_again = protocol.decode_request(again.payload).body + b"".join(
            second.ring.read(r.payload) or b"!" for r in early)
        assert body.startswith(body_again) and len(body_again) >= len(seen)
        second.send(protocol.encode_credit(again.rid, RawWorker.WINDOW))
        assert not [r for r in _body_records(second, 0.3) if r.kind == protocol.BODY_AT], \
            "the first CREDIT did not count the early pieces"
        got = [body_again]
        granted = 1
        second.send(protocol.encode_credit(again.rid, granted))
        ended = False
        while not ended:
            for record in second.records(20):
                if record.kind == protocol.BODY_AT:
                    got.append(second.ring.read(record.payload) or b"!")
                    second.send(protocol.encode_credit(again.rid, 1))
                elif record.kind == protocol.END:
                    ended = True
                    break
        assert b"".join(got) == body
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        second.send(protocol.encode_response(again.rid, protocol.RESP_END, head))
        client.join(30)
        assert statuses == [200]
        first.close()  # so that the next upload goes to ``second``
        front.wait_for_log(r"Worker 4601@\S+ lost")
        assert _serve_one(second, port, 1 << 20).count(protocol.BODY_AT) >= 3
    finally:
        if not first.sock.closed:
            first.close()
        if second is not None:
            second.close()
        ctx.term()


def test_a_client_that_waits_for_100_continue_gets_no_early_credit(stack):
    """A PUT with Expect: 100-continue to a worker with a ring: the front sends the worker
    only the REQUEST and the client no 100 Continue until the worker's CREDIT; then both."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    raw = _ringed(ctx, endpoint, front, 4701)
    try:
        with connect(port, timeout=30) as sock:
            sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 1048576\r\n\r\n")
            records = _body_records(raw, 0.5)
            [request] = [r for r in records if r.kind == protocol.REQUEST]
            assert [r.kind for r in records] == [protocol.REQUEST], records
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(100)
            raw.send(protocol.encode_credit(request.rid, RawWorker.WINDOW))
            sock.settimeout(10)
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"c" * (1 << 20))
            got = protocol.decode_request(request.payload).body
            for record in raw.records(20):
                if record.kind == protocol.BODY_AT:
                    assert raw.ring is not None
                    got += raw.ring.read(record.payload) or b"!"
                    raw.send(protocol.encode_credit(request.rid, 1))
                elif record.kind == protocol.END:
                    break
            assert got == b"c" * (1 << 20)
            raw.send(protocol.encode_response(
                request.rid, protocol.RESP_END, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
            [response], _ = read_responses(sock, 1)
            assert response.status == 200
    finally:
        raw.close()
        ctx.term()


# -- the frame pipe ----------------------------------------------------------------------------

PIPED_LOG = r"Worker (\d+)@\S+ reads the front's frames from a pipe"


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_a_local_worker_reads_the_fronts_frames_from_a_pipe(stack, worker_class):
    """1. a front and one worker (sync or gevent): the worker offers a pipe with its ring,
    the front takes it (logged; ``status`` shows ``pipe``) 2. GETs, uploads with
    Content-Length and chunked, pipelined requests: all answered, every byte right
    3. SIGKILL of the worker: the front drops it; the pool's next worker gets a pipe of
    its own, and serves."""
    control = str(stack.tmp_path / "front.ctl")
    front, handler, port = stack.serve(front_args=("--control-socket", control),
                                       handler_args=("--worker-class", worker_class))
    pid = int(front.wait_for_log(PIPED_LOG).group(1))
    [pool] = call(control, "status")["pools"]
    assert [(w["pid"], w["pipe"]) for w in pool["workers"]] == [(pid, True)]
    for size in (0, 1, 300_000, 3 << 20):
        _check(port, os.urandom(size))
    _check(port, os.urandom(1 << 20), "chunked")
    with connect(port) as sock:
        sock.sendall(get("/") * 20)
        responses, _ = read_responses(sock, 20)
    assert [r.status for r in responses] == [200] * 20
    os.kill(pid, signal.SIGKILL)
    other = int(front.wait_for_log(PIPED_LOG, count=2).group(1))
    assert other != pid
    poll_until(lambda: [w["pid"] for w in call(control, "status")["pools"][0]["workers"]]
               == [other], 20, message="the killed worker to be dropped")
    _check(port, os.urandom(1 << 20))
    _hello(port)


def test_frame_pipes_off_on_a_worker_or_a_front_keep_the_frames_on_the_socket(stack):
    """``--frame-pipes off`` on the worker: it offers no pipes; on the front: it takes
    none (and refuses nothing). Either way the ring is shared, an upload arrives whole
    and a GET is served, through the socket."""
    front, _, port = stack.serve(handler_args=("--frame-pipes", "off"))
    other, _, other_port = stack.serve(front_args=("--frame-pipes", "off"))
    for proc, at in ((front, port), (other, other_port)):
        proc.wait_for_log(r"shares a body ring")
        _check(at, os.urandom(1 << 20))
        _hello(at)
        log = proc.log()
        assert "reads the front's frames" not in log and "Refused the pipes" not in log


def test_a_raw_worker_gets_every_frame_through_its_pipe_after_piped(stack):
    """1. a raw worker offers a ring, then a pipe: PIPED comes through the socket, and
    from then on every record (REQUEST, BODY_AT, END, HEARTBEAT) through the pipe; an upload
    arrives whole 2. the worker closes its pipe, its socket still open: the front's next
    frame finds the pipe closed and drops the worker (logged) 3. the front serves on."""
    front, port, endpoint = stack.front("--heartbeat", "1")
    ctx = zmq.Context()
    raw = RawWorker(ctx, endpoint, 4501)
    try:
        front.wait_for_log(r"Worker 4501@\S+ connected")
        raw.share_ring(front)
        raw.offer_pipe()
        front.wait_for_log(r"Worker 4501@\S+ reads the front's frames from a pipe")
        kinds = _serve_one(raw, port)
        assert raw.pipe is not None and raw.pipe.on
        assert kinds.count(protocol.BODY_AT) >= 10, kinds
        raw.pipe.close()
        front.wait_for_log(r"Worker 4501@\S+ lost \(its pipe closed\)")
        handler = stack.handler("apps.echo:router", endpoint)
        front.wait_for_log(PIPED_LOG)
        assert handler.alive()
        _hello(port)
    finally:
        raw.close()
        ctx.term()


@pytest.mark.parametrize("case", ["no ring", "other pid", "no pipe", "second", "replay"])
def test_a_pipe_offer_that_fails_a_check_is_refused_and_frames_go_through_the_socket(
        stack, case):
    """A raw worker offers a pipe the front must not take: with no ring taken, naming
    another process than its ring's, a descriptor that is no pipe (its ring's memfd), a
    second pipe after one was taken, or another worker's pipe. The front refuses it
    (logged with the reason) and goes on as before: the upload arrives whole."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    raw = RawWorker(ctx, endpoint, 4601)
    owner: RawWorker | None = None
    try:
        front.wait_for_log(r"Worker 4601@\S+ connected")
        if case != "no ring":
            raw.share_ring(front)
        if case == "no ring":
            raw.offer_pipe()
            reason = "it shares no body ring"
        elif case == "other pid":
            raw.offer_pipe(pid=1)
            reason = f"process 1 offered them, the ring was process {os.getpid()}'s"
        elif case == "no pipe":
            assert raw.ring is not None
            raw.offer_pipe(back=raw.ring.fd)
            reason = "is no pipe"
        elif case == "second":
            raw.offer_pipe()
            front.wait_for_log(r"Worker 4601@\S+ reads the front's frames from a pipe")
            raw.send(raw.pipe.offer(os.getpid()))  # type: ignore[union-attr]
            reason = "a second offer"
        else:
            owner = RawWorker(ctx, endpoint, 4602)
            front.wait_for_log(r"Worker 4602@\S+ connected")
            owner.share_ring(front)
            owner.offer_pipe()
            front.wait_for_log(r"Worker 4602@\S+ reads the front's frames from a pipe")
            assert owner.pipe is not None
            raw.send(protocol.encode_pipe(os.getpid(), owner.pipe.fd, owner.pipe.back))
            reason = "another worker's pipe"
        front.wait_for_log(rf"Refused the pipes of <worker 4601\S* [^\n]*{re.escape(reason)}")
        if owner is not None:  # the pipe's owner leaves, so the upload goes to ``raw``
            owner.close()
            owner = None
            front.wait_for_log(r"Worker 4602@\S+ lost")
        if case != "second" and raw.pipe is not None:
            assert not raw.pipe.on
        _serve_one(raw, port)
        _hello_via(raw, port)
    finally:
        raw.close()
        if owner is not None:
            owner.close()
        ctx.term()


def _hello_via(raw: RawWorker, port: int) -> None:
    """A GET answered by ``raw`` by hand: the front still dispatches to it."""
    statuses: list[int] = []

    def run() -> None:
        with connect(port, timeout=30) as sock:
            sock.sendall(get("/"))
            [response], _ = read_responses(sock, 1, timeout=30)
            statuses.append(response.status)

    client = threading.Thread(target=run)
    client.start()
    for record in raw.records(30):
        if record.kind == protocol.REQUEST:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            raw.send(protocol.encode_response(record.rid, protocol.RESP_END, head))
            break
    client.join(30)
    assert statuses == [200]

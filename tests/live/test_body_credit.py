"""A streamed request body against a raw worker: the front sends no more BODY records than
the worker granted, however fast the client sends, and pieces that wait in the kernel
travel together.

The worker is a DEALER written in the test, so the test sees every record the front sends,
message by message. The front runs with ``WSGI_ZMQ_CHECK=1`` (the tests'
default), so ``Dispatcher.check()`` also asserts, every turn of its loop, that no exchange
was sent more BODY than its credit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from support import connect, get, read_responses
from wsgi_zmq import protocol

SIZE = 4 << 20
PIECE = 65536  # the front's default chunk_size


def _put(port: int, body: bytes, statuses: list[int]) -> None:
    with connect(port, timeout=30) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body)
        [response], _ = read_responses(sock, 1)
        statuses.append(response.status)


class RawWorker:
    """A raw worker of capacity 1 and what it has received: the requests' ids, the BODY
    records and bytes of the current one, and how many BODY records came in each
    message."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.send(protocol.encode_ready(1, 8, 4242, "raw"))
        self.requests: list[int] = []
        self.body = 0
        self.records = 0
        self.ended = False
        self.ends = 0  # END records of the current request
        self.per_message: list[int] = []

    def take(self, timeout: float) -> None:
        """Take the next message, if one comes within ``timeout``."""
        if not self.sock.poll(int(timeout * 1000)):
            return
        bodies = 0
        for record in protocol.split_frame(self.sock.recv()):
            if record.kind == protocol.REQUEST:
                self.requests.append(record.rid)
                self.body = len(protocol.decode_request(record.payload).body)
                self.records, self.ended, self.ends = 0, False, 0
            elif record.kind == protocol.BODY:
                bodies += 1
                self.body += len(record.payload)
            elif record.kind == protocol.END:
                self.ended = True
                self.ends += 1
        self.records += bodies
        if bodies:
            self.per_message.append(bodies)

    def until(self, done: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            self.take(0.2)

    def quiet_for(self, seconds: float) -> None:
        """Take whatever comes for ``seconds`` (heartbeats; anything else is counted)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.take(left)

    def send(self, record: bytes) -> None:
        self.sock.send(protocol.frame([record]))

    def grant(self, count: int) -> None:
        self.send(protocol.encode_credit(self.requests[-1], count))

    def answer(self, status: bytes) -> None:
        head = b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n"
        self.send(protocol.encode_response(self.requests[-1], protocol.RESP_END, head))


def test_the_front_sends_no_more_body_than_the_credit(stack):
    """1. a front and a raw worker (capacity 1); a client PUTs 4 MiB as fast as it can
    2. before any credit only the REQUEST arrives 3. the worker grants 1, 3, 5, 8 and 2
    pieces, one grant at a time; after each exactly that many more BODY records arrive,
    and no more in the next 0.3 s 4. pieces whose bytes wait in the kernel come several
    to a message 5. a grant of 100,000 is cut back to the window the worker announced (8):
    8 more arrive, no more, and the front logs it 6. the rest, a window at a time: the
    whole body and its END arrive, and the client gets the worker's 200 7. a GET after it
    is answered (the front serves on); the front's invariants held throughout."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    try:
        raw = RawWorker(ctx, endpoint)
        front.wait_for_log(r"Worker 4242@raw connected")
        statuses: list[int] = []
        client = threading.Thread(target=_put, args=(port, b"u" * SIZE, statuses))
        client.start()
        raw.until(lambda: raw.requests, "REQUEST")
        raw.quiet_for(0.3)
        assert raw.records == 0, "BODY before any credit"
        granted = 0
        for count in (1, 3, 5, 8, 2):
            raw.grant(count)
            granted += count
            raw.until(lambda want=granted: raw.records >= want, f"{granted} BODY records")
            raw.quiet_for(0.3)
            assert raw.records == granted, f"{raw.records} pieces for {granted} granted"
        assert max(raw.per_message) > 1, f"one piece a message: {raw.per_message}"
        raw.grant(100_000)  # more than the window of 8 it announced
        granted += 8
        raw.until(lambda: raw.records >= granted, "a window of BODY records")
        raw.quiet_for(0.3)
        assert raw.records == granted, "a credit past the window was not cut back"
        front.wait_for_log(r"Cut a CREDIT from .* back to its window of 8")
        while not raw.ended:  # the rest, a window at a time
            raw.grant(8)
            granted += 8
            raw.until(lambda want=granted: raw.ended or raw.records >= want, "the rest")
        assert raw.body == SIZE
        raw.grant(8)  # as a worker does once its app has read the last pieces
        raw.quiet_for(0.3)
        assert raw.ends == 1, f"{raw.ends} END records for one body"
        raw.answer(b"200 OK")
        client.join(30)
        assert statuses == [200]
        with connect(port) as sock:
            sock.sendall(get("/"))
            raw.until(lambda: len(raw.requests) == 2, "the GET's REQUEST")
            raw.answer(b"204 No Content")
            [response], _ = read_responses(sock, 1)
            assert response.status == 204
    finally:
        ctx.destroy(linger=0)


def test_a_request_given_back_gets_its_body_end_again(stack):
    """1. a front and a raw worker; a client sends a chunked PUT whose first chunk comes
    with the head 2. the REQUEST arrives (the chunk inside it), then the client sends the
    last chunk: the body's END follows 3. the worker gives the request back (REJECT) and
    the front sends it again 4. once the worker grants credit the END comes again, once,
    and the client gets the worker's 200."""
    front, port, endpoint = stack.front()
    ctx = zmq.Context()
    try:
        raw = RawWorker(ctx, endpoint)
        front.wait_for_log(r"Worker 4242@raw connected")
        with connect(port) as sock:
            sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")
            raw.until(lambda: raw.requests, "REQUEST")
            assert raw.body == 5 and not raw.ended
            raw.grant(8)  # the front reads the client only under credit
            sock.sendall(b"0\r\n\r\n")
            raw.until(lambda: raw.ended, "the body's END")
            raw.send(protocol.encode_signal(protocol.REJECT, raw.requests[-1]))
            raw.until(lambda: len(raw.requests) == 2, "the REQUEST again")
            assert raw.body == 5 and raw.ends == 0
            raw.grant(8)
            raw.until(lambda: raw.ended, "the body's END again")
            raw.quiet_for(0.3)
            assert raw.ends == 1
            raw.answer(b"200 OK")
            [response], _ = read_responses(sock, 1)
            assert response.status == 200
    finally:
        ctx.destroy(linger=0)

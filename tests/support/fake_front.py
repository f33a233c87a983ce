"""A scripted front for live worker tests: a plain pyzmq ROUTER that speaks our protocol.

``FakeFront`` binds ``tcp://127.0.0.1:*`` in the test process; real handler workers connect
to ``front.endpoint``. The test sends exactly the records it wants (``send``, ``job``,
``credit``, ``cancel``) and reads what the workers sent, decoded by ``wsgi_zmq.protocol``
(``next``, ``ready``, ``final``). Nothing is mocked: the sockets, the frames and the
workers are real; only the front's logic is the test's.

Every read has a deadline (it polls the socket, never sleeps); a record that the test did
not ask for yet stays buffered for a later read, so records of several exchanges may
arrive in any order. A worker's BYE is answered with BYE at once, as a real front does
(``auto_bye``), and recorded in ``byes``. ``close()`` closes the socket with ``linger=0``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from wsgi_zmq import protocol

#: The final records of an exchange (from a worker): any one ends it.
FINAL_KINDS = frozenset({protocol.ERROR, protocol.REJECT, protocol.END})


class Received:
    """One record a worker sent: the worker's routing id, then the record."""

    __slots__ = ("ident", "kind", "rid", "payload")

    def __init__(self, ident: bytes, record: protocol.Record) -> None:
        self.ident = ident
        self.kind, self.rid, self.payload = record

    @property
    def name(self) -> str:
        return protocol.KIND_NAMES[self.kind]

    def is_final(self) -> bool:
        if self.kind == protocol.JOB_REPLY:
            return bool(self.payload[0] & protocol.JOB_FINAL)
        return self.kind in FINAL_KINDS

    def __repr__(self) -> str:
        return f"<{self.name} rid={self.rid:x} {self.payload[:60]!r}>"


class FakeFront:
    """See the module docstring."""

    def __init__(self, context: zmq.Context[Any], auto_bye: bool = True) -> None:
        self.sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.auto_bye = auto_bye
        self.buffered: list[Received] = []
        self.byes: list[bytes] = []  # the idents that said BYE, in order
        self.next_rid = 0x5C1E0B7A93D20000

    def close(self) -> None:
        self.sock.close(linger=0)

    # -- reading ------------------------------------------------------------------------

    def _receive(self, timeout: float) -> bool:
        """Read one message into the buffer; False if none came within ``timeout``."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return False
        ident, data = self.sock.recv_multipart()
        for record in protocol.split_frame(data):
            received = Received(ident, record)
            if received.kind == protocol.BYE:
                self.byes.append(ident)
                if self.auto_bye:
                    self.send(ident, protocol.encode_signal(protocol.BYE))
                continue
            self.buffered.append(received)
        return True

    def next(self, match: Callable[[Received], bool], timeout: float = 10.0,
             what: str = "a record") -> Received:
        """The first record (buffered or arriving within ``timeout``) that ``match``es."""
        deadline = time.monotonic() + timeout
        while True:
            for index, received in enumerate(self.buffered):
                if match(received):
                    return self.buffered.pop(index)
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(left):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"buffered: {self.buffered}")

    def quiet(self, match: Callable[[Received], bool], seconds: float) -> None:
        """Assert that no record that ``match``es arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            stray = [r for r in self.buffered if match(r)]
            assert not stray, f"unexpected records: {stray}"
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._receive(left)

    def bye(self, ident: bytes, timeout: float = 10.0) -> None:
        """Wait until the worker ``ident`` has said BYE."""
        deadline = time.monotonic() + timeout
        while ident not in self.byes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for BYE")
            self._receive(left)

    def ready(self, timeout: float = 20.0) -> tuple[bytes, protocol.Ready]:
        """The next READY: (the worker's routing id, the decoded READY)."""
        received = self.next(lambda r: r.kind == protocol.READY, timeout, "READY")
        return received.ident, protocol.decode_ready(received.payload)

    def for_rid(self, rid: int, timeout: float = 10.0) -> Received:
        """The next record of exchange ``rid``."""
        return self.next(lambda r: r.rid == rid and r.kind != protocol.READY, timeout,
                         f"a record of {rid:x}")

    def final(self, rid: int, timeout: float = 10.0) -> Received:
        """The final record of exchange ``rid``; asserts that nothing but partial replies
        came before it."""
        while True:
            received = self.for_rid(rid, timeout)
            if received.is_final():
                return received
            assert received.kind == protocol.JOB_REPLY, received

    def reply(self, rid: int, timeout: float = 10.0) -> list[bytes]:
        """The frames of the final JOB_REPLY of ``rid`` (it must be one)."""
        received = self.final(rid, timeout)
        assert received.kind == protocol.JOB_REPLY, (received, decode_error(received))
        return protocol.decode_job_reply(received.payload)[1]

    # -- writing ------------------------------------------------------------------------

    def send(self, ident: bytes, *records: bytes) -> None:
        """Send ``records`` to the worker ``ident`` in one frame."""
        self.sock.send_multipart([ident, protocol.frame(list(records))])

    def rid(self) -> int:
        self.next_rid += 1
        return self.next_rid

    def job_record(self, frames: list[bytes], service: str = "echo", rid: int | None = None,
                   flags: int = 0, window: int = 8, client: str = "tcp://192.0.2.7:4242",
                   key: str = "", dialect: str = "MDP02") -> tuple[int, bytes]:
        """(rid, an encoded JOB record)."""
        rid = self.rid() if rid is None else rid
        return rid, protocol.encode_job(rid, flags, service, client, key, dialect, frames,
                                        window)

    def job(self, ident: bytes, frames: list[bytes], **kwargs: Any) -> int:
        """Send one JOB to ``ident``; return its rid."""
        rid, record = self.job_record(frames, **kwargs)
        self.send(ident, record)
        return rid

    def credit(self, ident: bytes, rid: int, count: int) -> None:
        self.send(ident, protocol.encode_credit(rid, count))

    def cancel(self, ident: bytes, rid: int) -> None:
        self.send(ident, protocol.encode_signal(protocol.CANCEL, rid))


def decode_error(received: Received) -> tuple[int, str] | None:
    """(status, message) of an ERROR record, None for any other."""
    if received.kind != protocol.ERROR:
        return None
    return protocol.decode_error(received.payload)

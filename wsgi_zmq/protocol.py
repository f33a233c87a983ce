"""The wire protocol between the front and the handler workers, version 1: pure encode/decode.

Nothing here touches a socket. The front's ROUTER and each worker's DEALER exchange
*frames*; a frame is one ZeroMQ message part (the ROUTER adds the peer's routing id as a
part of its own, which this module never sees). A frame carries the protocol version and any
number of *records*, so everything one side produced in one loop iteration costs one
``send`` and one ``recv`` (``docs/protocol.md`` explains why: every pyzmq call costs more
than the Python work of a small request)::

    frame  := version:u8  record*
    record := kind:u8  rid:u64  length:u32  payload[length]          (network byte order)

``rid`` names one request/response exchange. The front picks it (from a random 64-bit
start, so a worker that reconnects to a restarted front cannot confuse an old exchange with
a new one); records that concern no exchange (READY, HEARTBEAT, BYE) carry rid 0.

Payloads, by kind (``F->W`` front to worker, ``W->F`` worker to front)::

    REQUEST   F->W  flags:u8 remote_port:u16 server_port:u16 nheaders:u16 window:u16
                    queue_us:u32 strings_len:u32 strings[strings_len] body...
                    window = CHUNK records the worker may send before the front grants CREDIT;
                    queue_us = microseconds the request waited in the front for a worker
                    strings = NUL-joined latin-1: method, target, version ("HTTP/1.1"),
                    remote_addr, server_name, url_scheme, then name, value for each header
                    in the order received, duplicates kept.
    BODY      F->W  a piece of the request body (de-chunked)
    RESPONSE  W->F  flags:u8 head_len:u32 head[head_len] body...
                    head = the status line and header block exactly as the client gets them
                    (in RAW mode: status line and the application's headers, no framing)
    CHUNK     W->F  a piece of the response body, already framed for the client
    END       both  F->W: the request body is complete (empty payload).
                    W->F: flags:u8 tail...: the response is complete; tail is written last
                    (the chunked terminator); END_ABORT means cut the connection instead.
    CREDIT    both  n:u32: the receiver may send n more BODY (W->F grant) / CHUNK (F->W grant)
    CANCEL    F->W  empty: the client went away or timed out; stop and close the app iterator
    READY     W->F  capacity:u32 window:u16 pid:u32 flags:u8 names: a worker offers
                    ``capacity`` (READY_CONCURRENT: it serves them at once, not in order);
                    it takes ``window`` BODY records per request before it grants
                    CREDIT (none before its first CREDIT when the request has REQ_EXPECT).
                    names = NUL-joined utf-8: host, job service (empty for HTTP), pool
                    name, pool version, the pool master's pid in decimal, the version's
                    weight in decimal; every field after host may be left out (a worker
                    of 0.2 sends only host, or host and service): pool ``default``, no
                    version, master 0, weight 100
    HEARTBEAT both  liveness probe; from the front it may carry queued:u32, the number of
                    requests waiting in its queue (workers report it to their master,
                    which scales the pool on it). A front's HEARTBEAT with a nonzero rid is
                    a probe of an ejected worker: the worker answers HEARTBEAT with that rid
    ERROR     W->F  status:u16 message (utf-8): answer this request with ``status``
    REJECT    W->F  empty: the worker never started this request; dispatch it elsewhere
    BYE       W->F  empty: the worker leaves; send it nothing more
    JOB       F->W  flags:u8 reserved:u32 nframes:u16 window:u16 queue_us:u32 strings_len:u32
                    strings[strings_len] then nframes times (length:u32 frame[length]):
                    a job for a job pool; strings = NUL-joined utf-8: service, the client's
                    address, the client's CURVE public key (Z85, or empty), the dialect
                    it spoke (``docs/jobs.md``); window = partial JOB_REPLY records the
                    worker may send before the front grants CREDIT; queue_us at the same
                    offset as REQUEST's
    JOB_REPLY W->F  flags:u8 nframes:u16 then nframes times (length:u32 frame[length]):
                    the reply's frames; JOB_FINAL marks the last, which ends the exchange
    STATS     W->F  a JSON object (utf-8, at most MAX_STATS bytes): the worker's pool
                    master's figures (``workers``, ``restarts`` by reason), sent in a frame
                    of its own when they change, for the front's metrics
    RING      W->F  pid:u32 fd:u32 slots:u32 slot_size:u32 nonce[16]: a worker on the
                    front's host offers its body ring, a sealed memfd the front opens as
                    /proc/PID/fd/FD (``docs/protocol.md``, section 5), in a frame of its own
    BODY_AT   F->W  slot:u32 length:u32: the next piece of the request body is in that
                    slot of the worker's ring (sent instead of BODY once the ring is taken)
    PIPE      W->F  pid:u32 fd:u32 back:u32: the worker whose ring the front took offers
                    two pipes, in a frame of its own after RING: /proc/PID/fd/FD (a read
                    end) for the front's frames, /proc/PID/fd/BACK (a write end) for its own
    PIPED     both  empty: the sender took the pipes (the front) or switched to them too
                    (the worker, on the front's PIPED); it is the last frame it sends
                    through the socket. Every later one is in its pipe, each after its
                    length (u32), in order

Every exchange the front dispatched ends with exactly one final record from the worker:
RESPONSE with ``RESP_END``, END, ERROR or REJECT. Until then the request holds one unit of
the worker's capacity.

Decoding raises ``ProtocolError`` for a wrong version, an unknown kind, or a record that is
truncated or too short for its kind; callers log it and drop the frame.
"""

from __future__ import annotations

import json
import struct
from typing import Final, NamedTuple

from wsgi_zmq.errors import ProtocolError

PROTOCOL_VERSION: Final = 1
VERSION_BYTE: Final = bytes([PROTOCOL_VERSION])

# Record kinds. Plain ints, not an IntEnum: they are compared once per record on the hot path.
REQUEST: Final = 1
BODY: Final = 2
RESPONSE: Final = 3
CHUNK: Final = 4
END: Final = 5
CREDIT: Final = 6
CANCEL: Final = 7
READY: Final = 8
HEARTBEAT: Final = 9
ERROR: Final = 10
REJECT: Final = 11
BYE: Final = 12
JOB: Final = 13
JOB_REPLY: Final = 14
STATS: Final = 15
RING: Final = 16
BODY_AT: Final = 17
PIPE: Final = 18
PIPED: Final = 19

KIND_NAMES: Final = {
    REQUEST: "REQUEST", BODY: "BODY", RESPONSE: "RESPONSE", CHUNK: "CHUNK", END: "END",
    CREDIT: "CREDIT", CANCEL: "CANCEL", READY: "READY", HEARTBEAT: "HEARTBEAT",
    ERROR: "ERROR", REJECT: "REJECT", BYE: "BYE", JOB: "JOB", JOB_REPLY: "JOB_REPLY",
    STATS: "STATS", RING: "RING", BODY_AT: "BODY_AT", PIPE: "PIPE", PIPED: "PIPED",
}

# REQUEST flags
REQ_BODY_COMPLETE: Final = 0x01  # the body in this record is all of it; no BODY/END follow
REQ_KEEP_ALIVE: Final = 0x02     # the client may reuse the connection
REQ_EXPECT: Final = 0x04         # no BODY until the worker grants CREDIT (the front sets it
#                                  for every streamed body, so an unstarted request holds
#                                  nothing but its REQUEST record and may go elsewhere)
REQ_RAW: Final = 0x08            # the gateway frames the response itself (FrontApp)
REQ_CHUNKED: Final = 0x10        # the body length is unknown (Transfer-Encoding: chunked)
REQ_REPLAYABLE: Final = 0x20     # idempotent with its whole body here: the front may send it
#                                  again if its worker dies; a worker that serves in order
#                                  flushes its replies before it starts one without this flag
REQ_CLOSE_IF_UNREAD: Final = 0x40  # a response that starts before the app read the whole
#                                  body must say Connection: close (the front cannot skip
#                                  the rest of this body: chunked, large, or Expect)

# READY flags
READY_CONCURRENT: Final = 0x01   # the worker serves its requests at once (gevent), not in order
READY_JOB: Final = 0x02          # a job worker: it takes JOB records for its service
READY_IDEMPOTENT: Final = 0x04   # a job worker whose jobs may all run twice (the pool's
#                                  job_idempotent): the front may send one again after a death
READY_STANDBY: Final = 0x08      # its pool version starts in standby: it gets only the
#                                  requests that ask for its version (``--standby``)

# JOB flags
JOB_IDEMPOTENT: Final = 0x01     # the job may run twice: the front may send it again if its
#                                  worker dies while possibly running it

# JOB_REPLY flags
JOB_FINAL: Final = 0x01          # the last reply of the job

# RESPONSE flags
RESP_END: Final = 0x01           # the whole response is in this record
RESP_CLOSE: Final = 0x02         # close the client connection after this response

# END flags (worker to front)
END_CLOSE: Final = 0x02          # close the connection after writing the tail
END_ABORT: Final = 0x04          # the response is incomplete: cut the connection, no tail

#: A STATS payload may not be longer than this.
MAX_STATS: Final = 4096
#: The pool of a worker that names none.
DEFAULT_POOL: Final = "default"
#: The weight of a pool version whose workers name none; weights are 0 to MAX_WEIGHT.
DEFAULT_WEIGHT: Final = 100
MAX_WEIGHT: Final = 1_000_000
#: READY's names may not be longer than this (host, service, pool, version, master).
MAX_READY_NAMES: Final = 1024
#: The largest flow-control window a peer may announce or be configured with, in chunks.
#: The front holds at most a worker's window of BODY records per request in flight to it,
#: so a peer's window bounds what it can make the front buffer (64 MiB at 64 KiB chunks).
MAX_WINDOW: Final = 1024

#: A body ring (RING): the bytes before its first slot (the magic and the nonce, then
#: nothing), its slots' size bounds (a multiple of RING_PAGE), and the most it may hold.
RING_HEADER: Final = 4096
RING_PAGE: Final = 4096
RING_MAGIC: Final = b"wsgi_zmq body ring 1\n\0\0\0\0\0\0\0\0\0\0\0"
MIN_RING_SLOT: Final = 4096
MAX_RING_SLOT: Final = 1 << 20
MAX_RING_BYTES: Final = 64 << 20

RECORD_HEAD: Final = struct.Struct("!BQI")
REQUEST_HEAD: Final = struct.Struct("!BHHHHII")
RESPONSE_HEAD: Final = struct.Struct("!BI")
U8: Final = struct.Struct("!B")
U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")
READY_HEAD: Final = struct.Struct("!IHIB")
RING_HEAD: Final = struct.Struct("!IIII16s")
BODY_AT_HEAD: Final = struct.Struct("!II")
PIPE_HEAD: Final = struct.Struct("!III")
#: Each frame on a pipe (PIPE) is preceded by its length.
PIPE_FRAME_HEAD: Final = struct.Struct("!I")
JOB_HEAD: Final = struct.Struct("!BIHHII")
JOB_REPLY_HEAD: Final = struct.Struct("!BH")
#: Most frames one job or reply may have (MDP puts no bound on them; we do).
MAX_JOB_FRAMES: Final = 1024

_RECORD_HEAD_SIZE: Final = RECORD_HEAD.size
_MIN_PAYLOAD: Final = {
    REQUEST: REQUEST_HEAD.size, BODY: 0, RESPONSE: RESPONSE_HEAD.size, CHUNK: 0, END: 0,
    CREDIT: U32.size, CANCEL: 0, READY: READY_HEAD.size, HEARTBEAT: 0, ERROR: U16.size,
    REJECT: 0, BYE: 0, JOB: JOB_HEAD.size, JOB_REPLY: JOB_REPLY_HEAD.size,
    STATS: 2, RING: RING_HEAD.size, BODY_AT: BODY_AT_HEAD.size, PIPE: PIPE_HEAD.size,
    PIPED: 0,
}
_STRINGS_BEFORE_HEADERS: Final = 6

_pack_record = RECORD_HEAD.pack
_unpack_record = RECORD_HEAD.unpack_from


class Record(NamedTuple):
    """One decoded record: its kind, the exchange it belongs to, and its raw payload."""

    kind: int
    rid: int
    payload: bytes


class RequestHead(NamedTuple):
    """The decoded REQUEST payload. ``headers`` is flat: name, value, name, value, ..."""

    flags: int
    window: int
    method: str
    target: str
    version: str
    remote_addr: str
    remote_port: int
    server_name: str
    server_port: int
    url_scheme: str
    headers: list[str]
    body: bytes
    queue_us: int = 0


class ResponseHead(NamedTuple):
    """The decoded RESPONSE payload: flags, the head as the client sees it, the body part."""

    flags: int
    head: bytes
    body: bytes


class Ready(NamedTuple):
    """The decoded READY payload. ``service`` is the job service of a job worker (READY_JOB),
    empty for an HTTP worker; ``pool``, ``version`` and ``master`` name the handler pool
    it belongs to."""

    capacity: int
    window: int
    pid: int
    host: str
    flags: int = 0
    service: str = ""
    pool: str = DEFAULT_POOL
    version: str = ""
    master: int = 0
    weight: int = DEFAULT_WEIGHT


class RingOffer(NamedTuple):
    """The decoded RING payload: where the worker's ring is and how it is cut."""

    pid: int
    fd: int
    slots: int
    slot_size: int
    nonce: bytes

    @property
    def size(self) -> int:
        """The size the ring's file must have."""
        return RING_HEADER + self.slots * self.slot_size


class JobHead(NamedTuple):
    """The decoded JOB payload."""

    flags: int
    window: int
    queue_us: int
    service: str
    client: str
    key: str
    dialect: str
    frames: list[bytes]


# -- framing ------------------------------------------------------------------------------

def frame(records: list[bytes]) -> bytes:
    """Join encoded records into one frame, version first (one copy of each record)."""
    return b"".join((VERSION_BYTE, *records))


def split_frame(data: bytes) -> list[Record]:
    """Decode a whole frame into its records, checking all of it before returning any.

    Raises ``ProtocolError`` if the version is not ``PROTOCOL_VERSION``, a kind is unknown,
    or a record is truncated or shorter than its kind requires. Checking everything first
    means a malformed frame is dropped whole, never half acted on.
    """
    size = len(data)
    if size == 0:
        raise ProtocolError("empty frame")
    if data[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {data[0]} not supported "
                            f"(this side speaks {PROTOCOL_VERSION})")
    records = []
    pos = 1
    minimum = _MIN_PAYLOAD
    while pos < size:
        if pos + _RECORD_HEAD_SIZE > size:
            raise ProtocolError(f"truncated record head at byte {pos}")
        kind, rid, length = _unpack_record(data, pos)
        pos += _RECORD_HEAD_SIZE
        end = pos + length
        if end > size:
            raise ProtocolError(f"record of {length} bytes at byte {pos} overruns the frame")
        least = minimum.get(kind)
        if least is None:
            raise ProtocolError(f"unknown record kind {kind}")
        if length < least:
            raise ProtocolError(f"{KIND_NAMES[kind]} record of {length} bytes is too short")
        records.append(Record(kind, rid, data[pos:end]))
        pos = end
    return records


# -- encoding -----------------------------------------------------------------------------

def encode_request(rid: int, flags: int, method: bytes, target: bytes, version: bytes,
                   remote_addr: bytes, remote_port: int, server_name: bytes, server_port: int,
                   url_scheme: bytes, headers: list[bytes], window: int,
                   body: bytes = b"", queue_us: int = 0) -> bytes:
    """Encode a REQUEST record. ``headers`` is flat (name, value, ...) and holds no NUL."""
    strings = b"\0".join([method, target, version, remote_addr, server_name, url_scheme,
                          *headers])
    head = REQUEST_HEAD.pack(flags, remote_port, server_port, len(headers) >> 1, window,
                             queue_us, len(strings))
    length = REQUEST_HEAD.size + len(strings) + len(body)
    return b"".join((_pack_record(REQUEST, rid, length), head, strings, body))


_QUEUE_US_AT: Final = RECORD_HEAD.size + 9  # offset of queue_us in an encoded REQUEST


def with_queue_time(record: bytes, queue_us: int) -> bytes:
    """An encoded REQUEST record with its ``queue_us`` set (the front learns the wait only
    when a queued request is dispatched; requests that did not wait keep 0 and no copy)."""
    at = _QUEUE_US_AT
    return record[:at] + U32.pack(min(queue_us, 0xFFFFFFFF)) + record[at + 4:]


def with_rid(record: bytes, rid: int) -> bytes:
    """An encoded record with another rid (the front gives a request it sends again a new
    exchange id, so a late record of the old exchange cannot be mistaken for the new)."""
    return record[:1] + RECORD_HEAD.pack(record[0], rid, 0)[1:9] + record[9:]


def encode_response(rid: int, flags: int, head: bytes, body: bytes = b"") -> bytes:
    """Encode a RESPONSE record: ``head`` as the client will see it, then the body part."""
    length = RESPONSE_HEAD.size + len(head) + len(body)
    return b"".join((_pack_record(RESPONSE, rid, length),
                     RESPONSE_HEAD.pack(flags, len(head)), head, body))


def encode_data(kind: int, rid: int, data: bytes) -> bytes:
    """Encode a record whose payload is raw bytes: BODY or CHUNK."""
    return _pack_record(kind, rid, len(data)) + data


def data_head(kind: int, rid: int, size: int) -> bytes:
    """The head of a BODY or CHUNK record of ``size`` bytes; the payload follows it in the
    frame. A sender that joins records into a frame puts head and payload in one by one,
    so a large payload is copied once, not twice (``encode_data`` + the join)."""
    return _pack_record(kind, rid, size)


def encode_end(rid: int, flags: int = 0, tail: bytes = b"") -> bytes:
    """Encode END. From the front: the request body is complete (flags and tail unused)."""
    return _pack_record(END, rid, 1 + len(tail)) + U8.pack(flags) + tail


def encode_request_end(rid: int) -> bytes:
    """Encode the END that closes a streamed request body (front to worker)."""
    return _pack_record(END, rid, 0)


def encode_credit(rid: int, count: int) -> bytes:
    """Encode CREDIT: the peer may send ``count`` more data records for ``rid``."""
    return _pack_record(CREDIT, rid, U32.size) + U32.pack(count)


def encode_signal(kind: int, rid: int = 0) -> bytes:
    """Encode a record with an empty payload: CANCEL, HEARTBEAT, REJECT or BYE."""
    return _pack_record(kind, rid, 0)


def encode_stats(payload: bytes) -> bytes:
    """Encode STATS: the pool master's figures, a JSON object of at most ``MAX_STATS``
    bytes."""
    if len(payload) > MAX_STATS:
        raise ValueError(f"STATS payload of {len(payload)} bytes")
    return _pack_record(STATS, 0, len(payload)) + payload


#: The reasons a pool master counts worker restarts under (STATS ``restarts``).
RESTART_REASONS: Final = ("timeout", "max_requests", "crash")


class PoolStats(NamedTuple):
    """The decoded STATS payload: live workers and restarts by reason."""

    workers: int
    restarts: dict[str, int]


def decode_stats(payload: bytes) -> PoolStats:
    """Decode STATS; raises ``ProtocolError`` for anything but the documented object."""
    if len(payload) > MAX_STATS:
        raise ProtocolError(f"STATS of {len(payload)} bytes")
    try:
        obj = json.loads(payload)
    except ValueError:
        raise ProtocolError("STATS is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("STATS is not a JSON object")
    workers = obj.get("workers", 0)
    restarts = obj.get("restarts", {})
    if type(workers) is not int or not 0 <= workers < 1 << 32 or not isinstance(restarts,
                                                                              dict):
        raise ProtocolError("STATS: workers must be a count and restarts an object")
    counts = {}
    for reason in RESTART_REASONS:
        n = restarts.get(reason, 0)
        if type(n) is not int or not 0 <= n < 1 << 63:
            raise ProtocolError(f"STATS: restarts[{reason!r}] is not a count")
        counts[reason] = n
    return PoolStats(workers, counts)


def encode_heartbeat(queued: int = 0) -> bytes:
    """Encode the front's HEARTBEAT, with the depth of its queue."""
    return _pack_record(HEARTBEAT, 0, U32.size) + U32.pack(min(queued, 0xFFFFFFFF))


def encode_probe(rid: int) -> bytes:
    """Encode the front's probe of an ejected worker: a HEARTBEAT the worker must echo."""
    return _pack_record(HEARTBEAT, rid, 0)


def decode_heartbeat(payload: bytes) -> int:
    """The queue depth a front's HEARTBEAT carries (0 for an empty payload)."""
    if len(payload) < U32.size:
        return 0
    queued: int = U32.unpack_from(payload)[0]
    return queued


def encode_ready(capacity: int, window: int, pid: int, host: str, flags: int = 0,
                 service: str = "", pool: str = DEFAULT_POOL, version: str = "",
                 master: int = 0, weight: int = DEFAULT_WEIGHT) -> bytes:
    """Encode READY: the worker (``pid`` on ``host``, of version ``version`` of the pool
    ``pool`` whose master is ``master``) offers ``capacity`` requests (jobs of ``service``
    with READY_JOB)."""
    name = "\0".join((host, service, pool, version, str(master),
                      str(weight))).encode("utf-8")
    return (_pack_record(READY, 0, READY_HEAD.size + len(name))
            + READY_HEAD.pack(capacity, window, pid, flags) + name)


def encode_error(rid: int, status: int, message: str) -> bytes:
    """Encode ERROR: the front must answer ``rid`` with ``status`` itself."""
    text = message.encode("utf-8")
    return _pack_record(ERROR, rid, U16.size + len(text)) + U16.pack(status) + text


# -- decoding payloads ----------------------------------------------------------------------

def decode_request(payload: bytes) -> RequestHead:
    """Decode a REQUEST payload. Raises ``ProtocolError`` if the string block is malformed."""
    flags, remote_port, server_port, nheaders, window, queue_us, strings_len = \
        REQUEST_HEAD.unpack_from(payload)
    start = REQUEST_HEAD.size
    end = start + strings_len
    if end > len(payload):
        raise ProtocolError("REQUEST strings overrun the record")
    parts = payload[start:end].decode("latin-1").split("\0")
    if len(parts) != _STRINGS_BEFORE_HEADERS + 2 * nheaders:
        raise ProtocolError(f"REQUEST has {len(parts)} strings, expected "
                            f"{_STRINGS_BEFORE_HEADERS + 2 * nheaders}")
    return RequestHead(flags, window, parts[0], parts[1], parts[2], parts[3], remote_port,
                       parts[4], server_port, parts[5], parts[6:], payload[end:], queue_us)


def decode_response(payload: bytes) -> ResponseHead:
    """Decode a RESPONSE payload. Raises ``ProtocolError`` if the head overruns it."""
    flags, head_len = RESPONSE_HEAD.unpack_from(payload)
    start = RESPONSE_HEAD.size
    if start + head_len > len(payload):
        raise ProtocolError("RESPONSE head overruns the record")
    return ResponseHead(flags, payload[start:start + head_len], payload[start + head_len:])


def decode_credit(payload: bytes) -> int:
    """Decode a CREDIT payload into its count."""
    count: int = U32.unpack_from(payload)[0]
    return count


def decode_ready(payload: bytes) -> Ready:
    """Decode a READY payload."""
    capacity, window, pid, flags = READY_HEAD.unpack_from(payload)
    if capacity < 1 or window < 1:
        raise ProtocolError("READY with capacity or window 0")
    if window > MAX_WINDOW:
        raise ProtocolError(f"READY with a window of {window}, over {MAX_WINDOW}")
    names = payload[READY_HEAD.size:]
    if len(names) > MAX_READY_NAMES:
        raise ProtocolError(f"READY names longer than {MAX_READY_NAMES} bytes")
    fields = names.decode("utf-8", "replace").split("\0")
    if len(fields) > 6:
        raise ProtocolError("READY with more than six names")
    fields += [""] * (6 - len(fields))
    host, service, pool, version, master, weight = fields
    if bool(flags & READY_JOB) != bool(service):
        raise ProtocolError("READY_JOB needs a service name, and only a job worker has one")
    if master and not (master.isdigit() and master.isascii() and len(master) <= 10):
        raise ProtocolError(f"READY with a master pid that is no number: {master!r}")
    if weight and not (weight.isdigit() and weight.isascii() and int(weight) <= MAX_WEIGHT):
        raise ProtocolError(f"READY with a weight that is no number up to {MAX_WEIGHT}: "
                            f"{weight!r}")
    return Ready(capacity, window, pid, host, flags, service, pool or DEFAULT_POOL, version,
                 int(master or 0), int(weight) if weight else DEFAULT_WEIGHT)


def encode_ring(pid: int, fd: int, slots: int, slot_size: int, nonce: bytes) -> bytes:
    """Encode RING: the worker's body ring is the file ``/proc/PID/fd/FD``."""
    return _pack_record(RING, 0, RING_HEAD.size) + RING_HEAD.pack(pid, fd, slots, slot_size,
                                                                   nonce)


def decode_ring(payload: bytes) -> RingOffer:
    """Decode a RING payload; raises ``ProtocolError`` for a shape no ring may have."""
    if len(payload) != RING_HEAD.size:
        raise ProtocolError(f"RING of {len(payload)} bytes, not {RING_HEAD.size}")
    offer = RingOffer(*RING_HEAD.unpack(payload))
    if not MIN_RING_SLOT <= offer.slot_size <= MAX_RING_SLOT or offer.slot_size % RING_PAGE:
        raise ProtocolError(f"RING slots of {offer.slot_size} bytes (a multiple of "
                            f"{RING_PAGE}, {MIN_RING_SLOT} to {MAX_RING_SLOT})")
    if offer.slots < 1 or offer.size > MAX_RING_BYTES:
        raise ProtocolError(f"RING of {offer.slots} slots (1 to {MAX_RING_BYTES} bytes)")
    return offer


def encode_body_at(rid: int, slot: int, length: int) -> bytes:
    """Encode BODY_AT: the next piece of ``rid``'s body, ``length`` bytes in ``slot``."""
    return _pack_record(BODY_AT, rid, BODY_AT_HEAD.size) + BODY_AT_HEAD.pack(slot, length)


def encode_pipe(pid: int, fd: int, back: int) -> bytes:
    """Encode PIPE: the front writes its frames into ``/proc/PID/fd/FD`` and reads the
    worker's from ``/proc/PID/fd/BACK``."""
    return _pack_record(PIPE, 0, PIPE_HEAD.size) + PIPE_HEAD.pack(pid, fd, back)


def decode_pipe(payload: bytes) -> tuple[int, int, int]:
    """Decode a PIPE payload into (pid, fd, back)."""
    if len(payload) != PIPE_HEAD.size:
        raise ProtocolError(f"PIPE of {len(payload)} bytes, not {PIPE_HEAD.size}")
    pid, fd, back = PIPE_HEAD.unpack(payload)
    return pid, fd, back


def decode_end(payload: bytes) -> tuple[int, bytes]:
    """Decode a worker's END payload into (flags, tail); an empty payload is (0, b"")."""
    if not payload:
        return 0, b""
    return payload[0], payload[1:]


def decode_error(payload: bytes) -> tuple[int, str]:
    """Decode an ERROR payload into (status, message)."""
    status: int = U16.unpack_from(payload)[0]
    if not 100 <= status <= 599:
        raise ProtocolError(f"ERROR with status {status}")
    return status, payload[U16.size:].decode("utf-8", "replace")


# -- jobs ---------------------------------------------------------------------------------

def _pack_frames(frames: list[bytes]) -> list[bytes]:
    parts = []
    for data in frames:
        parts.append(U32.pack(len(data)))
        parts.append(data)
    return parts


def _unpack_frames(payload: bytes, pos: int, count: int) -> list[bytes]:
    if count > MAX_JOB_FRAMES:
        raise ProtocolError(f"{count} frames: more than {MAX_JOB_FRAMES}")
    frames = []
    size = len(payload)
    for _ in range(count):
        if pos + 4 > size:
            raise ProtocolError("truncated frame length")
        length: int = U32.unpack_from(payload, pos)[0]
        pos += 4
        if pos + length > size:
            raise ProtocolError("a frame overruns the record")
        frames.append(payload[pos:pos + length])
        pos += length
    if pos != size:
        raise ProtocolError(f"{size - pos} bytes after the last frame")
    return frames


def encode_job(rid: int, flags: int, service: str, client: str, key: str, dialect: str,
               frames: list[bytes], window: int, queue_us: int = 0) -> bytes:
    """Encode a JOB record: the request ``frames`` of a client for ``service``."""
    strings = "\0".join((service, client, key, dialect)).encode("utf-8")
    parts = [JOB_HEAD.pack(flags, 0, len(frames), window, queue_us, len(strings)), strings,
             *_pack_frames(frames)]
    length = sum(map(len, parts))
    return b"".join((_pack_record(JOB, rid, length), *parts))


def decode_job(payload: bytes) -> JobHead:
    """Decode a JOB payload. Raises ``ProtocolError`` if any part of it is malformed."""
    flags, _, nframes, window, queue_us, strings_len = JOB_HEAD.unpack_from(payload)
    start = JOB_HEAD.size
    end = start + strings_len
    if end > len(payload):
        raise ProtocolError("JOB strings overrun the record")
    parts = payload[start:end].decode("utf-8", "replace").split("\0")
    if len(parts) != 4 or not parts[0]:
        raise ProtocolError("JOB needs a service, a client, a key and a dialect")
    return JobHead(flags, window, queue_us, parts[0], parts[1], parts[2], parts[3],
                   _unpack_frames(payload, end, nframes))


def encode_job_reply(rid: int, flags: int, frames: list[bytes]) -> bytes:
    """Encode a JOB_REPLY record (JOB_FINAL for the last reply of the job)."""
    parts = [JOB_REPLY_HEAD.pack(flags, len(frames)), *_pack_frames(frames)]
    return b"".join((_pack_record(JOB_REPLY, rid, sum(map(len, parts))), *parts))


def decode_job_reply(payload: bytes) -> tuple[int, list[bytes]]:
    """Decode a JOB_REPLY payload into (flags, frames)."""
    flags, nframes = JOB_REPLY_HEAD.unpack_from(payload)
    return flags, _unpack_frames(payload, JOB_REPLY_HEAD.size, nframes)

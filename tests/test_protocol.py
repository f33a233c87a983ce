"""The wire protocol (``wsgi_zmq.protocol``): round trips, and malformed input refused.

Every record kind goes through its encoder, ``frame()`` and ``split_frame()``, then its
payload decoder; frames carry many records of mixed kinds. Every way a frame can be
malformed raises ``ProtocolError``, and ``split_frame`` refuses a frame whole: a bad record
anywhere means no record of that frame is returned.
"""

from __future__ import annotations

import contextlib
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgi_zmq import protocol as p
from wsgi_zmq.errors import ProtocolError

MAX_RID = 2**64 - 1
RIDS = [0, 1, 0x0123456789ABCDEF, MAX_RID]
BINARY = bytes(range(256)) + b"\0\0\0" + b"\xff" * 7  # NUL bytes and every byte value


def one(record: bytes) -> p.Record:
    """Frame a single record, split the frame, and return its only record."""
    records = p.split_frame(p.frame([record]))
    assert len(records) == 1
    return records[0]


def request(rid: int = 7, flags: int = p.REQ_KEEP_ALIVE, method: bytes = b"GET",
            target: bytes = b"/", version: bytes = b"HTTP/1.1",
            remote_addr: bytes = b"127.0.0.1", remote_port: int = 54321,
            server_name: bytes = b"localhost", server_port: int = 8000,
            url_scheme: bytes = b"http", headers: list[bytes] | None = None,
            window: int = 8, body: bytes = b"") -> bytes:
    if headers is None:
        headers = [b"Host", b"localhost"]
    return p.encode_request(rid, flags, method, target, version, remote_addr, remote_port,
                            server_name, server_port, url_scheme, headers, window, body)


def raw_record(kind: int, rid: int, payload: bytes, length: int | None = None) -> bytes:
    """A record built by hand, so its declared length may lie."""
    return struct.pack("!BQI", kind, rid, len(payload) if length is None else length) + payload


# -- framing ------------------------------------------------------------------------------

def test_frame_layout_is_version_then_records() -> None:
    records = [p.encode_signal(p.HEARTBEAT), p.encode_credit(5, 3)]
    data = p.frame(records)
    assert data[0] == p.PROTOCOL_VERSION == 1
    assert data[1:] == b"".join(records)
    # kind:u8 rid:u64 length:u32, network byte order
    assert records[1] == bytes([p.CREDIT]) + (5).to_bytes(8, "big") + (4).to_bytes(4, "big") \
        + (3).to_bytes(4, "big")


def test_a_frame_of_no_records_is_valid_and_empty() -> None:
    assert p.frame([]) == p.VERSION_BYTE
    assert p.split_frame(p.VERSION_BYTE) == []


def test_kinds_are_distinct_and_named() -> None:
    kinds = [p.REQUEST, p.BODY, p.RESPONSE, p.CHUNK, p.END, p.CREDIT, p.CANCEL, p.READY,
             p.HEARTBEAT, p.ERROR, p.REJECT, p.BYE, p.JOB, p.JOB_REPLY, p.STATS, p.RING,
             p.BODY_AT, p.PIPE, p.PIPED]
    assert len(set(kinds)) == len(kinds)
    assert set(p.KIND_NAMES) == set(kinds)


# -- round trips, one kind at a time --------------------------------------------------------

@pytest.mark.parametrize("rid", RIDS)
def test_request_round_trip(rid: int) -> None:
    headers = [b"Host", b"example.com", b"X-Dup", b"first", b"Accept", b"*/*",
               b"X-Dup", b"second", b"Cookie", b"a=1", b"x-dup", b"third"]
    flags = p.REQ_BODY_COMPLETE | p.REQ_KEEP_ALIVE | p.REQ_EXPECT | p.REQ_RAW | p.REQ_CHUNKED
    record = one(request(rid, flags, b"POST", b"/a%2Fb/c?x=1&y=%00", b"HTTP/1.0",
                         b"::1", 65535, b"front.example", 0, b"https", headers, 65535,
                         BINARY))
    assert (record.kind, record.rid) == (p.REQUEST, rid)
    head = p.decode_request(record.payload)
    assert head == p.RequestHead(
        flags=flags, window=65535, method="POST", target="/a%2Fb/c?x=1&y=%00",
        version="HTTP/1.0", remote_addr="::1", remote_port=65535,
        server_name="front.example", server_port=0, url_scheme="https",
        headers=["Host", "example.com", "X-Dup", "first", "Accept", "*/*", "X-Dup", "second",
                 "Cookie", "a=1", "x-dup", "third"],
        body=BINARY)


def test_request_latin1_header_values_survive() -> None:
    value = "caf\xe9 \xff\xa0 na\xefve".encode("latin-1")
    head = p.decode_request(one(request(headers=[b"X-Name", value, b"X-Raw", b"\x80\x81"]))
                            .payload)
    assert head.headers == ["X-Name", "caf\xe9 \xff\xa0 na\xefve", "X-Raw", "\x80\x81"]
    # the str is the bytes "as latin-1": encoding it again gives the wire bytes back
    assert head.headers[1].encode("latin-1") == value


@pytest.mark.parametrize("headers", [[], [b"Host", b""], [b"X-Empty", b"", b"Y", b""]])
def test_request_no_headers_and_empty_values(headers: list[bytes]) -> None:
    head = p.decode_request(one(request(headers=headers)).payload)
    assert head.headers == [h.decode("latin-1") for h in headers]
    assert head.body == b""


def test_request_empty_strings_are_kept() -> None:
    head = p.decode_request(one(request(method=b"", target=b"", version=b"", remote_addr=b"",
                                        server_name=b"", url_scheme=b"")).payload)
    assert (head.method, head.target, head.version, head.remote_addr, head.server_name,
            head.url_scheme) == ("", "", "", "", "", "")


def test_request_body_that_looks_like_strings_stays_body() -> None:
    body = b"GET\0/\0HTTP/1.1\0" * 3
    head = p.decode_request(one(request(body=body)).payload)
    assert head.body == body
    assert head.headers == ["Host", "localhost"]


@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("flags", [0, p.RESP_END, p.RESP_CLOSE, p.RESP_END | p.RESP_CLOSE])
@pytest.mark.parametrize("body", [b"", b"hello", BINARY])
def test_response_round_trip(rid: int, flags: int, body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    record = one(p.encode_response(rid, flags, head, body))
    assert (record.kind, record.rid) == (p.RESPONSE, rid)
    assert p.decode_response(record.payload) == p.ResponseHead(flags, head, body)


def test_response_empty_head() -> None:
    assert p.decode_response(one(p.encode_response(1, 0, b"", b"x")).payload) == \
        p.ResponseHead(0, b"", b"x")


@pytest.mark.parametrize("kind", [p.BODY, p.CHUNK])
@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("data", [b"", b"\0", BINARY, b"x" * 70000])
def test_data_round_trip(kind: int, rid: int, data: bytes) -> None:
    assert one(p.encode_data(kind, rid, data)) == p.Record(kind, rid, data)


@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("flags", [0, p.END_CLOSE, p.END_ABORT, p.END_CLOSE | p.END_ABORT])
@pytest.mark.parametrize("tail", [b"", b"0\r\n\r\n", b"\0\0"])
def test_worker_end_round_trip(rid: int, flags: int, tail: bytes) -> None:
    record = one(p.encode_end(rid, flags, tail))
    assert (record.kind, record.rid) == (p.END, rid)
    assert p.decode_end(record.payload) == (flags, tail)


@pytest.mark.parametrize("rid", RIDS)
def test_request_end_is_empty(rid: int) -> None:
    record = one(p.encode_request_end(rid))
    assert record == p.Record(p.END, rid, b"")
    assert p.decode_end(record.payload) == (0, b"")


@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("count", [0, 1, 8, 2**32 - 1])
def test_credit_round_trip(rid: int, count: int) -> None:
    record = one(p.encode_credit(rid, count))
    assert (record.kind, record.rid) == (p.CREDIT, rid)
    assert p.decode_credit(record.payload) == count


@pytest.mark.parametrize("kind", [p.CANCEL, p.HEARTBEAT, p.REJECT, p.BYE])
@pytest.mark.parametrize("rid", RIDS)
def test_signal_round_trip(kind: int, rid: int) -> None:
    assert one(p.encode_signal(kind, rid)) == p.Record(kind, rid, b"")


def test_signal_rid_defaults_to_zero() -> None:
    assert one(p.encode_signal(p.BYE)).rid == 0


@pytest.mark.parametrize("capacity, window, pid, host", [
    (1, 1, 0, ""),
    (8, 8, 4242, "worker-1.example"),
    (2**32 - 1, p.MAX_WINDOW, 2**32 - 1, "h\xf4te-\u65e5\u672c"),  # utf-8, not latin-1
])
def test_ready_round_trip(capacity: int, window: int, pid: int, host: str) -> None:
    record = one(p.encode_ready(capacity, window, pid, host))
    assert (record.kind, record.rid) == (p.READY, 0)
    assert p.decode_ready(record.payload) == p.Ready(capacity, window, pid, host)


def test_ready_bad_utf8_host_is_replaced_not_fatal() -> None:
    payload = p.READY_HEAD.pack(1, 1, 1, 0) + b"\xff\xfeh"
    assert p.decode_ready(one(raw_record(p.READY, 0, payload)).payload).host == "\ufffd\ufffdh"


@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("status, message", [
    (100, ""), (413, "too large"), (500, "boom \u2603"), (599, "x" * 1000),
])
def test_error_round_trip(rid: int, status: int, message: str) -> None:
    record = one(p.encode_error(rid, status, message))
    assert (record.kind, record.rid) == (p.ERROR, rid)
    assert p.decode_error(record.payload) == (status, message)


# -- many records in one frame ----------------------------------------------------------------

def _random_record(rng: random.Random) -> tuple[bytes, int, int, Callable[[bytes], Any], Any]:
    """(encoded record, kind, rid, decoder, expected decoded payload) of a random kind."""
    rid = rng.choice([0, MAX_RID, rng.getrandbits(64)])
    data = rng.randbytes(rng.choice([0, 1, 17, 300]))
    choice = rng.randrange(9)
    if choice == 0:
        headers = [rng.choice([b"Host", b"X-A", b"Cookie"]) for _ in range(rng.randrange(4))]
        flat = [part for name in headers for part in (name, rng.randbytes(5).replace(b"\0", b"0"))]
        window = rng.randrange(1, 65536)
        flags = rng.randrange(32)
        record = request(rid, flags, headers=flat, window=window, body=data)
        expected = p.RequestHead(flags, window, "GET", "/", "HTTP/1.1", "127.0.0.1", 54321,
                                 "localhost", 8000, "http",
                                 [h.decode("latin-1") for h in flat], data)
        return record, p.REQUEST, rid, p.decode_request, expected
    if choice == 1:
        head = b"HTTP/1.1 204 No Content\r\n\r\n"
        return (p.encode_response(rid, p.RESP_END, head, data), p.RESPONSE, rid,
                p.decode_response, p.ResponseHead(p.RESP_END, head, data))
    if choice == 2:
        kind = rng.choice([p.BODY, p.CHUNK])
        return p.encode_data(kind, rid, data), kind, rid, bytes, data
    if choice == 3:
        return p.encode_end(rid, p.END_CLOSE, data), p.END, rid, p.decode_end, (p.END_CLOSE, data)
    if choice == 4:
        return p.encode_request_end(rid), p.END, rid, p.decode_end, (0, b"")
    if choice == 5:
        count = rng.getrandbits(32)
        return p.encode_credit(rid, count), p.CREDIT, rid, p.decode_credit, count
    if choice == 6:
        kind = rng.choice([p.CANCEL, p.HEARTBEAT, p.REJECT, p.BYE])
        return p.encode_signal(kind, rid), kind, rid, bytes, b""
    if choice == 7:
        ready = p.Ready(rng.randrange(1, 100), rng.randrange(1, 100), rng.getrandbits(32),
                        "host")
        return p.encode_ready(*ready), p.READY, 0, p.decode_ready, ready
    status = rng.randrange(100, 600)
    return (p.encode_error(rid, status, "msg"), p.ERROR, rid, p.decode_error,
            (status, "msg"))


@pytest.mark.parametrize("seed", range(20))
def test_frame_of_many_mixed_records(seed: int) -> None:
    rng = random.Random(seed)
    made = [_random_record(rng) for _ in range(rng.randrange(1, 200))]
    records = p.split_frame(p.frame([m[0] for m in made]))
    assert len(records) == len(made)
    for record, (_, kind, rid, decode, expected) in zip(records, made, strict=True):
        assert (record.kind, record.rid) == (kind, rid)
        assert decode(record.payload) == expected


def test_frame_of_every_kind_keeps_order() -> None:
    records = [
        request(1), p.encode_data(p.BODY, 1, b"b"), p.encode_request_end(1),
        p.encode_response(1, 0, b"HTTP/1.1 200 OK\r\n\r\n"), p.encode_data(p.CHUNK, 1, b"c"),
        p.encode_end(1, 0, b"0\r\n\r\n"), p.encode_credit(1, 2), p.encode_signal(p.CANCEL, 1),
        p.encode_ready(4, 8, 99, "h"), p.encode_signal(p.HEARTBEAT), p.encode_error(2, 502, "x"),
        p.encode_signal(p.REJECT, 3), p.encode_signal(p.BYE),
        p.encode_job(4, 0, "s", "", "", "MDP02", [b"x"], 8), p.encode_job_reply(4, 1, []),
        p.encode_stats(b"{}"), p.encode_ring(7, 3, 8, 4096, bytes(16)),
        p.encode_body_at(1, 2, 3), p.encode_pipe(7, 5, 6), p.encode_signal(p.PIPED),
    ]
    kinds = [r.kind for r in p.split_frame(p.frame(records))]
    assert kinds == [p.REQUEST, p.BODY, p.END, p.RESPONSE, p.CHUNK, p.END, p.CREDIT, p.CANCEL,
                     p.READY, p.HEARTBEAT, p.ERROR, p.REJECT, p.BYE, p.JOB, p.JOB_REPLY,
                     p.STATS, p.RING, p.BODY_AT, p.PIPE, p.PIPED]
    assert set(kinds) == set(p.KIND_NAMES)


def test_pipe_round_trip_and_refusals() -> None:
    (record,) = p.split_frame(p.frame([p.encode_pipe(4_000_000, 9, 10)]))
    assert (record.kind, record.rid) == (p.PIPE, 0)
    assert p.decode_pipe(record.payload) == (4_000_000, 9, 10)
    for payload in (b"", b"\0" * 8, b"\0" * 11, b"\0" * 13):
        with pytest.raises(ProtocolError, match="PIPE of"):
            p.decode_pipe(payload)


# -- malformed input ---------------------------------------------------------------------------

V = p.VERSION_BYTE

MALFORMED_FRAMES = {
    "empty frame": (b"", "empty"),
    "version 0": (b"\x00" + p.encode_signal(p.HEARTBEAT), "version 0"),
    "version 2": (b"\x02" + p.encode_signal(p.HEARTBEAT), "version 2"),
    "version 255, no records": (b"\xff", "version 255"),
    "unknown kind 0": (V + raw_record(0, 0, b""), "unknown record kind 0"),
    "unknown kind 20": (V + raw_record(20, 1, b"abcd"), "unknown record kind 20"),
    "unknown kind 255": (V + raw_record(255, 1, b""), "unknown record kind 255"),
    "one stray byte": (V + b"\x09", "truncated record head"),
    "head cut at 12 bytes": (V + p.encode_signal(p.BYE)[:12], "truncated record head"),
    "length overruns by one": (V + p.encode_credit(1, 5)[:-1], "overruns"),
    "length 2**32-1": (V + raw_record(p.BODY, 1, b"abc", length=2**32 - 1), "overruns"),
    "REQUEST shorter than its head": (V + raw_record(p.REQUEST, 1, b"\0" * 12), "too short"),
    "RESPONSE shorter than its head": (V + raw_record(p.RESPONSE, 1, b"\0" * 4), "too short"),
    "CREDIT of 3 bytes": (V + raw_record(p.CREDIT, 1, b"\0\0\1"), "too short"),
    "READY of 9 bytes": (V + raw_record(p.READY, 0, b"\0" * 9), "too short"),
    "ERROR of 1 byte": (V + raw_record(p.ERROR, 1, b"\1"), "too short"),
}


@pytest.mark.parametrize("data, message", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES)
def test_malformed_frame_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        p.split_frame(data)


def test_protocol_error_is_a_value_error() -> None:
    # callers that catch ValueError around decoding still catch it
    assert issubclass(ProtocolError, ValueError)


# the faults of one record (not of the frame's version byte)
RECORD_FAULTS = {name: case for name, case in MALFORMED_FRAMES.items() if case[0][:1] == V}


@pytest.mark.parametrize("data, message", RECORD_FAULTS.values(), ids=RECORD_FAULTS)
def test_a_bad_record_after_good_ones_refuses_the_whole_frame(data: bytes,
                                                              message: str) -> None:
    """1. a frame of 50 good records 2. one bad record at the end 3. ProtocolError, no
    records returned: the frame is checked whole before any of it is acted on."""
    good = [p.encode_data(p.BODY, rid, b"x" * rid) for rid in range(1, 51)]
    with pytest.raises(ProtocolError, match=message):
        p.split_frame(p.frame(good) + data[1:])


def test_a_bad_record_in_the_middle_refuses_the_whole_frame() -> None:
    good = p.encode_credit(1, 1)
    # a CREDIT declared 2 bytes long: too short, followed by good records
    data = p.frame([good, raw_record(p.CREDIT, 2, b"\0\0"), good, good])
    with pytest.raises(ProtocolError, match="CREDIT record of 2 bytes is too short"):
        p.split_frame(data)


def test_every_truncation_of_a_valid_frame_is_refused() -> None:
    """Cutting a frame of non-empty records anywhere but a record boundary is an error."""
    records = [request(1, body=b"body"), p.encode_credit(2, 9), p.encode_ready(1, 1, 1, "h"),
               p.encode_error(3, 500, "m"), p.encode_response(4, 1, b"H", b"B")]
    data = p.frame(records)
    boundaries = {1}
    for record in records:
        boundaries.add(max(boundaries) + len(record))
    for cut in range(1, len(data) + 1):
        if cut in boundaries:
            assert len(p.split_frame(data[:cut])) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(ProtocolError):
                p.split_frame(data[:cut])


# -- malformed payloads ------------------------------------------------------------------------

def _request_payload(strings: bytes, nheaders: int, strings_len: int | None = None,
                     body: bytes = b"") -> bytes:
    length = len(strings) if strings_len is None else strings_len
    return p.REQUEST_HEAD.pack(0, 1, 2, nheaders, 8, 0, length) + strings + body


SIX = b"\x00".join([b"GET", b"/", b"HTTP/1.1", b"127.0.0.1", b"localhost", b"http"])


@pytest.mark.parametrize("payload, message", [
    (_request_payload(SIX, 0, strings_len=len(SIX) + 1), "overrun"),
    (_request_payload(SIX, 0, strings_len=2**32 - 1), "overrun"),
    (_request_payload(b"", 0, strings_len=1), "overrun"),
    (_request_payload(SIX, 1), "has 6 strings, expected 8"),
    (_request_payload(SIX + b"\0Host", 1), "has 7 strings, expected 8"),
    (_request_payload(SIX + b"\0Host\0x", 0), "has 8 strings, expected 6"),
    (_request_payload(b"", 0), "has 1 strings, expected 6"),
    (_request_payload(b"GET\0/", 0, body=b"\0a\0b\0c\0d"), "has 2 strings, expected 6"),
], ids=["strings overrun by one", "strings_len 2**32-1", "strings overrun an empty record",
        "too few strings", "odd header strings", "too many strings", "no strings",
        "strings stop before the body's NULs"])
def test_malformed_request_payload(payload: bytes, message: str) -> None:
    record = one(raw_record(p.REQUEST, 1, payload))
    with pytest.raises(ProtocolError, match=message):
        p.decode_request(record.payload)


def test_request_header_with_nul_is_refused_by_the_decoder() -> None:
    """The encoder's contract says headers hold no NUL; one that does shifts the strings,
    and the decoder refuses the record rather than misread it."""
    record = one(request(headers=[b"X-Bad", b"a\0b"]))
    with pytest.raises(ProtocolError, match="has 9 strings, expected 8"):
        p.decode_request(record.payload)


@pytest.mark.parametrize("head_len", [1, 100, 2**32 - 1])
def test_response_head_overrunning_is_refused(head_len: int) -> None:
    record = one(raw_record(p.RESPONSE, 1, p.RESPONSE_HEAD.pack(0, head_len)))
    with pytest.raises(ProtocolError, match="overruns"):
        p.decode_response(record.payload)


@pytest.mark.parametrize("capacity, window", [(0, 8), (8, 0), (0, 0)])
def test_ready_with_zero_capacity_or_window_is_refused(capacity: int, window: int) -> None:
    record = one(p.encode_ready(capacity, window, 1, "h"))
    with pytest.raises(ProtocolError, match="capacity or window 0"):
        p.decode_ready(record.payload)


@pytest.mark.parametrize("window", [p.MAX_WINDOW + 1, 65535])
def test_ready_with_a_window_past_the_most_is_refused(window: int) -> None:
    """A window bounds what a worker can make the front buffer of a body: past MAX_WINDOW
    the READY is refused."""
    payload = one(p.encode_ready(1, window, 1, "h")).payload
    with pytest.raises(ProtocolError, match=f"window of {window}, over {p.MAX_WINDOW}"):
        p.decode_ready(payload)


@pytest.mark.parametrize("status", [0, 99, 600, 65535])
def test_error_with_status_out_of_range_is_refused(status: int) -> None:
    record = one(p.encode_error(1, status, "m"))
    with pytest.raises(ProtocolError, match=f"status {status}"):
        p.decode_error(record.payload)


def test_error_bad_utf8_message_is_replaced_not_fatal() -> None:
    record = one(raw_record(p.ERROR, 1, p.U16.pack(502) + b"bad \xff"))
    assert p.decode_error(record.payload) == (502, "bad \ufffd")


# -- docs/protocol.md ------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def documented_dumps() -> dict[str, bytes]:
    """The hex dumps of docs/protocol.md, by the name in their ``<!-- hex: NAME -->``."""
    dumps = {}
    for name, block in re.findall(r"<!-- hex: (\w+) -->\n```\n(.*?)```", DOCS.read_text(),
                                  re.DOTALL):
        dumps[name] = bytes.fromhex("".join(line[6:53] for line in block.splitlines()))
    return dumps


def test_documented_dumps_are_what_the_encoder_produces() -> None:
    dumps = documented_dumps()
    assert set(dumps) == {"request", "response", "ready"}
    rid = 0x5C1E0B7A93D24E01
    assert dumps["request"] == p.frame([p.encode_request(
        rid, p.REQ_BODY_COMPLETE | p.REQ_KEEP_ALIVE, b"GET", b"/hello", b"HTTP/1.1",
        b"127.0.0.1", 51234, b"127.0.0.1", 8000, b"http", [b"Host", b"localhost:8000"], 8)])
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
            b"Date: Mon, 23 Nov 2026 23:11:57 GMT\r\n\r\n")
    assert dumps["response"] == p.frame([p.encode_response(rid, p.RESP_END, head,
                                                           b"Hello, world!\n")])
    assert dumps["ready"] == p.frame([p.encode_ready(8, 8, 4242, "web1", 0, "", "default", "v2",
                                                     4200)])


# -- jobs -------------------------------------------------------------------------------------

_frames = st.lists(st.binary(max_size=64), max_size=8)


@given(flags=st.integers(0, 255), service=st.text(min_size=1, max_size=20).filter(
    lambda t: "\0" not in t), client=st.text(max_size=20).filter(lambda t: "\0" not in t),
    frames=_frames, window=st.integers(1, 0xFFFF), queue_us=st.integers(0, 0xFFFFFFFF))
def test_a_job_round_trips(flags: int, service: str, client: str, frames: list[bytes],
                           window: int, queue_us: int) -> None:
    record = p.encode_job(7, flags, service, client, "KEY", "MDP02", frames, window)
    record = p.with_queue_time(record, queue_us)
    [(kind, rid, payload)] = p.split_frame(p.frame([record]))
    assert (kind, rid) == (p.JOB, 7)
    assert p.decode_job(payload) == p.JobHead(flags, window, queue_us, service, client, "KEY",
                                              "MDP02", frames)


@given(flags=st.integers(0, 255), frames=_frames)
def test_a_job_reply_round_trips(flags: int, frames: list[bytes]) -> None:
    [(kind, rid, payload)] = p.split_frame(p.frame([p.encode_job_reply(9, flags, frames)]))
    assert (kind, rid) == (p.JOB_REPLY, 9)
    assert p.decode_job_reply(payload) == (flags, frames)


@given(st.binary(max_size=80))
def test_a_malformed_job_or_reply_raises_protocol_error_only(data: bytes) -> None:
    for decode in (p.decode_job, p.decode_job_reply):
        try:
            decode(data)
        except (ProtocolError, struct.error):
            pass  # struct.error: shorter than its head, which split_frame refuses first


def test_job_frames_are_bounded_and_exact() -> None:
    record = p.encode_job_reply(1, 0, [b"a"])
    payload = p.split_frame(p.frame([record]))[0][2]
    with pytest.raises(ProtocolError, match="after the last frame"):
        p.decode_job_reply(payload + b"x")
    with pytest.raises(ProtocolError, match="more than"):
        p.decode_job_reply(p.JOB_REPLY_HEAD.pack(0, p.MAX_JOB_FRAMES + 1))
    with pytest.raises(ProtocolError, match="overruns"):
        p.decode_job_reply(p.JOB_REPLY_HEAD.pack(0, 1) + (5).to_bytes(4, "big") + b"ab")


def test_ready_names_the_service_of_a_job_worker_only() -> None:
    payload = p.encode_ready(2, 8, 42, "host", p.READY_JOB, "resize")[p.RECORD_HEAD.size:]
    assert p.decode_ready(payload) == p.Ready(2, 8, 42, "host", p.READY_JOB, "resize")
    plain = p.encode_ready(2, 8, 42, "host")[p.RECORD_HEAD.size:]
    assert p.decode_ready(plain).service == ""
    with pytest.raises(ProtocolError):
        p.decode_ready(p.encode_ready(2, 8, 42, "host", 0, "resize")[p.RECORD_HEAD.size:])
    with pytest.raises(ProtocolError):
        p.decode_ready(p.encode_ready(2, 8, 42, "host", p.READY_JOB)[p.RECORD_HEAD.size:])


# -- READY names and STATS (pools) ------------------------------------------------------------

def test_ready_carries_pool_version_and_master() -> None:
    record = one(p.encode_ready(4, 8, 77, "web1", 0, "", "api", "v2.1", 70))
    assert p.decode_ready(record.payload) == p.Ready(4, 8, 77, "web1", 0, "", "api", "v2.1", 70)
    record = one(p.encode_ready(4, 8, 77, "web1", p.READY_STANDBY, "", "api", "v3", 70, 10))
    ready = p.decode_ready(record.payload)
    assert (ready.flags, ready.version, ready.weight) == (p.READY_STANDBY, "v3", 10)


@pytest.mark.parametrize("names, expected", [
    (b"web1", ("web1", "", "default", "", 0)),
    (b"web1\0resize", ("web1", "resize", "default", "", 0)),
    (b"web1\0\0api", ("web1", "", "api", "", 0)),
    (b"web1\0\0\0\0", ("web1", "", "default", "", 0)),
])
def test_ready_of_an_older_worker_gets_the_default_pool(names: bytes,
                                                        expected: tuple[object, ...]) -> None:
    flags = p.READY_JOB if b"resize" in names else 0
    payload = p.READY_HEAD.pack(1, 1, 9, flags) + names
    ready = p.decode_ready(one(raw_record(p.READY, 0, payload)).payload)
    assert (ready.host, ready.service, ready.pool, ready.version, ready.master) == expected


@pytest.mark.parametrize("names, message", [
    (b"h\0\0pool\0v\0notapid", "master pid"),
    (b"h\0\0pool\0v\x001\x00100\0extra", "more than six"),
    (b"h\0\0pool\0v\x001\0heavy", "weight"),
    (b"h\0\0pool\0v\x001\x002000000", "weight"),
    (b"h" * 1025, "longer than"),
])
def test_ready_with_bad_names_is_refused(names: bytes, message: str) -> None:
    payload = p.READY_HEAD.pack(1, 1, 9, 0) + names
    with pytest.raises(ProtocolError, match=message):
        p.decode_ready(one(raw_record(p.READY, 0, payload)).payload)


def test_stats_round_trip() -> None:
    data = b'{"workers": 3, "restarts": {"timeout": 1, "crash": 2}, "pool": "web"}'
    record = one(p.encode_stats(data))
    assert record.kind == p.STATS and record.rid == 0
    assert p.decode_stats(record.payload) == p.PoolStats(
        3, {"timeout": 1, "max_requests": 0, "crash": 2})


@pytest.mark.parametrize("payload", [
    b"not json", b"[1, 2]", b'{"workers": -1}', b'{"workers": true}', b'{"workers": 1.5}',
    b'{"restarts": []}', b'{"restarts": {"crash": "x"}}', b'{"restarts": {"timeout": -3}}',
    b"{" + b" " * p.MAX_STATS + b"}",
])
def test_malformed_stats_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode_stats(payload)


@given(st.binary(max_size=300))
def test_decode_stats_raises_only_protocol_error(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        p.decode_stats(payload)

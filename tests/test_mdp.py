"""The Majordomo codec (``wsgi_zmq.mdp``): each dialect's exact frames, round trips, refusals.

Frames here are what the job endpoint's ROUTER hands up after the routing id, and what the
broker sends after it. The expected frames are written out by hand from the sources, not
from the module: RFC 7 (MDP/0.1), RFC 18 (MDP/0.2) and RFC 8 (MMI) as published in
``zeromq/rfc`` (``content/docs/rfcs/{7,18,8}/README.md``), the source of majortomo 0.1.3
(``shoppimon/majortomo`` at f298c3a; line numbers below are of that commit) and the Guide's
C examples (``booksbyus/zguide`` ``examples/C/md*.c``).

The helpers ``sent_by_client`` / ``sent_by_worker`` put a message on the wire as each peer
does, and ``received_by_client`` / ``received_by_worker`` read a reply with the checks each
peer's library makes, so a round trip tests what that library would accept. The property
tests check that ``parse`` takes any list of bytes without raising anything but
``MdpError``, that everything it accepts is exactly the wire form of what it returns, and
that a reply is always in its request's form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wsgi_zmq import mdp
from wsgi_zmq.mdp import (
    MAX_ADDRESS,
    MAX_FRAMES,
    MAX_SERVICE,
    ClientRequest,
    Dialect,
    MdpError,
    WorkerCommand,
    WorkerMessage,
    client_reply,
    error_reply,
    is_mmi,
    mmi_reply,
    parse,
    worker_disconnect,
    worker_heartbeat,
    worker_request,
)

MDP01, MDP02, MAJORTOMO, BARE = Dialect.MDP01, Dialect.MDP02, Dialect.MAJORTOMO, Dialect.BARE
READY, REPLY, PARTIAL = WorkerCommand.READY, WorkerCommand.REPLY, WorkerCommand.PARTIAL
HEARTBEAT, DISCONNECT = WorkerCommand.HEARTBEAT, WorkerCommand.DISCONNECT
HEADERS = (b"MDPC01", b"MDPC02", b"MDPW01", b"MDPW02")

# Worker command bytes. RFC 7: READY 0x01, REQUEST 0x02, REPLY 0x03, HEARTBEAT 0x04,
# DISCONNECT 0x05. RFC 18 (and majortomo protocol.py lines 25-30): READY 0x01, REQUEST 0x02,
# PARTIAL 0x03, FINAL 0x04, HEARTBEAT 0x05, DISCONNECT 0x06.
WORKER_CODES = {
    1: {READY: b"\x01", REPLY: b"\x03", HEARTBEAT: b"\x04", DISCONNECT: b"\x05"},
    2: {READY: b"\x01", PARTIAL: b"\x03", REPLY: b"\x04", HEARTBEAT: b"\x05",
        DISCONNECT: b"\x06"},
}


# -- the peers, as their sources describe them ----------------------------------------------

def sent_by_client(req: ClientRequest) -> list[bytes]:
    """The frames a client of ``req.dialect`` sends for ``req``."""
    lead = [b""] if req.empty else []
    if req.dialect is MDP01:      # RFC 7 REQUEST: "", "MDPC01", service, body...
        return [*lead, b"MDPC01", req.service, *req.body]
    if req.dialect is MDP02:      # RFC 18 REQUEST: "MDPC02", 0x01, service, body...
        return [*lead, b"MDPC02", b"\x01", req.service, *req.body]
    if req.dialect is MAJORTOMO:  # majortomo client.py line 90
        return [*lead, b"MDPC02", b"\x02", req.service, *req.body]
    return [*lead, *req.body]     # a REQ socket adds the "" itself


def received_by_client(req: ClientRequest, frames: Sequence[bytes]
                       ) -> tuple[bool, bytes | None, list[bytes]]:
    """How the client that sent ``req`` reads ``frames``: (final, service frame, body).

    Fails the test where that client would refuse the reply (or, for the Guide's C clients,
    abort on an assert).
    """
    frames = list(frames)
    if req.empty:
        # A REQ socket drops a reply without the delimiter; mdcliapi2.c asserts it;
        # majortomo client.py line 149 refuses the reply without it.
        assert frames[:1] == [b""], frames
        frames = frames[1:]
    if req.dialect is MDP01:
        # mdcliapi.c: assert (zmsg_size (msg) >= 3), header MDPC01, the service it asked for
        assert len(frames) >= 3
        assert frames[0] == b"MDPC01"
        return True, frames[1], frames[2:]
    if req.dialect is MDP02:
        # RFC 18: PARTIAL "MDPC02", 0x02, service, body... / FINAL "MDPC02", 0x03, ...
        # ("4 or more frames")
        assert len(frames) >= 4
        assert frames[0] == b"MDPC02"
        assert frames[1] in (b"\x02", b"\x03")
        return frames[1] == b"\x03", frames[2], frames[3:]
    if req.dialect is MAJORTOMO:
        # majortomo client.py lines 145-161: at least 3 frames counting the "", header
        # MDPC02, command PARTIAL 0x03 or FINAL 0x04, the body right after the command
        assert len(frames) >= 2
        assert frames[0] == b"MDPC02"
        assert frames[1] in (b"\x03", b"\x04")
        return frames[1] == b"\x04", None, frames[2:]
    assert frames, "a REQ socket cannot receive a reply of no frames"
    return True, None, frames


def sent_by_worker(w: WorkerMessage) -> list[bytes]:
    """The frames a worker sends for ``w`` (RFC 7 and RFC 18 "MDP/Worker" tables)."""
    lead = [b""] if w.empty else []
    header = b"MDPW0%d" % w.version
    code = WORKER_CODES[w.version][w.command]
    if w.command is READY:
        return [*lead, header, code, w.service]
    if w.command in (REPLY, PARTIAL):
        return [*lead, header, code, w.client, b"", *w.body]
    return [*lead, header, code]


def received_by_worker(version: int, empty: bool, frames: Sequence[bytes]
                       ) -> tuple[bytes, bytes | None, list[bytes]]:
    """How a worker reads a broker command: (command byte, client, body).

    With ``empty``: mdwrkapi.c asserts the leading "" (as majortomo worker.py line 217
    refuses a command without it). REQUEST: "MDPW0v", 0x02, client, "", body... with at
    least one body frame (RFC 7 "6 or more", RFC 18 "5 or more"; majortomo worker.py 87).
    """
    frames = list(frames)
    if empty:
        assert frames[:1] == [b""], frames
        frames = frames[1:]
    assert frames[0] == b"MDPW0%d" % version
    command = frames[1]
    if command == b"\x02":
        assert len(frames) >= 5
        assert frames[2] and frames[3] == b""
        return command, frames[2], frames[4:]
    assert len(frames) == 2
    return command, None, []


# -- strategies -------------------------------------------------------------------------------

frames_st = st.binary(max_size=24)
bodies = st.lists(frames_st, min_size=1, max_size=6).map(tuple)
services = st.one_of(st.binary(min_size=1, max_size=12),
                     st.binary(min_size=MAX_SERVICE - 2, max_size=MAX_SERVICE))
addresses = st.one_of(st.binary(min_size=1, max_size=12),
                      st.binary(min_size=MAX_ADDRESS - 2, max_size=MAX_ADDRESS))


def _is_bare(req: ClientRequest) -> bool:
    """Whether a client could send ``req.body`` bare and be understood (module docstring)."""
    first = req.body[0]
    if not req.empty and first == b"":
        return False          # it would be taken for the delimiter
    return not (len(first) == 6 and first.startswith(b"MDP"))


mdp_requests = st.builds(ClientRequest, st.sampled_from([MDP01, MDP02, MAJORTOMO]),
                         st.booleans(), services, bodies)
bare_requests = st.builds(ClientRequest, st.just(BARE), st.booleans(), st.just(b""),
                          bodies).filter(_is_bare)
requests = st.one_of(mdp_requests, bare_requests)


@st.composite
def worker_messages(draw: st.DrawFn) -> WorkerMessage:
    version = draw(st.sampled_from([1, 2]))
    empty = draw(st.booleans())
    command = draw(st.sampled_from(sorted(WORKER_CODES[version], key=lambda c: c.value)))
    if command is READY:
        return WorkerMessage(version, empty, READY, draw(services), b"", ())
    if command in (REPLY, PARTIAL):
        body = tuple(draw(st.lists(frames_st, max_size=5)))
        return WorkerMessage(version, empty, command, b"", draw(addresses), body)
    return WorkerMessage(version, empty, command, b"", b"", ())


INTERESTING = [b"", *HEADERS, b"MDPC03", b"MDPC0X", b"MDPW00", b"MDPX01",
               *(bytes([code]) for code in range(8)), b"\x01\x00", b"\x04\x04",
               b"mmi.service", b"x" * MAX_SERVICE, b"x" * (MAX_SERVICE + 1)]
any_frame = st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=16))


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid client or worker message with one to three frames dropped, inserted,
    replaced or appended."""
    frames = draw(st.one_of(requests.map(sent_by_client), worker_messages().map(sent_by_worker)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "insert", "replace", "append"]))
        if op == "drop" and frames:
            del frames[draw(st.integers(0, len(frames) - 1))]
        elif op == "replace" and frames:
            frames[draw(st.integers(0, len(frames) - 1))] = draw(any_frame)
        elif op == "insert":
            frames.insert(draw(st.integers(0, len(frames))), draw(any_frame))
        else:
            frames.append(draw(any_frame))
    return frames


def check_valid(msg: ClientRequest | WorkerMessage, frames: list[bytes]) -> None:
    """What ``parse`` promises of what it returns: the invariants of its type, the frames
    are exactly the wire form of the result, and the body frames are the very objects."""
    if isinstance(msg, ClientRequest):
        assert msg.body
        if msg.dialect is BARE:
            assert msg.service == b""
        else:
            assert 0 < len(msg.service) <= MAX_SERVICE
        assert sent_by_client(msg) == frames
    else:
        assert isinstance(msg, WorkerMessage)
        assert msg.command in WORKER_CODES[msg.version]
        assert (msg.command is READY) == bool(msg.service)
        assert (msg.command in (REPLY, PARTIAL)) == bool(msg.client)
        if msg.command is READY:
            assert len(msg.service) <= MAX_SERVICE
        assert len(msg.client) <= MAX_ADDRESS
        assert sent_by_worker(msg) == frames
    if msg.body:
        assert all(a is b for a, b in zip(msg.body, frames[-len(msg.body):], strict=True))


# -- MDP/0.1 clients (RFC 7) ------------------------------------------------------------------

def test_rfc7_request_from_a_req_socket() -> None:
    # RFC 7 REQUEST: Frame 0 empty ("invisible to REQ application"), "MDPC01", service, body
    req = parse([b"", b"MDPC01", b"echo", b"Hello", b"world"])
    assert req == ClientRequest(MDP01, True, b"echo", (b"Hello", b"world"))
    # RFC 7 REPLY: Frame 0 empty, "MDPC01", service, body
    assert client_reply(req, [b"Hello"]) == [b"", b"MDPC01", b"echo", b"Hello"]
    assert received_by_client(req, client_reply(req, [b"Hello"])) == (True, b"echo", [b"Hello"])


def test_rfc7_request_from_a_dealer_without_the_delimiter_is_answered_without_it() -> None:
    # RFC 7 says a DEALER client MUST create frame 0; the issue asks us to accept it missing
    req = parse([b"MDPC01", b"echo", b"x"])
    assert req == ClientRequest(MDP01, False, b"echo", (b"x",))
    assert client_reply(req, [b"y"]) == [b"MDPC01", b"echo", b"y"]


def test_rfc7_clients_take_no_partial_reply() -> None:
    req = parse([b"", b"MDPC01", b"echo", b"x"])
    assert not MDP01.partial_replies
    with pytest.raises(ValueError, match="no partial"):
        client_reply(req, [b"part"], final=False)


def test_rfc7_reply_service_frame_can_be_overridden() -> None:
    req = parse([b"", b"MDPC01", b"echo", b"x"])
    assert client_reply(req, [b"y"], service=b"other") == [b"", b"MDPC01", b"other", b"y"]


# -- MDP/0.2 clients (RFC 18) -----------------------------------------------------------------

def test_rfc18_request_and_its_partial_and_final_replies() -> None:
    # RFC 18 REQUEST: "MDPC02", 0x01, service, body (no leading empty frame)
    req = parse([b"MDPC02", b"\x01", b"echo", b"a", b"b"])
    assert req == ClientRequest(MDP02, False, b"echo", (b"a", b"b"))
    assert MDP02.partial_replies
    # RFC 18 PARTIAL: "MDPC02", 0x02, service, body; FINAL: "MDPC02", 0x03, service, body
    assert client_reply(req, [b"p"], final=False) == [b"MDPC02", b"\x02", b"echo", b"p"]
    assert client_reply(req, [b"f"]) == [b"MDPC02", b"\x03", b"echo", b"f"]


def test_rfc18_request_with_a_leading_empty_frame_is_answered_with_one() -> None:
    req = parse([b"", b"MDPC02", b"\x01", b"echo", b"a"])
    assert req == ClientRequest(MDP02, True, b"echo", (b"a",))
    assert client_reply(req, [b"f"]) == [b"", b"MDPC02", b"\x03", b"echo", b"f"]
    assert client_reply(req, [b"p"], final=False) == [b"", b"MDPC02", b"\x02", b"echo", b"p"]


# -- majortomo's client -----------------------------------------------------------------------

def majortomo_client_reads(message: list[bytes]) -> tuple[bytes, list[bytes]]:
    """majortomo 0.1.3 ``Client._parse_message`` (client.py lines 145-161), restated: at
    least 3 frames, frame 0 empty, then b'MDPC02', then PARTIAL b'\\003' or FINAL b'\\004';
    returns (command, body)."""
    assert len(message) >= 3
    assert message[0] == b""
    assert message[1] == b"MDPC02"
    assert message[2] in (b"\x03", b"\x04")
    return message[2], message[3:]


def test_majortomo_request_and_replies() -> None:
    # majortomo client.py line 90: (b'', CLIENT_HEADER, REQUEST, service) + args,
    # REQUEST = b'\002' (protocol.py line 26)
    req = parse([b"", b"MDPC02", b"\x02", b"echo", b"a", b"b"])
    assert req == ClientRequest(MAJORTOMO, True, b"echo", (b"a", b"b"))
    assert MAJORTOMO.partial_replies
    # majortomo broker.py line 233: [client_id, b'', CLIENT_HEADER, command] + body: no
    # service frame; PARTIAL b'\003', FINAL b'\004' (protocol.py lines 27-28)
    final = client_reply(req, [b"f1", b"f2"])
    assert final == [b"", b"MDPC02", b"\x04", b"f1", b"f2"]
    assert majortomo_client_reads(final) == (b"\x04", [b"f1", b"f2"])
    partial = client_reply(req, [b"p"], final=False)
    assert partial == [b"", b"MDPC02", b"\x03", b"p"]
    assert majortomo_client_reads(partial) == (b"\x03", [b"p"])


def test_majortomo_reply_ignores_the_service_and_may_have_no_body() -> None:
    req = parse([b"", b"MDPC02", b"\x02", b"echo", b"a"])
    assert client_reply(req, [b"f"], service=b"other") == [b"", b"MDPC02", b"\x04", b"f"]
    # client.py line 145 takes a 3-frame reply: an empty body
    assert majortomo_client_reads(client_reply(req, [])) == (b"\x04", [])


def test_majortomo_form_without_its_empty_frame_is_still_majortomo() -> None:
    # 0x02 under MDPC02 is RFC 18's PARTIAL, which no client sends: no ambiguity
    req = parse([b"MDPC02", b"\x02", b"echo", b"a"])
    assert req == ClientRequest(MAJORTOMO, False, b"echo", (b"a",))
    assert client_reply(req, [b"f"]) == [b"MDPC02", b"\x04", b"f"]


# -- bare requests ----------------------------------------------------------------------------

def test_bare_request_from_a_req_socket() -> None:
    # Net::Server::ZMQ clients are plain REQ sockets: the REQ adds "", then the payload
    req = parse([b"", b"yo yo ma"])
    assert req == ClientRequest(BARE, True, b"", (b"yo yo ma",))
    assert client_reply(req, [b"YO YO MA"]) == [b"", b"YO YO MA"]
    assert not BARE.partial_replies
    with pytest.raises(ValueError, match="no partial"):
        client_reply(req, [b"YO"], final=False)


def test_bare_request_from_a_dealer_without_the_delimiter() -> None:
    req = parse([b"payload", b"more"])
    assert req == ClientRequest(BARE, False, b"", (b"payload", b"more"))
    assert client_reply(req, [b"r1", b"r2"]) == [b"r1", b"r2"]


def test_only_the_first_empty_frame_is_the_delimiter() -> None:
    req = parse([b"", b"", b"MDPC01"])
    assert req == ClientRequest(BARE, True, b"", (b"", b"MDPC01"))
    assert client_reply(req, [b"", b"r"]) == [b"", b"", b"r"]


def test_a_bare_payload_that_is_exactly_a_header_is_read_as_mdp() -> None:
    with pytest.raises(MdpError, match="MDPC01 request without"):
        parse([b"", b"MDPC01"])


@pytest.mark.parametrize("header", [b"MDPC03", b"MDPC0X", b"MDPW0X", b"MDPW00", b"MDP!!!"])
def test_an_unknown_mdp_header_is_refused_not_taken_for_a_payload(header: bytes) -> None:
    # zeromq/majordomo's libmdp uses MDPC0X/MDPW0X (libmdp/include/mdp_common.h)
    with pytest.raises(MdpError, match="unsupported MDP header"):
        parse([header, b"\x01", b"svc", b"body"])
    with pytest.raises(MdpError, match="unsupported MDP header"):
        parse([b"", header, b"\x01", b"svc", b"body"])


@pytest.mark.parametrize("payload", [b"MDP", b"MDPC0", b"MDPC010", b"mdpc01", b"xMDPC01"])
def test_near_headers_are_bare_payloads(payload: bytes) -> None:
    assert parse([b"", payload]) == ClientRequest(BARE, True, b"", (payload,))


def test_a_large_bare_payload_is_not_copied() -> None:
    big = bytes(10 * 2**20)[:-1] + b"\x01"
    req = parse([b"", big])
    assert isinstance(req, ClientRequest)
    assert req.body[0] is big


# -- MMI (RFC 8) ------------------------------------------------------------------------------

@pytest.mark.parametrize(("service", "mmi"), [
    (b"mmi.service", True), (b"mmi.echo", True), (b"mmi.", True),
    (b"mmi", False), (b"MMI.service", False), (b"echo", False), (b"", False),
])
def test_is_mmi_is_the_mmi_dot_prefix(service: bytes, mmi: bool) -> None:
    # RFC 8: "all services that start with "mmi."" (the Guide's broker: memcmp, case-sensitive)
    assert is_mmi(service) is mmi


def test_mmi_replies_in_every_dialect() -> None:
    # The Guide's mdbroker.c s_service_internal: [client, "", "MDPC01", "mmi.service", "200"]
    # for mmiecho.c's one-frame request "echo"
    cases = [
        ([b"", b"MDPC01", b"mmi.service", b"echo"], b"200",
         [b"", b"MDPC01", b"mmi.service", b"200"]),
        ([b"MDPC02", b"\x01", b"mmi.service", b"echo"], b"404",
         [b"MDPC02", b"\x03", b"mmi.service", b"404"]),
        ([b"", b"MDPC02", b"\x02", b"mmi.other", b"x"], b"501",
         [b"", b"MDPC02", b"\x04", b"501"]),
    ]
    for frames, status, reply in cases:
        req = parse(frames)
        assert isinstance(req, ClientRequest)
        assert is_mmi(req.service)
        assert mmi_reply(req, status) == reply


@pytest.mark.parametrize("status", [b"", b"200 OK", b"500", b"ok", b"20"])
def test_mmi_reply_takes_only_rfc8_statuses(status: bytes) -> None:
    req = parse([b"", b"MDPC01", b"mmi.service", b"echo"])
    assert isinstance(req, ClientRequest)
    with pytest.raises(ValueError, match="MMI status"):
        mmi_reply(req, status)


# -- broker-made failure replies --------------------------------------------------------------

def test_error_reply_is_three_body_frames_in_the_client_form() -> None:
    body = [b"wsgi_zmq.error", b"503", b"no worker for 'echo'"]
    cases = [
        ([b"", b"MDPC01", b"echo", b"x"], [b"", b"MDPC01", b"echo", *body]),
        ([b"MDPC02", b"\x01", b"echo", b"x"], [b"MDPC02", b"\x03", b"echo", *body]),
        ([b"", b"MDPC02", b"\x02", b"echo", b"x"], [b"", b"MDPC02", b"\x04", *body]),
        ([b"", b"x"], [b"", *body]),
        ([b"x"], body),
    ]
    for frames, reply in cases:
        req = parse(frames)
        assert isinstance(req, ClientRequest)
        assert error_reply(req, 503, "no worker for 'echo'") == reply


def test_error_reply_code_is_three_digits_and_message_is_utf8() -> None:
    req = parse([b"x"])
    assert isinstance(req, ClientRequest)
    assert error_reply(req, 5, "é") == [b"wsgi_zmq.error", b"005", "é".encode()]
    assert error_reply(req, 999, "\udc80")[2] == b"?"
    for code in (-1, 1000):
        with pytest.raises(ValueError, match="three digits"):
            error_reply(req, code, "x")


def test_a_reply_with_no_body_frame_is_refused_where_the_client_needs_one() -> None:
    for frames in ([b"", b"MDPC01", b"s", b"x"], [b"MDPC02", b"\x01", b"s", b"x"], [b"", b"x"]):
        req = parse(frames)
        assert isinstance(req, ClientRequest)
        with pytest.raises(ValueError, match="at least one body frame"):
            client_reply(req, [])


# -- MDP/0.1 workers (RFC 7) ------------------------------------------------------------------

def test_rfc7_worker_commands() -> None:
    # RFC 7 "MDP/Worker": every command starts with an empty frame
    assert parse([b"", b"MDPW01", b"\x01", b"echo"]) == \
        WorkerMessage(1, True, READY, b"echo", b"", ())
    assert parse([b"", b"MDPW01", b"\x03", b"c1", b"", b"r1", b"r2"]) == \
        WorkerMessage(1, True, REPLY, b"", b"c1", (b"r1", b"r2"))
    assert parse([b"", b"MDPW01", b"\x04"]) == WorkerMessage(1, True, HEARTBEAT, b"", b"", ())
    assert parse([b"", b"MDPW01", b"\x05"]) == WorkerMessage(1, True, DISCONNECT, b"", b"", ())


def test_rfc7_broker_commands_to_a_worker() -> None:
    # RFC 7 REQUEST: "", "MDPW01", 0x02, client, "", body; HEARTBEAT 0x04; DISCONNECT 0x05
    ready = parse([b"", b"MDPW01", b"\x01", b"echo"])
    assert isinstance(ready, WorkerMessage)
    assert worker_request(ready, b"\0" * 7 + b"\1", [b"a"]) == \
        [b"", b"MDPW01", b"\x02", b"\0" * 7 + b"\1", b"", b"a"]
    assert worker_heartbeat(1, True) == [b"", b"MDPW01", b"\x04"]
    assert worker_disconnect(1, True) == [b"", b"MDPW01", b"\x05"]


def test_rfc7_partial_byte_is_reply_and_0x06_is_unknown() -> None:
    assert parse([b"", b"MDPW01", b"\x03", b"c", b""]).command is REPLY  # type: ignore[union-attr]
    with pytest.raises(MdpError, match="0x06 is unknown"):
        parse([b"", b"MDPW01", b"\x06"])


# -- MDP/0.2 workers (RFC 18) and majortomo's worker ------------------------------------------

def test_rfc18_worker_commands() -> None:
    # RFC 18 "MDP/Worker": no leading empty frame
    assert parse([b"MDPW02", b"\x01", b"echo"]) == WorkerMessage(2, False, READY, b"echo", b"", ())
    assert parse([b"MDPW02", b"\x03", b"c1", b"", b"p"]) == \
        WorkerMessage(2, False, PARTIAL, b"", b"c1", (b"p",))
    assert parse([b"MDPW02", b"\x04", b"c1", b"", b"f"]) == \
        WorkerMessage(2, False, REPLY, b"", b"c1", (b"f",))
    assert parse([b"MDPW02", b"\x05"]) == WorkerMessage(2, False, HEARTBEAT, b"", b"", ())
    assert parse([b"MDPW02", b"\x06"]) == WorkerMessage(2, False, DISCONNECT, b"", b"", ())


def test_rfc18_broker_commands_to_a_worker() -> None:
    # RFC 18 REQUEST: "MDPW02", 0x02, client, "", body; HEARTBEAT 0x05; DISCONNECT 0x06
    assert worker_request((2, False), b"c1", [b"a", b"b"]) == \
        [b"MDPW02", b"\x02", b"c1", b"", b"a", b"b"]
    assert worker_heartbeat(2, False) == [b"MDPW02", b"\x05"]
    assert worker_disconnect(2, False) == [b"MDPW02", b"\x06"]


def test_majortomo_worker_commands_and_what_it_is_sent() -> None:
    # majortomo worker.py line 201: (b'', WORKER_HEADER, message_type) + args;
    # READY line 186, HEARTBEAT line 194, DISCONNECT line 189, FINAL/PARTIAL lines 196-197
    # (client, b'', *frames)
    assert parse([b"", b"MDPW02", b"\x01", b"echo"]) == \
        WorkerMessage(2, True, READY, b"echo", b"", ())
    assert parse([b"", b"MDPW02", b"\x04", b"c1", b""]) == \
        WorkerMessage(2, True, REPLY, b"", b"c1", ())            # send_reply_final(c, [])
    assert parse([b"", b"MDPW02", b"\x03", b"c1", b"", b"p"]) == \
        WorkerMessage(2, True, PARTIAL, b"", b"c1", (b"p",))
    assert parse([b"", b"MDPW02", b"\x05"]) == WorkerMessage(2, True, HEARTBEAT, b"", b"", ())
    assert parse([b"", b"MDPW02", b"\x06"]) == WorkerMessage(2, True, DISCONNECT, b"", b"", ())
    # majortomo broker.py lines 200 and 227: [worker_id, b'', WORKER_HEADER, REQUEST,
    # client, b''] + body; worker.py lines 217 and 87-93 require the "" and a body frame
    request = worker_request((2, True), b"c1", [b"a"])
    assert request == [b"", b"MDPW02", b"\x02", b"c1", b"", b"a"]
    assert received_by_worker(2, True, request) == (b"\x02", b"c1", [b"a"])
    assert worker_heartbeat(2, True) == [b"", b"MDPW02", b"\x05"]
    assert worker_disconnect(2, True) == [b"", b"MDPW02", b"\x06"]


def test_a_worker_may_register_an_mmi_service_and_the_broker_sees_it() -> None:
    # RFC 8: the broker "MUST disconnect any workers that attempt to register services in
    # this namespace": parse reports the READY, the broker decides
    ready = parse([b"MDPW02", b"\x01", b"mmi.service"])
    assert isinstance(ready, WorkerMessage)
    assert is_mmi(ready.service)


def test_worker_builders_refuse_what_the_worker_cannot_take() -> None:
    with pytest.raises(ValueError, match="version 3"):
        worker_request((3, False), b"c", [b"a"])
    with pytest.raises(ValueError, match="client address of 0 bytes"):
        worker_request((2, False), b"", [b"a"])
    with pytest.raises(ValueError, match="client address of 256 bytes"):
        worker_request((2, False), b"c" * 256, [b"a"])
    with pytest.raises(ValueError, match="at least one body frame"):
        worker_request((1, True), b"c", [])
    for build in (worker_heartbeat, worker_disconnect):
        with pytest.raises(ValueError, match="version 0"):
            build(0, False)


def test_signal_builders_return_fresh_lists() -> None:
    first = worker_heartbeat(2, True)
    first.insert(0, b"routing-id")
    assert worker_heartbeat(2, True) == [b"", b"MDPW02", b"\x05"]


# -- malformed messages -----------------------------------------------------------------------

MALFORMED = [
    ([], "no frames"),
    ([b""], "one empty frame"),
    ([b"MDPC01"], "MDPC01 request without a service frame"),
    ([b"", b"MDPC01", b"echo"], "without a service frame and a body frame"),
    ([b"", b"MDPC01", b"", b"x"], "empty service name"),
    ([b"MDPC01", b"s" * 256, b"x"], "service name of 256 bytes"),
    ([b"MDPC02"], "MDPC02 without a command frame"),
    ([b"MDPC02", b"\x01", b"echo"], "MDP/0.2 request without"),
    ([b"", b"MDPC02", b"\x02", b"echo"], "majortomo request without"),
    ([b"MDPC02", b"\x01\x00", b"echo", b"x"], "command frame of 2 bytes"),
    ([b"MDPC02", b"", b"echo", b"x"], "command frame of 0 bytes"),
    ([b"MDPC02", b"\x03", b"echo", b"x"], "0x03 is unknown here: a client sends only"),
    ([b"MDPC02", b"\x01", b"", b"x"], "empty service name"),
    ([b"MDPW02"], "MDPW02 without a command frame"),
    ([b"", b"MDPW01"], "MDPW01 without a command frame"),
    ([b"MDPW02", b"\x07"], "0x07 is unknown"),
    ([b"MDPW02", b"\x00"], "0x00 is unknown"),
    ([b"MDPW02", b"\xff"], "0xff is unknown"),
    ([b"MDPW02", b"\x05\x05"], "command frame of 2 bytes"),
    ([b"MDPW02", b"\x02", b"c", b"", b"x"], "REQUEST (0x02) from a worker"),
    ([b"", b"MDPW01", b"\x02", b"c", b"", b"x"], "REQUEST (0x02) from a worker"),
    ([b"MDPW02", b"\x01"], "READY with 0 frames after the command"),
    ([b"MDPW02", b"\x01", b"echo", b"x"], "READY with 2 frames after the command"),
    ([b"MDPW02", b"\x01", b""], "empty service name"),
    ([b"MDPW02", b"\x01", b"s" * 256], "service name of 256 bytes"),
    ([b"MDPW02", b"\x04", b"c"], "MDPW02 FINAL without a client address"),
    ([b"MDPW02", b"\x03", b"c"], "PARTIAL without a client address"),
    ([b"MDPW02", b"\x04", b"", b"", b"x"], "empty client address"),
    ([b"MDPW02", b"\x04", b"c" * 256, b"", b"x"], "client address of 256 bytes"),
    ([b"MDPW02", b"\x04", b"c", b"x", b"y"], "frame after the client address is not empty"),
    ([b"MDPW02", b"\x05", b""], "HEARTBEAT with 1 frame after the command"),
    ([b"", b"MDPW01", b"\x05", b"x", b"y"], "DISCONNECT with 2 frames after the command"),
    ([b"MDPC03", b"\x01", b"s", b"x"], "unsupported MDP header"),
]


@pytest.mark.parametrize(("frames", "reason"), MALFORMED)
def test_malformed_messages_raise_mdp_error_with_the_reason(frames: list[bytes],
                                                            reason: str) -> None:
    with pytest.raises(MdpError) as info:
        parse(frames)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_leading_empty_frame_does_not_change_the_reason() -> None:
    for frames, reason in MALFORMED:
        if frames and frames[0] != b"":
            with pytest.raises(MdpError) as info:
                parse([b"", *frames])
            assert reason in str(info.value)


def test_the_frame_count_is_bounded() -> None:
    assert parse([b"x"] * MAX_FRAMES).body == (b"x",) * MAX_FRAMES  # type: ignore[union-attr]
    with pytest.raises(MdpError, match=f"of {MAX_FRAMES + 1} frames"):
        parse([b"x"] * (MAX_FRAMES + 1))
    with pytest.raises(MdpError, match="at most 4"):
        parse([b"", b"MDPC01", b"echo", b"a", b"b"], max_frames=4)
    with pytest.raises(MdpError, match=r"of 1000001 frames"):
        parse([b""] * 1_000_001)


def test_longest_service_and_address_are_accepted() -> None:
    longest = b"s" * MAX_SERVICE
    assert parse([b"", b"MDPC01", longest, b"x"]).service == longest  # type: ignore[union-attr]
    address = b"c" * MAX_ADDRESS
    assert parse([b"MDPW02", b"\x04", address, b""]).client == address  # type: ignore[union-attr]


# -- properties -------------------------------------------------------------------------------

@given(st.lists(any_frame, max_size=10))
@example([])
@example([b""])
@example([b"", b""])
@example([b"", b"", b""])
@example([b"MDPW02", b"\x02"])
@example([b"", b"MDPC02", b"\x02"])
@example([b"MDPW01", b"\x03", b"c", b""])
def test_parse_returns_a_valid_message_or_raises_mdp_error(frames: list[bytes]) -> None:
    try:
        msg = parse(frames)
    except MdpError as error:
        assert str(error)
        return
    check_valid(msg, frames)


@given(mutated())
@example([b"", b"MDPC01", b"", b"x"])
@example([b"MDPW02", b"\x04", b"c", b"", b"", b""])
@example([b"", b"MDPW02", b"\x01", b"x" * (MAX_SERVICE + 1)])
def test_parse_of_damaged_messages_returns_a_valid_message_or_raises_mdp_error(
        frames: list[bytes]) -> None:
    try:
        msg = parse(frames)
    except MdpError:
        return
    check_valid(msg, frames)


@given(requests)
@example(ClientRequest(BARE, True, b"", (b"",)))
@example(ClientRequest(BARE, False, b"", (b"MDPC0", b"")))
@example(ClientRequest(MDP02, True, b"\x01", (b"",)))
def test_parse_gives_back_every_client_request(req: ClientRequest) -> None:
    assert parse(sent_by_client(req)) == req


@given(worker_messages())
@example(WorkerMessage(2, True, REPLY, b"", b"\x00", ()))
@example(WorkerMessage(1, False, READY, b"MDPW01", b"", ()))
def test_parse_gives_back_every_worker_message(w: WorkerMessage) -> None:
    assert parse(sent_by_worker(w)) == w


@given(requests, st.lists(frames_st, min_size=1, max_size=5), st.booleans(),
       st.one_of(st.none(), services))
@example(ClientRequest(BARE, False, b"", (b"x",)), [b""], True, None)
@example(ClientRequest(MDP01, True, b"s", (b"x",)), [b""], False, None)
def test_a_reply_is_in_the_form_of_its_request(req: ClientRequest, body: list[bytes],
                                               final: bool, service: bytes | None) -> None:
    if not final and not req.dialect.partial_replies:
        with pytest.raises(ValueError, match="no partial"):
            client_reply(req, body, final=final, service=service)
        return
    frames = client_reply(req, body, final=final, service=service)
    got_final, got_service, got_body = received_by_client(req, frames)
    assert got_final is final
    assert got_body == body
    if req.dialect in (MDP01, MDP02):
        assert got_service == (req.service if service is None else service)
    # the empty frame is the only difference between the two forms
    plain = client_reply(dataclasses.replace(req, empty=False), body, final=final,
                         service=service)
    assert frames == ([b""] if req.empty else []) + plain
    assert all(a is b for a, b in zip(frames[-len(body):], body, strict=True))


@given(requests, st.integers(0, 999), st.text(max_size=20))
def test_error_replies_reach_every_client_as_a_final_reply(req: ClientRequest, code: int,
                                                           message: str) -> None:
    final, _, body = received_by_client(req, error_reply(req, code, message))
    assert final
    assert body == [b"wsgi_zmq.error", b"%03d" % code,
                    message.encode("utf-8", "replace")]


@given(requests, st.sampled_from([b"200", b"404", b"501"]))
def test_mmi_replies_reach_every_client(req: ClientRequest, status: bytes) -> None:
    final, service, body = received_by_client(req, mmi_reply(req, status))
    assert final
    assert body == [status]
    if req.dialect in (MDP01, MDP02):
        assert service == req.service


@given(worker_messages(), addresses, bodies)
def test_a_request_to_a_worker_is_in_the_form_the_worker_used(w: WorkerMessage, client: bytes,
                                                              body: tuple[bytes, ...]) -> None:
    frames = worker_request(w, client, body)
    assert frames == worker_request((w.version, w.empty), client, body)
    assert received_by_worker(w.version, w.empty, frames) == (b"\x02", client, list(body))
    heartbeat = WORKER_CODES[w.version][HEARTBEAT]
    disconnect = WORKER_CODES[w.version][DISCONNECT]
    assert received_by_worker(w.version, w.empty, worker_heartbeat(w.version, w.empty)) == \
        (heartbeat, None, [])
    assert received_by_worker(w.version, w.empty, worker_disconnect(w.version, w.empty)) == \
        (disconnect, None, [])
    # the broker's own commands to a worker are never taken for a worker's message
    with pytest.raises(MdpError, match="from a worker"):
        parse(frames)
    assert parse(worker_heartbeat(w.version, w.empty)) == \
        WorkerMessage(w.version, w.empty, HEARTBEAT, b"", b"", ())


def test_module_constants_match_the_sources() -> None:
    assert (mdp.MDPC01, mdp.MDPC02, mdp.MDPW01, mdp.MDPW02) == HEADERS
    assert (mdp.MMI_FOUND, mdp.MMI_NOT_FOUND, mdp.MMI_NOT_IMPLEMENTED) == \
        (b"200", b"404", b"501")
    assert mdp.ERROR_TAG == b"wsgi_zmq.error"

"""The Majordomo Protocol as the job endpoint's broker sees it: pure parse and build.

Nothing here touches a socket. The front binds one ROUTER, the *job endpoint*, where MDP
clients and MDP workers written by others connect. Each multipart message the ROUTER
receives is, after the routing-id frame the ROUTER prepends (which this module never sees),
a list of *frames*; ``parse`` tells what it is and the builders make the frames to send back
(the caller puts the routing id first)::

    msg = parse(frames)                    # MdpError: log the reason, drop the message
    if isinstance(msg, ClientRequest):
        if is_mmi(msg.service):
            send(rid, mmi_reply(msg, MMI_FOUND if has_workers(msg.body[-1]) else MMI_NOT_FOUND))
        service = msg.service or default_service       # b"" for a BARE request
        ...                                 # later, with a worker's REPLY or PARTIAL `w`:
        send(rid, client_reply(msg, w.body, final=w.command is WorkerCommand.REPLY))
    elif msg.command is WorkerCommand.READY:
        send(rid, worker_request(msg, request_id, request.body))   # in the worker's form

Sources: RFC 7 (MDP/0.1, https://rfc.zeromq.org/spec/7/), RFC 18 (MDP/0.2,
https://rfc.zeromq.org/spec/18/), RFC 8 (MMI, https://rfc.zeromq.org/spec/8/), and the
source of majortomo 0.1.3 (github.com/shoppimon/majortomo: ``protocol.py``, ``client.py``,
``worker.py``, ``broker.py``). ``docs/jobs.md`` gives every frame with its source.

Client forms, by ``Dialect`` (``""`` is an empty frame; ``[""]`` an optional one, present in
the reply exactly when it was in the request)::

    MDP01      C->B  [""] "MDPC01" service body...        RFC 7: REQ sockets send the ""
               B->C  [""] "MDPC01" service body...        (REPLY; no partial replies)
    MDP02      C->B  [""] "MDPC02" 0x01 service body...   RFC 18 REQUEST (RFC 18 has no "")
               B->C  [""] "MDPC02" 0x02 service body...   PARTIAL
               B->C  [""] "MDPC02" 0x03 service body...   FINAL
    MAJORTOMO  C->B  [""] "MDPC02" 0x02 service body...   majortomo's client always sends ""
               B->C  [""] "MDPC02" 0x03 body...           PARTIAL, no service frame
               B->C  [""] "MDPC02" 0x04 body...           FINAL, no service frame
    BARE       C->B  [""] body...                         no MDP header (a plain REQ sends "")
               B->C  [""] body...                         no partial replies

majortomo's client numbers its commands as RFC 18's *worker* does (REQUEST 0x02, PARTIAL
0x03, FINAL 0x04) and reads the reply body right after the command. An RFC 18 client never
sends 0x02 under ``MDPC02`` (that is PARTIAL, broker to client), so the command byte tells
the two apart without ambiguity.

Worker forms (``[""]`` as above: RFC 7 workers send it, RFC 18 workers do not, majortomo's
worker sends it with ``MDPW02``)::

    version 1  [""] "MDPW01" 0x01 service                 READY       W->B
               [""] "MDPW01" 0x02 client "" body...       REQUEST     B->W
               [""] "MDPW01" 0x03 client "" body...       REPLY       W->B
               [""] "MDPW01" 0x04                         HEARTBEAT   both
               [""] "MDPW01" 0x05                         DISCONNECT  both
    version 2  [""] "MDPW02" 0x01 service                 READY       W->B
               [""] "MDPW02" 0x02 client "" body...       REQUEST     B->W
               [""] "MDPW02" 0x03 client "" body...       PARTIAL     W->B
               [""] "MDPW02" 0x04 client "" body...       FINAL       W->B (WorkerCommand.REPLY)
               [""] "MDPW02" 0x05                         HEARTBEAT   both
               [""] "MDPW02" 0x06                         DISCONNECT  both

``client`` is an address the broker chose (its own request id), echoed by the worker.

How a message is classified (the order matters):

1. A leading empty frame is the envelope delimiter: ``empty=True`` and the message proper
   starts at the next frame. (A DEALER whose payload starts with an empty frame must send
   an empty frame first.)
2. A first frame (of the message proper) of ``MDPC01``, ``MDPC02``, ``MDPW01`` or
   ``MDPW02`` makes it an MDP message, parsed strictly by its header.
3. Another six-byte first frame that starts with ``MDP`` (``MDPC03``, libmdp's ``MDPC0X``)
   is refused: an MDP version this broker does not speak, not a payload.
4. Anything else is BARE: all of the message proper is the body, for the broker's default
   service. At least one frame must follow the delimiter.

``parse`` raises ``MdpError`` for everything malformed: no frames, more than ``max_frames``,
a command frame that is not one known byte, a missing frame, an extra frame after READY,
HEARTBEAT or DISCONNECT, a REQUEST (broker to worker only) from a worker, a client
request with no body frame, an empty service name or one over 255 bytes, an empty client
address or one over 255 bytes, a non-empty frame where the delimiter after the client
address belongs. It never raises anything else for a list of ``bytes``, and copies no frame:
the result holds the very ``bytes`` objects it was given.

The builders raise ``ValueError`` when asked for what the dialect cannot say (a partial
reply to a client without partial replies, an empty body where the peer requires a frame).
What the broker then does (join the parts, fail the request) is its decision.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

MDPC01: Final = b"MDPC01"
MDPC02: Final = b"MDPC02"
MDPW01: Final = b"MDPW01"
MDPW02: Final = b"MDPW02"

#: The longest service name accepted (a READY's or a request's service frame). The RFCs set
#: no bound; 255 is also all that zeromq/majordomo's codec can carry ("string = number-1
#: *VCHAR", src/mdp_msg.bnf).
MAX_SERVICE: Final = 255
#: The longest client address a worker may echo, and ``worker_request`` accepts: the limit
#: of a ZeroMQ routing id, far above the broker's own 8-byte request ids.
MAX_ADDRESS: Final = 255
#: The most frames ``parse`` takes in one message (the routing id not counted).
MAX_FRAMES: Final = 1024

#: RFC 8: "An MMI broker implementation MUST handle all services that start with "mmi."
#: internally. It MUST disconnect any workers that attempt to register services in this
#: namespace."
MMI_PREFIX: Final = b"mmi."
MMI_SERVICE: Final = b"mmi.service"
MMI_FOUND: Final = b"200"
MMI_NOT_FOUND: Final = b"404"
MMI_NOT_IMPLEMENTED: Final = b"501"
_MMI_STATUSES: Final = frozenset((MMI_FOUND, MMI_NOT_FOUND, MMI_NOT_IMPLEMENTED))

#: The first body frame of a reply the broker makes itself (``error_reply``).
ERROR_TAG: Final = b"wsgi_zmq.error"

_EMPTY: Final = b""

# Command frames. RFC 18's client numbering differs from its worker numbering; majortomo's
# client uses the worker numbering (majortomo/protocol.py lines 25-30).
_MDP02_REQUEST: Final = b"\x01"
_MDP02_PARTIAL: Final = b"\x02"
_MDP02_FINAL: Final = b"\x03"
_MAJORTOMO_REQUEST: Final = b"\x02"
_MAJORTOMO_PARTIAL: Final = b"\x03"
_MAJORTOMO_FINAL: Final = b"\x04"
_WORKER_REQUEST: Final = b"\x02"   # the same byte in RFC 7 and RFC 18


class MdpError(ValueError):
    """A message that is malformed for its dialect (the reason in ``str()``)."""


class Dialect(enum.Enum):
    """The wire form a client used; its reply is built in the same form."""

    MDP01 = "MDP/0.1"        # RFC 7 client (REQ): "", "MDPC01", service, body...
    MDP02 = "MDP/0.2"        # RFC 18 client (DEALER): "MDPC02", 0x01, service, body...
    MAJORTOMO = "majortomo"  # majortomo's client: "", "MDPC02", 0x02, service, body...
    BARE = "bare"            # no MDP header: the whole message is the body

    @property
    def partial_replies(self) -> bool:
        """Whether clients of this dialect take PARTIAL replies before the FINAL one."""
        return self is Dialect.MDP02 or self is Dialect.MAJORTOMO


class WorkerCommand(enum.Enum):
    """What a worker sent. ``REPLY`` is MDP/0.1's REPLY and MDP/0.2's FINAL."""

    READY = "READY"
    REPLY = "REPLY"
    PARTIAL = "PARTIAL"
    HEARTBEAT = "HEARTBEAT"
    DISCONNECT = "DISCONNECT"


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client's request. ``parse`` guarantees: ``body`` has at least one frame; for the
    MDP dialects ``service`` is 1 to ``MAX_SERVICE`` bytes; for ``BARE`` it is ``b""`` (the
    broker substitutes its default service)."""

    dialect: Dialect
    empty: bool          # the client sent a leading empty frame: replies carry one too
    service: bytes
    body: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class WorkerMessage:
    """A worker's command. ``service`` is set for READY only (1 to ``MAX_SERVICE`` bytes,
    possibly in the ``mmi.`` namespace: the broker must then DISCONNECT the worker, RFC 8);
    ``client`` for REPLY and PARTIAL only (1 to ``MAX_ADDRESS`` bytes), with ``body``,
    which may be empty (majortomo's ``send_reply_final(client, [])`` sends no body frame).
    Every other field is empty."""

    version: int         # 1 (MDPW01) or 2 (MDPW02)
    empty: bool          # the worker sent a leading empty frame: commands to it carry one
    command: WorkerCommand
    service: bytes
    client: bytes
    body: tuple[bytes, ...]


# -- parsing ------------------------------------------------------------------------------

def parse(frames: Sequence[bytes], *, max_frames: int = MAX_FRAMES
          ) -> ClientRequest | WorkerMessage:
    """Classify and parse one message from the job endpoint (routing id removed).

    Returns a ``ClientRequest`` (any ``Dialect``) or a ``WorkerMessage``. Raises ``MdpError``
    if the message is malformed for its header, if it has no frames, or more than
    ``max_frames``. The classification rule is in the module docstring.
    """
    count = len(frames)
    if count == 0:
        raise MdpError("a message of no frames")
    if count > max_frames:
        raise MdpError(f"a message of {count} frames (at most {max_frames})")
    if frames[0]:
        empty = False
        at = 0
    elif count == 1:
        raise MdpError("a message of one empty frame")
    else:
        empty = True
        at = 1
    header = frames[at]
    # Test the length before the lookup: a large bare payload is never hashed.
    if len(header) != 6:
        return ClientRequest(Dialect.BARE, empty, _EMPTY, tuple(frames[at:]))
    parse_rest = _BY_HEADER.get(header)
    if parse_rest is None:
        if header.startswith(b"MDP"):
            raise MdpError(f"unsupported MDP header {header!r}")
        return ClientRequest(Dialect.BARE, empty, _EMPTY, tuple(frames[at:]))
    return parse_rest(frames, at, empty)


def _parse_mdpc01(frames: Sequence[bytes], at: int, empty: bool) -> ClientRequest:
    # RFC 7: "", "MDPC01", service, body... ("4 or more frames": at least one body frame)
    if len(frames) < at + 3:
        raise MdpError("MDPC01 request without a service frame and a body frame")
    service = frames[at + 1]
    _check_service(service)
    return ClientRequest(Dialect.MDP01, empty, service, tuple(frames[at + 2:]))


def _parse_mdpc02(frames: Sequence[bytes], at: int, empty: bool) -> ClientRequest:
    # RFC 18: "MDPC02", 0x01, service, body... ("4 or more frames");
    # majortomo (client.py line 90): "", "MDPC02", 0x02, service, body...
    if len(frames) < at + 2:
        raise MdpError("MDPC02 without a command frame")
    command = frames[at + 1]
    if command == _MDP02_REQUEST:
        dialect = Dialect.MDP02
    elif command == _MAJORTOMO_REQUEST:
        dialect = Dialect.MAJORTOMO
    else:
        raise MdpError(_bad_command(MDPC02, command, "a client sends only REQUEST, 0x01 "
                                                    "(majortomo: 0x02)"))
    if len(frames) < at + 4:
        raise MdpError(f"{dialect.value} request without a service frame and a body frame")
    service = frames[at + 2]
    _check_service(service)
    return ClientRequest(dialect, empty, service, tuple(frames[at + 3:]))


_READY, _REPLY, _PARTIAL, _HEARTBEAT, _DISCONNECT = (
    WorkerCommand.READY, WorkerCommand.REPLY, WorkerCommand.PARTIAL, WorkerCommand.HEARTBEAT,
    WorkerCommand.DISCONNECT)

# Worker command byte -> command, indexed by the byte. None: unknown, or REQUEST (0x02),
# which only the broker sends.
_W1_COMMANDS: Final = (None, _READY, None, _REPLY, _HEARTBEAT, _DISCONNECT)                # RFC 7
_W2_COMMANDS: Final = (None, _READY, None, _PARTIAL, _REPLY, _HEARTBEAT, _DISCONNECT)      # RFC 18

# HEARTBEAT and DISCONNECT carry nothing but their form: one shared object per form.
_SIGNALS: Final = {
    (version, empty, command): WorkerMessage(version, empty, command, _EMPTY, _EMPTY, ())
    for version in (1, 2) for empty in (False, True) for command in (_HEARTBEAT, _DISCONNECT)
}


def _parse_worker(frames: Sequence[bytes], at: int, empty: bool, version: int,
                  header: bytes, commands: tuple[WorkerCommand | None, ...]) -> WorkerMessage:
    count = len(frames)
    if count < at + 2:
        raise MdpError(f"{header.decode()} without a command frame")
    frame = frames[at + 1]
    if len(frame) != 1:
        raise MdpError(_bad_command(header, frame, ""))
    code = frame[0]
    command = commands[code] if code < len(commands) else None
    if command is None:
        if frame == _WORKER_REQUEST:
            raise MdpError(f"{header.decode()} REQUEST (0x02) from a worker: only the broker "
                           "sends it")
        raise MdpError(_bad_command(header, frame, ""))
    if command is _READY:
        if count != at + 3:
            raise MdpError(f"{_name(header, command)} with {_frames(count - at - 2)} after the "
                           "command (it takes exactly one, the service)")
        service = frames[at + 2]
        _check_service(service)
        return WorkerMessage(version, empty, _READY, service, _EMPTY, ())
    if command is _REPLY or command is _PARTIAL:
        if count < at + 4:
            raise MdpError(f"{_name(header, command)} without a client address and an empty "
                           "frame")
        client = frames[at + 2]
        if not client:
            raise MdpError(f"{_name(header, command)} with an empty client address")
        if len(client) > MAX_ADDRESS:
            raise MdpError(f"{_name(header, command)} with a client address of {len(client)} "
                           f"bytes (at most {MAX_ADDRESS})")
        if frames[at + 3]:
            raise MdpError(f"{_name(header, command)}: the frame after the client address is "
                           "not empty")
        return WorkerMessage(version, empty, command, _EMPTY, client, tuple(frames[at + 4:]))
    if count != at + 2:
        raise MdpError(f"{_name(header, command)} with {_frames(count - at - 2)} after the "
                       "command (it takes none)")
    return _SIGNALS[version, empty, command]


def _parse_mdpw01(frames: Sequence[bytes], at: int, empty: bool) -> WorkerMessage:
    return _parse_worker(frames, at, empty, 1, MDPW01, _W1_COMMANDS)


def _parse_mdpw02(frames: Sequence[bytes], at: int, empty: bool) -> WorkerMessage:
    return _parse_worker(frames, at, empty, 2, MDPW02, _W2_COMMANDS)


_BY_HEADER: Final[dict[bytes, Callable[[Sequence[bytes], int, bool],
                                       ClientRequest | WorkerMessage]]] = {
    MDPC01: _parse_mdpc01, MDPC02: _parse_mdpc02, MDPW01: _parse_mdpw01, MDPW02: _parse_mdpw02,
}


def _check_service(service: bytes) -> None:
    if not service:
        raise MdpError("an empty service name")
    if len(service) > MAX_SERVICE:
        raise MdpError(f"a service name of {len(service)} bytes (at most {MAX_SERVICE})")


def _name(header: bytes, command: WorkerCommand) -> str:
    """``MDPW01 REPLY``, ``MDPW02 FINAL``: a command as its RFC names it (error path only)."""
    if command is _REPLY and header == MDPW02:
        return "MDPW02 FINAL"
    return f"{header.decode()} {command.value}"


def _frames(count: int) -> str:
    return "1 frame" if count == 1 else f"{count} frames"


def _bad_command(header: bytes, frame: bytes, hint: str) -> str:
    """The reason for an unusable command frame (only built on the error path)."""
    if len(frame) != 1:
        reason = f"{header.decode()} command frame of {len(frame)} bytes (a command is one byte)"
    else:
        reason = f"{header.decode()} command 0x{frame[0]:02x} is unknown here"
    return f"{reason}: {hint}" if hint else reason


# -- replies to clients -----------------------------------------------------------------------

def client_reply(req: ClientRequest, body: Sequence[bytes], *, final: bool = True,
                 service: bytes | None = None) -> list[bytes]:
    """The frames of a reply to ``req``'s client, in the form (dialect, empty frame) it used.

    ``final=False`` makes a PARTIAL reply, which only ``MDP02`` and ``MAJORTOMO`` clients
    take (``Dialect.partial_replies``); for ``MDP01`` and ``BARE`` it raises ``ValueError``,
    and the broker joins the parts or sends them otherwise, as it decides. ``service``
    (default ``req.service``) fills the service frame of ``MDP01`` and ``MDP02`` replies;
    ``MAJORTOMO`` and ``BARE`` replies have none. ``body`` must have at least one frame,
    except for ``MAJORTOMO`` (RFC 7 and RFC 18 give replies "4 or more frames", and a REQ
    socket cannot receive a bare reply of no frames; majortomo's client takes an empty one,
    client.py line 145); otherwise ``ValueError``. The body frames are not copied.
    """
    dialect = req.dialect
    if dialect is Dialect.MAJORTOMO:
        # majortomo client.py lines 145-161: "", "MDPC02", 0x03 | 0x04, body...
        command = _MAJORTOMO_FINAL if final else _MAJORTOMO_PARTIAL
        if req.empty:
            return [_EMPTY, MDPC02, command, *body]
        return [MDPC02, command, *body]
    if not body:
        raise ValueError(f"a reply to a {dialect.value} client needs at least one body frame")
    if dialect is Dialect.MDP02:
        command = _MDP02_FINAL if final else _MDP02_PARTIAL
        name = req.service if service is None else service
        if req.empty:
            return [_EMPTY, MDPC02, command, name, *body]
        return [MDPC02, command, name, *body]
    if not final:
        raise ValueError(f"{dialect.value} clients take no partial replies")
    if dialect is Dialect.MDP01:
        name = req.service if service is None else service
        if req.empty:
            return [_EMPTY, MDPC01, name, *body]
        return [MDPC01, name, *body]
    if req.empty:
        return [_EMPTY, *body]
    return list(body)


def error_reply(req: ClientRequest, code: int, message: str) -> list[bytes]:
    """A final reply the broker makes itself: the body is exactly ``ERROR_TAG``, the code as
    three digits, and ``message`` in UTF-8 (unencodable characters replaced), in the client's
    form and with ``req.service`` in the service frame. ``code`` is 0 to 999, else
    ``ValueError``."""
    if not 0 <= code <= 999:
        raise ValueError(f"error code {code} is not three digits")
    return client_reply(req, (ERROR_TAG, b"%03d" % code, message.encode("utf-8", "replace")))


def is_mmi(service: bytes) -> bool:
    """Whether ``service`` is in the MMI namespace (RFC 8: names that start with "mmi.")."""
    return service.startswith(MMI_PREFIX)


def mmi_reply(req: ClientRequest, status: bytes) -> list[bytes]:
    """The reply to an MMI request: the body is the one frame ``status``, in the client's
    form, with the ``mmi.`` service name in the service frame.

    RFC 8: ``mmi.service`` answers ``200`` if a worker is registered for the service named in
    the request (the Guide's broker reads the name from the last body frame), else ``404``;
    any other ``mmi.`` service ``501``. Any other ``status`` raises ``ValueError``.
    """
    if status not in _MMI_STATUSES:
        raise ValueError(f"MMI status {status!r} is not 200, 404 or 501")
    return client_reply(req, (status,))


# -- commands to workers ----------------------------------------------------------------------

_WORKER_HEADERS: Final = {1: MDPW01, 2: MDPW02}
_WORKER_SIGNALS: Final = {
    # (version, empty, command) -> frames. HEARTBEAT and DISCONNECT are 0x04 and 0x05 in
    # RFC 7, 0x05 and 0x06 in RFC 18.
    (version, empty, command): ((_EMPTY,) if empty else ()) + (header, bytes([code]))
    for version, header, heartbeat in ((1, MDPW01, 0x04), (2, MDPW02, 0x05))
    for empty in (False, True)
    for command, code in ((_HEARTBEAT, heartbeat), (_DISCONNECT, heartbeat + 1))
}


def worker_request(w: WorkerMessage | tuple[int, bool], client: bytes,
                   body: Sequence[bytes]) -> list[bytes]:
    """The REQUEST frames that give a worker ``body`` for the client address ``client``.

    ``w`` is a message from that worker, or its ``(version, empty)``: the REQUEST has the
    worker's version and leading empty frame (an RFC 7 or majortomo worker asserts it; an
    RFC 18 worker does not expect it). ``client`` is 1 to ``MAX_ADDRESS`` bytes and ``body``
    at least one frame (RFC 7 and RFC 18: "6 or more" / "5 or more frames"; majortomo's
    worker refuses a REQUEST without a body frame, worker.py line 87); else ``ValueError``.
    """
    if isinstance(w, WorkerMessage):
        version, empty = w.version, w.empty
    else:
        version, empty = w
    header = _WORKER_HEADERS.get(version)
    if header is None:
        raise ValueError(f"MDP worker version {version} (1 or 2)")
    if not 0 < len(client) <= MAX_ADDRESS:
        raise ValueError(f"a client address of {len(client)} bytes (1 to {MAX_ADDRESS})")
    if not body:
        raise ValueError("a REQUEST needs at least one body frame")
    if empty:
        return [_EMPTY, header, _WORKER_REQUEST, client, _EMPTY, *body]
    return [header, _WORKER_REQUEST, client, _EMPTY, *body]


def worker_heartbeat(version: int, empty: bool) -> list[bytes]:
    """A HEARTBEAT for a worker of ``version`` (1 or 2, else ``ValueError``), with a leading
    empty frame if ``empty``."""
    return _worker_signal(version, empty, _HEARTBEAT)


def worker_disconnect(version: int, empty: bool) -> list[bytes]:
    """A DISCONNECT for a worker of ``version`` (1 or 2, else ``ValueError``), with a leading
    empty frame if ``empty``. A majortomo worker stops serving on it for good (it closes and
    does not reconnect: majortomo worker.py lines 79-82, 262-264)."""
    return _worker_signal(version, empty, _DISCONNECT)


def _worker_signal(version: int, empty: bool, command: WorkerCommand) -> list[bytes]:
    frames = _WORKER_SIGNALS.get((version, bool(empty), command))
    if frames is None:
        raise ValueError(f"MDP worker version {version} (1 or 2)")
    return list(frames)

"""The PROXY protocol header (HAProxy, versions 1 and 2): a sans-IO parser.

A proxy in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, stunnel ``protocol = proxy``,
a cloud load balancer) cannot add ``X-Forwarded-For`` to a stream it does not understand, so
it writes one header before the first byte of the connection that names the client's
address. The front reads that header before anything else, then parses HTTP from the byte
after it. With ``proxy_protocol`` other than ``off``, for each new connection from a peer in
``proxy_allow_ips``::

    buffer = b""
    while (result := parse_proxy_header(buffer, cfg.proxy_protocol)) is None:
        chunk = sock.recv(4096)          # under the front's header timeout
        if not chunk:
            return                       # closed before a whole header: drop quietly
        buffer += chunk
    info, used = result                  # ProxyProtocolError (a 400) propagates: close
    if info.source_addr is not None:     # else keep the connection's own addresses
        remote_addr, remote_port = info.source_addr, info.source_port
    request_parser.feed(buffer[used:])   # may be empty; never part of the header

``parse_proxy_header`` keeps no state: it is given everything read so far and answers
``None`` (read more), ``(info, used)`` or raises. Its answer for a given stream therefore
cannot depend on how the stream was split into reads. It raises as soon as the bytes seen
cannot begin a valid header (an HTTP request line in ``v1`` mode fails on its first byte),
so a peer that does not speak the protocol is refused at once instead of timing out.

The modes are the ones of gunicorn's ``--proxy-protocol``: ``v1`` accepts only the text
header, ``v2`` only the binary one, ``auto`` either (told apart by the first byte). In every
mode the header is required: the specification (section 5) forbids guessing whether one is
present, since a client could then spoof its address; trust is the front's decision
(``proxy_allow_ips``), made before this parser is called.

The specification is "The PROXY protocol, Versions 1 & 2" (Willy Tarreau, HAProxy
Technologies, revision 2020/03/05; ``doc/proxy-protocol.txt`` in HAProxy's sources).
Section 2.1 defines version 1::

    "PROXY" SP ( "TCP4" | "TCP6" ) SP src-addr SP dst-addr SP src-port SP dst-port CRLF
    "PROXY" SP "UNKNOWN" [ SP <anything but CRLF> ] CRLF

at most 107 bytes with the CRLF. Section 2.2 defines version 2::

    offset  size  field
         0    12  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
        12     1  ver_cmd    high nibble: version, 2; low nibble: 0 LOCAL, 1 PROXY
        13     1  fam        high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX;
                             low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM
        14     2  len        big-endian: the number of bytes that follow
        16   len  addresses  INET: src 4, dst 4, src port 2, dst port 2 (12 bytes)
                             INET6: src 16, dst 16, src port 2, dst port 2 (36 bytes)
                             UNIX: src 108, dst 108 (216 bytes)
                  TLVs       type 1, length 2, value: the rest of len, skipped here

Addresses come back as text in the form ``socket.inet_ntop`` gives (lower case, the longest
run of zero groups compressed, IPv4-mapped IPv6 as ``::ffff:192.0.2.1``), the form the
front's own peer addresses take, so a client reads the same through either version.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Final, NamedTuple

from wsgi_zmq.errors import BadRequest

#: Section 2.1: the longest version 1 line a receiver must accept, CRLF included ("PROXY
#: UNKNOWN" with two full IPv6 addresses and two 5-digit ports). No CRLF in the first 107
#: bytes means the line is invalid.
MAX_V1_LENGTH: Final = 107
#: Section 2: "Both formats are designed to fit in the smallest TCP segment that any TCP/IP
#: host is required to support (576 - 40 = 536 bytes)", so a version 2 header (16 bytes,
#: addresses, TLVs) longer than this is refused as soon as its ``len`` field is read.
MAX_V2_LENGTH: Final = 536
#: Section 2.2: the 12 bytes that start every version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

MODES: Final = frozenset({"v1", "v2", "auto"})


class ProxyProtocolError(BadRequest):
    """The connection did not start with a valid PROXY protocol header of an accepted version.

    A 400 that closes the connection (section 2.1: "Any sequence which does not exactly
    match the protocol must be discarded and cause the receiver to abort the connection").
    """


class ProxyInfo(NamedTuple):
    """The original connection's endpoints, as the proxy reports them.

    All four are ``None`` when the header carries no address the front can use: version 1
    ``UNKNOWN``, version 2 ``LOCAL`` (the proxy's own health check), and version 2 ``PROXY``
    for any family and transport other than TCP over IPv4 or IPv6 (``UNSPEC``, ``UNIX``,
    ``DGRAM``; section 2.2 lets a receiver fall back to ``UNSPEC`` for those). The front
    then keeps the connection's own addresses. Otherwise all four are set.
    """

    source_addr: str | None
    source_port: int | None
    dest_addr: str | None
    dest_port: int | None


_NO_ADDRESSES: Final = ProxyInfo(None, None, None, None)

# -- version 1 (section 2.1) ---------------------------------------------------------------

_V1_START: Final = b"PROXY "
_TCP4: Final = b"TCP4"
_TCP6: Final = b"TCP6"
_UNKNOWN: Final = b"UNKNOWN"
_V1_PROTOCOLS: Final = (_TCP4, _TCP6, _UNKNOWN)
_UNKNOWN_LINE: Final = b"PROXY UNKNOWN"
# The shortest text each field of a TCP line can be completed to ("0.0.0.0", "::", "0"),
# after the protocol: source, destination, source port, destination port.
_V1_SHORTEST: Final = {_TCP4: (7, 7, 1, 1), _TCP6: (2, 2, 1, 1)}
_V1_FIELDS: Final = ("source address", "destination address", "source port",
                     "destination port")

# "IPv4 addresses must be indicated as a series of exactly 4 integers in the range [0..255]
# inclusive written in decimal representation separated by exactly one dot [...] Heading
# zeroes are not permitted" (ipaddress refuses leading zeros too).
_OCTET: Final = re.compile(rb"0|1[0-9]{0,2}|2(?:[0-4][0-9]?|5[0-5]?|[6-9])?|[3-9][0-9]?")
_IPV4_TEXT: Final = re.compile(rb"[0-9.]{7,15}")
# "IPv6 addresses must be indicated as series of sets of 4 hexadecimal digits (upper or
# lower case) delimited by colons [...] with the acceptance of one double colon". A dotted
# IPv4 tail (RFC 4291 section 2.2, form 3) is accepted as well: HAProxy formats addresses
# with inet_ntop, which writes IPv4-mapped addresses that way, and parses them with
# inet_pton. A zone index ("%eth0", which ipaddress would accept) is not an address.
_IPV6_TEXT: Final = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_IPV6_CHARS: Final = re.compile(rb"[0-9A-Fa-f:.]*")
_H16: Final = re.compile(rb"[0-9A-Fa-f]{1,4}")
# "the TCP source port represented as a decimal integer in the range [0..65535] inclusive.
# Heading zeroes are not permitted"; no sign either.
_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")

# -- version 2 (section 2.2) ---------------------------------------------------------------

_V2_HEADER: Final = 16
_LOCAL: Final = 0x0
_PROXY: Final = 0x1
_TCP_OVER_IPV4: Final = 0x11
_TCP_OVER_IPV6: Final = 0x21
# The address block each defined family and transport byte announces ("Address length is
# 2*4 + 2*2 = 12 bytes", ...); a shorter ``len`` cannot hold it.
_V2_ADDRESS_LENGTH: Final = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


def parse_proxy_header(data: bytes, mode: str) -> tuple[ProxyInfo, int] | None:
    """Parse the PROXY protocol header at the start of ``data``, all a connection has sent.

    ``mode`` is ``"v1"``, ``"v2"`` or ``"auto"`` (either version); anything else, ``"off"``
    included, is a ``ValueError``: the caller decides whether to read a header at all.

    Returns ``(info, used)`` once ``data`` holds a whole valid header: ``used`` is the
    header's length, and ``data[used:]`` is the start of the HTTP stream, never read here.
    Returns ``None`` when ``data`` is a proper prefix of some valid header of an accepted
    version, and only then: call again with more bytes.

    Raises ``ProxyProtocolError`` as soon as ``data`` cannot begin a valid header: a header
    of a version ``mode`` does not accept, anything else that is not a header, a version 1
    line without CRLF in its first ``MAX_V1_LENGTH`` bytes (or that could no longer end
    within them), a protocol other than ``TCP4``, ``TCP6`` or ``UNKNOWN``, an address that
    is not of the announced family or not in its canonical text form, a port outside
    0-65535 or written with a sign or a leading zero; a version 2 version other than 2, a
    command other than ``LOCAL`` or ``PROXY``, a ``PROXY`` family or transport nibble the
    specification does not define, a length too short for the announced addresses or
    making the header longer than ``MAX_V2_LENGTH``.

    Cost: one ``find`` for the CRLF and the parse of one line (version 1), or a few slices
    (version 2), when the header arrives in one read as section 2 asks senders to ensure;
    the more careful check that a partial header can still become valid runs only while
    it is incomplete. Nothing is kept between calls.
    """
    if mode not in MODES:
        raise ValueError(f"PROXY protocol mode must be one of v1, v2, auto, not {mode!r}")
    if not data:
        return None
    # Section 2.2 tells the versions apart by their first bytes: the v2 signature starts
    # with CR, a v1 line with "P".
    first = data[0]
    if first == 0x50 and mode != "v2":
        return _parse_v1(data)
    if first == 0x0D and mode != "v1":
        return _parse_v2(data)
    if _V1_START.startswith(data[:6]):
        raise ProxyProtocolError("PROXY protocol v1 header, but only v2 is accepted")
    if V2_SIGNATURE.startswith(data[:12]):
        raise ProxyProtocolError("PROXY protocol v2 header, but only v1 is accepted")
    raise ProxyProtocolError("The connection does not start with a PROXY protocol header")


# -- version 1 -----------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        _check_v1_prefix(data[:MAX_V1_LENGTH])
        return None
    return _parse_v1_line(data[:end]), end + 2


def _parse_v1_line(line: bytes) -> ProxyInfo:
    """The ``ProxyInfo`` of a whole version 1 line (without its CRLF), or raise."""
    if not line.startswith(_V1_START):
        raise ProxyProtocolError("PROXY protocol v1 line does not start with 'PROXY '")
    fields = line.split(b" ")
    protocol = fields[1]
    if protocol == _UNKNOWN:
        # "the receiver must ignore anything presented before the CRLF is found"
        return _NO_ADDRESSES
    if protocol != _TCP4 and protocol != _TCP6:
        raise ProxyProtocolError("PROXY protocol v1 protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError("PROXY protocol v1 line does not have exactly 6 fields "
                                 "separated by single spaces")
    if protocol == _TCP4:
        source, dest = _ipv4(fields[2], 0), _ipv4(fields[3], 1)
    else:
        source, dest = _ipv6(fields[2], 0), _ipv6(fields[3], 1)
    return ProxyInfo(source, _port(fields[4], 2), dest, _port(fields[5], 3))


def _ipv4(text: bytes, field: int) -> str:
    if _IPV4_TEXT.fullmatch(text):
        try:
            ipaddress.IPv4Address(text.decode("ascii"))
        except ValueError:
            pass
        else:
            return text.decode("ascii")  # the canonical form is the only one accepted
    raise ProxyProtocolError(f"PROXY protocol v1 {_V1_FIELDS[field]} is not an IPv4 address")


def _ipv6(text: bytes, field: int) -> str:
    if _IPV6_TEXT.fullmatch(text):
        try:
            address = ipaddress.IPv6Address(text.decode("ascii"))
        except ValueError:
            pass
        else:
            return socket.inet_ntop(socket.AF_INET6, address.packed)
    raise ProxyProtocolError(f"PROXY protocol v1 {_V1_FIELDS[field]} is not an IPv6 address")


def _port(text: bytes, field: int) -> int:
    if _PORT.fullmatch(text):
        port = int(text)
        if port <= 0xFFFF:
            return port
    raise ProxyProtocolError(f"PROXY protocol v1 {_V1_FIELDS[field]} is not a port "
                             "(0-65535, no leading zero)")


def _check_v1_prefix(part: bytes) -> None:
    """Raise unless ``part`` (no CRLF in it) can be completed to a valid line of at most
    ``MAX_V1_LENGTH`` bytes, CRLF included."""
    size = len(part)
    if size >= MAX_V1_LENGTH:
        raise ProxyProtocolError(f"PROXY protocol v1 line without CRLF in its first "
                                 f"{MAX_V1_LENGTH} bytes")
    if size <= len(_V1_START):
        if not _V1_START.startswith(part):
            raise ProxyProtocolError("PROXY protocol v1 line does not start with 'PROXY '")
        return
    if part.startswith(_UNKNOWN_LINE):
        tail = part[len(_UNKNOWN_LINE):]
        if not tail or tail == b"\r" or tail[0] == 0x20:
            # "PROXY UNKNOWN" then anything: only the room left for the CRLF matters
            _check_room(size + (1 if part[-1] == 0x0D else 2))
            return
    if part[-1] == 0x0D:
        # only LF may follow a CR: the line before it must be whole and valid
        _parse_v1_line(part[:-1])
        return
    if not part.startswith(_V1_START):
        raise ProxyProtocolError("PROXY protocol v1 line does not start with 'PROXY '")
    fields = part.split(b" ")
    protocol = fields[1]
    if len(fields) == 2:
        if not any(name.startswith(protocol) for name in _V1_PROTOCOLS):
            raise ProxyProtocolError("PROXY protocol v1 protocol is not TCP4, TCP6 or "
                                     "UNKNOWN")
        return
    if protocol != _TCP4 and protocol != _TCP6:
        raise ProxyProtocolError("PROXY protocol v1 protocol is not TCP4, TCP6 or UNKNOWN")
    fields = fields[2:]
    if len(fields) > 4:
        raise ProxyProtocolError("PROXY protocol v1 line does not have exactly 6 fields "
                                 "separated by single spaces")
    last = len(fields) - 1
    for index in range(last):  # the fields already followed by their space are whole
        if index < 2:
            (_ipv4 if protocol == _TCP4 else _ipv6)(fields[index], index)
        else:
            _port(fields[index], index)
    if last < 2:
        rest = (_ipv4_rest if protocol == _TCP4 else _ipv6_rest)(fields[last])
    else:
        rest = _port_rest(fields[last])
    if rest is None:
        raise ProxyProtocolError(f"PROXY protocol v1 {_V1_FIELDS[last]} is not "
                                 + ("a port (0-65535, no leading zero)" if last >= 2 else
                                    "an IPv4 address" if protocol == _TCP4 else
                                    "an IPv6 address"))
    # what the shortest completion still needs: the rest of this field, each missing field
    # with its space, and the CRLF
    shortest = _V1_SHORTEST[protocol]
    _check_room(size + rest + sum(1 + shortest[index] for index in range(last + 1, 4)) + 2)


def _check_room(size: int) -> None:
    if size > MAX_V1_LENGTH:
        raise ProxyProtocolError(f"PROXY protocol v1 line cannot end within "
                                 f"{MAX_V1_LENGTH} bytes")


def _port_rest(text: bytes) -> int | None:
    """How many bytes at least complete the port prefix ``text``; None if none can."""
    if not text:
        return 1
    # a longer number is a larger one, with the same first digit: only valid ports extend
    if _PORT.fullmatch(text) and int(text) <= 0xFFFF:
        return 0
    return None


def _ipv4_rest(text: bytes) -> int | None:
    """How many bytes at least complete the IPv4 prefix ``text``; None if none can."""
    octets = text.split(b".")
    if len(octets) > 4:
        return None
    for octet in octets[:-1]:
        if not _OCTET.fullmatch(octet):
            return None
    # as for ports, digits only extend a valid octet into a valid or a larger one
    last = octets[-1]
    if last and not _OCTET.fullmatch(last):
        return None
    return 2 * (4 - len(octets)) + (0 if last else 1)


def _ipv6_rest(text: bytes) -> int | None:
    """How many bytes at least complete the IPv6 prefix ``text``; None if none can.

    The address is 8 groups of 1-4 hex digits separated by ":", where one "::" stands for
    one or more zero groups and the last two groups may be written as a dotted IPv4
    address (RFC 4291 section 2.2). The checks below are what a prefix of such a text
    must satisfy; each limit can only be made worse by the bytes still to come.
    """
    if not text:
        return 2  # "::"
    if not _IPV6_CHARS.fullmatch(text) or b":::" in text:
        return None
    double = text.find(b"::")
    if double >= 0:
        if text.find(b"::", double + 2) >= 0:
            return None
        before, after = text[:double], text[double + 2:]
        groups = 0
        if before:
            for group in before.split(b":"):
                if not _H16.fullmatch(group):
                    return None
                groups += 1
        if not after:
            return 0 if groups <= 7 else None  # "...::" is whole if it stands for a group
        parts = after.split(b":")
    else:
        if text[:1] == b":":
            return 1 if text == b":" else None  # one ":" can only begin a "::"
        groups = 0
        parts = text.split(b":")
    for group in parts[:-1]:
        if not _H16.fullmatch(group):
            return None
        groups += 1
    last = parts[-1]
    if b"." in last:
        rest = _ipv4_rest(last)
        # the dotted form ends the address: 6 groups before it, or at most 5 and a "::"
        if groups > 5 if double >= 0 else groups != 6:
            return None
        return rest
    if last and not _H16.fullmatch(last):
        return None
    groups += 1  # the group in progress, or the one that must follow a trailing ":"
    if double >= 0:
        return None if groups > 7 else (0 if last else 1)
    if groups > 8:
        return None
    if not last:
        return 1  # another ":" makes a "::", or one digit begins the next group
    return 0 if groups == 8 else 2  # complete, or "::" makes it so


# -- version 2 -----------------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    size = len(data)
    if not data.startswith(V2_SIGNATURE):
        if size < len(V2_SIGNATURE) and V2_SIGNATURE.startswith(data):
            return None
        raise ProxyProtocolError("The connection does not start with a PROXY protocol v2 "
                                 "signature")
    if size <= 12:
        return None
    version_command = data[12]
    # "it must always be sent as \x2 and the receiver must only accept this value"
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY protocol v2 header of version "
                                 f"{version_command >> 4}, not 2")
    command = version_command & 0x0F
    # "other values are unassigned [...] Receivers must drop connections presenting
    # unexpected values here"
    if command != _LOCAL and command != _PROXY:
        raise ProxyProtocolError(f"PROXY protocol v2 command {command} is neither LOCAL "
                                 "nor PROXY")
    if size <= 13:
        return None
    family = data[13]
    # LOCAL: "discard the protocol block including the family which is ignored"
    if command == _PROXY:
        if family >> 4 > 3:
            raise ProxyProtocolError(f"PROXY protocol v2 address family {family >> 4} "
                                     "is not defined")
        if family & 0x0F > 2:
            raise ProxyProtocolError(f"PROXY protocol v2 transport {family & 0x0F} is not "
                                     "defined")
    if size <= 14:
        return None
    if _V2_HEADER + (data[14] << 8) > MAX_V2_LENGTH:
        raise _v2_too_long()
    if size <= 15:
        return None
    length = (data[14] << 8) | data[15]
    end = _V2_HEADER + length
    if end > MAX_V2_LENGTH:
        raise _v2_too_long()
    if command == _PROXY and length < _V2_ADDRESS_LENGTH.get(family, 0):
        raise ProxyProtocolError(f"PROXY protocol v2 length {length} is too short for the "
                                 "addresses of its family")
    if size < end:
        return None
    if command == _LOCAL:
        return _NO_ADDRESSES, end
    if family == _TCP_OVER_IPV4:
        return ProxyInfo(socket.inet_ntop(socket.AF_INET, data[16:20]),
                         (data[24] << 8) | data[25],
                         socket.inet_ntop(socket.AF_INET, data[20:24]),
                         (data[26] << 8) | data[27]), end
    if family == _TCP_OVER_IPV6:
        return ProxyInfo(socket.inet_ntop(socket.AF_INET6, data[16:32]),
                         (data[48] << 8) | data[49],
                         socket.inet_ntop(socket.AF_INET6, data[32:48]),
                         (data[50] << 8) | data[51]), end
    # UNSPEC, UNIX, DGRAM: section 2.2 lets a receiver "fall back to the UNSPEC mode for
    # the valid combinations [...] that it does not support", and for UNSPEC "the receiver
    # should ignore address information"
    return _NO_ADDRESSES, end


def _v2_too_long() -> ProxyProtocolError:
    return ProxyProtocolError(f"PROXY protocol v2 header longer than {MAX_V2_LENGTH} bytes")


__all__ = ["MAX_V1_LENGTH", "MAX_V2_LENGTH", "MODES", "V2_SIGNATURE", "ProxyInfo",
           "ProxyProtocolError", "parse_proxy_header"]

"""The PROXY protocol parser (``wsgi_zmq.front.proxy``) against the specification.

``parse_proxy_header`` keeps no state: the front calls it with everything read so far. Its
answer for a stream split into reads is therefore its answer for the prefix read so far,
and checking every prefix of a stream checks every fragmentation of it. So:

- a valid header, followed by the start of an HTTP request, gives ``None`` for every
  prefix shorter than the header and the same ``(info, len(header))`` for every longer one:
  the HTTP bytes are never consumed;
- an invalid stream gives ``None`` up to a stated byte and raises ``ProxyProtocolError``
  (a 400) from that byte on: the first byte after which no valid header can follow. Bytes
  that can never begin a header (an HTTP request line, a TLS ClientHello, a header of a
  version the mode does not accept) fail on the first byte.

The exhaustive tests at the end hold the prefix check to its definition: for every short
text over a small alphabet, "may still become a valid address" must agree with
``ipaddress`` applied to the complete texts.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import pytest

from wsgi_zmq.errors import BadRequest
from wsgi_zmq.front.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyInfo,
    ProxyProtocolError,
    parse_proxy_header,
)

HTTP = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
NONE = ProxyInfo(None, None, None, None)
V1 = ("v1", "auto")
V2 = ("v2", "auto")
ALL = ("v1", "v2", "auto")

# version 2, section 2.2
LOCAL, PROXY = 0x20, 0x21
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, \
    0x32


def v2(ver_cmd: int, fam: int, body: bytes = b"", length: int | None = None) -> bytes:
    """A version 2 header: signature, ``ver_cmd``, ``fam``, ``len`` (``len(body)`` unless
    given), then ``body``."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


def inet(src: str, dst: str, src_port: int, dst_port: int) -> bytes:
    """The address block of TCP/UDP over IPv4 or IPv6: addresses, then ports."""
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big"))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


FULL_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"  # 39 characters, the longest hex form
DOTTED_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # 45, the longest of all
TLVS = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"\0\0\0")
        + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3")) + tlv(0x05, b"x" * 128))


def valid(header: bytes, modes: tuple[str, ...], info: ProxyInfo, id: str) -> Any:
    return pytest.param(header, modes, info, id=id)


VALID = [
    # section 2.1, version 1
    valid(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", V1,
          ProxyInfo("192.168.0.1", 56324, "192.168.0.11", 443), "v1-tcp4-spec-example"),
    valid(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", V1,
          ProxyInfo("255.255.255.255", 65535, "255.255.255.255", 65535), "v1-tcp4-longest"),
    valid(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", V1, ProxyInfo("0.0.0.0", 0, "0.0.0.0", 0),
          "v1-tcp4-zeros"),
    valid(b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8080\r\n", V1,
          ProxyInfo("2001:db8::1", 40000, "2001:db8::2", 8080), "v1-tcp6"),
    valid(f"PROXY TCP6 {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(), V1,
          ProxyInfo(FULL_V6, 65535, FULL_V6, 65535), "v1-tcp6-longest-104-bytes"),
    valid(b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 :: 1 2\r\n", V1,
          ProxyInfo("2001:db8::1", 1, "::", 2), "v1-tcp6-uncompressed-upper-case-normalized"),
    valid(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5000 80\r\n", V1,
          ProxyInfo("::ffff:192.0.2.1", 5000, "::1", 80), "v1-tcp6-ipv4-mapped-dotted"),
    valid(f"PROXY TCP6 {DOTTED_V6} {DOTTED_V6[:-1]} 0 0\r\n".encode(), V1,
          ProxyInfo("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0,
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff19", 0),
          "v1-tcp6-dotted-exactly-107-bytes"),
    valid(b"PROXY UNKNOWN\r\n", V1, NONE, "v1-unknown-short"),
    valid(f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(), V1, NONE,
          "v1-unknown-worst-case-107-bytes"),
    valid(b"PROXY UNKNOWN 192.168.0.1 192.168.0.11 56324 443\r\n", V1, NONE,
          "v1-unknown-with-addresses"),
    valid(b"PROXY UNKNOWN not addresses at all, \x00\xff\r ignored\r\n", V1, NONE,
          "v1-unknown-anything-before-crlf-ignored"),
    valid(b"PROXY UNKNOWN \r\n", V1, NONE, "v1-unknown-space"),
    # section 2.2, version 2
    valid(v2(PROXY, TCP4, inet("192.168.0.1", "192.168.0.11", 56324, 443)), V2,
          ProxyInfo("192.168.0.1", 56324, "192.168.0.11", 443), "v2-proxy-tcp4"),
    valid(v2(PROXY, TCP4, inet("192.168.0.1", "192.168.0.11", 56324, 443) + TLVS), V2,
          ProxyInfo("192.168.0.1", 56324, "192.168.0.11", 443), "v2-proxy-tcp4-tlvs"),
    valid(v2(PROXY, TCP6, inet("2001:db8::1", "::ffff:192.0.2.1", 0, 65535)), V2,
          ProxyInfo("2001:db8::1", 0, "::ffff:192.0.2.1", 65535), "v2-proxy-tcp6"),
    valid(v2(PROXY, TCP6, inet("2001:db8::1", "2001:db8::2", 1, 2) + TLVS), V2,
          ProxyInfo("2001:db8::1", 1, "2001:db8::2", 2), "v2-proxy-tcp6-tlvs"),
    valid(v2(PROXY, TCP4, inet("10.0.0.1", "10.0.0.2", 1, 2)
             + tlv(0x04, b"\0" * (MAX_V2_LENGTH - 16 - 12 - 3))), V2,
          ProxyInfo("10.0.0.1", 1, "10.0.0.2", 2), "v2-longest-536-bytes"),
    valid(v2(LOCAL, UNSPEC), V2, NONE, "v2-local"),
    valid(v2(LOCAL, TCP4, inet("192.168.0.1", "192.168.0.11", 1, 2) + TLVS), V2, NONE,
          "v2-local-with-addresses-skipped"),
    valid(v2(LOCAL, 0xFF, b"\xff" * 5), V2, NONE, "v2-local-family-ignored"),
    valid(v2(PROXY, UNSPEC), V2, NONE, "v2-proxy-unspec"),
    valid(v2(PROXY, UNSPEC, b"anything"), V2, NONE, "v2-proxy-unspec-with-bytes"),
    valid(v2(PROXY, UNIX_STREAM, unix(b"/run/a.sock", b"/run/b.sock")), V2, NONE,
          "v2-proxy-unix-stream"),
    valid(v2(PROXY, UNIX_DGRAM, unix(b"", b"") + TLVS), V2, NONE, "v2-proxy-unix-dgram-tlvs"),
    valid(v2(PROXY, UDP4, inet("192.168.0.1", "192.168.0.11", 53, 53)), V2, NONE,
          "v2-proxy-udp4-falls-back"),
    valid(v2(PROXY, UDP6, inet("::1", "::2", 53, 53)), V2, NONE, "v2-proxy-udp6-falls-back"),
    valid(v2(PROXY, 0x10, b""), V2, NONE, "v2-proxy-inet-unspec-transport-falls-back"),
]


@pytest.mark.parametrize(("header", "modes", "info"), VALID)
def test_valid_header_whole(header: bytes, modes: tuple[str, ...], info: ProxyInfo) -> None:
    for mode in modes:
        assert parse_proxy_header(header, mode) == (info, len(header))
        assert parse_proxy_header(header + HTTP, mode) == (info, len(header))


@pytest.mark.parametrize(("header", "modes", "info"), VALID)
def test_valid_header_every_fragmentation(header: bytes, modes: tuple[str, ...],
                                          info: ProxyInfo) -> None:
    """``None`` for every proper prefix of the header; the same answer, which leaves the
    HTTP bytes unconsumed, for every prefix that holds the whole header."""
    stream = header + HTTP
    for mode in modes:
        for size in range(len(stream) + 1):
            expected = None if size < len(header) else (info, len(header))
            assert parse_proxy_header(stream[:size], mode) == expected, (mode, size)


def test_v1_limit_is_the_spec_worst_case() -> None:
    # section 2.1: 5 + 1 + 7 + 1 + 39 + 1 + 39 + 1 + 5 + 1 + 5 + 2 = 107
    assert MAX_V1_LENGTH == len(f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n") == 107


def test_empty_input_needs_more_in_every_mode() -> None:
    for mode in ALL:
        assert parse_proxy_header(b"", mode) is None


@pytest.mark.parametrize("mode", ["off", "", "V1", "v3", "true"])
def test_unknown_mode_is_a_programming_error(mode: str) -> None:
    with pytest.raises(ValueError, match="mode"):
        parse_proxy_header(b"PROXY UNKNOWN\r\n", mode)


def test_error_is_a_400_that_closes() -> None:
    with pytest.raises(ProxyProtocolError) as caught:
        parse_proxy_header(b"GET / HTTP/1.1\r\n", "auto")
    assert isinstance(caught.value, BadRequest)
    assert caught.value.status == 400
    assert caught.value.close
    assert caught.value.render().startswith(b"HTTP/1.1 400 Bad Request\r\n")


# -- invalid streams ------------------------------------------------------------------------


def invalid(stream: bytes, modes: tuple[str, ...], fails_at: int, id: str) -> Any:
    """``stream`` must give ``None`` for prefixes shorter than ``fails_at`` bytes, and
    raise for that prefix and every longer one."""
    return pytest.param(stream, modes, fails_at, id=id)


def at(stream: bytes, marker: bytes) -> int:
    """The length of the prefix of ``stream`` that ends with the first byte of ``marker``."""
    return stream.index(marker) + 1


TCP4_LINE = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443"
MISSING_PORT = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"
TOO_LONG_DOTTED = f"PROXY TCP6 {DOTTED_V6} {DOTTED_V6} 0 0\r\n".encode()
TCP4_HEAD = V2_SIGNATURE + bytes([PROXY, TCP4])

INVALID = [
    # not a PROXY protocol header at all: refused on the first byte, whatever the mode
    invalid(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ALL, 1, "http-request"),
    invalid(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ALL, 1, "tls-client-hello"),
    invalid(b" PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", ALL, 1, "v1-leading-space"),
    invalid(b"\r\n" + TCP4_LINE + b"\r\n", ("v1",), 1, "v1-leading-crlf"),
    invalid(b"\r\n" + TCP4_LINE + b"\r\n", V2, 3, "v1-leading-crlf-v2-signature-start"),
    invalid(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", V1, 3, "http2-preface"),
    invalid(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ("v2",), 1, "http2-preface-v2-mode"),
    invalid(b"POST / HTTP/1.1\r\n", V1, 2, "http-post"),
    # a header of a version the mode does not accept
    invalid(TCP4_LINE + b"\r\n" + HTTP, ("v2",), 1, "v1-header-in-v2-mode"),
    invalid(b"PROXY UNKNOWN\r\n", ("v2",), 1, "v1-unknown-in-v2-mode"),
    invalid(v2(PROXY, TCP4, inet("1.2.3.4", "5.6.7.8", 1, 2)) + HTTP, ("v1",), 1,
            "v2-header-in-v1-mode"),
    invalid(v2(LOCAL, UNSPEC), ("v1",), 1, "v2-local-in-v1-mode"),
    # version 1 (section 2.1)
    invalid(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 1, "v1-lower-case-proxy"),
    invalid(b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 6, "v1-no-space-after-proxy"),
    invalid(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 7, "v1-two-spaces"),
    invalid(b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 6, "v1-tab"),
    invalid(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1, 10, "v1-protocol-tcp5"),
    invalid(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 8, "v1-protocol-udp4"),
    invalid(b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1, 7, "v1-protocol-lower-case"),
    invalid(b"PROXY UNKNOWNX\r\n", V1, 14, "v1-protocol-unknownx"),
    invalid(b"PROXY TCP4\r\n", V1, 11, "v1-tcp4-without-addresses"),
    invalid(b"PROXY \r\n", V1, 7, "v1-no-protocol"),
    invalid(b"PROXY\r\n", V1, 6, "v1-proxy-alone"),
    invalid(TCP4_LINE + b"\n" + HTTP, V1, len(TCP4_LINE) + 1, "v1-bare-lf"),
    invalid(TCP4_LINE + b"\rGET", V1, len(TCP4_LINE) + 2, "v1-bare-cr"),
    invalid(TCP4_LINE + b"\r\r\n", V1, len(TCP4_LINE) + 2, "v1-cr-cr-lf"),
    invalid(TCP4_LINE + b" \r\n", V1, len(TCP4_LINE) + 1, "v1-trailing-space"),
    invalid(TCP4_LINE + b" 80\r\n", V1, len(TCP4_LINE) + 1, "v1-seven-fields"),
    invalid(MISSING_PORT, V1, at(MISSING_PORT, b"\r"), "v1-missing-port"),
    invalid(b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n", V1, 24,
            "v1-two-spaces-between-addresses"),
    invalid(b"PROXY TCP4 ::1 ::1 1 2\r\n", V1, 12, "v1-tcp4-ipv6-address"),
    invalid(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", V1, 20, "v1-tcp4-ipv6-destination"),
    invalid(b"PROXY TCP6 192.168.0.1 ::1 1 2\r\n", V1, 15, "v1-tcp6-ipv4-address"),
    invalid(b"PROXY TCP4 256.1.1.1 1.2.3.4 1 2\r\n", V1, 14, "v1-ipv4-octet-256"),
    invalid(b"PROXY TCP4 1.2.3.300 1.2.3.4 1 2\r\n", V1, 20, "v1-ipv4-octet-300"),
    invalid(b"PROXY TCP4 192.168.0.01 1.2.3.4 1 2\r\n", V1, 23, "v1-ipv4-leading-zero"),
    invalid(b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", V1, 17, "v1-ipv4-three-octets"),
    invalid(b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n", V1, 19, "v1-ipv4-five-octets"),
    invalid(b"PROXY TCP4 1..2.3 1.2.3.4 1 2\r\n", V1, 14, "v1-ipv4-empty-octet"),
    invalid(b"PROXY TCP4 0x1.2.3.4 1.2.3.4 1 2\r\n", V1, 13, "v1-ipv4-hex"),
    invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", V1, 27, "v1-no-ports"),
    invalid(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", V1, 19, "v1-ipv6-zone-index"),
    invalid(b"PROXY TCP6 1:::2 ::1 1 2\r\n", V1, 15, "v1-ipv6-three-colons"),
    invalid(b"PROXY TCP6 1::2::3 ::1 1 2\r\n", V1, 17, "v1-ipv6-two-double-colons"),
    invalid(b"PROXY TCP6 12345::1 ::1 1 2\r\n", V1, 16, "v1-ipv6-five-digit-group"),
    invalid(b"PROXY TCP6 :1::2 ::1 1 2\r\n", V1, 13, "v1-ipv6-leading-single-colon"),
    invalid(b"PROXY TCP6 1::2: ::1 1 2\r\n", V1, 17, "v1-ipv6-trailing-single-colon"),
    invalid(b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", V1, 27, "v1-ipv6-nine-groups"),
    invalid(b"PROXY TCP6 1:2:3:4:5:6:7:8::  ::1 1 2\r\n", V1, 27,
            "v1-ipv6-eight-groups-and-double-colon"),
    invalid(b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", V1, 25, "v1-ipv6-seven-groups"),
    invalid(b"PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n", V1, 27,
            "v1-ipv6-dotted-after-seven-groups"),
    invalid(b"PROXY TCP6 ::ffff:1.2.3.04 ::1 1 2\r\n", V1, 26, "v1-ipv6-dotted-leading-zero"),
    invalid(b"PROXY TCP6 ::ffff:1.2.3.4:5 ::1 1 2\r\n", V1, 26, "v1-ipv6-group-after-dotted"),
    invalid(b"PROXY TCP6 gggg::1 ::1 1 2\r\n", V1, 12, "v1-ipv6-not-hex"),
    invalid(b"PROXY TCP6 [::1] ::1 1 2\r\n", V1, 12, "v1-ipv6-brackets"),
    invalid(TCP4_LINE.replace(b"56324", b"65536") + b"\r\n", V1, 41, "v1-port-65536"),
    invalid(TCP4_LINE.replace(b"56324", b"100000") + b"\r\n", V1, 42, "v1-port-six-digits"),
    invalid(TCP4_LINE.replace(b"56324", b"080") + b"\r\n", V1, 38, "v1-port-leading-zero"),
    invalid(TCP4_LINE.replace(b"56324", b"00") + b"\r\n", V1, 38, "v1-port-00"),
    invalid(TCP4_LINE.replace(b"56324", b"+80") + b"\r\n", V1, 37, "v1-port-plus-sign"),
    invalid(TCP4_LINE.replace(b"56324", b"-1") + b"\r\n", V1, 37, "v1-port-minus-sign"),
    invalid(TCP4_LINE.replace(b" 443", b" 4a3") + b"\r\n", V1, 44, "v1-port-not-decimal"),
    invalid(b"PROXY UNKNOWN " + b"x" * 200, V1, MAX_V1_LENGTH - 1,
            "v1-no-crlf-within-107-bytes"),
    invalid(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", V1, MAX_V1_LENGTH - 1,
            "v1-unknown-108-bytes"),
    invalid(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\r\n", V1, MAX_V1_LENGTH,
            "v1-unknown-cr-at-byte-107"),
    # the line so far is valid, but "SP port SP port CRLF" no longer fits in 107 bytes
    invalid(TOO_LONG_DOTTED, V1, at(TOO_LONG_DOTTED, b"5 0 0"), "v1-tcp6-cannot-fit-107"),
    # version 2 (section 2.2)
    invalid(b"\r\n\r\n\x01\r\nQUIT\n", V2, 5, "v2-signature-wrong-byte"),
    invalid(b"\r\n\r\n\x00\r\nquit\n", V2, 8, "v2-signature-lower-case"),
    invalid(b"\r\r", V2, 2, "v2-signature-cr-cr"),
    invalid(V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), V2, 13, "v2-version-1"),
    invalid(V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), V2, 13, "v2-version-3"),
    invalid(V2_SIGNATURE + b"\x01\x11\x00\x0c" + bytes(12), V2, 13, "v2-version-0"),
    invalid(V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), V2, 13, "v2-command-2"),
    invalid(V2_SIGNATURE + b"\x2f\x00\x00\x00", V2, 13, "v2-command-15"),
    invalid(v2(PROXY, 0x41, bytes(12)), V2, 14, "v2-family-4"),
    invalid(v2(PROXY, 0xF1, bytes(12)), V2, 14, "v2-family-15"),
    invalid(v2(PROXY, 0x13, bytes(12)), V2, 14, "v2-transport-3"),
    invalid(v2(PROXY, 0x1F, bytes(12)), V2, 14, "v2-transport-15"),
    invalid(v2(PROXY, TCP4, bytes(MAX_V2_LENGTH - 15)), V2, 16, "v2-537-bytes"),
    invalid(v2(LOCAL, UNSPEC, bytes(MAX_V2_LENGTH - 15)), V2, 16, "v2-local-537-bytes"),
    invalid(TCP4_HEAD + b"\x03\x00" + bytes(768), V2, 15, "v2-length-768-high-byte"),
    invalid(TCP4_HEAD + b"\xff\xff" + bytes(100), V2, 15, "v2-length-65535"),
    invalid(v2(PROXY, TCP4, bytes(11)), V2, 16, "v2-tcp4-length-11"),
    invalid(v2(PROXY, UDP4, bytes(11)), V2, 16, "v2-udp4-length-11"),
    invalid(v2(PROXY, TCP6, bytes(35)), V2, 16, "v2-tcp6-length-35"),
    invalid(v2(PROXY, TCP6, inet("1.2.3.4", "5.6.7.8", 1, 2)), V2, 16,
            "v2-tcp6-with-ipv4-addresses"),
    invalid(v2(PROXY, UNIX_STREAM, bytes(215)), V2, 16, "v2-unix-length-215"),
]


@pytest.mark.parametrize(("stream", "modes", "fails_at"), INVALID)
def test_invalid_stream(stream: bytes, modes: tuple[str, ...], fails_at: int) -> None:
    """``None`` while the bytes could still begin a valid header, then a 400 at the first
    byte that rules it out, and for every longer prefix."""
    for mode in modes:
        for size in range(fails_at):
            assert parse_proxy_header(stream[:size], mode) is None, (mode, size)
        for size in range(fails_at, len(stream) + 1):
            with pytest.raises(ProxyProtocolError):
                parse_proxy_header(stream[:size], mode)


@pytest.mark.parametrize(("header", "modes", "info"), VALID)
def test_header_of_other_version_refused_on_first_byte(header: bytes, modes: tuple[str, ...],
                                                       info: ProxyInfo) -> None:
    other = "v1" if modes == V2 else "v2"
    for size in range(1, len(header) + 1):
        with pytest.raises(ProxyProtocolError, match=f"only {other} is accepted"):
            parse_proxy_header(header[:size], other)


# -- the prefix check against its definition -------------------------------------------------


def _completable(texts: list[str], longest: int) -> set[str]:
    """Every prefix, up to ``longest`` characters, of the given valid texts."""
    return {text[:size] for text in texts for size in range(min(len(text), longest) + 1)}


def _walk(alphabet: str, longest: int) -> list[str]:
    return ["".join(chars) for size in range(longest + 1)
            for chars in itertools.product(alphabet, repeat=size)]


def test_ipv4_prefixes_exhaustive() -> None:
    """Over the digits 0 and 5 and the dot, a TCP4 source address prefix waits for more
    exactly when some valid IPv4 address starts with it (octets 0, 5, 50, 55, 500, 05...)."""
    octets = _walk("05", 3)[1:]
    addresses = []
    for parts in itertools.product(octets, repeat=4):
        text = ".".join(parts)
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            continue
        addresses.append(text)
    prefixes = _completable(addresses, 15)
    for text in _walk("05.", 9):
        result = _try(b"PROXY TCP4 " + text.encode())
        assert result == (text in prefixes), text


def test_ipv4_octets_exhaustive() -> None:
    """Every digit string up to 4 digits as the first octet: an octet is 0-255 without a
    leading zero, and a prefix of one waits (a prefix of an octet is an octet)."""
    for text in _walk("0123456789", 4):
        expected = text == "" or (text == "0" or text[0] != "0") and int(text) <= 255
        assert _try(b"PROXY TCP4 " + text.encode()) == expected, text
        assert _try(b"PROXY TCP4 " + text.encode() + b".0.0.0 ") == (expected and text != ""), \
            text


def test_ipv6_prefixes_exhaustive() -> None:
    """Over "0", ":" and ".", a TCP6 source address prefix of up to 10 characters waits for
    more exactly when some valid IPv6 address of up to 16 characters starts with it (no
    such prefix needs more than 6 more characters)."""
    addresses = []
    for text in _walk_pruned("0:.", 16):
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            continue
        addresses.append(text)
    prefixes = _completable(addresses, 10)
    for text in _walk("0:.", 10):
        assert _try(b"PROXY TCP6 " + text.encode()) == (text in prefixes), text


def _walk_pruned(alphabet: str, longest: int) -> list[str]:
    """The texts up to ``longest`` characters, without those holding a sequence no IPv6
    address holds (which saves building most of them)."""
    out = [""]
    frontier = [""]
    for _ in range(longest):
        frontier = [text + char for text in frontier for char in alphabet
                    if not _never_ipv6(text + char)]
        out.extend(frontier)
    return out


def _never_ipv6(text: str) -> bool:
    return (":::" in text or ".." in text or ":." in text or ".:" in text
            or text.count("::") > 1 or text.startswith("."))


def _try(data: bytes) -> bool:
    """True if ``data`` may still begin a valid header (v1 mode), False if it raises."""
    try:
        result = parse_proxy_header(data, "v1")
    except ProxyProtocolError:
        return False
    assert result is None
    return True

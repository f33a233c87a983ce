"""HTTPS on the front: TLS binds beside plain ones, client certificates, failed handshakes.

A test CA, a server certificate for 127.0.0.1 and localhost, a client certificate it signed
and one from a CA the front does not trust are made with the ``openssl`` command line, all
under the test's temporary directory. Clients are ``requests``, ``curl`` and ``ssl`` sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from support import (
    LiveProcess,
    Stack,
    backend_endpoint,
    connect,
    exchange,
    get,
    read_responses,
    wait_closed,
)

requests = pytest.importorskip("requests")

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line is needed "
                                "to make the test certificates (cryptography is not installed)")


# -- certificates ---------------------------------------------------------------------------

def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/O=test/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue(directory: Path, name: str, subject: str, ca: tuple[Path, Path],
           extensions: str) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.pem", directory / f"{name}.key",
                      directory / f"{name}.csr")
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", subject)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca(directory, "test-ca")
    rogue = _make_ca(directory, "rogue-ca")
    server = _issue(directory, "server", "/O=test/CN=localhost", ca,
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    client = _issue(directory, "client", "/O=test/CN=client", ca, client_ext)
    stranger = _issue(directory, "stranger", "/O=test/CN=stranger", rogue, client_ext)
    return SimpleNamespace(ca=str(ca[0]), cert=str(server[0]), key=str(server[1]),
                           client=(str(client[0]), str(client[1])),
                           stranger=(str(stranger[0]), str(stranger[1])))


def tls_args(pki: SimpleNamespace, *extra: str) -> tuple[str, ...]:
    """Front arguments: an HTTPS bind beside the plain one ``Stack`` always adds."""
    return ("--bind", "https://127.0.0.1:0", "--certfile", pki.cert, "--keyfile", pki.key,
            *extra)


def https_port(front: LiveProcess) -> int:
    return int(front.wait_for_log(r"Listening at: \S*https://127\.0\.0\.1:(\d+)").group(1))


def client_context(pki: SimpleNamespace, cert: tuple[str, str] | None = None
                   ) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def tls_connect(port: int, context: ssl.SSLContext, **kwargs: Any) -> ssl.SSLSocket:
    return context.wrap_socket(connect(port), server_hostname="localhost", **kwargs)


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def assert_clean(front: LiveProcess) -> None:
    log = front.log()
    assert "Traceback" not in log
    assert "[ERROR]" not in log


# -- a front with a TLS bind beside a plain one ---------------------------------------------

@pytest.fixture(scope="module")
def served(pki: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory):
    stack = Stack(tmp_path_factory.mktemp("https"))
    try:
        front, _, http_port = stack.serve(
            workers=2, front_args=tls_args(pki, "--header-timeout", "2", "--log-level",
                                           "debug"))
        yield SimpleNamespace(front=front, http=http_port, https=https_port(front))
    finally:
        stack.stop_all()


def test_https_and_http_on_two_binds_of_one_front(served, pki):
    """1. GET /echo with requests over the TLS bind (checked against the test CA, by IP and
    by name) 2. the environ says https, with that bind's port 3. the plain bind of the same
    front still says http."""
    for host in ("127.0.0.1", "localhost"):
        response = requests.get(f"https://{host}:{served.https}/echo?x=1", verify=pki.ca,
                                timeout=10)
        assert response.status_code == 200
        env = response.json()
        assert env["wsgi.url_scheme"] == "https"
        assert env["SERVER_PORT"] == str(served.https)
        assert env["QUERY_STRING"] == "x=1"
        assert "SSL_CLIENT_S_DN" not in env  # no client certificate asked for
    [plain], _ = exchange(served.http, get("/echo"))
    assert json.loads(plain.body)["wsgi.url_scheme"] == "http"


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_over_https(served, pki):
    """1. curl --cacert GET /echo over the TLS bind 2. 200 over HTTP/1.1, the environ says
    https."""
    assert CURL is not None
    result = subprocess.run([CURL, "-sS", "--cacert", pki.ca, "-w", "\n%{http_version}",
                             f"https://localhost:{served.https}/echo"],
                            capture_output=True, text=True, timeout=30, check=True)
    body, _, version = result.stdout.rpartition("\n")
    assert version == "1.1"
    assert json.loads(body)["wsgi.url_scheme"] == "https"


def test_alpn_offers_http11_only(served, pki):
    """1. a client offers h2 and http/1.1 by ALPN 2. the front picks http/1.1 (HTTP/2 is
    not served) and answers it."""
    context = client_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(served.https, context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(get("/"))
        [response], _ = read_responses(sock, 1)
    assert response.body == b"Hello, world!\n"


def test_keep_alive_over_tls(served, pki):
    """1. three requests through one requests.Session 2. all on one TLS connection (the same
    client port every time) 3. then raw pipelined requests on one TLS socket, in order."""
    with requests.Session() as session:
        ports = {session.get(f"https://localhost:{served.https}/echo?n={i}", verify=pki.ca,
                             timeout=10).json()["REMOTE_PORT"] for i in range(3)}
    assert len(ports) == 1
    with tls_connect(served.https, client_context(pki)) as sock:
        sock.sendall(b"".join(get(f"/echo?n={i}") for i in range(20)))
        responses, closed = read_responses(sock, 20)
    assert [json.loads(r.body)["QUERY_STRING"] for r in responses] == \
        [f"n={i}" for i in range(20)]
    assert not closed


def test_one_mib_download_and_upload_over_tls(served, pki):
    """1. GET /big?size=1048576 over TLS 2. the whole pattern arrives 3. POST 1 MiB of
    random bytes to /upload 4. the app read all of it (length and sha256)."""
    base = f"https://localhost:{served.https}"
    with requests.Session() as session:
        response = session.get(f"{base}/big?size=1048576", verify=pki.ca, timeout=30)
        assert response.status_code == 200
        assert len(response.content) == 1 << 20
        assert response.content[:512] == bytes(range(256)) * 2
        payload = os.urandom(1 << 20)
        result = session.post(f"{base}/upload", data=payload, verify=pki.ca,
                              timeout=30).json()
    assert result == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_close_delimited_answer_ends_with_close_notify(served, pki):
    """1. HTTP/1.0 GET of a streamed body (no length: the body ends with the connection)
    2. every byte arrives, then close_notify: a client that refuses ragged EOFs reads a
    clean end, not a truncation."""
    with tls_connect(served.https, client_context(pki), suppress_ragged_eofs=False) as sock:
        sock.sendall(b"GET /big?size=300000 HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # SSLEOFError here would mean no close_notify
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert len(body) == 300000


def test_a_client_cannot_send_the_client_dn_itself(served, pki):
    """1. over TLS, a request with the front's pseudo field as a header 2. it is refused
    (400: no token) 3. a lookalike header is just an HTTP_ key."""
    context = client_context(pki)
    with tls_connect(served.https, context) as sock:
        sock.sendall(get("/echo", ":ssl-client-s-dn: CN=evil\r\n"))
        [response], _ = read_responses(sock, 1)
    assert response.status == 400
    with tls_connect(served.https, context) as sock:
        sock.sendall(get("/echo", "SSL-Client-S-DN: CN=evil\r\n"))
        [response], _ = read_responses(sock, 1)
    env = json.loads(response.body)
    assert env["HTTP_SSL_CLIENT_S_DN"] == "CN=evil"
    assert "SSL_CLIENT_S_DN" not in env


def test_failed_handshakes_cost_the_front_nothing(served, pki):
    """1. plain HTTP to the TLS port 2. a TCP connection that sends half a ClientHello and
    closes 3. one that closes before sending anything 4. a reset mid-handshake 5. each is
    closed, nothing is answered in plaintext, no traceback is logged 6. the front serves
    HTTPS and HTTP as before."""
    with connect(served.https) as sock:
        sock.sendall(get("/"))
        assert wait_closed(sock)
    hello = client_hello()
    with connect(served.https) as sock:
        sock.sendall(hello[:len(hello) // 2])
    with connect(served.https):
        pass
    sock = connect(served.https)
    sock.sendall(hello)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    sock.close()
    served.front.wait_for_log(r"TLS handshake with 127\.0\.0\.1 failed: .*HTTP_REQUEST")
    response = requests.get(f"https://localhost:{served.https}/", verify=pki.ca, timeout=10)
    assert response.text == "Hello, world!\n"
    [plain], _ = exchange(served.http, get("/"))
    assert plain.status == 200
    assert_clean(served.front)


def test_a_handshake_that_never_completes_is_bounded_by_header_timeout(served):
    """1. open a TCP connection to the TLS port and send a third of a ClientHello 2. the
    front closes it after header_timeout (2 s here), having answered nothing."""
    hello = client_hello()
    started = time.monotonic()
    with connect(served.https) as sock:
        sock.sendall(hello[:len(hello) // 3])
        assert wait_closed(sock, timeout=8)
    assert 1.5 < time.monotonic() - started < 8
    served.front.wait_for_log(r"TLS handshake with 127\.0\.0\.1 took too long")
    assert_clean(served.front)


# -- client certificates ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mutual(pki: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory):
    """A front that requires a client certificate; it also handshakes at the accept, and
    reads in 4 KiB pieces, so a TLS record (up to 16 KiB) is read in several."""
    stack = Stack(tmp_path_factory.mktemp("mtls"))
    try:
        front, _, _ = stack.serve(front_args=tls_args(
            pki, "--cert-reqs", "2", "--ca-certs", pki.ca, "--do-handshake-on-connect",
            "--chunk-size", "4096", "--log-level", "debug"))
        yield SimpleNamespace(front=front, https=https_port(front))
    finally:
        stack.stop_all()


def test_a_required_client_certificate_is_checked_and_named(mutual, pki):
    """1. no client certificate: the handshake fails 2. one from a CA the front does not
    trust: it fails too 3. one the test CA signed: 200, and the environ has its subject as
    SSL_CLIENT_S_DN 4. the front logged no traceback."""
    url = f"https://localhost:{mutual.https}/echo"
    refused = (requests.exceptions.SSLError, requests.exceptions.ConnectionError)
    with pytest.raises(refused):
        requests.get(url, verify=pki.ca, timeout=10)
    with pytest.raises(refused):
        requests.get(url, verify=pki.ca, cert=pki.stranger, timeout=10)
    response = requests.get(url, verify=pki.ca, cert=pki.client, timeout=10)
    assert response.status_code == 200
    env = response.json()
    assert env["SSL_CLIENT_S_DN"] == "CN=client,O=test"
    assert env["wsgi.url_scheme"] == "https"
    mutual.front.wait_for_log(r"TLS handshake with 127\.0\.0\.1 failed", count=2)
    assert_clean(mutual.front)


def test_records_larger_than_a_read_are_read_whole(mutual, pki):
    """1. with reads of 4 KiB, 60 pipelined requests in one write (21 KiB: 16 KiB TLS records) and
    a 1 MiB upload 2. every request is answered, in order: what OpenSSL had decrypted
    beyond a read was not left unread when the socket had nothing more to say."""
    context = client_context(pki, pki.client)
    with tls_connect(mutual.https, context) as sock:
        sock.sendall(b"".join(get(f"/echo?n={i}", "X-Pad: " + "p" * 300 + "\r\n")
                              for i in range(60)))
        responses, _ = read_responses(sock, 60)
        assert [json.loads(r.body)["QUERY_STRING"] for r in responses] == \
            [f"n={i}" for i in range(60)]
        assert json.loads(responses[0].body)["SSL_CLIENT_S_DN"] == "CN=client,O=test"
        payload = os.urandom(1 << 20)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                     % len(payload) + payload)
        [response], _ = read_responses(sock, 1, timeout=30)
    assert json.loads(response.body) == {"length": len(payload),
                                         "sha256": hashlib.sha256(payload).hexdigest()}


# -- which binds, and bad settings --------------------------------------------------------------

def test_certfile_without_an_https_bind_makes_every_bind_https(stack, pki):
    """1. a front with a plain-looking bind and --certfile/--keyfile (gunicorn's rule) 2. it
    listens with https:// and serves HTTPS there."""
    front = stack.start(["wsgi_zmq.front", "--bind", "127.0.0.1:0", "--backend",
                         "tcp://127.0.0.1:*", "--certfile", pki.cert, "--keyfile", pki.key],
                        "front")
    port = int(front.wait_for_log(r"Listening at: https://127\.0\.0\.1:(\d+) ").group(1))
    stack.handler("apps.echo:router", backend_endpoint(front))
    front.wait_for_log(r"Worker \d+@\S+ connected")
    env = requests.get(f"https://localhost:{port}/echo", verify=pki.ca, timeout=10).json()
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("args, words", [
    (("--bind", "https://127.0.0.1:0"), ["https://127.0.0.1:0", "certfile"]),
    # no keyfile: the key is looked for in certfile, as gunicorn does; this one has none
    (("--bind", "https://127.0.0.1:0", "--certfile", "{cert}"), ["Cannot load the certificate"]),
    (("--bind", "https://127.0.0.1:0", "--certfile", "{cert}", "--keyfile", "{cert}"),
     ["Cannot load the certificate"]),
    (("--bind", "https://127.0.0.1:0", "--certfile", "{cert}", "--keyfile", "{client_key}"),
     ["key values mismatch"]),
    (("--certfile", "{cert}", "--keyfile", "{key}", "--cert-reqs", "2"), ["ca_certs"]),
    (("--certfile", "{cert}", "--keyfile", "{key}", "--cert-reqs", "1", "--ca-certs",
      "{key}"), ["Cannot load the CA certificates"]),
    (("--certfile", "{cert}", "--keyfile", "{key}", "--ciphers", "NO-SUCH-CIPHER"),
     ["ciphers"]),
])
@pytest.mark.parametrize("entry", ["front", "all"])
def test_tls_config_errors_exit_2_with_one_line(tmp_path, pki, args, words, entry):
    """1. start a front (alone, or under the supervisor) with TLS settings it cannot serve
    with 2. it exits 2 3. with one error line that names the problem and no traceback."""
    names = {"cert": pki.cert, "key": pki.key, "client_key": pki.client[1]}
    args = tuple(arg.format(**names) for arg in args)
    command = ["wsgi_zmq.front"] if entry == "front" else ["wsgi_zmq", "apps.echo:router"]
    proc = LiveProcess.python([*command, "--backend", "tcp://127.0.0.1:*", *args],
                              tmp_path / "out.log")
    try:
        assert proc.wait(30) == 2
    finally:
        proc.stop()
    log = proc.log()
    errors = [line for line in log.splitlines()
              if "[ERROR]" in line or line.startswith("Error:")]
    assert len(errors) == 1, log
    for word in words:
        assert word in errors[0], log
    assert "Traceback" not in log


# -- pure parts ---------------------------------------------------------------------------------

def test_client_dn_is_rfc4514():
    """The subject of getpeercert() reads most specific first, with RFC 4514 escapes, and
    in ASCII with no NUL whatever the certificate holds."""
    from wsgi_zmq.front.server import client_dn

    cert = {"subject": ((("countryName", "DE"),), (("organizationName", "a,b+c"),),
                        (("organizationalUnitName", "#1"), ("userId", "x ")),
                        (("commonName", " J\u00fcrgen\0"),), (("emailAddress", "a@b"),))}
    assert client_dn(cert) == (b"emailAddress=a@b,CN=\\ J\\C3\\BCrgen\\00,"
                               b"OU=\\#1+UID=x\\ ,O=a\\,b\\+c,C=DE")
    assert client_dn({}) is None


def test_the_pseudo_field_becomes_ssl_client_s_dn():
    """The REQUEST record's pseudo field maps to SSL_CLIENT_S_DN; an unknown pseudo field is
    dropped."""
    from wsgi_zmq.handler.environ import CLIENT_DN_FIELD, build_environ
    from wsgi_zmq.protocol import RequestHead

    head = RequestHead(0, 4, "GET", "/", "HTTP/1.1", "127.0.0.1", 1, "h", 443, "https",
                       ["Host", "h", CLIENT_DN_FIELD, "CN=client,O=test", ":other", "x"], b"")
    environ = build_environ(head, {})
    assert environ["SSL_CLIENT_S_DN"] == "CN=client,O=test"
    assert not any(":" in key for key in environ)


def test_tls_binds_follow_gunicorn():
    """https:// binds are TLS; with none written so, certfile makes every bind TLS."""
    from wsgi_zmq.front.server import tls_binds

    def cfg(*binds: str, certfile: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(bind=list(binds), certfile=certfile)

    assert tls_binds(cfg("127.0.0.1:1", "https://127.0.0.1:2")) == [False, True]
    assert tls_binds(cfg("127.0.0.1:1", "HTTPS://x:2", certfile="c")) == [False, True]
    assert tls_binds(cfg("127.0.0.1:1", "http://x:2", certfile="c")) == [True, True]
    assert tls_binds(cfg("127.0.0.1:1")) == [False]

"""Slow and greedy clients against a real front: every one is answered or closed in bounded
time, and the others are served meanwhile."""

from __future__ import annotations

import socket
import time

from support import (
    UNCHECKED,
    connect,
    exchange,
    get,
    poll_until,
    read_responses,
    wait_closed,
)


def assert_serves(port: int) -> None:
    """The front still answers a plain GET, within 1 s."""
    [response], _ = exchange(port, get("/"), timeout=1.0)
    assert response.status == 200


def test_a_request_head_sent_a_byte_at_a_time_gets_408_at_the_header_timeout(stack):
    """1. --header-timeout 1 2. send a request head one byte every 0.2 s (each byte keeps
    the connection busy, never idle) 3. within about 1 s of the first byte the client gets
    408 and the connection closes 4. the front serves on."""
    _, _, port = stack.serve(front_args=("--header-timeout", "1", "--keep-alive", "30"))
    head = get("/")
    with connect(port) as sock:
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.2)
        for byte in head[:-2]:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            answer += data
            if not data or b"\r\n\r\n" in answer:
                break
            if time.monotonic() - started > 10:
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 5
        assert wait_closed(sock, 5)
    assert_serves(port)


def test_an_idle_keep_alive_connection_is_closed_after_keepalive(stack):
    """1. --keep-alive 1 2. one request on a keep-alive connection, then silence 3. the
    front closes the connection after about a second, without an answer."""
    _, _, port = stack.serve(front_args=("--keep-alive", "1"))
    with connect(port) as sock:
        sock.sendall(get("/"))
        [response], closed = read_responses(sock, 1)
        assert response.status == 200 and not closed
        started = time.monotonic()
        assert wait_closed(sock, 10)
        assert 0.5 < time.monotonic() - started < 5


def test_a_stalled_request_body_fails_the_app_read_and_gets_408(stack, tmp_path):
    """1. --body-timeout 1 2. POST /upload with Content-Length 100000 and only part of the
    body 3. the app reads and waits; after about a second of silence the client gets 408
    and the connection closes 4. the worker is free: the next request is answered."""
    front, _, port = stack.serve(front_args=("--body-timeout", "1", "--header-timeout", "30"))
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 70000)
        started = time.monotonic()
        [response], closed = read_responses(sock, 1, timeout=10)
        assert response.status == 408
        assert time.monotonic() - started < 5
        assert closed or wait_closed(sock, 5)
    assert_serves(port)
    # a sync worker with one request at a time: the app's read failed, it is free again
    [response], _ = exchange(port, b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3"
                             b"\r\n\r\nabc")
    assert response.status == 200


def test_a_body_waiting_for_the_worker_does_not_count_as_stalled(stack, tmp_path):
    """1. --body-timeout 1 2. POST to /gated, whose app reads nothing until a file
    appears, with a body larger than the flow-control window 3. after 2 s (longer than the
    body timeout; the front reads nothing meanwhile because the worker grants no credit)
    the file appears 4. the whole body arrives and the answer is 200."""
    _, _, port = stack.serve(front_args=("--body-timeout", "1"))
    go = tmp_path / "go"
    body = b"y" * (2 << 20)
    with connect(port) as sock:
        sock.sendall(f"POST /gated?go={go} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}"
                     "\r\n\r\n".encode())
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # push what the kernel takes, for 2 s
            try:
                sent += sock.send(body[sent:sent + 65536])
            except BlockingIOError:
                poll_until(lambda: time.monotonic() > deadline or _writable(sock), 3)
        go.write_text("go")
        sock.setblocking(True)
        sock.sendall(body[sent:])
        [response], _ = read_responses(sock, 1, timeout=20)
    assert response.status == 200
    assert b'"length": 2097152' in response.body


def _writable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([], [sock], [], 0.05)[1])


def test_the_front_stops_accepting_at_max_connections(stack):
    """1. --max-connections 4 2. open 4 connections and keep them 3. a fifth connection is
    not accepted: its request gets no answer while the others stay open 4. once one of the
    four closes, the fifth is accepted and answered."""
    front, _, port = stack.serve(front_args=("--max-connections", "4", "--keep-alive", "30",
                                             "--header-timeout", "30"))
    held = [connect(port) for _ in range(4)]
    try:
        for sock in held:  # each is accepted and served
            sock.sendall(get("/"))
            [response], _ = read_responses(sock, 1)
            assert response.status == 200
        front.wait_for_log(r"Not accepting new connections for now \(max_connections\)")
        extra = connect(port)  # the kernel's backlog completes the handshake
        extra.sendall(get("/"))
        extra.settimeout(0.5)
        try:
            assert extra.recv(1) == b"", "answered past max_connections"
        except TimeoutError:
            pass  # no answer while the front is at its limit
        held.pop().close()
        [response], _ = read_responses(extra, 1, timeout=10)
        assert response.status == 200
        extra.close()
    finally:
        for sock in held:
            sock.close()
    assert_serves(port)


def test_a_refusal_sent_byte_by_byte_is_answered_not_reset(stack):
    """1. a chunked POST whose chunk size is not hex, sent one byte at a time 2. the client
    reads a 400 (the front shuts the connection for writing and drains what the client
    still sends, so no reset destroys the answer) 3. the front serves on."""
    _, _, port = stack.serve()
    data = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n"
    with connect(port) as sock:
        answer = b""
        sock.settimeout(0.05)
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                pass
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except ConnectionResetError:
            raise AssertionError(f"reset before the answer: {answer!r}") from None
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert_serves(port)


def test_a_refusal_after_dispatch_cancels_the_worker_exchange(stack, tmp_path):
    """1. a chunked POST to /upload: its head and a first chunk reach the worker, whose app
    reads the body 2. then a chunk size that is not hex 3. the client gets 400 and the
    connection closes 4. the worker's read failed and the worker is free: with one sync
    worker the next request is answered at once."""
    _, handler, port = stack.serve()
    mark = tmp_path / "reading"
    with connect(port) as sock:
        sock.sendall(f"POST /upload?mark={mark} HTTP/1.1\r\nHost: t\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode())
        poll_until(mark.exists, 10, message="the app to read the body")
        sock.sendall(b"zz\r\n")
        [response], closed = read_responses(sock, 1)
        assert response.status == 400
        assert closed or wait_closed(sock, 5)
    handler.wait_for_log(r"Client went away during POST /upload")
    assert_serves(port)


def test_a_queue_wait_past_queue_timeout_gets_503_not_504(stack, tmp_path):
    """1. one worker of capacity 1, --queue-timeout 0.5, --request-timeout 30 2. a slow
    request takes the worker 3. a second request waits in the queue and gets 503 with
    Retry-After after about half a second (the service is overloaded), not 504 4. the slow
    one is answered 200."""
    from support import send_async

    mark = tmp_path / "running"
    _, _, port = stack.serve(front_args=("--queue-timeout", "0.5"),
                             handler_args=("--capacity", "1"))
    results: list = []
    slow = send_async(port, get(f"/slow?seconds=2&mark={mark}"), results)
    poll_until(mark.exists, 10, message="the slow request to run")
    started = time.monotonic()
    [response], _ = exchange(port, get("/"), timeout=10)
    assert response.status == 503
    assert response.header("Retry-After") == "1"
    assert 0.3 < time.monotonic() - started < 5
    slow.join(20)
    assert results and results[0][0] == 200


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _p99(port: int, count: int) -> float:
    """The 99th percentile of ``count`` GETs on one keep-alive connection, in seconds."""
    times = []
    with connect(port) as sock:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(get("/"))
            [response], _ = read_responses(sock, 1)
            times.append(time.perf_counter() - started)
            assert response.status == 200
    times.sort()
    return times[int(len(times) * 0.99) - 1]


def test_500_slowloris_connections_beside_a_normal_client(stack):
    """1. a front with --header-timeout 3 2. the p99 of 300 GETs from a normal client,
    unloaded 3. 500 connections each send one byte of a request head a second 4. meanwhile
    the normal client's p99 of 300 GETs stays within 2x its unloaded value (plus 5 ms for the
    noise of a shared machine) 5. every slow connection is answered 408 and closed at the
    header timeout 6. the front's RSS stays within idle + 16 MB."""
    front, _, port = stack.serve(front_args=("--header-timeout", "3", "--keep-alive", "30"),
                                 env=UNCHECKED)
    front_pid = int(front.wait_for_log(r"Listening at: \S+ \((\d+)\)").group(1))
    _p99(port, 100)  # warm up
    idle_rss = _rss_kib(front_pid)
    unloaded = _p99(port, 300)
    slow = [connect(port) for _ in range(500)]
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 64
    started = time.monotonic()
    try:
        for sock in slow:
            sock.setblocking(False)
            sock.send(head[:1])
        loaded = _p99(port, 300)
        peak_rss = _rss_kib(front_pid)
        answers = {sock: b"" for sock in slow}
        closed: set[socket.socket] = set()
        sent = 1
        deadline = started + 15
        while len(closed) < len(slow) and time.monotonic() < deadline:
            if time.monotonic() - started >= sent and sent < len(head):
                for sock in slow:  # one byte a second, each
                    if sock not in closed:
                        try:
                            sock.send(head[sent:sent + 1])
                        except OSError:
                            pass
                sent += 1
            for sock in slow:
                if sock in closed:
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    answers[sock] += data
                else:
                    closed.add(sock)
            peak_rss = max(peak_rss, _rss_kib(front_pid))
            time.sleep(0.05)  # poll interval of this client loop
        elapsed = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()
    print(f"slowloris: p99 unloaded {unloaded * 1e3:.2f} ms, loaded {loaded * 1e3:.2f} ms; "
          f"closed after {elapsed:.1f} s; front RSS +{(peak_rss - idle_rss) / 1024:.1f} MB")
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open"
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers.values())
    assert elapsed < 10, f"the slow connections took {elapsed:.1f} s to be closed"
    assert loaded <= 2 * unloaded + 0.005, f"p99 {loaded * 1e3:.2f} ms loaded against " \
        f"{unloaded * 1e3:.2f} ms unloaded"
    assert peak_rss - idle_rss < 16 * 1024, f"front RSS grew {peak_rss - idle_rss} KiB"
    assert_serves(port)

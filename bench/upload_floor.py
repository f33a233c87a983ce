"""The floor of an upload that a second process reads: a bare two-process server against
gunicorn and wsgi_zmq, in one run.

Run with the virtualenv's Python::

    .venv/bin/python bench/upload_floor.py                      # 10 and 100 MiB, 7 rounds
    .venv/bin/python bench/upload_floor.py --spool-dir /dev/shm --splice
    .venv/bin/python bench/upload_floor.py --stream     # no file: piece by piece
    .venv/bin/python bench/upload_floor.py --zmq --sizes 1M,10M,100M

A floor server does the least a design with a front and a separate worker process can:
no HTTP parser beyond finding ``Content-Length``, no flow control. By default it spools:
its front process reads the body from the client (``recv_into`` 256 KiB at a time, or ``os.splice``
through a pipe with ``--splice``) into a file in ``--spool-dir``, then hands the file's path
to its worker process over a pipe; the worker reads the file whole, counts its lines (as
``bench/upload_app.py`` does) and hands the answer back. ``gunicorn -w 1`` serves
``bench/upload_app.py`` (``/read``). The client is ``bench/upload.py``'s: one PUT per
connection, as fast as it can send.

The streaming shapes have no file; the front passes the body on piece by piece as it
arrives, and the worker copies each piece into one ``BytesIO`` (as wsgi_zmq's
``wsgi.input`` does):

- ``--stream``: over a Unix socketpair (wsgi_zmq's shape, without ZeroMQ, records or
  credit);
- ``--zmq``: over a ZeroMQ PAIR on a loopback TCP port (no flow control: ZeroMQ queues);
- ``--shm``: the front reads each piece straight into a free slot of a ring of shared
  memory (``SLOTS`` pieces) and announces it over the socketpair; the worker copies it
  out and frees the slot.

``python -m wsgi_zmq bench.upload_app:app --workers 1`` runs in the same rounds (not with
``--no-wsgi-zmq``), so one run says how far any two-process design can get and how near
wsgi_zmq comes to it. It prints, per size, the median wall time of each and their ratios.
``bench/upload.py`` has more modes and sizes for wsgi_zmq itself.
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
import os
import signal
import socket
import statistics
import sys
from collections.abc import Callable, Iterator

from compare import gunicorn_options
from memory import parse_size
from servers import (
    BOOTING_WORKER,
    LISTENING,
    Launcher,
    exit_on_signals,
    start_wsgi_zmq,
    wait_http,
)
from upload import APP, MIB, make_body, put

PIECE = 256 * 1024
SLOTS = 8  # of the shared ring (--shm): 2 MiB


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("no Content-Length")


def _stream_worker(link: socket.socket) -> None:
    """Read each body as it streams in (a length, then the bytes), gather it, answer."""
    while True:
        head = link.recv(8, socket.MSG_WAITALL)
        if len(head) < 8:
            os._exit(0)
        left = int.from_bytes(head, "big")
        gathered = io.BytesIO()
        while left:
            piece = link.recv(min(left, PIECE))
            if not piece:
                os._exit(0)
            gathered.write(piece)
            left -= len(piece)
        data = gathered.getvalue()
        link.sendall(json.dumps({"length": len(data), "lines": data.count(b"\n")}).encode())


def _exactly(link: socket.socket, size: int) -> bytes:
    data = link.recv(size, socket.MSG_WAITALL)
    if len(data) < size:
        os._exit(0)
    return data


def _shm_worker(link: socket.socket, ring: mmap.mmap) -> None:
    """Copy each body out of the shared ring, slot by slot as the front announces them
    (one byte of slot, four of length), freeing each slot at once; answer."""
    while True:
        left = int.from_bytes(_exactly(link, 8), "big")
        gathered = io.BytesIO()
        view = memoryview(ring)
        while left:
            slot, got = divmod(int.from_bytes(_exactly(link, 5), "big"), 1 << 32)
            start = slot * PIECE
            gathered.write(view[start:start + got])
            link.sendall(b"A")
            left -= got
        data = gathered.getvalue()
        answer = json.dumps({"length": len(data), "lines": data.count(b"\n")}).encode()
        link.sendall(b"R" + len(answer).to_bytes(4, "big") + answer)


def _shm_front(listener: socket.socket, link: socket.socket, ring: mmap.mmap) -> None:
    """Read each body straight into the shared ring's free slots (the only copy out of
    the kernel) and announce each slot to the worker; answer its reply."""
    view = memoryview(ring)

    def next_message() -> bytes:
        kind = _exactly(link, 1)
        if kind == b"A":
            return b""
        return _exactly(link, int.from_bytes(_exactly(link, 4), "big"))

    def handle(client: socket.socket, length: int, first: bytes) -> bytes:
        link.sendall(length.to_bytes(8, "big"))
        free, slot, left = SLOTS, 0, length
        while left:
            if not free:
                next_message()
                free += 1
            start = slot * PIECE
            if first:
                got = len(first)
                view[start:start + got] = first
                first = b""
            else:
                got = client.recv_into(view[start:start + PIECE], min(left, PIECE))
                if not got:
                    os._exit(0)
            link.sendall((slot << 32 | got).to_bytes(5, "big"))
            free -= 1
            slot = (slot + 1) % SLOTS
            left -= got
        while True:
            answer = next_message()
            if answer:
                return answer

    _serve(listener, handle)


def _worker(paths: int, answers: int) -> None:
    """Read each spooled file whole; answer its length and lines. Ends at EOF."""
    while True:
        path = os.read(paths, 4096).decode()
        if not path:
            os._exit(0)
        with open(path, "rb") as f:
            data = f.read()
        os.write(answers, json.dumps({"length": len(data),
                                      "lines": data.count(b"\n")}).encode())


def _read_head(client: socket.socket) -> tuple[int, bytes]:
    """The body's length and the bytes of it read with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = client.recv(65536)
        if not more:
            break
        data += more
    head, _, first = data.partition(b"\r\n\r\n")
    return _content_length(head), first


def _serve(listener: socket.socket,
           handle: Callable[[socket.socket, int, bytes], bytes]) -> None:
    """Accept clients one at a time; ``handle(client, length, first)`` takes the body (its
    length and the bytes read with the head) and returns the answer's body."""
    while True:
        client, _ = listener.accept()
        with client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            length, first = _read_head(client)
            body = handle(client, length, first)
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % len(body) + body)


def _pieces(client: socket.socket, left: int) -> Iterator[memoryview]:
    """The next ``left`` bytes from ``client``, read into one buffer PIECE at a time."""
    piece = memoryview(bytearray(PIECE))
    while left > 0:
        got = client.recv_into(piece, min(left, PIECE))
        if not got:
            return
        yield piece[:got]
        left -= got


def _stream_front(listener: socket.socket, link: socket.socket) -> None:
    """Pass each body on to the worker piece by piece as it arrives; answer its reply."""
    def handle(client: socket.socket, length: int, first: bytes) -> bytes:
        link.sendall(length.to_bytes(8, "big") + first)
        for piece in _pieces(client, length - len(first)):
            link.sendall(piece)
        return link.recv(4096)

    _serve(listener, handle)


def _zmq_worker(endpoint: str) -> None:
    """``_stream_worker`` over a ZeroMQ PAIR: a length, then a message a piece."""
    import zmq
    link = zmq.Context().socket(zmq.PAIR)
    link.bind(endpoint)
    while True:
        left = int.from_bytes(link.recv(), "big")
        gathered = io.BytesIO()
        while left:
            piece = link.recv()
            gathered.write(piece)
            left -= len(piece)
        data = gathered.getvalue()
        link.send(json.dumps({"length": len(data), "lines": data.count(b"\n")}).encode())


def _zmq_front(listener: socket.socket, endpoint: str) -> None:
    """``_stream_front`` over a ZeroMQ PAIR (no flow control: ZeroMQ queues)."""
    import zmq
    link = zmq.Context().socket(zmq.PAIR)
    link.connect(endpoint)

    def handle(client: socket.socket, length: int, first: bytes) -> bytes:
        link.send(length.to_bytes(8, "big"))
        if first:
            link.send(first)
        for piece in _pieces(client, length - len(first)):
            link.send(piece)
        return link.recv()

    _serve(listener, handle)


def _front(listener: socket.socket, spool_dir: str, splice: bool, paths: int,
           answers: int) -> None:
    """Spool each body to a file, hand the path to the worker, answer what it says."""
    path = os.path.join(spool_dir, f"wsgi_zmq-floor-{os.getpid()}")

    def handle(client: socket.socket, length: int, first: bytes) -> bytes:
        left = length - len(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, first)
            if splice:
                pipe_r, pipe_w = os.pipe()
                while left > 0:
                    moved = os.splice(client.fileno(), pipe_w, min(left, 1 << 20))
                    if not moved:
                        break
                    done = 0
                    while done < moved:
                        done += os.splice(pipe_r, fd, moved - done)
                    left -= moved
                os.close(pipe_r)
                os.close(pipe_w)
            else:
                for piece in _pieces(client, left):
                    os.write(fd, piece)
        finally:
            os.close(fd)
        os.write(paths, path.encode())
        body = os.read(answers, 4096)
        os.unlink(path)
        return body

    _serve(listener, handle)


def _fork(run: Callable[[], None], *unused: socket.socket | int) -> int:
    """Run ``run`` in a child that first closes the ``unused`` sockets and descriptors
    (the other side's ends); its PID."""
    pid = os.fork()
    if pid == 0:
        for end in unused:
            if isinstance(end, int):
                os.close(end)
            else:
                end.close()
        try:
            run()
        finally:
            os._exit(0)
    return pid


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_stream(listener: socket.socket, shm: bool, zmq: bool) -> list[int]:
    """Fork the streaming server's front and worker, joined by a Unix socketpair (and, with
    ``shm``, a shared ring of ``SLOTS`` pieces that carries the bytes), or with ``zmq`` by
    a ZeroMQ PAIR on a loopback port."""
    if zmq:
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        return [_fork(lambda: _zmq_front(listener, endpoint)),
                _fork(lambda: _zmq_worker(endpoint), listener)]
    front_end, worker_end = socket.socketpair()
    if shm:
        ring = mmap.mmap(-1, SLOTS * PIECE)
        pids = [_fork(lambda: _shm_front(listener, front_end, ring), worker_end),
                _fork(lambda: _shm_worker(worker_end, ring), listener, front_end)]
    else:
        pids = [_fork(lambda: _stream_front(listener, front_end), worker_end),
                _fork(lambda: _stream_worker(worker_end), listener, front_end)]
    front_end.close()
    worker_end.close()
    return pids


def start_floor(spool_dir: str, splice: bool, stream: bool, shm: bool, zmq: bool
                ) -> tuple[list[int], str]:
    """Fork the floor server's front and worker; their PIDs and URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    if stream or shm or zmq:
        pids = start_stream(listener, shm, zmq)
    else:
        to_worker_r, to_worker_w = os.pipe()
        to_front_r, to_front_w = os.pipe()
        pids = [_fork(lambda: _front(listener, spool_dir, splice, to_worker_w, to_front_r),
                      to_worker_r, to_front_w),
                _fork(lambda: _worker(to_worker_r, to_front_w), listener, to_worker_w,
                      to_front_r)]
        for fd in (to_worker_r, to_worker_w, to_front_r, to_front_w):
            os.close(fd)
    listener.close()
    return pids, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M", help="body sizes (default 10M,100M)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--spool-dir", default="/tmp", help="where the body is spooled")
    parser.add_argument("--splice", action="store_true",
                        help="move the body with os.splice, no copy through Python")
    parser.add_argument("--stream", action="store_true",
                        help="no file: the front passes each piece on to the worker over a "
                        "Unix socket as it arrives, and the worker gathers them")
    parser.add_argument("--shm", action="store_true",
                        help="no file: the front reads each piece into a ring of shared "
                        "memory and the worker copies it out")
    parser.add_argument("--zmq", action="store_true",
                        help="as --stream, over a ZeroMQ PAIR on a loopback TCP port")
    parser.add_argument("--no-wsgi-zmq", action="store_true",
                        help="only the floor and gunicorn, not wsgi_zmq too")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or args.rounds < 1:
        parser.error("--sizes must name a size and --rounds be at least 1")
    exit_on_signals()
    pids, floor_url = start_floor(args.spool_dir, args.splice, args.stream, args.shm,
                                   args.zmq)
    try:
        with Launcher() as launcher:
            argv_g = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:0",
                      "--timeout", "120", *gunicorn_options(), APP]
            gunicorn = launcher.start("gunicorn", argv_g)
            gunicorn_url = gunicorn.wait_for(LISTENING, 30)[0].group(1)
            gunicorn.wait_for(BOOTING_WORKER, 30)
            wait_http(gunicorn_url, gunicorn, 30)
            order = [("floor", floor_url), ("gunicorn", gunicorn_url)]
            if not args.no_wsgi_zmq:
                order.append(("wsgi_zmq", start_wsgi_zmq(
                    launcher, APP, extra=["--timeout", "120"])[1]))
            how = ("through a shared ring" if args.shm else
                   "streamed over ZeroMQ" if args.zmq else
                   "streamed over a Unix socket" if args.stream else
                   f"spooled to {args.spool_dir}" + (" with splice" if args.splice else ""))
            print(f"upload floor: {how}; {args.rounds} rounds; {os.cpu_count()} CPUs")
            for size in sizes:
                body = make_body(size, 1024)
                expected = {"length": size, "lines": body.count(b"\n")}
                times: dict[str, list[float]] = {name: [] for name, _ in order}
                for round_no in range(args.rounds):
                    turn = round_no % len(order)
                    for name, url in order[turn:] + order[:turn]:
                        seconds, answer = put(url, "/read", body, 60 + size / MIB)
                        if answer != expected:
                            print(f"{name}: read {answer}, not {expected}", file=sys.stderr)
                            return 1
                        times[name].append(seconds)
                median = {name: statistics.median(runs) for name, runs in times.items()}
                floor, gun = median["floor"], median["gunicorn"]
                line = (f"{size // MIB:>5} MiB: two-process floor {floor:.3f} s, gunicorn "
                        f"{gun:.3f} s, ratio {floor / gun:.2f}")
                if "wsgi_zmq" in median:
                    ours = median["wsgi_zmq"]
                    line += (f"; wsgi_zmq {ours:.3f} s, {ours / gun:.2f}x gunicorn, "
                             f"{ours / floor:.2f}x the floor")
                print(line)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

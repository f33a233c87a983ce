"""Job-side test peers: a job broker on free ports, MDP workers and clients in plain pyzmq.

``MDP_WORKER`` is a whole MDP worker as a script (run it with ``start_mdp_worker``, stop
it by its PID): it sends exactly the frames the ZeroMQ guide's ``mdwrkapi`` (MDP/0.1) or
an RFC 18 worker (MDP/0.2) sends, with heartbeats, and answers each job with its frames
upper-cased; a first frame ``sleep:S`` makes it wait S seconds first (a job to kill it in).
The client helpers send one request in a given form and return the reply's frames.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from support import LiveProcess, Stack, python_env

MDP_WORKER = r"""
import sys, time, zmq
endpoint, version, service = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)
if version == "1":      # RFC 7, as the guide's mdwrkapi: every command after an empty frame
    head, ready, request, reply, beat = [b"", b"MDPW01"], b"\x01", b"\x02", [b"\x03"], b"\x04"
else:                   # RFC 18: no empty frame, FINAL 0x04
    head, ready, request, reply, beat = [b"MDPW02"], b"\x01", b"\x02", [b"\x04"], b"\x05"
sock.send_multipart(head + [ready, service])
print("ready", flush=True)
sent = time.monotonic()
while True:
    if sock.poll(250):
        message = sock.recv_multipart()
        command = message[len(head)]
        if command == request:
            client, body = message[len(head) + 1], message[len(head) + 3:]
            if body and body[0].startswith(b"sleep:"):
                print("working", flush=True)
                time.sleep(float(body[0][6:]))
            sock.send_multipart(head + reply + [client, b""] + [f.upper() for f in body])
            print("served", flush=True)
            sent = time.monotonic()
        elif command == bytes([beat[0] + 1]):  # DISCONNECT
            print("disconnected", flush=True)
            break
    if time.monotonic() - sent > 1.0:
        sock.send_multipart(head + [beat])
        sent = time.monotonic()
"""


def broker(stack: Stack, *args: str) -> tuple[LiveProcess, str, str]:
    """A pure job broker on free ports: (process, job endpoint, backend endpoint)."""
    proc = stack.start(["wsgi_zmq.front", "--job-bind", "tcp://127.0.0.1:*",
                        "--backend", "tcp://127.0.0.1:*", *args], "broker")
    jobs = proc.wait_for_log(r"Jobs at: (\S+) \(").group(1).split(",")[0]
    backend = proc.wait_for_log(r"Backend at: (\S+)").group(1).split(",")[0]
    return proc, jobs, backend


class MdpWorker:
    """An MDP worker process (see ``MDP_WORKER``), stopped by its PID with ``stop``."""

    count = 0

    def __init__(self, tmp_path: Path, endpoint: str, version: int, service: str) -> None:
        MdpWorker.count += 1
        self.log_path = tmp_path / f"mdp-worker-{MdpWorker.count}-v{version}-{service}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", MDP_WORKER, endpoint,
                                      str(version), service], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=python_env(),
                                     start_new_session=True)
        self.pid = self.proc.pid

    def said(self, word: str) -> bool:
        return word.encode() in self.log_path.read_bytes()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def start_mdp_worker(tmp_path: Path, endpoint: str, version: int = 2,
                     service: str = "upper") -> MdpWorker:
    return MdpWorker(tmp_path, endpoint, version, service)


def stop(worker: Any) -> None:
    """Stop an ``MdpWorker`` or a ``subprocess.Popen`` by its PID."""
    if isinstance(worker, MdpWorker):
        worker.stop()
        return
    if worker.poll() is None:
        worker.kill()
    worker.wait(10)


class Client:
    """One socket of a given type on the job endpoint; every receive has a deadline."""

    def __init__(self, endpoint: str, kind: int = zmq.DEALER) -> None:
        self.context = zmq.Context.instance()
        self.sock = self.context.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 10.0) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout} s")
        return self.sock.recv_multipart()

    def call(self, frames: list[bytes], timeout: float = 10.0) -> list[bytes]:
        self.send(frames)
        return self.recv(timeout)

    def close(self) -> None:
        self.sock.close()  # with the socket's LINGER (0 unless a test set it)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mdp02(service: bytes, *body: bytes) -> list[bytes]:
    """An RFC 18 client's REQUEST."""
    return [b"MDPC02", b"\x01", service, *body]


def is_error(frames: list[bytes], code: int) -> bool:
    """Is the body at the end of ``frames`` our error triple with ``code``?"""
    return frames[-3:-1] == [b"wsgi_zmq.error", b"%03d" % code]

"""Body rings: request bodies through shared memory, for a worker on the front's host.

A streamed request body normally travels in BODY records, through the ZeroMQ hop. For a
worker on the same host the bytes can take a shorter way: the worker creates a *ring*, a
memfd cut into slots, and offers it to the front in a RING record; the front writes each
piece of a body into a slot and sends only BODY_AT(slot, length). The worker copies the
piece out when the record arrives. ``docs/protocol.md`` (section 5, "Body rings") has the
whole contract.

The same worker offers two *frame pipes* beside its ring (PIPE), and once both sides
switched (PIPED) their frames go through them instead of ZeroMQ: a pipe has no I/O thread
to wake (``docs/protocol.md``, section 5, "The frame pipes"). ``WorkerPipe`` is the
worker's side; ``open_pipes`` and ``PeerPipe`` the front's; ``FrameReader``,
``FrameWriter`` and ``write_frame`` read and write frames, each after its length.

Two sides, one module:

- ``WorkerRing`` (the worker): creates the memfd, writes the header (``RING_MAGIC`` and a
  random nonce), seals it against shrinking, and reads pieces out of it. Its pages are
  allocated as bodies first touch them and stay; a memfd lives on the kernel's internal
  shmem mount, which has no size limit, so a first write cannot fault for want of space
  (as one into a full ``/dev/shm`` would, with SIGBUS).
- ``open_ring`` and ``BodyRing`` (the front): open ``/proc/PID/fd/FD`` of the offer only
  after checking that it is a memfd of the front's own user, sealed against shrinking
  (a peer that could shrink the file under the front's mapping would kill the front with
  SIGBUS), of the offered size, with the offered nonce in its header, and mapped by no
  other worker; then hand out slots.

**Slots.** The front cuts the ring into *groups* of ``window`` slots (the worker's READY
window). A request whose body goes through the ring holds one group from its first piece
until the worker's final record for it (or the worker's loss); piece ``n`` of its body
goes to slot ``n mod window`` of the group. That is safe because a worker grants CREDIT
only for pieces it has taken: the front has credit for piece ``n + window``, which reuses
the slot of piece ``n``, only once the worker has copied piece ``n`` out. A request that
finds no free group (or a piece larger than a slot) sends its pieces in BODY records, as a
worker without a ring gets them.
"""

from __future__ import annotations

import fcntl
import hmac
import mmap
import os
import select
import stat
import time
from collections.abc import Callable, Container
from typing import Any, Final

from wsgi_zmq import protocol
from wsgi_zmq.errors import ProtocolError
from wsgi_zmq.protocol import RING_HEADER, RING_MAGIC, RingOffer

#: Can this system make rings at all (Linux: memfd and file seals)?
SUPPORTED: Final = hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")
#: The most requests one worker's ring serves at once (``body_ring``).
MAX_GROUPS: Final = 64
#: The size of a slot. The front reads a piece of a body straight into a slot, one
#: ``recv_into`` a piece, so the piece's size sets the count of reads, records and Python
#: turns per byte: 256 KiB slots took a 100 MiB upload in 0.6-0.7x the time of 64 KiB ones
#: (``bench/upload.py``), and 512 KiB slots were no faster.
RING_SLOT: Final = 256 << 10
#: How much of a body the front sends into a group before the worker's first CREDIT
#: (``Exchange.presend``), in at most a window of pieces of at most ``EARLY_PIECE``: about
#: what arrives on loopback while the worker starts the app, so the client's bytes keep
#: flowing (without it, a 1 MiB upload waited for that round trip with the kernel's
#: receive window full). The front keeps a copy of these pieces until that CREDIT, to send
#: them again if the worker hands the request back; the last one may pass the bound by
#: less than a piece.
EARLY_BYTES: Final = 1 << 20
#: The most one early piece takes: one read of the client. Pieces of 256 KiB, against
#: 64 KiB ones, took a 1 MiB upload in 0.52-0.88x the time (``bench/upload.py
#: --baseline``): a window of them covers 1 MiB.
EARLY_PIECE: Final = RING_SLOT
#: The size of the buffer that holds one request's copies of its early pieces
#: (``PieceCopies``): ``EARLY_BYTES``, and the piece that may pass it.
COPIES_SIZE: Final = EARLY_BYTES + EARLY_PIECE
#: How many idle ``PieceCopies`` buffers the front keeps for the next requests.
SPARE_COPIES: Final = 2

_NONCE_AT: Final = len(RING_MAGIC)
_NONCE_SIZE: Final = 16
_MEMFD_PREFIX: Final = "/memfd:"
_unpack_body_at = protocol.BODY_AT_HEAD.unpack_from


def ring_slot_size(chunk_size: int) -> int:
    """The slot size a worker offers: ``RING_SLOT``, or ``chunk_size`` if that is larger,
    rounded up to whole pages and within the bounds a front accepts."""
    pages = -(-max(chunk_size, RING_SLOT) // protocol.RING_PAGE)
    return max(protocol.MIN_RING_SLOT, min(protocol.MAX_RING_SLOT,
                                           pages * protocol.RING_PAGE))


class WorkerRing:
    """The worker's ring for one connection to a front: ``groups`` requests of ``window``
    pieces of ``slot_size`` bytes. One per connection, made anew on every reconnection, so
    a front that still writes for a lost connection never writes into a ring in use."""

    __slots__ = ("fd", "mm", "slots", "slot_size", "nonce")

    def __init__(self, groups: int, window: int, slot_size: int) -> None:
        self.slots = groups * window
        self.slot_size = slot_size
        size = RING_HEADER + self.slots * slot_size
        if size > protocol.MAX_RING_BYTES:
            # fewer requests at once, not a ring the front refuses
            self.slots = (protocol.MAX_RING_BYTES - RING_HEADER) // slot_size // window \
                * window
            size = RING_HEADER + self.slots * slot_size
        if not self.slots:
            raise ValueError(f"a window of {window} pieces of {slot_size >> 10} KiB is more "
                             f"than a ring may hold")
        self.nonce = os.urandom(_NONCE_SIZE)
        fd = os.memfd_create("wsgi_zmq-body-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, RING_MAGIC + self.nonce, 0)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def offer(self, pid: int) -> bytes:
        """The RING record that offers this ring to a front."""
        return protocol.encode_ring(pid, self.fd, self.slots, self.slot_size, self.nonce)

    def locate(self, payload: bytes) -> tuple[WorkerRing, int, int] | None:
        """Where the piece a BODY_AT payload names lies: (this ring, its first byte, its
        length), for ``take``; None if it names no slot of this ring or is longer than
        one."""
        if len(payload) != protocol.BODY_AT_HEAD.size:
            return None
        slot, length = _unpack_body_at(payload)
        if slot >= self.slots or length > self.slot_size:
            return None
        return self, RING_HEADER + slot * self.slot_size, length

    def take(self, start: int, length: int) -> bytes:
        """A copy of the piece at ``start``; ValueError once the ring is closed."""
        return self.mm[start:start + length]

    def lend(self, start: int, length: int) -> memoryview:
        """The piece at ``start`` itself, read-only, to copy from; release the view at
        once (the ring cannot close while one is out)."""
        return memoryview(self.mm)[start:start + length]

    def read(self, payload: bytes) -> bytes | None:
        """The piece a BODY_AT payload names, copied out now; None if it names no slot."""
        where = self.locate(payload)
        return None if where is None else self.take(where[1], where[2])

    @property
    def closed(self) -> bool:
        return self.mm.closed

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a view still out: the map goes with it
            pass
        os.close(self.fd)


class RingRefused(Exception):
    """An offered ring the front does not take; the message says why."""


def open_ring(offer: RingOffer, window: int, taken: set[tuple[int, int]]) -> BodyRing:
    """Open and check the ring ``offer`` names for a worker whose window is ``window``;
    ``taken`` holds the (device, inode) of the rings other workers have. Raises
    ``RingRefused``.

    Everything that can be checked without opening the file is checked first: opening
    some other process's descriptor could have effects of its own (a device's open)."""
    if not SUPPORTED:
        raise RingRefused("this system has no memfd seals")
    path = f"/proc/{offer.pid}/fd/{offer.fd}"
    try:
        target = os.readlink(path)
        before = os.stat(path)
    except OSError as exc:
        raise RingRefused(f"{path}: {exc.strerror}") from None
    if not target.startswith(_MEMFD_PREFIX):
        raise RingRefused(f"{path} is no memfd")
    if not stat.S_ISREG(before.st_mode):
        raise RingRefused(f"{path} is no regular file")
    euid = os.geteuid()
    if before.st_uid != euid and euid != 0:
        raise RingRefused(f"{path} belongs to uid {before.st_uid}, not to the front's")
    if before.st_size != offer.size:
        raise RingRefused(f"{path} has {before.st_size} bytes, not the {offer.size} offered")
    if (before.st_dev, before.st_ino) in taken:
        raise RingRefused(f"{path} is another worker's ring")
    groups = min(offer.slots // window, MAX_GROUPS)
    if not groups:
        raise RingRefused(f"{offer.slots} slots, fewer than its window of {window}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise RingRefused(f"{path}: {exc.strerror}") from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or \
                now.st_size != offer.size:
            raise RingRefused(f"{path} changed while it was opened")
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            raise RingRefused(f"{path} is not sealed against shrinking")
        try:
            mm = mmap.mmap(fd, offer.size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise RingRefused(f"{path} cannot be mapped: {exc.strerror}") from None
    except OSError as exc:
        raise RingRefused(f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not hmac.compare_digest(mm[:_NONCE_AT + _NONCE_SIZE], RING_MAGIC + offer.nonce):
        mm.close()
        raise RingRefused(f"{path} does not hold the ring offered (its header differs)")
    return BodyRing(mm, (before.st_dev, before.st_ino), offer.slot_size, window, groups,
                    offer.pid)


class PieceCopies:
    """Where the front keeps its copies of early pieces: a private anonymous mapping of
    ``COPIES_SIZE`` bytes per request, its pieces one after the other, taken for the
    request's first early piece read from the client and given back once the worker's
    CREDIT shows it has them (or the request ends); up to ``SPARE_COPIES`` are kept idle
    for the next requests, their pages still in place.

    Not ``bytes`` from the allocator: blocks of this size come and go at the rate of
    uploads, and glibc's malloc moves its threshold for mapping big blocks as they are
    freed, so they ended up in its heap between smaller, longer-lived blocks, and the
    front's private memory crept up (+2 MiB in a 4-minute ``bench/soak.py``). A mapping
    is the kernel's: unmapped, it is gone. Private, not ``mmap``'s default shared
    mapping, whose pages are shmem: each first touch of one allocated it in a page fault
    (18% of the front's CPU in ``perf record`` with a buffer a piece).
    """

    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        if self.idle:
            return self.idle.pop()
        return mmap.mmap(-1, COPIES_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give(self, buffer: mmap.mmap) -> None:
        """Take back ``buffer``; every view of it must be released."""
        if len(self.idle) < SPARE_COPIES:
            self.idle.append(buffer)
        else:
            buffer.close()

    def check(self) -> None:
        assert len(self.idle) <= SPARE_COPIES, "PieceCopies keeps too many idle"
        assert len(set(map(id, self.idle))) == len(self.idle), "a buffer idle twice"
        assert all(not buffer.closed for buffer in self.idle), "a closed buffer idle"


class BodyRing:
    """The front's side of one worker's ring: which request holds which group of slots.

    ``held`` maps the rid of every request that holds a group to the group's first slot;
    ``free`` lists the first slots of the groups nobody holds. ``check`` asserts that the
    two make up the ring's groups, each once.
    """

    __slots__ = ("mm", "memory", "key", "slot_size", "window", "groups", "free", "held",
                 "pid")

    def __init__(self, mm: mmap.mmap, key: tuple[int, int], slot_size: int, window: int,
                 groups: int, pid: int = 0) -> None:
        self.mm = mm
        self.pid = pid  # the process whose descriptor it was (the one that knew its nonce)
        self.memory = memoryview(mm)  # released before the map closes (``close``)
        self.key = key
        self.slot_size = slot_size
        self.window = window
        self.groups = groups
        self.free = [g * window for g in range(groups - 1, -1, -1)]
        self.held: dict[int, int] = {}

    def slot(self, rid: int, index: int) -> int:
        """The slot of piece ``index`` of ``rid``'s body (taking a group for ``rid`` if it
        holds none), or -1 if it holds none and none is free."""
        base = self.held.get(rid)
        if base is None:
            if not self.free:
                return -1
            base = self.held[rid] = self.free.pop()
        return base + index % self.window

    def view(self, slot: int) -> memoryview:
        """The memory of ``slot``, to read a piece into (release the view after)."""
        start = RING_HEADER + slot * self.slot_size
        return self.memory[start:start + self.slot_size]

    def put(self, rid: int, index: int, data: bytes | memoryview) -> int:
        """Write piece ``index`` of ``rid``'s body into its slot; return the slot, or -1
        (nothing written) if the piece does not fit in a slot, or ``rid`` holds no group
        and none is free."""
        size = len(data)
        if size > self.slot_size:
            return -1
        slot = self.slot(rid, index)
        if slot >= 0:
            start = RING_HEADER + slot * self.slot_size
            self.memory[start:start + size] = data
        return slot

    def release(self, rid: int) -> None:
        """The worker sent its final record for ``rid``: its group is free again."""
        base = self.held.pop(rid, None)
        if base is not None:
            self.free.append(base)

    def close(self) -> None:
        self.held.clear()
        self.free.clear()
        self.memory.release()
        self.mm.close()

    def check(self, holders: Container[int]) -> None:
        """Assert that every group is free or held, once, and held only by a request of
        ``holders`` (the rids its worker holds)."""
        assert not self.mm.closed, "a closed ring in use"
        bases = list(self.free) + list(self.held.values())
        assert sorted(bases) == [g * self.window for g in range(self.groups)], \
            f"ring groups {sorted(bases)}: lost or twice"
        for rid in self.held:
            assert rid in holders, f"request {rid:x} holds a ring group but not its worker"



# -- the frame pipes -----------------------------------------------------------------------

#: The most either side keeps of frames its pipe could not take yet; past it the reader
#: counts as not reading (the front drops such a worker, as a ROUTER peer past its
#: high-water mark; a worker counts such a front as lost).
PIPE_BACKLOG: Final = 64 << 20
#: The capacity the front asks for each pipe (``F_SETPIPE_SZ``; Linux's default is 64 KiB,
#: and 1 MiB is the most an unprivileged process may ask by default).
PIPE_SIZE: Final = 1 << 20
#: The longest frame a worker accepts from its pipe: longer, the stream is broken.
MAX_PIPE_FRAME: Final = 1 << 30
#: The longest frame a front accepts from a worker's pipe (a worker's replies of one turn
#: of its loop): longer, the worker broke the protocol and is dropped.
MAX_WORKER_FRAME: Final = 64 << 20
#: The most a front reads from one worker's pipe in one turn of its loop (the rest waits
#: for the next turn, so one worker cannot hold the loop).
READ_BUDGET: Final = 1 << 20
_PIPE_READ: Final = 1 << 16
_frame_head = protocol.PIPE_FRAME_HEAD.pack
_unpack_frame_head = protocol.PIPE_FRAME_HEAD.unpack_from
_FRAME_HEAD_SIZE: Final = protocol.PIPE_FRAME_HEAD.size
_READABLE: Final = 1  # libev's EV_READ
_WRITABLE: Final = 2  # libev's EV_WRITE


class FrameReader:
    """The read end of a frame pipe: frames, each after its length (u32), kept until whole.
    ``limit`` bounds a frame's length (and so what is kept)."""

    __slots__ = ("fd", "buffer", "limit")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.limit = limit

    def frames(self, budget: int = 1 << 62) -> tuple[list[bytes], bool]:
        """Read what the pipe holds (about ``budget`` bytes at most): its whole frames, and
        whether the writer closed its end. Raises ``ProtocolError`` for a frame longer than
        ``limit``. A read that holds only whole frames (the usual case) is cut into them
        directly; only the part of a frame that has not all come is kept."""
        parts = []
        ended = False
        taken = 0
        try:
            while taken < budget:
                data = os.read(self.fd, _PIPE_READ)
                if not data:
                    ended = True
                    break
                parts.append(data)
                taken += len(data)
                if len(data) < _PIPE_READ:
                    break
        except BlockingIOError:
            pass
        buffer = self.buffer
        if buffer:
            for data in parts:
                buffer += data
            if len(buffer) < _FRAME_HEAD_SIZE:
                return [], ended
            (length,) = _unpack_frame_head(buffer, 0)
            if length > self.limit:
                raise ProtocolError(f"a frame of {length} bytes in the pipe")
            if _FRAME_HEAD_SIZE + length > len(buffer):
                return [], ended  # its first frame has not all come: copy nothing yet
            data = bytes(buffer)
        elif len(parts) == 1:
            data = parts[0]
        else:
            data = b"".join(parts)
        frames = []
        pos = 0
        size = len(data)
        limit = self.limit
        while pos + _FRAME_HEAD_SIZE <= size:
            (length,) = _unpack_frame_head(data, pos)
            if length > limit:
                raise ProtocolError(f"a frame of {length} bytes in the pipe")
            start = pos + _FRAME_HEAD_SIZE
            if start + length > size:
                break
            frames.append(data[start:start + length])
            pos = start + length
        self.buffer = bytearray(data[pos:]) if pos < size else bytearray()
        return frames, ended

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.buffer = bytearray()


class FrameWriter:
    """The write end of a frame pipe, on a gevent loop: each frame written after its
    length; what the pipe cannot take yet is kept (``pending``, up to ``PIPE_BACKLOG``) and
    written as the pipe drains, by ``watcher`` (active exactly while something is pending).
    ``on_broken`` is called, from the loop, when a later write finds the reader's end
    closed (``send`` returns False for that itself)."""

    __slots__ = ("fd", "pending", "watcher", "broken", "on_broken")

    def __init__(self, fd: int, loop: Any, on_broken: Callable[[], None]) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.watcher = loop.io(fd, _WRITABLE)
        self.broken = False
        self.on_broken = on_broken

    def send(self, frame: bytes) -> bool:
        """Write ``frame``, or keep it to write when the pipe can take it; False if the
        reader's end is closed or the reader lets too much wait."""
        if self.broken:
            return False
        pending = self.pending
        head = _frame_head(len(frame))
        if pending:
            if len(pending) + len(frame) > PIPE_BACKLOG:
                self.broken = True
                return False
            pending += head
            pending += frame
            return True
        try:
            written = os.writev(self.fd, (head, frame))
        except BlockingIOError:
            written = 0
        except OSError:
            self.broken = True
            return False
        if written < _FRAME_HEAD_SIZE + len(frame):
            if written < _FRAME_HEAD_SIZE:
                pending += head[written:]
                pending += frame
            else:
                pending += memoryview(frame)[written - _FRAME_HEAD_SIZE:]
            self.watcher.start(self._write)
        return True

    def _write(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.watcher.stop()
            self.broken = True
            self.on_broken()
            return
        del self.pending[:written]
        if not self.pending:
            self.watcher.stop()

    def drain(self, timeout: float) -> None:
        """Write what is pending now, waiting up to ``timeout`` seconds for the pipe to
        take it (a leaving worker's last replies, before it closes the pipe)."""
        if self.pending and not self.broken:
            self.watcher.stop()
            data, self.pending = bytes(self.pending), bytearray()
            if not _write_all(self.fd, memoryview(data), timeout):
                self.broken = True

    def close(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.pending = bytearray()

    def check(self) -> None:
        assert self.fd >= 0, "a closed pipe in use"
        assert bool(self.pending) == bool(self.watcher.active), \
            f"{len(self.pending)} bytes pending, writer {'on' if self.watcher.active else 'off'}"
        assert len(self.pending) <= PIPE_BACKLOG + MAX_PIPE_FRAME, "pipe backlog unbounded"


def write_frame(fd: int, frame: bytes, timeout: float) -> bool:
    """Write ``frame`` after its length, waiting for the pipe to drain if it must (the sync
    worker's way: it has no loop to write later); False if the reader's end is closed, or
    the pipe did not drain within ``timeout`` seconds."""
    head = _frame_head(len(frame))
    try:
        written = os.writev(fd, (head, frame))
    except BlockingIOError:
        written = 0
    except OSError:
        return False
    if written == _FRAME_HEAD_SIZE + len(frame):
        return True
    return _write_all(fd, memoryview(head + frame)[written:], timeout)  # the pipe was full


def _write_all(fd: int, data: memoryview, timeout: float) -> bool:
    deadline = 0.0
    while data:
        try:
            data = data[os.write(fd, data):]
            continue
        except BlockingIOError:
            pass
        except OSError:
            return False
        now = time.monotonic()
        if not deadline:
            deadline = now + timeout
        elif now >= deadline:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll(max(1, int((deadline - now) * 1000)))
    return True


class WorkerPipe:
    """The worker's ends of its two frame pipes to one front (PIPE, ``docs/protocol.md``,
    "The frame pipes"): the read end of the pipe the front writes into (``fd``) and the
    write end of the one it reads (``back``). The worker closes the other end of each at
    once, so the front, which opens ``/proc/PID/fd/FD`` and ``/proc/PID/fd/BACK``, is the
    only one at the far end: the end of ``fd``'s file means the front closed it. ``on``:
    the front switched to them (PIPED), and its frames come only through ``fd``;
    ``sending``: this worker switched too, and sends only through ``back``."""

    __slots__ = ("reader", "back", "on", "sending", "writer")

    def __init__(self) -> None:
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.close(write)
        try:
            back_read, back = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.close(read)
            raise
        os.close(back_read)
        self.reader = FrameReader(read, MAX_PIPE_FRAME)
        self.back = back
        self.on = False
        self.sending = False
        self.writer: FrameWriter | None = None  # a gevent worker's, once it sends

    @property
    def fd(self) -> int:
        return self.reader.fd

    def offer(self, pid: int) -> bytes:
        """The PIPE record that offers these pipes to a front."""
        return protocol.encode_pipe(pid, self.reader.fd, self.back)

    def frames(self) -> tuple[list[bytes], bool]:
        """The whole frames the front's pipe holds, and whether the front closed it."""
        return self.reader.frames()

    def close(self, linger: float = 0.0) -> None:
        """Close both ends; a writer's pending frames get up to ``linger`` seconds."""
        self.reader.close()
        if self.writer is not None:
            if linger:
                self.writer.drain(linger)
            self.writer.close()  # closes ``back``
            self.writer = None
        elif self.back >= 0:
            os.close(self.back)
        self.back = -1


def _open_end(pid: int, fd: int, flags: int, taken: Container[tuple[int, int]]
              ) -> tuple[int, tuple[int, int]]:
    """Open ``/proc/PID/fd/FD`` with ``flags`` after checking that it is a pipe of the
    front's own user that is in no ``taken``; the descriptor and its (device, inode)."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        before = os.stat(path)
    except OSError as exc:
        raise RingRefused(f"{path}: {exc.strerror}") from None
    if not stat.S_ISFIFO(before.st_mode):
        raise RingRefused(f"{path} is no pipe")
    euid = os.geteuid()
    if before.st_uid != euid and euid != 0:
        raise RingRefused(f"{path} belongs to uid {before.st_uid}, not to the front's")
    key = (before.st_dev, before.st_ino)
    if key in taken:
        raise RingRefused(f"{path} is another worker's pipe")
    try:
        out = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise RingRefused(f"{path}: {exc.strerror}") from None
    try:
        now = os.fstat(out)
    except OSError as exc:
        os.close(out)
        raise RingRefused(f"{path}: {exc.strerror}") from None
    if (now.st_dev, now.st_ino) != key or not stat.S_ISFIFO(now.st_mode):
        os.close(out)
        raise RingRefused(f"{path} changed while it was opened")
    try:
        fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a pipe of the default size serves too, in more writes
    return out, key


def open_pipes(pid: int, fd: int, back: int, taken: Container[tuple[int, int]]
               ) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """Open a write end of the pipe a worker offers as ``/proc/PID/fd/FD`` and a read end
    of the one it offers as ``/proc/PID/fd/BACK`` (PIPE), each checked by ``_open_end``:
    a pipe of the front's own user, not the other one, and not offered by another worker
    (``taken`` holds the (device, inode) of theirs). Returns both descriptors and keys.
    Raises ``RingRefused``."""
    out, key = _open_end(pid, fd, os.O_WRONLY, taken)
    try:
        into, back_key = _open_end(pid, back, os.O_RDONLY, {*taken, key})  # type: ignore[misc]
    except BaseException:
        os.close(out)
        raise
    return out, into, key, back_key


class PeerPipe:
    """The front's ends of one worker's frame pipes: ``writer`` for the frames it sends
    (from PIPED on), ``reader`` for the worker's (once the worker's own PIPED came through
    the socket: ``reading``, and ``watcher`` runs ``on_readable`` whenever it has some)."""

    __slots__ = ("writer", "reader", "keys", "watcher", "reading")

    def __init__(self, out: int, into: int, keys: tuple[tuple[int, int], tuple[int, int]],
                 loop: Any, on_broken: Callable[[], None]) -> None:
        self.writer = FrameWriter(out, loop, on_broken)
        self.reader = FrameReader(into, MAX_WORKER_FRAME)
        self.keys = keys
        self.watcher = loop.io(into, _READABLE)
        self.reading = False

    @property
    def broken(self) -> bool:
        return self.writer.broken

    def start_reading(self, on_readable: Callable[[], None]) -> None:
        self.reading = True
        self.watcher.start(on_readable)

    def close(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.writer.close()
        self.reader.close()

    def check(self) -> None:
        self.writer.check()
        assert self.reader.fd >= 0, "a closed pipe in use"
        assert self.reading == bool(self.watcher.active), \
            f"reading {self.reading}, reader {'on' if self.watcher.active else 'off'}"
        assert len(self.reader.buffer) <= MAX_WORKER_FRAME + _PIPE_READ + _FRAME_HEAD_SIZE, \
            "a worker's partial frame unbounded"
